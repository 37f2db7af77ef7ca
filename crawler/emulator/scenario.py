"""The emulator's scenario: what estate to generate, who may log in, and how the gateway misbehaves.

A scenario is a frozen pydantic model read from YAML or JSON (:func:`load_scenario`) and optionally
adjusted by command-line flags (:func:`apply_overrides`). ``Scenario()`` is the small default: one
domain ``acme`` with the estate module's default size.

Secrets (passwords, secret keys) are :class:`pydantic.SecretStr`, so ``repr()`` and
``model_dump(mode="json")`` (what ``GET /_emulator/scenario`` serves) show ``**********``.

Sections, all optional::

    seed: 42                      # one seed for the estate, the default credentials and the fault dice
    estate: {regions: [...], domains: [{name: acme, backups: 1000}]}   # emulator.estate.EstateSpec
    identity: {users: [...], agencies: [...], token_ttl_seconds: 86400, ...}
    behaviour: {default_sort: ..., wrong_project_token_status: 401, retry_after: false, ...}
    throttle: {rules: [{policy: user, limit: 200, window: 1 minute, api: cbr.list_backups}], storm: ...}
    faults: {latency: [...], faults: [{kind: reset, probability: 0.01, api: cbr.list_backups}]}
    churn: {creates_per_second: 5, deletes_per_second: 2}
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, TypeAdapter, field_validator, model_validator

from crawler.emulator.estate import DomainSpec, EstateSpec
from crawler.emulator.query import Behaviour

_FROZEN = ConfigDict(frozen=True, extra="forbid")


class UserSpec(BaseModel):
    """An IAM user. Without ``ak``/``sk`` the user has no permanent access key."""

    model_config = _FROZEN

    name: str
    domain: str  # domain name
    password: SecretStr
    id: str | None = None  # derived from the seed, domain and name when absent
    ak: str | None = None
    sk: SecretStr | None = None
    # Enterprise projects (ids or names) the user may see; None means every EP of the domain.
    enterprise_projects: tuple[str, ...] | None = None

    @model_validator(mode="after")
    def _ak_and_sk_together(self) -> UserSpec:
        if (self.ak is None) != (self.sk is None):
            raise ValueError(f"user {self.name}: ak and sk must be given together")
        return self


class AgencySpec(BaseModel):
    """An agency ``name`` in ``domain`` that users of ``trusted_domain`` may assume."""

    model_config = _FROZEN

    domain: str
    name: str
    trusted_domain: str
    enterprise_projects: tuple[str, ...] | None = None


class IdentitySpec(BaseModel):
    """Users, agencies, lifetimes and AK/SK verification knobs."""

    model_config = _FROZEN

    # Every domain D gets "D-admin"/"D-password" and a seed-derived AK/SK unless this is false.
    default_users: bool = True
    users: tuple[UserSpec, ...] = ()
    agencies: tuple[AgencySpec, ...] = ()
    token_ttl_seconds: float = Field(default=86400.0, gt=0)
    # Upper bound on temporary AK/SK lifetime, whatever duration_seconds asks for.
    security_token_ttl_seconds: float = Field(default=86400.0, gt=0)
    skew_window_seconds: float = Field(default=900.0, ge=0)
    aksk_lock_after: int = Field(default=5, ge=1)
    aksk_lock_seconds: float = Field(default=300.0, ge=0)
    # Length of the opaque X-Subject-Token; real ones are several KB.
    token_length: int = Field(default=3072, ge=32)


class BehaviourSpec(BaseModel):
    """Switches for the unpublished corners of the API.

    Besides the two fields below, any field of :class:`crawler.emulator.query.Behaviour`
    (``default_sort``, ``limit_over_max``, ``echo_offset_limit``, ...) may be given here; they are
    validated against that dataclass and handed to ``Estate.list_backups``.
    """

    model_config = ConfigDict(frozen=True, extra="allow")

    # A token of project A used on project B's URL: 401 APIGW.0307 or 403 APIGW.0302.
    wrong_project_token_status: Literal[401, 403] = 401
    # Send Retry-After (seconds until the throttle window frees) on 429s. Huawei does not document it.
    retry_after: bool = False

    @model_validator(mode="after")
    def _check_query_fields(self) -> BehaviourSpec:
        self.query_behaviour()  # raises on unknown fields or bad values
        return self

    def query_behaviour(self) -> Behaviour:
        """The :class:`Behaviour` for ListBackups built from the extra fields."""
        extra = dict(self.model_extra or {})
        known = {f.name for f in dataclasses.fields(Behaviour)}
        unknown = sorted(set(extra) - known)
        if unknown:
            raise ValueError(f"unknown behaviour field(s): {', '.join(unknown)}")
        return TypeAdapter(Behaviour).validate_python(extra)


_WINDOW_RE = re.compile(
    r"^\s*(\d+(?:\.\d+)?)\s*(s|sec|second|seconds|m|min|minute|minutes|h|hour|hours)?\s*$"
)
_UNIT_SECONDS = {"s": 1, "sec": 1, "second": 1, "seconds": 1, "m": 60, "min": 60, "minute": 60}
_UNIT_SECONDS |= {"minutes": 60, "h": 3600, "hour": 3600, "hours": 3600}


def parse_window(value: str | float) -> float:
    """``"1 second"``, ``"5 second"``, ``"1 minute"``, ``"30s"`` or a number of seconds -> seconds."""
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        match = _WINDOW_RE.match(value)
        if not match:
            raise ValueError(f"bad window {value!r}: use e.g. '1 second', '5 second', '1 minute'")
        seconds = float(match.group(1)) * _UNIT_SECONDS[match.group(2) or "s"]
    if seconds <= 0:
        raise ValueError("window must be positive")
    return seconds


class ThrottleRule(BaseModel):
    """One API-Gateway throttle: at most ``limit`` requests per ``window`` per user, IP or API."""

    model_config = _FROZEN

    policy: Literal["user", "ip", "api"] = "user"
    limit: int = Field(ge=1)
    window: float = 1.0  # seconds; YAML may say "1 minute"
    # Route-name selector (fnmatch pattern: "cbr.list_backups", "iam.*"); None means every API route.
    api: str | None = None
    algorithm: Literal["sliding", "fixed"] = "sliding"
    # Count each API separately (API Gateway's model) or all matching APIs together.
    per_api: bool = True
    # IAM throttles with IAM.0012; everything else behind API Gateway with APIGW.0308.
    error_code: str = "APIGW.0308"

    @field_validator("window", mode="before")
    @classmethod
    def _window(cls, value: Any) -> float:
        if isinstance(value, str | int | float):
            return parse_window(value)
        raise ValueError("window must be a number of seconds or a string like '1 minute'")


class StormSpec(BaseModel):
    """During [start, start+duration) seconds after start-up, answer ``fraction`` of requests with 429."""

    model_config = _FROZEN

    start_seconds: float = Field(default=0.0, ge=0)
    duration_seconds: float = Field(default=3600.0, gt=0)
    fraction: float = Field(default=0.5, ge=0, le=1)
    api: str | None = None


class ThrottleSpec(BaseModel):
    """Throttle rules (all are checked; the first that refuses answers) and an optional 429 storm."""

    model_config = _FROZEN

    rules: tuple[ThrottleRule, ...] = ()
    storm: StormSpec | None = None


class LatencySpec(BaseModel):
    """Extra latency before the handler runs, in milliseconds."""

    model_config = _FROZEN

    api: str | None = None
    distribution: Literal["fixed", "uniform", "lognormal"] = "fixed"
    ms: float = Field(default=0.0, ge=0)  # fixed
    min_ms: float = Field(default=0.0, ge=0)  # uniform
    max_ms: float = Field(default=0.0, ge=0)
    median_ms: float = Field(default=10.0, gt=0)  # lognormal: exp(mu) = median
    sigma: float = Field(default=0.5, ge=0)
    cap_ms: float = Field(default=30_000.0, gt=0)


FaultKind = Literal["status", "reset", "truncate", "malformed", "slow_body"]


class FaultSpec(BaseModel):
    """One injected fault, rolled with ``probability`` on each matching request.

    ``first_n`` limits the fault to the first N requests that match ``api``: handy to make exactly
    the first call of a test fail.
    """

    model_config = _FROZEN

    kind: FaultKind
    probability: float = Field(default=1.0, ge=0, le=1)
    api: str | None = None
    first_n: int | None = Field(default=None, ge=1)
    status: Literal[500, 502, 503, 504] = 503  # kind=status
    # kind=truncate: True sends an honest Content-Length for the cut body (the client gets a
    # complete HTTP response holding broken JSON); False announces the full length and closes early.
    honest_length: bool = True
    chunk_bytes: int = Field(default=4096, ge=1)  # kind=slow_body
    chunk_delay_ms: float = Field(default=50.0, ge=0)


class FaultsSpec(BaseModel):
    """Latency distributions and faults; the first fault that fires wins."""

    model_config = _FROZEN

    latency: tuple[LatencySpec, ...] = ()
    faults: tuple[FaultSpec, ...] = ()


class ChurnSpec(BaseModel):
    """Backups created and deleted per second while the server runs (nightly backups, expiry)."""

    model_config = _FROZEN

    creates_per_second: float = Field(default=0.0, ge=0)
    deletes_per_second: float = Field(default=0.0, ge=0)
    tick_seconds: float = Field(default=1.0, gt=0)

    @property
    def active(self) -> bool:
        return self.creates_per_second > 0 or self.deletes_per_second > 0


class Scenario(BaseModel):
    """Everything the emulator needs to know. Immutable; derive variants with :func:`apply_overrides`."""

    model_config = _FROZEN

    seed: int = 42
    estate: EstateSpec = Field(default_factory=EstateSpec)
    identity: IdentitySpec = IdentitySpec()
    behaviour: BehaviourSpec = BehaviourSpec()
    throttle: ThrottleSpec = ThrottleSpec()
    faults: FaultsSpec = FaultsSpec()
    churn: ChurnSpec = ChurnSpec()

    @model_validator(mode="before")
    @classmethod
    def _estate_inherits_seed(cls, data: Any) -> Any:
        # One seed drives everything: an estate section without its own seed takes the scenario's.
        if isinstance(data, dict) and isinstance(data.get("estate"), dict) and "seed" not in data["estate"]:
            data = dict(data)
            data["estate"] = {**data["estate"], "seed": data.get("seed", 42)}
        return data

    def masked(self) -> dict[str, Any]:
        """JSON-ready dump with secrets replaced by ``**********``."""
        return self.model_dump(mode="json")


def load_scenario(path: str | Path) -> Scenario:
    """Read a scenario from a ``.yaml``/``.yml`` or ``.json`` file. Raises ``ValueError`` on bad content."""
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    data = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a scenario must be a mapping")
    return Scenario.model_validate(data)


def apply_overrides(
    scenario: Scenario,
    *,
    seed: int | None = None,
    backups: int | None = None,
    domains: tuple[str, ...] | None = None,
    regions: tuple[str, ...] | None = None,
    token_ttl_seconds: float | None = None,
    security_token_ttl_seconds: float | None = None,
    retry_after: bool | None = None,
    churn_creates: float | None = None,
    churn_deletes: float | None = None,
) -> Scenario:
    """Apply command-line flags to a scenario. ``backups`` is the total, spread over the domains."""
    estate = scenario.estate
    if domains is not None:
        existing = {d.name: d for d in estate.domains}
        estate = dataclasses.replace(
            estate, domains=tuple(existing.get(n) or DomainSpec(name=n) for n in domains)
        )
    if regions is not None:
        estate = dataclasses.replace(estate, regions=tuple(regions))
    if backups is not None:
        count = len(estate.domains)
        share, extra = divmod(backups, count)
        estate = dataclasses.replace(
            estate,
            domains=tuple(
                dataclasses.replace(d, backups=share + (1 if i < extra else 0))
                for i, d in enumerate(estate.domains)
            ),
        )
    if seed is not None:
        estate = dataclasses.replace(estate, seed=seed)
    identity = scenario.identity
    if token_ttl_seconds is not None:
        identity = identity.model_copy(update={"token_ttl_seconds": token_ttl_seconds})
    if security_token_ttl_seconds is not None:
        identity = identity.model_copy(update={"security_token_ttl_seconds": security_token_ttl_seconds})
    behaviour = scenario.behaviour
    if retry_after is not None:
        behaviour = behaviour.model_copy(update={"retry_after": retry_after})
    churn = scenario.churn
    if churn_creates is not None:
        churn = churn.model_copy(update={"creates_per_second": churn_creates})
    if churn_deletes is not None:
        churn = churn.model_copy(update={"deletes_per_second": churn_deletes})
    # Re-validate the whole thing so that overrides get the same checks as a file.
    data = scenario.model_dump()
    data.update(
        seed=scenario.seed if seed is None else seed,
        estate=estate,
        identity=identity.model_dump(),
        behaviour=behaviour.model_dump(),
        churn=churn.model_dump(),
    )
    # model_dump() in python mode keeps SecretStr objects, so secrets survive the round trip.
    return Scenario.model_validate(data)


def derive_secret(seed: int, *parts: str, length: int, alphabet: str) -> str:
    """A deterministic pseudo-random string from the seed and some labels (default AK/SK, user ids)."""
    out: list[str] = []
    counter = 0
    while len(out) < length:
        digest = hashlib.sha256(f"{seed}:{':'.join(parts)}:{counter}".encode()).digest()
        out.extend(alphabet[b % len(alphabet)] for b in digest)
        counter += 1
    return "".join(out[:length])


__all__ = [
    "AgencySpec",
    "BehaviourSpec",
    "ChurnSpec",
    "FaultKind",
    "FaultSpec",
    "FaultsSpec",
    "IdentitySpec",
    "LatencySpec",
    "Scenario",
    "StormSpec",
    "ThrottleRule",
    "ThrottleSpec",
    "UserSpec",
    "apply_overrides",
    "derive_secret",
    "load_scenario",
    "parse_window",
]
