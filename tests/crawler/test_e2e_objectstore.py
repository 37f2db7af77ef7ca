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
from s3faults import Fault, S3FaultProxy

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
        "report.json",  # the nightly inventory report, read back from the bucket
    }
    report = orjson.loads(_body(bucket, "runs/2026-12-05/report.json"))
    assert report["totals"]["backups"] == emu.estate.backup_count  # each backup once, shared or not
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


@pytest.fixture
def faulty_s3(s3: dict[str, str]) -> Iterator[tuple[S3FaultProxy, dict[str, str]]]:
    """The S3 server behind a proxy that injects the store's errors (moto gives neither 403 nor 503)."""
    proxy = S3FaultProxy(s3["CBR_CRAWLER_S3_ENDPOINT"]).start()
    yield proxy, {**s3, "CBR_CRAWLER_S3_ENDPOINT": proxy.url}
    proxy.stop()


def test_access_denied_on_the_bucket_fails_before_any_request_naming_bucket_and_code(
    tmp_path: Path, emulator_factory: Callable[..., EmulatorThread], faulty_s3: Any, bucket: Any
) -> None:
    proxy, s3 = faulty_s3
    proxy.faults.append(Fault("HEAD", rf"^/{BUCKET}/?$", 403, "AccessDenied"))
    emu = emulator_factory(SMALL)
    config = _tenant(tmp_path, emu)

    env = crawler_env(**s3, HOME=str(tmp_path))
    result = run_cli("run", "--config", str(config), "--output", f"s3://{BUCKET}/denied", env=env)

    assert result.returncode == 1, result.stderr[-3000:]
    assert f"bucket {BUCKET}" in result.stderr and "403" in result.stderr
    assert "check the store's credentials" in result.stderr and "Traceback" not in result.stderr
    assert emu.call(lambda: emu.stats.total("cbr.list_backups")) == 0, "checked before any CBR request"
    assert not _keys(bucket, "denied/")


def test_access_denied_on_data_objects_fails_those_scopes_naming_key_and_code(
    tmp_path: Path, emulator_factory: Callable[..., EmulatorThread], faulty_s3: Any, bucket: Any
) -> None:
    proxy, s3 = faulty_s3
    proxy.faults.append(Fault("PUT", r"/cn-north-4_crm/", 403, "AccessDenied"))
    emu = emulator_factory(SMALL)
    config = _tenant(tmp_path, emu)

    env = crawler_env(**s3, HOME=str(tmp_path))
    result = run_cli("run", "--config", str(config), "--output", f"s3://{BUCKET}/part", env=env)

    assert result.returncode == 1, result.stderr[-3000:]
    assert "INCOMPLETE" in result.stderr
    assert f"s3://{BUCKET}/part/acme/cn-north-4/cn-north-4_crm/" in result.stderr
    assert "AccessDenied: injected AccessDenied" in result.stderr
    manifest = orjson.loads(_body(bucket, "part/manifest.json"))
    failed = {s["project_name"] for s in manifest["scopes"] if s["status"] != "complete"}
    assert failed == {"cn-north-4_crm"}, "only the scopes whose objects were refused"
    assert not _keys(bucket, "part/_SUCCESS")
    assert not any("cn-north-4_crm" in k for k in _keys(bucket, "part/")), "nothing under a denied key"


def test_slowdown_is_retried_and_a_store_that_never_recovers_fails_the_scopes(
    tmp_path: Path, emulator_factory: Callable[..., EmulatorThread], faulty_s3: Any, bucket: Any
) -> None:
    proxy, s3 = faulty_s3
    emu = emulator_factory(SMALL)
    config = _tenant(tmp_path, emu)
    env = crawler_env(**s3, HOME=str(tmp_path))

    # A throttled store: the first four writes answered 503 SlowDown, then it recovers.
    proxy.faults.append(Fault("PUT", r"\.ndjson", 503, "SlowDown", times=4))
    recovered = run_cli("run", "--config", str(config), "--output", f"s3://{BUCKET}/slow", env=env)

    assert recovered.returncode == 0, recovered.stderr[-3000:]
    assert len(proxy.answered(503)) == 4
    assert orjson.loads(_body(bucket, "slow/manifest.json"))["status"] == "complete"

    # A store that stays throttled: after AWS_MAX_ATTEMPTS the scopes fail, named with the code.
    proxy.faults[:] = [Fault("PUT", r"/cn-north-4_data/.*\.ndjson", 503, "SlowDown")]
    env["AWS_MAX_ATTEMPTS"] = "2"
    stuck = run_cli("run", "--config", str(config), "--output", f"s3://{BUCKET}/stuck", env=env)

    assert stuck.returncode == 1, stuck.stderr[-3000:]
    assert (
        "SlowDown" in stuck.stderr and f"s3://{BUCKET}/stuck/acme/cn-north-4/cn-north-4_data/" in stuck.stderr
    )
    assert not _keys(bucket, "stuck/_SUCCESS")
    assert not any("cn-north-4_data" in k for k in _keys(bucket, "stuck/"))


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
        "run/report.json",
    }


def _scope_ids(emu: EmulatorThread, manifest: dict[str, Any]) -> dict[str, set[str]]:
    return {
        s["key"]: emu.call(
            lambda s=s: emu.estate.truth_ids(s["project_id"], s["own_type"], s["enterprise_project_id"])
        )
        for s in manifest["scopes"]
    }


def test_shards_merge_report_and_diff_read_and_write_the_bucket(
    tmp_path: Path, emulator_factory: Callable[..., EmulatorThread], s3: dict[str, str], bucket: Any
) -> None:
    emu = emulator_factory(SMALL)
    config = _tenant(tmp_path, emu)
    env = crawler_env(**s3, HOME=str(tmp_path))
    night1, night2 = f"s3://{BUCKET}/cbr/2026-12-04", f"s3://{BUCKET}/cbr/2026-12-05"

    # Night 1: two shards (pods) write their own prefixes; a merge pod joins them in the bucket.
    for k in (0, 1):
        shard = run_cli(
            "run", "--config", str(config), "--output", night1, "--shard", f"{k}/2", "--run-id", "n1", env=env
        )  # fmt: skip
        assert shard.returncode == 0, shard.stderr[-3000:]
    assert _keys(bucket, "cbr/2026-12-04/shard-0-of-2/manifest.json")
    merged = run_cli("merge", night1, "--shards", "2", env=env)
    assert merged.returncode == 0, merged.stderr[-3000:]
    assert f"manifest: {night1}/manifest.json and {night1}/_SUCCESS" in merged.stderr
    manifest1 = orjson.loads(_body(bucket, "cbr/2026-12-04/manifest.json"))
    assert manifest1["status"] == "complete" and _body(bucket, "cbr/2026-12-04/_SUCCESS") == b""
    truth1 = _scope_ids(emu, manifest1)
    for scope in manifest1["scopes"]:  # the merged manifest's paths lead to the shards' objects
        ids: set[str] = set()
        for f in scope["files"]:
            assert f["path"].startswith(f"shard-{scope['shard']}-of-2/")
            ids |= {
                orjson.loads(line)["id"] for line in _body(bucket, f"cbr/2026-12-04/{f['path']}").splitlines()
            }
        assert ids == truth1[scope["key"]]

    report = run_cli("report", night1, "--expiring-days", "30", env=env)
    assert report.returncode == 0, report.stderr[-3000:]
    assert f"report: {night1}/report.json" in report.stderr
    totals = orjson.loads(_body(bucket, "cbr/2026-12-04/report.json"))["totals"]
    assert totals["backups"] == emu.estate.backup_count > 0

    # Night 2, after churn: diffed against the newest complete run under the same prefix (night 1).
    emu.call(lambda: emu.estate.churn(40, 30))
    run2 = run_cli("run", "--config", str(config), "--output", night2, "--diff-against", "auto", env=env)
    assert run2.returncode == 0, run2.stderr[-3000:]
    manifest2 = orjson.loads(_body(bucket, "cbr/2026-12-05/manifest.json"))
    truth2 = _scope_ids(emu, manifest2)
    expected = {
        (kind, key, i)
        for key in truth1.keys() | truth2.keys()
        for kind, ids in (
            ("added", truth2.get(key, set()) - truth1.get(key, set())),
            ("removed", truth1.get(key, set()) - truth2.get(key, set())),
        )
        for i in ids
    }
    assert {k for k, _, _ in expected} == {"added", "removed"}
    changes = [
        orjson.loads(line) for line in _body(bucket, "cbr/2026-12-05/diff/changes.ndjson").splitlines()
    ]
    assert {(c["change"], c["scope"], c["id"]) for c in changes} == expected
    summary = orjson.loads(_body(bucket, "cbr/2026-12-05/diff/diff.json"))
    assert summary["old"]["run_id"] == manifest1["run_id"] and summary["skipped"] == []

    # The command, bucket to bucket, gives the same changes.
    diff = run_cli("diff", night1, night2, "--output", f"s3://{BUCKET}/diffs/12-05", env=env)
    assert diff.returncode == 0, diff.stderr[-3000:]
    again = [orjson.loads(line) for line in _body(bucket, "diffs/12-05/changes.ndjson").splitlines()]
    assert {(c["change"], c["scope"], c["id"]) for c in again} == expected


def test_merge_refuses_shards_missing_from_the_bucket(
    tmp_path: Path, emulator_factory: Callable[..., EmulatorThread], s3: dict[str, str], bucket: Any
) -> None:
    emu = emulator_factory(SMALL)
    config = _tenant(tmp_path, emu)
    env = crawler_env(**s3, HOME=str(tmp_path))
    url = f"s3://{BUCKET}/half"
    shard = run_cli(
        "run", "--config", str(config), "--output", url, "--shard", "1/2", "--run-id", "half", env=env
    )  # fmt: skip
    assert shard.returncode == 0, shard.stderr[-3000:]

    merged = run_cli("merge", url, "--shards", "2", env=env)

    assert merged.returncode == 2, merged.stderr[-3000:]
    assert "shard 0 of 2 is missing" in merged.stderr
    assert not _keys(bucket, "half/manifest.json") and not _keys(bucket, "half/_SUCCESS")
