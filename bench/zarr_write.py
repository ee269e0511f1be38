"""Zarr writes through a kvstore session (issue 22): an array of ``--gb`` GB in ``--chunk-mib``
MiB chunks written through `kvstore.zarr.open_session` and committed, against writing the
same chunk bytes as plain objects (one PUT each) with aiobotocore, in the same run.

    .venv/bin/python bench/zarr_write.py [--gb 1] [--chunk-mib 4] [--concurrency 16] \
        [--rounds 2] [--out bench/results]

Both on one LocalStack (started here, S3 on 127.0.0.1, no injected latency), at the same
concurrency (chunk writes in flight). The array is float32, uncompressed (``compressors=None``),
so every chunk is exactly ``--chunk-mib`` MiB on both sides; one random chunk is reused for
every position (no time goes to making data). The session's time includes creating the
array, every chunk write (each a staged segment: one PUT) and the commit (one manifest
CAS); the baseline's time is the PUTs. Rounds alternate (plain, session, plain, ...) and the
best of each is kept. Target (issue 22): session throughput >= 0.5x plain.

Prints a table and writes ``zarr_write.json`` to ``--out``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import zarr.api.asynchronous as za
from common import CREDENTIALS, REGION, ensure_bucket, log, s3_client
from run import loadavg, machine

import kvstore
from kvstore.zarr import open_session

COLUMNS = 1024  # float32 columns: a chunk of `rows` rows is rows * 4 KiB


async def _bounded(n: int, concurrency: int, one: Any) -> None:
    """Run one(i) for i in range(n), at most `concurrency` at a time."""
    pending = iter(range(n))

    async def worker() -> None:
        for i in pending:
            await one(i)

    await asyncio.gather(*(worker() for _ in range(concurrency)))


async def _plain(endpoint: str, bucket: str, chunk: bytes, chunks: int, concurrency: int, run: int) -> float:
    async with s3_client(endpoint) as client:
        start = time.perf_counter()

        async def put(i: int) -> None:
            await client.put_object(Bucket=bucket, Key=f"plain-{run}/x/c/{i}/0", Body=chunk)

        await _bounded(chunks, concurrency, put)
        return time.perf_counter() - start


async def _session(
    url: str, kw: dict[str, Any], block: np.ndarray[Any, Any], chunks: int, concurrency: int
) -> dict[str, float]:
    rows = block.shape[0]
    async with kvstore.open(url, **kw) as db:
        start = time.perf_counter()
        session = await open_session(db, prefix="arrays/")
        arr = await za.create_array(
            session.store,
            name="x",
            shape=(rows * chunks, COLUMNS),
            chunks=(rows, COLUMNS),
            dtype="float32",
            compressors=None,
            fill_value=0,
        )

        async def write(i: int) -> None:
            await arr.setitem(slice(i * rows, (i + 1) * rows), block)

        await _bounded(chunks, concurrency, write)
        written = time.perf_counter()
        version = await session.commit()
        done = time.perf_counter()
        assert version == session.base_version + 1
    return {"total_s": done - start, "write_s": written - start, "commit_s": done - written}


async def main(args: argparse.Namespace) -> dict[str, Any]:
    from servers import start_localstack

    chunk_bytes = int(args.chunk_mib * 2**20)
    rows = chunk_bytes // (4 * COLUMNS)
    chunks = max(1, round(args.gb * 2**30 / chunk_bytes))
    total = chunks * rows * COLUMNS * 4
    block = np.random.default_rng(0).random((rows, COLUMNS), dtype="float32")
    results: dict[str, Any] = {
        "meta": {
            "gb": args.gb,
            "bytes": total,
            "chunks": chunks,
            "chunk_bytes": rows * COLUMNS * 4,
            "concurrency": args.concurrency,
            "rounds": args.rounds,
            "machine": machine(),
            "loadavg_start": loadavg(),
        },
        "plain_s": [],
        "session": [],
    }
    workdir = Path(tempfile.mkdtemp(prefix="kvbench-zarr-"))
    log("starting LocalStack")
    server = start_localstack(workdir / "localstack")
    try:
        bucket = "kvbench"
        await ensure_bucket(server.endpoint_url, bucket)
        kw = {"endpoint_url": server.endpoint_url, "region_name": REGION, **CREDENTIALS}
        for run in range(args.rounds):
            log(f"round {run + 1}: plain PUTs of {chunks} chunks")
            results["plain_s"].append(
                await _plain(server.endpoint_url, bucket, block.tobytes(), chunks, args.concurrency, run)
            )
            log(f"round {run + 1}: a kvstore session, then its commit")
            results["session"].append(await _session(f"s3://{bucket}/zarr-{run}", kw, block, chunks, args.concurrency))
    finally:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    plain = min(results["plain_s"])
    best = min(results["session"], key=lambda r: r["total_s"])
    results["summary"] = {
        "plain_MBps": total / plain / 1e6,
        "session_MBps": total / best["total_s"] / 1e6,
        "ratio": plain / best["total_s"],
        "commit_s": best["commit_s"],
    }
    results["meta"]["loadavg_end"] = loadavg()
    return results


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gb", type=float, default=1.0)
    parser.add_argument("--chunk-mib", type=float, default=4.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", default="bench/results")
    args = parser.parse_args()
    results = asyncio.run(main(args))
    meta, s = results["meta"], results["summary"]
    lines = [
        f"Zarr array of {meta['bytes'] / 2**30:.2f} GiB, {meta['chunks']} chunks of "
        f"{meta['chunk_bytes'] / 2**20:g} MiB, {meta['concurrency']} in flight, LocalStack "
        f"(best of {meta['rounds']}; load {meta['loadavg_start']} -> {meta['loadavg_end']})",
        "",
        "| way | time | throughput | vs plain PUTs |",
        "|---|---|---|---|",
        f"| plain objects (aiobotocore PUT per chunk) | {min(results['plain_s']):.2f} s | "
        f"{s['plain_MBps']:.0f} MB/s | 1.00x |",
        f"| kvstore session: create, write, commit | {meta['bytes'] / s['session_MBps'] / 1e6:.2f} s | "
        f"{s['session_MBps']:.0f} MB/s | {s['ratio']:.2f}x |",
        f"| of which the commit (one manifest CAS) | {s['commit_s'] * 1e3:.0f} ms | | |",
    ]
    print("\n".join(lines))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "zarr_write.json").write_text(json.dumps(results, indent=2))
    log(f"wrote {out / 'zarr_write.json'}")


if __name__ == "__main__":
    cli()
