"""Transactions that WRITE several partitions, at the face (the two-phase commit,
`kvstore._two_phase.commit_across`), and the operations of issue 19 (range deletes,
atomic operations, TTLs) on a partitioned store."""

from __future__ import annotations

import asyncio
import multiprocessing
from concurrent.futures import ProcessPoolExecutor

import pytest
import workers
from targets import Target

import kvstore
import kvstore._ttl as ttl


async def test_a_transaction_writing_two_partitions_commits_in_both(durable_target: Target) -> None:
    async with durable_target.open(split_keys=[b"m"], values="msgpack") as db:
        async with db.transaction() as tx:
            tx.put(b"a", 1)
            tx.put(b"z", 2)
        assert tx.committed_version is not None
        assert await db.get_many([b"a", b"z"]) == [1, 2]
        # Both intents at the version returned (a background resolve may have committed since).
        assert all(p.version >= tx.committed_version for p in await db.partitions())


async def test_reading_one_partition_and_writing_another_is_serializable(durable_target: Target) -> None:
    """Write skew across partitions: T1 reads a and writes z, T2 reads z and writes a, both
    from the same snapshot; at most one may commit."""
    async with durable_target.open(split_keys=[b"m"], values="msgpack") as db:
        await db.put(b"a", 0)
        await db.put(b"z", 0)
        t1, t2 = db.transaction(), db.transaction()
        t1.put(b"z", await t1.get(b"a") + 1)
        t2.put(b"a", await t2.get(b"z") + 1)
        outcomes = await asyncio.gather(t1.commit(), t2.commit(), return_exceptions=True)
        assert sum(isinstance(o, kvstore.ConflictError) for o in outcomes) >= 1
        assert sorted(await db.get_many([b"a", b"z"])) in ([0, 1], [0, 0])


async def test_a_transaction_reading_one_partition_and_writing_another_commits(durable_target: Target) -> None:
    """The partition it only read prepares a read-only intent (holding its reads, writing
    nothing); uncontended, the transaction commits, and the write skew done one after
    the other is refused to the second."""
    async with durable_target.open(split_keys=[b"m"], values="msgpack") as db:
        await db.put(b"a", 1)
        await db.put(b"z", 1)
        async with db.transaction() as tx:
            tx.put(b"z", await tx.get(b"a") + 1)
        assert await db.get_many([b"a", b"z"]) == [1, 2]
        t1, t2 = db.transaction(), db.transaction()
        t1.put(b"z", await t1.get(b"a") + 10)
        t2.put(b"a", await t2.get(b"z") + 10)
        await t1.commit()
        with pytest.raises(kvstore.ConflictError):
            await t2.commit()
        assert await db.get_many([b"a", b"z"]) == [1, 11]


async def test_bank_transfers_across_partitions_keep_every_snapshot_balanced(durable_target: Target) -> None:
    t = durable_target
    accounts, initial = 6, 100
    async with t.open(split_keys=["acct/2", "acct/4"], values="msgpack") as db:
        async with db.transaction() as tx:
            for a in range(accounts):
                tx.put(f"acct/{a}", initial)
        loop = asyncio.get_running_loop()
        with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
            running = asyncio.gather(
                *(loop.run_in_executor(pool, workers.transfer, t.url, t.kwargs, w, 3, 4, accounts) for w in range(2))
            )
            audits = 0
            while not running.done() or audits == 0:
                snap = await db.snapshot()
                balances = [v async for _, v in snap.scan(prefix=b"acct/")]
                assert sum(balances) == accounts * initial, balances
                audits += 1
                await asyncio.wait([running], timeout=0.01)
            assert sum(await running) > 0


async def test_range_deletes_atomic_operations_and_ttls_route_across_partitions(
    durable_target: Target, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = [1_800_000_000.0]
    monkeypatch.setattr(ttl, "clock", lambda: now[0])
    async with durable_target.open(split_keys=[b"km"], values="msgpack") as db:
        for keys in ((b"a1", b"b1", b"b2", b"c1", b"ka"), (b"kz", b"n1", b"x1")):  # one partition each
            async with db.transaction() as tx:
                for k in keys:
                    tx.put(k, 1)
        before = [p.version for p in await db.partitions()]
        # Inside one partition: one commit there, the other partition untouched.
        await db.delete_range(b"b", b"c")
        assert [p.version for p in await db.partitions()] == [before[0] + 1, before[1]]
        # Across the boundary: both partitions, one transaction.
        await db.delete_prefix(b"k")
        assert [k async for k, _ in db.scan()] == [b"a1", b"c1", b"n1", b"x1"]
        assert await db.get_many([b"ka", b"kz", b"b1"]) == [None, None, None]
        # Atomic operations go to their key's partition, alone or in a transaction spanning two.
        await db.add(b"a-count", 5)
        await db.add(b"z-count", 7)
        async with db.transaction() as tx:
            tx.add(b"a-count", 1)
            tx.max(b"z-count", 10)
            tx.min(b"n1", -3)
        assert await db.get_many([b"a-count", b"z-count", b"n1"]) == [6, 10, -3]
        # A range delete and then an add in the same transaction, across partitions: the add
        # applies to nothing (the range delete came first).
        async with db.transaction() as tx:
            tx.delete_range(b"a", b"zz")
            tx.add(b"z-count", 2)
        assert [(k, v) async for k, v in db.scan()] == [(b"z-count", 2)]
        # A TTL put expires in either partition, written alone or together.
        await db.put(b"s-a", "x", ttl=60)
        async with db.transaction() as tx:
            tx.put(b"d-b", "y", ttl=120)
            tx.put(b"t-z", "z", ttl=60)
        assert await db.get_many([b"s-a", b"d-b", b"t-z"]) == ["x", "y", "z"]
        now[0] += 60
        assert await db.get_many([b"s-a", b"d-b", b"t-z"]) == [None, "y", None]


async def test_a_delete_prefix_spanning_two_partitions_is_all_or_nothing(durable_target: Target) -> None:
    """A transaction deleting a prefix across the boundary, whose range in the second
    partition gains a key after its reads: it conflicts, and the first partition keeps
    its keys too (two separate commits would have deleted them). Its retry deletes all."""
    async with durable_target.open(split_keys=[b"km"], values="msgpack") as db:
        for keys in ((b"ka", b"kb"), (b"kx", b"kz", b"l")):  # one partition each: no intents to resolve
            async with db.transaction() as tx:
                for k in keys:
                    tx.put(k, 1)
        tx = db.transaction()
        assert await tx.get(b"ka") == 1 and await tx.get(b"kz") == 1  # its views of both partitions
        await db.put(b"ky", 2)  # a key lands in the range after them
        tx.delete_prefix(b"k")
        with pytest.raises(kvstore.ConflictError):
            await tx.commit()
        assert [k async for k, _ in db.scan()] == [b"ka", b"kb", b"kx", b"ky", b"kz", b"l"]

        async def delete_ks(t: kvstore.Transaction) -> None:
            await t.get(b"ka")
            t.delete_prefix(b"k")

        await db.transact(delete_ks)
        assert [k async for k, _ in db.scan()] == [b"l"]
