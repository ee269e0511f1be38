"""bulk_load on a partitioned store (issue 18, item 4): every partition's share is written
as its sorted run, then all of them are published at once through the cross-partition
protocol (an intent per partition carrying its run, one decision), so a reader sees every
share of a load or none; a crash, a lost answer or GC leave nothing half applied."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import crash_workers
import pytest
import two_phase_workers as w
from targets import Target, engines_of, fault_injecting, gc_later

import kvstore
from kvstore import RetryPolicy, StoreOptions
from kvstore import _two_phase as two_phase
from kvstore._engine import Engine
from kvstore._manifest import SegmentRef
from kvstore.testing.faults import FaultInjectingStore

CHUNK = 64 * 1024  # small chunks: the last partition's share is many overlapping chunks, merged


async def _loads_seen(db: kvstore.Store) -> tuple[set[bytes], int]:
    """The loads one snapshot of every partition shows (the prefix of each value), and its pair count."""
    snap = await db.snapshot()
    pairs = [v async for _, v in snap.scan()]
    return {v.split(b".")[0] for v in pairs}, len(pairs)


async def test_a_reader_sees_every_partitions_share_of_a_load_or_none(durable_target: Target) -> None:
    """Loads 1..4 rewrite every key of load 0 (all four partitions) while a reader takes
    snapshots of all partitions over and over: each shows exactly one load, whole."""
    async with durable_target.open(split_keys=w.BULK_SPLITS) as db:
        total = len(w.bulk_pairs(0))
        await db.bulk_load(w.bulk_pairs(0), chunk_bytes=CHUNK)
        assert await _loads_seen(db) == ({b"0"}, total)

        async def loads() -> None:
            for i in range(1, 5):
                await db.bulk_load(w.bulk_pairs(i), chunk_bytes=CHUNK)

        loading = asyncio.ensure_future(loads())
        snapshots, seen_loads = 0, set()
        try:
            while not loading.done():
                seen, count = await _loads_seen(db)
                assert len(seen) == 1 and count == total, (seen, count)  # one load, every partition's share
                snapshots += 1
                seen_loads |= seen
        finally:
            await loading
        assert await _loads_seen(db) == ({b"4"}, total)
        assert len(seen_loads) >= 2, (snapshots, seen_loads)  # the reader really ran during the loads
        # The runs become ordinary segments: no intent left once resolved.
        for engine in engines_of(db):
            await engine.background_idle()
            await engine.resolve()
            assert not (await engine.refresh()).intents


async def test_a_load_within_one_partition_commits_once_without_a_decision(durable_target: Target) -> None:
    """A store never split, and a load falling in one partition: today's one CAS, no decision object."""
    async with durable_target.open(split_keys=w.BULK_SPLITS) as db:
        before = [p.version for p in await db.partitions()]
        await db.bulk_load([(b"a1", b"v"), (b"a2", b"w")])
        after = [p.version for p in await db.partitions()]
        assert [a - b for a, b in zip(after, before, strict=True)] == [1, 0, 0, 0]
        first = engines_of(db)[0]
        assert [o async for o in first.objects.list(db._router.root.prefix + "txn/")] == []
        assert await db.get_many([b"a1", b"a2"]) == [b"v", b"w"]


async def test_a_load_across_partitions_makes_one_decision(durable_target: Target) -> None:
    async with durable_target.open(split_keys=w.BULK_SPLITS) as db:
        before = [p.version for p in await db.partitions()]
        await db.bulk_load(w.bulk_pairs(7, small=3, big=3))
        after = [p.version for p in await db.partitions()]
        assert all(a > b for a, b in zip(after, before, strict=True))
        first = engines_of(db)[0]
        decisions = [o.name async for o in first.objects.list(db._router.root.prefix + "txn/")]
        assert len(decisions) == 1
        assert await db._router.decisions().outcome(decisions[0]) == "committed"
        assert await _loads_seen(db) == ({b"7"}, 12)


async def _object_names(engine: Engine, ref: SegmentRef) -> set[str]:
    """The objects of one source: a segment, or a run object and its segments."""
    parts = await engine.sources.parts(ref)
    names = {engine.layout.segment(p.id) for p in parts}
    return names | ({engine.layout.run(ref.id)} if ref.is_run else set())


@pytest.mark.parametrize("step", ["prepared", "decided"])
async def test_a_loader_killed_after_its_prepares(durable_target: Target, tmp_path: Path, step: str) -> None:
    """SIGKILL a process bulk-loading into 4 partitions once every prepare landed, before
    (`prepared`) or after (`decided`) its decision: undecided, the load is invisible, its
    runs are kept by GC, and once a writer aborts it after intent_timeout its runs are
    garbage that GC collects; decided, it is visible whole, and stays so when resolved."""
    target = durable_target
    options = StoreOptions(intent_timeout=0.2, auto_compact=False)
    async with target.open(split_keys=w.BULK_SPLITS, options=options) as db:
        await db.bulk_load(w.bulk_pairs(0), chunk_bytes=CHUNK)
    await crash_workers.kill_when_stalled(
        w.bulk_load_then_stall, target.url, target.kwargs, step, marker=tmp_path / "stalled"
    )
    total = len(w.bulk_pairs(0))
    async with target.open(options=options) as db:
        engines = engines_of(db)
        intents = [(e, i) for e in engines for i in (await e.refresh()).intents]
        assert len(intents) == 4 and len({i.decision for _, i in intents}) == 1
        loaded: set[str] = set()
        for engine, intent in intents:
            loaded |= await _object_names(engine, intent.segment)
        expected = {b"0"} if step == "prepared" else {b"1"}
        assert await _loads_seen(db) == (expected, total)
        report = await gc_later(db)
        assert not loaded & set(report.deleted)  # an intent's run is kept, decided or not
        if step == "prepared":
            await asyncio.sleep(0.3)  # past intent_timeout: the next writer meeting them aborts them
        for prefix in w.BULK_PREFIXES:
            await db.put(f"{prefix}-after".encode(), b"x")  # rides each partition's batch: resolves
        assert [len(e.manifest.intents) for e in engines] == [0, 0, 0, 0]
        assert await _loads_seen(db) == (expected | {b"x"}, total + 4)
        report = await gc_later(db)
        if step == "prepared":
            assert loaded <= set(report.deleted)  # the aborted load's runs were garbage
        else:
            assert not loaded & set(report.deleted)
        assert await _loads_seen(db) == (expected | {b"x"}, total + 4)


class _LoseDecisionAnswer(FaultInjectingStore):
    """Loses the answer to the first decision create (it is applied)."""

    async def put_if_absent(self, name: str, data: bytes) -> str:
        if "txn/" in name and not self.injected["put_if_absent:lost_response"]:
            self.script("put_if_absent", "lost_response")
        return await super().put_if_absent(name, data)


async def test_lost_answers_to_a_prepare_and_the_decision_are_decided_by_evidence(target: Target) -> None:
    """The first prepare CAS's answer and the decision create's answer are lost (both
    applied): the load is reported committed, applied once in every partition."""
    made: list[FaultInjectingStore] = []

    def wrap(inner: object) -> FaultInjectingStore:
        made.append(_LoseDecisionAnswer(inner))  # type: ignore[arg-type]
        return made[-1]

    options = StoreOptions(auto_compact=False)
    async with target.open(split_keys=w.BULK_SPLITS, options=options, wrap_object_store=wrap) as db:
        await db.bulk_load(w.bulk_pairs(0, small=5, big=5))
        [store] = made
        for engine in engines_of(db):
            await engine.background_idle()  # the first load's resolves: the next CAS is a prepare
        store.script("put_if_match", "lost_response")
        await db.bulk_load(w.bulk_pairs(1, small=5, big=5))
        assert store.injected["put_if_match:lost_response"] == 1
        assert store.injected["put_if_absent:lost_response"] == 1
        stats = db.statistics()
        assert stats["ambiguous_commits_resolved"] >= 1
        assert stats["ambiguous_creates_resolved"] >= 1
        assert await _loads_seen(db) == ({b"1"}, 20)
        for engine in engines_of(db):
            await engine.resolve()
            ids = [s.id for s in (await engine.refresh()).segments]
            assert len(ids) == len(set(ids)) and not engine.manifest.intents  # applied once


async def test_a_load_meeting_an_undecided_intent_waits_for_it(target: Target) -> None:
    """A cross-partition transaction prepared over the load's keys and then abandoned holds
    them until aborted (intent_timeout): the load's publish is retried, then commits."""
    options = StoreOptions(intent_timeout=0.3, auto_compact=False, retry=RetryPolicy(max_attempts=2, base_delay=0.001))
    made, wrap = fault_injecting()
    async with target.open(split_keys=w.BULK_SPLITS, options=options, wrap_object_store=wrap) as db:
        # A transaction writing a and u whose decision can be neither created nor read.
        tx = db.transaction()
        tx.put(b"a00001", b"tx.")
        tx.put(b"u00001", b"tx.")
        made[0].script("put_if_absent", *(("timeout",) * 20))
        made[0].script("get", *(("error",) * 20))
        with pytest.raises(kvstore.CommitOutcomeUnknownError):
            await tx.commit()
    async with target.open(options=options) as db:
        assert sum(len(e.manifest.intents) for e in engines_of(db)) == 2
        started = time.monotonic()
        await db.bulk_load(w.bulk_pairs(1, small=5, big=5))
        assert time.monotonic() - started < 2 * options.intent_timeout + 10
        assert await _loads_seen(db) == ({b"1"}, 20)


async def test_a_job_recommitted_after_its_coordinator_died_undecided_commits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A distributed write's commit dies after its shares were prepared and before its
    decision: committing the job again (the documented recovery) settles the undecided
    attempt (aborts it) and commits the job, which then reads whole; it used to report
    the job "already committed" while its prepares were undecided, and they were later
    aborted: the job never showed."""
    options = kvstore.StoreOptions(intent_timeout=0.3, auto_compact=False)
    async with kvstore.open(f"file://{tmp_path}/s", split_keys=[b"m"], options=options, create=True) as db:
        job = await db.distributed_write()
        part = await job.write_async([(b"a1", b"v"), (b"z1", b"v")])
        real = two_phase.Decisions.decide
        stalled = asyncio.Event()

        async def decide(self: two_phase.Decisions, name: str, outcome: Any, txn_id: bytes, participants: Any) -> Any:
            if outcome == "committed" and not stalled.is_set():
                stalled.set()
                await asyncio.Event().wait()  # the coordinator dies here (cancelled below)
            return await real(self, name, outcome, txn_id, participants)

        monkeypatch.setattr(two_phase.Decisions, "decide", decide)
        first = asyncio.ensure_future(job.commit([part]))
        await asyncio.wait_for(stalled.wait(), 30)
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first
        version = await asyncio.wait_for(job.commit([part]), 30)
        assert version > 0
        assert await db.get_many([b"a1", b"z1"]) == [b"v", b"v"]
        with pytest.raises(kvstore.JobAlreadyCommittedError):
            await job.commit([part])


async def test_a_dead_attempts_share_landing_after_the_recovery_read_it_does_not_count_as_committed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Review 4, finding 2: the first attempt's coordinator dies before its decision, and its
    prepare in partition B lands only after the recovery attempt read B. The committer
    took that share for the job committed (JobAlreadyCommittedError: "start a new job"),
    so both attempts ended aborted and the job never showed. Now an undecided share is a
    conflict, the retry settles it, and the recovery commits the job."""
    options = kvstore.StoreOptions(intent_timeout=0.3, auto_compact=False)
    async with kvstore.open(f"file://{tmp_path}/s", split_keys=[b"m"], options=options, create=True) as db:
        job = await db.distributed_write()
        part = await job.write_async([(b"a1", b"v"), (b"z1", b"v")])
        real_prepare, real_decide = Engine.prepare, two_phase.Decisions.decide
        first: list[bytes] = []  # the first attempt's transaction id
        first_in_a = asyncio.Event()  # its prepare in A landed
        recovery_in_b = asyncio.Event()  # the recovery read B and is about to prepare there
        first_in_b = asyncio.Event()  # the first attempt's prepare in B landed

        async def prepare(self: Engine, request: Any, decision: str) -> int:
            if not first:
                first.append(request.txn_id)
            in_b = request.segments[0].min_key >= b"m"
            if request.txn_id == first[0]:
                if in_b:
                    await asyncio.wait_for(recovery_in_b.wait(), 30)
                try:
                    return await real_prepare(self, request, decision)
                finally:
                    (first_in_b if in_b else first_in_a).set()
            if in_b and not first_in_b.is_set():
                recovery_in_b.set()
                await asyncio.wait_for(first_in_b.wait(), 30)
            return await real_prepare(self, request, decision)

        async def decide(self: two_phase.Decisions, name: str, outcome: Any, txn_id: bytes, participants: Any) -> Any:
            if outcome == "committed" and txn_id == first[0]:
                await asyncio.Event().wait()  # the first coordinator dies here (cancelled below)
            return await real_decide(self, name, outcome, txn_id, participants)

        monkeypatch.setattr(Engine, "prepare", prepare)
        monkeypatch.setattr(two_phase.Decisions, "decide", decide)
        dead = asyncio.ensure_future(job.commit([part]))
        await asyncio.wait_for(first_in_a.wait(), 30)
        version = await asyncio.wait_for(job.commit([part]), 30)
        assert version > 0 and first_in_b.is_set()
        dead.cancel()
        with pytest.raises(asyncio.CancelledError):
            await dead
        assert await db.get_many([b"a1", b"z1"]) == [b"v", b"v"]
        with pytest.raises(kvstore.JobAlreadyCommittedError):
            await job.commit([part])


async def test_a_load_through_a_stale_map_fails_at_once_and_the_next_one_follows_the_split(tmp_path: Path) -> None:
    """Handle B's map predates A's split: B's load across partitions is refused with
    PartitionMovedError, nothing of it visible (its shares were written for a partition
    that takes no commits), and B's next load routes by the new map and commits; the
    first used to be retried until its deadline, and every later load failed the same way."""
    url = f"file://{tmp_path}/s"
    async with (
        kvstore.open(url, split_keys=[b"m"], create=True) as a,
        kvstore.open(url) as b,
    ):
        await a.split(b"g")
        with pytest.raises(kvstore.PartitionMovedError):
            await asyncio.wait_for(b.bulk_load([(b"a", b"1"), (b"z", b"1")]), 30)
        assert await a.get_many([b"a", b"z"]) == [None, None]
        await asyncio.wait_for(b.bulk_load([(b"a", b"2"), (b"z", b"2")]), 30)
        assert await a.get_many([b"a", b"z"]) == [b"2", b"2"]
