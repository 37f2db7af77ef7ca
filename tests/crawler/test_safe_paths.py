"""Values from the API in the output layout, and links planted in the output (issue 15, item 3)."""

from __future__ import annotations

import os
import stat
import unicodedata
from pathlib import Path
from typing import Any

import pytest

from crawler.pipeline.scope import Scope, safe_component
from crawler.pipeline.sink import BUFFER_BYTES, FileSink

HOSTILE = [
    "..", ".", "../../etc", "a/b", "a\\b", "a\x00b", "a\nb", "tab\there", "\x1b[31mred",
    "x" * 5000, "Web", "web", "WEB", "café", unicodedata.normalize("NFD", "café"), "项目一", "项目二",
    "a_b", "a b", "-leading", ".hidden", "CON", "nul", "ok-name_1", "with~tilde", "",
]  # fmt: skip


def test_components_from_the_api_stay_in_their_directory_and_never_collide() -> None:
    names = [safe_component(value) for value in HOSTILE]
    assert len(set(names)) == len(set(HOSTILE)), "two distinct values, one file"
    # Not by case either (a case-insensitive filesystem), nor by Unicode normalisation.
    assert len({n.casefold() for n in names}) == len(names)
    for value, name in zip(HOSTILE, names, strict=True):
        assert name and "/" not in name and "\\" not in name and name not in (".", "..")
        assert not name.startswith(".") and len(name) <= 73
        assert all(c.isascii() and c.isprintable() for c in name), repr(name)
        if value in ("ok-name_1", "web", "nul"):
            assert name == value, "plain names stay readable as they are"
    assert safe_component("Web").startswith("Web~") and safe_component("../../etc").startswith("____etc~")
    # A scope's path below the root, for hostile project names and EP ids.
    for value in HOSTILE:
        scope = Scope("acme", "cn-north-4", "p" * 32, value, value or None, "private")
        relpath = scope.relpath("{tenant}/{region}/{project_name}")
        assert not os.path.isabs(relpath) and ".." not in relpath.split("/")
        assert os.path.normpath(relpath) == relpath and relpath.count("/") == 3


@pytest.mark.parametrize("size", ["small", "streamed"])
async def test_links_planted_in_the_output_are_not_written_through(tmp_path: Path, size: str) -> None:
    root, outside = tmp_path / "out", tmp_path / "outside"
    (root / "acme").mkdir(parents=True)
    outside.mkdir()
    (root / "acme" / "cn-north-4").symlink_to(outside, target_is_directory=True)  # a planted directory link
    (root / "acme" / "ap").mkdir()
    victim = outside / "victim.txt"
    victim.write_bytes(b"keep me")
    (root / "acme" / "ap" / "backups.private.no-ep.ndjson").symlink_to(victim)  # a planted file link
    data = b'{"id":"a"}\n' if size == "small" else b'{"id":"a","pad":"' + b"x" * BUFFER_BYTES + b'"}\n'

    sink = FileSink(root, "none")
    through_directory = sink.open("acme/cn-north-4/p1/backups.private.no-ep.ndjson")
    through_file = sink.open("acme/ap/backups.private.no-ep.ndjson")
    errors = []
    for out in (through_directory, through_file):
        try:
            await out.write(data, 1)
            await out.commit(complete=True)
        except OSError as exc:
            errors.append(exc)
    await sink.close()

    # The directory link: refused, with the path named. The file link: refused (a streamed scope's
    # part file is opened with O_NOFOLLOW... the link is at the final name) or replaced by the
    # scope's own file (a rename replaces a link, it never follows it). Never written through.
    assert errors and "is a symbolic link: the output does not write through it" in str(errors[0])
    planted = root / "acme" / "ap" / "backups.private.no-ep.ndjson"
    assert len(errors) == 2 or (not planted.is_symlink() and planted.read_bytes() == data)
    assert list(outside.iterdir()) == [victim] and victim.read_bytes() == b"keep me"


def test_outputs_and_state_are_private_unless_a_umask_is_given(tmp_path: Path) -> None:
    from crawler.cli import output_umask
    from crawler.errors import UsageError

    assert output_umask({}) == 0o077 and output_umask({"CBR_CRAWLER_UMASK": "022"}) == 0o022
    with pytest.raises(UsageError, match="CBR_CRAWLER_UMASK"):
        output_umask({"CBR_CRAWLER_UMASK": "u=rwx"})


def _modes(root: Path) -> set[tuple[str, int]]:
    return {("d" if p.is_dir() else "f", stat.S_IMODE(p.stat().st_mode)) for p in [root, *root.rglob("*")]}


@pytest.mark.e2e
@pytest.mark.parametrize(
    ("umask", "expected"), [(None, {("d", 0o700), ("f", 0o600)}), ("022", {("d", 0o755), ("f", 0o644)})]
)
def test_a_crawl_writes_private_files_and_directories(
    umask: str | None, expected: set[tuple[str, int]], tmp_path: Path, emulator_factory: Any
) -> None:
    from conftest import crawler_env, run_cli, write_tenant

    from crawler.emulator.estate import DomainSpec, EstateSpec
    from crawler.emulator.scenario import Scenario

    emu = emulator_factory(
        Scenario(
            seed=5,
            estate=EstateSpec(seed=5, regions=("cn-north-4",), domains=(DomainSpec("acme", backups=200),)),
        )
    )
    config = write_tenant(tmp_path, emu.url, "acme-prod", "acme", regions=["cn-north-4"])
    out = tmp_path / "out"
    env = crawler_env(**({"CBR_CRAWLER_UMASK": umask} if umask else {}))
    proc = run_cli(
        "run", "--config", str(config), "--output", str(out), "--metrics-file", str(out / "m.prom"), env=env
    )

    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (out / ".cbr-crawler" / "state.sqlite").exists() and (out / "report.json").exists()
    metrics_file = out / "m.prom"
    # The metrics file is for node_exporter, another user: readable by all, whatever the umask.
    assert stat.S_IMODE(metrics_file.stat().st_mode) == 0o644
    metrics_file.unlink()
    assert _modes(out) == expected
