"""Loading: files and directories -> validated tenants; the config digest; the JSON Schema."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from pydantic import (
    ValidationError,
)

from crawler.config.fields import Origin
from crawler.config.messages import convert_errors
from crawler.config.models import TenantConfig
from crawler.config.yaml_lines import format_path, parse_yaml
from crawler.errors import ConfigError, ConfigErrors

# --------------------------------------------------------------------------------------------------
# Loading


def parse_tenant(
    text: str,
    file: str = "<string>",
    *,
    base_dir: str | Path | None = None,
    check_secrets: bool = False,
    environ: Mapping[str, str] | None = None,
) -> TenantConfig:
    """Validate one tenant document; :class:`ConfigErrors` with every problem found."""
    try:
        data, lines, errors = parse_yaml(text, file)
    except ConfigError as exc:
        raise ConfigErrors([exc]) from None
    if not isinstance(data, dict):
        kind = type(data).__name__ if data is not None else "null"
        raise ConfigErrors(
            [
                ConfigError(
                    f"the top level must be a mapping of keys, not {kind}",
                    file=file,
                    line=lines.get(()),
                    fix="start with 'tenant: <name>' then 'auth:', 'regions:'...",
                )
            ]
        )
    # Top-level keys starting with "x-" are free for YAML anchors to hang off (as in Compose files).
    data = {k: v for k, v in data.items() if not (isinstance(k, str) and k.startswith("x-"))}
    context = {"base_dir": str(base_dir)} if base_dir is not None else {}
    tenant: TenantConfig | None = None
    try:
        tenant = TenantConfig.model_validate(data, context=context)
    except ValidationError as exc:
        errors.extend(convert_errors(exc, TenantConfig, data, lines, file))
    if errors:
        raise ConfigErrors(errors)
    assert tenant is not None
    tenant._set_origin(Origin(file, {format_path(path): line for path, line in lines.items()}))
    if check_secrets:
        tenant.check_secrets(environ)
    return tenant


def load_tenant(
    path: str | Path, *, check_secrets: bool = False, environ: Mapping[str, str] | None = None
) -> TenantConfig:
    """Read and validate one tenant file."""
    file = str(path)
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigErrors(
            [
                ConfigError(
                    f"cannot read: {exc.strerror or type(exc).__name__}", file=file, fix="check the path"
                )
            ]
        ) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigErrors(
            [
                ConfigError(
                    f"not UTF-8 text (byte offset {exc.start})", file=file, fix="save the file as UTF-8"
                )
            ]
        ) from None
    return parse_tenant(text, file, base_dir=Path(path).parent, check_secrets=check_secrets, environ=environ)


def tenant_files(paths: Sequence[str | Path]) -> list[Path]:
    """Files named by ``paths``: files as given, directories as their ``*.yaml``/``*.yml`` (sorted,
    not recursive, hidden files skipped). The same file named twice counts once."""
    files: list[Path] = []
    seen: set[Path] = set()
    errors: list[ConfigError] = []
    for item in paths:
        path = Path(item)
        if path.is_dir():
            found = sorted(
                p
                for p in path.iterdir()
                if p.is_file() and p.suffix in (".yaml", ".yml") and not p.name.startswith(".")
            )
            if not found:
                errors.append(
                    ConfigError(
                        "directory holds no *.yaml or *.yml file", file=str(path), fix="check the path"
                    )
                )
        elif path.exists():
            found = [path]
        else:
            errors.append(ConfigError("no such file or directory", file=str(path), fix="check the path"))
            found = []
        for file in found:
            key = file.resolve()
            if key not in seen:
                seen.add(key)
                files.append(file)
    if errors:
        raise ConfigErrors(errors)
    return files


def load_tenants(
    paths: Sequence[str | Path], *, check_secrets: bool = False, environ: Mapping[str, str] | None = None
) -> list[TenantConfig]:
    """Load every tenant named by ``paths`` (files and directories), one tenant per file.

    Raises one :class:`ConfigErrors` with every problem of every file, including tenant names used
    twice. Touches no network; reads secrets only with ``check_secrets=True``.
    """
    if not paths:
        raise ConfigErrors(
            [ConfigError("no configuration file given", fix="name tenant files or directories")]
        )
    files = tenant_files(paths)
    tenants: list[TenantConfig] = []
    errors: list[ConfigError] = []
    first_file: dict[str, str] = {}
    for file in files:
        try:
            tenant = load_tenant(file, check_secrets=check_secrets, environ=environ)
        except ConfigError as exc:
            errors.append(exc)
            continue
        if tenant.tenant in first_file:
            errors.append(
                ConfigError(
                    f"tenant name {tenant.tenant!r} is also used by {first_file[tenant.tenant]}",
                    file=str(file),
                    key_path="tenant",
                    line=tenant._origin.lines.get("tenant"),
                    fix="give every tenant its own name",
                )
            )
            continue
        first_file[tenant.tenant] = str(file)
        tenants.append(tenant)
    if errors:
        raise ConfigErrors(errors)
    return tenants


def config_digest(tenants: Iterable[TenantConfig]) -> str:
    """sha256 of the canonical JSON of the validated tenants (order-independent).

    Safe to log: a config holds secret *names* and paths only.
    """
    documents = sorted((t.model_dump(mode="json") for t in tenants), key=lambda d: str(d["tenant"]))
    canonical = json.dumps(documents, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def json_schema() -> dict[str, Any]:
    """JSON Schema of a tenant file, for editors (every field has a title and a description)."""
    schema = TenantConfig.model_json_schema(mode="validation")
    # pydantic drops a field's title when it equals the title of the model it refers to
    # (Filters, Timeouts); editors show titles next to keys, so every field gets its own.
    for model in (schema, *schema.get("$defs", {}).values()):
        for name, prop in model.get("properties", {}).items():
            prop.setdefault("title", name.replace("_", " ").title())
    return schema
