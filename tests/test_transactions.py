"""Serializability: which concurrent transactions conflict, and which do not (design I4)."""

from __future__ import annotations

import pytest
from targets import Target

import kvstore


async def test_read_write_conflict(target: Target) -> None:
    async with target.open() as db:
        await db.put(b"balance", b"100")
        tx = db.transaction()
        assert await tx.get(b"balance") == b"100"
        await db.put(b"balance", b"50")  # a concurrent commit changes what tx read
        tx.put(b"balance", b"110")
        with pytest.raises(kvstore.ConflictError, match="retry"):
            await tx.commit()
        assert await db.get(b"balance") == b"50"


async def test_read_of_missing_key_conflicts_with_its_creation(target: Target) -> None:
    async with target.open() as db:
        tx = db.transaction()
        assert await tx.get(b"new") is None
        await db.put(b"new", b"created")
        tx.put(b"other", b"x")
        with pytest.raises(kvstore.ConflictError):
            await tx.commit()
        assert await db.get(b"other") is None


async def test_phantom_insert_into_scanned_range_conflicts(target: Target) -> None:
    async with target.open() as db:
        await db.put(b"orders/1", b"a")
        tx = db.transaction()
        assert [k async for k, _ in tx.scan(prefix=b"orders/")] == [b"orders/1"]
        await db.put(b"orders/2", b"b")  # a phantom: a new key inside the scanned range
        tx.put(b"summary", b"1 order")
        with pytest.raises(kvstore.ConflictError):
            await tx.commit()
        assert await db.get(b"summary") is None


async def test_insert_outside_scanned_range_does_not_conflict(target: Target) -> None:
    async with target.open() as db:
        await db.put(b"orders/1", b"a")
        tx = db.transaction()
        assert [k async for k, _ in tx.scan(prefix=b"orders/")] == [b"orders/1"]
        await db.put(b"ordersX", b"outside")
        await db.put(b"invoices/1", b"outside")
        tx.put(b"summary", b"1 order")
        assert await tx.commit() is not None


async def test_partial_scan_only_covers_what_was_read(target: Target) -> None:
    async with target.open() as db:
        async with db.transaction() as setup:
            for i in range(10):
                setup.put(f"q/{i}", b"x")
        tx = db.transaction()
        first_two = [k async for k, _ in tx.scan(prefix=b"q/", limit=2)]
        assert first_two == [b"q/0", b"q/1"]
        await db.put(b"q/7", b"changed beyond what tx read")
        tx.put(b"out", b"1")
        assert await tx.commit() is not None  # no conflict: q/7 was never read

        tx = db.transaction()
        async for key, _ in tx.scan(prefix=b"q/"):
            if key == b"q/3":
                break  # abandoned iteration: q/0..q/3 were read
        await db.put(b"q/2", b"changed inside what tx read")
        tx.put(b"out", b"2")
        with pytest.raises(kvstore.ConflictError):
            await tx.commit()


async def test_reverse_partial_scan_covers_its_tail(target: Target) -> None:
    async with target.open() as db:
        async with db.transaction() as setup:
            for i in range(10):
                setup.put(f"r/{i}", b"x")
        tx = db.transaction()
        assert [k async for k, _ in tx.scan(prefix=b"r/", reverse=True, limit=2)] == [b"r/9", b"r/8"]
        await db.put(b"r/1", b"outside the read part")
        tx.put(b"out", b"1")
        assert await tx.commit() is not None
        tx = db.transaction()
        assert [k async for k, _ in tx.scan(prefix=b"r/", reverse=True, limit=2)] == [b"r/9", b"r/8"]
        await db.put(b"r/95", b"inside the read part")
        tx.put(b"out", b"2")
        with pytest.raises(kvstore.ConflictError):
            await tx.commit()


async def test_blind_writes_do_not_conflict(target: Target) -> None:
    async with target.open() as db:
        await db.put(b"k", b"0")
        tx = db.transaction()
        await tx.get(b"unrelated")
        tx.put(b"k", b"from tx")  # written but never read
        await db.put(b"k", b"from other")
        assert await tx.commit() is not None
        assert await db.get(b"k") == b"from tx"  # last committer wins


async def test_disjoint_transactions_do_not_conflict(target: Target) -> None:
    async with target.open() as db:
        t1, t2 = db.transaction(), db.transaction()
        assert await t1.get(b"a") is None
        assert await t2.get(b"b") is None
        t1.put(b"a", b"1")
        t2.put(b"b", b"2")
        v1 = await t1.commit()
        v2 = await t2.commit()
        assert v1 is not None and v2 is not None and v2 > v1
        assert (await db.get(b"a"), await db.get(b"b")) == (b"1", b"2")


async def test_write_skew_is_prevented(target: Target) -> None:
    """Two doctors on call: each checks the other is on call, then leaves.
    Snapshot isolation allows both; serializability must not."""
    async with target.open() as db:
        async with db.transaction() as tx:
            tx.put(b"oncall/alice", b"1")
            tx.put(b"oncall/bob", b"1")

        async def leave(tx: kvstore.Transaction, me: bytes, other: bytes) -> None:
            if await tx.get(other) == b"1":
                tx.put(me, b"0")

        t1, t2 = db.transaction(), db.transaction()
        await leave(t1, b"oncall/alice", b"oncall/bob")
        await leave(t2, b"oncall/bob", b"oncall/alice")
        await t1.commit()
        with pytest.raises(kvstore.ConflictError):
            await t2.commit()
        on_call = [v async for _, v in db.scan(prefix=b"oncall/")]
        assert b"1" in on_call


async def test_concurrent_commits_in_one_batch_conflict_exactly(target: Target) -> None:
    """Transactions committed together share one CAS; one that read what an
    earlier one in the batch wrote must still abort."""
    async with target.open() as db:
        await db.put(b"x", b"0")
        readers = [db.transaction() for _ in range(5)]
        for tx in readers:
            assert await tx.get(b"x") == b"0"
            tx.put(b"x", b"1")
        blind = [db.transaction() for _ in range(5)]
        for i, tx in enumerate(blind):
            tx.put(f"blind/{i}", b"y")
        import asyncio

        results = await asyncio.gather(*(tx.commit() for tx in readers + blind), return_exceptions=True)
        conflicts = [r for r in results[:5] if isinstance(r, kvstore.ConflictError)]
        assert len(conflicts) == 4  # exactly one reader of x wins
        assert all(isinstance(r, int) for r in results[5:])  # blind writes all commit


async def test_transaction_cannot_be_reused(target: Target) -> None:
    async with target.open() as db:
        async with db.transaction() as tx:
            tx.put(b"a", b"1")
        with pytest.raises(kvstore.TransactionStateError, match="committed"):
            tx.put(b"b", b"2")
        with pytest.raises(kvstore.TransactionStateError):
            await tx.get(b"a")
        tx2 = db.transaction()
        tx2.discard()
        with pytest.raises(kvstore.TransactionStateError, match="discarded"):
            await tx2.commit()


async def test_transaction_too_old_is_a_retryable_conflict(target: Target) -> None:
    options = kvstore.StoreOptions(commit_log_length=3)
    async with target.open(options=options) as db:
        tx = db.transaction()
        await tx.get(b"a")
        for i in range(5):
            await db.put(f"k{i}", b"v")  # the log no longer reaches tx's read version
        tx.put(b"a", b"1")
        with pytest.raises(kvstore.TransactionTooOldError, match="older than the commit log"):
            await tx.commit()
        assert issubclass(kvstore.TransactionTooOldError, kvstore.ConflictError)
