"""Scenario A written to a local S3 server against the same crawl to local disk, in one run.

``python -m bench.objectstore [--backups N] [--turns K]``: the emulator serves A (compare.py's big
projects, page cache prewarmed) in its own process; moto's S3 server runs in this process's
threads; the crawler is a child process. Turns alternate disk and bucket, the best of each counts.
Both outputs are checked complete with every backup. Peak RSS is the crawler child's own.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

from bench._support import BenchEmulator, run_child
from bench.compare import PASSWORD, PASSWORD_ENV, UNLIMITED, big_projects, write_tenant

BUCKET = "bench-inventory"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--backups", type=int, default=1_000_000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--turns", type=int, default=2)
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args(argv)

    import boto3
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    store_env = {
        "CBR_CRAWLER_S3_ENDPOINT": f"http://{host}:{port}",
        "CBR_CRAWLER_S3_ADDRESSING": "path",
        "AWS_ACCESS_KEY_ID": "bench",
        "AWS_SECRET_ACCESS_KEY": "bench-secret",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    s3 = boto3.client(
        "s3",
        endpoint_url=store_env["CBR_CRAWLER_S3_ENDPOINT"],
        aws_access_key_id="bench",
        aws_secret_access_key="bench-secret",
        region_name="us-east-1",
    )
    s3.create_bucket(Bucket=BUCKET)
    env = dict(os.environ, **store_env, **{PASSWORD_ENV: PASSWORD})
    results: dict[str, list[tuple[float, float, float]]] = {"disk": [], "s3": []}
    try:
        with (
            tempfile.TemporaryDirectory(prefix="cbr-objects-") as tmp,
            BenchEmulator((big_projects(args.backups, args.seed, 0.0),)) as (a,),
        ):
            work = Path(tmp)
            config = write_tenant(
                work / "a.yaml",
                a.url,
                rps=UNLIMITED,
                concurrency=args.concurrency,
                eps=False,
                own_types=["private"],
            )
            for turn in range(args.turns):
                for kind in ("disk", "s3"):
                    output = str(work / "out") if kind == "disk" else f"s3://{BUCKET}/turn-{turn}"
                    command = [sys.executable, "-m", "crawler", "run", "--config", str(config)]
                    child = run_child([*command, "--output", output, "--no-report"], env)
                    if kind == "disk":
                        manifest = orjson.loads((work / "out" / "manifest.json").read_bytes())
                        shutil.rmtree(work / "out")
                    else:
                        body = s3.get_object(Bucket=BUCKET, Key=f"turn-{turn}/manifest.json")["Body"].read()
                        manifest = orjson.loads(body)
                        _empty(s3, f"turn-{turn}/")
                    records = manifest["totals"]["records_written"]
                    size = sum(f["size"] for scope in manifest["scopes"] for f in scope["files"])
                    if child.code != 0 or manifest["status"] != "complete" or records != a.backups:
                        print(
                            f"{kind}: exit {child.code}, {manifest.get('status')}:\n{child.stderr}",
                            file=sys.stderr,
                        )
                        return 1
                    results[kind].append((records / child.wall, child.wall, child.peak_rss_mb))
                    print(f"{kind}: {records / child.wall:,.0f} records/s", file=sys.stderr)
        # The store's own ceiling: the same bytes, 5 MiB parts, as many uploads at once as the
        # crawler has scopes open, from a bare aiobotocore loop (no crawl, no compression).
        os.environ.update(store_env)  # the bare loop finds its key as the crawler does
        ceiling = asyncio.run(_store_ceiling(store_env, size, args.concurrency))
    finally:
        server.stop()
    disk, bucket = max(results["disk"]), max(results["s3"])
    print(f"scenario A, {args.backups:,} backups, concurrency {args.concurrency}, best of {args.turns}")
    print(f"  disk    {disk[0]:>10,.0f} records/s  {disk[1]:6.1f} s wall  peak RSS {disk[2]:.0f} MB")
    print(f"  s3      {bucket[0]:>10,.0f} records/s  {bucket[1]:6.1f} s wall  peak RSS {bucket[2]:.0f} MB")
    turns = {kind: [round(r[0]) for r in rows] for kind, rows in results.items()}
    print(f"  all turns: disk {turns['disk']}, s3 {turns['s3']}")
    ceiling_rate = args.backups / (size / ceiling)
    megabytes = f"{size / 1e6:,.0f} MB"
    print(f"  store ceiling (bare aiobotocore multipart of the same {megabytes}): {ceiling / 1e6:.0f} MB/s,")
    print(f"          i.e. {ceiling_rate:,.0f} records/s at this output's bytes per record")
    print(f"RATIO s3 / disk, records/s            {bucket[0] / disk[0]:.2f}  (target >= 0.7)")
    print(f"RATIO s3 / store ceiling, records/s   {bucket[0] / ceiling_rate:.2f}  (reference)")
    return 0


async def _store_ceiling(env: dict[str, str], size: int, uploads: int) -> float:
    """Bytes/s a bare aiobotocore loop puts into the store: ``uploads`` multipart uploads at once."""
    from crawler.pipeline.objectsink import PART_SIZE
    from crawler.pipeline.objectstore import StoreSettings, open_store

    part = os.urandom(PART_SIZE)
    parts = max(1, size // PART_SIZE)
    async with open_store(StoreSettings.from_env(env)) as client:
        shares = [parts // uploads + (1 if n < parts % uploads else 0) for n in range(uploads)]
        started = time.perf_counter()
        await asyncio.gather(
            *(
                put_multipart(client, BUCKET, f"ceiling/{n}", count, part)
                for n, count in enumerate(shares)
                if count
            )
        )
        return parts * PART_SIZE / (time.perf_counter() - started)


async def put_multipart(client: Any, bucket: str, key: str, count: int, part: bytes) -> None:
    """``count`` parts of ``part``, one in flight, as the object sink uploads; completed, then deleted."""
    created = await client.create_multipart_upload(Bucket=bucket, Key=key)
    done = []
    for number in range(1, count + 1):
        answer = await client.upload_part(
            Bucket=bucket, Key=key, UploadId=created["UploadId"], PartNumber=number, Body=part
        )
        done.append({"ETag": answer["ETag"], "PartNumber": number})
    await client.complete_multipart_upload(
        Bucket=bucket, Key=key, UploadId=created["UploadId"], MultipartUpload={"Parts": done}
    )
    await client.delete_object(Bucket=bucket, Key=key)


def _empty(s3: object, prefix: str) -> None:
    paginator = s3.get_paginator("list_objects_v2")  # type: ignore[attr-defined]
    for page in paginator.paginate(Bucket=BUCKET, Prefix=prefix):
        for item in page.get("Contents", []):
            s3.delete_object(Bucket=BUCKET, Key=item["Key"])  # type: ignore[attr-defined]


if __name__ == "__main__":
    sys.exit(main())
