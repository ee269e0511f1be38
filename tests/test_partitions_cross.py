"""Transactions that WRITE several partitions, at the face: they need the two-phase
commit of branch p18-2pc (`kvstore._two_phase.commit_across`) and pass once it is merged.
Without it, such a commit raises ValidationError naming what is missing."""

from __future__ import annotations

import asyncio
import multiprocessing
from concurrent.futures import ProcessPoolExecutor

import workers
from targets import Target

import kvstore


async def test_a_transaction_writing_two_partitions_commits_in_both(durable_target: Target) -> None:
    async with durable_target.open(split_keys=[b"m"], values="msgpack") as db:
        async with db.transaction() as tx:
            tx.put(b"a", 1)
            tx.put(b"z", 2)
        assert tx.committed_version is not None
        assert await db.get_many([b"a", b"z"]) == [1, 2]
        assert [p.version for p in await db.partitions()] == [tx.committed_version, tx.committed_version]


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
