"""The emulator's seeded estate: domains, projects, enterprise projects, vaults, backups and shares.

Same :class:`EstateSpec` -> byte-identical data. Millions of backups must be generated in seconds,
held in little memory (~22 bytes a backup) and served without the emulator being a crawler
benchmark's bottleneck, so the estate is columnar:

- Backups are numbered (the *handle*). Only what filters and the default order need is stored, in
  ``array`` columns: resource, creation time (microseconds), status and a flag byte. Everything else
  (names, times, extend_info, children, replication records, ...) is derived on demand from a hash of
  the handle, so it costs no memory and stays deterministic.
- Resources (servers, disks, file systems) are numbered too and own the project, the vault (hence
  the enterprise project and the vault usage), the type and the AZ of their backups.
- Ids are an invertible encoding of (kind, number) dressed as a version-4 UUID, so an id from a
  ``marker`` or ``parent_id`` parameter is mapped back to its handle without any lookup table.
- Each project keeps the handles it owns in ascending creation order (creation times are unique in
  a project). The default ``created_at desc`` page is a slice of that array read backwards.
- Records are served by :class:`_RecordWriter`, which fills one ``%`` template per record straight
  from the columns (no dict, no per-record orjson call). :meth:`Estate._record` builds the same
  record as a dict: it is the readable definition, used by :meth:`Estate.truth`, and the tests check
  that the writer's bytes equal ``orjson.dumps`` of it. There is no per-record cache; a small LRU of
  whole pages (``cache_bytes``) only spares repeated identical requests.

Churn appends new handles (newest ``created_at``, so they land at the front of the default order and
shift every offset) and deletes handles anywhere; it bumps :attr:`Estate.generation`, which every
derived cache is keyed on. Churn records the ``time.monotonic()`` instants of the creations and
deletions it makes, so :meth:`Estate.existed_throughout` can say which backups a crawl had to find.
"""

from __future__ import annotations

import bisect
import math
import random
import time
from array import array
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import orjson

from crawler.emulator.query import (
    BACKUP_STATUSES,
    RESOURCE_TYPES,
    Behaviour,
    Delta,
    ListBackupsQuery,
    QueryCache,
    patch_by_creation,
    run_list_backups,
)

# --------------------------------------------------------------------------------------------------
# Specs and the public records


@dataclass(frozen=True)
class DomainSpec:
    """One account (IAM domain) to generate. ``backups`` is the total over all its projects."""

    name: str
    subprojects: int = 2
    enterprise_projects: int = 3
    vaults_per_project: int = 3
    backups: int = 1000
    shared_fraction: float = 0.05
    empty_projects: int = 0


@dataclass(frozen=True)
class EstateSpec:
    """Everything the estate is generated from."""

    seed: int = 42
    regions: tuple[str, ...] = ("cn-north-4", "ap-southeast-1")
    domains: tuple[DomainSpec, ...] = (DomainSpec("acme"),)


@dataclass(frozen=True)
class Domain:
    id: str
    name: str


@dataclass(frozen=True)
class Project:
    id: str
    name: str
    domain_id: str
    region: str
    parent_id: str
    enabled: bool


@dataclass(frozen=True)
class EnterpriseProject:
    id: str
    name: str
    domain_id: str
    status: int
    description: str
    created_at: str
    updated_at: str
    type: str


@dataclass(frozen=True)
class Vault:
    """A CBR vault; ``used_percent`` is what the ``used_percent`` filter compares against."""

    id: str
    name: str
    project_id: str
    enterprise_project_id: str
    capacity: int  # GB
    used: int  # GB
    used_percent: int


# --------------------------------------------------------------------------------------------------
# Deterministic derivation

_M64 = (1 << 64) - 1
_M48 = (1 << 48) - 1


def _mix(x: int) -> int:
    """splitmix64: a fast, well-spread 64-bit hash of an integer."""
    x = (x + 0x9E3779B97F4A7C15) & _M64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _M64
    return x ^ (x >> 31)


_MUL_A = 0x5DEECE66D1B5
_MUL_B = 0xC2B2AE3D27D5
_INV_A = pow(_MUL_A, -1, 1 << 48)
_INV_B = pow(_MUL_B, -1, 1 << 48)

# Kinds of generated UUIDs; the number they carry must stay below 2**40.
K_BACKUP, K_CHILD, K_CHECKPOINT, K_VAULT, K_RESOURCE, K_DISK = 1, 2, 3, 4, 5, 6
K_SNAPSHOT, K_IMAGE, K_POLICY, K_REPLICATION, K_REMOTE_BACKUP, K_REMOTE_CHECKPOINT = 7, 8, 9, 10, 11, 12
K_REMOTE_VAULT, K_CHILD_SNAPSHOT = 13, 14


class _Ids:
    """Invertible ids: (kind, number) -> a UUID-4-looking string, and back.

    The first 48 bits are a keyed bijection of ``kind << 40 | number`` (multiply by odd constants and
    xor-shift, all invertible mod 2**48); the rest is a hash of those bits, which also lets
    :meth:`parse` reject strings this estate did not make.
    """

    def __init__(self, seed: int) -> None:
        key = _mix((seed & _M64) ^ 0x1DC0DE)
        self._k1 = key & _M48
        self._k2 = _mix(key)
        self._makers = [self.maker(kind) for kind in range(16)]

    def make(self, kind: int, number: int) -> str:
        return self._makers[kind](number)

    def maker(self, kind: int) -> Callable[[int], str]:
        """``make`` for one kind, as a closure: the hot path (several ids per served record) skips the
        attribute lookups. ``kind << 40 | number`` never overlaps, so the key xor folds into a constant."""
        base, k2 = (kind << 40) ^ self._k1, self._k2

        def make(number: int) -> str:
            x = ((base ^ number) * _MUL_A) & _M48
            x ^= x >> 24
            x = (x * _MUL_B) & _M48
            x ^= x >> 24
            t = ((x ^ k2) * 0x9E3779B97F4A7C15) & _M64
            t ^= t >> 29
            t = (t * 0xBF58476D1CE4E5B9) & _M64
            t ^= t >> 32
            return "%08x-%04x-4%03x-%04x-%012x" % (  # noqa: UP031 - printf is the fastest here
                x >> 16,
                x & 0xFFFF,
                t & 0xFFF,
                0x8000 | (t >> 12) & 0x3FFF,
                t >> 16,
            )

        return make

    def parse(self, value: str) -> tuple[int, int] | None:
        if len(value) != 36:
            return None
        try:
            x = int(value[0:8] + value[9:13], 16)
        except ValueError:
            return None
        x &= _M48
        x ^= x >> 24  # xor-shift by half the width is its own inverse
        x = (x * _INV_B) & _M48
        x ^= x >> 24
        x = (x * _INV_A) & _M48
        x ^= self._k1
        kind, number = x >> 40, x & ((1 << 40) - 1)
        if kind >= len(self._makers):  # no id of that kind is ever made
            return None
        return (kind, number) if self.make(kind, number) == value else None


_EPOCH = datetime(1970, 1, 1)
_SECOND = 1_000_000
_DAY = 86_400 * _SECOND
# The generated history ends here (not at wall-clock time) so that generation is reproducible.
ANCHOR_US = 1_748_736_000 * _SECOND  # 2025-06-01T00:00:00Z
HISTORY_US = 365 * _DAY


_DAY_PREFIX: dict[int, str] = {}
# "HH:MM:SS." for every second of a day (86,400 short strings, ~5 MB, built on first use).
_HMS: list[str] = []


def _day_prefix(day: int) -> str:
    """``2020-08-18T`` for days since the epoch, memoised (a few hundred distinct days are used)."""
    prefix = _DAY_PREFIX.get(day)
    if prefix is None:
        prefix = _DAY_PREFIX[day] = (_EPOCH + timedelta(days=day)).strftime("%Y-%m-%dT")
    return prefix


def _hms_table() -> list[str]:
    if not _HMS:
        _HMS.extend("%02d:%02d:%02d." % (s // 3600, s // 60 % 60, s % 60) for s in range(86_400))  # noqa: UP031
    return _HMS


def _ts(micros: int, utc_suffix: bool) -> str:
    """``2020-08-18T06:00:45.375070`` (or with ``+00:00``), several times faster than ``isoformat``."""
    day, rest = divmod(micros, _DAY)
    seconds, fraction = divmod(rest, _SECOND)
    text = (_DAY_PREFIX.get(day) or _day_prefix(day)) + (_HMS or _hms_table())[seconds] + "%06d" % fraction  # noqa: UP031
    return text + "+00:00" if utc_suffix else text


def _table(weights: Sequence[tuple[int, int]]) -> bytes:
    """A 256-byte ``bytes.translate`` table: value ``v`` for ``w`` of the 256 byte values, in order."""
    out = bytearray()
    for value, weight in weights:
        out.extend([value] * weight)
    if len(out) != 256:
        raise AssertionError("weights must sum to 256")
    return bytes(out)


S_AVAILABLE, S_PROTECTING, S_DELETING, S_RESTORING, S_ERROR, S_WAIT_PROTECT = 0, 1, 2, 3, 4, 5
_STATUS_TABLE = _table([(0, 236), (1, 4), (2, 2), (3, 2), (4, 6), (5, 3), (6, 1), (7, 2)])
_UNPROTECTED = frozenset({S_PROTECTING, S_ERROR, S_WAIT_PROTECT})
T_NOVA, T_CINDER, T_IRONIC, T_NATIVE, T_TURBO, T_WORKSPACE = range(6)
_RTYPE_TABLE = _table([(0, 140), (1, 76), (2, 8), (3, 8), (4, 12), (5, 12)])
_SERVER_TYPES = frozenset({T_NOVA, T_IRONIC, T_NATIVE, T_WORKSPACE})
_WITH_CHILDREN_TYPES = frozenset({T_NOVA, T_IRONIC})
PROVIDER_SERVER = "0daac4c5-6707-4851-97ba-169e36266b66"
PROVIDER_DISK = "d1603440-187d-4516-af25-121250c7cc97"
PROVIDER_TURBO = "3f3c3220-245c-4805-b811-758870015881"
PROVIDER_VMWARE = "a13639de-00be-4e94-af30-26912d75e4a2"
_PROVIDERS = (
    PROVIDER_SERVER,
    PROVIDER_DISK,
    PROVIDER_SERVER,
    PROVIDER_VMWARE,
    PROVIDER_TURBO,
    PROVIDER_SERVER,
)

# Flag bits of a backup.
F_AUTO, F_INCREMENTAL, F_NON_ASCII, F_UTC_SUFFIX, F_REPLICA, F_REPLICATED_OUT, F_CHILDREN = (
    1,
    2,
    4,
    8,
    16,
    32,
    64,
)
_FLAG_ODDS: tuple[tuple[int, int], ...] = (
    (F_AUTO, 205),
    (F_INCREMENTAL, 180),
    (F_NON_ASCII, 12),
    (F_UTC_SUFFIX, 6),
)
_FLAG_ODDS += ((F_REPLICA, 8), (F_REPLICATED_OUT, 6), (F_CHILDREN, 64))

DEFAULT_CACHE_BYTES = 64 * 2**20
CHURN_LOG_STEPS = 10_000
MEMBER_STATUS_NAMES = ("pending", "accepted", "rejected")
CHILD_BASE = 1 << 42
"""Handles at or above this name child backups: ``CHILD_BASE + parent * 4 + k``."""

_PROJECT_WORDS = (
    "prod", "dev", "test", "staging", "data", "web", "erp", "ops", "finance", "hr", "analytics",
    "sandbox", "legacy", "mobile", "iot", "ai", "crm", "billing", "shop", "archive",
)  # fmt: skip
_EP_NAMES = (
    ("production", "Production workloads"),
    ("development", "Development and CI"),
    ("finance", "Finance department"),
    ("研发中心", "研发中心的云资源"),
    ("data-platform", "Data lake and analytics"),
    ("marketing", "Marketing sites"),
    ("sécurité", "Équipe sécurité"),
    ("legacy-erp", "ERP being migrated"),
    ("ai-lab", "Model training"),
    ("e-commerce", "Shop front and back office"),
)
_VAULT_NAMES = (
    "vault-server-{}",
    "vault-disk-{}",
    "vault-sfs-{}",
    "备份库-{}",
    "coffre-sauvegarde-{}",
    "vault-{}",
)
_MANUAL_NAMES = ("manualbk_{:04x}", "before-upgrade-{}", "db_backup_{}", "release-{}", "snapshot-{}")
_NON_ASCII_NAMES = (
    "数据库备份_{}",
    "sauvegarde_été_{}",
    "Sicherung_Größe_{}",
    "バックアップ_{}",
    "copia_año_{}",
)
_RESOURCE_WORDS = ("web", "db", "app", "cache", "mq", "gateway", "build", "mail", "files", "report")
_NON_ASCII_RESOURCES = ("数据库服务器-{}", "serveur-données-{}", "Prüfstand-{}")
_SIZES: tuple[tuple[int, ...], ...] = (
    (40, 50, 100, 200, 500),
    (10, 20, 40, 100, 500, 1000, 2000),
    (500, 1000),
    (100, 200),
)
_SIZES += ((500, 1000, 5000, 10000), (80, 100))
_REPLICATION_STATUSES = ("success", "success", "success", "replicating", "fail", "skip", "waiting_replicate")
_FALLBACK_REMOTE_REGIONS = ("cn-east-3", "cn-north-4")


# --------------------------------------------------------------------------------------------------
# Serving: BackupResp JSON written straight from the columns

_JSON_BOOL = ("false", "true")
_DESCRIPTIONS: tuple[str | None, ...] = (None, "", "", "", "", "daily backup", "备份说明", "before release")
_ARCHITECTURES = ("x86_64", "aarch64")
_RESTORE_MODES = ('"snapshot"', '"backup"')
_APP_CONSISTENCY = tuple(
    ',"app_consistency":{"app_consistency":"%s","app_consistency_status":"0",'  # noqa: UP031
    '"app_consistency_error_code":"0","app_consistency_error_message":""}}' % value
    for value in "01"
)
_IS_SERVER = tuple(t in _SERVER_TYPES for t in range(len(_PROVIDERS)))
_WITH_CHILDREN = tuple(t in _WITH_CHILDREN_TYPES for t in range(len(_PROVIDERS)))
_RETENTION_DAYS = (None, 30, 90, 365)


def _json(value: Any) -> str:
    return orjson.dumps(value).decode()


# Every string a writer puts between quotes without escaping: generated names and fixed words. Checked
# once here so that the template writer below can never emit JSON that orjson would have escaped.
for _text in (
    *_MANUAL_NAMES,
    *_NON_ASCII_NAMES,
    *_RESOURCE_WORDS,
    *_NON_ASCII_RESOURCES,
    *BACKUP_STATUSES,
    *RESOURCE_TYPES,
    *_PROVIDERS,
):
    if _json(_text) != f'"{_text}"':
        raise AssertionError(f"{_text!r} needs JSON escaping")

# The record and its children, key order exactly as Estate._record builds them (orjson keeps dict order).
_RECORD = (
    '{"id":"%s",%s%s%s"parent_id":null,"provider_id":"%s","extend_info":{"auto_trigger":%s,"bootable":%s,'
    '"snapshot_id":%s,"support_lld":%s,"supported_restore_mode":%s,"os_images_data":%s,'
    '"contain_system_disk":%s,"encrypted":%s,"system_disk":%s,%s,"enterprise_project_id":%s,'
    '"children":[%s],"incremental":%s,"version":2%s%s}'
)
_CHILD = (
    '{"id":"%s",%s%s%s"parent_id":"%s","provider_id":"'
    + PROVIDER_DISK
    + '","extend_info":{"auto_trigger":%s,'
    '"bootable":%s,"snapshot_id":"%s","support_lld":%s,"supported_restore_mode":null,"os_images_data":null,'
    '"contain_system_disk":null,"encrypted":%s,"system_disk":%s,%s,"enterprise_project_id":%s,'
    '"children":[],"incremental":%s,"version":2}'
)
_FLAT_RECORD = (
    '{"id":"%s","checkpoint_id":"%s","name":"%s","description":%s,%s"image_type":"%s","status":"%s",'
    '"created_at":"%s","updated_at":"%s%s","expired_at":%s,"protected_at":%s,"parent_id":null,'
    '"provider_id":"%s","extend_info":{"auto_trigger":%s,"bootable":%s,"snapshot_id":%s,"support_lld":%s,'
    '"supported_restore_mode":%s,"os_images_data":%s,"contain_system_disk":%s,"encrypted":%s,'
    '"system_disk":%s,"is_multi_az":%s,"architecture":"%s","progress":%d%s,"enterprise_project_id":%s,'
    '"children":[],"incremental":%s,"version":2%s%s}'
)
_HEAD = '"checkpoint_id":"%s","name":"%s","description":%s,'
_MIDDLE = (
    '"image_type":"%s","status":"%s","created_at":"%s","updated_at":"%s%s","expired_at":%s,"protected_at":%s,'
)
_EXTEND_TAIL = '"is_multi_az":%s,"architecture":"%s","progress":%d%s'
_REPLICATION = (
    ',"replication_records":[{"id":"%s","created_at":"%s","destination_backup_id":"%s",'
    '"destination_checkpoint_id":"%s","destination_project_id":%s,"destination_region":%s,'
    '"destination_vault_id":"%s","source_backup_id":"%s","source_checkpoint_id":"%s","source_project_id":%s,'
    '"source_region":%s,"status":"%s","vault_id":"%s","extra_info":{"progress":%d,"fail_code":%s,'
    '"fail_reason":%s,"auto_trigger":%s,"destination_vault_id":"%s"}}]'
)
_RESOURCE_SEGMENT = '%s"resource_id":"%s","resource_name":"%s",%s,"resource_type":"%s","resource_size":%d,'
_DISK_SEGMENT = (
    '%s"resource_id":"%s","resource_name":"%s-disk%d",%s,"resource_type":"OS::Cinder::Volume",'
    '"resource_size":%d,'
)
_FAIL = ('"BackupService.6100"', '"destination vault capacity is insufficient"')


class _RecordWriter:
    """Writes the JSON text of top-level backups straight from the estate's columns.

    This is the serving path: a 1000-record page is written in a few milliseconds, so pages need no
    cache. It is byte-identical to ``orjson.dumps(estate._record(b))`` (the readable reference, which
    the tests compare it with over whole estates): one ``%`` template per record, fed with per-resource
    and per-project fragments memoised here and the per-record fields derived inline.
    """

    # Memoised fragments are dropped wholesale past this many entries (a 5M estate has ~170k resources).
    CACHE_ENTRIES = 1 << 16

    def __init__(self, estate: Estate) -> None:
        self._estate = estate
        ids = estate._ids
        self._id, self._checkpoint, self._snapshot, self._image = (
            ids.maker(k) for k in (K_BACKUP, K_CHECKPOINT, K_SNAPSHOT, K_IMAGE)
        )
        self._child, self._child_snapshot, self._disk = (
            ids.maker(k) for k in (K_CHILD, K_CHILD_SNAPSHOT, K_DISK)
        )
        self._replication, self._remote_backup, self._remote_checkpoint, self._remote_vault = (
            ids.maker(k) for k in (K_REPLICATION, K_REMOTE_BACKUP, K_REMOTE_CHECKPOINT, K_REMOTE_VAULT)
        )
        self._resources: dict[int, str] = {}  # r -> '"project_id":...,"resource_size":N,'
        self._disks: dict[int, tuple[str, str, str]] = {}  # r -> the same segment for child disk k
        self._places: dict[int, tuple[str, str, str, str]] = {}  # p -> project, region, remote ones (JSON)
        self._vault_json = [_json(v.id) for v in estate._vault_list]  # vaults never change
        self._vault_owner: dict[int, str] = {}
        self._az_json: dict[str, str] = {}
        self._resource_id = ids.maker(K_RESOURCE)
        self._ep_json: dict[str, str] = {}
        self._descriptions = tuple("null" if d is None else _json(d) for d in _DESCRIPTIONS)

    def _owner(self, r: int) -> tuple[str, str, str]:
        """(``"project_id":..,"vault_id":..,`` of its vault, its name, ``"resource_az":"..."``)."""
        e = self._estate
        v = e._r_vault[r]
        owner = self._vault_owner.get(v)
        if owner is None:
            project, vault = e._project_list[e._r_proj[r]], e._vault_list[v]
            owner = self._vault_owner[v] = f'"project_id":{_json(project.id)},"vault_id":{_json(vault.id)},'
        az = e._resource_az(r)
        az_text = self._az_json.get(az)
        if az_text is None:
            az_text = self._az_json[az] = f'"resource_az":{_json(az)}'
        return owner, e._resource_name(r), az_text

    def _resource(self, r: int) -> str:
        if len(self._resources) >= self.CACHE_ENTRIES:
            self._resources.clear()
        e = self._estate
        owner, name, az_text = self._owner(r)
        rtype = e._r_type[r]
        sizes = _SIZES[rtype]
        # Resource names come from fixed, JSON-safe patterns (checked at import): no escaping needed.
        segment = self._resources[r] = _RESOURCE_SEGMENT % (
            owner,
            self._resource_id(r),
            name,
            az_text,
            RESOURCE_TYPES[rtype],
            sizes[(_mix(r ^ e._k_res) >> 40) % len(sizes)],
        )
        return segment

    def _disk_segments(self, r: int) -> tuple[str, str, str]:
        if len(self._disks) >= self.CACHE_ENTRIES:
            self._disks.clear()
        owner, name, az_text = self._owner(r)
        made = [
            _DISK_SEGMENT % (owner, self._disk(r * 4 + k), name, k, az_text, 40 if k == 0 else 100 * k)
            for k in range(3)
        ]
        segments = self._disks[r] = (made[0], made[1], made[2])
        return segments

    def _place(self, p: int) -> tuple[str, str, str, str]:
        e = self._estate
        here = e._project_list[p]
        remote_region, remote_project = e._remote(p)
        place = self._places[p] = (
            _json(here.id),
            _json(here.region),
            _json(remote_project),
            _json(remote_region),
        )
        return place

    def _ep(self, ep: str) -> str:
        text = self._ep_json[ep] = _json(ep)
        return text

    def texts(self, handles: Sequence[int], show_replication: bool = True) -> list[str]:
        """The JSON text of each top-level backup in ``handles`` (``replication_records`` only with
        ``show_replication``)."""
        e = self._estate
        res, created_col, status_col, flags_col = e._res, e._created, e._status, e._flags
        r_type, r_vault, r_proj, vault_ep, policies = (
            e._r_type,
            e._r_vault,
            e._r_proj,
            e._vault_ep,
            e._vault_policy,
        )
        k_rec, k_name, k_time = e._k_rec, e._k_name, e._k_time
        make_id, make_checkpoint, make_snapshot, make_image = (
            self._id,
            self._checkpoint,
            self._snapshot,
            self._image,
        )
        make_child, make_child_snapshot = self._child, self._child_snapshot
        resources, disks, ep_json = self._resources, self._disks, self._ep_json
        descriptions, hms, day_prefixes = self._descriptions, _HMS or _hms_table(), _DAY_PREFIX
        jbool, arches, restore_modes, app_consistency = (
            _JSON_BOOL,
            _ARCHITECTURES,
            _RESTORE_MODES,
            _APP_CONSISTENCY,
        )
        is_server, with_children, providers = _IS_SERVER, _WITH_CHILDREN, _PROVIDERS
        statuses, mix, non_ascii_names, manual_names = BACKUP_STATUSES, _mix, _NON_ASCII_NAMES, _MANUAL_NAMES
        out: list[str] = []
        append = out.append
        for b in handles:
            r, flags, status = res[b], flags_col[b], status_col[b]
            rtype, v = r_type[r], r_vault[r]
            h = mix(b ^ k_rec)
            backup_id = make_id(b)

            # name (Estate._name)
            hn = mix(b ^ k_name)
            if flags & F_NON_ASCII:
                name = non_ascii_names[hn % len(non_ascii_names)].format((hn >> 8) % 1000)
            elif flags & F_AUTO:
                name = "autobk_%04x" % (hn & 0xFFFF)
            else:
                name = manual_names[hn % len(manual_names)].format((hn >> 8) & 0xFFFF)

            # times (Estate._times): expired_at is created_at some whole days later, same time of day
            created, ht = created_col[b], mix(b ^ k_time)
            suffix = "+00:00" if flags & F_UTC_SUFFIX else ""
            day, rest = divmod(created, _DAY)
            second, fraction = divmod(rest, _SECOND)
            clock = "%s%06d%s" % (hms[second], fraction, suffix)  # noqa: UP031
            created_text = (day_prefixes.get(day) or _day_prefix(day)) + clock
            retention = _RETENTION_DAYS[(ht >> 62) & 3]
            if retention is None:
                expired_text = "null"
            else:
                expired_text = (
                    '"' + (day_prefixes.get(day + retention) or _day_prefix(day + retention)) + clock + '"'
                )
            if status in _UNPROTECTED:
                protected = created
                protected_text = "null"
            else:
                protected = created + (20 + (ht & 0x3FF)) * _SECOND + ((ht >> 10) & 0xFFFFF) % _SECOND
                protected_text = '"' + _ts(protected, False) + suffix + '"'
            updated = protected + (2 + ((ht >> 30) & 0x3FF)) * _SECOND + ((ht >> 40) & 0xFFFFF) % _SECOND

            checkpoint_id = make_checkpoint(b)
            description = descriptions[h & 7]
            image_type = "replication" if flags & F_REPLICA else "backup"
            updated_text = _ts(updated, False)
            segment = resources.get(r) or self._resource(r)
            auto = jbool[flags & F_AUTO]
            lld = jbool[(h >> 9) & 1]
            encrypted = jbool[(h >> 12) & 1] if (h >> 13) & 15 else "null"
            multi_az = jbool[not (h >> 20) & 3]
            architecture = arches[not (h >> 22) & 3]
            progress = (h >> 24) % 100 if status in (S_PROTECTING, S_WAIT_PROTECT) else 100
            app = app_consistency[not (h >> 32) & 7]
            ep = vault_ep[v]
            ep_text = ep_json.get(ep) or self._ep(ep)
            incremental = jbool[(flags & F_INCREMENTAL) >> 1]
            if is_server[rtype]:
                bootable = snapshot = "null"
                restore = restore_modes[(h >> 10) & 1]
                images = '[{"image_id":"%s"}]' % make_image(b) if not (h >> 11) & 3 else "[]"  # noqa: UP031
                system_disk = "false"
                contains_system_disk = jbool[((h >> 17) & 7) != 0]
            else:
                bootable = system_disk = jbool[(h >> 8) & 1]
                snapshot = "null" if rtype == T_TURBO else '"' + make_snapshot(b) + '"'
                restore, images, contains_system_disk = '"na"', "[]", "null"
            scheduled = ',"scheduled_operation_id":"%s"' % policies[v] if flags & F_AUTO else ""  # noqa: UP031
            replication = ""
            if show_replication and flags & (F_REPLICA | F_REPLICATED_OUT):
                replication = self._replication_text(
                    b, h, r_proj[r], v, backup_id, checkpoint_id, flags, created, suffix
                )

            if not (flags & F_CHILDREN and with_children[rtype]):
                # The common case (~85%): one template, no intermediate strings.
                append(
                    _FLAT_RECORD
                    % (
                        backup_id,
                        checkpoint_id,
                        name,
                        description,
                        segment,
                        image_type,
                        statuses[status],
                        created_text,
                        updated_text,
                        suffix,
                        expired_text,
                        protected_text,
                        providers[rtype],
                        auto,
                        bootable,
                        snapshot,
                        lld,
                        restore,
                        images,
                        contains_system_disk,
                        encrypted,
                        system_disk,
                        multi_az,
                        architecture,
                        progress,
                        app,
                        ep_text,
                        incremental,
                        scheduled,
                        replication,
                    )
                )
                continue

            # A server backup with disk backups: the pieces it shares with its children first.
            head = _HEAD % (checkpoint_id, name, description)
            middle = _MIDDLE % (
                image_type,
                statuses[status],
                created_text,
                updated_text,
                suffix,
                expired_text,
                protected_text,
            )
            tail = _EXTEND_TAIL % (multi_az, architecture, progress, app)
            segments = disks.get(r) or self._disk_segments(r)
            children = ",".join(
                [
                    _CHILD
                    % (
                        make_child(b * 4 + k),
                        head,
                        segments[k],
                        middle,
                        backup_id,
                        auto,
                        jbool[k == 0],
                        make_child_snapshot(b * 4 + k),
                        lld,
                        encrypted,
                        jbool[k == 0],
                        tail,
                        ep_text,
                        incremental,
                    )
                    for k in range(1 + (h >> 50) % 3)
                ]
            )
            append(
                _RECORD
                % (
                    backup_id,
                    head,
                    segment,
                    middle,
                    providers[rtype],
                    auto,
                    bootable,
                    snapshot,
                    lld,
                    restore,
                    images,
                    contains_system_disk,
                    encrypted,
                    system_disk,
                    tail,
                    ep_text,
                    children,
                    incremental,
                    scheduled,
                    replication,
                )
            )
        return out

    def _replication_text(
        self,
        b: int,
        h: int,
        p: int,
        v: int,
        backup_id: str,
        checkpoint_id: str,
        flags: int,
        created: int,
        suffix: str,
    ) -> str:
        here_project, here_region, remote_project, remote_region = self._places.get(p) or self._place(p)
        vault_id = self._vault_json[v][1:-1]
        remote = (
            self._remote_backup(b),
            self._remote_checkpoint(b),
            remote_project,
            remote_region,
            self._remote_vault(v),
        )
        local = (backup_id, checkpoint_id, here_project, here_region, vault_id)
        incoming = bool(flags & F_REPLICA)
        source, destination = (remote, local) if incoming else (local, remote)
        status = "success" if incoming else _REPLICATION_STATUSES[(h >> 52) % len(_REPLICATION_STATUSES)]
        failed = status == "fail"
        started = created + (-3600 if incoming else 600) * _SECOND
        return _REPLICATION % (
            self._replication(b),
            _ts(started, False) + suffix,
            *destination,
            *source[:4],
            status,
            vault_id,
            100 if status in ("success", "skip") else (h >> 56) % 100,
            _FAIL[0] if failed else "null",
            _FAIL[1] if failed else "null",
            _JSON_BOOL[flags & F_AUTO],
            destination[4],
        )


# --------------------------------------------------------------------------------------------------
# The estate


class Estate:
    """The generated estate, its ListBackups service, churn, and the ground truth for tests.

    Implements :class:`crawler.emulator.query.BackupSource` for the query engine.
    """

    spec: EstateSpec
    domains: dict[str, Domain]
    projects: dict[str, Project]
    enterprise_projects: dict[str, list[EnterpriseProject]]
    vaults: dict[str, Vault]

    @classmethod
    def generate(cls, spec: EstateSpec, *, cache_bytes: int = DEFAULT_CACHE_BYTES) -> Estate:
        """Generate the estate of ``spec``; ``cache_bytes`` bounds the cache of served pages."""
        return cls(spec, cache_bytes=cache_bytes)

    def __init__(self, spec: EstateSpec, *, cache_bytes: int = DEFAULT_CACHE_BYTES) -> None:
        self.spec = spec
        self.domains = {}
        self.projects = {}
        self.enterprise_projects = {}
        self.vaults = {}
        self._ids = _Ids(spec.seed)
        keys = random.Random(f"cbr-estate-keys:{spec.seed}")
        self._k_rec, self._k_name, self._k_time, self._k_res = (keys.getrandbits(64) for _ in range(4))
        self._generation = 0
        self._query_cache = QueryCache()
        self._view_cache: dict[tuple[int, str], tuple[int, array[int]]] = {}
        # Churn steps, so cached results in creation order are patched rather than recomputed.
        self._churn_log: deque[Delta] = deque(maxlen=CHURN_LOG_STEPS)

        self._project_list: list[Project] = []
        self._project_ord: dict[str, int] = {}
        self._share_fraction: list[float] = []  # per project, from its domain spec
        self._receivers: list[list[int]] = []  # per project: projects it may share to
        self._default_project: dict[tuple[str, str], str] = {}  # (domain id, region) -> project id
        self._vault_list: list[Vault] = []
        self._vault_ep: list[str] = []
        self._vault_pct = array("B")
        # Resources.
        self._r_proj = array("I")
        self._r_type = array("B")
        self._r_vault = array("I")
        self._r_az = array("B")
        self._p_res: list[tuple[int, int]] = []  # per project: (first resource, count)
        # Backups (columns indexed by handle).
        self._res = array("I")
        self._created = array("q")
        self._status = array("B")
        self._flags = array("B")
        # time.monotonic() of creation and deletion. Every generated backup was born with the estate,
        # so only churn's creations and deletions are stored: two float columns would be 16 B/backup.
        self._born_at = time.monotonic()
        self._born: dict[int, float] = {}
        self._died: dict[int, float] = {}
        # Serialised records by handle, bounded: a 1M estate is ~1.6 GB of JSON. Evicted first-in first-out.
        # Served pages by their exact handles (a record's bytes never change, so no generation is
        # needed in the key); least recently used first. Writing a page costs a few milliseconds, so
        # this only spares repeated identical requests (retries, warm benchmarks) that cost.
        self._pages: OrderedDict[tuple[bool, tuple[int, ...]], bytes] = OrderedDict()
        self._cache_limit = cache_bytes
        self._cache_used = 0
        self._r_info: dict[int, tuple[str, str, str, int]] = {}
        self._vault_policy: list[str] = []
        self._asc: list[array[int]] = []  # per project: live owned handles, ascending created_at
        self._share: dict[int, tuple[int, int]] = {}  # handle -> (receiving project, member status)
        self._shared_in: list[list[int]] = []  # per project: live handles shared to it
        self._alive = 0
        self._initial_counts: list[int] = []

        for domain_spec in spec.domains:
            self._generate_domain(domain_spec)
        self._alive = len(self._res)
        self._clock = max(self._created) if self._created else ANCHOR_US
        self._churn_rng = random.Random(f"cbr-estate-churn:{spec.seed}")
        self._writer = _RecordWriter(self)

    # ---- generation --------------------------------------------------------------------------

    def _generate_domain(self, dspec: DomainSpec) -> None:
        rng = random.Random(f"cbr-estate:{self.spec.seed}:{dspec.name}")
        domain = Domain(id=f"{rng.getrandbits(128):032x}", name=dspec.name)
        self.domains[domain.id] = domain
        eps = self._generate_eps(rng, domain, dspec)
        self.enterprise_projects[domain.id] = eps

        regions = self.spec.regions
        words = {region: rng.sample(_PROJECT_WORDS, len(_PROJECT_WORDS)) for region in regions}
        used = dict.fromkeys(regions, 0)

        def word(region: str) -> str:
            k = used[region]
            used[region] += 1
            pool = words[region]
            return pool[k] if k < len(pool) else f"{pool[k % len(pool)]}{k // len(pool)}"

        holders: list[int] = []
        empties: list[int] = []
        defaults: dict[str, Project] = {}
        for region in regions:
            default = self._add_project(rng, dspec, domain, region, region, domain.id)
            defaults[region] = default
            self._default_project[(domain.id, region)] = default.id
            holders.append(self._project_ord[default.id])
            for _ in range(dspec.subprojects):
                sub = self._add_project(rng, dspec, domain, f"{region}_{word(region)}", region, default.id)
                holders.append(self._project_ord[sub.id])
        for k in range(dspec.empty_projects):
            region = regions[k % len(regions)]
            empty = self._add_project(
                rng, dspec, domain, f"{region}_{word(region)}", region, defaults[region].id
            )
            empties.append(self._project_ord[empty.id])
        # The billing project: listed by IAM, never holds backups, to be skipped by crawlers.
        self._add_project(rng, dspec, domain, "MOS", regions[0], domain.id)

        for p in holders:
            self._receivers[p] = [
                q for q in holders if q != p and self._project_list[q].region == self._project_list[p].region
            ]
        ep_ids = [ep.id for ep in eps]
        vault_range: dict[int, tuple[int, int]] = {}
        for p in holders + empties:
            vault_range[p] = (len(self._vault_list), dspec.vaults_per_project)
            for k in range(dspec.vaults_per_project):
                self._add_vault(rng, p, k, "0" if k == 0 else rng.choice(ep_ids))

        counts = self._spread(rng, dspec.backups, len(holders))
        for p, n in zip(holders, counts, strict=True):
            self._initial_counts[p] = n
            self._generate_backups(rng, p, n, vault_range[p])
        for p in holders:
            self._generate_shares(rng, p, dspec.shared_fraction)

    def _generate_eps(self, rng: random.Random, domain: Domain, dspec: DomainSpec) -> list[EnterpriseProject]:
        def stamp() -> str:
            moment = _EPOCH + timedelta(seconds=rng.randrange(1_546_300_800, 1_704_067_200))
            return moment.strftime("%Y-%m-%dT%H:%M:%SZ")

        created = stamp()
        eps = [EnterpriseProject("0", "default", domain.id, 1, "", created, created, "prod")]
        names = rng.sample(_EP_NAMES, min(dspec.enterprise_projects, len(_EP_NAMES)))
        for k in range(dspec.enterprise_projects):
            name, description = names[k % len(names)]
            if k >= len(names):
                name = f"{name}-{k // len(names)}"
            created = stamp()
            ep_id = f"{rng.getrandbits(128):032x}"
            ep_id = f"{ep_id[:8]}-{ep_id[8:12]}-4{ep_id[13:16]}-a{ep_id[17:20]}-{ep_id[20:]}"
            # The last one is disabled: crawlers must still be able to list its backups.
            status = 2 if k == dspec.enterprise_projects - 1 else 1
            eps.append(
                EnterpriseProject(
                    ep_id, name, domain.id, status, description, created, created, rng.choice(("prod", "poc"))
                )
            )
        return eps

    def _add_project(
        self, rng: random.Random, dspec: DomainSpec, domain: Domain, name: str, region: str, parent: str
    ) -> Project:
        project = Project(f"{rng.getrandbits(128):032x}", name, domain.id, region, parent, True)
        self.projects[project.id] = project
        self._project_ord[project.id] = len(self._project_list)
        self._project_list.append(project)
        self._share_fraction.append(dspec.shared_fraction)
        self._receivers.append([])
        self._p_res.append((0, 0))
        self._asc.append(array("I"))
        self._shared_in.append([])
        self._initial_counts.append(0)
        return project

    def _add_vault(self, rng: random.Random, p: int, k: int, ep_id: str) -> None:
        v = len(self._vault_list)
        capacity = rng.choice((100, 500, 1000, 5000, 10000))
        percent = min(100, max(1, int(rng.triangular(1, 100, 60))))
        vault = Vault(
            id=self._ids.make(K_VAULT, v),
            name=rng.choice(_VAULT_NAMES).format(k),
            project_id=self._project_list[p].id,
            enterprise_project_id=ep_id,
            capacity=capacity,
            used=capacity * percent // 100,
            used_percent=percent,
        )
        self._vault_list.append(vault)
        self._vault_ep.append(ep_id)
        self._vault_policy.append(self._ids.make(K_POLICY, v))
        self._vault_pct.append(percent)
        self.vaults[vault.id] = vault

    @staticmethod
    def _spread(rng: random.Random, total: int, parts: int) -> list[int]:
        """Split ``total`` over ``parts`` projects, Zipf-skewed: a few big projects, many small ones."""
        if parts == 0:
            return []
        weights = [1.0 / (k + 1) ** 1.3 for k in range(parts)]
        rng.shuffle(weights)
        scale = total / sum(weights)
        counts = [int(w * scale) for w in weights]
        for k in sorted(range(parts), key=lambda i: -weights[i])[: total - sum(counts)]:
            counts[k] += 1
        return counts

    def _generate_backups(self, rng: random.Random, p: int, n: int, vaults: tuple[int, int]) -> None:
        if n == 0:
            return
        # Resources: about 30 backups each (a month of nightly backups), round-robin over time.
        nres = max(1, n // 30)
        r0 = len(self._r_type)
        self._p_res[p] = (r0, nres)
        self._r_proj.extend(array("I", [p]) * nres)
        self._r_type.frombytes(rng.randbytes(nres).translate(_RTYPE_TABLE))
        v0, vcount = vaults
        self._r_vault.extend(array("I", [v0 + x % vcount for x in rng.randbytes(nres)]))
        self._r_az.extend(array("B", [x % 3 for x in rng.randbytes(nres)]))

        b0 = len(self._res)
        order = list(range(r0, r0 + nres))
        rng.shuffle(order)
        pattern = array("I", order)
        self._res.extend(pattern * (n // nres) + pattern[: n % nres])
        # Strictly increasing creation times over the history: step k plus a jitter below one step.
        step = HISTORY_US // n
        jitter = step >> 8
        start = ANCHOR_US - HISTORY_US
        jitters = rng.randbytes(n)
        for lo in range(0, n, 1 << 16):  # in chunks: a list of 5M ints would double the peak memory
            hi = min(n, lo + (1 << 16))
            self._created.extend(array("q", [start + k * step + jitters[k] * jitter for k in range(lo, hi)]))
        self._status.frombytes(rng.randbytes(n).translate(_STATUS_TABLE))
        flags = 0
        for bit, odds in _FLAG_ODDS:
            table = bytes(bit if i < odds else 0 for i in range(256))
            flags |= int.from_bytes(rng.randbytes(n).translate(table), "little")
        self._flags.frombytes(flags.to_bytes(n, "little"))
        self._asc[p] = array("I", range(b0, b0 + n))

    def _generate_shares(self, rng: random.Random, p: int, fraction: float) -> None:
        receivers = self._receivers[p]
        if not receivers or fraction <= 0:
            return
        res, rtype, rand = self._res, self._r_type, rng.random
        for b in self._asc[p]:
            if rtype[res[b]] == T_NOVA and rand() < fraction:
                self._share_backup(rng, b, receivers)

    def _share_backup(self, rng: random.Random, b: int, receivers: list[int]) -> None:
        roll = rng.random()
        status = 1 if roll < 0.7 else 0 if roll < 0.9 else 2
        receiver = rng.choice(receivers)
        self._share[b] = (receiver, status)
        self._shared_in[receiver].append(b)

    # ---- derived record fields ----------------------------------------------------------------

    def _owner(self, b: int) -> int:
        return self._r_proj[self._res[b]]

    def _name(self, b: int) -> str:
        flags, h = self._flags[b], _mix(b ^ self._k_name)
        if flags & F_NON_ASCII:
            return _NON_ASCII_NAMES[h % len(_NON_ASCII_NAMES)].format((h >> 8) % 1000)
        if flags & F_AUTO:
            return f"autobk_{h & 0xFFFF:04x}"
        return _MANUAL_NAMES[h % len(_MANUAL_NAMES)].format((h >> 8) & 0xFFFF)

    def _times(self, b: int) -> tuple[int, int, int | None, int | None]:
        """(created, updated, protected or None, expired or None) in microseconds."""
        h = _mix(b ^ self._k_time)
        created = self._created[b]
        protected = None
        if self._status[b] not in _UNPROTECTED:
            protected = created + (20 + (h & 0x3FF)) * _SECOND + ((h >> 10) & 0xFFFFF) % _SECOND
        updated = (
            (protected or created) + (2 + ((h >> 30) & 0x3FF)) * _SECOND + ((h >> 40) & 0xFFFFF) % _SECOND
        )
        retention = (None, 30, 90, 365)[(h >> 62) & 3]
        expired = None if retention is None else created + retention * _DAY
        return created, updated, protected, expired

    def _resource_info(self, r: int) -> tuple[str, str, str, int]:
        """(id, name, AZ, size in GB) of resource ``r``."""
        info = self._r_info.get(r)
        if info is None:
            if len(self._r_info) >= _RecordWriter.CACHE_ENTRIES:
                self._r_info.clear()  # bounded: a 5M estate has ~170k resources
            sizes = _SIZES[self._r_type[r]]
            size = sizes[(_mix(r ^ self._k_res) >> 40) % len(sizes)]
            info = self._r_info[r] = (
                self._ids.make(K_RESOURCE, r),
                self._resource_name(r),
                self._resource_az(r),
                size,
            )
        return info

    def _resource_name(self, r: int) -> str:
        h = _mix(r ^ self._k_res)
        if h & 0x3F == 0:
            return _NON_ASCII_RESOURCES[(h >> 6) % len(_NON_ASCII_RESOURCES)].format((h >> 8) % 100)
        rtype, word, n = self._r_type[r], _RESOURCE_WORDS[(h >> 6) % len(_RESOURCE_WORDS)], (h >> 12) % 100
        prefix = ("ecs", "volume", "bms", "vmware", "sfs-turbo", "desktop")[rtype]
        return f"{prefix}-{word}-{n:02d}"

    def _resource_az(self, r: int) -> str:
        return self._project_list[self._r_proj[r]].region + "abc"[self._r_az[r]]

    def _has_children(self, b: int) -> bool:
        return bool(self._flags[b] & F_CHILDREN) and self._r_type[self._res[b]] in _WITH_CHILDREN_TYPES

    def _child_count(self, b: int) -> int:
        return 1 + (_mix(b ^ self._k_rec) >> 50) % 3 if self._has_children(b) else 0

    def _remote(self, p: int) -> tuple[str, str]:
        """(region, project id) that replication pairs this project's region with."""
        project = self._project_list[p]
        regions = self.spec.regions
        if len(regions) > 1:
            region = regions[(regions.index(project.region) + 1) % len(regions)]
        else:
            region = next(r for r in _FALLBACK_REMOTE_REGIONS if r != project.region)
        remote = self._default_project.get((project.domain_id, region))
        return region, remote or f"{_mix(p ^ self._k_res):016x}{_mix(p ^ self._k_rec):016x}"

    def _record(self, b: int, show_replication: bool = True) -> dict[str, Any]:
        """The BackupResp of top-level backup ``b``, key order fixed (it is what the bytes show)."""
        ids = self._ids
        r = self._res[b]
        p, rtype, v = self._r_proj[r], self._r_type[r], self._r_vault[r]
        project, vault = self._project_list[p], self._vault_list[v]
        flags, status = self._flags[b], self._status[b]
        h = _mix(b ^ self._k_rec)
        utc = bool(flags & F_UTC_SUFFIX)
        created, updated, protected, expired = self._times(b)
        server = rtype in _SERVER_TYPES
        backup_id = ids.make(K_BACKUP, b)
        auto = bool(flags & F_AUTO)
        info = self._resource_info(r)
        resource_id, resource_name, resource_az, resource_size = info
        description = _DESCRIPTIONS[h & 7]
        encrypted = None if (h >> 13) & 15 == 0 else bool((h >> 12) & 1)
        extend_info: dict[str, Any] = {
            "auto_trigger": auto,
            "bootable": None if server else bool((h >> 8) & 1),
            "snapshot_id": None if server or rtype == T_TURBO else ids.make(K_SNAPSHOT, b),
            "support_lld": bool((h >> 9) & 1),
            "supported_restore_mode": ("backup" if (h >> 10) & 1 else "snapshot") if server else "na",
            "os_images_data": [{"image_id": ids.make(K_IMAGE, b)}] if server and (h >> 11) & 3 == 0 else [],
            "contain_system_disk": bool((h >> 17) & 7) if server else None,
            "encrypted": encrypted,
            "system_disk": False if server else bool((h >> 8) & 1),
            "is_multi_az": (h >> 20) & 3 == 0,
            "architecture": "aarch64" if (h >> 22) & 3 == 0 else "x86_64",
            "progress": (h >> 24) % 100 if status in (S_PROTECTING, S_WAIT_PROTECT) else 100,
            "app_consistency": {
                "app_consistency": "1" if (h >> 32) & 7 == 0 else "0",
                "app_consistency_status": "0",
                "app_consistency_error_code": "0",
                "app_consistency_error_message": "",
            },
        }
        record: dict[str, Any] = {
            "id": backup_id,
            "checkpoint_id": ids.make(K_CHECKPOINT, b),
            "name": self._name(b),
            "description": description,
            "project_id": project.id,
            "vault_id": vault.id,
            "resource_id": resource_id,
            "resource_name": resource_name,
            "resource_az": resource_az,
            "resource_type": RESOURCE_TYPES[rtype],
            "resource_size": resource_size,
            "image_type": "replication" if flags & F_REPLICA else "backup",
            "status": BACKUP_STATUSES[status],
            "created_at": _ts(created, utc),
            "updated_at": _ts(updated, utc),
            "expired_at": None if expired is None else _ts(expired, utc),
            "protected_at": None if protected is None else _ts(protected, utc),
            "parent_id": None,
            "provider_id": _PROVIDERS[rtype],
            "extend_info": extend_info,
            "enterprise_project_id": vault.enterprise_project_id,
            "children": [],
            "incremental": bool(flags & F_INCREMENTAL),
            "version": 2,
        }
        if auto:
            record["scheduled_operation_id"] = self._vault_policy[v]
        if self._has_children(b):
            record["children"] = [self._child_record(b, k, record) for k in range(self._child_count(b))]
        if show_replication and flags & (F_REPLICA | F_REPLICATED_OUT):
            record["replication_records"] = [self._replication_record(b, p, record, h)]
        return record

    def _child_record(self, b: int, k: int, parent: Mapping[str, Any]) -> dict[str, Any]:
        """Disk ``k`` of server backup ``b``: a BackupResp of its own whose parent_id is the parent."""
        ids, r = self._ids, self._res[b]
        child = dict(parent)
        child.pop("scheduled_operation_id", None)
        child.pop("replication_records", None)
        child.update(
            id=ids.make(K_CHILD, b * 4 + k),
            resource_id=ids.make(K_DISK, r * 4 + k),
            resource_name=f"{parent['resource_name']}-disk{k}",
            resource_type="OS::Cinder::Volume",
            resource_size=40 if k == 0 else 100 * k,
            parent_id=parent["id"],
            provider_id=PROVIDER_DISK,
            children=[],
        )
        extend_info = dict(parent["extend_info"])
        extend_info.update(
            bootable=k == 0,
            snapshot_id=ids.make(K_CHILD_SNAPSHOT, b * 4 + k),
            supported_restore_mode=None,
            os_images_data=None,
            contain_system_disk=None,
            system_disk=k == 0,
        )
        child["extend_info"] = extend_info
        return child

    def _replication_record(self, b: int, p: int, record: Mapping[str, Any], h: int) -> dict[str, Any]:
        ids = self._ids
        here = self._project_list[p]
        remote_region, remote_project = self._remote(p)
        remote = {
            "backup_id": ids.make(K_REMOTE_BACKUP, b),
            "checkpoint_id": ids.make(K_REMOTE_CHECKPOINT, b),
            "project_id": remote_project,
            "region": remote_region,
            "vault_id": ids.make(K_REMOTE_VAULT, self._r_vault[self._res[b]]),
        }
        local = {
            "backup_id": record["id"],
            "checkpoint_id": record["checkpoint_id"],
            "project_id": here.id,
            "region": here.region,
            "vault_id": record["vault_id"],
        }
        incoming = bool(self._flags[b] & F_REPLICA)
        source, destination = (remote, local) if incoming else (local, remote)
        status = "success" if incoming else _REPLICATION_STATUSES[(h >> 52) % len(_REPLICATION_STATUSES)]
        failed = status == "fail"
        started = self._created[b] + (-3600 if incoming else 600) * _SECOND
        return {
            "id": ids.make(K_REPLICATION, b),
            "created_at": _ts(started, bool(self._flags[b] & F_UTC_SUFFIX)),
            "destination_backup_id": destination["backup_id"],
            "destination_checkpoint_id": destination["checkpoint_id"],
            "destination_project_id": destination["project_id"],
            "destination_region": destination["region"],
            "destination_vault_id": destination["vault_id"],
            "source_backup_id": source["backup_id"],
            "source_checkpoint_id": source["checkpoint_id"],
            "source_project_id": source["project_id"],
            "source_region": source["region"],
            "status": status,
            "vault_id": record["vault_id"],
            "extra_info": {
                "progress": 100 if status in ("success", "skip") else (h >> 56) % 100,
                "fail_code": "BackupService.6100" if failed else None,
                "fail_reason": "destination vault capacity is insufficient" if failed else None,
                "auto_trigger": bool(self._flags[b] & F_AUTO),
                "destination_vault_id": destination["vault_id"],
            },
        }

    # ---- BackupSource (used by crawler.emulator.query) ------------------------------------------

    @property
    def generation(self) -> int:
        return self._generation

    @property
    def query_cache(self) -> QueryCache:
        return self._query_cache

    def view(self, project_id: str, own_type: str) -> Sequence[int]:
        p = self._project_ord.get(project_id)
        if p is None:
            return ()
        if own_type == "private":
            return self._asc[p]
        cached = self._view_cache.get((p, own_type))
        if cached is not None and cached[0] != self._generation:
            deltas = self.changes_since(cached[0])
            if deltas is not None:
                patch_by_creation(
                    cached[1], deltas, lambda b: self._visible(b, p, own_type), self._created.__getitem__
                )
                cached = self._view_cache[(p, own_type)] = (self._generation, cached[1])
        if cached is not None and cached[0] == self._generation:
            return cached[1]
        handles = list(self._shared_in[p])
        if own_type == "all_granted":
            handles = list(self._asc[p]) + sorted(handles, key=self._created.__getitem__)
        handles.sort(key=self._created.__getitem__)  # two sorted runs: timsort merges them in O(n)
        # Creation times are unique within a project, not across: order equal ones by id.
        created, make = self._created, self._ids.make
        k = 0
        while k < len(handles) - 1:
            j = k
            while j + 1 < len(handles) and created[handles[j + 1]] == created[handles[k]]:
                j += 1
            if j > k:
                handles[k : j + 1] = sorted(handles[k : j + 1], key=lambda b: make(K_BACKUP, b))
            k = j + 1
        packed = array("I", handles)
        self._view_cache[(p, own_type)] = (self._generation, packed)
        return packed

    def in_view(self, project_id: str, own_type: str, handle: int) -> bool:
        p = self._project_ord.get(project_id)
        return p is not None and handle < len(self._res) and self._visible(handle, p, own_type)

    def changes_since(self, generation: int) -> Sequence[Delta] | None:
        first = self._generation - len(self._churn_log)  # generation the oldest logged step started from
        if generation < first:
            return None
        return list(self._churn_log)[generation - first :]

    def _visible(self, b: int, p: int, own_type: str) -> bool:
        if b in self._died:
            return False
        owned = self._owner(b) == p
        shared = (share := self._share.get(b)) is not None and share[0] == p
        return {"private": owned, "shared": shared}.get(own_type, owned or shared)

    def _backup_handle(self, backup_id: str, kind: int) -> int | None:
        parsed = self._ids.parse(backup_id)
        if parsed is None or parsed[0] != kind:
            return None
        return parsed[1]

    def children_view(self, project_id: str, own_type: str, parent_id: str) -> Sequence[int]:
        p = self._project_ord.get(project_id)
        b = self._backup_handle(parent_id, K_BACKUP)
        if p is None or b is None or b >= len(self._res) or not self._visible(b, p, own_type):
            return ()
        handles = [CHILD_BASE + b * 4 + k for k in range(self._child_count(b))]
        return sorted(handles, key=lambda c: self._ids.make(K_CHILD, c - CHILD_BASE))

    def resolve_marker(self, project_id: str, backup_id: str, children: bool) -> int | None:
        p = self._project_ord.get(project_id)
        number = self._backup_handle(backup_id, K_CHILD if children else K_BACKUP)
        if p is None or number is None:
            return None
        b, k = divmod(number, 4) if children else (number, 0)
        if b >= len(self._res) or not self._visible(b, p, "all_granted"):
            return None
        if children:
            return CHILD_BASE + number if k < self._child_count(b) else None
        return b

    def getters(self, children: bool) -> Mapping[str, Callable[[int], Any]]:
        res, flags, status, r_type, r_vault = (
            self._res,
            self._flags,
            self._status,
            self._r_type,
            self._r_vault,
        )
        make, vault_ep, vault_pct, vaults = self._ids.make, self._vault_ep, self._vault_pct, self._vault_list
        top: dict[str, Callable[[int], Any]] = {
            "created_at": self._created.__getitem__,
            "updated_at": lambda b: self._times(b)[1],
            "protected_at": lambda b: self._times(b)[2],
            "name": self._name,
            "status": lambda b: BACKUP_STATUSES[status[b]],
            "id": lambda b: make(K_BACKUP, b),
            "checkpoint_id": lambda b: make(K_CHECKPOINT, b),
            "enterprise_project_id": lambda b: vault_ep[r_vault[res[b]]],
            "image_type": lambda b: "replication" if flags[b] & F_REPLICA else "backup",
            "incremental": lambda b: bool(flags[b] & F_INCREMENTAL),
            "member_status": lambda b: (
                None if (s := self._share.get(b)) is None else MEMBER_STATUS_NAMES[s[1]]
            ),
            "resource_az": lambda b: self._resource_az(res[b]),
            "resource_id": lambda b: make(K_RESOURCE, res[b]),
            "resource_name": lambda b: self._resource_name(res[b]),
            "resource_type": lambda b: RESOURCE_TYPES[r_type[res[b]]],
            "used_percent": lambda b: vault_pct[r_vault[res[b]]],
            "vault_id": lambda b: vaults[r_vault[res[b]]].id,
        }
        if not children:
            return top

        def parent_field(name: str) -> Callable[[int], Any]:
            getter = top[name]
            return lambda c: getter((c - CHILD_BASE) >> 2)

        def child_field(name: str) -> Callable[[int], Any]:
            def get(c: int) -> Any:
                b, k = divmod(c - CHILD_BASE, 4)
                return self._child_record(b, k, self._record(b, False))[name]

            return get

        own = ("id", "resource_id", "resource_name", "resource_type")
        fields = {name: parent_field(name) for name in top if name not in own}
        fields.update({name: child_field(name) for name in own})
        fields["member_status"] = lambda c: None
        return fields

    def serialized(self, handle: int, show_replication: bool = True) -> bytes:
        if handle >= CHILD_BASE:
            b, k = divmod(handle - CHILD_BASE, 4)
            return orjson.dumps(self._child_record(b, k, self._record(b, False)))
        return self._writer.texts((handle,), show_replication)[0].encode()

    def serialized_page(self, handles: Sequence[int], show_replication: bool = True) -> bytes:
        key = (show_replication, tuple(handles))
        page = self._pages.get(key)
        if page is not None:
            self._pages.move_to_end(key)
            return page
        if handles and handles[0] >= CHILD_BASE:  # the children of one backup (parent_id): rare and short
            page = b",".join([self.serialized(h, show_replication) for h in handles])
        else:
            page = ",".join(self._writer.texts(handles, show_replication)).encode()
        if len(page) <= self._cache_limit:
            self._pages[key] = page
            self._cache_used += len(page)
            while self._cache_used > self._cache_limit:
                self._cache_used -= len(self._pages.popitem(last=False)[1])
        return page

    def prewarm(self, limit: int = 1000) -> int:
        """Serve the default-order pages (``limit`` records each) of every project ahead of a
        benchmark, until the page cache is full; returns how many records the cached pages hold."""
        for project in self._project_list:
            handles = list(self.view(project.id, "private"))
            handles.reverse()
            for start in range(0, len(handles), limit):
                page = handles[start : start + limit]
                if self._cache_used + 2048 * len(page) > self._cache_limit:
                    return self._cached_count()
                self.serialized_page(page)
        return self._cached_count()

    def _cached_count(self) -> int:
        return sum(len(key[1]) for key in self._pages)

    # ---- public API --------------------------------------------------------------------------

    @property
    def backup_count(self) -> int:
        """Live top-level backups (children are nested in their parents and not counted)."""
        return self._alive

    def domain_by_name(self, name: str) -> Domain | None:
        return next((d for d in self.domains.values() if d.name == name), None)

    def list_backups(
        self,
        project_id: str,
        query: ListBackupsQuery,
        *,
        granted_eps: frozenset[str] | None = None,
        behaviour: Behaviour | None = None,
    ) -> bytes:
        """The 200 body of ListBackups; raises :class:`crawler.emulator.query.QueryError` (400).

        ``query`` carries what can be checked without data; a bad ``marker`` or (with
        ``behaviour.limit_over_max="reject"``) a too large ``limit`` raise here. An unknown project
        has no backups.
        """
        return run_list_backups(self, project_id, query, granted_eps=granted_eps, behaviour=behaviour)

    def _truth_handles(self, project_id: str, own_type: str, enterprise_project_id: str | None) -> list[int]:
        handles = list(self.view(project_id, own_type))
        handles.reverse()  # the default order: created_at desc, id desc
        if enterprise_project_id is None:
            return handles
        ep_of = self.getters(False)["enterprise_project_id"]
        return [b for b in handles if ep_of(b) == enterprise_project_id]

    def truth(
        self, project_id: str, own_type: str = "private", enterprise_project_id: str | None = None
    ) -> list[dict[str, Any]]:
        """Every live backup of the view (optionally of one EP) as the API returns it, default order."""
        return [self._record(b) for b in self._truth_handles(project_id, own_type, enterprise_project_id)]

    def truth_ids(
        self, project_id: str, own_type: str = "private", enterprise_project_id: str | None = None
    ) -> set[str]:
        make = self._ids.make
        return {make(K_BACKUP, b) for b in self._truth_handles(project_id, own_type, enterprise_project_id)}

    def export_truth(self) -> Iterator[bytes]:
        """NDJSON lines ``{"project_id","own_type","enterprise_project_id","backup"}``, one per backup
        and view it appears in (``private`` at its owner, ``shared`` at its receiver)."""
        ep_of = self.getters(False)["enterprise_project_id"]
        for project in self._project_list:
            for own_type in ("private", "shared"):
                head = b'{"project_id":' + orjson.dumps(project.id) + b',"own_type":"' + own_type.encode()
                handles = list(self.view(project.id, own_type))  # a copy: churn may run between lines
                handles.reverse()
                for start in range(0, len(handles), 1000):
                    chunk = handles[start : start + 1000]
                    for b, text in zip(chunk, self._writer.texts(chunk), strict=True):
                        ep = orjson.dumps(ep_of(b))
                        yield b"".join(
                            (head, b'","enterprise_project_id":', ep, b',"backup":', text.encode(), b"}\n")
                        )

    def existed_throughout(self, t0: float, t1: float) -> dict[tuple[str, str, str], set[str]]:
        """Ids of the backups that existed during all of ``[t0, t1]`` (``time.monotonic()`` instants),
        keyed by (project id, own type ``private`` or ``shared``, enterprise project id)."""
        out: dict[tuple[str, str, str], set[str]] = {}
        born_at, born, died, make, ep_of = (
            self._born_at,
            self._born,
            self._died,
            self._ids.make,
            self.getters(False)["enterprise_project_id"],
        )
        for b in range(len(self._res)):
            if born.get(b, born_at) <= t0 and died.get(b, math.inf) > t1:
                backup_id, ep = make(K_BACKUP, b), ep_of(b)
                out.setdefault((self._project_list[self._owner(b)].id, "private", ep), set()).add(backup_id)
                if (share := self._share.get(b)) is not None:
                    out.setdefault((self._project_list[share[0]].id, "shared", ep), set()).add(backup_id)
        return out

    def churn(self, creates: int, deletes: int) -> None:
        """Delete ``deletes`` random live backups (expiries), then create ``creates`` new ones "now".

        New backups are nightly auto-backups of existing resources, newer than anything before, so
        they land at the front of the default order and shift every later offset by one.
        """
        rng, now = self._churn_rng, time.monotonic()
        deleted: list[int] = []
        for _ in range(deletes):
            if self._alive == 0:
                break
            b = rng.randrange(len(self._res))
            while b in self._died:
                b = rng.randrange(len(self._res))
            self._delete(b, now)
            deleted.append(b)
        first_new = len(self._res)
        holders = [p for p, n in enumerate(self._initial_counts) if n]
        if holders:
            weights = [self._initial_counts[p] for p in holders]
            for p in rng.choices(holders, weights, k=creates):
                self._create(rng, p, now)
        self._churn_log.append((range(first_new, len(self._res)), deleted))
        self._generation += 1

    def _delete(self, b: int, now: float) -> None:
        p = self._owner(b)
        asc, created = self._asc[p], self._created
        i = bisect.bisect_left(asc, created[b], key=created.__getitem__)
        if asc[i] != b:
            raise AssertionError("project index out of step with the columns")
        del asc[i]
        self._died[b] = now
        self._alive -= 1
        if (share := self._share.get(b)) is not None:
            self._shared_in[share[0]].remove(b)

    def _create(self, rng: random.Random, p: int, now: float) -> None:
        first, count = self._p_res[p]
        r = first + rng.randrange(count)
        self._clock += rng.randrange(1, 5 * _SECOND)
        b = len(self._res)
        self._res.append(r)
        self._created.append(self._clock)
        self._status.append(S_AVAILABLE)
        flags = (
            F_AUTO | (F_INCREMENTAL if rng.random() < 0.7 else 0) | (F_CHILDREN if rng.random() < 0.25 else 0)
        )
        self._flags.append(flags)
        self._born[b] = now
        self._asc[p].append(b)
        self._alive += 1
        receivers = self._receivers[p]
        if receivers and self._r_type[r] == T_NOVA and rng.random() < self._share_fraction[p]:
            self._share_backup(rng, b, receivers)
