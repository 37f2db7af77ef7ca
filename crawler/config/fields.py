"""What the tenant models share: constants, value types and validation helpers."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    Strict,
    StringConstraints,
    ValidationInfo,
)
from pydantic_core import PydanticCustomError


def fail(problem: str, fix: str | None = None, at: Sequence[str | int] = ()) -> PydanticCustomError:
    """A validation error with our own problem/fix text.

    ``at`` extends the error's location below the validated value, so that an error raised by a
    model validator still points at the precise key (and so at its line).
    """
    # The problem text goes through the context, not the template: it may hold braces (layouts).
    return PydanticCustomError("config", "{problem}", {"problem": problem, "fix": fix, "at": tuple(at)})


# --------------------------------------------------------------------------------------------------
# Constants

KNOWN_REGIONS: frozenset[str] = frozenset(
    {
        "af-north-1", "af-south-1", "ae-ad-1",
        "ap-southeast-1", "ap-southeast-2", "ap-southeast-3", "ap-southeast-4", "ap-southeast-5",
        "cn-east-2", "cn-east-3", "cn-east-4", "cn-east-5",
        "cn-north-1", "cn-north-2", "cn-north-4", "cn-north-9", "cn-north-11", "cn-north-12",
        "cn-south-1", "cn-south-2", "cn-south-4", "cn-southwest-2", "cn-southwest-3",
        "eu-west-0", "eu-west-101", "la-north-2", "la-south-2", "me-east-1", "my-kualalumpur-1",
        "na-mexico-1", "ru-moscow-1", "ru-northwest-2", "sa-brazil-1", "tr-west-1",
    }
)  # fmt: skip
"""The 34 regions where CBR exists, per the official SDK's region table."""

REGION_PATTERN = re.compile(r"^[a-z]{2}-[a-z]+-\d+$")
OWN_TYPES = ("private", "shared", "all_granted")
LAYOUT_FIELDS = ("tenant", "region", "project_id", "project_name", "own_type", "enterprise_project_id")
DEFAULT_LAYOUT = "{tenant}/{region}/{project_name}"
SERVICES = ("iam", "eps", "cbr")
# Huawei's API gateway allows 200 requests/s per API and tenant and cannot be raised; a higher
# rate would only buy 429s.
GATEWAY_CEILING_RPS = 200.0
UNLIMITED = "unlimited"  # rate_limit.requests_per_second off the public cloud


# --------------------------------------------------------------------------------------------------
# Small value types


def check_env_name(value: str | None) -> str | None:
    # The value is never echoed: a user who pastes the secret itself here must not see it in a log.
    if value is None:
        return None
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", value):
        raise fail(
            "is not a valid environment variable name",
            "give the NAME of the variable holding the secret (letters, digits, _), never the secret",
        )
    return value


def check_secret_file(value: str | None, info: ValidationInfo) -> str | None:
    if value is None:
        return None
    if not value.strip():
        raise fail("is empty", "give the path of the file holding the secret")
    path = Path(value).expanduser()
    base = info.context.get("base_dir") if isinstance(info.context, dict) else None
    # Relative paths are relative to the tenant file, not to the working directory: cron and
    # Kubernetes start the crawler in directories nobody thinks about.
    if not path.is_absolute() and base is not None:
        path = Path(base) / path
    return str(path)


EnvName = Annotated[str, Strict(), Field(min_length=1)]
SecretFile = Annotated[str, Strict(), Field(min_length=1)]
Name = Annotated[str, Strict(), StringConstraints(min_length=1, max_length=255)]
Glob = Annotated[str, Strict(), StringConstraints(min_length=1, max_length=255)]
ProjectId = Annotated[str, Strict(), StringConstraints(pattern=r"^[0-9a-f]{32}$")]
EnterpriseProjectId = Annotated[
    str,
    Strict(),
    StringConstraints(pattern=r"^(0|[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})$"),
]
Uuid = Annotated[
    str, Strict(), StringConstraints(pattern=r"^[0-9a-fA-F]{8}-([0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}$")
]
OwnType = Literal["private", "shared", "all_granted"]
BackupStatus = Literal[
    "available",
    "protecting",
    "deleting",
    "restoring",
    "error",
    "waiting_protect",
    "waiting_delete",
    "waiting_restore",
]
ResourceType = Literal[
    "OS::Nova::Server",
    "OS::Cinder::Volume",
    "OS::Ironic::BareMetalServer",
    "OS::Native::Server",
    "OS::Sfs::Turbo",
    "OS::Workspace::DesktopV2",
]
Duration = Annotated[int, Strict(), Field(ge=900, le=86400)]


def unique(values: Sequence[Any], what: str) -> None:
    seen: set[Any] = set()
    for index, value in enumerate(values):
        if value in seen:
            raise fail(f"{what} {value!r} is listed twice", "remove the duplicate", at=(index,))
        seen.add(value)


@dataclass(frozen=True, slots=True)
class Origin:
    """Where a tenant came from: the file and the line of every key path (for run-time errors)."""

    file: str | None = None
    lines: Mapping[str, int] = field(default_factory=dict)


class Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
