"""The ``SDK-HMAC-SHA256`` AK/SK signer, shared by the crawler (signing) and the emulator (verifying).

Pure functions, no I/O, no clock: the caller supplies ``X-Sdk-Date``. The rules are those of the
official Python SDK (``huaweicloudsdkcore`` 3.1.219, ``signer/signer.py``), because the emulator must
accept what that SDK puts on the wire; ``tests/test_signer_sdk_property.py`` checks the equality.

Canonical request (joined by ``\\n``)::

    METHOD                       upper-cased
    canonical URI                wire path percent-decoded, split on "/", each segment re-encoded
                                 (only A-Za-z0-9-._~ bare), a trailing "/" appended if missing
    canonical query              pairs sorted by (name, value) on the *decoded* strings (code points),
                                 each "quote(name)=quote(value)", joined by "&"; empty values give
                                 "name="; booleans are "true"/"false". The SDK sends exactly this
                                 string as the wire query.
    canonical headers            "name:value.strip()\\n" per signed header (so a blank line follows)
    signed headers               every header name without "_", lower-cased, sorted, ";"-joined
    payload hash                 hex sha256 of the body; the empty-body hash for no body; the value of
                                 X-Sdk-Content-Sha256 when that header is present and the body is not
                                 empty (the SDK sets it to UNSIGNED-PAYLOAD for non-JSON bodies)

String to sign: ``SDK-HMAC-SHA256\\n{X-Sdk-Date}\\n{hex sha256(canonical request)}``; the signature is
the hex HMAC-SHA256 of it keyed with the secret key itself.

Verifying (the emulator): take the *raw* request target (aiohttp ``request.raw_path``, never the
decoded ``request.path``, which would be decoded twice), split it with :func:`split_target`, parse the
``Authorization`` header with :func:`parse_authorization`, and compare :func:`expected_signature` with
the received one using :func:`hmac.compare_digest`.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from urllib.parse import quote, unquote

SDK_DATE_FORMAT = "%Y%m%dT%H%M%SZ"
ALGORITHM = "SDK-HMAC-SHA256"
EMPTY_BODY_SHA256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
CONTENT_SHA256_HEADER = "X-Sdk-Content-Sha256"
UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"

QueryValue = str | int | bool
"""What a query pair may hold; ints and booleans are formatted as the SDK formats them."""

_SIGNATURE_RE = re.compile(r"[0-9a-f]{64}")


_UNRESERVED = re.compile(r"[A-Za-z0-9_.~-]*")


@functools.lru_cache(maxsize=8192)  # names, ids, own types and offsets recur request after request
def _encode(text: str) -> str:
    # RFC 3986 unreserved characters stay bare, everything else (UTF-8) is %XX with upper-case hex:
    # exactly `quote(s, safe="~")` as the SDK calls it ("~" is in quote's always-safe set anyway).
    # Ids, numbers and enum values are nearly all the queries hold: they skip quote() entirely.
    if _UNRESERVED.fullmatch(text):
        return text
    return quote(text, safe="~")


def format_query_value(value: QueryValue) -> str:
    """The text the SDK puts on the wire for a scalar query value: ``True`` -> ``true``, 5 -> ``5``."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def encode_query(params: Sequence[tuple[str, QueryValue]]) -> str:
    """The canonical query string, which is also the exact wire query (no leading ``?``).

    A repeated parameter is passed as one pair per value. Pairs are sorted by decoded name, then
    decoded value, by code point (the SDK sorts the raw tuples before encoding, so ``"~"`` sorts
    before ``"é"`` even though ``%C3%A9`` would sort first once encoded).
    """
    pairs = sorted((name, format_query_value(value)) for name, value in params)
    return "&".join(f"{_encode(name)}={_encode(value)}" for name, value in pairs)


def parse_query(raw_query: str) -> list[tuple[str, str]]:
    """Decode a wire query string into ``(name, value)`` pairs, in wire order.

    The inverse of :func:`encode_query`: ``%XX`` is decoded (UTF-8), ``+`` stays a literal plus (the
    SDK writes a space as ``%20`` and a plus as ``%2B``), a pair without ``=`` has an empty value and
    empty segments (``a=1&&b=2``) are skipped.
    """
    pairs: list[tuple[str, str]] = []
    for part in raw_query.split("&"):
        if not part:
            continue
        name, _, value = part.partition("=")
        pairs.append((unquote(name), unquote(value)))
    return pairs


def split_target(raw_target: str) -> tuple[str, list[tuple[str, str]]]:
    """Split a raw request target (``/v3/p/backups?limit=5``) into its raw path and decoded query pairs."""
    path, _, query = raw_target.partition("?")
    return path, parse_query(query)


def quote_path_param(value: str) -> str:
    """Encode a value substituted into a path template, as the SDK does (``/`` becomes ``%2F``)."""
    return quote(value, safe="")


def canonical_uri(path: str) -> str:
    """The canonical URI of a wire path: decoded, re-encoded per segment, with a trailing ``/``.

    The path is the one sent on the wire (already percent-encoded). Like the SDK it is decoded
    *before* splitting, so an encoded ``%2F`` inside a segment signs as a literal ``/``. Dot segments
    (``.``, ``..``) are kept, as the SDK keeps them: a signed path must go on the wire unresolved
    (yarl with ``encoded=True`` sends it as is; ``requests`` resolves them, so the SDK's own calls to
    such a path cannot verify).
    """
    uri = "/".join(_encode(segment) for segment in unquote(path).split("/"))
    return uri if uri.endswith("/") else uri + "/"


def signed_header_names(headers: Mapping[str, str]) -> list[str]:
    """Names of the headers the SDK signs: every name without ``_``, lower-cased, sorted."""
    return sorted(name.lower() for name in headers if "_" not in name)


def _lookup(headers: Mapping[str, str], name: str) -> str | None:
    """Case-insensitive header lookup that also works on a plain dict (the last spelling wins)."""
    wanted = name.lower()
    found: str | None = None
    for key, value in headers.items():
        if key.lower() == wanted:
            found = value
    return found


def _payload_hash(headers: Mapping[str, str], body: bytes) -> str:
    if not body:
        return EMPTY_BODY_SHA256
    declared = _lookup(headers, CONTENT_SHA256_HEADER)
    if declared:
        return declared
    return hashlib.sha256(body).hexdigest()


def canonical_request(
    method: str,
    path: str,
    query: Sequence[tuple[str, QueryValue]],
    headers: Mapping[str, str],
    body: bytes,
    signed_headers: Sequence[str] | None = None,
) -> str:
    """The canonical request; ``signed_headers`` defaults to :func:`signed_header_names` of ``headers``.

    A verifier passes the names the client listed in ``SignedHeaders``; one missing from ``headers``
    raises :class:`ValueError`.
    """
    names = list(signed_headers) if signed_headers is not None else signed_header_names(headers)
    lines: list[str] = []
    for name in names:
        value = _lookup(headers, name)
        if value is None:
            raise ValueError(f"signed header {name!r} is not in the request")
        lines.append(f"{name}:{value.strip()}\n")
    return "\n".join(
        [
            method.upper(),
            canonical_uri(path),
            encode_query(query),
            "".join(lines),
            ";".join(names),
            _payload_hash(headers, body),
        ]
    )


def string_to_sign(canonical_request: str, sdk_date: str) -> str:
    """``SDK-HMAC-SHA256\\n{sdk_date}\\n{hex sha256(canonical_request)}``."""
    digest = hashlib.sha256(canonical_request.encode("utf-8")).hexdigest()
    return f"{ALGORITHM}\n{sdk_date}\n{digest}"


def signature(secret_key: str, string_to_sign: str) -> str:
    """Hex HMAC-SHA256 of ``string_to_sign`` keyed with the secret key itself (no key derivation)."""
    return hmac.new(secret_key.encode("utf-8"), string_to_sign.encode("utf-8"), hashlib.sha256).hexdigest()


def authorization_value(access_key: str, signed_headers: Sequence[str], signature_hex: str) -> str:
    """``SDK-HMAC-SHA256 Access=AK, SignedHeaders=a;b, Signature=hex``."""
    names = ";".join(signed_headers)
    return f"{ALGORITHM} Access={access_key}, SignedHeaders={names}, Signature={signature_hex}"


def sign(
    method: str,
    host: str,
    path: str,
    query: Sequence[tuple[str, QueryValue]],
    headers: Mapping[str, str],
    body: bytes,
    access_key: str,
    secret_key: str,
    sdk_date: str,
) -> dict[str, str]:
    """Sign a request; return the headers to add to it.

    ``headers`` already holds every other header to send (X-Project-Id, X-Security-Token,
    Content-Type, User-Agent...); all of them without ``_`` in their name are signed. ``path`` is the
    wire path and ``query`` the pairs whose :func:`encode_query` is the wire query. The result holds
    ``X-Sdk-Date``, ``Authorization``, ``Host`` (``host``, unless ``headers`` has one: send it, so the
    signed and the sent Host agree) and, like the SDK, ``X-Sdk-Content-Sha256: UNSIGNED-PAYLOAD`` when
    Content-Type is neither JSON nor BSON.
    """
    if not access_key or not secret_key:
        raise ValueError("an access key and a secret key are both required to sign")
    for reserved in ("Authorization", "X-Sdk-Date"):
        if _lookup(headers, reserved) is not None:
            raise ValueError(f"{reserved} is set by the signer and must not be passed in")
    added: dict[str, str] = {}
    if _lookup(headers, "Host") is None:
        added["Host"] = host
    added["X-Sdk-Date"] = sdk_date
    content_type = _lookup(headers, "Content-Type")
    # The SDK refuses to hash bodies it does not serialise itself and says so in a signed header.
    if content_type and not content_type.startswith(("application/json", "application/bson")):
        added[CONTENT_SHA256_HEADER] = UNSIGNED_PAYLOAD
    all_headers = {**headers, **added}
    names = signed_header_names(all_headers)
    request = canonical_request(method, path, query, all_headers, body, names)
    sig = signature(secret_key, string_to_sign(request, sdk_date))
    added["Authorization"] = authorization_value(access_key, names, sig)
    return added


@dataclass(frozen=True)
class ParsedAuthorization:
    """The parts of an ``SDK-HMAC-SHA256`` Authorization header. The repr masks the signature."""

    access_key: str
    signed_headers: tuple[str, ...]
    signature: str

    def __repr__(self) -> str:
        return (
            f"ParsedAuthorization(access_key={self.access_key!r}, "
            f"signed_headers={self.signed_headers!r}, signature='***')"
        )


def parse_authorization(value: str) -> ParsedAuthorization:
    """Parse ``SDK-HMAC-SHA256 Access=.., SignedHeaders=.., Signature=..``; raise ValueError if malformed.

    The signature must be 64 lower-case hex digits (so that :func:`hmac.compare_digest`, which
    rejects non-ASCII text with TypeError, can always be used on it); signed header names must be
    non-empty and lower-case, and must include ``host`` and ``x-sdk-date`` which every SDK signs.
    The error messages never echo the header.
    """
    algorithm, _, rest = value.strip().partition(" ")
    if algorithm != ALGORITHM:
        raise ValueError(f"unsupported signing algorithm (expected {ALGORITHM})")
    fields: dict[str, str] = {}
    for item in rest.split(","):
        key, sep, item_value = item.strip().partition("=")
        if not sep or key in fields:
            raise ValueError("malformed Authorization header")
        fields[key] = item_value
    if set(fields) != {"Access", "SignedHeaders", "Signature"}:
        raise ValueError("Authorization header needs exactly Access, SignedHeaders and Signature")
    access_key = fields["Access"]
    if not access_key:
        raise ValueError("empty Access in Authorization header")
    names = tuple(fields["SignedHeaders"].split(";"))
    if any(not name or name != name.lower() for name in names):
        raise ValueError("malformed SignedHeaders in Authorization header")
    if "host" not in names or "x-sdk-date" not in names:
        raise ValueError("SignedHeaders must include host and x-sdk-date")
    if not _SIGNATURE_RE.fullmatch(fields["Signature"]):
        raise ValueError("Signature in Authorization header is not 64 lower-case hex digits")
    return ParsedAuthorization(access_key, names, fields["Signature"])


def expected_signature(
    method: str,
    path: str,
    query: Sequence[tuple[str, str]],
    headers: Mapping[str, str],
    body: bytes,
    secret_key: str,
    signed_headers: Sequence[str],
) -> str:
    """The signature a correct client would have sent, for the verifier to compare.

    ``path`` is the raw wire path, ``query`` the decoded wire pairs (:func:`split_target`),
    ``headers`` the received headers and ``signed_headers`` the names the client listed in its
    ``SignedHeaders``. The date is the received ``X-Sdk-Date`` verbatim (checking its freshness is the
    caller's job). Raises ValueError when X-Sdk-Date or a listed header is missing.
    """
    sdk_date = _lookup(headers, "X-Sdk-Date")
    if sdk_date is None:
        raise ValueError("X-Sdk-Date header is missing")
    request = canonical_request(method, path, query, headers, body, signed_headers)
    return signature(secret_key, string_to_sign(request, sdk_date))
