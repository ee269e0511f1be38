"""Faults on the wire: a loopback TCP proxy between aiobotocore and LocalStack.

The proxy (`kvstore.testing.netproxy.FaultProxy`) works below the HTTP client,
where connections really drop: it loses answers after LocalStack applied the
request, resets connections, stalls or truncates answers. Whatever the HTTP stack
does about that (aiohttp resends a PUT on a dropped keep-alive connection by
itself) happens for real here.

* lost answers (I5): a committed transaction is never reported as a conflict,
  never applied twice, and compaction and tags neither fail nor duplicate;
* deadlines: an endpoint that stops answering gives `StoreUnavailableError`
  within the total deadline; a stalled or cut answer is retried on a fresh
  connection.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor

import pytest
import workers
from targets import Target, engine_of, gc_later, make_orphans, s3_target

import kvstore
from kvstore.testing.netproxy import FaultProxy, NetRule

pytestmark = pytest.mark.timeout(180)

# Short per-socket and per-request limits: stalls are noticed in about a second.
FAST_S3 = kvstore.S3Options(connect_timeout=2.0, read_timeout=1.0)
FAST_RETRY = kvstore.RetryPolicy(attempt_timeout=2.0, total_timeout=20.0)


@pytest.fixture
def proxy(localstack: str) -> Iterator[FaultProxy]:
    with FaultProxy(upstream=localstack, seed=11) as p:
        yield p


@pytest.fixture
async def wire(proxy: FaultProxy, s3_bucket: tuple[str, str]) -> Target:
    """An S3 store reached through the proxy, with short deadlines."""
    _, bucket = s3_bucket
    target = s3_target(proxy.endpoint_url, bucket)
    return Target(target.kind, target.url, {**target.kwargs, "s3_options": FAST_S3})


def _options(**extra: object) -> kvstore.StoreOptions:
    return kvstore.StoreOptions(retry=FAST_RETRY, **extra)  # type: ignore[arg-type]


async def _increment(tx: kvstore.Transaction) -> int:
    n = int(await tx.get(b"n", b"0")) + 1
    tx.put(b"n", str(n).encode())
    return n


# --------------------------------------------------------------------------- lost answers


async def test_a_single_writer_sees_no_false_conflicts_when_answers_are_lost(wire: Target, proxy: FaultProxy) -> None:
    # On main before the fix: 13 of 60 raised ConflictError, and all 60 had committed.
    async with wire.open(options=_options()) as db:
        proxy.set_rule(NetRule(lose_answer=0.2, methods=frozenset({"PUT"}), path_contains="manifest"))
        # The first three CAS answers are lost whatever the draws; the rule adds more.
        proxy.script(
            "lose_answer",
            "pass",
            "lose_answer",
            "pass",
            "lose_answer",
            methods=frozenset({"PUT"}),
            path_contains="manifest",
        )
        conflicts = 0
        for _ in range(60):
            try:
                async with db.transaction() as tx:
                    await _increment(tx)
            except kvstore.ConflictError:
                conflicts += 1
        proxy.set_rule(NetRule())
        assert proxy.stats.faults["lose_answer"] >= 3
        assert conflicts == 0
        assert await db.get(b"n") == b"60"


async def test_the_http_client_never_resends_on_its_own(wire: Target, proxy: FaultProxy) -> None:
    """Every request that reaches the server is one kvstore's retry layer counted:
    aiohttp's transparent resend of a PUT on a dropped connection is off."""
    async with wire.open(options=_options()) as db:
        await db.put(b"warm", b"up")  # a kept-alive connection now exists
        proxy.reset_stats()
        before = dict(db.statistics()["requests"])
        proxy.script("lose_answer", "lose_answer", methods=frozenset({"PUT"}))
        for i in range(4):
            await db.put(f"k{i}", b"v")
        sent = {k: v - before.get(k, 0) for k, v in db.statistics()["requests"].items()}
        assert proxy.stats.faults["lose_answer"] == 2
        assert proxy.stats.forwarded["PUT"] == sent["PUT"]
        assert db.statistics()["conflicts"] == 0
        assert [k async for k, _ in db.scan(prefix=b"k")] == [b"k0", b"k1", b"k2", b"k3"]


async def test_transact_counters_from_several_processes_are_exact(wire: Target, proxy: FaultProxy) -> None:
    # On main before the fix: 60 acknowledged increments left the counter at 70.
    async with wire.open(values="msgpack", options=_options()):
        pass
    proxy.set_rule(NetRule(lose_answer=0.15, methods=frozenset({"PUT"})))
    proxy.script("lose_answer", "pass", "lose_answer", "pass", "lose_answer", methods=frozenset({"PUT"}))
    processes, tasks, increments, counters = 3, 3, 6, 2
    loop = asyncio.get_running_loop()
    with ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("spawn")) as pool:
        acked_per_worker = await asyncio.gather(
            *(
                loop.run_in_executor(
                    pool,
                    workers.count,
                    wire.url,
                    {**wire.kwargs, "options": _options()},
                    w,
                    tasks,
                    increments,
                    counters,
                )
                for w in range(processes)
            )
        )
    proxy.set_rule(NetRule())
    assert proxy.stats.faults["lose_answer"] >= 3
    async with wire.open(values="msgpack", options=_options()) as db:
        for c in range(counters):
            key = f"counter/{c}"
            assert await db.get(key) == sum(a[key] for a in acked_per_worker)
    assert sum(sum(a.values()) for a in acked_per_worker) == processes * tasks * increments


async def test_compaction_and_tags_survive_lost_answers(wire: Target, proxy: FaultProxy) -> None:
    options = _options(auto_compact=False, inline_segment_bytes=0)
    async with wire.open(options=options) as db:
        for i in range(12):
            await db.put(f"k{i:02d}", f"v{i}".encode())
        proxy.set_rule(NetRule(lose_answer=0.5, methods=frozenset({"PUT"})))
        proxy.script("lose_answer", methods=frozenset({"PUT"}))  # the merged segment's create
        proxy.script("lose_answer", methods=frozenset({"PUT"}), path_contains="manifest")  # its CAS
        results = await db.compact(full=True)
        tag = await db.tag("release")
        proxy.set_rule(NetRule())
        assert proxy.stats.faults["lose_answer"] >= 2
        assert len(results) == 1 and results[0].entries_out == 12
        assert [c.kind for c in await db.history()].count("compaction") == 1
        assert [t.name for t in await db.tags()] == ["release"]
        assert tag.version == db.version
        assert (await db.describe()).segments == 1
        assert [k async for k, _ in db.scan()] == [f"k{i:02d}".encode() for i in range(12)]


async def test_gc_deletes_in_batches_of_1000_and_retries_a_lost_batch(wire: Target, proxy: FaultProxy) -> None:
    async with wire.open(options=_options(auto_compact=False)) as db:
        await db.put(b"a", b"1")
        orphans = await make_orphans(engine_of(db), 1500)
        proxy.reset_stats()
        proxy.script("lose_answer", methods=frozenset({"POST"}), path_contains="?delete")
        report = await gc_later(db)
        assert proxy.stats.faults["lose_answer"] == 1
        deletes = [e for e in proxy.history if e.method == "POST" and "?delete" in e.target]
        assert len(deletes) == 2 + 1  # 1500 names in two DeleteObjects, one resent
        assert set(report.deleted) == orphans
        segments = engine_of(db).layout.segments_prefix
        assert not orphans & {info.name async for info in engine_of(db).objects.list(segments)}
        assert await db.get(b"a") == b"1"


# --------------------------------------------------------------------------- deadlines


async def test_an_endpoint_that_stops_answering_is_reported_within_the_deadline(
    wire: Target, proxy: FaultProxy
) -> None:
    retry = kvstore.RetryPolicy(attempt_timeout=1.0, total_timeout=4.0)
    async with wire.open(options=kvstore.StoreOptions(retry=retry)) as db:
        await db.put(b"k", b"v")
        proxy.set_rule(NetRule(swallow=1.0))
        started = time.monotonic()
        with pytest.raises(kvstore.StoreUnavailableError, match="deadline"):
            await db.get(b"k")
        elapsed = time.monotonic() - started
        proxy.set_rule(NetRule())
        assert proxy.stats.faults["swallow"] >= 2  # retried, each on a fresh connection
        assert 3.0 <= elapsed <= 4.0 + 2.0  # the total deadline, not read_timeout x attempts
        assert await db.get(b"k") == b"v"  # and it recovers


@pytest.mark.parametrize("fault", ["stop_after_headers", "stop_mid_body", "truncate", "reset", "trickle"])
async def test_stalled_or_cut_answers_are_retried_on_a_fresh_connection(
    wire: Target, proxy: FaultProxy, fault: str
) -> None:
    async with wire.open(options=_options(auto_compact=False)) as db:
        value = bytes(range(256)) * 64
        await db.put(b"k", value)
        db_version = db.version
        proxy.script(fault, methods=frozenset({"GET"}))
        snapshot_value = await (await db.snapshot()).get(b"k")
        proxy.script(fault, methods=frozenset({"PUT"}))
        await db.put(b"k2", b"after")
        assert proxy.stats.faults[fault] == 2
        assert snapshot_value == value
        assert await db.get(b"k2") == b"after"
        assert db.version == db_version + 1  # applied once


# --------------------------------------------------------------------------- everything at once


async def test_core_operations_through_a_faulty_wire(wire: Target, proxy: FaultProxy) -> None:
    """Every core operation, with answers lost, connections reset and answers cut or
    stalled on the wire: each completes (retried underneath), with exactly its effect."""
    proxy.set_rule(NetRule(lose_answer=0.08, reset=0.04, truncate=0.04, stop_mid_body=0.01))
    kinds = ("lose_answer", "reset", "truncate", "stop_mid_body")
    proxy.script(*kinds, methods=frozenset({"PUT"}))  # each kind at least once, whatever the draws
    proxy.script(*kinds, methods=frozenset({"GET"}))
    options = _options(auto_compact=False, inline_segment_bytes=256)
    async with wire.open(values="msgpack", options=options) as db:
        for i in range(20):
            await db.put(f"k{i:02d}", {"n": i, "blob": "x" * (i * 40)})  # inline and object segments
        await db.delete("k00")
        await db.transact(lambda tx: tx.put("k01", {"n": 100}))
        before = await db.snapshot()
        async with db.transaction() as tx:
            moved = await tx.get("k02")
            tx.put("k02-moved", moved)
            tx.delete("k02")
        await db.bulk_load((f"bulk/{i:04d}", i) for i in range(500))
        await db.tag("v1")
        assert len(await db.compact(full=True)) == 1
        await db.put("k03", "after the tag")
        report = await db.verify()
        keys = [k async for k, _ in db.scan()]
        tagged = await db.snapshot(tag="v1")
        assert await tagged.get("k03") == {"n": 3, "blob": "x" * 120}
        assert await before.get("k02") == {"n": 2, "blob": "x" * 80}
    assert all(proxy.stats.faults[kind] >= 2 for kind in kinds), proxy.stats.faults
    assert report.ok, report.damaged
    expected = sorted(
        [f"k{i:02d}".encode() for i in range(1, 20) if i != 2]
        + [b"k02-moved"]
        + [f"bulk/{i:04d}".encode() for i in range(500)]
    )
    assert keys == expected
    async with wire.open(values="msgpack", options=options) as db:
        assert await db.get("k01") == {"n": 100}
        assert await db.get("k03") == "after the tag"
        assert [t.name for t in await db.tags()] == ["v1"]
