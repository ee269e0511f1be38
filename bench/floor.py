"""The physical floor: raw round trips on the same endpoint, with no kvstore in between.

S3 (aiobotocore, configured like kvstore's client):

* ``put``         plain PutObject of a small body;
* ``put_create``  PutObject with ``If-None-Match: *`` (what a segment write is);
* ``put_cas``     PutObject with ``If-Match: <etag>`` on one object (what a manifest CAS is);
* ``get``         GetObject of a small object;
* ``get_304``     GetObject with ``If-None-Match: <etag>`` answered 304 (a manifest refresh
                  when nothing changed);
* ``put_bandwidth`` large PUTs, one stream and several in parallel (MB/s).

Local filesystem: the same operations through ``kvstore._objectstore.LocalObjectStore``
(safe create = link, CAS = flock + rename, both fsync'd).

With ``latency`` > 0 every request first sleeps that long, exactly as kvstore's
``FaultInjectingStore`` does, so the floor and kvstore pay the same injected latency.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from pathlib import Path
from typing import Any

from common import s3_client, timed_sequence

SMALL_BODY = os.urandom(256)  # about a one-entry segment
CAS_BODY = os.urandom(2048)  # about a small manifest


async def s3_floor(endpoint_url: str, bucket: str, latency: float, count: int, max_seconds: float) -> dict[str, Any]:
    run = uuid.uuid4().hex[:12]

    async def pause() -> None:
        if latency > 0:
            await asyncio.sleep(latency)

    results: dict[str, Any] = {}
    async with s3_client(endpoint_url) as s3:
        # warm the connection pool
        await s3.put_object(Bucket=bucket, Key=f"floor/{run}/warm", Body=SMALL_BODY)

        async def put(i: int) -> None:
            await pause()
            await s3.put_object(Bucket=bucket, Key=f"floor/{run}/put/{i}", Body=SMALL_BODY)

        async def put_create(i: int) -> None:
            await pause()
            await s3.put_object(Bucket=bucket, Key=f"floor/{run}/create/{i}", Body=SMALL_BODY, IfNoneMatch="*")

        cas_key = f"floor/{run}/cas"
        etag = (await s3.put_object(Bucket=bucket, Key=cas_key, Body=CAS_BODY))["ETag"]

        async def put_cas(i: int) -> None:
            nonlocal etag
            await pause()
            body = CAS_BODY[:-8] + i.to_bytes(8, "little")
            etag = (await s3.put_object(Bucket=bucket, Key=cas_key, Body=body, IfMatch=etag))["ETag"]

        async def get(i: int) -> None:
            await pause()
            resp = await s3.get_object(Bucket=bucket, Key=f"floor/{run}/put/{i % max(1, n_put)}")
            async with resp["Body"] as body:
                await body.read()

        async def get_304(i: int) -> None:
            await pause()
            try:
                await s3.get_object(Bucket=bucket, Key=cas_key, IfNoneMatch=etag)
            except Exception as exc:  # botocore raises ClientError for 304
                if "304" not in str(exc):
                    raise
            else:
                raise AssertionError("expected 304")

        for name, op in (("put", put), ("put_create", put_create), ("put_cas", put_cas)):
            results[name] = (await timed_sequence(op, count, max_seconds)).summary()
        n_put = results["put"]["n"]
        results["get"] = (await timed_sequence(get, count, max_seconds)).summary()
        results["get_304"] = (await timed_sequence(get_304, count, max_seconds)).summary()
    # A small commit is one CAS PUT (its segment inline in the manifest); a commit with
    # a segment object adds the safe create before it.
    results["commit_floor_ms"] = results["put_cas"]["mean_ms"]
    results["commit_floor_objects_ms"] = results["put_create"]["mean_ms"] + results["put_cas"]["mean_ms"]
    return results


async def s3_put_bandwidth(
    endpoint_url: str, bucket: str, object_bytes: int, duration: float, parallel: tuple[int, ...] = (1, 4)
) -> dict[str, Any]:
    """MB/s of large PUTs (If-None-Match: *, like a segment write) at each parallelism."""
    run = uuid.uuid4().hex[:12]
    body = os.urandom(object_bytes)
    out: dict[str, Any] = {"object_bytes": object_bytes}
    async with s3_client(endpoint_url) as s3:
        await s3.put_object(Bucket=bucket, Key=f"bw/{run}/warm", Body=body[:1024])
        for p in parallel:
            done = 0
            start = time.perf_counter()
            deadline = start + duration

            async def stream(w: int, p: int = p, deadline: float = deadline) -> None:
                nonlocal done
                i = 0
                while time.perf_counter() < deadline:
                    await s3.put_object(Bucket=bucket, Key=f"bw/{run}/{p}/{w}/{i}", Body=body, IfNoneMatch="*")
                    done += 1
                    i += 1

            await asyncio.gather(*(stream(w) for w in range(p)))
            elapsed = time.perf_counter() - start
            out[f"x{p}"] = {"puts": done, "seconds": elapsed, "mb_per_s": done * object_bytes / elapsed / 1e6}
        # remove the large objects: LocalStack keeps them on disk
        paginator = s3.get_paginator("list_objects_v2")
        async for page in paginator.paginate(Bucket=bucket, Prefix=f"bw/{run}/"):
            keys = [{"Key": o["Key"]} for o in page.get("Contents", ())]
            if keys:
                await s3.delete_objects(Bucket=bucket, Delete={"Objects": keys})
    out["best_mb_per_s"] = max(v["mb_per_s"] for k, v in out.items() if k.startswith("x"))
    return out


async def fs_floor(root: Path, count: int, max_seconds: float) -> dict[str, Any]:
    from kvstore._objectstore import LocalObjectStore

    store = LocalObjectStore(root / f"floor-{uuid.uuid4().hex[:8]}")
    results: dict[str, Any] = {}

    async def put_create(i: int) -> None:
        await store.put_if_absent(f"create/{i}", SMALL_BODY)

    etag = await store.put_if_absent("cas", CAS_BODY)

    async def put_cas(i: int) -> None:
        nonlocal etag
        etag = await store.put_if_match("cas", CAS_BODY[:-8] + i.to_bytes(8, "little"), etag)

    async def get(i: int) -> None:
        await store.get(f"create/{i % max(1, n_created)}")

    async def get_304(i: int) -> None:
        assert await store.get("cas", if_none_match=etag) is None

    results["put_create"] = (await timed_sequence(put_create, count, max_seconds)).summary()
    n_created = results["put_create"]["n"]
    results["put_cas"] = (await timed_sequence(put_cas, count, max_seconds)).summary()
    results["get"] = (await timed_sequence(get, count, max_seconds)).summary()
    results["get_304"] = (await timed_sequence(get_304, count, max_seconds)).summary()
    results["commit_floor_ms"] = results["put_cas"]["mean_ms"]
    results["commit_floor_objects_ms"] = results["put_create"]["mean_ms"] + results["put_cas"]["mean_ms"]
    return results
