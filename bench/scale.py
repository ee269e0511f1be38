"""Large stores on one small machine (issue 12): bulk load, full compaction, reads and
commits at a given store size, each figure next to a baseline measured in the same run.

    .venv/bin/python bench/scale.py --sizes 0.25,1 [--backend file|s3] [--out bench/results/scale-<date>.json]

For each size (GB of logical data: 16-byte keys + 100-byte values, random, from --seed),
in a fresh temporary directory (or, with --backend s3, a LocalStack started for the run):

* raw:      the same bytes written as 8 MiB objects through kvstore's object-store layer
            (put_if_absent; 1 stream and 4 streams): the bandwidth the bulk load is held to
* baseline: commit latency on an empty store; cold and warm get latency on a small store
            (10,000 pairs, one segment)
* load:     `Store.bulk_load` of every pair (input in random key order)
* gets:     cold and warm gets on the loaded store (level-0 segments, before compaction)
* compact:  `compact(full=True)`: time, MB/s, write and space amplification
* reads:    on the compacted store: cold gets (a fresh `kvstore.open` per key, so nothing is
            cached), warm gets, commit latency of small puts, manifest bytes per commit,
            a full scan
* slatedb:  (smallest size only) SlateDB 0.17 (bench/.venv-peers) loads the same pairs,
            then gets and a full scan, on the same backend

Every phase runs in a child process of its own, so each peak RSS (VmHWM) is that phase's.
Prints a table and writes JSON (raw figures, table rows, machine and git state).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import math
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from common import (  # noqa: E402
    PEERS_PYTHON,
    REPO_ROOT,
    SCALE_KEY_BYTES,
    VALUE_BYTES,
    Target,
    drop_os_cache,
    env_for_children,
    log,
    open_store,
    peak_rss_bytes,
    rss_bytes,
    scale_batches,
    scale_pairs,
    scale_sample,
)

MiB = 1024 * 1024
PAIR_BYTES = SCALE_KEY_BYTES + VALUE_BYTES
RAW_OBJECT_BYTES = 8 * MiB
RAW_MAX_BYTES = 2 * 10**9
# Bulk loads and full compactions of 20 GB take 15-25 min on two cores. Compactions
# commit in steps and a bulk load's age (I8) counts from its oldest committed object, so
# the phases run with the default grace period (issue 21: "no CompactionTooSlowError with
# default options at any size measured").
SMALL_STORE_PAIRS = 10_000
BUCKET = "kvscale"


def long_jobs_options() -> Any:
    import kvstore

    return kvstore.StoreOptions()


def entries_for(gb: float) -> int:
    return max(1, round(gb * 1e9 / PAIR_BYTES))


def ms(seconds: list[float]) -> float:
    return statistics.median(seconds) * 1e3 if seconds else float("nan")


# --------------------------------------------------------------------------- child phases


def object_store(target: Target, name: str) -> tuple[Any, str]:
    """kvstore's own object-store backend for the store `name`, and its name prefix."""
    from dataclasses import replace

    from kvstore import S3Options
    from kvstore._url import parse_url

    s3 = replace(S3Options(), **target.open_kwargs()) if target.kind == "s3" else S3Options()
    location = parse_url(target.url(name), s3)
    return location.objects, location.prefix


async def manifest_bytes(target: Target, name: str) -> int:
    """Size of the manifest object: what every commit's CAS uploads."""
    objects, prefix = object_store(target, name)
    try:
        return (await objects.head(prefix + "manifest")).size
    finally:
        await objects.close()


async def phase_raw(spec: dict[str, Any]) -> dict[str, Any]:
    target = Target.from_json(spec["target"])
    objects, prefix = object_store(target, spec["store"])
    blob = random.Random(spec["seed"]).randbytes(RAW_OBJECT_BYTES)
    count = max(1, math.ceil(spec["bytes"] / RAW_OBJECT_BYTES))
    out: dict[str, Any] = {"object_bytes": RAW_OBJECT_BYTES, "objects": count, "bytes": count * RAW_OBJECT_BYTES}
    try:
        for streams in (1, 4):
            names = [f"{prefix}raw{streams}/{i:06d}" for i in range(count)]

            async def stream(part: list[str]) -> None:
                for name in part:
                    await objects.put_if_absent(name, blob)

            t0 = time.perf_counter()
            await asyncio.gather(*(stream(names[s::streams]) for s in range(streams)))
            elapsed = time.perf_counter() - t0
            out[f"streams_{streams}"] = {"seconds": elapsed, "mb_per_s": count * RAW_OBJECT_BYTES / elapsed / 1e6}
            if streams == 1:
                out["get"] = await raw_get_floor(objects, names, lambda: drop_os_cache(target, spec["store"]))
            for name in names:
                await objects.delete(name)
    finally:
        await objects.close()
    out["best_mb_per_s"] = max(out["streams_1"]["mb_per_s"], out["streams_4"]["mb_per_s"])
    return out


async def raw_get_floor(objects: Any, names: list[str], drop_cache: Callable[[], None], n: int = 50) -> dict[str, Any]:
    """Ranged GETs of 64 KiB at random offsets of the raw objects, each as cold as a cold
    get's (`drop_cache`): what one block read costs at least on this endpoint (a cold get
    is held to a few of these)."""
    rnd = random.Random(7)
    times = []
    for _ in range(n):
        start = rnd.randrange(RAW_OBJECT_BYTES - 65536)
        drop_cache()
        t0 = time.perf_counter()
        await objects.get(rnd.choice(names), byte_range=(start, start + 65536))
        times.append(time.perf_counter() - t0)
    return {"n": n, "bytes": 65536, "p50_ms": ms(times)}


async def raw_gets_of_store(target: Target, name: str, n: int = 50) -> dict[str, Any]:
    """Ranged GETs of 64 KiB at random offsets of the store's own segment objects, each as
    cold as a cold get's (`drop_os_cache`): the floor with the same objects."""
    objects, prefix = object_store(target, name)
    try:
        segments = [o async for o in objects.list(prefix + "segments/") if o.size > 65536]
        rnd = random.Random(8)
        times = []
        for _ in range(n):
            info = rnd.choice(segments)
            start = rnd.randrange(info.size - 65536)
            drop_os_cache(target, name)
            t0 = time.perf_counter()
            await objects.get(info.name, byte_range=(start, start + 65536))
            times.append(time.perf_counter() - t0)
    finally:
        await objects.close()
    return {"n": n, "bytes": 65536, "p50_ms": ms(times)}


async def commit_latencies(stores: list[tuple[Any, str]], n: int, target: Target) -> list[dict[str, Any]]:
    """Median of `n` sequential small puts on each of `stores` (db, name), taken in turn (one
    put on each, then again) so that all see the same machine load; and the manifest
    object's size after each put."""
    value = random.Random(5).randbytes(VALUE_BYTES)
    times: list[list[float]] = [[] for _ in stores]
    sizes: list[list[int]] = [[] for _ in stores]
    for i in range(n):
        for j, (db, name) in enumerate(stores):
            t0 = time.perf_counter()
            await db.put(b"commit/%08d" % i, value)
            times[j].append(time.perf_counter() - t0)
            sizes[j].append(await manifest_bytes(target, name))
    return [
        {
            "n": n,
            "p50_ms": ms(t),
            "mean_ms": statistics.fmean(t) * 1e3,
            "max_ms": max(t) * 1e3,
            "manifest_bytes_p50": statistics.median(z),
            "manifest_bytes_max": max(z),
        }
        for t, z in zip(times, sizes, strict=True)
    ]


async def get_latencies(
    target: Target, stores: list[tuple[str, list[tuple[bytes, bytes]]]], warm_rounds: int
) -> list[dict[str, Any]]:
    """Per store (name, sampled pairs): cold gets (a fresh open per key: empty cache, and
    nothing of the store in the page cache, `drop_os_cache`) and warm gets (one open, each
    key read once before). The stores take turns key by key, so that all see the same
    machine load."""
    cold: list[list[float]] = [[] for _ in stores]
    cold_gets: list[list[int]] = [[] for _ in stores]
    warm: list[list[float]] = [[] for _ in stores]
    snap_warm: list[list[float]] = [[] for _ in stores]

    def check(got: Any, key: bytes, value: bytes, what: str) -> None:
        if got != value:
            raise AssertionError(f"{what} get of {key!r} returned a wrong value")

    for i in range(max(len(sample) for _, sample in stores)):
        for j, (name, sample) in enumerate(stores):
            key, value = sample[i % len(sample)]
            drop_os_cache(target, name)
            async with open_store(target, name, 0.0) as db:
                requests = db.statistics()["requests"].get("GET", 0)
                t0 = time.perf_counter()
                got = await db.get(key)
                cold[j].append(time.perf_counter() - t0)
                # less the manifest's conditional GET (max_staleness 0): the segments' GETs
                cold_gets[j].append(db.statistics()["requests"].get("GET", 0) - requests - 1)
                check(got, key, value, "cold")
    dbs = [await open_store(target, name, 0.0) for name, _ in stores]
    try:
        snaps = [await db.snapshot() for db in dbs]
        for db, (_, sample) in zip(dbs, stores, strict=True):
            for key, _ in sample:
                await db.get(key)
        for _ in range(warm_rounds):
            for i in range(max(len(sample) for _, sample in stores)):
                for j, (db, snap, (_, sample)) in enumerate(zip(dbs, snaps, stores, strict=True)):
                    key, value = sample[i % len(sample)]
                    t0 = time.perf_counter()
                    got = await db.get(key)
                    t1 = time.perf_counter()
                    await snap.get(key)
                    snap_warm[j].append(time.perf_counter() - t1)
                    warm[j].append(t1 - t0)
                    check(got, key, value, "warm")
    finally:
        for db in dbs:
            await db.close()
    return [
        {
            "n": len(c),
            "cold_p50_ms": ms(c),
            "cold_max_ms": max(c) * 1e3,
            "cold_segment_gets_max": max(g),
            "warm_p50_ms": ms(w),
            "warm_snapshot_p50_ms": ms(sw),
        }
        for c, g, w, sw in zip(cold, cold_gets, warm, snap_warm, strict=True)
    ]


async def describe(db: Any) -> dict[str, Any]:
    info = await db.describe()
    return {
        "segments": info.segments,
        "sorted_runs": info.sorted_runs,
        "segment_bytes": info.segment_bytes,
        "entries": info.entries,
        "segments_per_level": {str(k): v for k, v in info.segments_per_level.items()},
        "version": info.version,
    }


async def phase_baseline(spec: dict[str, Any]) -> dict[str, Any]:
    """Commit latency on an empty store; get latencies on a small one-segment store."""
    target = Target.from_json(spec["target"])
    empty, small = spec["empty_store"], spec["small_store"]
    async with open_store(target, empty, 0.0) as db:
        await db.put(b"warm", b"x")  # open connections, probe conditional writes
        [commits] = await commit_latencies([(db, empty)], spec["commits"], target)
    async with open_store(target, small, 0.0) as db:
        await db.bulk_load(scale_pairs(spec["seed"], SMALL_STORE_PAIRS))
        shape = await describe(db)
    [gets] = await get_latencies(target, [(small, small_sample(spec))], spec["warm_rounds"])
    return {"commits": commits, "small_store": {"pairs": SMALL_STORE_PAIRS, **shape}, "gets": gets}


def small_sample(spec: dict[str, Any]) -> list[tuple[bytes, bytes]]:
    return scale_sample(spec["seed"], SMALL_STORE_PAIRS, spec["gets"])


async def phase_load(spec: dict[str, Any]) -> dict[str, Any]:
    target = Target.from_json(spec["target"])
    n = spec["entries"]
    # what producing the input costs alone (on at most 1M pairs, scaled): part of the load's time
    probe = min(n, 1_000_000)
    t0 = time.perf_counter()
    for _ in scale_batches(spec["seed"], probe):
        pass
    gen_seconds = (time.perf_counter() - t0) * n / probe
    async with open_store(target, spec["store"], 0.0, options=long_jobs_options()) as db:
        await db.refresh()
        rss0 = rss_bytes()
        t0 = time.perf_counter()
        version = await db.bulk_load(scale_pairs(spec["seed"], n))
        elapsed = time.perf_counter() - t0
        shape = await describe(db)
        stats = db.statistics()
    return {
        "entries": n,
        "bytes": n * PAIR_BYTES,
        "seconds": elapsed,
        "mb_per_s": n * PAIR_BYTES / elapsed / 1e6,
        "entries_per_s": n / elapsed,
        "input_generation_seconds_est": gen_seconds,
        "version": version,
        "store": shape,
        "manifest_bytes": await manifest_bytes(target, spec["store"]),
        "rss_before": rss0,
        "requests": stats.get("requests"),
    }


async def phase_gets(spec: dict[str, Any]) -> dict[str, Any]:
    """Get latencies of the store, taking turns with the small store of the baseline."""
    target = Target.from_json(spec["target"])
    sample = scale_sample(spec["seed"], spec["entries"], spec["gets"])
    big, small = await get_latencies(
        target, [(spec["store"], sample), (spec["small_store"], small_sample(spec))], spec["warm_rounds"]
    )
    return {**big, "small_store": small}


async def phase_compact(spec: dict[str, Any]) -> dict[str, Any]:
    target = Target.from_json(spec["target"])
    async with open_store(target, spec["store"], 0.0, options=long_jobs_options()) as db:
        before = await describe(db)
        rss0 = rss_bytes()
        t0 = time.perf_counter()
        results = await db.compact(full=True)
        elapsed = time.perf_counter() - t0
        after = await describe(db)
    return {
        "seconds": elapsed,
        "before": before,
        "after": after,
        "rss_before": rss0,
        "results": [
            {
                k: getattr(r, k)
                for k in (
                    "inputs",
                    "entries_in",
                    "entries_out",
                    "bytes_in",
                    "bytes_out",
                    "level",
                    "outputs",
                    "sub_compactions",
                    "moved",
                    "bytes_written",
                    "write_amplification",
                )
            }
            for r in results
        ],
        "bytes_written": sum(r.bytes_written for r in results),  # moved segments are not written
        "bytes_read": sum(r.bytes_in for r in results),
        "manifest_bytes": await manifest_bytes(target, spec["store"]),
    }


async def phase_reads(spec: dict[str, Any]) -> dict[str, Any]:
    """Gets, a full scan and commits on the (compacted) store; gets and commits take turns
    with the small and the empty store of the baseline."""
    target = Target.from_json(spec["target"])
    out = await phase_gets(spec)
    out["raw_get_store_objects"] = await raw_gets_of_store(target, spec["store"])
    async with open_store(target, spec["store"], 0.0) as db:
        snap = await db.snapshot()
        n = 0
        t0 = time.perf_counter()
        async for _ in snap.scan():
            n += 1
        elapsed = time.perf_counter() - t0
        out["scan"] = {"entries": n, "seconds": elapsed, "entries_per_s": n / elapsed}
        if n != spec["entries"]:
            raise AssertionError(f"scan saw {n} entries, {spec['entries']} loaded")
        async with open_store(target, spec["empty_store"], 0.0) as empty:  # taking turns with it
            out["commits"], out["commits_empty_store"] = await commit_latencies(
                [(db, spec["store"]), (empty, spec["empty_store"])], spec["commits"], target
            )
    return out


PHASES = {
    "raw": phase_raw,
    "baseline": phase_baseline,
    "load": phase_load,
    "gets": phase_gets,
    "compact": phase_compact,
    "reads": phase_reads,
}


def child_main(phase: str, spec: dict[str, Any]) -> None:
    rss_start = rss_bytes()
    t0 = time.perf_counter()
    out = asyncio.run(PHASES[phase](spec))
    out["phase_seconds"] = time.perf_counter() - t0
    out["rss_start"] = rss_start
    out["peak_rss"] = peak_rss_bytes()  # VmHWM: this process's peak, imports included
    print(json.dumps(out), flush=True)


# --------------------------------------------------------------------------- parent


def run_child(argv: list[str], timeout: float, profile: Path | None = None) -> dict[str, Any]:
    if profile is not None:
        argv = [
            str(PEERS_PYTHON.parent / "py-spy"),
            "record",
            "--rate",
            "50",
            "--format",
            "raw",
            "--nonblocking",
            "-o",
            str(profile),
            "--",
            *argv,
        ]
    proc = subprocess.run(
        argv, check=False, stdout=subprocess.PIPE, text=True, env=env_for_children(), timeout=timeout, cwd=REPO_ROOT
    )
    lines = [line for line in proc.stdout.strip().splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(
            f"{argv[-2] if len(argv) > 2 else argv}: exit {proc.returncode}, output {proc.stdout[-500:]!r}"
        )
    return json.loads(lines[-1])


def phase(name: str, spec: dict[str, Any], timeout: float = 3600, profile: Path | None = None) -> dict[str, Any]:
    log(f"  {name} ...")
    out = run_child(
        [sys.executable, str(Path(__file__).resolve()), "--phase", name, json.dumps(spec)], timeout, profile
    )
    log(f"  {name}: {out['phase_seconds']:.1f} s, peak RSS {out['peak_rss'] / MiB:,.0f} MiB")
    return out


def slatedb_peer(target: Target, entries: int, seed: int, gets: int, name: str) -> dict[str, Any]:
    if not PEERS_PYTHON.exists():
        return {"unavailable": f"{PEERS_PYTHON} missing (bash bench/setup.sh could not create it)"}
    argv = [
        str(PEERS_PYTHON),
        str(HERE / "peers.py"),
        "slatedb-scale",
        "--entries",
        str(entries),
        "--seed",
        str(seed),
        "--gets",
        str(gets),
        "--path",
        name,
    ]
    if target.kind == "s3":
        argv += ["--endpoint", target.endpoint_url, "--bucket", target.bucket]
    else:
        argv += ["--local-path", target.root]
    log("  slatedb ...")
    try:
        out = run_child(argv, timeout=3600)
    except Exception as exc:  # noqa: BLE001 - a peer that fails costs only its own figures
        return {"unavailable": f"{type(exc).__name__}: {exc}"[:500]}
    log(f"  slatedb: load {out['load']['seconds']:.1f} s, peak RSS {out['peak_rss'] / MiB:,.0f} MiB")
    return out


def run_size(gb: float, target: Target, args: argparse.Namespace, with_peer: bool, ns: str) -> dict[str, Any]:
    entries = entries_for(gb)
    base = {
        "target": target.to_json(),
        "seed": args.seed,
        "entries": entries,
        "gets": args.gets,
        "warm_rounds": 5,
        "commits": args.commits,
        "empty_store": f"{ns}-empty",
        "small_store": f"{ns}-small",
    }
    started = time.perf_counter()
    res: dict[str, Any] = {"gb": gb, "entries": entries, "logical_bytes": entries * PAIR_BYTES}
    res["baseline"] = phase("baseline", base)
    # Bandwidth is a rate: 2 GB of 8 MiB objects measure it as well as the whole size would.
    res["raw"] = phase("raw", {**base, "store": f"{ns}-raw", "bytes": min(entries * PAIR_BYTES, RAW_MAX_BYTES)})
    store = {**base, "store": f"{ns}-big"}
    res["load"] = phase("load", store)
    res["gets_before_compaction"] = phase("gets", store)
    res["compact"] = phase("compact", store, profile=args.profile)
    res["reads"] = phase("reads", store)
    if with_peer:
        res["slatedb"] = slatedb_peer(target, entries, args.seed, args.gets, f"{ns}-slatedb")
    res["seconds"] = time.perf_counter() - started
    return res


# --------------------------------------------------------------------------- table


def build_table(results: dict[str, Any]) -> list[dict[str, Any]]:
    from report import Table

    t = Table()
    gib = 1024 * MiB
    on_s3 = results["meta"]["settings"].get("backend") == "s3"
    for r in results["sizes"]:
        sec = f"{r['gb']:g} GB ({r['entries']:,} pairs)"
        logical = r["logical_bytes"]
        raw, b, load = r["raw"], r["baseline"], r["load"]
        t.add(
            sec,
            "raw write bandwidth, 8 MiB objects",
            raw["best_mb_per_s"],
            "MB/s",
            note=f"1 stream {raw['streams_1']['mb_per_s']:.0f}, 4 streams {raw['streams_4']['mb_per_s']:.0f} MB/s",
        )
        t.add(
            sec,
            "bulk load",
            load["mb_per_s"],
            "MB/s",
            "raw write bandwidth (best)",
            raw["best_mb_per_s"],
            note=f"{load['seconds']:.1f} s, {load['entries_per_s']:,.0f} pairs/s, {load['store']['segments']} segments; "
            f"input generation ~{load['input_generation_seconds_est']:.1f} s of it",
        )
        t.add(
            sec,
            "bulk load peak RSS",
            load["peak_rss"] / MiB,
            "MiB",
            "logical data",
            logical / MiB,
            note=f"process at start {load['rss_start'] / MiB:.0f} MiB",
        )
        g0 = r["gets_before_compaction"]
        t.add(
            sec,
            "cold get before compaction (p50)",
            g0["cold_p50_ms"],
            "ms",
            "small store, same moments",
            g0["small_store"]["cold_p50_ms"],
            note=f"{load['store']['segments']} segments in {load['store']['sorted_runs']} sorted run(s); "
            f"at most {g0['cold_segment_gets_max']} segment GETs (target <= 3)",
        )
        t.add(
            sec,
            "space amplification after load",
            load["store"]["segment_bytes"] / logical,
            "x",
            note=f"{load['store']['segment_bytes'] / 1e6:,.0f} MB of segments",
        )
        t.add(sec, "manifest bytes after load", load["manifest_bytes"], "B")
        c = r["compact"]
        if "skipped" in c:  # runs before streaming compaction
            t.add(sec, "compact(full=True)", None, "", note=c["skipped"])
        else:
            merged = f"{len(c['results'])} compaction(s)" if c["results"] else "nothing to merge: one sorted run"
            t.add(
                sec,
                "compact(full=True) time",
                c["seconds"],
                "s",
                "bulk load time",
                load["seconds"],
                note=f"target <= {1.5 if on_s3 else 1.2}x (issue 21, random-order load); {merged}",
            )
        if "skipped" not in c and c["results"]:
            t.add(sec, "compaction rate (logical)", logical / c["seconds"] / 1e6, "MB/s", "bulk load", load["mb_per_s"])
            t.add(
                sec,
                "compaction peak RSS",
                c["peak_rss"] / MiB,
                "MiB",
                "target 1 GiB",
                gib / MiB,
                note=f"{c['peak_rss'] / logical:.1f}x the logical data; process at start {c['rss_start'] / MiB:.0f} MiB",
            )
            t.add(
                sec,
                "write amplification of compaction",
                c["bytes_written"] / logical,
                "x",
                note=f"{c['bytes_written'] / 1e6:,.0f} MB written, {c['bytes_read'] / 1e6:,.0f} MB read",
            )
            t.add(
                sec,
                "space amplification after compaction",
                c["after"]["segment_bytes"] / logical,
                "x",
                note=f"{c['after']['segments']} segment(s) in {c['after']['sorted_runs']} sorted run(s)",
            )
            t.add(sec, "manifest bytes after compaction", c["manifest_bytes"], "B")
        if "reads" in r:
            rd = r["reads"]
            ce, sm = rd["commits_empty_store"], rd["small_store"]
            t.add(
                sec,
                "commit latency (p50 of small puts)",
                rd["commits"]["p50_ms"],
                "ms",
                "empty store, taking turns",
                ce["p50_ms"],
                note=f"target <= 1.2x; empty store alone {b['commits']['p50_ms']:.2f} ms",
            )
            t.add(
                sec,
                "manifest bytes per commit (p50)",
                rd["commits"]["manifest_bytes_p50"],
                "B",
                "empty store",
                ce["manifest_bytes_p50"],
            )
            t.add(
                sec,
                "cold get (p50, fresh open per key)",
                rd["cold_p50_ms"],
                "ms",
                "small store, taking turns",
                sm["cold_p50_ms"],
                note=f"max {rd['cold_max_ms']:.1f} ms; target <= 1.2x; small store alone "
                f"{b['gets']['cold_p50_ms']:.2f} ms; at most {rd['cold_segment_gets_max']} segment GETs",
            )
            g0 = r["gets_before_compaction"]
            t.add(
                sec,
                "cold get right after the load (p50)",
                g0["cold_p50_ms"],
                "ms",
                "the store compacted",
                rd["cold_p50_ms"],
                note=f"target <= 1.5x and <= 3 segment GETs: {g0['cold_segment_gets_max']} after the load, "
                f"{rd['cold_segment_gets_max']} compacted",
            )
            # The floor a cold get is held to: as many raw 64 KiB GETs as it made (with the
            # manifest's conditional GET), of the store's own segments and of fresh objects.
            gets = rd["cold_segment_gets_max"] + 1
            floors = [
                (
                    "raw GETs of the store's segments",
                    rd.get("raw_get_store_objects"),
                    "random offsets of the store's own segment objects",
                ),
                ("the raw GET floor", raw.get("get"), "fresh 8 MiB objects"),
            ]
            for name, floor, what in floors:
                if floor is not None:
                    t.add(
                        sec,
                        f"cold get vs {name}",
                        rd["cold_p50_ms"],
                        "ms",
                        f"{gets} raw 64 KiB ranged GETs",
                        gets * floor["p50_ms"],
                        note=f"target <= 2x; one GET {floor['p50_ms']:.2f} ms (p50), {what}",
                    )
            t.add(
                sec,
                "warm get, db.get (p50)",
                rd["warm_p50_ms"] * 1e3,
                "µs",
                "small store, taking turns",
                sm["warm_p50_ms"] * 1e3,
                note=f"snapshot.get {rd['warm_snapshot_p50_ms'] * 1e3:.1f} µs "
                f"(small store {sm['warm_snapshot_p50_ms'] * 1e3:.1f} µs)",
            )
            sl = r.get("slatedb") or {}
            scan_base = sl.get("scan", {}).get("entries_per_s") if "unavailable" not in sl else None
            t.add(
                sec,
                "full scan",
                rd["scan"]["entries_per_s"],
                "entries/s",
                "SlateDB full scan" if scan_base else "",
                scan_base,
                note=f"{rd['scan']['seconds']:.1f} s",
            )
            t.add(sec, "reads phase peak RSS", rd["peak_rss"] / MiB, "MiB")
        sl = r.get("slatedb")
        if sl is not None:
            if "unavailable" in sl:
                t.add(sec, "SlateDB peer", None, "", note=f"unavailable: {sl['unavailable']}")
            else:
                t.add(
                    sec,
                    "SlateDB load (WriteBatch 10k, durable)",
                    sl["load"]["mb_per_s"],
                    "MB/s",
                    "kvstore bulk load",
                    load["mb_per_s"],
                    note=f"{sl['load']['seconds']:.1f} s incl. final flush",
                )
                t.add(
                    sec,
                    "SlateDB cold get (p50, fresh open per key)",
                    sl["gets"]["cold_p50_ms"],
                    "ms",
                    "kvstore cold get",
                    r.get("reads", g0)["cold_p50_ms"],
                )
                t.add(
                    sec,
                    "SlateDB warm get (p50)",
                    sl["gets"]["warm_p50_ms"] * 1e3,
                    "µs",
                    "kvstore warm db.get",
                    r.get("reads", g0)["warm_p50_ms"] * 1e3,
                )
                t.add(sec, "SlateDB full scan", sl["scan"]["entries_per_s"], "entries/s")
                t.add(sec, "SlateDB peak RSS", sl["peak_rss"] / MiB, "MiB")
        t.add(sec, "runtime of this size", r["seconds"], "s")
    return t.rows


def render(rows: list[dict[str, Any]]) -> str:
    from report import _fmt

    lines = [
        "| size | metric | kvstore | unit | baseline | baseline value | ratio | note |",
        "|---|---|---:|---|---|---:|---:|---|",
    ]
    for row in rows:
        ratio = f"{row['ratio']:.2f}x" if row["ratio"] is not None else "-"
        lines.append(
            f"| {row['section']} | {row['metric']} | {_fmt(row['kvstore'])} | {row['unit']} | "
            f"{row['baseline']} | {_fmt(row['baseline_value'])} | {ratio} | {row['note']} |"
        )
    return "\n".join(lines)


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "--phase":
        child_main(sys.argv[2], json.loads(sys.argv[3]))
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="0.25,1", help="GB of logical data per store, comma-separated")
    ap.add_argument("--backend", choices=["file", "s3"], default="file")
    ap.add_argument("--out", default=None, help="JSON path (default bench/results/scale-<date>.json)")
    ap.add_argument("--seed", type=int, default=12)
    ap.add_argument("--gets", type=int, default=20, help="random keys for the get latencies")
    ap.add_argument("--commits", type=int, default=30, help="small puts for the commit latency")
    ap.add_argument("--no-peer", action="store_true", help="skip SlateDB")
    ap.add_argument("--profile", action="store_true", help="py-spy the compaction phase (bench/.venv-peers)")
    ap.add_argument("--workdir", default=None, help="parent of the temporary directories (default: system temp)")
    ap.add_argument("--render", default=None, metavar="JSON", help="only print the table of an earlier run's JSON")
    args = ap.parse_args()
    if args.render:
        print(render(build_table(json.loads(Path(args.render).read_text()))))
        return
    sizes = [float(s) for s in args.sizes.split(",") if s]
    out_path = Path(args.out or REPO_ROOT / "bench" / "results" / f"scale-{dt.date.today().isoformat()}.json")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    args.profile = out_path.with_name(out_path.stem + "-compact.pyspy.txt") if args.profile else None
    from run import git_state, loadavg, machine, versions

    results: dict[str, Any] = {
        "meta": {
            "command": " ".join([".venv/bin/python", "bench/scale.py", *sys.argv[1:]]),
            "date": dt.datetime.now().isoformat(timespec="seconds"),
            "machine": machine(),
            "loadavg_start": loadavg(),
            "git": git_state(),
            "versions": versions(),
            "settings": {k: str(v) for k, v in vars(args).items()},
        },
        "sizes": [],
    }
    server = None
    try:
        if args.backend == "s3":
            from common import ensure_bucket
            from servers import start_localstack

            ls_dir = Path(tempfile.mkdtemp(prefix="kvscale-ls-", dir=args.workdir))
            server = start_localstack(ls_dir)
            asyncio.run(ensure_bucket(server.endpoint_url, BUCKET))
        for n, gb in enumerate(sizes):
            tmp = Path(tempfile.mkdtemp(prefix=f"kvscale-{gb:g}-", dir=args.workdir))
            target = (
                Target("s3", endpoint_url=server.endpoint_url, bucket=BUCKET)
                if server is not None
                else Target("fs", root=str(tmp))
            )
            log(f"size {gb:g} GB: {entries_for(gb):,} pairs in {target.url('')}")
            try:
                res = run_size(gb, target, args, with_peer=n == 0 and not args.no_peer, ns=f"{gb:g}gb-{os.getpid()}")
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
            results["sizes"].append(res)
            log(f"size {gb:g} GB done in {res['seconds']:.0f} s")
            out_path.write_text(json.dumps(results, indent=2))
    finally:
        results["meta"]["loadavg_end"] = loadavg()
        results["meta"]["finished"] = dt.datetime.now().isoformat(timespec="seconds")
        if server is not None:
            server.stop()
            shutil.rmtree(ls_dir, ignore_errors=True)
        if results["sizes"]:
            results["table"] = build_table(results)
        out_path.write_text(json.dumps(results, indent=2))
    print(render(results["table"]))
    print(f"\nwrote {out_path}")


if __name__ == "__main__":
    main()
