"""Contended counters (issue 19): atomic `add` against read-modify-write `transact`.

    .venv/bin/python bench/counters.py [--processes 4] [--tasks 16] [--keys 4] \
        [--duration 10] [--latency-ms 0] [--backends s3,fs] [--out bench/results]

``--processes`` spawned processes, each running ``--tasks`` asyncio tasks in a closed
loop, increment ``--keys`` shared counters (each task picks a random one per operation)
for ``--duration`` seconds, two ways, one after the other on a fresh store each:

* ``add``: ``async with db.transaction() as tx: tx.add(key, 1)``, a blind write;
* ``transact`` (the baseline): ``await db.transact(increment, key)`` with
  ``tx.put(key, await tx.get(key, 0) + 1)``, retried on conflict by `transact`.

Committed ops/s counts increments whose commit returned; conflicts/s is the
committers' ConflictError count (`Store.statistics()["conflicts"]`, retried ones
included) per second. After each run the counters are read back: each must equal
the increments its processes saw committed ("exact"). Backends: LocalStack S3
(started here, reached through ``bench/proxy.py`` with ``--latency-ms`` added to
every request when it is above 0) and the local filesystem.

Prints a table and writes ``counters.json`` to ``--out``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import random
import shutil
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from common import CREDENTIALS, REGION, ensure_bucket, log
from run import loadavg, machine, start_proxy

import kvstore

WAYS = ("add", "transact")
_READY_TIMEOUT = 300.0  # seconds the processes may take to start and open their stores


def _worker(
    way: str, url: str, kw: dict[str, Any], worker: int, tasks: int, keys: int, ready: Any, duration: float
) -> dict[str, Any]:
    """One process: `tasks` tasks incrementing random counters for `duration` s, from when
    every process has opened its store (`ready`, a barrier of all of them)."""

    async def main() -> dict[str, Any]:
        acked = [0] * keys
        failed = 0
        unknown = [0] * keys  # commits that raised another error: applied or not
        rng = random.Random(worker)

        async def increment(tx: kvstore.Transaction, key: str) -> None:
            tx.put(key, await tx.get(key, 0) + 1)

        async def task(stop: float) -> None:
            nonlocal failed
            while time.time() < stop:
                k = rng.randrange(keys)
                key = f"counter/{k}"
                try:
                    if way == "add":
                        async with db.transaction() as tx:
                            tx.add(key, 1)
                    else:
                        await db.transact(increment, key)
                except kvstore.ConflictError:
                    failed += 1  # transact gave up: not applied
                    continue
                except kvstore.KvStoreError:
                    unknown[k] += 1  # e.g. an overloaded endpoint: the outcome is not known
                    continue
                acked[k] += 1

        async with kvstore.open(url, values="msgpack", **kw) as db:
            await db.get("counter/0")  # connections open, manifest read: ready
            await asyncio.to_thread(ready.wait, _READY_TIMEOUT)
            before = db.statistics()
            t0 = time.time()
            await asyncio.gather(*(task(t0 + duration) for _ in range(tasks)))
            seconds = time.time() - t0
            after = db.statistics()
        return {
            "acked": acked,
            "unknown": unknown,
            "gave_up": failed,
            "seconds": seconds,
            "conflicts": after["conflicts"] - before["conflicts"],
            "commits": after["commits"] - before["commits"],
        }

    return asyncio.run(main())


async def _run(way: str, url: str, kw: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    async with kvstore.open(url, values="msgpack", create=True, **kw):
        pass
    context = multiprocessing.get_context("spawn")
    loop = asyncio.get_running_loop()
    with context.Manager() as manager, ProcessPoolExecutor(args.processes, mp_context=context) as pool:
        ready = manager.Barrier(args.processes)
        results = await asyncio.gather(
            *(
                loop.run_in_executor(pool, _worker, way, url, kw, w, args.tasks, args.keys, ready, args.duration)
                for w in range(args.processes)
            )
        )
    acked = [sum(r["acked"][k] for r in results) for k in range(args.keys)]
    unknown = [sum(r["unknown"][k] for r in results) for k in range(args.keys)]
    async with kvstore.open(url, values="msgpack", **kw) as db:
        final = [await db.get(f"counter/{k}", 0) for k in range(args.keys)]
    seconds = max(r["seconds"] for r in results)  # a task ends after its last operation started
    ops = sum(acked)
    conflicts = sum(r["conflicts"] for r in results)
    return {
        "ops": ops,
        "seconds": seconds,
        "ops_per_s": ops / seconds,
        "conflicts": conflicts,
        "conflicts_per_s": conflicts / seconds,
        "gave_up": sum(r["gave_up"] for r in results),
        "commits": sum(r["commits"] for r in results),
        "acked": acked,
        "unknown": unknown,
        "final": final,
        "exact": final == acked,
        # with unknown outcomes: each final count between acknowledged and acknowledged + unknown
        "consistent": all(a <= f <= a + u for a, f, u in zip(acked, final, unknown, strict=True)),
    }


async def _backend(name: str, url_of: Any, kw: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    figures = {}
    for way in WAYS:
        log(f"{name}: {way}, {args.processes} processes x {args.tasks} tasks on {args.keys} keys, {args.duration:g} s")
        figures[way] = await _run(way, url_of(way), kw, args)
    return figures


async def main(args: argparse.Namespace) -> dict[str, Any]:
    from servers import start_localstack

    results: dict[str, Any] = {
        "meta": {
            "processes": args.processes,
            "tasks": args.tasks,
            "keys": args.keys,
            "duration_s": args.duration,
            "latency_ms": args.latency_ms,
            "machine": machine(),
            "loadavg_start": loadavg(),
        },
    }
    backends = args.backends.split(",")
    workdir = Path(tempfile.mkdtemp(prefix="kvbench-counters-"))
    try:
        if "fs" in backends:
            results["fs"] = await _backend("local filesystem", lambda way: str(workdir / f"fs-{way}"), {}, args)
        if "s3" in backends:
            log("starting LocalStack")
            server = start_localstack(workdir / "localstack")
            proxy = None
            try:
                bucket = "kvbench"
                await ensure_bucket(server.endpoint_url, bucket)
                kw = {"endpoint_url": server.endpoint_url, "region_name": REGION, **CREDENTIALS}
                if args.latency_ms > 0:
                    proxy, proxied_endpoint = start_proxy(server.endpoint_url, args.latency_ms)
                    kw["endpoint_url"] = proxied_endpoint
                results["s3"] = await _backend(
                    f"S3 (LocalStack, +{args.latency_ms:g} ms)", lambda way: f"s3://{bucket}/counters-{way}", kw, args
                )
            finally:
                if proxy is not None:
                    proxy.kill()
                    proxy.wait(10)
                server.stop()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    results["meta"]["loadavg_end"] = loadavg()
    return results


def table(results: dict[str, Any]) -> list[str]:
    """One row per backend and way: committed ops/s, conflicts/s, exactness, ratio to transact."""
    lines = [f"  {'backend':8} {'way':9} {'ops/s':>9} {'conflicts/s':>12} {'vs transact':>12}  final counts"]
    for backend in ("s3", "fs"):
        if backend not in results:
            continue
        base = results[backend]["transact"]["ops_per_s"]
        for way in WAYS:
            f = results[backend][way]
            exact = (
                "exact"
                if f["exact"]
                else f"{sum(f['unknown'])} unknown, consistent"
                if f["consistent"]
                else f"WRONG {f['final']} != {f['acked']}"
            )
            lines.append(
                f"  {backend:8} {way:9} {f['ops_per_s']:9.1f} {f['conflicts_per_s']:12.1f} "
                f"{f['ops_per_s'] / base:11.2f}x  {exact}"
            )
    return lines


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument("--tasks", type=int, default=16)
    parser.add_argument("--keys", type=int, default=4)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--backends", default="s3,fs")
    parser.add_argument("--out", default="bench/results")
    args = parser.parse_args()
    results = asyncio.run(main(args))
    lines = [
        f"Contended counters: {args.processes} processes x {args.tasks} tasks on {args.keys} keys, "
        f"{args.duration:g} s each (loadavg {results['meta']['loadavg_start']})",
        *table(results),
    ]
    print("\n".join(lines))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "counters.json").write_text(json.dumps(results, indent=2))
    print(f"wrote {out / 'counters.json'}")


if __name__ == "__main__":
    cli()
