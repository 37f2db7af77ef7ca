"""`--output s3://...` against a real S3-compatible server (moto's standalone server, on loopback).

The crawler runs as a user runs it (a process, its exit code, its stderr); the bucket is then read
back with boto3, as a consumer of the inventory would.
"""

from __future__ import annotations

import asyncio
import hashlib
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from conftest import crawler_env, run_cli, write_tenant

from crawler.emulator.estate import DomainSpec, EstateSpec
from crawler.emulator.scenario import FaultsSpec, LatencySpec, Scenario
from crawler.emulator.server import EmulatorThread

pytestmark = pytest.mark.e2e  # against the emulator and an S3 server over real sockets

BUCKET = "inventory"

SMALL = Scenario(
    seed=3,
    estate=EstateSpec(seed=3, regions=("cn-north-4",), domains=(DomainSpec("acme", backups=600),)),
)
# One project holding ~12 MB of lines: more than one 8 MiB part, so a multipart upload.
BIG = Scenario(
    seed=4,
    estate=EstateSpec(
        seed=4,
        regions=("cn-north-4",),
        domains=(DomainSpec("acme", backups=9000, subprojects=0, enterprise_projects=1),),
    ),
)


@pytest.fixture(scope="module")
def s3() -> Iterator[dict[str, Any]]:
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {
        "CBR_CRAWLER_S3_ENDPOINT": f"http://{host}:{port}",
        "CBR_CRAWLER_S3_ADDRESSING": "path",
        "AWS_ACCESS_KEY_ID": "testing-key",
        "AWS_SECRET_ACCESS_KEY": "testing-secret",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    yield env
    server.stop()


@pytest.fixture
def bucket(s3: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    import boto3

    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.aws of the machine's
    client = boto3.client(
        "s3",
        endpoint_url=s3["CBR_CRAWLER_S3_ENDPOINT"],
        aws_access_key_id="testing-key",
        aws_secret_access_key="testing-secret",
        region_name="us-east-1",
    )
    client.create_bucket(Bucket=BUCKET)
    yield client
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET):
        for item in page.get("Contents", []):
            client.delete_object(Bucket=BUCKET, Key=item["Key"])
    for upload in client.list_multipart_uploads(Bucket=BUCKET).get("Uploads", []):
        client.abort_multipart_upload(Bucket=BUCKET, Key=upload["Key"], UploadId=upload["UploadId"])
    client.delete_bucket(Bucket=BUCKET)


def _keys(client: Any, prefix: str) -> set[str]:
    keys: set[str] = set()
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix):
        keys.update(item["Key"] for item in page.get("Contents", []))
    return keys


def _body(client: Any, key: str) -> bytes:
    data: bytes = client.get_object(Bucket=BUCKET, Key=key)["Body"].read()
    return data


def _tenant(tmp_path: Path, emu: EmulatorThread, **overrides: Any) -> Path:
    settings: dict[str, Any] = {
        "regions": ["cn-north-4"],
        "own_types": ["private", "shared"],
        "enterprise_projects": {"mode": "none"},
    }
    settings.update(overrides)
    return write_tenant(tmp_path, emu.url, "acme", "acme", **settings)


def test_a_crawl_to_a_bucket_matches_the_same_crawl_to_disk(
    tmp_path: Path, emulator_factory: Callable[..., EmulatorThread], s3: dict[str, str], bucket: Any
) -> None:
    emu = emulator_factory(SMALL)
    config = _tenant(tmp_path, emu)
    env = crawler_env(**s3, HOME=str(tmp_path))
    url = f"s3://{BUCKET}/runs/2026-12-05"

    result = run_cli("run", "--config", str(config), "--output", url, env=env)
    on_disk = run_cli(
        "run", "--config", str(config), "--output", str(tmp_path / "disk"), "--no-report", env=env
    )

    assert result.returncode == 0, result.stderr[-3000:]
    assert on_disk.returncode == 0, on_disk.stderr[-3000:]
    assert f"manifest: {url}/manifest.json" in result.stderr
    manifest = orjson.loads(_body(bucket, "runs/2026-12-05/manifest.json"))
    disk_manifest = orjson.loads((tmp_path / "disk" / "manifest.json").read_bytes())
    assert manifest["status"] == "complete"
    assert _body(bucket, "runs/2026-12-05/_SUCCESS") == b""
    # Same layout and names as the file output, and every object as the manifest lists it.
    listed = {f["path"]: f for s in manifest["scopes"] for f in s["files"]}
    assert set(listed) == {f["path"] for s in disk_manifest["scopes"] for f in s["files"]}
    keys = {k.removeprefix("runs/2026-12-05/") for k in _keys(bucket, "runs/2026-12-05/")}
    assert {k for k in keys if not k.startswith(".cbr-crawler/")} == set(listed) | {
        "manifest.json",
        "_SUCCESS",
    }
    # The run state (the file output's .cbr-crawler/state.sqlite): finished, so the next run is new.
    run = orjson.loads(_body(bucket, "runs/2026-12-05/.cbr-crawler/run.json"))
    assert (run["run_id"], run["status"], run["attempts"]) == (manifest["run_id"], "complete", 1)
    total = 0
    for path, entry in listed.items():
        body = _body(bucket, f"runs/2026-12-05/{path}")
        assert (len(body), hashlib.sha256(body).hexdigest()) == (entry["size"], entry["sha256"])
        ids = [orjson.loads(line)["id"] for line in body.splitlines()]
        assert len(ids) == len(set(ids)) == entry["records"]
        total += len(ids)
    assert total == manifest["totals"]["records_written"] == disk_manifest["totals"]["records_written"]


def test_a_scope_bigger_than_a_part_is_one_multipart_object_none_left_open(
    tmp_path: Path, emulator_factory: Callable[..., EmulatorThread], s3: dict[str, str], bucket: Any
) -> None:
    emu = emulator_factory(BIG)
    config = _tenant(tmp_path, emu, own_types=["private"])
    env = crawler_env(**s3, HOME=str(tmp_path))

    result = run_cli("run", "--config", str(config), "--output", f"obs://{BUCKET}/big", env=env)

    assert result.returncode == 0, result.stderr[-3000:]
    manifest = orjson.loads(_body(bucket, "big/manifest.json"))
    files = [f for s in manifest["scopes"] for f in s["files"]]
    biggest = max(files, key=lambda f: f["records"])
    head = bucket.head_object(Bucket=BUCKET, Key=f"big/{biggest['path']}")
    assert "-" in head["ETag"], "a multipart upload's ETag"
    body = _body(bucket, f"big/{biggest['path']}")
    assert hashlib.sha256(body).hexdigest() == biggest["sha256"]
    lines = body.splitlines()
    assert len(lines) == len({orjson.loads(line)["id"] for line in lines}) == biggest["records"] > 5000
    assert sum(f["records"] for f in files) == sum(
        len(emu.estate.truth_ids(s["project_id"], "private", None)) for s in manifest["scopes"]
    )
    assert not bucket.list_multipart_uploads(Bucket=BUCKET).get("Uploads"), "no upload left open (billed)"


def test_a_missing_bucket_fails_before_any_request_naming_bucket_and_code(
    tmp_path: Path, emulator_factory: Callable[..., EmulatorThread], s3: dict[str, str], bucket: Any
) -> None:
    emu = emulator_factory(SMALL)
    config = _tenant(tmp_path, emu)
    env = crawler_env(**s3, HOME=str(tmp_path))

    result = run_cli("run", "--config", str(config), "--output", "s3://no-such-bucket/x", env=env)

    assert result.returncode == 1
    assert "no-such-bucket" in result.stderr and ("NoSuchBucket" in result.stderr or "404" in result.stderr)
    assert "Traceback" not in result.stderr


def test_an_unreachable_store_fails_with_the_endpoint_named(
    tmp_path: Path, emulator_factory: Callable[..., EmulatorThread], s3: dict[str, str]
) -> None:
    emu = emulator_factory(SMALL)
    config = _tenant(tmp_path, emu)
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = crawler_env(
        **{**s3, "CBR_CRAWLER_S3_ENDPOINT": f"http://127.0.0.1:{port}"},
        HOME=str(tmp_path),
        AWS_MAX_ATTEMPTS="2",
    )

    result = run_cli("run", "--config", str(config), "--output", f"s3://{BUCKET}/x", env=env, timeout=120)

    assert result.returncode == 1
    assert BUCKET in result.stderr and "EndpointConnectionError" in result.stderr, result.stderr[-2000:]
    assert "Traceback" not in result.stderr


def test_a_bad_store_setting_is_a_usage_error(
    tmp_path: Path, emulator_factory: Callable[..., EmulatorThread], s3: dict[str, str]
) -> None:
    emu = emulator_factory(SMALL)
    config = _tenant(tmp_path, emu)
    env = crawler_env(**{**s3, "CBR_CRAWLER_S3_ADDRESSING": "sideways"}, HOME=str(tmp_path))

    result = run_cli("run", "--config", str(config), "--output", f"s3://{BUCKET}/x", env=env)

    assert result.returncode == 2
    assert "CBR_CRAWLER_S3_ADDRESSING" in result.stderr


async def _with_sink(s3: dict[str, str], prefix: str, body: Callable[[Any], Any]) -> Any:
    from crawler.pipeline.objectsink import ObjectSink
    from crawler.pipeline.objectstore import ObjectLocation, StoreSettings, open_store

    async with open_store(StoreSettings.from_env(s3)) as client:
        sink = ObjectSink(client, ObjectLocation.parse(f"s3://{BUCKET}/{prefix}"))
        try:
            return await body(sink)
        finally:
            await sink.close()


async def test_a_failed_scope_bigger_than_a_part_aborts_its_upload_and_a_small_one_keeps_a_partial(
    s3: dict[str, str], bucket: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from crawler.pipeline import objectsink

    for name, value in s3.items():
        monkeypatch.setenv(name, value)
    line = b'{"id":"%d","pad":"' + b"x" * 1000 + b'"}\n'

    async def crawl(sink: Any) -> tuple[list[Any], list[Any]]:
        big = sink.open("acme/p1/backups.private.no-ep.ndjson")
        for n in range(objectsink.PART_SIZE // 1000 + 100):  # a part shipped, more held
            await big.write(line % n, 1)
        for _ in range(500):  # parts go in the background while the next one fills
            if bucket.list_multipart_uploads(Bucket=BUCKET).get("Uploads"):
                break
            await asyncio.sleep(0.01)
        assert bucket.list_multipart_uploads(Bucket=BUCKET).get("Uploads"), "the upload is under way"
        small = sink.open("acme/p2/backups.private.no-ep.ndjson")
        await small.write(line % 1, 1)
        return await big.commit(complete=False), await small.commit(complete=False)

    big_files, small_files = await _with_sink(s3, "failed", crawl)

    assert big_files == []
    assert not bucket.list_multipart_uploads(Bucket=BUCKET).get("Uploads"), "aborted: no parts left billed"
    [partial] = small_files
    assert partial.path == "acme/p2/backups.private.no-ep.ndjson.partial"
    assert _keys(bucket, "failed/") == {f"failed/{partial.path}"}, "nothing under a final key"


async def test_a_discarded_scope_leaves_no_upload_and_can_be_written_afresh(
    s3: dict[str, str], bucket: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from crawler.pipeline import objectsink

    for name, value in s3.items():
        monkeypatch.setenv(name, value)

    line = b'{"id":"%d","pad":"' + b"y" * 1000 + b'"}\n'

    async def crawl(sink: Any) -> Any:
        out = sink.open("acme/p1/backups.private.no-ep.ndjson")
        for n in range(objectsink.PART_SIZE // 1000 + 10):
            await out.write(line % n, 1)
        await out.discard()  # the marker pass rewrites a scope whose ids spilled
        await out.write(line % 0, 1)
        return await out.commit(complete=True)

    [record] = await _with_sink(s3, "fresh", crawl)

    assert not bucket.list_multipart_uploads(Bucket=BUCKET).get("Uploads")
    body = _body(bucket, f"fresh/{record.path}")
    assert body == line % 0 and record.records == 1
    assert record.sha256 == hashlib.sha256(body).hexdigest()


# Three projects of ~10k backups (~13 MB each: multipart uploads) served slowly enough that a kill
# lands with an upload open and some scopes already checkpointed.
KILLABLE = Scenario(
    seed=6,
    estate=EstateSpec(
        seed=6,
        regions=("cn-north-4",),
        domains=(DomainSpec("acme", backups=30000, subprojects=2, enterprise_projects=1),),
    ),
    faults=FaultsSpec(latency=(LatencySpec(api="cbr.list_backups", ms=40),)),
)


def test_a_pod_killed_mid_upload_is_continued_by_a_new_one_from_the_bucket(
    tmp_path: Path, emulator_factory: Callable[..., EmulatorThread], s3: dict[str, str], bucket: Any
) -> None:
    emu = emulator_factory(KILLABLE)
    config = _tenant(
        tmp_path,
        emu,
        own_types=["private"],
        rate_limit={"requests_per_second": 200, "concurrency": 2, "page_size": 100},
    )
    env = crawler_env(**s3, HOME=str(tmp_path))
    baseline = run_cli("run", "--config", str(config), "--output", f"s3://{BUCKET}/base", env=env)
    assert baseline.returncode == 0, baseline.stderr[-3000:]

    url = f"s3://{BUCKET}/run"
    first_pod = subprocess.Popen(
        [sys.executable, "-m", "crawler", "run", "--config", str(config), "--output", url],
        env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 90
        while not (
            any("/checkpoints/" in k for k in _keys(bucket, "run/.cbr-crawler/"))
            and bucket.list_multipart_uploads(Bucket=BUCKET, Prefix="run/").get("Uploads")
        ):
            assert first_pod.poll() is None, "the crawl ended before it could be killed"
            assert time.monotonic() < deadline, "no checkpoint with an upload open in time"
            time.sleep(0.05)
        first_pod.send_signal(signal.SIGKILL)
        first_pod.communicate(timeout=60)
    finally:
        if first_pod.poll() is None:
            first_pod.kill()
    assert not _keys(bucket, "run/manifest.json") and not _keys(bucket, "run/_SUCCESS")
    recorded = orjson.loads(_body(bucket, "run/.cbr-crawler/run.json"))

    fresh_dir = tmp_path / "new-pod"  # a new pod: nothing on its disk
    fresh_dir.mkdir()
    second_pod = subprocess.run(
        [sys.executable, "-m", "crawler", "run", "--config", str(config), "--output", url],
        env=env, cwd=fresh_dir, capture_output=True, text=True, timeout=240, check=False,
    )  # fmt: skip

    assert second_pod.returncode == 0, second_pod.stderr[-3000:]
    assert "resuming run" in second_pod.stderr and "aborted 1 unfinished upload" in second_pod.stderr
    manifest = orjson.loads(_body(bucket, "run/manifest.json"))
    base = orjson.loads(_body(bucket, "base/manifest.json"))
    assert manifest["status"] == "complete" and manifest["run_id"] == recorded["run_id"]
    assert manifest["resume"]["attempt"] == 2 and manifest["resume"]["scopes_from_checkpoint"] >= 1
    assert not bucket.list_multipart_uploads(Bucket=BUCKET).get("Uploads"), "no parts left billed"
    for scope in base["scopes"]:
        [file] = scope["files"]
        ids = [orjson.loads(line)["id"] for line in _body(bucket, f"run/{file['path']}").splitlines()]
        assert len(ids) == len(set(ids)) == file["records"]
        assert set(ids) == emu.estate.truth_ids(scope["project_id"], "private", None)
    data = {k for k in _keys(bucket, "run/") if "/.cbr-crawler/" not in k}
    assert data == {f"run/{f['path']}" for s in base["scopes"] for f in s["files"]} | {
        "run/manifest.json",
        "run/_SUCCESS",
    }
