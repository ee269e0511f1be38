"""Cross-partition transactions at the engine level, for tests/test_two_phase.py and the
processes it spawns: engines on sub-prefixes `p/<name>/` of one store root sharing one
`Decisions`, a bank of accounts spread over them, transfers and audits.

No partition map is involved (issue 18's other half builds it): account i lives in
partition i % len(engines).
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import time
from pathlib import Path
from typing import Any

from crash_workers import StallingStore

from kvstore import ConflictError, KvStoreError, StoreOptions
from kvstore._engine import Engine
from kvstore._objectstore import ObjectStore
from kvstore._two_phase import commit_across
from kvstore._url import s3_settings
from kvstore.testing import partitions
from kvstore.testing.partitions import Wrap, read_balances

START = 100  # every account's opening balance


def account(i: int) -> bytes:
    return f"acct{i:03d}".encode()


class Parts(partitions.Parts):
    """`kvstore.testing.partitions.Parts`, with the bank's placement of accounts."""

    def of(self, i: int) -> Engine:
        return self.engines[i % len(self.engines)]


async def open_parts(
    url: str,
    kwargs: dict[str, Any],
    count: int,
    *,
    options: StoreOptions | None = None,
    wrap: Wrap | None = None,
    wrap_root: Wrap | None = None,
) -> Parts:
    """Open (creating) `count` partitions `p/0/`, `p/1/`... under `url`."""
    opened = await partitions.open_parts(
        url, count, options=options, s3=s3_settings(None, **kwargs), wrap=wrap, wrap_root=wrap_root
    )
    return Parts(opened.engines, opened.decisions, opened.root_objects)


async def open_bank(parts: Parts, accounts: int) -> None:
    """Give every account START (one plain commit per partition)."""
    for p, engine in enumerate(parts.engines):
        writes: dict[bytes, bytes | None] = {
            account(i): str(START).encode() for i in range(accounts) if i % len(parts.engines) == p
        }
        await engine.commit(request(engine, None, set(), writes))


request = partitions.request


async def transfer_once(parts: Parts, src: int, dst: int, amount: int) -> None:
    """Move `amount` from account src to dst in one transaction (raises ConflictError)."""
    ea, eb = parts.of(src), parts.of(dst)
    va = await ea.latest_view()
    vb = va if eb is ea else await eb.latest_view()
    a = int(await va.get(account(src)) or b"0")
    b = int(await vb.get(account(dst)) or b"0")
    new_a, new_b = str(a - amount).encode(), str(b + amount).encode()
    if ea is eb:
        await ea.commit(request(ea, va, {account(src), account(dst)}, {account(src): new_a, account(dst): new_b}))
        return
    txn_id = ea.new_txn_id()
    await commit_across(
        [
            (ea, request(ea, va, {account(src)}, {account(src): new_a}, txn_id)),
            (eb, request(eb, vb, {account(dst)}, {account(dst): new_b}, txn_id)),
        ],
        parts.decisions,
    )


async def transfer(parts: Parts, src: int, dst: int, amount: int, *, deadline: float) -> int:
    """`transfer_once` until it commits (the usual OCC retry); returns the conflicts met."""
    conflicts = 0
    while True:
        try:
            await transfer_once(parts, src, dst, amount)
            return conflicts
        except ConflictError:
            conflicts += 1
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(random.uniform(0, 0.01 * min(conflicts, 10)))


async def audit(parts: Parts, accounts: int) -> list[int] | None:
    """Every balance, read in every partition at once then validated (`Engine.changed_since`,
    as a read-only transaction across partitions does); None if validation failed."""
    return await read_balances(parts, accounts, account)


def run_transfers(url: str, kwargs: dict[str, Any], count: int, accounts: int, seed: int, transfers: int) -> None:
    """A process's share of the bank workload (spawned): `transfers` random transfers."""

    async def main() -> None:
        parts = await open_parts(url, kwargs, count)
        rng = random.Random(seed)
        deadline = time.monotonic() + 120
        try:
            for _ in range(transfers):
                src = rng.randrange(accounts)
                dst = (src + rng.randrange(1, accounts)) % accounts
                await transfer(parts, src, dst, rng.randrange(1, 20), deadline=deadline)
        finally:
            await parts.close()

    asyncio.run(main())


def run_faulty_transfers(
    url: str, kwargs: dict[str, Any], count: int, accounts: int, seed: int, transfers: int, journal: str
) -> None:
    """Random transfers with the reliability campaign's faults injected into every request
    (its `fault_plan` and retry policy) on the partitions and the root: errors, 409s,
    timeouts, lost answers, resends, outages. Each outcome is appended to `journal` as
    "ok", "fail" (a conflict: nothing applied) or "info" (unknown), one line each."""
    from kvstore.testing.campaign import CAMPAIGN_RETRY, fault_plan
    from kvstore.testing.faults import FaultInjectingStore

    async def main() -> None:
        rng = random.Random(seed)
        options = StoreOptions(retry=CAMPAIGN_RETRY, intent_timeout=1.0)

        def faulty(inner: ObjectStore) -> ObjectStore:
            return FaultInjectingStore(inner, fault_plan(rng.randrange(1 << 30)))  # type: ignore[return-value]

        for attempt in range(10):
            try:
                parts = await open_parts(url, kwargs, count, options=options, wrap=faulty, wrap_root=faulty)
                break
            except KvStoreError:
                if attempt == 9:
                    raise
        fd = os.open(journal, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            for _ in range(transfers):
                src = rng.randrange(accounts)
                dst = (src + rng.randrange(1, accounts)) % accounts
                try:
                    await transfer(parts, src, dst, rng.randrange(1, 20), deadline=time.monotonic() + 30)
                    outcome = "ok"
                except ConflictError:
                    outcome = "fail"
                except KvStoreError:
                    outcome = "info"
                os.write(fd, f"{outcome}\n".encode())
        finally:
            os.close(fd)
            try:
                await parts.close()
            except KvStoreError:
                pass  # faults while finishing: what was committed is decided in the store

    asyncio.run(main())


# --------------------------------------------------------------------------- crash points

# Where the coordinator stops: all prepared, before its decision reaches the store; its
# decision applied (nothing after); about to send its first resolve CAS.
CRASH_STEPS = ("prepared", "decided", "resolving")


class StallAt(StallingStore):
    """Passes every call through but stalls at a step of the 2PC (`CRASH_STEPS`), announcing
    it in a marker file, so that the parent SIGKILLs the process exactly there."""

    def __init__(self, inner: ObjectStore, step: str, marker: Path, state: dict[str, bool]) -> None:
        super().__init__(inner, step, marker)
        self._state = state  # shared by the root's and the partitions' wrappers

    async def put_if_absent(self, name: str, data: bytes) -> str:
        deciding = "/txn/" in f"/{name}"
        if deciding and self._step == "prepared":
            await self._stall(name)
        etag = await self.inner.put_if_absent(name, data)
        if deciding:
            self._state["decided"] = True
            if self._step == "decided":
                await self._stall(name)
        return etag

    async def put_if_match(self, name: str, data: bytes, etag: str) -> str:
        if self._step == "resolving" and self._state.get("decided") and name.endswith("manifest"):
            await self._stall(name)
        return await self.inner.put_if_match(name, data, etag)


def transfer_then_stall(url: str, kwargs: dict[str, Any], step: str, marker: str) -> None:
    """Transfer 30 from account 0 (partition 0) to account 1 (partition 1) and get killed at `step`."""

    async def main() -> None:
        state: dict[str, bool] = {}
        parts = await open_parts(
            url,
            kwargs,
            2,
            wrap=lambda inner: StallAt(inner, step, Path(marker), state),
            wrap_root=lambda inner: StallAt(inner, step, Path(marker), state),
        )
        await transfer_once(parts, 0, 1, 30)
        await asyncio.Event().wait()  # "resolving": the resolve runs in the background
        raise AssertionError("the stalling store should have stopped this commit")

    asyncio.run(main())


def kill(pid: int) -> None:
    os.kill(pid, signal.SIGKILL)


# Boundaries of the 4-partition store of tests/test_partitions_bulk.py, and one key prefix per partition.
BULK_SPLITS = [b"g", b"n", b"t"]
BULK_PREFIXES = "ahou"


def bulk_pairs(load: int, small: int = 40, big: int = 3000) -> list[tuple[bytes, bytes]]:
    """Load `load`'s pairs, every value naming the load: `small` keys in each of the first
    three partitions and `big` in the last, in descending order (its chunks overlap, so
    they are merged: its share takes longest to write)."""
    pairs = [(f"{c}{j:05d}".encode(), f"{load}.".encode()) for c in BULK_PREFIXES[:3] for j in range(small)]
    pairs += [(f"u{j:05d}".encode(), f"{load}.".encode() + b"x" * 200) for j in reversed(range(big))]
    return pairs


def bulk_load_then_stall(url: str, kwargs: dict[str, Any], step: str, marker: str) -> None:
    """Bulk-load `bulk_pairs(1)` into the partitioned store and get killed at `step`."""

    async def main() -> None:
        import kvstore

        state: dict[str, bool] = {}
        wrap = lambda inner: StallAt(inner, step, Path(marker), state)  # noqa: E731
        async with kvstore.open(url, **kwargs, wrap_object_store=wrap) as db:
            await db.bulk_load(bulk_pairs(1), chunk_bytes=64 * 1024)
            await asyncio.Event().wait()  # "resolving": the resolve runs in the background
        raise AssertionError("the stalling store should have stopped this load")

    asyncio.run(main())
