"""The naive baseline: one S3 object per key, plain PutObject / GetObject, no transactions.

What every team starts with. A write is one PUT (no atomicity across keys, no isolation),
a read is one GET, a scan is a LIST plus a GET per key.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

from common import VALUE, closed_loop, s3_client, timed_sequence


async def naive(
    endpoint_url: str,
    bucket: str,
    latency: float,
    writers: tuple[int, ...],
    duration: float,
    seq_count: int,
    read_keys: int,
    warmup: float = 0.5,
) -> dict[str, Any]:
    run = uuid.uuid4().hex[:12]

    async def pause() -> None:
        if latency > 0:
            await asyncio.sleep(latency)

    out: dict[str, Any] = {}
    async with s3_client(endpoint_url, max_pool_connections=max(64, max(writers))) as s3:

        async def put(key: str) -> None:
            await pause()
            await s3.put_object(Bucket=bucket, Key=key, Body=VALUE)

        async def get(key: str) -> bytes:
            await pause()
            resp = await s3.get_object(Bucket=bucket, Key=key)
            async with resp["Body"] as body:
                return await body.read()

        await put(f"naive/{run}/warm")
        seq = await timed_sequence(lambda i: put(f"naive/{run}/seq/{i:08d}"), seq_count, duration)
        out["sequential_put"] = seq.summary()
        out["writers"] = {}
        for w in writers:
            r = await closed_loop(
                lambda wk, i, w=w: put(f"naive/{run}/w{w}/{wk:03d}/{i:08d}"), w, duration, warmup=warmup
            )
            out["writers"][str(w)] = r
        # point reads: one GET each, sequential and 64 in flight
        keys = [f"naive/{run}/seq/{i:08d}" for i in range(min(read_keys, seq.summary()["n"]))]
        rs = await closed_loop(lambda wk, i: get(keys[i % len(keys)]), 1, duration / 2, warmup=warmup)
        rc = await closed_loop(lambda wk, i: get(keys[(wk * 7919 + i) % len(keys)]), 64, duration / 2, warmup=warmup)
        out["gets"] = {"sequential": rs, "concurrent64": rc}
        # a "scan": LIST the prefix, then GET every key (64 in flight)
        t0 = time.perf_counter()
        names: list[str] = []
        paginator = s3.get_paginator("list_objects_v2")
        async for page in paginator.paginate(Bucket=bucket, Prefix=f"naive/{run}/seq/"):
            await pause()
            names.extend(o["Key"] for o in page.get("Contents", ()))
        sem = asyncio.Semaphore(64)

        async def fetch(name: str) -> None:
            async with sem:
                await get(name)

        await asyncio.gather(*(fetch(n) for n in names))
        elapsed = time.perf_counter() - t0
        out["scan"] = {"entries": len(names), "seconds": elapsed, "entries_per_s": len(names) / elapsed}
    return out
