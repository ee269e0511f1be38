"""Real concurrency: several processes with many tasks each, on the local filesystem and on S3."""

from __future__ import annotations

import asyncio
import multiprocessing
from concurrent.futures import ProcessPoolExecutor

import kvstore
import workers
from targets import Target

PROCESSES = 4


def _pool() -> ProcessPoolExecutor:
    return ProcessPoolExecutor(PROCESSES, mp_context=multiprocessing.get_context("spawn"))


async def test_counters_are_exact_across_processes(durable_target: Target) -> None:
    t = durable_target
    tasks, increments, counters = 5, 4, 4
    loop = asyncio.get_running_loop()
    with _pool() as pool:
        acked = await asyncio.gather(
            *(
                loop.run_in_executor(pool, workers.count, t.url, t.kwargs, w, tasks, increments, counters)
                for w in range(PROCESSES)
            )
        )
    expected = {f"counter/{c}": sum(a[f"counter/{c}"] for a in acked) for c in range(counters)}
    assert sum(expected.values()) == PROCESSES * tasks * increments
    async with t.open(values="msgpack") as db:
        actual = {k.decode(): v async for k, v in db.scan(prefix=b"counter/")}
    assert actual == expected


async def test_bank_total_is_constant_in_every_snapshot(durable_target: Target) -> None:
    t = durable_target
    accounts, initial = 6, 100
    async with t.open(values="msgpack") as db:
        async with db.transaction() as tx:
            for a in range(accounts):
                tx.put(f"acct/{a}", initial)
        loop = asyncio.get_running_loop()
        with _pool() as pool:
            jobs = [
                loop.run_in_executor(pool, workers.transfer, t.url, t.kwargs, w, 4, 4, accounts)
                for w in range(PROCESSES)
            ]
            running = asyncio.gather(*jobs)
            audits = 0
            versions = set()
            while not running.done() or audits == 0:
                snap = await db.snapshot()
                balances = [v async for _, v in snap.scan(prefix=b"acct/")]
                assert len(balances) == accounts
                assert sum(balances) == accounts * initial, f"snapshot {snap.version}: {balances}"
                assert all(b >= 0 for b in balances)
                audits += 1
                versions.add(snap.version)
                await asyncio.wait([running], timeout=0.01)
            transfers = sum(await running)
        assert transfers > 0
        assert len(versions) > 1  # the auditor really saw the store change under it
        final = [v async for _, v in db.scan(prefix=b"acct/")]
        assert sum(final) == accounts * initial
        assert db.statistics()["version"] >= 1


async def test_many_tasks_one_process_group_commit(durable_target: Target) -> None:
    async with durable_target.open() as db:
        await asyncio.gather(*(db.put(f"k/{i:03d}", str(i).encode()) for i in range(64)))
        stats = db.statistics()
        assert stats["transactions_committed"] == 64
        assert stats["commits"] < 64  # group commit shared CAS requests
        assert len([k async for k, _ in db.scan(prefix=b"k/")]) == 64
