"""kvstore.zarr beyond Zarr's conformance suite (tests/test_zarr_conformance.py): plain
synchronous zarr code, time travel, sessions (staged writes, one commit, conflicts,
pickled copies written by Dask workers) and the refusals a user can meet."""

from __future__ import annotations

import asyncio
import os
import pickle
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import dask.array
import numpy as np
import pytest
import zarr
import zarr.api.asynchronous as za
from distributed import Client
from targets import Target, engine_of, fault_injecting, gc_later
from zarr.core.buffer import cpu
from zarr_workers import write_rows, write_rows_dying_once

import kvstore
from kvstore.testing.faults import FaultPlan
from kvstore.zarr import PartitionedSessionError, StoreReadOnlyError, ZarrStore, open_session

DEADLINE = 120.0  # seconds any wait of these tests may take


def kwargs_of(target: Target) -> dict[str, Any]:
    return {"url": target.url, **target.kwargs}


@pytest.fixture
async def db(durable_target: Target) -> AsyncIterator[kvstore.Store]:
    async with durable_target.open() as store:
        yield store


def test_synchronous_zarr_writes_and_reads_through_its_own_loop(durable_target: Target) -> None:
    """zarr.open_group(store=ZarrStore(url=...), mode="w") from plain code: the store's
    coroutines run on zarr's loop thread, which opens its own kvstore handle there."""
    store = ZarrStore(**kwargs_of(durable_target), prefix="sync/")
    group = zarr.open_group(store=store, mode="w")
    arr = group.create_array("a", shape=(6, 4), chunks=(2, 4), dtype="int32")
    arr[:] = np.arange(24, dtype="int32").reshape(6, 4)

    again = zarr.open_group(store=ZarrStore(**kwargs_of(durable_target), prefix="sync/"), mode="r")
    np.testing.assert_array_equal(again["a"][:], np.arange(24).reshape(6, 4))
    store.close()
    again.store.close()
    with durable_target.open_sync() as plain:
        keys = [k for k, _ in plain.scan("sync/")]
    assert b"sync/zarr.json" in keys and b"sync/a/zarr.json" in keys
    assert [k for k in keys if k.startswith(b"sync/a/c/")] == [b"sync/a/c/0/0", b"sync/a/c/1/0", b"sync/a/c/2/0"]


async def test_a_msgpack_store_is_refused(tmp_path: Any) -> None:
    """Zarr writes raw bytes: a store whose values are msgpack is refused, with the codec named."""
    url = f"file://{tmp_path / 'mp'}"
    async with kvstore.open(url, values="msgpack") as db:
        await db.put("k", {"a": 1})
        with pytest.raises(kvstore.CodecMismatchError, match="values='bytes'") as info:
            ZarrStore(db=db)
        assert info.value.recorded == "msgpack"
    with pytest.raises(kvstore.CodecMismatchError):
        await ZarrStore.open(url=url)


async def test_read_only_writes_raise_a_named_error_zarr_understands(db: kvstore.Store) -> None:
    store = await ZarrStore.open(url=db.url, s3_options=db._s3, read_only=True)
    with pytest.raises(StoreReadOnlyError, match="store was opened in read-only mode") as info:
        await store.set("k", cpu.Buffer.from_bytes(b"v"))
    assert isinstance(info.value, kvstore.ReadOnlyError) and isinstance(info.value, ValueError)


async def test_a_value_over_the_limit_is_refused_with_advice(db: kvstore.Store) -> None:
    store = ZarrStore(db=db)
    big = cpu.Buffer.from_bytes(b"x" * (db.options.max_value_bytes + 1))
    with pytest.raises(kvstore.InvalidValueError, match="use smaller chunks"):
        await store.set("a/c/0", big)
    session = await open_session(db)
    with pytest.raises(kvstore.InvalidValueError, match="use smaller chunks"):
        await session.store.set("a/c/0", big)


async def test_db_form_writes_commit_and_time_travel_reads_the_past(db: kvstore.Store) -> None:
    """ZarrStore(db=db): each write commits. At tag="v1" or version=N the arrays read as
    they were then, and the store is read-only."""
    store = ZarrStore(db=db, prefix="arrays/")
    assert store.db is db
    arr = await za.create_array(store, name="x", shape=(4,), chunks=(2,), dtype="int32", fill_value=0)
    await arr.setitem(slice(None), np.array([1, 2, 3, 4], dtype="int32"))
    await db.tag("v1")
    at_v1 = db.version
    await arr.setitem(slice(0, 2), np.array([9, 9], dtype="int32"))
    assert db.version > at_v1

    for past in ({"tag": "v1"}, {"version": at_v1}):
        ro = await ZarrStore.open(url=db.url, s3_options=db._s3, prefix="arrays/", **past)
        assert ro.read_only
        old = await za.open_array(store=ro, path="x")
        np.testing.assert_array_equal(await old.getitem(slice(None)), [1, 2, 3, 4])
        with pytest.raises(StoreReadOnlyError):
            await ro.set("x/c/0", cpu.Buffer.from_bytes(b""))
        ro.close()
    latest = await za.open_array(store=await ZarrStore.open(url=db.url, s3_options=db._s3, prefix="arrays/"), path="x")
    np.testing.assert_array_equal(await latest.getitem(slice(None)), [9, 9, 3, 4])


async def test_a_session_is_invisible_until_one_commit_publishes_every_array(db: kvstore.Store) -> None:
    await db.put("arrays/before", b"1")
    session = await open_session(db, prefix="arrays/")
    base = db.version
    x = await za.create_array(session.store, name="x", shape=(8,), chunks=(2,), dtype="int32", fill_value=0)
    y = await za.create_array(session.store, name="y", shape=(3,), chunks=(3,), dtype="float64", fill_value=0)
    await x.setitem(slice(None), np.arange(8, dtype="int32"))
    await y.setitem(slice(None), np.array([0.5, 1.5, 2.5]))

    # The session reads its own writes (from its staged segments) ...
    np.testing.assert_array_equal(await x.getitem(slice(None)), np.arange(8))
    listed = sorted([k async for k in session.store.list_dir("")])
    assert listed == ["before", "x", "y", "zarr.json"]
    # ... nobody else sees them, and nothing committed.
    assert await db.refresh() == base
    assert [k async for k, _ in db.scan("arrays/")] == [b"arrays/before"]
    # The staged values are in segments, not in the session's memory.
    assert all(len(pickle.dumps(v)) < 400 for v in session.store.staged().keys.values())  # type: ignore[union-attr]

    version = await session.commit()
    assert version == base + 1
    history = await db.history(limit=1)
    assert history[0].version == version
    after = ZarrStore(db=db, prefix="arrays/")
    np.testing.assert_array_equal(await (await za.open_array(store=after, path="x")).getitem(slice(None)), np.arange(8))
    np.testing.assert_array_equal(
        await (await za.open_array(store=after, path="y")).getitem(slice(None)), [0.5, 1.5, 2.5]
    )
    with pytest.raises(kvstore.JobAlreadyCommittedError, match=f"committed version {version}; open a new session"):
        await session.commit()


async def test_session_deletes_are_staged_too(db: kvstore.Store) -> None:
    """Zarr deletes a chunk written all fill value: the session stages a tombstone."""
    store = ZarrStore(db=db)
    arr = await za.create_array(store, name="x", shape=(4,), chunks=(2,), dtype="int32", fill_value=0)
    await arr.setitem(slice(None), np.array([1, 2, 3, 4], dtype="int32"))
    assert await db.get("x/c/0") is not None
    session = await open_session(db)
    staged = await za.open_array(store=session.store, path="x")
    await staged.setitem(slice(0, 2), np.array([0, 0], dtype="int32"))
    assert not await session.store.exists("x/c/0")
    assert await db.get("x/c/0") is not None  # not yet
    await session.commit()
    assert await db.get("x/c/0") is None
    np.testing.assert_array_equal(await (await za.open_array(store=store, path="x")).getitem(slice(None)), [0, 0, 3, 4])


async def test_concurrent_sessions_on_the_same_array_conflict_on_disjoint_ones_both_commit(db: kvstore.Store) -> None:
    store = ZarrStore(db=db)
    for name in ("x", "y"):
        arr = await za.create_array(store, name=name, shape=(4,), chunks=(2,), dtype="int32", fill_value=0)
        await arr.setitem(slice(None), np.array([1, 2, 3, 4], dtype="int32"))
    first, second, third = [await open_session(db) for _ in range(3)]
    one = await za.open_array(store=first.store, path="x")
    two = await za.open_array(store=second.store, path="x")
    other = await za.open_array(store=third.store, path="y")
    await one.setitem(slice(0, 2), np.array([5, 5], dtype="int32"))
    await two.setitem(slice(0, 2), np.array([7, 7], dtype="int32"))
    await other.setitem(slice(2, 4), np.array([8, 8], dtype="int32"))
    await first.commit()
    with pytest.raises(kvstore.ConflictError):
        await second.commit()
    await third.commit()
    x = await (await za.open_array(store=store, path="x")).getitem(slice(None))
    y = await (await za.open_array(store=store, path="y")).getitem(slice(None))
    np.testing.assert_array_equal(x, [5, 5, 3, 4])
    np.testing.assert_array_equal(y, [1, 2, 8, 8])


def test_dask_workers_write_chunks_through_pickled_session_stores(durable_target: Target, dask_client: Client) -> None:
    """session.store pickles to Dask worker processes; each task writes rows through its
    copy and returns it; `merge` (no longer needed) still adds them without harm, and one
    commit publishes everything."""
    client = dask_client
    client.wait_for_workers(2, timeout=DEADLINE)

    workers = sorted(client.scheduler_info()["workers"])

    async def run() -> tuple[int, int, np.ndarray[Any, Any], set[int]]:
        async with durable_target.open() as db:
            session = await open_session(db, prefix="data/")
            await za.create_array(session.store, name="x", shape=(40, 4), chunks=(5, 4), dtype="int32", fill_value=-1)
            futures = [
                client.submit(write_rows, session.store, s, s + 10, pure=False, workers=[workers[i % 2]])
                for i, s in enumerate(range(0, 40, 10))
            ]
            results = await asyncio.wait_for(asyncio.to_thread(client.gather, futures), DEADLINE)
            assert await db.refresh() == session.base_version  # nothing visible before the commit
            session.merge(*(copy for copy, _ in results))
            version = await session.commit()
            read = await za.open_array(store=ZarrStore(db=db, prefix="data/"), path="x")
            return version, session.base_version, await read.getitem(slice(None)), {pid for _, pid in results}

    version, base, data, pids = asyncio.run(run())
    assert version == base + 1
    assert len(pids) == 2 and os.getpid() not in pids  # two worker processes wrote
    np.testing.assert_array_equal(data, np.arange(160, dtype="int32").reshape(40, 4))


async def test_session_commit_is_one_manifest_cas(db: kvstore.Store) -> None:
    """Ten chunks and the metadata staged as eleven segments: one CAS, one version."""
    session = await open_session(db)
    arr = await za.create_array(session.store, name="x", shape=(10,), chunks=(1,), dtype="int8", fill_value=0)
    await arr.setitem(slice(None), np.arange(1, 11, dtype="int8"))
    commits = engine_of(db).statistics()["commits"]
    version = await session.commit()
    assert engine_of(db).statistics()["commits"] == commits + 1
    assert version == session.base_version + 1 == db.version
    assert len([k async for k, _ in db.scan("x/c/")]) == 10


def test_dask_to_zarr_through_a_session_store_is_published_by_the_drivers_one_commit(
    durable_target: Target, dask_client: Client
) -> None:
    """dask.array.to_zarr(x, session.store): Dask's worker processes write the chunks
    through pickled copies that never come back to the driver; `commit()` alone (no
    merge) finds them and publishes the metadata and every chunk in one CAS. Before
    the commit, nothing is visible."""
    dask_client.wait_for_workers(2, timeout=DEADLINE)
    x = dask.array.arange(160, dtype="int32").reshape(40, 4).rechunk((5, 4))

    async def run() -> None:
        async with durable_target.open() as db:
            await db.put("data/before", b"1")
            session = await open_session(db, prefix="data/")
            base = session.base_version
            stored = await asyncio.to_thread(dask.array.to_zarr, x, session.store, component="x", compute=False)
            await asyncio.wait_for(asyncio.to_thread(dask_client.compute(stored).result), DEADLINE)
            # The driver's copy staged only the metadata: the chunks were staged by the workers.
            assert not [k for k in session.store.staged().keys if k.startswith("x/c/")]  # type: ignore[union-attr]
            assert await db.refresh() == base  # nothing visible before the commit
            assert [k async for k, _ in db.scan("data/")] == [b"data/before"]
            commits = engine_of(db).statistics()["commits"]
            version = await session.commit()
            assert engine_of(db).statistics()["commits"] == commits + 1  # one manifest CAS
            assert version == base + 1 == db.version
            chunks = [k async for k, _ in db.scan("data/x/c/")]
            assert len(chunks) == 8
            read = await za.open_array(store=ZarrStore(db=db, prefix="data/"), path="x")
            np.testing.assert_array_equal(await read.getitem(slice(None)), np.arange(160).reshape(40, 4))

    asyncio.run(run())


def test_a_worker_killed_mid_task_leaves_garbage_that_gc_collects(
    durable_target: Target, dask_client: Client, tmp_path: Path
) -> None:
    """A task's first attempt stages rows of -7s, then its worker process is SIGKILLed;
    Dask retries the task, which stages the real rows. The retry's writes are later, so
    they win; what the dead attempt staged is garbage that GC deletes, and the array
    reads the same after GC."""
    dask_client.wait_for_workers(2, timeout=DEADLINE)

    async def run() -> None:
        async with durable_target.open() as db:
            session = await open_session(db, prefix="data/")
            await za.create_array(session.store, name="x", shape=(20, 4), chunks=(5, 4), dtype="int32", fill_value=-1)
            marker = str(tmp_path / "killed")
            futures = [
                dask_client.submit(write_rows_dying_once, session.store, s, s + 10, marker, pure=False)
                for s in range(0, 20, 10)
            ]
            pids = await asyncio.wait_for(asyncio.to_thread(dask_client.gather, futures), DEADLINE)
            killed = int(Path(marker).read_text())
            assert killed not in pids  # the process that staged the -7s is gone
            await session.commit()
            expected = np.arange(80, dtype="int32").reshape(20, 4)
            read = await za.open_array(store=ZarrStore(db=db, prefix="data/"), path="x")
            np.testing.assert_array_equal(await read.getitem(slice(None)), expected)
            report = await gc_later(db)
            assert report.objects_deleted >= 2  # at least the dead attempt's segment and record
            assert not [n async for n in _listing(db, "zarr-sessions/")]  # every record is garbage once committed
            again = await za.open_array(store=ZarrStore(db=db, prefix="data/"), path="x")
            np.testing.assert_array_equal(await again.getitem(slice(None)), expected)

    asyncio.run(run())


async def _listing(db: kvstore.Store, under: str) -> AsyncIterator[str]:
    """Objects of `db` under ``segments/<under>``."""
    engine = engine_of(db)
    async for info in engine.objects.list(f"{engine.layout.segments_prefix}{under}"):
        yield info.name


async def test_the_later_write_of_a_key_staged_by_two_copies_wins(db: kvstore.Store) -> None:
    """Two pickled copies of session.store stage one key: whichever copy wrote it later
    wins, and the driver never merges either copy."""
    session = await open_session(db)
    one, two = pickle.loads(pickle.dumps(session.store)), pickle.loads(pickle.dumps(session.store))
    await one.set("k", cpu.Buffer.from_bytes(b"one, first"))
    await two.set("k", cpu.Buffer.from_bytes(b"two, second"))
    await one.set("j", cpu.Buffer.from_bytes(b"one, second"))
    await two.set("j", cpu.Buffer.from_bytes(b"two, first"))
    await one.set("j", cpu.Buffer.from_bytes(b"one, third"))
    await session.commit()
    assert await db.get("k") == b"two, second"
    assert await db.get("j") == b"one, third"


async def test_a_commit_whose_outcome_was_unknown_returns_its_version_when_called_again(target: Target) -> None:
    """The manifest CAS lands but its answer is lost, and the manifest cannot be read to
    find out: CommitOutcomeUnknownError. Calling commit() again finds the session's job
    in the commit log and returns that version, committing nothing more."""
    made, wrap = fault_injecting(FaultPlan())
    async with target.open(wrap_object_store=wrap) as db:
        session = await open_session(db)
        await session.store.set("k", cpu.Buffer.from_bytes(b"v"))
        made[0].script("put_if_match", "lost_response")
        made[0].script("get", "pass", "denied")
        with pytest.raises(kvstore.CommitOutcomeUnknownError):
            await session.commit()
        version = await session.commit()
        assert version == session.base_version + 1 == await db.refresh()
        assert await db.get("k") == b"v"


async def test_a_session_on_a_partitioned_store_is_refused_with_what_to_do(tmp_path: Path) -> None:
    """A session commits into one partition's manifest: on a split store open_session
    names the error and the way out, which works (ZarrStore(db=db) writes transactions)."""
    async with kvstore.open(f"file://{tmp_path / 'split'}", split_keys=["m"]) as db:
        with pytest.raises(PartitionedSessionError, match=r"ZarrStore\(db=db\)"):
            await open_session(db)
        store = ZarrStore(db=db)
        arr = await za.create_array(store, name="x", shape=(4,), chunks=(2,), dtype="int32", fill_value=0)
        await arr.setitem(slice(None), np.array([1, 2, 3, 4], dtype="int32"))
        again = await za.open_array(store=ZarrStore(db=db), path="x")
        np.testing.assert_array_equal(await again.getitem(slice(None)), [1, 2, 3, 4])
