"""kvstore workloads that run in this process (the multi-process ones are in procs.py).

Only the public API is used (``kvstore.open``, ``put``, ``transaction``, ``transact``,
``snapshot``, ``scan``, ``statistics``), so the suite keeps working while the engine
changes underneath. Options that newer engines have (``auto_compact``) are used only when
``StoreOptions`` has them. Every workload uses a store of its own (a fresh prefix).
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import random
import time
import uuid
from collections import Counter
from typing import Any

from common import VALUE, Target, closed_loop, open_store, random_values, timed_sequence

import kvstore

BULK_TXN_KEYS = 50_000


def unique(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:10]}"


def options(**wanted: Any) -> kvstore.StoreOptions:
    """StoreOptions with the fields this engine has (unknown ones are dropped)."""
    known = {f.name for f in dataclasses.fields(kvstore.StoreOptions)}
    return kvstore.StoreOptions(**{k: v for k, v in wanted.items() if k in known})


def has_option(name: str) -> bool:
    return name in {f.name for f in dataclasses.fields(kvstore.StoreOptions)}


def requests(db: Any) -> Counter[str]:
    return Counter(db.statistics()["requests"])


def stat_delta(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in ("commits", "transactions_committed", "conflicts", "cas_retries"):
        if key in after:
            out[key] = after[key] - before.get(key, 0)
    req = Counter(after["requests"])
    req.subtract(Counter(before["requests"]))
    out["requests"] = {k: v for k, v in req.items() if v}
    return out


def per(counter: dict[str, int], n: int) -> dict[str, float]:
    return {k: v / n for k, v in counter.items()} if n else {}


# --------------------------------------------------------------------------- commits


async def sequential_commits(target: Target, latency: float, count: int, max_seconds: float) -> dict[str, Any]:
    """`db.put` one after another: commit latency and requests per commit.

    Runs twice when the engine has background compaction: with defaults (requests include
    the compactions the commits triggered) and with auto_compact off (the commit path alone).
    """
    out: dict[str, Any] = {}
    variants = [("default", options())]
    if has_option("auto_compact"):
        variants.append(("no_compaction", options(auto_compact=False)))
    if has_option("inline_segment_bytes"):
        variants.append(("no_inline", options(inline_segment_bytes=0)))
    for label, opts in variants:
        async with open_store(target, unique("seq"), latency, options=opts) as db:
            await db.put(b"warm", VALUE)
            before = db.statistics()
            lat = await timed_sequence(lambda i: db.put(b"seq/%08d" % i, VALUE), count, max_seconds)
            await asyncio.sleep(0)
            after = db.statistics()
        d = stat_delta(before, after)
        n = lat.summary()["n"]
        out[label] = {
            **lat.summary(),
            "commits_per_s": n / sum(lat.samples),
            "delta": d,
            "requests_per_commit": sum(d["requests"].values()) / n,
            "requests_per_commit_by_kind": per(d["requests"], n),
        }
    return out


async def concurrent_writers(
    target: Target, latency: float, writers: int, duration: float, warmup: float = 0.5, **opts: Any
) -> dict[str, Any]:
    """`writers` coroutines in one process, each `db.put` of its own keys, back to back.
    `opts` are StoreOptions fields (dropped when this engine lacks them)."""
    name = unique(f"w{writers}")
    async with open_store(target, name, latency, options=options(**opts)) as db:
        await db.put(b"warm", VALUE)
        r = await closed_loop(
            lambda w, i: db.put(b"w/%03d/%08d" % (w, i), VALUE),
            writers,
            duration,
            warmup=warmup,
            probe=db.statistics,
        )
    d = stat_delta(r.pop("probe_start"), r.pop("probe_end"))
    tx = r["ops"]
    batches = d.get("commits", 0) or 1
    return {
        **r,
        "store": name,
        "delta": d,
        "tx_per_batch": tx / batches,
        "batches_per_s": batches / r["seconds"],
        "requests_per_tx": sum(d["requests"].values()) / tx if tx else None,
    }


async def contended_writers(
    target: Target, latency: float, writers: int, duration: float, hot_keys: int, warmup: float = 0.5
) -> dict[str, Any]:
    """Read-modify-write increments of random keys among `hot_keys`, through `db.transact`."""
    rng = random.Random(1)

    async def increment(tx: Any, key: bytes) -> None:
        old = await tx.get(key)
        tx.put(key, ((int.from_bytes(old, "little") if old else 0) + 1).to_bytes(8, "little"))

    async with open_store(target, unique("hot"), latency) as db:
        await db.put(b"warm", VALUE)
        r = await closed_loop(
            lambda w, i: db.transact(increment, b"hot/%05d" % rng.randrange(hot_keys)),
            writers,
            duration,
            warmup=warmup,
            probe=db.statistics,
        )
    d = stat_delta(r.pop("probe_start"), r.pop("probe_end"))
    return {**r, "delta": d, "conflicts_per_tx": d.get("conflicts", 0) / r["ops"] if r["ops"] else None}


# --------------------------------------------------------------------------- loading


async def load(db: Any, keys: list[bytes], txn_keys: int = BULK_TXN_KEYS) -> dict[str, Any]:
    """Write `keys` (random 100-byte values) in transactions of up to `txn_keys` keys."""
    t0 = time.perf_counter()
    nbytes = 0
    for start in range(0, len(keys), txn_keys):
        chunk = keys[start : start + txn_keys]
        values = random_values(len(chunk))
        async with db.transaction() as tx:
            for k, v in zip(chunk, values, strict=True):
                tx.put(k, v)
        nbytes += sum(map(len, chunk)) + sum(map(len, values))
    elapsed = time.perf_counter() - t0
    return {
        "entries": len(keys),
        "bytes": nbytes,
        "seconds": elapsed,
        "entries_per_s": len(keys) / elapsed,
        "mb_per_s": nbytes / elapsed / 1e6,
    }


def bulk_keys(n: int) -> list[bytes]:
    return [b"bulk/%010d" % i for i in range(n)]


async def bulk_load(target: Target, latency: float, entries: int) -> dict[str, Any]:
    """Many small entries: through `Store.bulk_load` where the engine has it, and through
    big transactions of up to 50k keys (the way before it existed), each into a new store."""
    out: dict[str, Any] = {"entries": entries}
    name = unique("bulk")
    async with open_store(target, name, latency) as db:
        if hasattr(db, "bulk_load"):
            pool = random_values(4096)
            keys = bulk_keys(entries)
            nbytes = sum(map(len, keys)) + entries * len(pool[0])
            before = db.statistics()
            t0 = time.perf_counter()
            await db.bulk_load((k, pool[i & 4095]) for i, k in enumerate(keys))
            elapsed = time.perf_counter() - t0
            out["bulk_load"] = {
                "entries": entries,
                "bytes": nbytes,
                "seconds": elapsed,
                "entries_per_s": entries / elapsed,
                "mb_per_s": nbytes / elapsed / 1e6,
                "delta": stat_delta(before, db.statistics()),
            }
            out["store"] = name  # the memory benchmark scans it
            del keys
    name_tx = unique("bulktx")
    async with open_store(target, name_tx, latency) as db:
        before = db.statistics()
        r = await load(db, bulk_keys(entries))
        out["transactions"] = {**r, "txn_keys": BULK_TXN_KEYS, "delta": stat_delta(before, db.statistics())}
    out.setdefault("store", name_tx)
    best = out.get("bulk_load") or out["transactions"]
    out["method"] = "Store.bulk_load" if "bulk_load" in out else "transactions of 50k keys"
    out["mb_per_s"] = best["mb_per_s"]
    out["entries_per_s"] = best["entries_per_s"]
    return out


# --------------------------------------------------------------------------- reads


async def _get_rate(snap: Any, keys: list[bytes], duration: float) -> dict[str, float]:
    rng = random.Random(2)
    picks = [keys[rng.randrange(len(keys))] for _ in range(4096)]
    n = 0
    t0 = time.perf_counter()
    deadline = t0 + duration
    while True:
        for k in picks[:256]:
            await snap.get(k)
        n += 256
        picks = picks[256:] + picks[:256]
        if time.perf_counter() >= deadline:
            break
    elapsed = time.perf_counter() - t0
    return {"gets": n, "seconds": elapsed, "gets_per_s": n / elapsed}


async def warm_reads(target: Target, latency: float, keys: int, duration: float) -> dict[str, Any]:
    """Point reads through a snapshot once its blocks are cached (no requests at all),
    and store-level `db.get` (one conditional manifest GET each, at max_staleness 0)."""
    name = unique("reads")
    key_list = [b"r/%08d" % i for i in range(keys)]
    out: dict[str, Any] = {}
    async with open_store(target, name, latency) as db:
        await load(db, key_list)
        snap = await db.snapshot()
        for k in key_list:  # warm the cache
            await snap.get(k)
        before = requests(db)
        rounds = [await _get_rate(snap, key_list, duration / 3) for _ in range(3)]
        out["snapshot"] = max(rounds, key=lambda r: r["gets_per_s"])  # best of 3: the CPU is shared
        out["snapshot"]["rounds"] = [round(r["gets_per_s"]) for r in rounds]
        out["snapshot"]["requests"] = dict(requests(db) - before)
        before = requests(db)
        n = 0
        t0 = time.perf_counter()
        deadline = t0 + min(duration, 2.0)
        while time.perf_counter() < deadline:
            await db.get(key_list[n % keys])
            n += 1
        elapsed = time.perf_counter() - t0
        req = requests(db) - before
        out["store_get"] = {
            "gets": n,
            "seconds": elapsed,
            "gets_per_s": n / elapsed,
            "requests_per_get": per(dict(req), n),
        }
    out["keys"] = keys
    return out


async def reads_after_writers(
    target: Target, latency: float, store: str, writers: int, duration: float
) -> dict[str, Any]:
    """Warm point reads in the store a concurrent-writers run left (many small commits)."""
    async with open_store(target, store, latency, read_only=True) as db:
        keys = [b"w/%03d/%08d" % (w, i) for w in range(writers) for i in range(4)]
        snap = await db.snapshot()
        for k in keys:
            await snap.get(k)
        rounds = [await _get_rate(snap, keys, duration / 3) for _ in range(3)]
        r = max(rounds, key=lambda x: x["gets_per_s"])
        r["rounds"] = [round(x["gets_per_s"]) for x in rounds]
        r["version"] = snap.version
    return r


async def cold_reads(
    target: Target, latency: float, samples: int, entries: int, overlay_commits: int
) -> dict[str, Any]:
    """GETs for a point read with an empty cache, on a store with large segments
    (`entries` keys in transactions of 50k), then after `overlay_commits` small commits
    whose keys span the whole range (what a live store looks like)."""
    name = unique("cold")
    keys = bulk_keys(entries)
    out: dict[str, Any] = {"entries": entries}
    async with open_store(target, name, latency) as db:
        await load(db, keys)

    async def measure(label: str) -> None:
        rng = random.Random(3)
        first, second, first_ms = Counter(), Counter(), []
        for _ in range(samples):
            async with open_store(target, name, latency, read_only=True) as db:
                snap = await db.snapshot()
                before = requests(db)
                i = rng.randrange(entries)
                t0 = time.perf_counter()
                await snap.get(keys[i])
                first_ms.append((time.perf_counter() - t0) * 1e3)
                mid = requests(db)
                first.update(mid - before)
                # another key of the same 50k-key transaction (so the same segment, unless
                # compaction merged it) far enough to sit in another block: index cached
                chunk = i - i % BULK_TXN_KEYS
                j = chunk + (i - chunk + BULK_TXN_KEYS // 2) % min(BULK_TXN_KEYS, entries - chunk)
                await snap.get(keys[j])
                second.update(requests(db) - mid)
        out[label] = {
            "samples": samples,
            "gets_first_read": first["GET"] / samples,
            "gets_index_cached": second["GET"] / samples,
            "first_read_ms": sum(first_ms) / len(first_ms),
        }

    await measure("large_segments")
    if overlay_commits:
        async with open_store(target, name, latency) as db:
            rng = random.Random(4)
            for _ in range(overlay_commits):
                async with db.transaction() as tx:
                    for k in sorted(rng.sample(keys, 5)):
                        tx.put(k, VALUE)
        out["overlay_commits"] = overlay_commits
        await measure("after_small_commits")
    return out


async def scans(target: Target, latency: float, entries: int) -> dict[str, Any]:
    """Full scans from cache: one store of large disjoint segments, and one of 8
    overlapping segments (a k-way merge; auto-compaction off where it exists)."""
    out: dict[str, Any] = {"entries": entries}

    async def rate(db: Any) -> dict[str, float]:
        snap = await db.snapshot()
        n = 0
        async for _ in snap.scan():  # first pass fills the cache
            n += 1
        before = requests(db)
        best: dict[str, Any] = {}
        for _ in range(2):  # best of 2: the CPU is shared
            t0 = time.perf_counter()
            m = 0
            async for _ in snap.scan():
                m += 1
            elapsed = time.perf_counter() - t0
            if not best or m / elapsed > best["entries_per_s"]:
                best = {"entries": m, "seconds": elapsed, "entries_per_s": m / elapsed}
        best["requests"] = dict(requests(db) - before)
        return best

    cache = options(cache_bytes=512 * 1024 * 1024)
    async with open_store(target, unique("scan"), latency, options=cache) as db:
        await load(db, bulk_keys(entries))
        out["disjoint_segments"] = await rate(db)
    keys = bulk_keys(entries)
    async with open_store(
        target, unique("scanmerge"), latency, options=options(cache_bytes=512 * 1024 * 1024, auto_compact=False)
    ) as db:
        for part in range(8):
            await load(db, keys[part::8])
        out["merge_8_segments"] = await rate(db)
    return out


def _manifest_sized(db: Any, fallback: bytes) -> bytes:
    """Random bytes as long as the store's encoded manifest (white-box; `fallback` when the
    engine has no such internals)."""
    try:
        from kvstore._manifest import encode_manifest

        return os.urandom(len(encode_manifest(db._engine.manifest)))
    except (ImportError, AttributeError):
        return fallback


async def commit_vs_floor(
    target: Target, latency: float, count: int, max_seconds: float, **opts: Any
) -> dict[str, Any]:
    """Sequential kvstore commits interleaved with the raw floor of one commit, one of each
    in turn, so both see the same machine: other processes' load drifts over a run, and a
    ratio of figures measured minutes apart would measure that drift.

    The floor is the round trips the protocol needs, on the same endpoint with the same
    injected latency: a CAS PUT as large as kvstore's manifest at that moment (the segment
    rides inline in it), preceded by a safe-create PUT of the segment when inlining is off
    or absent from the engine."""
    import uuid as _uuid

    from common import s3_client
    from floor import CAS_BODY, SMALL_BODY

    if target.kind != "s3":
        raise ValueError("commit_vs_floor needs an S3 target")
    run = _uuid.uuid4().hex[:12]
    kv_lat: list[float] = []
    fl_lat: list[float] = []
    async with (
        s3_client(target.endpoint_url) as s3,
        open_store(target, unique("cvf"), latency, options=options(**opts)) as db,
    ):

        async def pause() -> None:
            if latency > 0:
                await asyncio.sleep(latency)

        cas_key = f"cvf/{run}/cas"
        etag = (await s3.put_object(Bucket=target.bucket, Key=cas_key, Body=CAS_BODY))["ETag"]
        await db.put(b"warm", VALUE)
        before = db.statistics()
        deadline = time.perf_counter() + max_seconds
        inline = getattr(db.options, "inline_segment_bytes", 0) > 0
        for i in range(count):
            body = _manifest_sized(db, CAS_BODY)
            t0 = time.perf_counter()
            if not inline:
                await pause()
                await s3.put_object(Bucket=target.bucket, Key=f"cvf/{run}/{i}", Body=SMALL_BODY, IfNoneMatch="*")
            await pause()
            etag = (
                await s3.put_object(
                    Bucket=target.bucket, Key=cas_key, Body=body[:-8] + i.to_bytes(8, "little"), IfMatch=etag
                )
            )["ETag"]
            t1 = time.perf_counter()
            await db.put(b"seq/%08d" % i, VALUE)
            t2 = time.perf_counter()
            fl_lat.append(t1 - t0)
            kv_lat.append(t2 - t1)
            if t2 > deadline:
                break
        d = stat_delta(before, db.statistics())
    n = len(kv_lat)
    kv_sorted, fl_sorted = sorted(kv_lat), sorted(fl_lat)
    return {
        "n": n,
        "kv_mean_ms": sum(kv_lat) / n * 1e3,
        "floor_mean_ms": sum(fl_lat) / n * 1e3,
        "kv_p50_ms": kv_sorted[n // 2] * 1e3,
        "floor_p50_ms": fl_sorted[n // 2] * 1e3,
        "ratio_mean": sum(kv_lat) / sum(fl_lat),
        "floor": "CAS PUT" if inline else "create PUT + CAS PUT",
        "requests_per_commit": sum(d["requests"].values()) / n,
        "delta": d,
        "options": opts,
    }
