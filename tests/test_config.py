"""Tenant configuration: loading, every error path (file, key path, line), secrets, schema, digest."""

from __future__ import annotations

import json
import pickle
import re
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from crawler.config import (
    KNOWN_REGIONS,
    AgencyAuthConfig,
    AkSkAuthConfig,
    ConfigError,
    ConfigErrors,
    EpAllGranted,
    EpDiscover,
    EpIds,
    EpNone,
    Filters,
    MissingSecretError,
    PasswordAuthConfig,
    Secret,
    TemporaryAuthConfig,
    TenantConfig,
    TokenAuthConfig,
    config_digest,
    default_endpoint,
    json_schema,
    load_tenant,
    load_tenants,
    parse_tenant,
)

REPO = Path(__file__).resolve().parent.parent
SECRET = "S3cr3t-Value-That-Must-Never-Show"

BASE = """\
tenant: acme
auth:
  mode: password
  user: acme-admin
  domain: acme
  password_env: CBR_PW
regions: [cn-north-4]
"""


def write(directory: Path, name: str, text: str) -> Path:
    path = directory / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def password_auth(tenant: TenantConfig) -> PasswordAuthConfig:
    assert isinstance(tenant.auth, PasswordAuthConfig)
    return tenant.auth


def errors_of(call: Callable[[], Any]) -> list[ConfigError]:
    with pytest.raises(ConfigErrors) as info:
        call()
    return info.value.errors


def only_error(call: Callable[[], Any]) -> ConfigError:
    errors = errors_of(call)
    assert len(errors) == 1, [str(e) for e in errors]
    return errors[0]


def parse(text: str, **kwargs: Any) -> TenantConfig:
    return parse_tenant(textwrap.dedent(text), "t.yaml", **kwargs)


def error_in(text: str) -> ConfigError:
    return only_error(lambda: parse(text))


# --------------------------------------------------------------------------------------------------
# Auth modes


def test_password_auth_loads_and_resolves(tmp_path: Path) -> None:
    tenant = load_tenant(write(tmp_path, "acme.yaml", BASE))
    assert isinstance(tenant.auth, PasswordAuthConfig)
    assert (tenant.auth.user, tenant.auth.domain, tenant.auth.password_env) == (
        "acme-admin",
        "acme",
        "CBR_PW",
    )
    secret = tenant.auth.resolve({"CBR_PW": SECRET + "\n"})
    assert secret.reveal() == SECRET  # trailing newline stripped
    assert tenant.name == "acme" and tenant.source_file == str(tmp_path / "acme.yaml")


def test_token_auth_from_file_relative_to_the_tenant_file(tmp_path: Path) -> None:
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "token").write_text(SECRET + "\r\n")
    path = write(
        tmp_path,
        "t.yaml",
        """\
        tenant: t
        auth: {mode: token, token_file: secrets/token}
        regions: [cn-north-4]
        """,
    )
    tenant = load_tenant(path)
    assert isinstance(tenant.auth, TokenAuthConfig)
    assert tenant.auth.token_file == str(tmp_path / "secrets" / "token")
    assert tenant.auth.resolve({}).reveal() == SECRET


def test_aksk_auth_resolves_both_halves() -> None:
    tenant = parse(
        """\
        tenant: t
        auth: {mode: aksk, access_key_env: AK, secret_key_env: SK}
        regions: [cn-north-4]
        """
    )
    assert isinstance(tenant.auth, AkSkAuthConfig)
    pair = tenant.auth.resolve({"AK": "EXAMPLEAKID123456789", "SK": SECRET})
    assert pair.access_key.reveal() == "EXAMPLEAKID123456789"
    assert pair.secret_key.reveal() == SECRET
    assert SECRET not in repr(pair) and "EXAMPLEAKID" not in repr(pair)


def test_temporary_auth_with_password_source() -> None:
    tenant = parse(
        """\
        tenant: t
        auth:
          mode: temporary
          duration_seconds: 900
          source: {mode: password, user: u, domain: d, password_env: PW}
        regions: [cn-north-4]
        """
    )
    assert isinstance(tenant.auth, TemporaryAuthConfig)
    assert isinstance(tenant.auth.source, PasswordAuthConfig)
    assert tenant.auth.duration_seconds == 900
    assert [s.key_path for s in tenant.secret_sources()] == ["auth.source.password_env"]
    assert tenant.auth.source.resolve({"PW": SECRET}).reveal() == SECRET


@pytest.mark.parametrize("credential", ["token", "temporary_aksk"])
def test_agency_auth_with_aksk_source(credential: str) -> None:
    tenant = parse(
        f"""\
        tenant: globex-via-acme
        auth:
          mode: agency
          domain_name: globex
          agency_name: cbr-inventory
          credential: {credential}
          source:
            mode: aksk
            access_key_env: ACME_AK
            secret_key_file: /run/secrets/acme-sk
        regions: [cn-north-4]
        """
    )
    auth = tenant.auth
    assert isinstance(auth, AgencyAuthConfig) and isinstance(auth.source, AkSkAuthConfig)
    assert (auth.domain_name, auth.agency_name, auth.credential) == ("globex", "cbr-inventory", credential)
    assert auth.duration_seconds is None
    sources = tenant.secret_sources()
    assert [(s.key_path, s.line) for s in sources] == [
        ("auth.source.access_key_env", 9),
        ("auth.source.secret_key_file", 10),
    ]


def test_temporary_source_may_not_be_aksk() -> None:
    error = error_in(
        """\
        tenant: t
        auth:
          mode: temporary
          source:
            mode: aksk
        regions: [cn-north-4]
        """
    )
    assert str(error) == (
        "t.yaml:5: auth.source.mode: unknown mode 'aksk' (fix: use one of: password, token)"
    )


def test_example_auth_snippets_in_example_tenant_are_valid() -> None:
    # The example file documents the other auth modes in comments; they must stay correct.
    text = (REPO / "config" / "example-tenant.yaml").read_text()
    snippets = re.findall(r"^# auth:\n((?:#   .*\n)+)", text, flags=re.MULTILINE)
    assert len(snippets) == 4
    modes = set()
    for snippet in snippets:
        auth = "auth:\n" + "".join(line[2:] + "\n" for line in snippet.splitlines())
        tenant = parse_tenant(f"tenant: t\nregions: [cn-north-4]\n{auth}", "snippet")
        modes.add(tenant.auth.mode)
    assert modes == {"token", "aksk", "temporary", "agency"}


# --------------------------------------------------------------------------------------------------
# Secrets


@pytest.mark.parametrize(
    ("auth", "key", "fix"),
    [
        (
            "{mode: password, user: u, domain: d, password: %s}",
            "auth.password",
            "password_env or password_file",
        ),
        ("{mode: token, token: %s}", "auth.token", "token_env or token_file"),
        (
            "{mode: aksk, access_key_env: A, secret_key: %s}",
            "auth.secret_key",
            "secret_key_env or secret_key_file",
        ),
        (
            "{mode: aksk, access_key: %s, secret_key_env: S}",
            "auth.access_key",
            "access_key_env or access_key_file",
        ),
        (
            "{mode: agency, domain_name: b, agency_name: a, source: {mode: token, token: %s}}",
            "auth.source.token",
            "token_env or token_file",
        ),
    ],
)
def test_inline_secrets_are_rejected_without_echoing_them(auth: str, key: str, fix: str) -> None:
    text = f"tenant: t\nregions: [cn-north-4]\nauth: {auth % SECRET}\n"
    errors = errors_of(lambda: parse_tenant(text, "t.yaml"))
    inline = [e for e in errors if e.key_path == key]
    assert len(inline) == 1
    assert inline[0].line == 3
    assert inline[0].problem == "inline secrets are not allowed"
    assert inline[0].fix is not None and fix in inline[0].fix
    with pytest.raises(ConfigErrors) as info:
        parse_tenant(text, "t.yaml")
    everything = str(info.value) + repr(info.value) + "".join(repr(e) + str(e.fix) for e in errors)
    assert SECRET not in everything


def test_secret_pasted_as_env_name_is_not_echoed() -> None:
    error = error_in(
        f"""\
        tenant: t
        auth: {{mode: token, token_env: "{SECRET} x"}}
        regions: [cn-north-4]
        """
    )
    assert (error.key_path, error.line) == ("auth.token_env", 2)
    assert "not a valid environment variable name" in error.problem
    assert SECRET not in str(error)


def test_secret_type_is_masked_everywhere() -> None:
    secret = Secret(SECRET)
    for text in (repr(secret), str(secret), f"{secret}", f"{secret!r}", format(secret, ">5"), repr([secret])):
        assert SECRET not in text
    assert repr(secret) == "Secret('***')"
    assert secret == Secret(SECRET) and secret != Secret("other")
    with pytest.raises(TypeError):
        pickle.dumps(secret)


def test_missing_env_var_names_the_variable_file_and_line(tmp_path: Path) -> None:
    tenant = load_tenant(write(tmp_path, "acme.yaml", BASE))
    with pytest.raises(MissingSecretError) as info:
        password_auth(tenant).resolve({})
    assert str(info.value) == (
        f"{tmp_path / 'acme.yaml'}:6: auth.password_env: environment variable CBR_PW is not set "
        "(fix: export CBR_PW before running, or use password_file)"
    )


def test_empty_env_var_is_an_error() -> None:
    tenant = parse(BASE)
    with pytest.raises(MissingSecretError, match="environment variable CBR_PW is empty"):
        password_auth(tenant).resolve({"CBR_PW": "\n"})


def test_missing_and_empty_secret_files(tmp_path: Path) -> None:
    tenant = parse(
        """\
        tenant: t
        auth: {mode: aksk, access_key_file: ak, secret_key_file: sk}
        regions: [cn-north-4]
        """,
        base_dir=tmp_path,
    )
    assert isinstance(tenant.auth, AkSkAuthConfig)
    (tmp_path / "ak").write_text("\n")
    with pytest.raises(MissingSecretError) as info:
        tenant.auth.access_key_source.resolve()
    assert info.value.key_path == "auth.access_key_file" and f"file {tmp_path / 'ak'} is empty" in str(
        info.value
    )
    with pytest.raises(MissingSecretError) as info:
        tenant.auth.secret_key_source.resolve()
    assert f"cannot read file {tmp_path / 'sk'}" in str(info.value)


def test_undecodable_secret_file_does_not_leak_bytes(tmp_path: Path) -> None:
    (tmp_path / "tok").write_bytes(b"abc\xff\xfe" + SECRET.encode())
    tenant = parse(
        "tenant: t\nauth: {mode: token, token_file: tok}\nregions: [cn-north-4]\n", base_dir=tmp_path
    )
    with pytest.raises(ConfigErrors) as info:
        tenant.check_secrets()
    assert "is not UTF-8 text" in str(info.value)
    assert "\\xff" not in str(info.value) and SECRET not in str(info.value)
    error = info.value.errors[0]
    assert isinstance(error, MissingSecretError)
    assert error.__cause__ is None and error.__suppress_context__  # the decode error is not shown


def test_load_does_not_need_secrets_but_check_secrets_reports_all(tmp_path: Path) -> None:
    write(tmp_path, "a.yaml", BASE)
    write(
        tmp_path,
        "b.yaml",
        "tenant: b\nauth: {mode: aksk, access_key_env: B_AK, secret_key_env: B_SK}\nregions: [cn-north-4]\n",
    )
    assert len(load_tenants([tmp_path])) == 2
    errors = errors_of(lambda: load_tenants([tmp_path], check_secrets=True, environ={"B_AK": "x"}))
    assert [(Path(e.file or "").name, e.key_path, e.line) for e in errors] == [
        ("a.yaml", "auth.password_env", 6),
        ("b.yaml", "auth.secret_key_env", 2),
    ]
    assert load_tenants([tmp_path], check_secrets=True, environ={"B_AK": "x", "B_SK": "y", "CBR_PW": "z"})


def test_secrets_never_appear_in_reprs_or_dumps(tmp_path: Path) -> None:
    (tmp_path / "pw").write_text(SECRET)
    tenant = parse(
        "tenant: t\nauth: {mode: password, user: u, domain: d, password_file: pw}\nregions: [cn-north-4]\n",
        base_dir=tmp_path,
    )
    resolved = password_auth(tenant).resolve()
    assert resolved.reveal() == SECRET
    texts = [repr(tenant), str(tenant), tenant.model_dump_json(), repr(resolved), str(resolved)]
    texts.append(config_digest([tenant]))
    assert all(SECRET not in text for text in texts)


# --------------------------------------------------------------------------------------------------
# Error paths: each with its exact file, key path and line


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (
            "region: cn-north-4\n",
            "t.yaml:8: region: unknown key 'region' (fix: did you mean 'regions'? allowed keys: tenant, "
            "auth, endpoints, regions, projects, enterprise_projects, own_types, plan, filters, rate_limit, "
            "output, timeouts, tls, proxy)",
        ),
        (
            "rate_limit:\n  concurency: 3\n",
            "t.yaml:9: rate_limit.concurency: unknown key 'concurency' (fix: did you mean 'concurrency'? "
            "allowed keys: requests_per_second, concurrency, page_size)",
        ),
        (
            "enterprise_projects:\n  mode: discovr\n",
            "t.yaml:9: enterprise_projects.mode: unknown mode 'discovr' "
            "(fix: did you mean 'discover'? use one of: none, ids, all_granted, discover)",
        ),
        (
            "enterprise_projects:\n  ids: ['0']\n",
            "t.yaml:8: enterprise_projects.mode: mode is missing "
            "(fix: set mode to one of: none, ids, all_granted, discover)",
        ),
        (
            "enterprise_projects:\n  mode: none\n  ids: ['0']\n",
            "t.yaml:10: enterprise_projects.ids: unknown key 'ids' (fix: allowed keys with mode none: mode)",
        ),
        (
            "enterprise_projects:\n  mode: ids\n  ids: ['0', 0]\n",
            "t.yaml:10: enterprise_projects.ids[1]: must be a string "
            "(fix: quote the value in YAML (e.g. '0'))",
        ),
        (
            "enterprise_projects:\n  mode: ids\n  ids:\n    - '0'\n    - not-a-uuid\n",
            "t.yaml:12: enterprise_projects.ids[1]: is not an enterprise project id "
            '(fix: use the EP\'s UUID, or "0" for the default enterprise project)',
        ),
        (
            "enterprise_projects:\n  mode: ids\n  ids: []\n",
            "t.yaml:10: enterprise_projects.ids: Tuple should have at least 1 item after validation, not 0",
        ),
        (
            "projects:\n  ids:\n    - 0123456789abcdef0123456789abcdef\n"
            "    - 0123456789abcdef0123456789abcdef\n",
            "t.yaml:11: projects.ids[1]: project id '0123456789abcdef0123456789abcdef' is listed twice "
            "(fix: remove the duplicate)",
        ),
        (
            "projects:\n  ids: [ABC]\n",
            "t.yaml:9: projects.ids[0]: is not a project id (fix: project ids are 32 lower-case hex digits)",
        ),
        (
            "projects:\n  ids: [0123456789abcdef0123456789abcdef]\n  discover: {}\n",
            "t.yaml:10: projects.discover: ids and discover are both set (fix: keep one of them)",
        ),
        (
            "projects:\n  discover:\n    include: ['a*', '']\n",
            "t.yaml:10: projects.discover.include[1]: String should have at least 1 character",
        ),
        ("own_types: []\n", "t.yaml:8: own_types: Tuple should have at least 1 item after validation, not 0"),
        (
            "own_types: [private, shard]\n",
            "t.yaml:8: own_types[1]: must be one of private, shared, all_granted "
            "(fix: did you mean 'shared'?)",
        ),
        (
            "own_types: [private, private]\n",
            "t.yaml:8: own_types[1]: own type 'private' is listed twice (fix: remove the duplicate)",
        ),
        (
            "filters:\n  limit: 10\n",
            "t.yaml:9: filters.limit: limit is set by the crawler, not a filter "
            "(fix: set rate_limit.page_size instead)",
        ),
        (
            "filters:\n  own_type: shared\n",
            "t.yaml:9: filters.own_type: own_type is set by the crawler, not a filter "
            "(fix: set own_types at the top level instead)",
        ),
        (
            "filters:\n  start_time: 2024-01-01\n",
            "t.yaml:9: filters.start_time: '2024-01-01' is not a UTC time like 2018-02-01T12:00:00Z "
            "(fix: use the format YYYY-MM-DDTHH:MM:SSZ)",
        ),
        (
            "filters:\n  start_time: 2024-02-01T00:00:00Z\n  end_time: 2024-01-01T00:00:00Z\n",
            "t.yaml:10: filters.end_time: end_time is before start_time (fix: swap them)",
        ),
        (
            "filters:\n  status: [available, availble]\n",
            "t.yaml:9: filters.status[1]: must be one of available, protecting, deleting, restoring, error, "
            "waiting_protect, waiting_delete, waiting_restore (fix: did you mean 'available'?)",
        ),
        (
            "filters:\n  used_percent: 101\n",
            "t.yaml:9: filters.used_percent: Input should be less than or equal to 100",
        ),
        (
            "filters:\n  incremental: 'yes'\n",
            "t.yaml:9: filters.incremental: Input should be a valid boolean",
        ),
        ("filters:\n  parent_id: abc\n", "t.yaml:9: filters.parent_id: is not a UUID"),
        (
            "filters:\n  resource_type: OS::Nova::Servr\n",
            "t.yaml:9: filters.resource_type: must be one of OS::Nova::Server, OS::Cinder::Volume, "
            "OS::Ironic::BareMetalServer, OS::Native::Server, OS::Sfs::Turbo, OS::Workspace::DesktopV2 "
            "(fix: did you mean 'OS::Nova::Server'?)",
        ),
        (
            "rate_limit:\n  requests_per_second: 500\n",
            "t.yaml:9: rate_limit.requests_per_second: Input should be less than or equal to 200",
        ),
        (
            "rate_limit:\n  concurrency: 0\n",
            "t.yaml:9: rate_limit.concurrency: Input should be greater than or equal to 1",
        ),
        (
            "rate_limit:\n  page_size: 1001\n",
            "t.yaml:9: rate_limit.page_size: Input should be less than or equal to 1000",
        ),
        (
            "rate_limit:\n  requests_per_second: '10'\n",
            "t.yaml:9: rate_limit.requests_per_second: Input should be a valid number",
        ),
        (
            "output:\n  layout: '{tenant}/{regoin}/{project_id}'\n",
            "t.yaml:9: output.layout: unknown field {regoin} (fix: did you mean {region}? allowed: tenant, "
            "region, project_id, project_name, own_type, enterprise_project_id)",
        ),
        (
            "output:\n  layout: '{tenant}/{region}'\n",
            "t.yaml:9: output.layout: must contain {tenant} and {project_id} or {project_name} "
            "(fix: otherwise tenants or projects would write to the same files; "
            "e.g. {tenant}/{region}/{project_name})",
        ),
        (
            "output:\n  layout: '/abs/{tenant}/{project_id}'\n",
            "t.yaml:9: output.layout: must be a relative path without '..' "
            "(fix: e.g. {tenant}/{region}/{project_name})",
        ),
        (
            "output:\n  layout: '{tenant}/{project_id:>5}'\n",
            "t.yaml:9: output.layout: field {project_id} has a format spec or conversion "
            "(fix: write plain {project_id})",
        ),
        ("output:\n  compression: lz4\n", "t.yaml:9: output.compression: must be one of none, gzip, zstd"),
        (
            "endpoints:\n  cbr: ftp://cbr.example\n",
            "t.yaml:9: endpoints.cbr: is not an http(s) URL (fix: e.g. https://cbr.{region}.example.com)",
        ),
        (
            "endpoints:\n  iam: https://iam.{zone}.example\n",
            "t.yaml:9: endpoints.iam: only the {region} placeholder is allowed (fix: e.g. https://cbr.{region}.example.com)",
        ),
        ("timeouts:\n  connect: 0\n", "t.yaml:9: timeouts.connect: Input should be greater than 0"),
        (
            "auth2: {}\n",
            "t.yaml:8: auth2: unknown key 'auth2' (fix: did you mean 'auth'? allowed keys: tenant, auth, "
            "endpoints, regions, projects, enterprise_projects, own_types, plan, filters, rate_limit, "
            "output, timeouts, tls, proxy)",
        ),
    ],
)
def test_error_messages(extra: str, expected: str) -> None:
    text = BASE.replace("regions: [cn-north-4]\n", "regions: [cn-north-4]\n") + extra
    assert BASE.count("\n") == 7  # extra starts on line 8
    assert str(only_error(lambda: parse_tenant(text, "t.yaml"))) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "tenant: Acme!\nauth: {mode: token, token_env: T}\nregions: [cn-north-4]\n",
            "t.yaml:1: tenant: is not a valid tenant slug "
            "(fix: use 1-63 lower-case letters, digits, - and _, starting with a letter or digit)",
        ),
        (
            "tenant: t\nregions: [cn-north-4]\n",
            "t.yaml:1: auth: is required (fix: add auth: ...)",
        ),
        (
            "tenant: t\nauth:\n  user: x\nregions: [cn-north-4]\n",
            "t.yaml:2: auth.mode: mode is missing "
            "(fix: set mode to one of: token, password, aksk, temporary, agency)",
        ),
        (
            "tenant: t\nauth:\n  mode: passwd\nregions: [cn-north-4]\n",
            "t.yaml:3: auth.mode: unknown mode 'passwd' "
            "(fix: did you mean 'password'? use one of: token, password, aksk, temporary, agency)",
        ),
        ("tenant: t\nauth: token\nregions: [cn-north-4]\n", "t.yaml:2: auth: must be a mapping of keys"),
        (
            "tenant: t\nauth:\n  mode: password\n  user: u\n  password_env: P\nregions: [cn-north-4]\n",
            "t.yaml:2: auth.domain: is required (fix: add domain: ...)",
        ),
        (
            "tenant: t\nauth:\n  mode: token\nregions: [cn-north-4]\n",
            "t.yaml:2: auth: no source for the token (fix: set token_env (an environment variable name) "
            "or token_file (a file path))",
        ),
        (
            "tenant: t\nauth:\n  mode: token\n  token_env: T\n  token_file: /t\nregions: [cn-north-4]\n",
            "t.yaml:5: auth.token_file: both token_env and token_file are set (fix: keep only one of them)",
        ),
        (
            "tenant: t\nauth: {mode: temporary, source: {mode: token, token_env: T}, duration_seconds: 60}\n"
            "regions: [cn-north-4]\n",
            "t.yaml:2: auth.duration_seconds: Input should be greater than or equal to 900",
        ),
        (
            "tenant: t\nauth: {mode: token, token_env: T}\nregions:\n  - cn-north-4\n  - cn-nrth-4\n",
            "t.yaml:5: regions[1]: unknown region 'cn-nrth-4' "
            "(fix: did you mean cn-north-4? (a private cloud must set endpoints))",
        ),
        (
            "tenant: t\nauth: {mode: token, token_env: T}\nregions: [CN-North-4]\n",
            "t.yaml:3: regions[0]: 'CN-North-4' is not a region id (fix: region ids look like cn-north-4)",
        ),
        (
            "tenant: t\nauth: {mode: token, token_env: T}\nregions: [cn-north-4, cn-north-4]\n",
            "t.yaml:3: regions[1]: region 'cn-north-4' is listed twice (fix: remove the duplicate)",
        ),
        (
            "tenant: t\nauth: {mode: token, token_env: T}\nregions: cn-north-4\n",
            "t.yaml:3: regions: must be a list (fix: write [a, b] or one '- item' per line)",
        ),
        (
            "tenant: t\nauth: {mode: token, token_env: T}\nregions: []\n",
            "t.yaml:3: regions: Tuple should have at least 1 item after validation, not 0",
        ),
    ],
)
def test_error_messages_outside_base(text: str, expected: str) -> None:
    assert str(only_error(lambda: parse_tenant(text, "t.yaml"))) == expected


def test_unknown_region_is_accepted_with_endpoints() -> None:
    tenant = parse(
        """\
        tenant: private
        auth: {mode: token, token_env: T}
        regions: [xx-private-1]
        endpoints:
          iam: https://iam.{region}.cloud.internal/
          eps: https://eps.cloud.internal
          cbr: https://cbr.{region}.cloud.internal
        """
    )
    assert tenant.regions == ("xx-private-1",)
    assert tenant.endpoint("cbr", "xx-private-1") == "https://cbr.xx-private-1.cloud.internal"
    assert tenant.endpoint("iam", "xx-private-1") == "https://iam.xx-private-1.cloud.internal"
    # A template needing a region, asked for the global endpoint, gets the first region.
    assert tenant.endpoint("iam") == "https://iam.xx-private-1.cloud.internal"
    assert tenant.endpoint("eps") == "https://eps.cloud.internal"


def test_all_errors_of_a_file_are_reported_at_once_in_line_order(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "bad.yaml",
        f"""\
        tenant: Bad Name
        auth:
          mode: password
          user: u
          domain: d
          password: {SECRET}
        regions: [cn-north-4, cn-nrth-4]
        own_types: [private, mine]
        filters:
          limit: 5
          used_percent: 0
        rate_limit: {{concurrency: 999}}
        output: {{compression: rar}}
        """,
    )
    with pytest.raises(ConfigErrors) as info:
        load_tenants([path])
    found = [(e.line, e.key_path) for e in info.value.errors]
    assert found == [
        (1, "tenant"),
        (6, "auth.password"),
        (7, "regions[1]"),
        (8, "own_types[1]"),
        (10, "filters.limit"),
        (11, "filters.used_percent"),
        (12, "rate_limit.concurrency"),
        (13, "output.compression"),
    ]
    assert all(e.file == str(path) for e in info.value.errors)
    text = str(info.value)
    assert text.startswith("8 configuration problems:\n")
    assert f"  {path}:6: auth.password: inline secrets are not allowed" in text
    assert SECRET not in text


# --------------------------------------------------------------------------------------------------
# YAML-level problems


def test_yaml_syntax_error_has_line_and_column(tmp_path: Path) -> None:
    path = write(tmp_path, "t.yaml", "tenant: t\nregions: [cn-north-4\nauth: {}\n")
    error = only_error(lambda: load_tenants([path]))
    assert error.file == str(path) and error.line == 3
    assert error.problem.startswith("YAML syntax error: ") and "(column 5)" in error.problem


def test_yaml_syntax_error_does_not_quote_the_source_line(tmp_path: Path) -> None:
    path = write(tmp_path, "t.yaml", f"tenant: t\nauth: {{password: {SECRET}\n")
    error = only_error(lambda: load_tenants([path]))
    assert error.problem.startswith("YAML syntax error")
    assert SECRET not in str(error)


@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n"])
def test_empty_file(tmp_path: Path, text: str) -> None:
    path = write(tmp_path, "t.yaml", text)
    error = only_error(lambda: load_tenants([path]))
    assert (error.file, error.line, error.problem) == (str(path), None, "the file is empty")


@pytest.mark.parametrize(("text", "kind"), [("- a\n- b\n", "list"), ("just text\n", "str"), ("~\n", "null")])
def test_top_level_must_be_a_mapping(text: str, kind: str) -> None:
    error = only_error(lambda: parse_tenant(text, "t.yaml"))
    assert error.problem == f"the top level must be a mapping of keys, not {kind}"
    assert error.line == 1


def test_two_documents_in_one_file_are_an_error() -> None:
    error = only_error(lambda: parse_tenant(BASE + "---\n" + BASE, "t.yaml"))
    assert error.line == 8 and "expected a single document" in error.problem


def test_duplicate_keys_are_errors_with_both_lines() -> None:
    text = BASE + "rate_limit:\n  concurrency: 2\n  concurrency: 3\ntenant: other\n"
    errors = errors_of(lambda: parse_tenant(text, "t.yaml"))
    assert [str(e) for e in errors] == [
        "t.yaml:10: rate_limit.concurrency: duplicate key 'concurrency' (first at line 9) "
        "(fix: keep only one of them)",
        "t.yaml:11: tenant: duplicate key 'tenant' (first at line 1) (fix: keep only one of them)",
    ]


def test_python_tags_are_refused() -> None:
    error = only_error(lambda: parse_tenant(BASE + "x: !!python/object/apply:os.system ['true']\n", "t.yaml"))
    assert error.line == 8 and "could not determine a constructor" in error.problem


def test_unquoted_times_stay_strings_and_anchors_work() -> None:
    tenant = parse(
        BASE
        + textwrap.dedent(
            """\
            x-globs: &globs ["prod-*", "cn-north-4"]
            projects:
              discover:
                include: *globs
            filters:
              start_time: 2024-01-01T00:00:00Z
            """
        )
    )
    assert tenant.filters.start_time == "2024-01-01T00:00:00Z"
    assert tenant.projects.discover is not None
    assert tenant.projects.discover.include == ("prod-*", "cn-north-4")


# --------------------------------------------------------------------------------------------------
# Loading files and directories


def test_directory_loading_is_sorted_non_recursive_and_skips_hidden(tmp_path: Path) -> None:
    for name in ("b.yml", "a.yaml"):
        write(tmp_path, name, BASE.replace("tenant: acme", f"tenant: {name.split('.')[0]}"))
    write(tmp_path, ".hidden.yaml", "not: [valid\n")
    write(tmp_path, "notes.txt", "ignored")
    (tmp_path / "sub").mkdir()
    write(tmp_path / "sub", "c.yaml", "not: [valid\n")
    tenants = load_tenants([tmp_path, tmp_path / "a.yaml"])  # a.yaml named twice counts once
    assert [t.tenant for t in tenants] == ["a", "b"]
    assert [Path(t.source_file or "").name for t in tenants] == ["a.yaml", "b.yml"]


def test_duplicate_tenant_names_name_both_files(tmp_path: Path) -> None:
    first = write(tmp_path, "1.yaml", BASE)
    second = write(tmp_path, "2.yaml", "# comment\n" + BASE)
    error = only_error(lambda: load_tenants([tmp_path]))
    assert str(error) == (
        f"{second}:2: tenant: tenant name 'acme' is also used by {first} "
        "(fix: give every tenant its own name)"
    )


def test_errors_of_several_files_come_together(tmp_path: Path) -> None:
    write(tmp_path, "a.yaml", "tenant: a\n")
    write(tmp_path, "b.yaml", "")
    write(tmp_path, "c.yaml", BASE)
    errors = errors_of(lambda: load_tenants([tmp_path, tmp_path / "missing.yaml"]))
    assert [(Path(e.file or "").name, e.key_path) for e in errors] == [("missing.yaml", "")]
    errors = errors_of(lambda: load_tenants([tmp_path]))
    assert [(Path(e.file or "").name, e.key_path, e.line) for e in errors] == [
        ("a.yaml", "auth", 1),
        ("a.yaml", "regions", 1),
        ("b.yaml", "", None),
    ]


def test_empty_directory_and_no_paths(tmp_path: Path) -> None:
    error = only_error(lambda: load_tenants([tmp_path]))
    assert error.problem == "directory holds no *.yaml or *.yml file"
    assert only_error(lambda: load_tenants([])).problem == "no configuration file given"


def test_config_errors_are_config_errors() -> None:
    with pytest.raises(ConfigError):
        parse_tenant("", "x.yaml")
    single = ConfigError("p", file="f.yaml", key_path="a.b", line=3, fix="do x")
    assert str(single) == "f.yaml:3: a.b: p (fix: do x)"
    assert str(ConfigError("p")) == "p"
    assert str(ConfigErrors([single])) == str(single)


def test_repo_config_files_load() -> None:
    tenants = load_tenants([REPO / "config" / "example-tenant.yaml", REPO / "config" / "demo.yaml"])
    example, demo = tenants
    assert example.tenant == "acme-prod" and isinstance(example.enterprise_projects, EpDiscover)
    assert demo.tenant == "acme-demo"
    assert isinstance(demo.auth, PasswordAuthConfig)
    assert (demo.auth.user, demo.auth.domain, demo.auth.password_env) == (
        "acme-admin",
        "acme",
        "CBR_DEMO_PASSWORD",
    )
    assert demo.regions == ("cn-north-4", "ap-southeast-1")
    assert isinstance(demo.enterprise_projects, EpDiscover)
    assert demo.own_types == ("private", "shared", "all_granted")
    assert demo.output.compression == "none"
    assert {demo.endpoint(s, "cn-north-4") for s in ("iam", "eps", "cbr")} == {"http://127.0.0.1:8080"}
    assert demo.projects.discover is not None and demo.projects.ids is None
    assert demo.auth.resolve({"CBR_DEMO_PASSWORD": "acme-password"}).reveal() == "acme-password"


# --------------------------------------------------------------------------------------------------
# Models, filters, endpoints


def test_defaults() -> None:
    tenant = parse(BASE)
    assert tenant.projects.discover is not None and tenant.projects.discover.include == ()
    assert isinstance(tenant.enterprise_projects, EpNone)
    assert tenant.own_types == ("private",)
    assert tenant.filters.to_query() == []
    assert (tenant.rate_limit.requests_per_second, tenant.rate_limit.concurrency) == (10.0, 8)
    assert tenant.rate_limit.page_size == 1000
    assert tenant.output.layout == "{tenant}/{region}/{project_name}" and tenant.output.compression == "none"
    assert tenant.output.directory is None and tenant.endpoints is None
    assert tenant.timeouts.connect > 0 and tenant.timeouts.read > 0


def test_models_are_frozen() -> None:
    tenant = parse(BASE)
    with pytest.raises(ValidationError):
        tenant.tenant = "other"
    with pytest.raises(ValidationError):
        tenant.rate_limit.concurrency = 1


def test_enterprise_project_modes() -> None:
    def ep(text: str) -> Any:
        return parse(BASE + "enterprise_projects: " + text + "\n").enterprise_projects

    assert isinstance(ep("{mode: all_granted}"), EpAllGranted)
    ids = ep("{mode: ids, ids: ['0', 0a1b2c3d-1234-4abc-8def-0123456789ab]}")
    assert isinstance(ids, EpIds) and ids.ids == ("0", "0a1b2c3d-1234-4abc-8def-0123456789ab")
    discover = ep("{mode: discover, include: [prod*], exclude: [old*], status: all}")
    assert isinstance(discover, EpDiscover)
    assert (discover.include, discover.exclude, discover.status) == (("prod*",), ("old*",), "all")


def test_filters_to_query() -> None:
    tenant = parse(
        BASE
        + textwrap.dedent(
            """\
            filters:
              vault_id: cca85ea5-00a4-418d-9222-bd83985bc515
              status: [error, available]
              show_replication: false
              dec: true
              used_percent: 80
              member_status: accept
              name: db backup
              start_time: 2024-01-01T00:00:00Z
              end_time: "2024-01-31T23:59:59Z"
              resource_type: OS::Cinder::Volume
            """
        )
    )
    assert tenant.filters.to_query() == [
        ("dec", "true"),
        ("end_time", "2024-01-31T23:59:59Z"),
        ("member_status", "accepted"),
        ("name", "db backup"),
        ("resource_type", "OS::Cinder::Volume"),
        ("show_replication", "false"),
        ("start_time", "2024-01-01T00:00:00Z"),
        ("status", "error"),
        ("status", "available"),
        ("used_percent", "80"),
        ("vault_id", "cca85ea5-00a4-418d-9222-bd83985bc515"),
    ]


def test_filters_accept_datetimes_from_python() -> None:
    import datetime as dt

    filters = Filters(start_time=dt.datetime(2024, 1, 1, 8, tzinfo=dt.timezone(dt.timedelta(hours=8))))  # type: ignore[arg-type]
    assert filters.start_time == "2024-01-01T00:00:00Z"


def test_default_endpoints() -> None:
    tenant = parse(BASE.replace("[cn-north-4]", "[eu-west-101, ap-southeast-1]"))
    assert tenant.endpoint("cbr", "ap-southeast-1") == "https://cbr.ap-southeast-1.myhuaweicloud.com"
    assert tenant.endpoint("cbr", "eu-west-101") == "https://cbr.eu-west-101.myhuaweicloud.com"
    assert tenant.endpoint("iam", "ap-southeast-1") == "https://iam.ap-southeast-1.myhuaweicloud.com"
    assert tenant.endpoint("iam", "eu-west-101") == "https://iam.eu-west-101.myhuaweicloud.eu"
    assert tenant.endpoint("iam") == "https://iam.myhuaweicloud.com"
    assert tenant.endpoint("eps") == "https://eps.myhuaweicloud.com"
    assert tenant.endpoint("eps", "eu-west-101") == "https://eps.eu-west-101.myhuaweicloud.eu"
    with pytest.raises(ValueError, match="region is required"):
        default_endpoint("cbr", None)
    with pytest.raises(ValueError, match="unknown service"):
        default_endpoint("ecs", "cn-north-4")


def test_known_regions() -> None:
    assert len(KNOWN_REGIONS) == 34
    assert {"cn-north-4", "ap-southeast-1", "eu-west-101", "my-kualalumpur-1", "tr-west-1"} <= KNOWN_REGIONS
    assert all(re.fullmatch(r"[a-z]{2}-[a-z]+-\d+", r) for r in KNOWN_REGIONS)


def test_python_construction_without_a_file() -> None:
    auth = TokenAuthConfig(mode="token", token_env="TOK")
    tenant = TenantConfig(tenant="py", auth=auth, regions=("cn-north-4",))
    assert tenant.auth is auth
    with pytest.raises(MissingSecretError) as info:
        auth.resolve({})
    assert str(info.value) == (
        "auth.token_env: environment variable TOK is not set "
        "(fix: export TOK before running, or use token_file)"
    )


# --------------------------------------------------------------------------------------------------
# Schema and digest


def test_json_schema_documents_every_field() -> None:
    schema = json_schema()
    json.dumps(schema)  # serialisable as is
    assert schema["title"] == "cbr-crawler tenant"
    assert schema["additionalProperties"] is False
    assert set(schema["required"]) == {"tenant", "auth", "regions"}
    models = [("TenantConfig", schema), *schema["$defs"].items()]
    assert len(models) > 15
    for model_name, model in models:
        assert model.get("description"), model_name
        for name, prop in model.get("properties", {}).items():
            assert prop.get("title") and prop.get("description"), f"{model_name}.{name}"
    auth_modes = set(schema["properties"]["auth"]["discriminator"]["mapping"])
    assert auth_modes == {"token", "password", "aksk", "temporary", "agency"}


def test_digest_is_stable_and_order_independent(tmp_path: Path) -> None:
    write(tmp_path, "a.yaml", BASE)
    write(tmp_path, "b.yaml", BASE.replace("tenant: acme", "tenant: beta"))
    tenants = load_tenants([tmp_path])
    digest = config_digest(tenants)
    assert re.fullmatch(r"[0-9a-f]{64}", digest)
    assert config_digest(list(reversed(tenants))) == digest
    assert config_digest(load_tenants([tmp_path])) == digest
    # Comments, key order and flow style do not matter; values do.
    write(
        tmp_path,
        "a.yaml",
        "# reordered\nregions: [cn-north-4]\nauth: {password_env: CBR_PW, domain: acme, user: acme-admin, "
        "mode: password}\ntenant: acme\nown_types: [private]\n",
    )
    assert config_digest(load_tenants([tmp_path])) == digest
    write(tmp_path, "a.yaml", BASE + "own_types: [shared]\n")
    assert config_digest(load_tenants([tmp_path])) != digest


# --------------------------------------------------------------------------------------------------
# Helpers the runner and the demo use


def test_with_endpoints_returns_a_validated_copy(tmp_path: Path) -> None:
    tenant = load_tenant(write(tmp_path, "acme.yaml", BASE))
    pointed = tenant.with_endpoints({"iam": "http://127.0.0.1:5000", "eps": "http://127.0.0.1:5000"})
    assert pointed.endpoint("iam", "cn-north-4") == "http://127.0.0.1:5000"
    assert pointed.endpoint("eps") == "http://127.0.0.1:5000"
    assert pointed.endpoint("cbr", "cn-north-4") == "https://cbr.cn-north-4.myhuaweicloud.com"
    assert tenant.endpoints is None  # the original is untouched
    assert pointed.source == tenant.source == str(tmp_path / "acme.yaml")
    with pytest.raises(MissingSecretError, match=r"acme\.yaml:6: auth\.password_env"):
        password_auth(pointed).resolve({})
    error = only_error(lambda: tenant.with_endpoints({"cbr": "ftp://x"}))
    assert (error.key_path, error.problem) == ("endpoints.cbr", "is not an http(s) URL")


def test_resolve_helpers_with_source_descriptions(tmp_path: Path) -> None:
    (tmp_path / "sk").write_text(SECRET + "\n")
    token = TokenAuthConfig(mode="token", token_env="TOK")
    value, where = token.resolve_token({"TOK": "t0k"})
    assert (value.get_secret_value(), where) == ("t0k", "environment variable TOK")
    password = PasswordAuthConfig(
        mode="password", user="u", domain="d", password_env="PW", password_file=None
    )
    assert password.resolve_password({"PW": "pw"})[1] == "environment variable PW"
    aksk = AkSkAuthConfig(mode="aksk", access_key_env="AK", secret_key_file=str(tmp_path / "sk"))
    ak, sk, where = aksk.resolve_keys({"AK": "EXAMPLEAKID123456789"})
    assert (ak.reveal(), sk.reveal()) == ("EXAMPLEAKID123456789", SECRET)
    assert where == f"environment variable AK and file {tmp_path / 'sk'}"
    assert SECRET not in where


def test_projects_include_exclude_shortcuts() -> None:
    tenant = parse(BASE + "projects:\n  discover: {include: ['cn-*'], exclude: [MOS]}\n")
    assert (tenant.projects.include, tenant.projects.exclude) == (("cn-*",), ("MOS",))
    explicit = parse(BASE + "projects:\n  ids: [0123456789abcdef0123456789abcdef]\n")
    assert explicit.projects.discover is None and explicit.projects.include == ()


def test_explicit_nulls_mean_unset() -> None:
    tenant = parse(BASE + "endpoints:\n  iam: null\n  cbr: http://h:1\nfilters:\n  status: null\n")
    assert isinstance(tenant.auth, PasswordAuthConfig)
    assert tenant.endpoint("iam", "cn-north-4") == "https://iam.cn-north-4.myhuaweicloud.com"
    assert tenant.endpoint("cbr", "cn-north-4") == "http://h:1"
    text = BASE.replace("  password_env: CBR_PW\n", "  password_env: CBR_PW\n  password_file: null\n")
    assert config_digest([parse(text)]) == config_digest([parse(BASE)])


def test_unlimited_rate_is_for_private_clouds_and_the_emulator_only() -> None:
    private = parse(
        BASE + "endpoints:\n  cbr: http://127.0.0.1:8080\nrate_limit:\n  requests_per_second: unlimited\n"
    )
    assert private.rate_limit.rate is None
    error = only_error(lambda: parse(BASE + "rate_limit:\n  requests_per_second: unlimited\n"))
    assert str(error) == (
        "t.yaml:9: rate_limit.requests_per_second: 'unlimited' is refused on Huawei's public cloud "
        "(its gateway allows 200 requests/s per API) (fix: set a number up to 200, or set "
        "endpoints.cbr for a private cloud or the emulator)"
    )
    error = only_error(lambda: parse(BASE + "rate_limit:\n  requests_per_second:\n"))
    assert str(error) == (
        "t.yaml:9: rate_limit.requests_per_second: is empty "
        "(fix: write a number of requests per second, or 'unlimited')"
    )
    assert parse(BASE + "rate_limit:\n  requests_per_second: 25\n").rate_limit.rate == 25.0
    rate_schema = json_schema()["$defs"]["RateLimit"]["properties"]["requests_per_second"]
    assert {"const": "unlimited"} in rate_schema["anyOf"]


def test_regions_all_and_globs() -> None:
    head = "tenant: t\nauth: {mode: token, token_env: T}\n"
    assert parse(head + "regions: all\n").regions == ("*",)
    tenant = parse(head + "regions: [cn-*, ap-southeast-1]\n")
    assert tenant.regions == ("cn-*", "ap-southeast-1") and tenant.region_globs
    assert not parse(head + "regions: [cn-north-4]\n").region_globs
    assert parse(head + "regions: all\nplan: per_pass\n").plan == "per_pass"
    assert parse(head + "regions: all\n").plan == "auto"
    assert str(error_in(head + "regions: [zz-*]\n")) == (
        "t.yaml:3: regions[0]: 'zz-*' matches no region with CBR (fix: see KNOWN_REGIONS)"
    )
    assert "is not a region glob" in str(error_in(head + "regions: ['cn/*']\n"))
    assert "plan" in str(error_in(head + "regions: all\nplan: cheapest\n"))
