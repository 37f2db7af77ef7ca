"""Run state in the bucket: what lets a pod killed at any point be continued by a new pod.

A pod has no disk that outlives it, so the checkpoint lives next to the objects it vouches for,
under ``PREFIX/.cbr-crawler/``:

- ``run.json``: the run (id, config digest, start, attempts, and once finished its status), the
  same record as the file output's SQLite state (:class:`crawler.pipeline.state.RunRecord`);
- ``checkpoints/RUN_ID/ATTEMPT-SEQ.ndjson``: completed scopes' manifest entries, one object per
  batch (S3 cannot append; one object per scope would cost a PUT each, one growing object a
  rewrite each). A batch is written at most once a second, and only after the scopes in it have
  their objects under their final keys (the engine checkpoints after the commit).

The resume decision is the file output's (:func:`crawler.pipeline.state.decide`). On resume the
recorded scopes whose objects are still listed with the recorded size are kept (not fetched
again); multipart uploads a killed pod left open under the prefix are aborted first, so no
orphan parts stay billed.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from typing import Any

import orjson

from crawler.pipeline.objectstore import ObjectLocation, StoreError, store_error
from crawler.pipeline.scope import ScopeResult
from crawler.pipeline.state import ResumeMode, RunRecord, result_from_dict, resume_or_begin
from crawler.support.groupcommit import GroupCommit

log = logging.getLogger(__name__)

STATE_DIR = ".cbr-crawler"
CHECKPOINT_INTERVAL = 1.0  # seconds between checkpoint objects: at most this much is refetched


class ObjectRunState:
    """The run record and checkpoint objects of one bucket output (the engine's Checkpoints)."""

    def __init__(self, client: Any, location: ObjectLocation) -> None:
        self._client = client
        self._location = location
        self.run: RunRecord | None = None
        # Completed scopes' entries, one checkpoint object per batch (the sink's batching helper).
        self._batches: GroupCommit[dict[str, Any], None] = GroupCommit(
            self._write_batch, None, interval=CHECKPOINT_INTERVAL, name="bucket-checkpoints"
        )
        self._sequence = 0
        self.failed = False

    def _key(self, relpath: str) -> str:
        return self._location.key(f"{STATE_DIR}/{relpath}")

    async def _put(self, relpath: str, body: bytes) -> None:
        key = self._key(relpath)
        try:
            await self._client.put_object(Bucket=self._location.bucket, Key=key, Body=body)
        except Exception as exc:
            raise store_error(exc, "writing", self._location.bucket, key) from exc

    async def _get(self, key: str) -> bytes | None:
        try:
            answer = await self._client.get_object(Bucket=self._location.bucket, Key=key)
            async with answer["Body"] as body:
                data: bytes = await body.read()
                return data
        except Exception as exc:
            if getattr(exc, "response", {}).get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                return None
            raise store_error(exc, "reading", self._location.bucket, key) from exc

    async def _list(self, prefix: str) -> dict[str, int]:
        """Keys under ``prefix`` (full keys) -> sizes."""
        found: dict[str, int] = {}
        paginator = self._client.get_paginator("list_objects_v2")
        try:
            async for page in paginator.paginate(Bucket=self._location.bucket, Prefix=prefix):
                for item in page.get("Contents", []):
                    found[item["Key"]] = int(item["Size"])
        except Exception as exc:
            raise store_error(exc, "listing", self._location.bucket, prefix) from exc
        return found

    async def load(self) -> RunRecord | None:
        data = await self._get(self._key("run.json"))
        if data is None:
            return None
        try:
            self.run = RunRecord(**orjson.loads(data))
        except (orjson.JSONDecodeError, TypeError) as exc:
            log.warning("%s is not a run record (%s): starting a new run", self._key("run.json"), exc)
            self.run = None
        return self.run

    async def _save_run(self) -> None:
        assert self.run is not None
        await self._put("run.json", orjson.dumps(dataclasses.asdict(self.run)))

    async def begin(self, run_id: str, config_digest: str, started_at: str) -> None:
        """A new run: its record, and no checkpoint of an earlier run left to mislead a resume."""
        stale = await self._list(self._key("checkpoints/"))
        for key in stale:
            with contextlib.suppress(Exception):
                await self._client.delete_object(Bucket=self._location.bucket, Key=key)
        self.run = RunRecord(run_id, config_digest, started_at, 1)
        await self._save_run()

    async def resume(self) -> RunRecord:
        assert self.run is not None
        self.run = dataclasses.replace(self.run, attempts=self.run.attempts + 1)
        await self._save_run()
        return self.run

    async def completed_scopes(self) -> dict[str, ScopeResult]:
        """Recorded scopes whose objects are all still there with their recorded size."""
        assert self.run is not None
        objects = await self._list(self._location.key(""))
        kept: dict[str, ScopeResult] = {}
        for key in sorted(await self._list(self._key(f"checkpoints/{self.run.run_id}/"))):
            data = await self._get(key)
            for line in (data or b"").splitlines():
                entry = orjson.loads(line)
                files = entry.get("files") or []
                missing = [
                    f["path"] for f in files if objects.get(self._location.key(f["path"])) != f["size"]
                ]
                if files and not missing:
                    kept[entry["key"]] = result_from_dict(entry)
                else:
                    log.warning(
                        "scope %s was recorded complete but its object is gone: fetching it again",
                        entry["key"],
                    )
        return kept

    async def abort_leftover_uploads(self) -> int:
        """Abort multipart uploads under the prefix (a killed pod's): their parts are billed."""
        bucket, prefix = self._location.bucket, self._location.key("")
        aborted = 0
        paginator = self._client.get_paginator("list_multipart_uploads")
        try:
            async for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
                for upload in page.get("Uploads", []):
                    await self._client.abort_multipart_upload(
                        Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"]
                    )
                    aborted += 1
        except Exception as exc:
            raise store_error(exc, "aborting the unfinished uploads under", bucket, prefix) from exc
        return aborted

    # -- the engine's Checkpoints ---------------------------------------------------------------

    def checkpoint(self, result: ScopeResult) -> asyncio.Future[None]:
        return self._batches.submit(result.entry())

    async def flush(self) -> None:
        await self._batches.flush()

    async def _write_batch(self, batch: list[dict[str, Any]]) -> list[None]:
        assert self.run is not None
        self._sequence += 1
        name = f"checkpoints/{self.run.run_id}/{self.run.attempts:04d}-{self._sequence:06d}.ndjson"
        try:
            await self._put(name, b"".join(orjson.dumps(e, option=orjson.OPT_APPEND_NEWLINE) for e in batch))
        except StoreError as exc:
            # The objects are written; only a resume would fetch these scopes again.
            if not self.failed:
                log.warning("could not checkpoint %d scope(s): %s", len(batch), exc)
            self.failed = True
            raise
        return [None] * len(batch)

    async def finish(self, status: str) -> None:
        from crawler.support.clock import utc_now_iso

        assert self.run is not None
        self.run = dataclasses.replace(self.run, finished_at=utc_now_iso(), status=status)
        await self._save_run()

    async def close(self) -> None:
        await self.flush()


async def open_for_object_run(
    state: ObjectRunState, config_digest: str, mode: ResumeMode, run_id: str, run_id_given: bool, started: str
) -> tuple[str, dict[str, ScopeResult]]:
    """Resume the bucket's unfinished run of this config, or begin one (the rules of state.decide)."""
    aborted = await state.abort_leftover_uploads()
    if aborted:
        log.info("aborted %d unfinished upload(s) left by an interrupted run", aborted)
    await state.load()
    return await resume_or_begin(state, config_digest, mode, run_id, run_id_given, started)
