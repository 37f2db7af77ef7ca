"""The ListBackups API (``GET /v3/{project_id}/backups``): the request, and its answer decoded lazily.

Every ListBackups call of the crawler (a scope's pages, ``plan``'s counts, discovery's credential
check) is built by :func:`list_backups_request`, and every answer decoded by :func:`parse_page`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import msgspec

from crawler.errors import BadResponseError
from crawler.pipeline.client import ApiRequest
from crawler.pipeline.records import PROVENANCE_KEY


def list_backups_request(base_url: str, project_id: str, query: Sequence[tuple[str, str]]) -> ApiRequest:
    """A ListBackups request of ``project_id`` at the CBR endpoint ``base_url``."""
    return ApiRequest(
        service="cbr",
        method="GET",
        base_url=base_url,
        path=f"/v3/{project_id}/backups",
        query=query,
        project_id=project_id,
    )


# More backups than any project holds (CBR quotas are far lower): a count past it is a broken or
# hostile answer, and would have the crawler page through a billion empty offsets.
MAX_COUNT = 100_000_000


class _Page(msgspec.Struct):
    backups: list[msgspec.Raw]
    count: int


class _RecordHead(msgspec.Struct):
    """The only parts of a record the crawler reads; every other field is skipped, not parsed.

    A record that already has the crawler's provenance key is noted, so that the writer does not
    splice a second one in.
    """

    id: str
    provenance: msgspec.Raw | msgspec.UnsetType = msgspec.field(name=PROVENANCE_KEY, default=msgspec.UNSET)


class _OwnedRecordHead(msgspec.Struct):
    """A record's head for a single pass: also the fields that decide its partition.

    ``project_id`` is the owner's project (a shared backup carries its owner's, not the project
    it is listed in); ``enterprise_project_id`` is optional in the API and means "0" (the default
    enterprise project) when absent.
    """

    id: str
    project_id: str = ""
    enterprise_project_id: str | None = "0"
    provenance: msgspec.Raw | msgspec.UnsetType = msgspec.field(name=PROVENANCE_KEY, default=msgspec.UNSET)


_decode_page = msgspec.json.Decoder(_Page).decode
_decode_head = msgspec.json.Decoder(_RecordHead).decode
_decode_owned_head = msgspec.json.Decoder(_OwnedRecordHead).decode


@dataclass(slots=True)
class Page:
    """A ListBackups page: each record's raw bytes exactly as the API sent them, and its id."""

    records: list[bytes]
    ids: list[str]
    count: int
    clashing: list[int]  # indexes of records that already carry a PROVENANCE_KEY field
    # Single passes only (parse_owned_page): each record's owner project and enterprise project.
    owners: list[str] | None = None
    eps: list[str] | None = None


def parse_page(body: bytes, request_id: str | None, owned: bool = False) -> Page:
    """Decode a ListBackups answer lazily; reject what is not a page, so that the client retries it.

    Records are not parsed into objects: msgspec hands back each one's raw bytes, and only its
    ``id`` is decoded. Writing those bytes keeps every field exactly as sent (unknown keys, number
    formats, escapes) and costs a third of a full parse.
    """
    try:
        page = _decode_page(body)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise BadResponseError(
            f"not a ListBackups page ({len(body)} bytes): {exc}", request_id=request_id
        ) from exc
    except RecursionError:
        # JSON nested deeper than the decoder goes (a hostile or broken server): not a page.
        raise BadResponseError(
            f"not a ListBackups page ({len(body)} bytes): nested too deep", request_id=request_id
        ) from None
    if not 0 <= page.count <= MAX_COUNT:
        raise BadResponseError(f"ListBackups answer has a bad 'count': {page.count}", request_id=request_id)
    records: list[bytes] = []
    ids: list[str] = []
    clashing: list[int] = []
    owners: list[str] | None = [] if owned else None
    eps: list[str] | None = [] if owned else None
    decode = _decode_owned_head if owned else _decode_head
    for index, raw in enumerate(page.backups):
        try:
            head = decode(raw)
        except (msgspec.DecodeError, msgspec.ValidationError, RecursionError) as exc:
            raise BadResponseError(f"backup #{index} of the page: {exc}", request_id=request_id) from exc
        if not head.id:
            raise BadResponseError(f"backup #{index} of the page has an empty 'id'", request_id=request_id)
        if head.provenance is not msgspec.UNSET:
            clashing.append(index)
        records.append(bytes(raw))
        ids.append(head.id)
        if owners is not None and eps is not None:
            assert isinstance(head, _OwnedRecordHead)
            if not head.project_id:
                raise BadResponseError(
                    f"backup #{index} of the page has no 'project_id': its owner (private or shared) "
                    "cannot be told, so a single pass cannot split it",
                    request_id=request_id,
                )
            owners.append(head.project_id)
            eps.append(head.enterprise_project_id or "0")
    return Page(records, ids, page.count, clashing, owners, eps)


def parse_owned_page(body: bytes, request_id: str | None) -> Page:
    """:func:`parse_page` for a single pass: also each record's owner project and enterprise project."""
    return parse_page(body, request_id, owned=True)
