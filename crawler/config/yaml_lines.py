"""YAML text -> data, with the line of every key path and every duplicate key found."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import yaml

from crawler.errors import ConfigError

# --------------------------------------------------------------------------------------------------
# YAML with line numbers


class _Loader(yaml.SafeLoader):
    """SafeLoader that keeps timestamps as strings: ``2018-02-01T12:00:00Z`` is what the API wants."""


_Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in copy.deepcopy(yaml.SafeLoader.yaml_implicit_resolvers).items()
}

_MERGE_TAG = "tag:yaml.org,2002:merge"
PathPart = str | int


def format_path(path: Sequence[PathPart]) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _duplicate_keys(root: yaml.Node, file: str) -> list[ConfigError]:
    """Duplicate keys in any mapping (YAML says they are an error; PyYAML silently keeps the last)."""
    errors: list[ConfigError] = []
    visited: set[int] = set()

    def walk(node: yaml.Node, path: tuple[PathPart, ...]) -> None:
        if id(node) in visited:  # aliases: each node once, which also stops recursive documents
            return
        visited.add(id(node))
        if isinstance(node, yaml.MappingNode):
            first_line: dict[tuple[str, str], int] = {}
            for key, value in node.value:
                if key.tag == _MERGE_TAG or not isinstance(key, yaml.ScalarNode):
                    continue
                line = key.start_mark.line + 1
                ident = (key.tag, key.value)
                if ident in first_line:
                    errors.append(
                        ConfigError(
                            f"duplicate key {key.value!r} (first at line {first_line[ident]})",
                            file=file,
                            key_path=format_path((*path, key.value)),
                            line=line,
                            fix="keep only one of them",
                        )
                    )
                else:
                    first_line[ident] = line
                walk(value, (*path, key.value))
        elif isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                walk(item, (*path, index))

    walk(root, ())
    return errors


def _line_map(root: yaml.Node, data: Any) -> dict[tuple[PathPart, ...], int]:
    """Key path -> 1-based line of the key (mapping entries) or item (sequence entries)."""
    lines: dict[tuple[PathPart, ...], int] = {(): root.start_mark.line + 1}
    visited: set[int] = set()

    def walk(node: yaml.Node, value: Any, path: tuple[PathPart, ...]) -> None:
        if id(node) in visited:
            return
        visited.add(id(node))
        if isinstance(node, yaml.MappingNode) and isinstance(value, dict):
            # After construction merge keys are flattened into node.value; later entries win,
            # exactly as in the constructed dict.
            for key_node, value_node in node.value:
                if key_node.tag == _MERGE_TAG or not isinstance(key_node, yaml.ScalarNode):
                    continue
                key = next((k for k in value if str(k) == key_node.value), key_node.value)
                lines[(*path, key)] = key_node.start_mark.line + 1
                walk(value_node, value.get(key), (*path, key))
        elif isinstance(node, yaml.SequenceNode) and isinstance(value, list):
            for index, item in enumerate(node.value):
                lines[(*path, index)] = item.start_mark.line + 1
                walk(item, value[index] if index < len(value) else None, (*path, index))

    walk(root, data, ())
    return lines


def parse_yaml(text: str, file: str) -> tuple[Any, dict[tuple[PathPart, ...], int], list[ConfigError]]:
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            raise ConfigError(
                "the file is empty", file=file, fix="describe one tenant, see config/example-tenant.yaml"
            )
        duplicates = _duplicate_keys(node, file)
        data = loader.construct_document(node)
    except yaml.MarkedYAMLError as exc:
        # Built from the parts, not str(exc): that would quote the offending source line, which
        # may hold a secret someone pasted in by mistake.
        mark = exc.problem_mark or exc.context_mark
        what = ", ".join(part for part in (exc.context, exc.problem) if part)
        problem = f"YAML syntax error: {what}"
        if mark is not None:
            problem += f" (column {mark.column + 1})"
        raise ConfigError(
            problem, file=file, line=mark.line + 1 if mark is not None else None, fix="fix the YAML syntax"
        ) from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"YAML error: {type(exc).__name__}", file=file, fix="fix the YAML syntax") from None
    finally:
        loader.dispose()
    return data, _line_map(node, data), duplicates
