"""Failures of the object store: retries, ambiguous writes (I5), unsafe endpoints."""

from __future__ import annotations

import pytest
from targets import Target, engine_of, fault_injecting

import kvstore
from kvstore.testing.faults import FaultPlan, FaultRule


async def _commit_log_txn_ids(target: Target) -> list[bytes]:
    async with target.open() as db:
        manifest = engine_of(db).manifest  # white-box: the commit log itself
        return [t for record in manifest.log for t in record.txn_ids]


async def test_cas_applied_but_response_lost_is_reported_committed_once(target: Target) -> None:
    made, wrap = fault_injecting()
    async with target.open(wrap_object_store=wrap) as db:
        await db.put(b"k", b"before")
        version = db.version
        made[0].script("put_if_match", "lost_response")
        tx = db.transaction()
        assert await tx.get(b"k") == b"before"
        tx.put(b"k", b"after")
        committed = await tx.commit()
        assert committed == version + 1  # reported committed, at the version it really got
        assert made[0].injected["put_if_match:lost_response"] == 1
        assert db.statistics()["ambiguous_commits_resolved"] == 1
        assert await db.refresh() == version + 1  # applied once, not twice
        assert await db.get(b"k") == b"after"
        txn_id = tx.id
    assert (await _commit_log_txn_ids(target)).count(txn_id) == 1


async def test_cas_lost_responses_with_a_concurrent_writer_never_apply_twice(target: Target) -> None:
    made, wrap = fault_injecting()
    async with target.open(wrap_object_store=wrap) as db, target.open() as other:
        await db.put(b"n", b"0")
        made[0].script("put_if_match", "lost_response", "lost_response")
        tx = db.transaction()
        tx.put(b"blind", b"1")
        await other.put(b"unrelated", b"x")  # db's next CAS must rebase over this
        committed = await tx.commit()
        assert committed is not None
        assert await db.get(b"blind") == b"1"
    ids = await _commit_log_txn_ids(target)
    assert ids.count(tx.id) == 1


async def test_segment_put_lost_response_is_recognised_as_ours(target: Target) -> None:
    made, wrap = fault_injecting()
    options = kvstore.StoreOptions(inline_segment_bytes=0)  # the segment is an object
    async with target.open(wrap_object_store=wrap, options=options) as db:
        made[0].script("put_if_absent", "lost_response")
        version = await db.put(b"k", b"v")
        assert await db.get(b"k") == b"v"
        assert made[0].injected["put_if_absent:lost_response"] == 1
        assert db.version == version


async def test_transient_errors_are_retried(target: Target) -> None:
    plan = FaultPlan(seed=3, default=FaultRule(error=0.2, conflict=0.1, timeout=0.05))
    made, wrap = fault_injecting(plan)
    async with target.open(wrap_object_store=wrap, values="msgpack") as db:
        for i in range(30):
            await db.put(f"k{i}", i)
        assert [v async for _, v in db.scan()] == sorted(range(30), key=lambda i: f"k{i}")
        assert sum(made[0].injected.values()) > 5  # faults really happened


async def test_cas_that_never_gets_an_answer_is_outcome_unknown(target: Target) -> None:
    made, wrap = fault_injecting()
    async with target.open(wrap_object_store=wrap) as db:
        await db.put(b"k", b"1")
        version = db.version
        made[0].script("put_if_match", *["timeout"] * 100)
        with pytest.raises(kvstore.CommitOutcomeUnknownError, match="read the data"):
            await db.put(b"k", b"2")
        made[0]._scripted.clear()
        # Nothing was applied (timeouts never reached the store), and the store still works.
        assert await db.refresh() == version
        assert await db.get(b"k") == b"1"
        await db.put(b"k", b"3")
        assert await db.get(b"k") == b"3"


async def test_store_unreachable_for_reads_raises_unavailable(target: Target) -> None:
    made, wrap = fault_injecting()
    async with target.open(wrap_object_store=wrap) as db:
        await db.put(b"k", b"1")
        made[0].script("get", *["error"] * 20)
        with pytest.raises(kvstore.StoreUnavailableError, match="attempts"):
            await db.get(b"k")
        made[0]._scripted.clear()
        assert await db.get(b"k") == b"1"


async def test_endpoint_ignoring_conditional_writes_is_refused(target: Target) -> None:
    _, wrap = fault_injecting(FaultPlan(ignore_conditions=True))
    fresh = Target(target.kind, target.url + ("-unsafe" if target.kind != "file" else ""), target.kwargs)
    with pytest.raises(kvstore.UnsafeEndpointError, match="ignores If-None-Match"):
        await fresh.open(wrap_object_store=wrap)
    # Reading stays possible, and nothing was created.
    with pytest.raises(kvstore.StoreNotFoundError):
        await fresh.open(wrap_object_store=wrap, read_only=True)


async def test_endpoint_ignoring_if_match_only_is_refused(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from kvstore._objectstore import LocalObjectStore

    class IgnoresIfMatch(LocalObjectStore):
        async def put_if_match(self, name: str, data: bytes, etag: str) -> str:
            await self.delete(name)
            return await self.put_if_absent(name, data)

    with pytest.raises(kvstore.UnsafeEndpointError, match="If-Match"):
        await kvstore.open(tmp_path, wrap_object_store=lambda _inner: IgnoresIfMatch(tmp_path))
