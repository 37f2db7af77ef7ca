"""The S3 client choice, measured: aiobotocore (the crawler's) against obstore, into the same server.

Both put the same bytes into a local S3 server (moto's, in its own process so that the clients'
CPU is measured apart from the server's) the way the object sink does: ``--uploads`` multipart
uploads at once (a crawl's open scopes), 5 MiB parts, one part in flight per upload. obstore is
also run its own way (its ``put_async`` with several parts in flight per upload). Printed per
client: MB/s, the client process's CPU seconds per GB, and the ratios to aiobotocore.

    .venv/bin/pip install -e '.[test,bench]'   # obstore is in the bench extra only
    .venv/bin/python -m bench.s3clients        # ~1 GB per client: about a minute
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

BUCKET = "bench"
PART = 5 * 1024 * 1024
KEY, SECRET = "bench-key", "bench-secret"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def _aiobotocore(endpoint: str, uploads: int, parts: int, body: bytes) -> None:
    from bench.objectstore import put_multipart
    from crawler.pipeline.objectstore import StoreSettings, open_store

    env = {"CBR_CRAWLER_S3_ENDPOINT": endpoint, "CBR_CRAWLER_S3_ADDRESSING": "path"}
    async with open_store(StoreSettings.from_env(env)) as client:
        await asyncio.gather(
            *(put_multipart(client, BUCKET, f"aiobotocore/{n}", parts, body) for n in range(uploads))
        )


def _obstore_put(concurrency: int) -> Callable[[str, int, int, bytes], Awaitable[None]]:
    async def run(endpoint: str, uploads: int, parts: int, body: bytes) -> None:
        import obstore
        from obstore.store import S3Store

        store = S3Store(
            BUCKET,
            endpoint=endpoint,
            access_key_id=KEY,
            secret_access_key=SECRET,
            region="us-east-1",
            virtual_hosted_style_request=False,
            client_options={"allow_http": True},
        )

        async def chunks() -> AsyncIterator[bytes]:
            for _ in range(parts):
                yield body

        async def upload(n: int) -> None:
            key = f"obstore/{n}"
            await obstore.put_async(store, key, chunks(), chunk_size=PART, max_concurrency=concurrency)
            await obstore.delete_async(store, key)

        await asyncio.gather(*(upload(n) for n in range(uploads)))

    return run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--megabytes", type=int, default=1000, help="bytes per client run (default 1000 MB)")
    parser.add_argument("--uploads", type=int, default=8, help="uploads at once (the crawl's concurrency)")
    parser.add_argument("--turns", type=int, default=2)
    args = parser.parse_args(argv)
    try:
        import obstore  # noqa: F401
    except ImportError:
        print("obstore is not installed: pip install -e '.[test,bench]'", file=sys.stderr)
        return 2
    port = _free_port()
    endpoint = f"http://127.0.0.1:{port}"
    moto = Path(sys.executable).with_name("moto_server")
    server = subprocess.Popen(
        [str(moto), "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    os.environ.update(AWS_ACCESS_KEY_ID=KEY, AWS_SECRET_ACCESS_KEY=SECRET, AWS_DEFAULT_REGION="us-east-1")
    try:
        import boto3

        deadline = time.monotonic() + 30
        s3 = boto3.client("s3", endpoint_url=endpoint)
        while True:
            try:
                s3.create_bucket(Bucket=BUCKET)
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        parts = max(1, args.megabytes * 1_000_000 // PART // args.uploads)
        total = parts * args.uploads * PART
        body = os.urandom(PART)
        clients: dict[str, Callable[[str, int, int, bytes], Awaitable[None]]] = {
            "aiobotocore, 1 part in flight per upload": _aiobotocore,
            "obstore, 1 part in flight per upload": _obstore_put(1),
            "obstore, 4 parts in flight per upload": _obstore_put(4),
        }
        best: dict[str, tuple[float, float]] = {}
        for turn in range(args.turns):
            for name, client in clients.items():
                cpu0, wall0 = time.process_time(), time.perf_counter()
                asyncio.run(client(endpoint, args.uploads, parts, body))
                cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
                rate, cpu_per_gb = total / wall / 1e6, cpu / (total / 1e9)
                line = f"turn {turn}: {name}: {rate:.0f} MB/s, {cpu_per_gb:.2f} client CPU s/GB"
                print(line, file=sys.stderr)
                if name not in best or rate > best[name][0]:
                    best[name] = (rate, cpu_per_gb)
    finally:
        server.terminate()
        server.wait(10)
    base_rate, base_cpu = best["aiobotocore, 1 part in flight per upload"]
    what = f"{args.uploads} uploads at once, 5 MiB parts, best of {args.turns}"
    print(f"{total / 1e6:,.0f} MB per client, {what}")
    for name, (rate, cpu_per_gb) in best.items():
        print(
            f"  {name:42s} {rate:6.0f} MB/s ({rate / base_rate:.2f}x)  "
            f"{cpu_per_gb:5.2f} client CPU s/GB ({cpu_per_gb / base_cpu:.2f}x)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
