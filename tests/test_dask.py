"""kvstore.dask on a real Dask cluster: LocalCluster with two worker processes, one of
them SIGKILLed in the middle of a job."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import time
from pathlib import Path

import dask
import dask.bag
import dask.dataframe
import msgpack
import pandas as pd
import pytest
from distributed import Client, KilledWorker
from distributed_workers import pairs, stall_at
from targets import Target, engine_of, engines_of

import kvstore
import kvstore.dask

DEADLINE = 120.0  # seconds any wait of these tests may take


@pytest.fixture
def healthy(dask_client: Client) -> Client:
    """The cluster with both workers up (a test before may have killed one)."""
    dask_client.wait_for_workers(2, timeout=DEADLINE)
    return dask_client


# Three store partitions for the keys of `pairs(i, n)` (k<i:03d>-...): parts 0, 1-2 and 3.
SPLIT = [b"k001", b"k003"]


@pytest.fixture(params=[None, SPLIT], ids=["one", "split"])
def split(request: pytest.FixtureRequest) -> list[bytes] | None:
    """A store never split, or one of three partitions (the workers route pairs by key)."""
    return request.param  # type: ignore[no-any-return]


async def _job_records(db: kvstore.Store, job_id: str) -> list[tuple[str, int]]:
    """(partition, key count) of every commit record naming the job, in every partition."""
    engines = db._router.engines.items()
    return sorted([(pid, r.key_count) for pid, e in engines for r in (await e.refresh()).log if r.job == job_id])


def _bag(partitions: int, count: int) -> dask.bag.Bag:
    return dask.bag.from_sequence([p for i in range(partitions) for p in pairs(i, count)], npartitions=partitions)


async def _content(db: kvstore.Store) -> dict[bytes, bytes]:
    return {k: v async for k, v in db.scan()}


async def test_a_bag_of_pairs_commits_in_one_version(
    durable_target: Target, healthy: Client, split: list[bytes] | None
) -> None:
    async with durable_target.open(split_keys=split) as db:
        await db.put(b"before", b"1")
        version = db.version
        committed = await kvstore.dask.store(db, _bag(4, 200), client=healthy, meta={"job": "bag"})
        assert await _content(db) == {b"before": b"1", **{k: v for i in range(4) for k, v in pairs(i, 200)}}
        if split is None:
            assert committed == version + 1
            [record] = [r for r in engine_of(db).manifest.log if r.version == committed]
            assert record.key_count == 800 and record.meta is not None and record.meta["txns"] == [{"job": "bag"}]
        else:
            job_ids = {r.job for e in engines_of(db) for r in e.manifest.log if r.job is not None}
            [job_id] = job_ids
            assert await _job_records(db, job_id) == [("0000", 200), ("0001", 400), ("0002", 200)]


async def test_a_dataframe_keeps_its_other_columns_as_msgpack(durable_target: Target, healthy: Client) -> None:
    frame = pd.DataFrame(
        {"path": [f"f/{i:04d}" for i in range(300)], "size": range(300), "label": ["x", "y", "z"] * 100}
    )
    frame["blob"] = [f"b{i}".encode() for i in range(300)]
    with dask.config.set({"dataframe.convert-string": False}):  # else Dask turns bytes into str
        data = dask.dataframe.from_pandas(frame, npartitions=3)
    async with durable_target.open(values="msgpack") as db:
        await kvstore.dask.store(db, data, key="path", client=healthy)
        assert await db.get("f/0007") == {"size": 7, "label": "y", "blob": b"b7"}
        assert len([k async for k, _ in db.scan()]) == 300
    other = Target(durable_target.kind, durable_target.url + "-raw", durable_target.kwargs)
    async with other.open(values="bytes") as raw:
        await kvstore.dask.store(raw, data, key="path", value="blob", client=healthy)  # a column of bytes
        assert await raw.get("f/0002") == b"b2"
        await kvstore.dask.store(raw, data.drop(columns=["blob"]), key="path", client=healthy)
        assert await raw.get("f/0002") == msgpack.packb({"size": 2, "label": "z"})  # the other columns, packed


async def test_a_worker_killed_mid_job_still_commits_exactly_once(
    durable_target: Target, healthy: Client, tmp_path: Path, split: list[bytes] | None
) -> None:
    async with durable_target.open(split_keys=split) as db:
        version = db.version
        bag = _bag(4, 200).map(stall_at, b"k001-00100", str(tmp_path), time.time() + DEADLINE)
        job = await db.distributed_write(chunk_bytes=2048)  # several segments per part
        running = asyncio.create_task(asyncio.to_thread(kvstore.dask.compute_parts, job, bag, client=healthy))
        os.kill(await _stalled_pid(tmp_path, running), signal.SIGKILL)
        parts = await running  # Dask ran the killed worker's tasks again
        assert await db.refresh() == version  # nothing visible before the commit
        assert [p.index for p in parts] == [0, 1, 2, 3]
        committed = await job.commit(parts)
        assert await _content(db) == {k: v for i in range(4) for k, v in pairs(i, 200)}
        if split is None:
            assert committed == version + 1
            assert [r.job for r in engine_of(db).manifest.log].count(job.job_id) == 1
        else:  # each partition's share once: 200 keys of part 0, 400 of parts 1-2, 200 of part 3
            assert await _job_records(db, job.job_id) == [("0000", 200), ("0001", 400), ("0002", 200)]
        with pytest.raises(kvstore.JobAlreadyCommittedError):
            await job.commit(parts)


async def test_a_job_that_fails_when_its_worker_dies_leaves_the_store_unchanged(
    durable_target: Target, healthy: Client, tmp_path: Path
) -> None:
    scheduler = healthy.cluster.scheduler  # type: ignore[union-attr]
    allowed = scheduler.allowed_failures
    scheduler.allowed_failures = 0  # one lost worker fails the job
    try:
        async with durable_target.open() as db:
            await db.put(b"before", b"1")
            version = db.version
            bag = _bag(4, 200).map(stall_at, b"k002-00100", str(tmp_path), time.time() + DEADLINE)
            running = asyncio.create_task(kvstore.dask.store(db, bag, client=healthy))
            os.kill(await _stalled_pid(tmp_path, running), signal.SIGKILL)
            with pytest.raises(KilledWorker):
                await running
            assert await db.refresh() == version
            assert await _content(db) == {b"before": b"1"}
            healthy.wait_for_workers(2, timeout=DEADLINE)
            # Run it again (a new graph: Dask remembers the failed tasks of the old one's keys;
            # the marker is there, so nothing stalls): committed exactly once.
            again = _bag(4, 200).map(stall_at, b"k002-00100", str(tmp_path), time.time() + DEADLINE)
            committed = await kvstore.dask.store(db, again, client=healthy)
            assert committed == version + 1
            assert await _content(db) == {b"before": b"1", **{k: v for i in range(4) for k, v in pairs(i, 200)}}
            assert await db.refresh() == version + 1
    finally:
        scheduler.allowed_failures = allowed


async def _stalled_pid(markers: Path, running: asyncio.Task[object]) -> int:
    """The pid of the worker whose task announced it stalled (waits, with a deadline)."""
    marker = markers / "stalled"
    deadline = time.monotonic() + DEADLINE
    while not marker.exists():
        if running.done():
            running.result()  # raise what ended it
            raise AssertionError("the job finished without stalling")
        assert time.monotonic() < deadline, "no task stalled"
        # Polls a condition another process makes true (a file), bounded by the deadline
        # and the job's liveness: no fixed wait stands in for the event itself.
        await asyncio.sleep(0.02)
    return int(marker.read_text())


def test_what_kvstore_dask_refuses(healthy: Client, tmp_path: Path) -> None:
    with kvstore.open_sync(tmp_path / "store") as db:
        job = db.distributed_write()
        with dask.config.set({"dataframe.convert-string": False}):
            frame = dask.dataframe.from_pandas(pd.DataFrame({"k": ["a"], "v": [b"1"]}), npartitions=1)
        with pytest.raises(kvstore.ValidationError, match="no column 'nope'"):
            kvstore.dask.write_parts(job.job, frame, key="nope")
        with pytest.raises(kvstore.ValidationError, match="a Bag holds"):
            kvstore.dask.write_parts(job.job, _bag(1, 1), key="k")
        with pytest.raises(kvstore.ValidationError, match="not list"):
            kvstore.dask.write_parts(job.job, [(b"k", b"v")])
        assert kvstore.dask.store_sync(db, frame, key="k", value="v", client=healthy) == db.version
        assert db[b"a"] == b"1"


async def test_a_full_compaction_runs_its_key_ranges_on_the_cluster(durable_target: Target, healthy: Client) -> None:
    options = kvstore.StoreOptions(auto_compact=False, target_segment_bytes=16 * 1024, history_versions=0)
    rng = random.Random(5)
    async with durable_target.open(options=options) as db:
        for i in range(4):  # four overlapping loads (incompressible values): later ones overwrite some keys
            await db.bulk_load((k, rng.randbytes(200)) for j in range(i, i + 3) for k, _ in pairs(j, 300))
        await db.delete(b"k002-00007")
        expected = await _content(db)
        version = db.version
        driver = engine_of(db).objects.requests
        puts_before = driver["PUT"] + driver["POST"]
        [result] = await db.compact(full=True, client=healthy)
        assert result.version == version + result.steps and await db.refresh() == result.version
        assert result.sub_compactions >= 3 and result.outputs >= result.sub_compactions
        # The outputs were written by the workers: this process wrote only, per step, the
        # run object so far and the manifest.
        assert driver["PUT"] + driver["POST"] - puts_before <= 2 * result.steps < result.outputs
        assert [r.level for r in engine_of(db).manifest.segments] == [1]
        assert await _content(db) == expected and b"k002-00007" not in expected
        assert result.entries_out == len(expected) == 6 * 300 - 1  # old versions and the tombstone dropped
