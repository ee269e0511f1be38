"""Read-ahead of scans and compactions (issue 21, item 3): how large a ranged GET a full
scan and a full compaction should make on S3, measured against the one-GET-per-block
reads they made before.

    .venv/bin/python bench/readahead.py [--entries 1000000] [--latency-ms 20] \
        [--windows 65536,262144,1048576,4194304,8388608] [--in-flight 2,3,4] [--out bench/results]

One store of ``--entries`` 16-byte keys and random 100-byte values is bulk-loaded and
compacted into one sorted run (segments of the default 64 MiB), on the local filesystem
and on LocalStack. Each scan opens the store afresh (nothing cached) and reads every
entry; the read-ahead window (`SCAN_READAHEAD_BYTES`, a module constant read at each
scan) takes each value of ``--windows`` in turn, 65536 being one block, i.e. the old
reads; then, at the default window, the number of windows in flight
(`READAHEAD_WINDOWS`) takes each value of ``--in-flight``. On LocalStack the scan runs direct and through ``bench/proxy.py`` adding
``--latency-ms`` to every request, as S3 over a network would.

Baselines in the same run: the same scan on the local filesystem (the issue's target:
LocalStack at least 0.5x of it), and raw aiobotocore GETs of the run's segment objects
whole, one after another (the endpoint's sequential bandwidth). A full compaction
(`compact(full=True)` after 20 small commits) is timed on LocalStack at one block and
at the default window, against the bulk load's time.

Prints a table and writes ``readahead.json`` to ``--out``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from common import VALUE_BYTES, log, s3_client
from local_s3 import finish_meta, local_s3, run_meta

import kvstore
import kvstore._compact as compact_module
import kvstore._segment_store as segment_store

BLOCK = 64 * 1024
DEFAULT_WINDOW = segment_store.SCAN_READAHEAD_BYTES
DEFAULT_IN_FLIGHT = segment_store.READAHEAD_WINDOWS


def _key(i: int) -> bytes:
    return b"key%013d" % i


def _set_window(window: int) -> None:
    segment_store.SCAN_READAHEAD_BYTES = window
    compact_module.SCAN_READAHEAD_BYTES = window


async def _load(url: str, entries: int, kw: dict[str, Any]) -> float:
    rng = random.Random(entries)  # incompressible values: segments as large as their data
    t0 = time.perf_counter()
    async with kvstore.open(url, create=True, values="bytes", **kw) as db:
        await db.bulk_load((_key(i), rng.randbytes(VALUE_BYTES)) for i in range(entries))
        seconds = time.perf_counter() - t0
        await db.compact(full=True)
    return seconds


async def _scan(url: str, kw: dict[str, Any]) -> dict[str, float]:
    async with kvstore.open(url, **kw) as db:
        gets = db.statistics()["requests"].get("GET", 0)
        t0 = time.perf_counter()
        count = 0
        async for _ in db.scan():
            count += 1
        seconds = time.perf_counter() - t0
        gets = db.statistics()["requests"].get("GET", 0) - gets
    return {"entries": count, "seconds": seconds, "entries_per_s": count / seconds, "gets": gets}


async def _compaction(url: str, entries: int, kw: dict[str, Any], window: int) -> dict[str, float]:
    """A full compaction of a fresh copy of the data after 20 small commits."""
    load_seconds = await _load(url, entries, kw)
    async with kvstore.open(url, values="bytes", **kw) as db:
        for i in range(20):
            await db.put(_key(i * (entries // 20)), b"x" * VALUE_BYTES)
        _set_window(window)
        gets = db.statistics()["requests"].get("GET", 0)
        t0 = time.perf_counter()
        await db.compact(full=True)
        seconds = time.perf_counter() - t0
        gets = db.statistics()["requests"].get("GET", 0) - gets
    _set_window(DEFAULT_WINDOW)
    return {"seconds": seconds, "gets": gets, "load_seconds": load_seconds, "vs_load": seconds / load_seconds}


async def _raw_sequential(endpoint: str, bucket: str, prefix: str) -> dict[str, float]:
    """Whole-object GETs of the store's segments, one after another: bytes per second."""
    async with s3_client(endpoint) as client:
        listing = await client.list_objects_v2(Bucket=bucket, Prefix=prefix + "/segments/")
        objects = [o for o in listing["Contents"] if o["Key"].endswith(".seg")]
        total = 0
        t0 = time.perf_counter()
        for obj in objects:
            answer = await client.get_object(Bucket=bucket, Key=obj["Key"])
            total += len(await answer["Body"].read())
        seconds = time.perf_counter() - t0
    return {"bytes": total, "seconds": seconds, "mb_per_s": total / seconds / 1e6}


async def _scans(url: str, kw: dict[str, Any], windows: list[int], in_flight: list[int]) -> dict[str, Any]:
    """Scan figures by window (the default number in flight), then at the default window
    by number of windows in flight ("<window>x<in flight>")."""
    out: dict[str, Any] = {}
    for window in windows:
        _set_window(window)
        out[str(window)] = await _scan(url, kw)
    _set_window(DEFAULT_WINDOW)
    for n in in_flight:
        if n != DEFAULT_IN_FLIGHT:
            segment_store.READAHEAD_WINDOWS = n
            out[f"{DEFAULT_WINDOW}x{n}"] = await _scan(url, kw)
    segment_store.READAHEAD_WINDOWS = DEFAULT_IN_FLIGHT
    return out


async def main(args: argparse.Namespace) -> dict[str, Any]:
    windows = [int(w) for w in args.windows.split(",")]
    in_flight = [int(n) for n in args.in_flight.split(",")]
    results: dict[str, Any] = {
        "meta": run_meta(
            entries=args.entries,
            latency_ms=args.latency_ms,
            windows=windows,
            readahead_windows_in_flight=segment_store.READAHEAD_WINDOWS,
        )
    }
    workdir = Path(tempfile.mkdtemp(prefix="kvbench-readahead-"))
    try:
        log("local filesystem")
        fs_url = str(workdir / "fs-store")
        results["fs_load_seconds"] = await _load(fs_url, args.entries, {})
        results["fs"] = await _scans(fs_url, {}, windows, in_flight)
        log("starting LocalStack")
        async with local_s3(workdir) as s3:
            url = f"s3://{s3.bucket}/readahead"
            results["s3_load_seconds"] = await _load(url, args.entries, s3.direct)
            results["s3_raw_sequential"] = await _raw_sequential(s3.endpoint_url, s3.bucket, "readahead")
            log("LocalStack, direct")
            results["s3"] = await _scans(url, s3.direct, windows, in_flight)
            proxied = s3.proxied(args.latency_ms)
            log(f"LocalStack, +{args.latency_ms:g} ms")
            results["s3_latency"] = await _scans(url, proxied, windows, in_flight)
            results["s3_latency_raw_sequential"] = await _raw_sequential(
                proxied["endpoint_url"], s3.bucket, "readahead"
            )
            log("compactions on LocalStack, direct")
            results["s3_compaction"] = {
                str(window): await _compaction(f"s3://{s3.bucket}/compact-{window}", args.entries, s3.direct, window)
                for window in (BLOCK, DEFAULT_WINDOW)
            }
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return finish_meta(results)


def _table(results: dict[str, Any], latency_ms: float) -> list[str]:
    fs_default = results["fs"][str(DEFAULT_WINDOW)]["entries_per_s"]
    lines = [
        f"full scan of {results['meta']['entries']:,} entries, cold store "
        f"({results['meta']['readahead_windows_in_flight']} windows in flight)",
        f"  {'where':22} {'window':>9} {'entries/s':>11} {'GETs':>6} {'vs 1 block':>11} {'vs fs':>7}",
    ]
    for where, label in (
        ("fs", "local filesystem"),
        ("s3", "LocalStack"),
        ("s3_latency", f"LocalStack +{latency_ms:g} ms"),
    ):
        base = results[where][str(BLOCK)]["entries_per_s"] if str(BLOCK) in results[where] else None
        for window, f in results[where].items():
            vs_block = f"{f['entries_per_s'] / base:10.2f}x" if base else f"{'-':>11}"
            size, _, n = window.partition("x")
            shown = f"{int(size) // 1024}Ki" + (f"x{n}" if n else "")
            lines.append(
                f"  {label:22} {shown:>9} {f['entries_per_s']:11,.0f} {f['gets']:6d} "
                f"{vs_block} {f['entries_per_s'] / fs_default:6.2f}x"
            )
    for which, label in (("s3_raw_sequential", "direct"), ("s3_latency_raw_sequential", f"+{latency_ms:g} ms")):
        raw = results[which]
        lines.append(f"  raw whole-object GETs of the segments, {label}: {raw['mb_per_s']:.0f} MB/s")
    lines.append("full compaction on LocalStack (direct) after 20 small commits")
    for window, f in results["s3_compaction"].items():
        lines.append(
            f"  window {int(window) // 1024:5d} KiB: {f['seconds']:6.1f} s, {f['gets']:6d} GETs, "
            f"{f['vs_load']:.2f}x its bulk load ({f['load_seconds']:.1f} s)"
        )
    s3 = results["s3"][str(DEFAULT_WINDOW)]["entries_per_s"]
    verdict = "PASS" if s3 >= 0.5 * fs_default else "MISS"
    lines.append(f"target: LocalStack full scan >= 0.5x the local filesystem's: {s3 / fs_default:.2f}x, {verdict}")
    results["target"] = {"s3_vs_fs_scan": s3 / fs_default, "verdict": verdict}
    return lines


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--entries", type=int, default=1_000_000)
    parser.add_argument("--latency-ms", type=float, default=20.0)
    parser.add_argument("--windows", default=f"{BLOCK},{256 * 1024},{1024 * 1024},{DEFAULT_WINDOW},{8 * 1024 * 1024}")
    parser.add_argument("--in-flight", default="2,3,4", help="windows in flight to try at the default window")
    parser.add_argument("--out", default="bench/results")
    args = parser.parse_args()
    results = asyncio.run(main(args))
    print("\n".join(_table(results, args.latency_ms)))
    Path(args.out).mkdir(parents=True, exist_ok=True)
    Path(args.out, "readahead.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    cli()
