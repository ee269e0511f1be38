"""Batched reads (issue 19): `get_many` of 100 cold keys against 100 sequential `get`s and
against `asyncio.gather` of 100 `get`s.

    .venv/bin/python bench/get_many.py [--keys 100] [--entries 100000] [--repeats 5] \
        [--latency-ms 20] [--out bench/results]

Two backends: LocalStack S3 reached through ``bench/proxy.py`` (every request delayed by
``--latency-ms``, as S3 over a network) and the local filesystem. A store of ``--entries``
16-byte keys and random 100-byte values is bulk-loaded once (one 11 MiB segment of
64 KiB blocks, read by ranges; 100 random keys fall in about 75 distinct blocks). Each
measurement opens the store afresh, so nothing is cached ("cold store": top index,
partitions and blocks all to fetch), times one read of ``--keys`` random keys, and closes
it; a second figure ("cold keys") reads them in a store whose index an earlier batch of
other keys already loaded, as in a service that has been running. The three ways take
turns on the same key sets. The baseline is the round trip of one raw GET through the
same proxy (``floor``), so the target reads as "get_many within 3 round trips".

Prints a table and writes ``get_many.json`` to ``--out``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import shutil
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from common import VALUE_BYTES, log, s3_client
from local_s3 import finish_meta, local_s3, run_meta

import kvstore

Read = Callable[[Any, list[bytes]], Awaitable[list[Any]]]


async def _many(db: Any, keys: list[bytes]) -> list[Any]:
    return list(await db.get_many(keys))


async def _sequential(db: Any, keys: list[bytes]) -> list[Any]:
    return [await db.get(k) for k in keys]


async def _gather(db: Any, keys: list[bytes]) -> list[Any]:
    return list(await asyncio.gather(*(db.get(k) for k in keys)))


WAYS: dict[str, Read] = {"get_many": _many, "sequential get": _sequential, "gather of gets": _gather}


def _key(i: int) -> bytes:
    return b"key%013d" % i


async def _load(url: str, entries: int, open_kwargs: dict[str, Any]) -> None:
    rng = random.Random(entries)  # incompressible values: the segment is as large as its data
    async with kvstore.open(url, create=True, **open_kwargs) as db:
        await db.bulk_load((_key(i), rng.randbytes(VALUE_BYTES)) for i in range(entries))


def _gets(db: Any) -> int:
    return int(db.statistics()["requests"].get("GET", 0))


async def _time_read(
    url: str, keys: list[bytes], read: Read, warm: list[bytes] | None, kw: dict[str, Any]
) -> tuple[float, int]:
    """Seconds and GETs (manifest checks included) of one read of `keys` in a freshly
    opened store (after reading `warm`, if given)."""
    async with kvstore.open(url, **kw) as db:
        if warm is not None:
            await db.get_many(warm)
        gets = _gets(db)
        t0 = time.perf_counter()
        values = await read(db, keys)
        seconds = time.perf_counter() - t0
        gets = _gets(db) - gets
    assert all(v is not None for v in values)
    return seconds, gets


async def _floor_get(endpoint: str, bucket: str, repeats: int) -> float:
    """Median seconds of one raw GET of a small object (a round trip through the proxy)."""
    samples = []
    async with s3_client(endpoint) as client:
        await client.put_object(Bucket=bucket, Key="floor-object", Body=b"x" * 100)
        for _ in range(repeats + 1):
            t0 = time.perf_counter()
            answer = await client.get_object(Bucket=bucket, Key="floor-object")
            await answer["Body"].read()
            samples.append(time.perf_counter() - t0)
    return statistics.median(samples[1:])  # the first one opened the connection


async def _floor_parallel(endpoint: str, bucket: str, url: str, gets: int, repeats: int) -> dict[str, float]:
    """Median ms of `gets` concurrent ranged GETs of 64 KiB of the store's segment, raw
    aiobotocore through the same proxy: on a fresh client (connections to open, as a
    freshly opened store has) and on a warm one. The floor of a batch's block GETs here."""
    prefix = url.split("/", 3)[3] + "/segments/"
    rng = random.Random(gets)
    cold: list[float] = []
    warm: list[float] = []
    for _ in range(repeats):
        async with s3_client(endpoint) as client:
            listing = await client.list_objects_v2(Bucket=bucket, Prefix=prefix)
            obj = max(listing["Contents"], key=lambda o: o["Size"])

            async def one(client: Any = client, obj: dict[str, Any] = obj) -> None:
                start = rng.randrange(0, obj["Size"] - 65536)
                answer = await client.get_object(Bucket=bucket, Key=obj["Key"], Range=f"bytes={start}-{start + 65535}")
                await answer["Body"].read()

            for samples in (cold, warm):
                t0 = time.perf_counter()
                await asyncio.gather(*(one() for _ in range(gets)))
                samples.append(time.perf_counter() - t0)
    return {
        "gets": gets,
        "cold_connections_ms": statistics.median(cold) * 1e3,
        "warm_connections_ms": statistics.median(warm) * 1e3,
    }


def _latency(seconds: float) -> Any:
    """A `wrap_object_store` adding `seconds` before every request (`FaultInjectingStore`):
    round trips with no server behind them to queue at."""
    from kvstore.testing.faults import FaultInjectingStore, FaultPlan, FaultRule

    plan = FaultPlan(default=FaultRule(latency=seconds))
    return lambda inner: FaultInjectingStore(inner, plan)


async def _measure(url: str, args: argparse.Namespace, kw: dict[str, Any]) -> dict[str, Any]:
    rng = random.Random(19)
    figures: dict[str, Any] = {}
    for scenario in ("cold store", "cold keys"):
        samples: dict[str, list[float]] = {name: [] for name in WAYS}
        gets: dict[str, list[int]] = {name: [] for name in WAYS}
        for _ in range(args.repeats):
            keys = [_key(i) for i in rng.sample(range(args.entries), args.keys)]
            warm = None
            if scenario == "cold keys":
                warm = [_key(i) for i in rng.sample(range(args.entries), args.keys)]
            for name, read in WAYS.items():
                seconds, count = await _time_read(url, keys, read, warm, kw)
                samples[name].append(seconds)
                gets[name].append(count)
        figures[scenario] = {
            name: {
                "median_ms": statistics.median(s) * 1e3,
                "samples_ms": [x * 1e3 for x in s],
                "gets": statistics.median(gets[name]),
            }
            for name, s in samples.items()
        }
    return figures


def _table(title: str, figures: dict[str, Any], rtt_ms: float | None, fs: dict[str, Any] | None) -> list[str]:
    """Median time, speed-up over sequential gets, GETs made; on S3 also the time in
    round trips, and the time beyond the same read on the local filesystem (the CPU and
    disk part, decoding the blocks included) in round trips."""
    head = f"  {'scenario':11} {'way':15} {'median ms':>10} {'vs sequential':>14} {'GETs':>6}"
    if rtt_ms:
        head += f" {'round trips':>12} {'beyond fs':>10}"
    lines = [title, head]
    for scenario, ways in figures.items():
        base = ways["sequential get"]["median_ms"]
        for name, f in ways.items():
            line = f"  {scenario:11} {name:15} {f['median_ms']:10.1f} {base / f['median_ms']:13.1f}x {f['gets']:6.0f}"
            if rtt_ms and fs:
                beyond = f["median_ms"] - fs[scenario][name]["median_ms"]
                line += f" {f['median_ms'] / rtt_ms:12.1f} {beyond / rtt_ms:10.1f}"
            lines.append(line)
    return lines


async def main(args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {
        "meta": run_meta(keys=args.keys, entries=args.entries, repeats=args.repeats, latency_ms=args.latency_ms),
    }
    workdir = Path(tempfile.mkdtemp(prefix="kvbench-getmany-"))
    try:
        log("local filesystem")
        fs_url = str(workdir / "fs-store")
        await _load(fs_url, args.entries, {})
        results["fs"] = await _measure(fs_url, args, {})
        log(f"local filesystem, +{args.latency_ms} ms injected before every request")
        results["fs_latency"] = await _measure(fs_url, args, {"wrap_object_store": _latency(args.latency_ms / 1e3)})

        log("starting LocalStack")
        async with local_s3(workdir) as s3:
            url = f"s3://{s3.bucket}/get-many"
            await _load(url, args.entries, s3.direct)  # loaded directly: only the reads pay the latency
            proxied = s3.proxied(args.latency_ms)
            rtt = await _floor_get(proxied["endpoint_url"], s3.bucket, 20)
            log(f"S3 at +{args.latency_ms} ms (one GET round trip: {rtt * 1e3:.1f} ms)")
            results["s3"] = await _measure(url, args, proxied)
            blocks = int(results["s3"]["cold store"]["get_many"]["gets"]) - 2  # less the manifest and tail
            results["s3_parallel_floor"] = await _floor_parallel(
                proxied["endpoint_url"], s3.bucket, url, blocks, args.repeats
            )
            results["s3_parallel_floor_direct"] = await _floor_parallel(
                s3.endpoint_url, s3.bucket, url, blocks, args.repeats
            )
            results["s3_round_trip_ms"] = rtt * 1e3
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return finish_meta(results)


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keys", type=int, default=100)
    parser.add_argument("--entries", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--latency-ms", type=float, default=20.0)
    parser.add_argument("--out", default="bench/results")
    args = parser.parse_args()
    results = asyncio.run(main(args))
    rtt = results["s3_round_trip_ms"]
    lines = _table(
        f"S3 (LocalStack) at +{args.latency_ms:g} ms, one GET = {rtt:.1f} ms", results["s3"], rtt, results["fs"]
    )
    lines += _table("local filesystem", results["fs"], None, None)
    injected = args.latency_ms
    lines += _table(
        f"local filesystem, +{injected:g} ms injected before each request",
        results["fs_latency"],
        injected,
        results["fs"],
    )
    for which, where in (("s3_parallel_floor", "through the proxy"), ("s3_parallel_floor_direct", "direct")):
        floor = results[which]
        lines.append(
            f"floor: {floor['gets']} concurrent 64 KiB ranged GETs, raw aiobotocore, {where}: "
            f"{floor['cold_connections_ms']:.0f} ms on new connections, "
            f"{floor['warm_connections_ms']:.0f} ms on open ones"
        )
    injected_many = results["fs_latency"]["cold store"]["get_many"]["median_ms"]
    lines.append(
        f"get_many of {args.keys} cold keys with +{injected:g} ms injected (no server queue): "
        f"{injected_many:.0f} ms = {injected_many / injected:.1f} round trips"
    )
    many = results["s3"]["cold store"]["get_many"]["median_ms"]
    beyond = many - results["fs"]["cold store"]["get_many"]["median_ms"]
    verdict = "PASS" if many <= 3 * rtt else "MISS"
    lines.append(
        f"target: get_many of {args.keys} cold keys at +{args.latency_ms:g} ms within 3 round trips "
        f"({3 * rtt:.0f} ms): {many:.0f} ms = {many / rtt:.1f} round trips, {verdict}; "
        f"{beyond / rtt:.1f} round trips beyond the same read on the local filesystem"
    )
    results["target"] = {
        "injected_latency_round_trips": injected_many / injected,
        "get_many_ms": many,
        "round_trips": many / rtt,
        "beyond_fs_round_trips": beyond / rtt,
        "verdict": verdict,
    }
    print("\n".join(lines))
    Path(args.out).mkdir(parents=True, exist_ok=True)
    Path(args.out, "get_many.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    cli()
