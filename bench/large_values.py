"""Large values out of line (issue 22, item 1), against the endpoint's own floor, in one run.

    .venv/bin/python bench/large_values.py [--value-mib 64] [--repeats 3] [--targets fs,s3]
                                           [--out bench/results/large-values.json]

For each endpoint (the local filesystem, LocalStack started here):

* **64 MiB value**: `Store.put` and `Store.get` of one `--value-mib` MiB random value
  (stored out of line: one PUT of the value object, then the commit) against the
  raw PUT and GET of the same bytes as one object on the same endpoint (S3: one
  aiobotocore put_object / get_object; file: write + fsync + rename, and a read).
  Raw and kvstore rounds alternate; medians of `--repeats`; the ratio is kvstore's
  bandwidth over the raw one (target >= 0.7).
* **Compaction of large values**: a store where ~90% of the bytes are large values
  (48 values of 1 MiB among 45,000 small pairs of 100 bytes, written in 8 commits),
  compacted in full; bytes written over the store's bytes (target <= 15%). The same
  store with `large_value_bytes` above every value (all inline, the code before) is the
  baseline.
* **Threshold**: the round trip of a small GET and compaction's rewrite bandwidth (of
  the baseline): a value stored out of line costs one more GET per read, one kept in
  line is rewritten by each compaction that reaches it (about 3 over its life at
  fanout 8). Break-even size = GET seconds x rewrite bytes/s / 3.

Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from common import CREDENTIALS, REGION, ensure_bucket, log, s3_client  # noqa: E402

import kvstore  # noqa: E402

MiB = 1024 * 1024
REWRITES = 3  # compactions that rewrite an in-line value over its life (fanout 8, ~3 levels)


def _median(xs: list[float]) -> float:
    return statistics.median(xs)


async def raw_s3(endpoint: str, bucket: str, data: bytes, repeats: int) -> dict[str, float]:
    puts, gets = [], []
    async with s3_client(endpoint) as client:
        for i in range(repeats):
            key = f"raw/{i}-{os.urandom(4).hex()}"
            t0 = time.perf_counter()
            await client.put_object(Bucket=bucket, Key=key, Body=data)
            puts.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            resp = await client.get_object(Bucket=bucket, Key=key)
            async with resp["Body"] as body:
                got = await body.read()
            gets.append(time.perf_counter() - t0)
            assert len(got) == len(data)
            await client.delete_object(Bucket=bucket, Key=key)
    return {"put_s": _median(puts), "get_s": _median(gets)}


async def small_get_rtt(endpoint: str, bucket: str, count: int = 30) -> float:
    async with s3_client(endpoint) as client:
        await client.put_object(Bucket=bucket, Key="raw/small", Body=b"x" * 1024)
        times = []
        for _ in range(count):
            t0 = time.perf_counter()
            resp = await client.get_object(Bucket=bucket, Key="raw/small")
            async with resp["Body"] as body:
                await body.read()
            times.append(time.perf_counter() - t0)
    return _median(times)


def _raw_fs_put(root: Path, data: bytes, i: int) -> tuple[Path, float]:
    tmp, final = root / f"raw-{i}.tmp", root / f"raw-{i}"
    t0 = time.perf_counter()
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.rename(tmp, final)
    return final, time.perf_counter() - t0


async def raw_fs(root: Path, data: bytes, repeats: int) -> dict[str, float]:
    root.mkdir(parents=True, exist_ok=True)
    puts, gets = [], []
    for i in range(repeats):
        path, seconds = await asyncio.to_thread(_raw_fs_put, root, data, i)
        puts.append(seconds)
        t0 = time.perf_counter()
        got = await asyncio.to_thread(path.read_bytes)
        gets.append(time.perf_counter() - t0)
        assert len(got) == len(data)
        path.unlink()
    return {"put_s": _median(puts), "get_s": _median(gets)}


def small_get_rtt_fs(root: Path, count: int = 30) -> float:
    path = root / "small"
    path.write_bytes(b"x" * 1024)
    times = []
    for _ in range(count):
        t0 = time.perf_counter()
        path.read_bytes()
        times.append(time.perf_counter() - t0)
    return _median(times)


async def interleaved(
    raw: Callable[[], Awaitable[dict[str, float]]], kv: Callable[[], Awaitable[dict[str, float]]], repeats: int
) -> tuple[dict[str, float], dict[str, float]]:
    """Raw and kvstore rounds taken in turn (the machine's load moves: each side sees the
    same), medians of each."""
    raws, kvs = [], []
    for _ in range(repeats):
        raws.append(await raw())
        kvs.append(await kv())
    return (
        {k: _median([r[k] for r in raws]) for k in raws[0]},
        {k: _median([r[k] for r in kvs]) for k in kvs[0]},
    )


async def kv_value(url: str, kwargs: dict[str, Any], data: bytes, repeats: int) -> dict[str, float]:
    puts, gets = [], []
    async with kvstore.open(url, options=kvstore.StoreOptions(auto_compact=False), **kwargs) as db:
        await db.put("warm", b"1")
        for i in range(repeats):
            t0 = time.perf_counter()
            await db.put(f"big{i}", data)  # a key of its own per round: no compaction, no GC
            puts.append(time.perf_counter() - t0)
        for i in range(repeats):
            t0 = time.perf_counter()
            got = await db.get(f"big{i}")
            gets.append(time.perf_counter() - t0)
            assert got == data
    return {"put_s": _median(puts), "get_s": _median(gets)}


async def compaction(url: str, kwargs: dict[str, Any], out_of_line: bool) -> dict[str, Any]:
    options = kvstore.StoreOptions(
        auto_compact=False,
        large_value_bytes=(256 * 1024 if out_of_line else 1024 * MiB),
        max_transaction_bytes=256 * MiB,
    )
    large = [os.urandom(MiB) for _ in range(48)]
    async with kvstore.open(url, options=options, **kwargs) as db:
        for c in range(8):
            async with db.transaction() as tx:
                for i in range(6):
                    tx.put(b"large-%02d-%d" % (i, c), large[c * 6 + i])
                for i in range(5625):
                    tx.put(b"small-%d-%06d" % (c, i), os.urandom(100))
        before = await db.describe()
        value_bytes = sum(map(len, large))
        segment_bytes = before.segment_bytes
        store_bytes = segment_bytes + (value_bytes if out_of_line else 0)
        t0 = time.perf_counter()
        (result,) = await db.compact(full=True)
        seconds = time.perf_counter() - t0
        assert await db.get(b"large-03-5") == large[5 * 6 + 3]
    return {
        "out_of_line": out_of_line,
        "store_bytes": store_bytes,
        "large_value_share": value_bytes / store_bytes if out_of_line else value_bytes / segment_bytes,
        "bytes_written": result.bytes_written,
        "written_share": result.bytes_written / store_bytes,
        "compact_seconds": seconds,
        "rewrite_bytes_per_s": result.bytes_written / seconds,
    }


async def endpoint(kind: str, workdir: Path, args: argparse.Namespace) -> dict[str, Any]:
    data = os.urandom(args.value_mib * MiB)
    if kind == "s3":
        from servers import start_localstack

        server = start_localstack(workdir / "localstack")
        try:
            bucket = "kvbench"
            await ensure_bucket(server.endpoint_url, bucket)
            kwargs = {"endpoint_url": server.endpoint_url, "region_name": REGION, **CREDENTIALS}
            raw, kv = await interleaved(
                lambda: raw_s3(server.endpoint_url, bucket, data, 1),
                lambda: kv_value(f"s3://{bucket}/value", kwargs, data, 1),
                args.repeats,
            )
            rtt = await small_get_rtt(server.endpoint_url, bucket)
            out = await compaction(f"s3://{bucket}/compact-ool", kwargs, True)
            base = await compaction(f"s3://{bucket}/compact-inline", kwargs, False)
        finally:
            server.stop()
    else:
        raw, kv = await interleaved(
            lambda: raw_fs(workdir / "raw", data, 1),
            lambda: kv_value(str(workdir / "value"), {}, data, 1),
            args.repeats,
        )
        rtt = small_get_rtt_fs(workdir / "raw")
        out = await compaction(str(workdir / "compact-ool"), {}, True)
        base = await compaction(str(workdir / "compact-inline"), {}, False)
    size = len(data)
    return {
        "value_bytes": size,
        "raw": raw,
        "kvstore": kv,
        "put_ratio": raw["put_s"] / kv["put_s"],
        "get_ratio": raw["get_s"] / kv["get_s"],
        "raw_put_mb_s": size / raw["put_s"] / 1e6,
        "raw_get_mb_s": size / raw["get_s"] / 1e6,
        "kv_put_mb_s": size / kv["put_s"] / 1e6,
        "kv_get_mb_s": size / kv["get_s"] / 1e6,
        "compaction_out_of_line": out,
        "compaction_inline": base,
        "small_get_s": rtt,
        "break_even_bytes": rtt * base["rewrite_bytes_per_s"] / REWRITES,
    }


def table(results: dict[str, Any]) -> list[str]:
    lines = [
        f"{'endpoint':8} {'raw PUT':>9} {'kv put':>9} {'ratio':>6} {'raw GET':>9} {'kv get':>9} {'ratio':>6}"
        f" {'compaction writes':>18} {'(inline)':>9} {'GET rtt':>8} {'break-even':>11}",
        f"{'':8} {'MB/s':>9} {'MB/s':>9} {'':>6} {'MB/s':>9} {'MB/s':>9} {'':>6} {'of store bytes':>18} {'':>9}"
        f" {'ms':>8} {'KiB':>11}",
    ]
    for kind, r in results["endpoints"].items():
        lines.append(
            f"{kind:8} {r['raw_put_mb_s']:9.0f} {r['kv_put_mb_s']:9.0f} {r['put_ratio']:6.2f}"
            f" {r['raw_get_mb_s']:9.0f} {r['kv_get_mb_s']:9.0f} {r['get_ratio']:6.2f}"
            f" {r['compaction_out_of_line']['written_share']:17.1%} {r['compaction_inline']['written_share']:9.1%}"
            f" {r['small_get_s'] * 1e3:8.2f} {r['break_even_bytes'] / 1024:11.0f}"
        )
    return lines


async def main(args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {
        "meta": {"value_mib": args.value_mib, "repeats": args.repeats, "loadavg_start": os.getloadavg()},
        "endpoints": {},
    }
    workdir = Path(tempfile.mkdtemp(prefix="kvbench-large-"))
    try:
        for kind in args.targets.split(","):
            log(f"endpoint {kind}")
            results["endpoints"][kind] = await endpoint(kind, workdir / kind, args)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    results["meta"]["loadavg_end"] = os.getloadavg()
    return results


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--value-mib", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--targets", default="fs,s3")
    parser.add_argument("--out", default=str(HERE / "results" / "large-values.json"))
    args = parser.parse_args()
    results = asyncio.run(main(args))
    print("\n".join(table(results)))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2))
    log(f"wrote {args.out}")


if __name__ == "__main__":
    cli()
