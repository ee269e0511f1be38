"""Order and validation across partitions (review of issue 18): a transaction that begins
after a cross-partition commit was acknowledged sees it, even while another reader's
lookup of the same decision, sent before the decision existed, is still on its way
back; read-only reads need no writer to resolve a commit they showed; a resolve is no
conflict for a transaction that showed the commit. (A split of a partition a transaction
read refuses its commit: test_two_phase_reads.)"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

import pytest

import kvstore
from kvstore._objectstore._protocol import ObjectNotFound
from kvstore.testing.faults import FaultInjectingStore, SimulatedCrash

DEADLINE = 30.0


class _Moments:
    def __init__(self) -> None:
        self.prepared = asyncio.Event()  # the coordinator is about to create its decision
        self.answered_absent = asyncio.Event()  # the store told the early reader "undecided"
        self.acknowledged = asyncio.Event()  # the coordinator's commit returned


def _is_decision(name: str) -> bool:
    return name.startswith("txn/") or "/txn/" in name


async def test_a_reader_starting_after_the_acknowledgement_sees_the_commit(tmp_path: Path) -> None:
    moments = _Moments()

    class Coordinator(FaultInjectingStore):
        async def put_if_absent(self, name: str, data: Any) -> Any:
            if _is_decision(name):
                moments.prepared.set()
                # The decision is created only after the early reader's GET found none.
                await asyncio.wait_for(moments.answered_absent.wait(), DEADLINE)
            return await super().put_if_absent(name, data)

    class Reader(FaultInjectingStore):
        async def get(self, name: str, **kw: Any) -> Any:
            if not _is_decision(name) or moments.answered_absent.is_set():
                return await super().get(name, **kw)
            try:
                return await super().get(name, **kw)
            except ObjectNotFound:
                moments.answered_absent.set()
                # The answer "undecided" travels back only after the commit was acknowledged.
                await asyncio.wait_for(moments.acknowledged.wait(), DEADLINE)
                raise

    url = str(tmp_path / "db")
    async with kvstore.open(url, split_keys=[b"m"], values="msgpack", create=True) as setup:
        await setup.put(b"a", "old")
        await setup.put(b"z", "old")
    async with (
        kvstore.open(url, values="msgpack", wrap_object_store=Coordinator) as a,
        kvstore.open(url, values="msgpack", wrap_object_store=Reader) as b,
    ):

        async def commit() -> None:
            async with a.transaction() as t:
                t.put(b"a", "new")
                t.put(b"z", "new")
            moments.acknowledged.set()

        async def early_read() -> Any:
            await asyncio.wait_for(moments.prepared.wait(), DEADLINE)
            async with b.transaction() as tx:
                return await tx.get(b"a")

        committing = asyncio.create_task(commit())
        early = asyncio.create_task(early_read())
        await asyncio.wait_for(committing, DEADLINE)
        for key in (b"a", b"z"):  # each read begins after the acknowledgement
            async with b.transaction() as late:
                assert await late.get(key) == "new"
        assert await asyncio.wait_for(early, DEADLINE) == "old"  # it looked before the decision


async def test_read_only_reads_see_a_commit_whose_coordinator_died_before_resolving(tmp_path: Path) -> None:
    """The coordinator dies right after its decision "committed" landed: no writer resolves
    the intents, yet a read-only handle's validated reads across the partitions show the
    commit at once (they used to conflict until some writer committed there)."""
    url = str(tmp_path / "db")
    async with kvstore.open(url, split_keys=[b"m"], values="msgpack", create=True) as setup:
        await setup.put(b"a", "old")
        await setup.put(b"z", "old")
    made: list[FaultInjectingStore] = []

    def wrap(inner: Any) -> FaultInjectingStore:
        made.append(FaultInjectingStore(inner))
        return made[-1]

    coordinator = await kvstore.open(url, values="msgpack", wrap_object_store=wrap)
    made[0].script("put_if_absent", "crash_after_apply")  # the decision create: applied, then the process dies
    with pytest.raises(SimulatedCrash):
        async with coordinator.transaction() as t:
            t.put(b"a", "new")
            t.put(b"z", "new")
    async with kvstore.open(url, values="msgpack", read_only=True) as reader:
        assert await asyncio.wait_for(reader.get_many([b"a", b"z"]), DEADLINE) == ["new", "new"]
        async with reader.transaction() as tx:
            assert [await tx.get(b"a"), await tx.get(b"z")] == ["new", "new"]


async def test_a_resolve_is_no_conflict_for_a_transaction_that_saw_the_commit(tmp_path: Path) -> None:
    """A transaction reads a key of a cross-partition commit while its intents await their
    resolve, then the resolve lands, then the transaction writes: the resolve changed
    nothing the transaction read (it showed the commit), so it commits, first time."""
    url = str(tmp_path / "db")
    release = asyncio.Event()
    decided = asyncio.Event()
    both_resolved = asyncio.Event()
    resolves: list[str] = []

    class SlowResolver(FaultInjectingStore):
        async def put_if_absent(self, name: str, data: Any) -> Any:
            result = await super().put_if_absent(name, data)
            if _is_decision(name):
                decided.set()
            return result

        async def put_if_match(self, name: str, data: Any, etag: Any) -> Any:
            if not decided.is_set():
                return await super().put_if_match(name, data, etag)
            await asyncio.wait_for(release.wait(), DEADLINE)  # the resolves, after the decision
            result = await super().put_if_match(name, data, etag)
            resolves.append(name)
            if len(resolves) == 2:  # one per partition
                both_resolved.set()
            return result

    async with kvstore.open(url, split_keys=[b"m"], values="msgpack", create=True) as setup:
        await setup.put(b"a", "old")
        await setup.put(b"z", "old")
    async with (
        kvstore.open(url, values="msgpack", wrap_object_store=SlowResolver) as a,
        kvstore.open(url, values="msgpack") as b,
    ):
        async with a.transaction() as t:
            t.put(b"a", "new")
            t.put(b"z", "new")
        async with b.transaction() as tx:
            assert await tx.get(b"a") == "new"  # through the decision: the intent is not resolved yet
            release.set()
            await asyncio.wait_for(both_resolved.wait(), DEADLINE)
            assert not any([(await e.refresh()).intents for e in b._router.all_engines()])
            tx.put(b"a", "newer")
        assert await b.get(b"a") == "newer"


async def test_blind_writes_across_partitions_follow_a_split_the_handle_missed(tmp_path: Path) -> None:
    """Handle B's map predates a split by A: B's blind write of keys in two partitions,
    one of them retired, follows the split and commits (it failed on every retry)."""
    url = str(tmp_path / "db")
    async with (
        kvstore.open(url, split_keys=[b"m"], values="msgpack", create=True) as a,
        kvstore.open(url, values="msgpack") as b,
    ):
        await a.split(b"g")
        async with b.transaction() as tx:
            tx.put(b"a", 1)
            tx.put(b"z", 1)
        assert await a.get_many([b"a", b"z"]) == [1, 1]
        assert len(await b.partitions()) == 3


async def test_watch_reports_a_cross_partition_commit_once_and_an_aborted_one_never(tmp_path: Path) -> None:
    async with kvstore.open(str(tmp_path / "db"), split_keys=[b"m"], values="msgpack", create=True) as db:
        await db.put(b"a", 0)
        await db.put(b"z", 0)
        reported: list[bytes] = []
        seen_marker = asyncio.Event()

        async def watch() -> None:
            async for change in db.watch(interval=0.01):
                reported.extend(change.keys or [])
                if b"marker" in reported:
                    seen_marker.set()
                if b"zend" in reported:
                    return

        watching = asyncio.ensure_future(watch())
        for _ in range(200):  # until the watcher has its starting point and reports a commit
            await db.put(b"marker", 1)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(seen_marker.wait(), 0.05)
                break
        assert seen_marker.is_set()
        doomed = db.transaction()
        await doomed.get(b"a")
        await db.put(b"a", 1)  # changes what `doomed` read: its prepare there fails, z's may land
        doomed.put(b"a", 2)
        doomed.put(b"z", 2)
        with pytest.raises(kvstore.ConflictError):
            await doomed.commit()
        async with db.transaction() as tx:
            tx.put(b"a", 3)
            tx.put(b"z", 3)
        # A cross-partition commit is reported when resolved in each partition: a commit of
        # z's partition after that (`zend`) comes after it in that partition's order.
        for engine in db._router.all_engines():
            await engine.resolve()
        await db.put(b"zend", 1)
        await asyncio.wait_for(watching, DEADLINE)
        after = reported[reported.index(b"marker") :]
        assert sorted(k for k in after if k != b"marker") == [b"a", b"a", b"z", b"zend"]
        assert await db.get_many([b"a", b"z"]) == [3, 3]


async def test_a_put_on_a_key_an_abandoned_intent_holds_commits_once_the_intent_is_aborted(tmp_path: Path) -> None:
    """The coordinator dies after its prepares, before any decision: its intents hold their
    keys, undecided. A plain `put`/`add` of such a key (a blind write) is retried until a
    writer aborts the intent after `intent_timeout`, then commits: it is not refused."""
    url = str(tmp_path / "db")
    options = kvstore.StoreOptions(intent_timeout=0.5)
    async with kvstore.open(url, split_keys=[b"m"], values="msgpack", create=True, options=options) as setup:
        await setup.put(b"a", 0)
        await setup.put(b"z", 0)
    made: list[FaultInjectingStore] = []

    def wrap(inner: Any) -> FaultInjectingStore:
        made.append(FaultInjectingStore(inner))
        return made[-1]

    coordinator = await kvstore.open(url, values="msgpack", wrap_object_store=wrap, options=options)
    made[0].script("put_if_absent", "crash")  # dies before its decision is created
    with pytest.raises(SimulatedCrash):
        async with coordinator.transaction() as t:
            t.put(b"a", 1)
            t.put(b"z", 1)
    async with kvstore.open(url, values="msgpack", options=options) as db:
        await asyncio.wait_for(db.put(b"a", 5), DEADLINE)
        await asyncio.wait_for(db.add(b"z", 2), DEADLINE)
        assert await db.get_many([b"a", b"z"]) == [5, 2]
