"""Worker processes for the multi-process tests (imported by spawned children)."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import kvstore


def count(url: str, kwargs: dict[str, Any], worker: int, tasks: int, increments: int, counters: int) -> dict[str, int]:
    """Increment shared counters through `transact`; return how many increments were acknowledged per counter."""

    async def main() -> dict[str, int]:
        acked = {f"counter/{c}": 0 for c in range(counters)}
        rng = random.Random(worker)

        async def increment(tx: kvstore.Transaction, key: str) -> None:
            tx.put(key, await tx.get(key, 0) + 1)

        async def task(t: int) -> None:
            for _ in range(increments):
                key = f"counter/{rng.randrange(counters)}"
                await db.transact(increment, key)
                acked[key] += 1

        async with kvstore.open(url, values="msgpack", **kwargs) as db:
            await asyncio.gather(*(task(t) for t in range(tasks)))
        return acked

    return asyncio.run(main())


def transfer(url: str, kwargs: dict[str, Any], worker: int, tasks: int, transfers: int, accounts: int) -> int:
    """Move money between random accounts; return the number of committed transfers."""

    async def main() -> int:
        rng = random.Random(1000 + worker)
        done = 0

        async def move(tx: kvstore.Transaction, a: str, b: str, amount: int) -> bool:
            balance_a = await tx.get(a)
            balance_b = await tx.get(b)
            if balance_a < amount:
                return False
            tx.put(a, balance_a - amount)
            tx.put(b, balance_b + amount)
            return True

        async def task() -> None:
            nonlocal done
            for _ in range(transfers):
                a, b = rng.sample(range(accounts), 2)
                if await db.transact(move, f"acct/{a}", f"acct/{b}", rng.randint(1, 30)):
                    done += 1

        async with kvstore.open(url, values="msgpack", **kwargs) as db:
            await asyncio.gather(*(task() for _ in range(tasks)))
        return done

    return asyncio.run(main())


def cas_increments(root: str, n: int) -> int:
    """Increment the integer in object `counter` n times by read + compare-and-swap."""
    from pathlib import Path

    from kvstore._objectstore import LocalObjectStore, PreconditionFailed

    async def main() -> int:
        store = LocalObjectStore(Path(root))
        done = 0
        while done < n:
            blob = await store.get("counter")
            assert blob is not None and blob.etag is not None
            try:
                await store.put_if_match("counter", str(int(blob.data) + 1).encode(), blob.etag)
            except PreconditionFailed:
                continue
            done += 1
        return done

    return asyncio.run(main())


def put_and_delete(url: str, kwargs: dict[str, Any], worker: int, rounds: int) -> dict[str, bytes]:
    """Write and delete this worker's own keys; return what must be there at the end."""

    async def main() -> dict[str, bytes]:
        expected: dict[str, bytes] = {}
        options = kvstore.StoreOptions(auto_compact=False)
        async with kvstore.open(url, options=options, **kwargs) as db:
            for i in range(rounds):
                key = f"w{worker}/{i % 6}"
                if i % 4 == 3:
                    await db.delete(key)
                    expected.pop(key, None)
                else:
                    value = f"{worker}:{i}".encode()
                    await db.put(key, value)
                    expected[key] = value
        return expected

    return asyncio.run(main())


def compact_until(url: str, kwargs: dict[str, Any], stop_file: str) -> int:
    """Run full compactions until `stop_file` exists (bounded); return how many committed."""
    import os
    import time

    async def main() -> int:
        done = 0
        options = kvstore.StoreOptions(auto_compact=False, history_versions=0)
        deadline = time.monotonic() + 120
        async with kvstore.open(url, options=options, **kwargs) as db:
            while time.monotonic() < deadline:
                finished = os.path.exists(stop_file)  # one more pass after the writers end
                done += len(await db.compact(full=True))
                if finished:
                    break
        return done

    return asyncio.run(main())


def atomic_add(url: str, kwargs: dict[str, Any], worker: int, tasks: int, adds: int, counters: int) -> dict[str, Any]:
    """Blind atomic adds of random amounts to shared counters, one transaction each, from
    `tasks` tasks; return the acknowledged sum per counter and the committer's statistics."""

    async def main() -> dict[str, Any]:
        acked = {f"actr/{c}": 0 for c in range(counters)}
        rng = random.Random(worker)

        async def task() -> None:
            for _ in range(adds):
                key, n = f"actr/{rng.randrange(counters)}", rng.randint(-5, 1000)
                async with db.transaction() as tx:
                    tx.add(key, n)
                acked[key] += n

        async with kvstore.open(url, values="msgpack", **kwargs) as db:
            await asyncio.gather(*(task() for _ in range(tasks)))
            stats = db.statistics()
        return {"acked": acked, "stats": stats}

    return asyncio.run(main())
