"""The diff on hand-made run outputs: the corner cases a crawl of the emulator does not produce."""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import Any

import orjson
import pytest

from crawler.commands.diff import diff_runs, find_previous_run
from crawler.commands.outputs import iter_lines
from crawler.commands.places import LocalPlace

KEY = "t/r/p/ep=-/private"


def _line(record: dict[str, Any], run_id: str) -> bytes:
    # As the crawler writes it: the API's bytes, then the provenance before the closing brace.
    raw = orjson.dumps(record)
    return raw[:-1] + b',"_crawl":' + orjson.dumps({"run_id": run_id, "fetched_at": run_id}) + b"}\n"


def _run(
    root: Path,
    scopes: dict[str, list[bytes] | list[dict[str, Any]]],
    *,
    run_id: str,
    status: str = "complete",
    digest: str = "d",
    finished: str = "2026-11-26T02:00:00Z",
) -> Path:
    entries = []
    for n, (key, records) in enumerate(scopes.items()):
        path = f"s{n}.ndjson.gz"
        lines = [r if isinstance(r, bytes) else _line(r, run_id) for r in records]
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_bytes(gzip.compress(b"".join(lines)))
        size = (root / path).stat().st_size
        entries.append({"key": key, "status": "complete", "files": [{"path": path, "size": size}]})
    manifest = {
        "run_id": run_id,
        "status": status,
        "config_digest": digest,
        "started_at": finished,
        "finished_at": finished,
        "scopes": entries,
    }
    (root / "manifest.json").write_bytes(orjson.dumps(manifest))
    return root


def _diff(old: Path, new: Path, budget: int = 1 << 20) -> tuple[Any, list[dict[str, Any]]]:
    out: list[bytes] = []
    result = diff_runs(old, new, out.append, before_budget=budget)
    return result, [orjson.loads(line) for line in out]


def _rec(i: int, **extra: Any) -> dict[str, Any]:
    return {"id": f"id-{i:04d}", "name": f"b{i}", "size": 10, **extra}


def test_changes_spanning_several_rounds_of_befores(tmp_path: Path) -> None:
    old = [_rec(i) for i in range(200)]
    new = [_rec(i, name="renamed") if i % 3 == 0 else _rec(i) for i in range(20, 220)]
    a = _run(tmp_path / "a", {KEY: old}, run_id="A")
    b = _run(tmp_path / "b", {KEY: new}, run_id="B")

    # A budget of about two records: the befores are gathered in many rounds.
    result, changes = _diff(a, b, budget=2 * len(_line(old[0], "A")))

    by_kind: dict[str, set[str]] = {"added": set(), "removed": set(), "changed": set()}
    for c in changes:
        by_kind[c["change"]].add(c["id"])
        assert c["scope"] == KEY
    assert by_kind["added"] == {f"id-{i:04d}" for i in range(200, 220)}
    assert by_kind["removed"] == {f"id-{i:04d}" for i in range(20)}
    assert by_kind["changed"] == {f"id-{i:04d}" for i in range(21, 200) if i % 3 == 0}
    for c in changes:
        if c["change"] == "changed":
            assert c["backup"]["name"] == "renamed"
            assert c["before"]["_crawl"]["run_id"] == "A" and c["backup"]["_crawl"]["run_id"] == "B"
            assert c["before"]["name"] != "renamed"
    assert result.totals() == {
        "added": 20,
        "removed": 20,
        "changed": len(by_kind["changed"]),
        "unchanged": 180 - len(by_kind["changed"]),
    }


def test_key_order_or_provenance_alone_is_no_change(tmp_path: Path) -> None:
    old = [_rec(1), _rec(2)]
    reordered = orjson.dumps({"size": 10, "name": "b1", "id": "id-0001"})
    new = [reordered[:-1] + b',"_crawl":{"run_id":"B"}}\n', _line(_rec(2), "B")]
    a = _run(tmp_path / "a", {KEY: old}, run_id="A")
    b = _run(tmp_path / "b", {KEY: new}, run_id="B")
    result, changes = _diff(a, b)
    assert changes == []
    assert result.totals()["unchanged"] == 2


def test_scopes_that_appear_or_vanish(tmp_path: Path) -> None:
    gone, born = "t/r/gone/ep=-/private", "t/r/born/ep=-/private"
    a = _run(tmp_path / "a", {KEY: [_rec(1)], gone: [_rec(2)]}, run_id="A")
    b = _run(tmp_path / "b", {KEY: [_rec(1)], born: [_rec(3)]}, run_id="B")
    result, changes = _diff(a, b)
    assert {(c["change"], c["scope"], c["id"]) for c in changes} == {
        ("removed", gone, "id-0002"),
        ("added", born, "id-0003"),
    }
    assert {s.scope: s.status for s in result.scopes} == {KEY: "compared", gone: "vanished", born: "appeared"}

    # With another configuration, or an old run not complete, absence proves nothing: skipped.
    c = _run(tmp_path / "c", {KEY: [_rec(1)], born: [_rec(3)]}, run_id="C", digest="other")
    result, changes = _diff(a, c)
    assert changes == []
    assert {s.scope for s in result.skipped} == {gone, born}
    assert "not in the old run" in next(s.reason for s in result.skipped if s.scope == born)


def test_lines_stream_across_chunks_and_compressions(tmp_path: Path) -> None:
    import zstandard

    from crawler.commands import outputs

    lines = [orjson.dumps({"id": str(i), "pad": "x" * (i % 50)}) for i in range(3000)]
    data = b"\n".join(lines) + b"\n"
    (tmp_path / "a.ndjson").write_bytes(data)
    (tmp_path / "a.ndjson.gz").write_bytes(gzip.compress(data))
    (tmp_path / "a.ndjson.zst.partial").write_bytes(zstandard.ZstdCompressor().compress(data))
    original = outputs.READ_CHUNK
    outputs.READ_CHUNK = 777  # lines straddle chunk boundaries
    try:
        for name in ("a.ndjson", "a.ndjson.gz", "a.ndjson.zst.partial"):
            assert list(iter_lines(tmp_path / name)) == lines, name
    finally:
        outputs.READ_CHUNK = original


def test_previous_run_is_the_newest_complete_sibling(tmp_path: Path) -> None:
    _run(tmp_path / "n1", {KEY: [_rec(1)]}, run_id="1", finished="2026-11-25T02:00:00Z")
    _run(tmp_path / "n2", {KEY: [_rec(1)]}, run_id="2", finished="2026-11-26T02:00:00Z")
    _run(tmp_path / "n3", {KEY: [_rec(1)]}, run_id="3", finished="2026-11-26T05:00:00Z", status="incomplete")
    today = tmp_path / "n4"
    today.mkdir()
    assert find_previous_run(today, before="2026-11-27T02:00:00Z") == LocalPlace(tmp_path / "n2")
    assert find_previous_run(today, before="2026-11-25T12:00:00Z") == LocalPlace(tmp_path / "n1")
    assert find_previous_run(tmp_path / "n1", before="2026-11-24T00:00:00Z") is None


@pytest.mark.parametrize("bad", [b"not json", b'{"no": "manifest"}'])
def test_unreadable_manifest_is_a_clear_error(tmp_path: Path, bad: bytes) -> None:
    from crawler.commands.outputs import OutputError

    (tmp_path / "manifest.json").write_bytes(bad)
    with pytest.raises(OutputError, match="manifest"):
        diff_runs(tmp_path, tmp_path, lambda line: None)
