"""Distributed writes (`Store.distributed_write`): parts written in other processes,
published by one commit, at most once; what is never committed stays invisible."""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import multiprocessing
import pickle
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pytest
from distributed_workers import pairs, write_part_and_pid
from targets import Target, engine_of, fault_injecting, gc_later

import kvstore
from kvstore._partition_ops import commit_parts_partitions

# The keys of `pairs(i, n)` are k<i:03d>-...: parts 0, 1-2 and 3 fall in three partitions.
SPLIT = [b"k001", b"k003"]


@pytest.fixture(params=[None, SPLIT], ids=["one", "split"])
def split(request: pytest.FixtureRequest) -> list[bytes] | None:
    """Split keys: a store never split, or one of three partitions (workers then route
    their pairs by key, and the commit publishes every partition's share at once)."""
    return request.param  # type: ignore[no-any-return]


async def _keys(db: kvstore.Store) -> dict[bytes, bytes]:
    return {k: v async for k, v in db.scan()}


def _segment_names(db: kvstore.Store, part: kvstore.Part) -> set[str]:
    """The object names of a part's segments (under their partitions, on a partitioned store)."""
    pids = part.partitions or [None] * len(part.segments)
    layouts = [engine_of(db).layout if pid is None else db._router.layout_of(pid) for pid in pids]
    return {layout.segment(s.id) for layout, s in zip(layouts, part.segments, strict=True)}


async def _job_partitions(db: kvstore.Store, job: kvstore.DistributedWrite) -> list[str]:
    """The partitions whose commit log names `job` (once each, or the list shows it twice)."""
    return [pid for pid, e in db._router.engines.items() for r in (await e.refresh()).log if r.job == job.job_id]


async def test_parts_written_by_a_process_pool_commit_together(
    durable_target: Target, split: list[bytes] | None
) -> None:
    async with durable_target.open(split_keys=split) as db:
        await db.put(b"before", b"1")
        job = await db.distributed_write(meta={"source": "pool"})
        loop = asyncio.get_running_loop()
        with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
            written = await asyncio.gather(
                *(loop.run_in_executor(pool, write_part_and_pid, job, i, 300) for i in range(4))
            )
        parts = [part for part, _ in written]
        assert len({pid for _, pid in written}) >= 1
        assert all(p.job_id == job.job_id and p.pairs == 300 and p.segments for p in parts)
        # Written, not committed: nothing is visible, nothing changed.
        version = await db.refresh()
        assert await _keys(db) == {b"before": b"1"}
        committed = await job.commit(parts)
        expected = {k: v for i in range(4) for k, v in pairs(i, 300)}
        assert await _keys(db) == {b"before": b"1", **expected}
        if split is None:
            assert committed == version + 1
            [record] = [c async for c in _history(db, committed)]
            assert record.meta == [{"source": "pool"}] and record.key_count == 1200
        else:
            # Each partition's share prepared once (one decision); every part wrote to its partitions.
            assert sorted(await _job_partitions(db, job)) == sorted(p.pid for p in db._router.pmap.partitions)
            assert all(len(set(p.partitions)) >= 1 for p in parts)


async def _history(db: kvstore.Store, version: int):  # type: ignore[no-untyped-def]
    for info in await db.history():
        if info.version == version:
            yield info


async def test_the_later_part_wins_a_key_both_hold(target: Target, split: list[bytes] | None) -> None:
    async with target.open(split_keys=split and [b"b", b"s"]) as db:
        job = await db.distributed_write()
        first = await job.write_async([(b"a", b"first"), (b"shared", b"first"), (b"z", b"first")], index=0)
        second = await job.write_async([(b"b", b"second"), (b"shared", b"second"), (b"z", b"second")], index=1)
        await job.commit([second, first])  # the order given decides, not the index
        assert await _keys(db) == {b"a": b"first", b"b": b"second", b"shared": b"first", b"z": b"first"}


async def test_a_part_written_twice_commits_once_and_its_twin_is_collected(durable_target: Target) -> None:
    async with durable_target.open() as db:
        job = await db.distributed_write()
        attempt = await job.write_async(pairs(0, 50, "lost-"), index=0)  # a task that died after writing
        retry = await job.write_async(pairs(0, 50), index=0)  # its retry
        other = await job.write_async(pairs(1, 50), index=1)
        version = db.version
        with pytest.raises(kvstore.InvalidPartError, match="two parts of index 0"):
            await job.commit([attempt, retry, other])
        with pytest.raises(kvstore.InvalidPartError, match="two parts of index 1"):
            await job.commit([retry, other, other])
        unindexed = await job.write_async(pairs(2, 5))
        with pytest.raises(kvstore.InvalidPartError, match="the same part was given twice"):
            await job.commit([retry, unindexed, unindexed])
        assert await db.refresh() == version  # refused commits wrote nothing
        await job.commit([retry, other])
        assert await _keys(db) == dict(pairs(0, 50) + pairs(1, 50))
        engine = engine_of(db)
        orphans = {engine.layout.segment(s.id) for s in attempt.segments}
        report = await gc_later(db)
        assert orphans <= set(report.deleted)
        unindexed_names = {engine.layout.segment(s.id) for s in unindexed.segments}
        assert unindexed_names <= set(report.deleted)
        assert await _keys(db) == dict(pairs(0, 50) + pairs(1, 50))


async def test_parts_never_committed_leave_nothing_visible_and_are_collected(
    durable_target: Target, split: list[bytes] | None
) -> None:
    async with durable_target.open(split_keys=split) as db:
        await db.put(b"k", b"v")
        version = db.version
        job = await db.distributed_write()
        part = await job.write_async(pairs(0, 100) + pairs(3, 10))
        assert await db.refresh() == version and await _keys(db) == {b"k": b"v"}
        names = _segment_names(db, part)
        young = await db.gc()  # the default grace period protects a job still running (I7)
        assert names <= set(young.collectable_after) and not names & set(young.deleted)
        report = await gc_later(db)
        assert names <= set(report.deleted)
        assert await _keys(db) == {b"k": b"v"}


async def test_a_job_commits_at_most_once_from_any_copy(durable_target: Target, split: list[bytes] | None) -> None:
    async with durable_target.open(split_keys=split) as db:
        job = await db.distributed_write()
        parts = [await job.write_async(pairs(i, 20), index=i) for i in range(2)]
        copy = pickle.loads(pickle.dumps(job))  # e.g. a driver that restarted from a saved job
        version = await job.commit(parts)
        with pytest.raises(kvstore.JobAlreadyCommittedError, match="already committed"):
            await job.commit(parts)
        with pytest.raises(
            kvstore.JobAlreadyCommittedError, match=f"version {version}" if split is None else "already committed"
        ):
            await copy.commit(parts)  # no live store: it opens one by URL, and the log names the job
        await db.put(b"later", b"x")
        with pytest.raises(kvstore.JobAlreadyCommittedError):
            await pickle.loads(pickle.dumps(job)).commit(parts[:1])
        if split is None:
            assert await db.refresh() == version + 1
        else:
            assert sorted(await _job_partitions(db, job)) == ["0000", "0001"]  # prepared once in each
        assert await _keys(db) == {**dict(pairs(0, 20) + pairs(1, 20)), b"later": b"x"}


async def test_two_drivers_racing_to_commit_one_job_commit_it_once(durable_target: Target) -> None:
    async with durable_target.open() as db, durable_target.open() as other:
        job = await db.distributed_write()
        parts = [await job.write_async(pairs(i, 20), index=i) for i in range(2)]
        version = db.version
        copy = pickle.loads(pickle.dumps(job))
        copy._committer = engine_of(other).commit_parts  # a second driver with its own store
        outcomes = await asyncio.gather(job.commit(parts), copy.commit(parts), return_exceptions=True)
        won = [o for o in outcomes if isinstance(o, int)]
        lost = [o for o in outcomes if isinstance(o, kvstore.JobAlreadyCommittedError)]
        assert won == [version + 1] and len(lost) == 1, outcomes
        assert await db.refresh() == version + 1
        assert [r.job for r in engine_of(db).manifest.log].count(job.job_id) == 1


async def test_two_drivers_racing_on_a_partitioned_store_never_apply_a_job_twice(durable_target: Target) -> None:
    """Each driver prepares with its own transaction; a prepare finding the other's record of
    the job is refused, so at most one decision commits (both may lose the race; then the
    job is not committed, and a third commit publishes it)."""
    async with durable_target.open(split_keys=SPLIT) as db, durable_target.open() as other:
        job = await db.distributed_write()
        parts = [await job.write_async(pairs(i, 20), index=i) for i in range(2)]
        copy = pickle.loads(pickle.dumps(job))
        copy._committer = functools.partial(commit_parts_partitions, other._router, copy.pmap)
        outcomes = await asyncio.gather(job.commit(parts), copy.commit(parts), return_exceptions=True)
        won = [o for o in outcomes if isinstance(o, int)]
        assert len(won) <= 1 and all(isinstance(o, int | kvstore.KvStoreError) for o in outcomes), outcomes
        if not won:
            third = pickle.loads(pickle.dumps(job))
            await third.commit(parts)
        assert await _keys(db) == dict(pairs(0, 20) + pairs(1, 20))
        for engine in db._router.engines.values():
            await engine.resolve()
            ids = [s.id for s in (await engine.refresh()).segments]
            assert len(ids) == len(set(ids))  # no segment of the job added twice


async def test_a_lost_answer_to_the_commit_is_resolved_from_the_log(target: Target, split: list[bytes] | None) -> None:
    made, wrap = fault_injecting()
    options = kvstore.StoreOptions(auto_compact=False)
    async with target.open(wrap_object_store=wrap, split_keys=split, options=options) as db:
        await db.put(b"k", b"v")
        job = await db.distributed_write()
        part = await job.write_async(pairs(0, 10) + pairs(1, 10))
        version = db.version
        made[0].script("put_if_match", "lost_response")  # the commit's CAS (a prepare's, when split)
        committed = await job.commit([part])  # applied once, reported committed
        assert made[0].injected["put_if_match:lost_response"] == 1
        if split is None:
            assert committed == version + 1 and await db.refresh() == version + 1
        else:
            assert db.statistics()["ambiguous_commits_resolved"] == 1
            assert sorted(await _job_partitions(db, job)) == ["0000", "0001"]
        assert await _keys(db) == {b"k": b"v", **dict(pairs(0, 10) + pairs(1, 10))}


async def test_a_part_older_than_i8_allows_is_refused(target: Target) -> None:
    async with target.open() as db:
        job = await db.distributed_write()
        part = await job.write_async(pairs(0, 10), index=3)
        fresh = await job.write_async(pairs(1, 10), index=4)
        old = dataclasses.replace(part, written_at=time.time() - db.options.segment_grace_period / 2 - 60)
        version = db.version
        with pytest.raises(kvstore.PartTooOldError, match=r"part \(index 3\) was written \d+ s ago"):
            await job.commit([fresh, old])
        assert await db.refresh() == version
        assert await job.commit([fresh, part]) == version + 1  # refused, not committed: it may retry


async def test_parts_of_another_job_or_store_are_refused(target: Target) -> None:
    async with target.open() as db:
        job, other = await db.distributed_write(), await db.distributed_write()
        part = await other.write_async(pairs(0, 5))
        with pytest.raises(kvstore.InvalidPartError, match="commit each job's parts with that job"):
            await job.commit([part])
        with pytest.raises(kvstore.InvalidPartError, match="sequence of parts"):
            await job.commit(part)  # type: ignore[arg-type]
        with pytest.raises(kvstore.ValidationError, match="index must be an int"):
            await job.write_async([(b"k", b"v")], index="3")  # type: ignore[arg-type]
        with pytest.raises(kvstore.ValidationError, match="no pairs"):
            await job.commit([await job.write_async([])])


async def test_workers_check_keys_and_values_like_bulk_load(target: Target) -> None:
    async with target.open(options=kvstore.StoreOptions(max_value_bytes=100)) as db:
        job = await db.distributed_write()
        with pytest.raises(kvstore.InvalidKeyError):
            await job.write_async([(b"", b"v")])
        with pytest.raises(kvstore.InvalidValueError):
            await job.write_async([(b"k", b"v" * 101)])
        with pytest.raises(kvstore.InvalidValueError):
            await job.write_async([(b"k", 5)])  # a bytes store takes bytes
        with pytest.raises(kvstore.ValidationError, match="items must be \\(key, value\\) pairs, not list"):
            await job.write_async([[(b"k", b"v")]])  # a list of pairs where a pair belongs
        with pytest.raises(kvstore.InvalidKeyError):
            await db.bulk_load([(b"", b"v")])  # the same errors as bulk_load


async def test_a_msgpack_store_takes_objects(target: Target) -> None:
    async with target.open(values="msgpack") as db:
        job = await db.distributed_write()
        part = await job.write_async([("path/a", {"size": 1}), ("path/b", [1, 2])])
        await job.commit([part])
        assert await db.get("path/a") == {"size": 1} and await db.get("path/b") == [1, 2]


async def test_a_blocking_write_inside_an_event_loop_is_refused(target: Target) -> None:
    async with target.open() as db:
        job = await db.distributed_write()
        with pytest.raises(kvstore.SyncInAsyncError, match="write_async"):
            job.write([(b"k", b"v")])


def test_the_blocking_face(tmp_path: Path) -> None:
    with kvstore.open_sync(tmp_path / "store") as db:
        job = db.distributed_write(meta={"n": 1})
        part = job.write(pairs(0, 10), index=0)
        copy = pickle.loads(pickle.dumps(job))  # what a worker receives
        other = copy.write(pairs(1, 10), index=1)
        version = job.commit([part, other])
        assert version == db.version and len(db) == 20
        with pytest.raises(kvstore.JobAlreadyCommittedError):
            copy.commit([part, other])


def test_each_process_reuses_one_client(tmp_path: Path) -> None:
    with kvstore.open_sync(tmp_path / "store") as db:
        job = db.distributed_write()
        parts = [job.write(pairs(i, 5), index=i) for i in range(3)]
        from kvstore import _distributed

        runtime = _distributed._worker_runtime()
        [(objects, _)] = [client for key, client in runtime._clients.items() if key[0] == job.job.url]
        assert objects.requests["PUT"] >= 3  # every part's segment went through the one client
        job.commit(parts)
        assert len(db) == 15
