"""The SDK-HMAC-SHA256 signer against the published test vectors (huawei-api.md section 6) and its rules."""

from __future__ import annotations

import hashlib
import hmac

import pytest
from hypothesis import given
from hypothesis import strategies as st

from crawler.support import signer

AK = "EXAMPLEAKID123456789"
SK = "EXAMPLESKexampleSK0123456789abcdefghijkl"
DATE = "20240102T030405Z"
HOST = "cbr.cn-north-4.myhuaweicloud.com"
PROJECT = "0123456789abcdef0123456789abcdef"
PATH = f"/v3/{PROJECT}/backups"
QUERY: list[tuple[str, signer.QueryValue]] = [
    ("end_time", "2024-01-31T23:59:59Z"),
    ("limit", 1000),
    ("name", "db backup"),
    ("offset", 0),
    ("sort", "created_at:desc"),
    ("start_time", "2024-01-01T00:00:00Z"),
    ("status", "error"),
    ("status", "available"),
    ("enterprise_project_id", "all_granted_eps"),
    ("own_type", "all_granted"),
    ("show_replication", True),
]
HEADERS = {
    "User-Agent": "huaweicloud-usdk-python/3.0; inventory-crawler/0.1",
    "Content-Type": "application/json",
    "X-Project-Id": PROJECT,
}
CANONICAL_QUERY = (
    "end_time=2024-01-31T23%3A59%3A59Z&enterprise_project_id=all_granted_eps&limit=1000"
    "&name=db%20backup&offset=0&own_type=all_granted&show_replication=true&sort=created_at%3Adesc"
    "&start_time=2024-01-01T00%3A00%3A00Z&status=available&status=error"
)
TOKEN = "EXAMPLE-SECURITY-TOKEN"

VECTORS = [
    pytest.param(
        {},
        "content-type;host;user-agent;x-project-id;x-sdk-date",
        "473b91aba60c867115bb2ffda23e56e094113f25faec0c62f4d985a1dc05c7d2",
        "e0f6691e0b9e3550ab12618947a0cefdf5bde1d5e2f0d9a4092469bdd80572b0",
        id="permanent",
    ),
    pytest.param(
        {"X-Security-Token": TOKEN},
        "content-type;host;user-agent;x-project-id;x-sdk-date;x-security-token",
        "54ec91cd09f461c96ec58af8720847e33567f0edc345223a9e2403ba44c5d58a",
        "082ba9235b1eb6dfb9c12531923576dedbbd96763b42a7637537ca13319ee342",
        id="temporary",
    ),
]


def test_canonical_query_of_the_vector() -> None:
    assert signer.encode_query(QUERY) == CANONICAL_QUERY


@pytest.mark.parametrize(("extra", "signed", "request_sha256", "signature"), VECTORS)
def test_vector_piece_by_piece(
    extra: dict[str, str], signed: str, request_sha256: str, signature: str
) -> None:
    headers = {**HEADERS, **extra, "Host": HOST, "X-Sdk-Date": DATE}
    assert ";".join(signer.signed_header_names(headers)) == signed
    canonical = signer.canonical_request("GET", PATH, QUERY, headers, b"")
    assert canonical.split("\n")[:3] == ["GET", PATH + "/", CANONICAL_QUERY]
    assert canonical.endswith(f"\n\n{signed}\n{signer.EMPTY_BODY_SHA256}")
    assert hashlib.sha256(canonical.encode()).hexdigest() == request_sha256
    to_sign = signer.string_to_sign(canonical, DATE)
    assert to_sign == f"SDK-HMAC-SHA256\n{DATE}\n{request_sha256}"
    assert signer.signature(SK, to_sign) == signature


@pytest.mark.parametrize(("extra", "signed", "request_sha256", "signature"), VECTORS)
def test_vector_through_sign(extra: dict[str, str], signed: str, request_sha256: str, signature: str) -> None:
    added = signer.sign("GET", HOST, PATH, QUERY, {**HEADERS, **extra}, b"", AK, SK, DATE)
    assert added == {
        "Host": HOST,
        "X-Sdk-Date": DATE,
        "Authorization": f"SDK-HMAC-SHA256 Access={AK}, SignedHeaders={signed}, Signature={signature}",
    }


@pytest.mark.parametrize(("extra", "signed", "request_sha256", "signature"), VECTORS)
def test_verifier_accepts_the_vector_from_the_wire(
    extra: dict[str, str], signed: str, request_sha256: str, signature: str
) -> None:
    added = signer.sign("GET", HOST, PATH, QUERY, {**HEADERS, **extra}, b"", AK, SK, DATE)
    # What an aiohttp server sees: the raw target and headers in whatever case the client chose.
    received = {k.lower(): v for k, v in {**HEADERS, **extra, **added}.items()}
    path, pairs = signer.split_target(f"{PATH}?{CANONICAL_QUERY}")
    parsed = signer.parse_authorization(received["authorization"])
    assert parsed.access_key == AK
    assert ";".join(parsed.signed_headers) == signed
    expected = signer.expected_signature("GET", path, pairs, received, b"", SK, parsed.signed_headers)
    assert expected == signature
    assert hmac.compare_digest(expected, parsed.signature)


_WIRE_PAIRS = [(k, signer.format_query_value(v)) for k, v in QUERY]
_VECTOR_HEADERS = {**HEADERS, "Host": HOST, "X-Sdk-Date": DATE}


@pytest.mark.parametrize(
    ("method", "path", "pairs", "headers", "body", "secret"),
    [
        pytest.param("GET", PATH, _WIRE_PAIRS, _VECTOR_HEADERS, b"", SK, id="untouched"),
        pytest.param("POST", PATH, _WIRE_PAIRS, _VECTOR_HEADERS, b"", SK, id="method"),
        pytest.param("GET", f"/v3/{PROJECT}/vaults", _WIRE_PAIRS, _VECTOR_HEADERS, b"", SK, id="path"),
        pytest.param("GET", PATH, [*_WIRE_PAIRS, ("limit", "5")], _VECTOR_HEADERS, b"", SK, id="query"),
        pytest.param(
            "GET", PATH, _WIRE_PAIRS, {**_VECTOR_HEADERS, "X-Project-Id": "x"}, b"", SK, id="header"
        ),
        pytest.param(
            "GET", PATH, _WIRE_PAIRS, {**_VECTOR_HEADERS, "X-Sdk-Date": DATE[:-2] + "6Z"}, b"", SK, id="date"
        ),
        pytest.param("GET", PATH, _WIRE_PAIRS, _VECTOR_HEADERS, b"{}", SK, id="body"),
        pytest.param("GET", PATH, _WIRE_PAIRS, _VECTOR_HEADERS, b"", SK + "x", id="secret"),
    ],
)
def test_any_tampering_breaks_the_signature(
    method: str, path: str, pairs: list[tuple[str, str]], headers: dict[str, str], body: bytes, secret: str
) -> None:
    signed = signer.signed_header_names(_VECTOR_HEADERS)
    expected = signer.expected_signature(method, path, pairs, headers, body, secret, signed)
    untouched = (method, path, pairs, headers, body, secret) == (
        "GET",
        PATH,
        _WIRE_PAIRS,
        _VECTOR_HEADERS,
        b"",
        SK,
    )
    vector_signature = "e0f6691e0b9e3550ab12618947a0cefdf5bde1d5e2f0d9a4092469bdd80572b0"
    assert hmac.compare_digest(expected, vector_signature) is untouched


def test_unsigned_headers_do_not_matter_to_the_verifier() -> None:
    added = signer.sign("GET", HOST, PATH, QUERY, HEADERS, b"", AK, SK, DATE)
    parsed = signer.parse_authorization(added["Authorization"])
    received = {**HEADERS, **added, "Accept-Encoding": "gzip", "X-Forwarded-For": "10.0.0.1"}
    pairs = [(k, signer.format_query_value(v)) for k, v in QUERY]
    assert signer.expected_signature("GET", PATH, pairs, received, b"", SK, parsed.signed_headers) == (
        parsed.signature
    )


# --- canonicalisation rules ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "canonical"),
    [
        ("/v3/p/backups", "/v3/p/backups/"),
        ("/v3/p/backups/", "/v3/p/backups/"),
        ("", "/"),
        ("/", "/"),
        ("/a b/~x", "/a%20b/~x/"),
        ("/a%20b", "/a%20b/"),  # the wire path is decoded first, then re-encoded
        ("/caf%C3%A9/é", "/caf%C3%A9/%C3%A9/"),
        ("/a%2Fb", "/a/b/"),  # SDK quirk: an encoded slash signs as a real one
        ("/a:b@c", "/a%3Ab%40c/"),
        ("/x%2541", "/x%2541/"),  # a literal "%41" survives the decode/encode round trip
        # Dot segments are signed verbatim, never resolved (the SDK does not resolve them either);
        # HTTP clients do resolve them before sending: see test_quirk_dot_segments_* in
        # test_signer_sdk_property.py.
        ("/v3/.", "/v3/./"),
        ("/v3/x/..", "/v3/x/../"),
    ],
)
def test_canonical_uri(path: str, canonical: str) -> None:
    assert signer.canonical_uri(path) == canonical


def test_quote_path_param_encodes_slash_and_reserved() -> None:
    assert signer.quote_path_param("a/b c:é~") == "a%2Fb%20c%3A%C3%A9~"


@pytest.mark.parametrize(
    ("pairs", "wire"),
    [
        ([], ""),
        ([("name", "")], "name="),
        ([("dec", False), ("incremental", True)], "dec=false&incremental=true"),
        ([("q", "a+b&c=d/e?f#g")], "q=a%2Bb%26c%3Dd%2Fe%3Ff%23g"),
        ([("q", "-._~")], "q=-._~"),
        # Sorted on decoded text: "~" (0x7E) before "é" (0xE9), although "%C3" < "~" once encoded.
        ([("k", "é"), ("k", "~")], "k=~&k=%C3%A9"),
        ([("b", "1"), ("a b", "2"), ("a", "3")], "a=3&a%20b=2&b=1"),
        ([("k", "b"), ("k", ""), ("k", "a")], "k=&k=a&k=b"),
    ],
)
def test_encode_query(pairs: list[tuple[str, signer.QueryValue]], wire: str) -> None:
    assert signer.encode_query(pairs) == wire


def test_parse_query_keeps_plus_and_tolerates_odd_shapes() -> None:
    assert signer.parse_query("a=1+2&&b&c=%20=x&d=%E2%82%AC") == [
        ("a", "1+2"),
        ("b", ""),
        ("c", " =x"),
        ("d", "€"),
    ]
    assert signer.split_target("/p") == ("/p", [])


_text = st.text(st.characters(exclude_categories=["Cs"]), max_size=12)


@given(st.lists(st.tuples(_text, _text), max_size=8))
def test_wire_query_round_trips_to_the_same_canonical_query(pairs: list[tuple[str, str]]) -> None:
    wire = signer.encode_query(pairs)
    assert sorted(signer.parse_query(wire)) == sorted(pairs)
    assert signer.encode_query(signer.parse_query(wire)) == wire
    assert all(c.isascii() and c not in " +#" for c in wire)


def test_signed_header_names_skip_underscores_and_lower_case() -> None:
    headers = {"X-Project-Id": "p", "X_Custom": "v", "host": "h", "Content-Type": "application/json"}
    assert signer.signed_header_names(headers) == ["content-type", "host", "x-project-id"]


def test_header_values_are_stripped_and_looked_up_case_insensitively() -> None:
    base = {"host": HOST, "x-sdk-date": DATE, "X-Custom": "  v a l  "}
    canonical = signer.canonical_request("get", "/p", [], base, b"")
    assert canonical.split("\n")[:7] == [
        "GET",
        "/p/",
        "",
        "host:" + HOST,
        "x-custom:v a l",
        "x-sdk-date:" + DATE,
        "",
    ]
    with pytest.raises(ValueError, match="x-missing"):
        signer.canonical_request("GET", "/p", [], base, b"", ["host", "x-missing"])


def test_body_hash_and_unsigned_payload() -> None:
    body = b'{"a": 1}'
    json_headers = {"Content-Type": "application/json;charset=UTF-8"}
    added = signer.sign("POST", HOST, "/p", [], json_headers, body, AK, SK, DATE)
    assert signer.CONTENT_SHA256_HEADER not in added
    canonical = signer.canonical_request("POST", "/p", [], {**json_headers, **added}, body)
    assert canonical.endswith(hashlib.sha256(body).hexdigest())

    form = {"Content-Type": "application/x-www-form-urlencoded"}
    added = signer.sign("POST", HOST, "/p", [], form, b"a=1", AK, SK, DATE)
    assert added[signer.CONTENT_SHA256_HEADER] == signer.UNSIGNED_PAYLOAD
    assert "x-sdk-content-sha256" in added["Authorization"]
    received = {**form, **added}
    canonical = signer.canonical_request("POST", "/p", [], received, b"anything else")
    assert canonical.endswith("\n" + signer.UNSIGNED_PAYLOAD)


def test_sign_keeps_a_given_host_and_refuses_reserved_headers() -> None:
    added = signer.sign("GET", HOST, "/p", [], {"host": "other:8443"}, b"", AK, SK, DATE)
    assert "Host" not in added
    assert "SignedHeaders=host;x-sdk-date," in added["Authorization"]
    for reserved in ("authorization", "X-SDK-DATE"):
        with pytest.raises(ValueError, match="set by the signer"):
            signer.sign("GET", HOST, "/p", [], {reserved: "x"}, b"", AK, SK, DATE)
    with pytest.raises(ValueError, match="required"):
        signer.sign("GET", HOST, "/p", [], {}, b"", AK, "", DATE)


def test_sign_never_returns_the_secret() -> None:
    added = signer.sign("GET", HOST, PATH, QUERY, HEADERS, b"", AK, SK, DATE)
    assert all(SK not in value for value in added.values())


# --- Authorization parsing ----------------------------------------------------------------------

GOOD_SIG = "e0f6691e0b9e3550ab12618947a0cefdf5bde1d5e2f0d9a4092469bdd80572b0"


def test_parse_authorization_and_masked_repr() -> None:
    parsed = signer.parse_authorization(
        f"SDK-HMAC-SHA256 Access={AK}, SignedHeaders=host;x-sdk-date, Signature={GOOD_SIG}"
    )
    assert parsed == signer.ParsedAuthorization(AK, ("host", "x-sdk-date"), GOOD_SIG)
    assert GOOD_SIG not in repr(parsed)
    # Tolerates missing spaces after the commas.
    assert (
        signer.parse_authorization(
            f"SDK-HMAC-SHA256 Access={AK},SignedHeaders=host;x-sdk-date,Signature={GOOD_SIG}"
        )
        == parsed
    )


@pytest.mark.parametrize(
    "value",
    [
        "",
        f"Bearer {GOOD_SIG}",
        f"SDK-HMAC-SM3 Access={AK}, SignedHeaders=host;x-sdk-date, Signature={GOOD_SIG}",
        f"SDK-HMAC-SHA256 Access={AK}, SignedHeaders=host;x-sdk-date",
        f"SDK-HMAC-SHA256 Access=, SignedHeaders=host;x-sdk-date, Signature={GOOD_SIG}",
        f"SDK-HMAC-SHA256 Access={AK}, SignedHeaders=host;;x-sdk-date, Signature={GOOD_SIG}",
        f"SDK-HMAC-SHA256 Access={AK}, SignedHeaders=Host;x-sdk-date, Signature={GOOD_SIG}",
        f"SDK-HMAC-SHA256 Access={AK}, SignedHeaders=x-sdk-date, Signature={GOOD_SIG}",
        f"SDK-HMAC-SHA256 Access={AK}, SignedHeaders=host, Signature={GOOD_SIG}",
        f"SDK-HMAC-SHA256 Access={AK}, SignedHeaders=host;x-sdk-date, Signature={GOOD_SIG.upper()}",
        f"SDK-HMAC-SHA256 Access={AK}, SignedHeaders=host;x-sdk-date, Signature={GOOD_SIG[:-1]}é",
        f"SDK-HMAC-SHA256 Access={AK}, SignedHeaders=host;x-sdk-date, Signature={GOOD_SIG}, Extra=1",
        f"SDK-HMAC-SHA256 Access={AK}, Access={AK}, SignedHeaders=host;x-sdk-date, Signature={GOOD_SIG}",
        f"SDK-HMAC-SHA256 Access={AK} SignedHeaders=host;x-sdk-date Signature={GOOD_SIG}",
    ],
)
def test_parse_authorization_rejects_malformed(value: str) -> None:
    with pytest.raises(ValueError) as info:
        signer.parse_authorization(value)
    assert GOOD_SIG not in str(info.value)


def test_expected_signature_needs_the_date() -> None:
    with pytest.raises(ValueError, match="X-Sdk-Date"):
        signer.expected_signature("GET", "/p", [], {"Host": HOST}, b"", SK, ["host"])
