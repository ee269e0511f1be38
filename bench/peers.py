"""The peers, run in the bench's own environment (bench/.venv-peers, Python >= 3.12).

    bench/.venv-peers/bin/python bench/peers.py slatedb  --endpoint URL --bucket B --config default|tuned ...
    bench/.venv-peers/bin/python bench/peers.py icechunk --endpoint URL --bucket B ...

Prints one JSON document on its last stdout line. ``run.py`` starts it once per peer and
configuration, so a peer that crashes or hangs costs only its own figures.

SlateDB (``slatedb`` 0.17, UniFFI binding): one writable ``Db`` per run on
``s3://B/<unique path>`` through ``ObjectStoreBuilder`` (endpoint, path-style, plain HTTP).
A durable put is ``handle = await db.put(k, v); await handle.await_durable()``. ``default``
uses SlateDB's settings (``flush_interval`` 100 ms); ``tuned`` sets ``flush_interval`` to 1 ms.
Requests are counted with SlateDB's own ``slatedb.object_store.request_count`` metric.

Icechunk (2.x): a repository on ``s3://B/<unique prefix>`` with one Zarr array whose
chunks are the keys (100 uint8 per chunk = one 100-byte value). A commit is a writable
session, one chunk written, ``commit_async(rebase_with=ConflictDetector())``; concurrent
writers rebase onto each other's commits (disjoint chunks never conflict).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import subprocess
import sys
import time
import uuid
from typing import Any

from common import (  # stdlib-only: runs in the peers' venv too
    closed_loop,
    peak_rss_bytes,
    scale_batches,
    scale_sample,
)

VALUE = os.urandom(100)
CREDS = {"access_key_id": "test", "secret_access_key": "test", "region": "us-east-1"}


async def timed(op: Any, count: int, max_seconds: float) -> dict[str, float]:
    samples = []
    deadline = time.perf_counter() + max_seconds
    for i in range(count):
        t0 = time.perf_counter()
        await op(i)
        t1 = time.perf_counter()
        samples.append(t1 - t0)
        if t1 > deadline:
            break
    s = sorted(samples)
    return {
        "n": len(s),
        "mean_ms": sum(s) / len(s) * 1e3,
        "p50_ms": s[len(s) // 2] * 1e3,
        "p99_ms": s[min(len(s) - 1, int(0.99 * len(s)))] * 1e3,
    }


# --------------------------------------------------------------------------- SlateDB


def slatedb_store(endpoint: str, bucket: str) -> Any:
    from slatedb.uniffi import ObjectStoreBuilder, ObjectStoreType

    b = ObjectStoreBuilder.from_env(ObjectStoreType.S3)
    config = {
        "bucket": bucket,
        "endpoint": endpoint,
        "allow_http": "true",
        "virtual_hosted_style_request": "false",
        **CREDS,
    }
    for k, v in config.items():
        b.with_config(k, v)
    return b.build()


def slate_requests(recorder: Any) -> int:
    total = 0
    for m in recorder.snapshot():
        if m.name == "slatedb.object_store.request_count" and m.value.is_counter():
            total += m.value[0]
    return total


async def open_slatedb(args: argparse.Namespace, name: str) -> tuple[Any, Any]:
    from slatedb.uniffi import DbBuilder, DefaultMetricsRecorder, Settings

    settings = Settings.default()
    if args.config == "tuned":
        settings.set("flush_interval", '"1ms"')
    recorder = DefaultMetricsRecorder()
    builder = DbBuilder(name, slatedb_store(args.endpoint, args.bucket))
    builder.with_settings(settings)
    builder.with_metrics_recorder(recorder)
    return await builder.build(), recorder


async def slatedb_main(args: argparse.Namespace) -> dict[str, Any]:
    from slatedb.uniffi import FlushOptions, FlushType, KeyRange, WriteBatch

    out: dict[str, Any] = {"peer": "slatedb", "config": args.config, "version": _version("slatedb")}
    out["flush_interval"] = "1ms" if args.config == "tuned" else "100ms (default)"
    phases: dict[str, float] = {}
    t_phase = time.perf_counter()
    db, rec = await open_slatedb(args, f"slate-{args.config}-{uuid.uuid4().hex[:8]}")
    phases["open"] = time.perf_counter() - t_phase
    t_phase = time.perf_counter()
    try:

        async def durable_put(key: bytes) -> None:
            handle = await db.put(key, VALUE)
            await handle.await_durable()

        await durable_put(b"warm")
        r0 = slate_requests(rec)
        out["sequential_put"] = await timed(lambda i: durable_put(b"seq/%08d" % i), args.seq, args.duration)
        out["sequential_put"]["requests_per_put"] = (slate_requests(rec) - r0) / out["sequential_put"]["n"]
        out["writers"] = {}
        for w in args.writers:
            r0 = slate_requests(rec)
            r = await closed_loop(
                lambda wk, i, w=w: durable_put(b"w%d/%03d/%08d" % (w, wk, i)), w, args.duration, warmup=args.warmup
            )
            r["requests_per_put"] = (slate_requests(rec) - r0) / r["completed"] if r["completed"] else None
            out["writers"][str(w)] = r
        phases["writes"] = time.perf_counter() - t_phase
        t_phase = time.perf_counter()

        # point reads from SSTs (memtable flushed), after one warming pass
        keys = [b"r/%08d" % i for i in range(args.read_keys)]
        for start in range(0, len(keys), 10_000):
            batch = WriteBatch()
            for k in keys[start : start + 10_000]:
                batch.put(k, VALUE)
            await (await db.write(batch)).await_durable()
        await db.flush_with_options(FlushOptions(flush_type=FlushType.MEM_TABLE))
        phases["load_reads"] = time.perf_counter() - t_phase
        t_phase = time.perf_counter()
        rng = random.Random(2)

        async def get_rate(seconds: float) -> dict[str, float]:
            n = 0
            t0 = time.perf_counter()
            while time.perf_counter() - t0 < seconds:
                for _ in range(256):
                    await db.get(keys[rng.randrange(len(keys))])
                n += 256
            elapsed = time.perf_counter() - t0
            return {"gets": n, "seconds": elapsed, "gets_per_s": n / elapsed}

        await get_rate(min(1.0, args.duration))  # warm the block cache
        rounds = [await get_rate(args.duration / 3) for _ in range(3)]
        seq = max(rounds, key=lambda r: r["gets_per_s"])  # best of 3: other processes share the CPU
        seq["rounds"] = [round(r["gets_per_s"]) for r in rounds]
        conc = await closed_loop(
            lambda wk, i: db.get(keys[rng.randrange(len(keys))]), 64, args.duration, warmup=args.warmup
        )
        out["gets"] = {"sequential": seq, "concurrent64": {**conc, "gets_per_s": conc["rate"]}}
        out["best_gets_per_s"] = max(seq["gets_per_s"], conc["rate"])
        phases["gets"] = time.perf_counter() - t_phase
        t_phase = time.perf_counter()

        # scans from cache (second pass), 1024 rows per FFI call
        if args.scan_entries:
            skeys = [b"s/%010d" % i for i in range(args.scan_entries)]
            for start in range(0, len(skeys), 10_000):
                batch = WriteBatch()
                for k in skeys[start : start + 10_000]:
                    batch.put(k, VALUE)
                await (await db.write(batch)).await_durable()
            await db.flush_with_options(FlushOptions(flush_type=FlushType.MEM_TABLE))
            rng_ = KeyRange(start=b"s/", start_inclusive=True, end=b"s0", end_inclusive=False)

            async def scan_all() -> int:
                it = await db.scan(rng_)
                m = 0
                while rows := await it.next_batch(1024):
                    m += len(rows)
                return m

            await scan_all()
            best = None
            for _ in range(2):
                t0 = time.perf_counter()
                m = await scan_all()
                elapsed = time.perf_counter() - t0
                if best is None or m / elapsed > best["entries_per_s"]:
                    best = {"entries": m, "seconds": elapsed, "entries_per_s": m / elapsed}
            out["scan"] = best
            phases["scans"] = time.perf_counter() - t_phase
    finally:
        t_phase = time.perf_counter()
        await db.shutdown()
        phases["shutdown"] = time.perf_counter() - t_phase
        out["phase_seconds"] = {k: round(v, 1) for k, v in phases.items()}
    return out


async def slatedb_scale_main(args: argparse.Namespace) -> dict[str, Any]:
    """bench/scale.py's peer: load the scale pairs (WriteBatch of 10,000, each durable, then a
    memtable flush), cold gets (a fresh Db per key), warm gets, a full scan; local or S3."""
    from slatedb.uniffi import (
        DbBuilder,
        FlushOptions,
        FlushType,
        KeyRange,
        ObjectStoreBuilder,
        ObjectStoreType,
        WriteBatch,
    )

    if args.local_path:
        b = ObjectStoreBuilder.from_env(ObjectStoreType.LOCAL)
        b.with_config("local_path", args.local_path)
        store = b.build()
    else:
        store = slatedb_store(args.endpoint, args.bucket)

    async def open_db() -> Any:
        return await DbBuilder(args.path, store).build()

    out: dict[str, Any] = {"peer": "slatedb", "version": _version("slatedb"), "entries": args.entries}
    db = await open_db()
    t0 = time.perf_counter()
    for keys, values in scale_batches(args.seed, args.entries):
        for start in range(0, len(keys), 10_000):
            batch = WriteBatch()
            for k, v in zip(keys[start : start + 10_000], values[start : start + 10_000], strict=True):
                batch.put(k, v)
            await (await db.write(batch)).await_durable()
    await db.flush_with_options(FlushOptions(flush_type=FlushType.MEM_TABLE))
    elapsed = time.perf_counter() - t0
    nbytes = args.entries * (len(keys[0]) + len(values[0]))
    out["load"] = {
        "seconds": elapsed,
        "bytes": nbytes,
        "mb_per_s": nbytes / elapsed / 1e6,
        "entries_per_s": args.entries / elapsed,
    }
    await db.shutdown()
    sample = scale_sample(args.seed, args.entries, args.gets)
    cold = []
    for key, value in sample:
        db = await open_db()
        t0 = time.perf_counter()
        got = await db.get(key)
        cold.append(time.perf_counter() - t0)
        await db.shutdown()
        if got != value:
            raise AssertionError(f"slatedb cold get of {key!r} returned a wrong value")
    db = await open_db()
    warm = []
    for key, _ in sample:
        await db.get(key)
    for _ in range(5):
        for key, _ in sample:
            t0 = time.perf_counter()
            await db.get(key)
            warm.append(time.perf_counter() - t0)
    it = await db.scan(KeyRange(start=None, start_inclusive=True, end=None, end_inclusive=False))
    n = 0
    t0 = time.perf_counter()
    while rows := await it.next_batch(1024):
        n += len(rows)
    elapsed = time.perf_counter() - t0
    await db.shutdown()
    out["gets"] = {
        "n": len(sample),
        "cold_p50_ms": sorted(cold)[len(cold) // 2] * 1e3,
        "warm_p50_ms": sorted(warm)[len(warm) // 2] * 1e3,
    }
    out["scan"] = {"entries": n, "seconds": elapsed, "entries_per_s": n / elapsed}
    out["peak_rss"] = peak_rss_bytes()
    return out


# --------------------------------------------------------------------------- Icechunk


def icechunk_storage(args: argparse.Namespace, prefix: str) -> Any:
    import icechunk

    return icechunk.s3_storage(
        bucket=args.bucket,
        prefix=prefix,
        endpoint_url=args.endpoint,
        allow_http=True,
        force_path_style=True,
        **CREDS,
    )


async def icechunk_create(args: argparse.Namespace, prefix: str) -> Any:
    import icechunk
    import zarr

    repo = await icechunk.Repository.create_async(icechunk_storage(args, prefix))
    session = await repo.writable_session_async("main")
    root = await zarr.api.asynchronous.group(store=session.store)
    await root.create_array("kv", shape=(100 * 100_000_000,), chunks=(100,), dtype="uint8", fill_value=0)
    await session.commit_async("create")
    return repo


def icechunk_committer(repo: Any) -> Any:
    import icechunk
    import numpy as np
    import zarr

    value = np.frombuffer(VALUE, dtype="uint8")

    async def commit(chunk: int) -> None:
        session = await repo.writable_session_async("main")
        arr = await zarr.api.asynchronous.open_array(store=session.store, path="kv")
        await arr.setitem(slice(chunk * 100, chunk * 100 + 100), value)
        await session.commit_async("put", rebase_with=icechunk.ConflictDetector(), rebase_tries=1000)

    return commit


async def icechunk_main(args: argparse.Namespace) -> dict[str, Any]:
    import icechunk
    import zarr

    out: dict[str, Any] = {"peer": "icechunk", "version": _version("icechunk")}
    prefix = f"ice-{uuid.uuid4().hex[:8]}"
    repo = await icechunk_create(args, prefix)
    commit = icechunk_committer(repo)
    await commit(0)
    out["sequential_commit"] = await timed(lambda i: commit(1 + i), args.seq, args.duration)
    out["writers"] = {}
    for n, w in enumerate(args.writers):
        base = 1_000_000 * (n + 1)
        out["writers"][str(w)] = await closed_loop(
            lambda wk, i, base=base: commit(base + wk * 10_000 + i), w, args.duration, warmup=args.warmup, grace=2.0
        )
    # point reads of single chunks from a read-only session
    session = await repo.readonly_session_async("main")
    arr = await zarr.api.asynchronous.open_array(store=session.store, path="kv")
    for i in range(1, 1 + min(args.seq, 50)):
        await arr.getitem(slice(i * 100, i * 100 + 100))
    n = 0
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < min(args.duration, 3):
        i = 1 + n % min(args.seq, 50)
        await arr.getitem(slice(i * 100, i * 100 + 100))
        n += 1
    out["gets"] = {"sequential": {"gets": n, "seconds": time.perf_counter() - t0}}
    out["gets"]["sequential"]["gets_per_s"] = n / out["gets"]["sequential"]["seconds"]
    if args.processes:
        out["processes"] = icechunk_fleet(args, prefix)
    del icechunk
    return out


def icechunk_fleet(args: argparse.Namespace, prefix: str) -> dict[str, Any]:
    """`processes` x `proc_writers` committing disjoint chunks to the same branch."""
    procs = []
    try:
        for n in range(args.processes):
            cmd = [
                sys.executable,
                __file__,
                "icechunk-worker",
                "--endpoint",
                args.endpoint,
                "--bucket",
                args.bucket,
                "--prefix",
                prefix,
                "--worker",
                str(n),
                "--proc-writers",
                str(args.proc_writers),
                "--duration",
                str(args.duration),
                "--warmup",
                str(args.warmup),
            ]
            procs.append(subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True))
        for p in procs:
            assert p.stdout is not None
            line = p.stdout.readline().strip()
            if line != "READY":
                raise RuntimeError(f"icechunk worker not ready: {line!r}")
        start = time.time() + 0.2
        for p in procs:
            assert p.stdin is not None
            p.stdin.write(f"GO {start}\n")
            p.stdin.flush()
        results = []
        for p in procs:
            out, _ = p.communicate(timeout=args.duration * 4 + 120)
            results.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    elapsed = max(r["seconds"] for r in results)
    ops = sum(r["ops"] for r in results)
    return {
        "processes": args.processes,
        "writers_per_process": args.proc_writers,
        "ops": ops,
        "errors": sum(r["errors"] for r in results),
        "seconds": elapsed,
        "rate": ops / elapsed,
    }


async def icechunk_worker(args: argparse.Namespace) -> dict[str, Any]:
    import icechunk

    repo = await icechunk.Repository.open_async(icechunk_storage(args, args.prefix))
    commit = icechunk_committer(repo)
    print("READY", flush=True)
    line = await asyncio.to_thread(sys.stdin.readline)
    await asyncio.sleep(max(0.0, float(line.split()[1]) - time.time()))
    base = 50_000_000 + args.worker * 1_000_000
    return await closed_loop(
        lambda wk, i: commit(base + wk * 10_000 + i), args.proc_writers, args.duration, warmup=args.warmup, grace=0.0
    )


def _version(dist: str) -> str:
    from importlib.metadata import version

    return version(dist)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("peer", choices=["slatedb", "slatedb-scale", "icechunk", "icechunk-worker"])
    ap.add_argument("--endpoint", default="")
    ap.add_argument("--bucket", default="")
    ap.add_argument("--local-path", default="", help="slatedb-scale: a local directory instead of S3")
    ap.add_argument("--path", default="slate-scale", help="slatedb-scale: the database path")
    ap.add_argument("--entries", type=int, default=100_000)
    ap.add_argument("--seed", type=int, default=12)
    ap.add_argument("--gets", type=int, default=20)
    ap.add_argument("--config", default="default", choices=["default", "tuned"])
    ap.add_argument("--duration", type=float, default=3.0)
    ap.add_argument("--warmup", type=float, default=0.5)
    ap.add_argument("--writers", default="1,8,64")
    ap.add_argument("--seq", type=int, default=50)
    ap.add_argument("--read-keys", type=int, default=10_000)
    ap.add_argument("--scan-entries", type=int, default=0)
    ap.add_argument("--processes", type=int, default=0)
    ap.add_argument("--proc-writers", type=int, default=16)
    ap.add_argument("--prefix", default="")
    ap.add_argument("--worker", type=int, default=0)
    args = ap.parse_args()
    args.writers = [int(w) for w in str(args.writers).split(",") if w]
    fn = {
        "slatedb": slatedb_main,
        "slatedb-scale": slatedb_scale_main,
        "icechunk": icechunk_main,
        "icechunk-worker": icechunk_worker,
    }[args.peer]
    result = asyncio.run(fn(args))
    print(json.dumps(result), flush=True)
    sys.stdout.flush()
    os._exit(0)  # do not wait for native runtimes' background threads


if __name__ == "__main__":
    main()
