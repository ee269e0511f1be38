"""Compaction in committed steps (issue 21, item 1): a merge commits a bounded share of
its key ranges at a time, the inputs clipped above what is merged, so no compaction is
refused for its length, and a compactor killed halfway loses at most the step it was in."""

from __future__ import annotations

import asyncio
import dataclasses
import random
from collections.abc import Callable, Sequence
from pathlib import Path

import msgpack
import pytest
from targets import Target, engine_of, fault_injecting, gc_later

import kvstore
from kvstore._compact import SubCompaction, SubCompactionResult, SubCompactionRunner
from kvstore._distributed import StoreAddress, compact_range
from kvstore._envelope import unseal
from kvstore._manifest import Manifest, SegmentRef, _segment_row, decode_manifest, encode_manifest
from kvstore.testing.faults import SimulatedCrash

KiB = 1024
# Tiny segments and a budget that runs one key range at a time: a step is 4 segments'
# worth of input (64 KiB), so the ~400 KB loaded below compacts in several steps.
OPTIONS = kvstore.StoreOptions(
    auto_compact=False,
    target_segment_bytes=16 * KiB,
    compaction_memory_bytes=1024 * KiB,
    history_versions=0,
    retry=kvstore.RetryPolicy(max_attempts=3, base_delay=0.001, max_delay=0.005),
)


async def _load(db: kvstore.Store) -> dict[bytes, bytes]:
    """Four loads of interleaved random keys (every source overlaps every other), some
    keys written again and some deleted: ~400 KB of input to merge."""
    rng = random.Random(21)
    expected: dict[bytes, bytes] = {}
    for n in range(4):
        items = [(b"k%05d" % rng.randrange(6000), rng.randbytes(90) + b"%02d" % n) for _ in range(1100)]
        await db.bulk_load(items)
        expected.update(items)
    async with db.transaction() as txn:
        for key in sorted(expected)[::50]:
            txn.delete(key)
            del expected[key]
    return expected


async def _state(db: kvstore.Store) -> dict[bytes, bytes]:
    return {k: v async for k, v in db.scan()}


async def _reads_whole(db: kvstore.Store, expected: dict[bytes, bytes]) -> None:
    """Every key once, forwards and backwards, and point reads of present and absent keys."""
    assert await _state(db) == expected
    assert [k async for k, _ in db.scan(reverse=True)] == sorted(expected, reverse=True)
    keys = sorted(expected)
    for key in keys[::97] + [b"k%05d" % i for i in range(0, 6000, 501)]:
        assert await db.get(key) == expected.get(key)
    assert await db.get_many(keys[::13]) == [expected[k] for k in keys[::13]]
    middle = keys[len(keys) // 2]
    assert [k async for k, _ in db.scan(start=middle, limit=5)] == keys[len(keys) // 2 :][:5]


def _clipped(db: kvstore.Store) -> list[SegmentRef]:
    return [r for r in engine_of(db).manifest.segments if r.clipped]


async def test_a_compaction_commits_in_steps(target: Target) -> None:
    async with target.open(options=OPTIONS) as db:
        expected = await _load(db)
        before = db.version
        [result] = await db.compact(full=True)
        assert result.steps >= 4 and db.version == before + result.steps
        records = [r for r in engine_of(db).manifest.log if r.meta and "compaction" in r.meta]
        assert [r.meta["compaction"]["step"] for r in records] == list(range(1, result.steps + 1))
        assert [r.meta["compaction"]["done"] for r in records] == [False] * (result.steps - 1) + [True]
        assert len(engine_of(db).manifest.segments) == 1 and not _clipped(db)
        await _reads_whole(db, expected)


async def test_a_cluster_runs_one_key_range_per_worker_in_each_step(tmp_path: Path) -> None:
    """A runner as wide as a cluster (`Store.compact(client=...)`: one range per worker)
    gets steps of that many ranges, where this process alone runs one at a time: the
    cluster's workers all work in every step."""
    url = f"file://{tmp_path}"
    async with kvstore.open(url, options=OPTIONS, create=True) as db:
        expected = await _load(db)
        address = StoreAddress(url, kvstore.S3Options(), OPTIONS)
        batches: list[int] = []

        async def on_workers(subs: Sequence[SubCompaction]) -> list[SubCompactionResult]:
            batches.append(len(subs))
            return await asyncio.to_thread(lambda: [compact_range(address, sub) for sub in subs])

        [result] = await engine_of(db).compact(full=True, run=SubCompactionRunner(on_workers, width=2))
        assert result.sub_compactions >= 4 and max(batches) == 2  # alone: one range per step
        assert result.steps == len(batches) == -(-result.sub_compactions // 2)
        await _reads_whole(db, expected)


@pytest.mark.parametrize("steps_done", [1, 2])  # of at least 4 (test_a_compaction_commits_in_steps)
@pytest.mark.parametrize("fault", ["crash", "crash_after_apply"])
async def test_a_compactor_killed_halfway_loses_at_most_its_step(target: Target, steps_done: int, fault: str) -> None:
    async with target.open(options=OPTIONS) as db:
        expected = await _load(db)
        before = db.version
    made, wrap = fault_injecting()
    async with target.open(options=OPTIONS, wrap_object_store=wrap) as db:
        made[0].script("put_if_match", *(["pass"] * steps_done), fault)  # type: ignore[arg-type]
        with pytest.raises(SimulatedCrash):
            await db.compact(full=True)
    applied = steps_done + (fault == "crash_after_apply")
    async with target.open(options=OPTIONS) as db:
        assert db.version == before + applied
        # Keys below the last committed step's end come from its output run, the others
        # from the clipped inputs: each key once, at every step boundary.
        assert _clipped(db)
        await _reads_whole(db, expected)
        assert (await db.verify()).ok
        [result] = await db.compact(full=True)  # the next compaction merges what is left
        assert not _clipped(db) and len(engine_of(db).manifest.segments) == 1
        assert result.steps >= 1
        await _reads_whole(db, expected)
        await gc_later(db)  # the dead compactor's unfinished outputs and old run objects go
        assert (await db.verify()).ok
        await _reads_whole(db, expected)


async def test_a_steps_lost_answer_is_resolved_from_the_log(target: Target) -> None:
    async with target.open(options=OPTIONS) as db:
        expected = await _load(db)
        before = db.version
    made, wrap = fault_injecting()
    async with target.open(options=OPTIONS, wrap_object_store=wrap) as db:
        made[0].script("put_if_match", "pass", "lost_response", "pass", "lost_response")  # type: ignore[arg-type]
        [result] = await db.compact(full=True)
        assert made[0].injected["put_if_match:lost_response"] == 2
        assert db.version == before + result.steps  # each step applied once
        await _reads_whole(db, expected)


async def test_readers_during_a_compaction_in_steps_see_every_key_once(target: Target) -> None:
    async with target.open(options=OPTIONS) as db:
        expected = await _load(db)
        keys = sorted(expected)
        compaction = asyncio.create_task(db.compact(full=True))
        reads = 0

        async def reader(seed: int) -> None:
            nonlocal reads
            rng = random.Random(seed)
            while not compaction.done():
                start = rng.choice(keys)
                got = [k async for k, _ in db.scan(start=start, limit=200)]
                at = keys.index(start)
                assert got == keys[at : at + 200]
                key = rng.choice(keys)
                assert await db.get(key) == expected[key]
                reads += 1

        await asyncio.gather(compaction, *(reader(n) for n in range(8)))
        [result] = compaction.result()
        assert result.steps >= 4 and reads >= 8
        await _reads_whole(db, expected)


class _Clock:
    """A monotonic clock that moves `per_call` seconds on each reading, and from the
    moment the store reaches version `slow_from` on, `slow` seconds on each reading."""

    def __init__(self, db: kvstore.Store, per_call: float, slow_from: int | None = None, slow: float = 0.0) -> None:
        self.now = 1000.0
        self._db, self._per_call, self._slow_from, self._slow = db, per_call, slow_from, slow

    def __call__(self) -> float:
        slow = self._slow_from is not None and engine_of(self._db).manifest.version >= self._slow_from
        self.now += self._slow if slow else self._per_call
        return self.now


def _compactor_clock(db: kvstore.Store, clock: Callable[[], float]) -> None:
    engine_of(db)._compactor.clock = clock  # white-box: what a step's age is measured with


async def test_only_a_step_longer_than_half_the_grace_period_is_refused(target: Target) -> None:
    options = dataclasses.replace(OPTIONS, segment_grace_period=20.0, max_transaction_age=5.0)
    async with target.open(options=options) as db:
        expected = await _load(db)
        # Every reading of the clock moves it 3 s: a step reads it two or three times
        # (under half the grace period, 10 s), the whole compaction many more: it takes
        # longer than the grace period itself, which before steps was refused.
        clock = _Clock(db, per_call=3.0)
        _compactor_clock(db, clock)
        [result] = await db.compact(full=True)
        assert result.steps >= 4 and clock.now - 1000.0 > 20.0
        await _reads_whole(db, expected)
    async with target.open(options=options) as db:
        expected = await _load(db)
        before = db.version
        # Once two steps have committed, each reading moves the clock 11 s: the third
        # step is abandoned; the two before it stay committed, and reads are whole.
        _compactor_clock(db, _Clock(db, per_call=0.0, slow_from=before + 2, slow=11.0))
        with pytest.raises(kvstore.CompactionTooSlowError, match="steps committed before it stay"):
            await db.compact(full=True)
        assert db.version == before + 2 and _clipped(db)
        await _reads_whole(db, expected)


def test_a_clipped_row_makes_the_manifest_format_4() -> None:
    clipped = SegmentRef("s", b"m", b"z", 10, 1000, 1, 3, None, 1, None, 0, True)
    # docs/format.md, "Clipped row"
    assert msgpack.packb(_segment_row(clipped), use_bin_type=True).hex() == "9ca173c4016dc4017a0acd03e80103c001c000c3"
    plain = Manifest("id", 7, 0.0, segments=(SegmentRef("t", b"a", b"c", 1, 10, 2, 2),))
    assert encode_manifest(plain)[4] == 3  # as before: readers of format 3 read it
    data = encode_manifest(Manifest("id", 7, 0.0, segments=(clipped,)))
    assert data[4] == 4
    assert decode_manifest(data, "manifest").segments == (clipped,)
    with pytest.raises(kvstore.UnsupportedFormatError, match="format 4, newer than this kvstore's 3"):
        unseal(data, b"KVMF", 3, "manifest", "manifest")  # what a reader before clipping says
