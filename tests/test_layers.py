"""The package layout is the architecture: imports only go down the layers, and never in a cycle."""

from __future__ import annotations

import ast
from pathlib import Path

import crawler

ROOT = Path(crawler.__file__).parent

# Lower numbers are lower layers; a module may import its own layer or lower ones only.
LAYERS = {
    "crawler.errors": 0,
    "crawler.support": 0,
    "crawler.config": 1,
    "crawler.pipeline": 2,
    "crawler.commands": 3,
    "crawler.cli": 4,
    "crawler.__main__": 5,
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for path in ROOT.rglob("*.py"):
        name = _module_name(path)
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found.add(node.module)
                found.update(f"{node.module}.{alias.name}" for alias in node.names)
            elif isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
        graph[name] = {m for m in found if m.startswith("crawler.") and _exists(m)}
    return graph


def _exists(module: str) -> bool:
    relative = Path(*module.split(".")[1:])
    return (ROOT / relative).with_suffix(".py").exists() or (ROOT / relative / "__init__.py").exists()


def _layer(module: str) -> int | None:
    for prefix, layer in LAYERS.items():
        if module == prefix or module.startswith(prefix + "."):
            return layer
    return None


def test_imports_only_go_down_the_layers() -> None:
    upward = []
    for module, targets in _imports().items():
        if module.startswith("crawler.emulator"):
            bad = [t for t in targets if not t.startswith(("crawler.emulator", "crawler.support"))]
            upward += [f"{module} -> {t} (the emulator uses crawler.support only)" for t in bad]
            continue
        here = _layer(module)
        if here is None:
            continue
        upward += [f"{module} -> {t}" for t in targets if (_layer(t) or 0) > here]
    assert not upward, "imports of a higher layer:\n" + "\n".join(sorted(upward))


def test_there_is_no_import_cycle() -> None:
    graph = _imports()
    # Package __init__ re-exports are edges too: `crawler.config` -> `crawler.config.models`.
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt == node or nxt.startswith(node + "."):
                continue  # a package importing its own submodules
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)):
            raise AssertionError("import cycle: " + " -> ".join(cycle))
