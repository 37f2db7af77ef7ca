"""pydantic's validation errors -> :class:`ConfigError` with problem, fix, key path and line."""

from __future__ import annotations

import difflib
import re
import types
import typing
from collections.abc import Iterable, Mapping, Sequence
from typing import Annotated, Any, Union

from pydantic import (
    BaseModel,
    ValidationError,
)
from pydantic_core import ErrorDetails

from crawler.config.yaml_lines import PathPart, format_path
from crawler.errors import ConfigError

# Keys that would hold a secret inline, and the keys to use instead.
_INLINE_SECRET_KEYS = {
    "password": "password",
    "passwd": "password",
    "token": "token",
    "auth_token": "token",
    "access_key": "access_key",
    "ak": "access_key",
    "secret_key": "secret_key",
    "sk": "secret_key",
    "secret": "secret_key",
}
# ListBackups parameters that the crawler sets itself, and where the user controls them instead.
_CRAWLER_PARAMETERS = {
    "limit": "set rate_limit.page_size instead",
    "offset": "the crawler pages by itself",
    "marker": "the crawler pages by itself",
    "sort": "the crawler chooses a stable order by itself",
    "own_type": "set own_types at the top level instead",
    "enterprise_project_id": "set enterprise_projects at the top level instead",
}


# --------------------------------------------------------------------------------------------------
# pydantic errors -> ConfigError


def _data_path(loc: Sequence[PathPart], data: Any) -> list[PathPart]:
    """pydantic's ``loc`` as a path through the user's data: union tags are dropped."""
    path: list[PathPart] = []
    current: Any = data
    tag_possible = True
    for part in loc:
        if isinstance(current, dict):
            # A discriminated union puts its tag (the ``mode`` value) into the location, once,
            # before the keys of the chosen member.
            if tag_possible and isinstance(part, str) and current.get("mode") == part:
                tag_possible = False
                continue
            path.append(part)
            current = current.get(part)
        elif isinstance(current, list) and isinstance(part, int):
            path.append(part)
            current = current[part] if 0 <= part < len(current) else None
        else:
            path.append(part)
            current = None
        tag_possible = True
    return path


def _strip_optional(tp: Any) -> Any:
    while True:
        origin = typing.get_origin(tp)
        if origin is Annotated:
            tp = typing.get_args(tp)[0]
        elif origin in (Union, types.UnionType):
            args = [a for a in typing.get_args(tp) if a is not type(None)]
            if len(args) != 1:
                return tp
            tp = args[0]
        else:
            return tp


def _type_at(root: type[BaseModel], loc: Sequence[PathPart]) -> Any:
    """The declared type of the value at ``loc`` (pydantic's loc, union tags included), or None."""
    tp: Any = root
    for part in loc:
        tp = _strip_optional(tp)
        origin = typing.get_origin(tp)
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            info = tp.model_fields.get(str(part))
            if info is None:
                return None
            tp = info.annotation
        elif origin in (Union, types.UnionType):
            tp = next((m for m in typing.get_args(tp) if part in _mode_tags(m)), None)
            if tp is None:
                return None
        elif origin in (tuple, list):
            tp = typing.get_args(tp)[0]
        else:
            return None
    return _strip_optional(tp)


def _model_at(root: type[BaseModel], loc: Sequence[PathPart]) -> type[BaseModel] | None:
    """The model class whose fields live at ``loc``."""
    tp = _type_at(root, loc)
    return tp if isinstance(tp, type) and issubclass(tp, BaseModel) else None


def _union_tags_at(root: type[BaseModel], loc: Sequence[PathPart]) -> list[str]:
    """The ``mode`` values accepted by the tagged union at ``loc``."""
    tp = _type_at(root, loc)
    if typing.get_origin(tp) not in (Union, types.UnionType):
        return []
    return [str(tag) for member in typing.get_args(tp) for tag in _mode_tags(member)]


def _mode_tags(model: Any) -> tuple[Any, ...]:
    if isinstance(model, type) and issubclass(model, BaseModel) and "mode" in model.model_fields:
        return typing.get_args(model.model_fields["mode"].annotation)
    return ()


def _did_you_mean(word: str, choices: Iterable[str]) -> str:
    hint = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f"did you mean {hint[0]!r}? " if hint else ""


def _describe(root: type[BaseModel], error: ErrorDetails, path: list[PathPart]) -> tuple[str, str | None]:
    """Problem and fix for one pydantic error. Never quotes ``input`` unless it is a key or tag."""
    kind = error["type"]
    ctx = error.get("ctx") or {}
    loc = error["loc"]
    if kind == "config":
        return str(ctx["problem"]), ctx.get("fix")
    if kind == "extra_forbidden":
        key = str(loc[-1])
        if key in _INLINE_SECRET_KEYS:
            base = _INLINE_SECRET_KEYS[key]
            return (
                "inline secrets are not allowed",
                f"put the secret in an environment variable or a file and set {base}_env or {base}_file",
            )
        if len(path) >= 2 and path[-2] == "filters" and key in _CRAWLER_PARAMETERS:
            return f"{key} is set by the crawler, not a filter", _CRAWLER_PARAMETERS[key]
        model = _model_at(root, loc[:-1])
        allowed = list(model.model_fields) if model is not None else []
        mode = f" with mode {loc[-2]}" if len(loc) >= 2 and loc[-2] in _mode_tags(model) else ""
        fix = _did_you_mean(key, allowed) + (f"allowed keys{mode}: {', '.join(allowed)}" if allowed else "")
        return f"unknown key {key!r}", fix or None
    if kind in ("union_tag_invalid", "union_tag_not_found"):
        expected = _union_tags_at(root, loc)
        if kind == "union_tag_not_found":
            return "mode is missing", "set mode to one of: " + ", ".join(expected)
        tag = str(ctx.get("tag", ""))
        return f"unknown mode {tag!r}", _did_you_mean(tag, expected) + "use one of: " + ", ".join(expected)
    if kind == "literal_error":
        expected_text = str(ctx.get("expected", ""))
        choices = re.findall(r"'([^']*)'", expected_text)
        value = error.get("input")
        hint = _did_you_mean(value, choices) if isinstance(value, str) else ""
        return f"must be one of {', '.join(choices)}", (hint.strip() or None)
    if kind == "missing":
        return "is required", f"add {path[-1]}: ..." if path else None
    if kind in ("model_attributes_type", "model_type", "dict_type"):
        return "must be a mapping of keys", None
    if kind in ("tuple_type", "list_type"):
        return "must be a list", "write [a, b] or one '- item' per line"
    if kind == "string_type":
        return "must be a string", "quote the value in YAML (e.g. '0')"
    if kind == "string_pattern_mismatch":
        return _PATTERN_PROBLEMS.get(str(ctx.get("pattern", "")), ("has an invalid format", None))
    return error["msg"], None


_PATTERN_PROBLEMS: dict[str, tuple[str, str | None]] = {
    r"^[0-9a-f]{32}$": ("is not a project id", "project ids are 32 lower-case hex digits"),
    r"^(0|[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})$": (
        "is not an enterprise project id",
        'use the EP\'s UUID, or "0" for the default enterprise project',
    ),
    r"^[0-9a-fA-F]{8}-([0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}$": ("is not a UUID", None),
    r"^[a-z0-9][a-z0-9_-]{0,62}$": (
        "is not a valid tenant slug",
        "use 1-63 lower-case letters, digits, - and _, starting with a letter or digit",
    ),
}


def _line_for(path: Sequence[PathPart], lines: Mapping[tuple[PathPart, ...], int]) -> int | None:
    # A missing key has no line of its own: point at the nearest enclosing key that exists.
    for end in range(len(path), -1, -1):
        line = lines.get(tuple(path[:end]))
        if line is not None:
            return line
    return None


def convert_errors(
    exc: ValidationError,
    root: type[BaseModel],
    data: Any,
    lines: Mapping[tuple[PathPart, ...], int],
    file: str,
) -> list[ConfigError]:
    """One :class:`ConfigError` per problem of ``exc`` (validating ``data`` as ``root``)."""
    details = exc.errors(include_url=False)
    failed_items = {error["loc"][:-1] for error in details if error["loc"]}
    errors: list[ConfigError] = []
    for error in details:
        # pydantic adds "at least 1 item after validation, not 0" when the items themselves
        # failed; the item errors say it better.
        if error["type"] == "too_short" and error["loc"] in failed_items:
            continue
        path = _data_path(error["loc"], data)
        ctx = error.get("ctx") or {}
        if error["type"] == "config":
            path.extend(ctx.get("at", ()))
        if error["type"] in ("union_tag_invalid", "union_tag_not_found"):
            path.append("mode")
        problem, fix = _describe(root, error, path)
        errors.append(
            ConfigError(problem, file=file, key_path=format_path(path), line=_line_for(path, lines), fix=fix)
        )
    return errors
