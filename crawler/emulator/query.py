"""ListBackups (``GET /v3/{project_id}/backups``): parse the 23 parameters, filter, sort, page, serialise.

The data lives in :mod:`crawler.emulator.estate`; this module only sees it through the small
:class:`BackupSource` protocol (views of record handles in creation order, field getters, cached
serialised pages), so the query semantics can be read in one place.

Semantics chosen where the reference page is silent (each is a documented decision, not an accident):

- Filters are AND-ed. ``name`` and ``resource_name`` match exactly (case-sensitive), like every
  other string filter; the reference gives no hint of substring matching.
- ``start_time``/``end_time`` compare against ``created_at``, both bounds inclusive, in UTC.
- ``enterprise_project_id=all_granted_eps`` keeps the backups whose EP is in the caller's granted EPs
  (``granted_eps=None`` means every EP, which is what an account with global permissions sees).
- ``used_percent=N`` keeps the backups whose *vault* is at least N percent full.
- ``show_replication`` defaults to ``true``: ``replication_records`` appear on the records that have
  some; ``false`` drops the key from those records. Records without replication never carry the key.
- ``dec`` is accepted and ignored: the emulator does not model Dedicated Cloud.
- Child backups (disk backups nested in a server backup's ``children``) are not list entries and do
  not count. ``parent_id=X`` lists the children of backup ``X`` (if ``X`` is visible in the view) as
  entries, with the other filters applied to them.
- ``member_status`` concerns the share of a backup: in the owner's view it keeps the owner's backups
  shared with that status, in the receiver's view the backups shared to it with that status.
- ``sort``: unknown keys, bad directions, empty items and repeated keys are rejected. A ``null``
  ``protected_at`` sorts before every value ascending (after every value descending). Ties are broken
  by ``id`` in the direction of the last sort key, so every order is total and paging is stable.
- ``marker`` must be the id of a live backup visible to the project (else 400, as an OpenStack-style
  keyset lookup would answer); paging resumes at the first record that sorts after the marker (even
  if the marker itself does not match the filters), and ``offset`` counts from there.
- ``count`` is always the total number of matches, whatever the marker, offset and limit.
- Parameters outside the 23 are ignored, like the real API gateway does with unknown query keys.
  Repeating a parameter other than ``status`` uses its first value. An empty value (``name=``) is
  treated as if the parameter were absent.
"""

from __future__ import annotations

import re
from array import array
from bisect import bisect_left, bisect_right
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, Protocol

from multidict import MultiMapping

QUERY_PARAMETERS = frozenset(
    {
        "checkpoint_id",
        "dec",
        "end_time",
        "enterprise_project_id",
        "image_type",
        "incremental",
        "limit",
        "marker",
        "member_status",
        "name",
        "offset",
        "own_type",
        "parent_id",
        "resource_az",
        "resource_id",
        "resource_name",
        "resource_type",
        "show_replication",
        "sort",
        "start_time",
        "status",
        "used_percent",
        "vault_id",
    }
)
SORT_KEYS = ("created_at", "updated_at", "name", "status", "protected_at", "id")
BACKUP_STATUSES = (
    "available",
    "protecting",
    "deleting",
    "restoring",
    "error",
    "waiting_protect",
    "waiting_delete",
    "waiting_restore",
)
IMAGE_TYPES = ("backup", "replication")
RESOURCE_TYPES = (
    "OS::Nova::Server",
    "OS::Cinder::Volume",
    "OS::Ironic::BareMetalServer",
    "OS::Native::Server",
    "OS::Sfs::Turbo",
    "OS::Workspace::DesktopV2",
)
OWN_TYPES = ("private", "shared", "all_granted")
# The older spellings `accept`/`reject` are still documented as accepted input.
MEMBER_STATUSES = {
    "pending": "pending",
    "accepted": "accepted",
    "rejected": "rejected",
    "accept": "accepted",
    "reject": "rejected",
}
ALL_GRANTED_EPS = "all_granted_eps"
MAX_LIMIT = 1000
MAX_SORT_LENGTH = 255
TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"

SortSpec = tuple[tuple[str, bool], ...]
"""Sort keys in priority order, each with ``True`` for descending."""


class QueryError(ValueError):
    """An invalid ListBackups request; the app answers 400 ``BackupService.9900`` with ``message``."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def _invalid(name: str, value: str, why: str) -> QueryError:
    # Values are echoed truncated: they come from the caller and are never secrets, but may be huge.
    shown = value if len(value) <= 64 else value[:61] + "..."
    return QueryError(f"Invalid parameter {name}: {shown!r} {why}")


def parse_sort(value: str, name: str = "sort") -> SortSpec:
    """Parse ``key[:asc|desc],...`` (direction defaults to desc) into a :data:`SortSpec`."""
    if len(value) > MAX_SORT_LENGTH:
        raise _invalid(name, value, f"is longer than {MAX_SORT_LENGTH} characters")
    spec: list[tuple[str, bool]] = []
    for item in value.split(","):
        key, sep, direction = item.partition(":")
        if key not in SORT_KEYS:
            raise _invalid(name, value, f"has an unknown sort key {key!r} (allowed: {', '.join(SORT_KEYS)})")
        if sep and direction not in ("asc", "desc"):
            raise _invalid(name, value, f"has an unknown direction {direction!r} (allowed: asc, desc)")
        if any(k == key for k, _ in spec):
            raise _invalid(name, value, f"repeats the sort key {key!r}")
        spec.append((key, direction != "asc"))
    return tuple(spec)


def with_tie_break(spec: SortSpec) -> SortSpec:
    """``spec`` made total: ``id`` appended in the last key's direction unless already present."""
    if any(k == "id" for k, _ in spec):
        return spec
    return (*spec, ("id", spec[-1][1]))


@dataclass(frozen=True)
class Behaviour:
    """ListBackups behaviour the real service does not publish; embedded in the scenario.

    ``default_sort`` applies when the request has no ``sort``; ``limit_over_max`` decides whether
    ``limit > 1000`` is clamped to 1000 or rejected with 400; ``echo_offset_limit`` adds ``offset``
    and ``limit`` to the response body (the schema has them, the published examples do not).
    """

    default_sort: str = "created_at:desc"
    limit_over_max: Literal["clamp", "reject"] = "clamp"
    echo_offset_limit: bool = False

    def __post_init__(self) -> None:
        try:
            parse_sort(self.default_sort, "default_sort")
        except QueryError as exc:
            raise ValueError(exc.message) from None
        if self.limit_over_max not in ("clamp", "reject"):
            raise ValueError(f"limit_over_max must be 'clamp' or 'reject', not {self.limit_over_max!r}")

    @property
    def sort_spec(self) -> SortSpec:
        return parse_sort(self.default_sort, "default_sort")


@dataclass(frozen=True)
class ListBackupsQuery:
    """A validated ListBackups request. ``None`` means the parameter was absent.

    Times are UTC microseconds since the epoch. ``limit`` keeps a value above 1000 as sent: clamping
    or rejecting it is a :class:`Behaviour` decision taken when the query runs.
    """

    checkpoint_id: str | None = None
    dec: bool | None = None
    end_time: int | None = None
    enterprise_project_id: str | None = None
    image_type: str | None = None
    incremental: bool | None = None
    limit: int | None = None
    marker: str | None = None
    member_status: str | None = None
    name: str | None = None
    offset: int = 0
    own_type: str = "private"
    parent_id: str | None = None
    resource_az: str | None = None
    resource_id: str | None = None
    resource_name: str | None = None
    resource_type: str | None = None
    show_replication: bool = True
    sort: SortSpec | None = None
    start_time: int | None = None
    status: frozenset[str] | None = None
    used_percent: int | None = None
    vault_id: str | None = None

    def effective_limit(self, behaviour: Behaviour) -> int:
        """The page size, after the ``limit_over_max`` decision (raises :class:`QueryError`)."""
        if self.limit is None:
            return MAX_LIMIT
        if self.limit > MAX_LIMIT:
            if behaviour.limit_over_max == "reject":
                raise _invalid("limit", str(self.limit), f"is out of range 1-{MAX_LIMIT}")
            return MAX_LIMIT
        return self.limit


_INT = re.compile(r"-?[0-9]+")
_USED_PERCENT = re.compile(r"[1-9][0-9]?|100")


def _parse_bool(name: str, value: str) -> bool:
    # The service (and the SDK) speak exactly `true`/`false`; `True`, `1` or `yes` are rejected.
    if value == "true":
        return True
    if value == "false":
        return False
    raise _invalid(name, value, "is not a boolean (true or false)")


def _parse_time(name: str, value: str) -> int:
    try:
        moment = datetime.strptime(value, TIME_FORMAT).replace(tzinfo=UTC)
    except ValueError:
        raise _invalid(name, value, "is not a time like 2018-02-01T12:00:00Z") from None
    delta = moment - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def _choice(name: str, value: str, allowed: Sequence[str]) -> str:
    if value not in allowed:
        raise _invalid(name, value, f"is not one of {', '.join(allowed)}")
    return value


def parse_list_backups_query(
    params: MultiMapping[str] | Mapping[str, str], *, behaviour: Behaviour | None = None
) -> ListBackupsQuery:
    """Validate the query string of a ListBackups request; raises :class:`QueryError`.

    Only the 23 documented parameters are read; any other key is ignored, as the real gateway does.
    With ``behaviour`` given, ``limit_over_max="reject"`` is enforced here already; without it the
    decision is taken by :meth:`ListBackupsQuery.effective_limit` when the query runs.
    """

    def first(name: str) -> str | None:
        value = params.get(name)
        return value or None  # empty means absent

    values: dict[str, Any] = {}
    for name in ("checkpoint_id", "marker", "name", "parent_id", "resource_az", "resource_id", "vault_id"):
        values[name] = first(name)
    if (resource_name := first("resource_name")) is not None and len(resource_name) > 255:
        raise _invalid("resource_name", resource_name, "is longer than 255 characters")
    values["resource_name"] = resource_name
    if values["name"] is not None and len(values["name"]) > 255:
        raise _invalid("name", values["name"], "is longer than 255 characters")
    for name in ("dec", "incremental", "show_replication"):
        if (raw := first(name)) is not None:
            values[name] = _parse_bool(name, raw)
    for name in ("start_time", "end_time"):
        if (raw := first(name)) is not None:
            values[name] = _parse_time(name, raw)
    if (raw := first("limit")) is not None:
        if not _INT.fullmatch(raw):
            raise _invalid("limit", raw, "is not an integer")
        limit = int(raw)
        if limit < 1:
            raise _invalid("limit", raw, f"is out of range 1-{MAX_LIMIT}")
        values["limit"] = limit
    if (raw := first("offset")) is not None:
        if not _INT.fullmatch(raw) or int(raw) < 0:
            raise _invalid("offset", raw, "is not a non-negative integer")
        values["offset"] = int(raw)
    if (raw := first("own_type")) is not None:
        values["own_type"] = _choice("own_type", raw, OWN_TYPES)
    if (raw := first("member_status")) is not None:
        if raw not in MEMBER_STATUSES:
            raise _invalid("member_status", raw, "is not one of pending, accepted, rejected")
        values["member_status"] = MEMBER_STATUSES[raw]
    if (raw := first("image_type")) is not None:
        values["image_type"] = _choice("image_type", raw, IMAGE_TYPES)
    if (raw := first("resource_type")) is not None:
        values["resource_type"] = _choice("resource_type", raw, RESOURCE_TYPES)
    if (raw := first("enterprise_project_id")) is not None:
        values["enterprise_project_id"] = raw
    if (raw := first("sort")) is not None:
        values["sort"] = parse_sort(raw)
    if (raw := first("used_percent")) is not None:
        if not _USED_PERCENT.fullmatch(raw):
            raise _invalid("used_percent", raw, "is not an integer from 1 to 100")
        values["used_percent"] = int(raw)
    statuses = params.getall("status", []) if isinstance(params, MultiMapping) else [params.get("status", "")]
    statuses = [s for s in statuses if s]
    if statuses:
        values["status"] = frozenset(_choice("status", s, BACKUP_STATUSES) for s in statuses)
    query = ListBackupsQuery(**values)
    if behaviour is not None:
        query.effective_limit(behaviour)
    return query


# --------------------------------------------------------------------------------------------------
# Running a query against a BackupSource


class BackupSource(Protocol):
    """What the query engine needs from the estate. A *handle* is an int naming one record."""

    @property
    def generation(self) -> int:
        """Changes whenever any view changes (churn), so cached results keyed by it stay correct."""

    @property
    def query_cache(self) -> QueryCache: ...

    def view(self, project_id: str, own_type: str) -> Sequence[int]:
        """Top-level records of the view in ascending (created_at, id) order."""

    def children_view(self, project_id: str, own_type: str, parent_id: str) -> Sequence[int]:
        """The child records of ``parent_id`` if that backup is in the view, else empty."""

    def resolve_marker(self, project_id: str, backup_id: str, children: bool) -> int | None:
        """Handle of a live backup (or child, with ``children``) visible to the project."""

    def getters(self, children: bool) -> Mapping[str, Callable[[int], Any]]:
        """Field getters by name: the filterable fields and the sort keys (times as int microseconds)."""

    def serialized(self, handle: int, show_replication: bool) -> bytes:
        """The record as JSON bytes, exactly as it appears in the ``backups`` array."""

    def serialized_page(self, handles: Sequence[int], show_replication: bool) -> bytes:
        """The records as comma-separated JSON, the inside of the ``backups`` array."""

    def in_view(self, project_id: str, own_type: str, handle: int) -> bool:
        """Whether the live top-level backup ``handle`` is in the view."""

    def changes_since(self, generation: int) -> Sequence[Delta] | None:
        """The churn steps since ``generation``, oldest first; ``None`` if no longer remembered."""


Delta = tuple[Sequence[int], Sequence[int]]
"""One churn step: (created handles in creation order, deleted handles); deletions happen first."""


def patch_by_creation(
    handles: array[int], deltas: Sequence[Delta], keep: Callable[[int], bool], created: Callable[[int], int]
) -> None:
    """Bring an ascending-creation result up to date in place: drop the deleted, append the created
    that ``keep`` accepts. Valid because churn only creates backups newer than every existing one."""
    for new, gone in deltas:
        for h in gone:
            at = created(h)
            i = bisect_left(handles, at, key=created)
            while i < len(handles) and created(handles[i]) == at:
                if handles[i] == h:
                    del handles[i]
                    break
                i += 1
        handles.extend(h for h in new if keep(h))


@dataclass
class QueryCache:
    """LRU of ordered results of filtered or re-sorted queries: key -> (source generation, handles)."""

    capacity: int = 64
    entries: OrderedDict[tuple[Any, ...], tuple[int, array[int]]] = field(default_factory=OrderedDict)

    def get(self, key: tuple[Any, ...]) -> tuple[int, array[int]] | None:
        found = self.entries.get(key)
        if found is not None:
            self.entries.move_to_end(key)
        return found

    def put(self, key: tuple[Any, ...], value: tuple[int, array[int]]) -> None:
        self.entries[key] = value
        self.entries.move_to_end(key)
        while len(self.entries) > self.capacity:
            self.entries.popitem(last=False)


def _predicates(
    query: ListBackupsQuery, get: Mapping[str, Callable[[int], Any]], granted_eps: frozenset[str] | None
) -> list[Callable[[int], bool]]:
    # Cheap column-backed checks first, derived-string checks last.
    preds: list[Callable[[int], bool]] = []

    def equals(name: str, wanted: object) -> None:
        getter = get[name]
        preds.append(lambda h: bool(getter(h) == wanted))

    ep = query.enterprise_project_id
    if ep == ALL_GRANTED_EPS:
        if granted_eps is not None:
            ep_of = get["enterprise_project_id"]
            preds.append(lambda h: ep_of(h) in granted_eps)
    elif ep is not None:
        equals("enterprise_project_id", ep)
    if query.status is not None:
        status_of, statuses = get["status"], query.status
        preds.append(lambda h: status_of(h) in statuses)
    for name in ("image_type", "incremental", "resource_type", "member_status", "vault_id"):
        if (wanted := getattr(query, name)) is not None:
            equals(name, wanted)
    created = get["created_at"]
    if (start := query.start_time) is not None:
        preds.append(lambda h: bool(created(h) >= start))
    if (end := query.end_time) is not None:
        preds.append(lambda h: bool(created(h) <= end))
    if (percent := query.used_percent) is not None:
        used = get["used_percent"]
        preds.append(lambda h: bool(used(h) >= percent))
    for name in ("checkpoint_id", "name", "resource_name", "resource_id", "resource_az"):
        if (wanted := getattr(query, name)) is not None:
            equals(name, wanted)
    return preds


def _descending_text(value: str) -> tuple[int, ...]:
    # Negated code points with a sentinel above every negated one: sorts ascending in reverse text order.
    return (*(-ord(c) for c in value), 1)


def order_key(spec: SortSpec, get: Mapping[str, Callable[[int], Any]]) -> Callable[[int], tuple[Any, ...]]:
    """A key function whose ascending order is the order ``spec`` asks for (``None`` first when asc)."""
    parts: list[Callable[[int], Any]] = []

    def ascending(getter: Callable[[int], Any]) -> Callable[[int], Any]:
        return lambda h: (0, 0) if (v := getter(h)) is None else (1, v)

    def descending_number(getter: Callable[[int], Any]) -> Callable[[int], Any]:
        return lambda h: (1, 0) if (v := getter(h)) is None else (0, -v)

    def descending_text(getter: Callable[[int], Any]) -> Callable[[int], Any]:
        return lambda h: (0, _descending_text(getter(h)))

    for name, descending in spec:
        if not descending:
            parts.append(ascending(get[name]))
        elif name in ("created_at", "updated_at", "protected_at"):
            parts.append(descending_number(get[name]))
        else:
            parts.append(descending_text(get[name]))
    return lambda h: tuple(part(h) for part in parts)


class _Ordered:
    """The matches in result order: a sequence read forwards, or an ascending one read backwards."""

    def __init__(self, items: Sequence[int], backwards: bool) -> None:
        self.items = items
        self.backwards = backwards

    def __len__(self) -> int:
        return len(self.items)

    def page(self, start: int, limit: int) -> list[int]:
        n = len(self.items)
        if start >= n:
            return []
        if not self.backwards:
            return list(self.items[start : start + limit])
        stop = n - start
        first = max(0, stop - limit)
        chunk = list(self.items[first:stop])
        chunk.reverse()
        return chunk


def run_list_backups(
    source: BackupSource,
    project_id: str,
    query: ListBackupsQuery,
    *,
    granted_eps: frozenset[str] | None = None,
    behaviour: Behaviour | None = None,
) -> bytes:
    """Answer a ListBackups request with the full 200 body; raises :class:`QueryError` (400)."""
    behaviour = behaviour or Behaviour()
    limit = query.effective_limit(behaviour)
    spec = with_tie_break(query.sort or behaviour.sort_spec)
    children = query.parent_id is not None
    get = source.getters(children)
    if query.parent_id is not None:
        base = source.children_view(project_id, query.own_type, query.parent_id)
    else:
        base = source.view(project_id, query.own_type)
    preds = _predicates(query, get, granted_eps)
    by_creation = spec in ((("created_at", True), ("id", True)), (("created_at", False), ("id", False)))
    key_fn = order_key(spec, get)

    if by_creation and not preds:
        ordered = _Ordered(base, backwards=spec[0][1])
    else:
        # Results in creation order are patched after churn (see patch_by_creation); other orders are
        # recomputed, which keying them by the generation achieves.
        patchable = by_creation and query.parent_id is None
        cache_key = (
            None if patchable else source.generation,
            project_id,
            query.own_type,
            query.parent_id,
            spec if not by_creation else None,
            granted_eps if query.enterprise_project_id == ALL_GRANTED_EPS else None,
            *(getattr(query, name) for name in _FILTER_FIELDS),
        )
        keep = preds[0] if len(preds) == 1 else lambda h: all(p(h) for p in preds)
        entry = source.query_cache.get(cache_key)
        matches = None
        if entry is not None:
            matches = entry[1]
            if entry[0] != source.generation:
                deltas = source.changes_since(entry[0])
                if deltas is None:
                    matches = None
                else:
                    own_type = query.own_type
                    patch_by_creation(
                        matches,
                        deltas,
                        lambda h: source.in_view(project_id, own_type, h) and keep(h),
                        get["created_at"],
                    )
                    source.query_cache.put(cache_key, (source.generation, matches))
        if matches is None:
            found = [h for h in base if keep(h)] if preds else list(base)
            if not by_creation:
                found.sort(key=key_fn)
            # An int array is 8 bytes a handle; a list of ints ~36 (the int objects are not shared).
            matches = array("q", found)
            source.query_cache.put(cache_key, (source.generation, matches))
        ordered = _Ordered(matches, backwards=by_creation and spec[0][1])

    start = 0
    if query.marker is not None:
        marker = source.resolve_marker(project_id, query.marker, children)
        if marker is None:
            raise _invalid("marker", query.marker, "is not the id of a backup of this project")
        if ordered.backwards:
            # Stored ascending by (created_at, id): "after the marker" in descending order is "before it".
            asc = order_key((("created_at", False), ("id", False)), get)
            start = len(ordered) - bisect_left(ordered.items, asc(marker), key=asc)
        else:
            start = bisect_right(ordered.items, key_fn(marker), key=key_fn)
    start += query.offset

    handles = ordered.page(start, limit)
    show = query.show_replication
    body = [b'{"backups":[', source.serialized_page(handles, show), b'],"count":']
    body.append(str(len(ordered)).encode())
    if behaviour.echo_offset_limit:
        body.append(f',"offset":{query.offset},"limit":{limit}'.encode())
    body.append(b"}")
    return b"".join(body)


_FILTER_FIELDS = (
    "checkpoint_id",
    "enterprise_project_id",
    "image_type",
    "incremental",
    "member_status",
    "name",
    "resource_az",
    "resource_id",
    "resource_name",
    "resource_type",
    "start_time",
    "end_time",
    "status",
    "used_percent",
    "vault_id",
)
