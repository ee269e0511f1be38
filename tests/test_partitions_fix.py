"""Partitioned stores, review of issue 18: a handle opened before the first split, reads
during a split's copy, tags as fixed points, racing creators (findings 9, 13, 8 and 5).

Each race is set up with a FaultInjectingStore that holds one request of one handle until
the test releases it (never a sleep): the other handles run in that moment.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
from targets import Target

import kvstore
from kvstore import _partition_ops as ops
from kvstore.testing import partitions
from kvstore.testing.faults import FaultInjectingStore

DEADLINE = 30.0  # seconds any held request waits for its release (a failing test ends)


class _Hold(FaultInjectingStore):
    """Holds every safe create (`put_if_absent`) of an object `holds(name)` picks, until the
    test sets `release` (`reached` is set when the first is held). With `after_seal`, only
    once this handle sealed a partition (the CAS recording MOVED_SETTING): a split's copy."""

    def __init__(
        self,
        inner: Any,
        holds: Callable[[str], bool],
        after_seal: bool,
        reached: asyncio.Event,
        release: asyncio.Event,
    ) -> None:
        super().__init__(inner)
        self.holds, self.reached, self.release = holds, reached, release
        self.armed = not after_seal

    async def put_if_match(self, name: str, data: bytes, etag: str) -> str:
        answer: str = await super().put_if_match(name, data, etag)
        if name.endswith("manifest") and b"moved" in data:
            self.armed = True
        return answer

    async def put_if_absent(self, name: str, data: bytes) -> str:
        if self.armed and self.holds(name):
            self.reached.set()
            await asyncio.wait_for(self.release.wait(), DEADLINE)
        answer: str = await super().put_if_absent(name, data)
        return answer


def _holding(
    holds: Callable[[str], bool], *, after_seal: bool
) -> tuple[asyncio.Event, asyncio.Event, Callable[[Any], Any]]:
    """(reached, release, a `wrap_object_store` putting a `_Hold` over the backend)."""
    reached, release = asyncio.Event(), asyncio.Event()
    return reached, release, lambda inner: _Hold(inner, holds, after_seal, reached, release)


# ---------------------------------------------------------------------- finding 9


async def test_a_handle_opened_before_the_first_split_tags_and_watches_the_partitions(durable_target: Target) -> None:
    """Every face operation of a handle that last saw one partition follows the split: its tag
    retains the partitions (readable by every handle), its watch goes on into the successors,
    tags(), history(), describe() see the partitions; a tag taken before the split still reads."""
    async with (
        durable_target.open(values="msgpack") as a,
        durable_target.open(values="msgpack") as b,
        durable_target.open(values="msgpack") as c,
    ):
        await a.put(b"a", 1)
        await a.tag("before")
        assert await b.get(b"a") == 1 and await c.get(b"a") == 1  # both hold the one-partition map
        seen: list[list[bytes] | None] = []

        async def watch() -> None:
            async for change in b.watch(since=b.version, interval=0.01):
                seen.append(change.keys)
                if len(seen) == 2:
                    return

        watcher = asyncio.create_task(watch())
        await a.split(b"m")
        await a.put(b"a", 2)
        await a.put(b"z", 3)
        await asyncio.wait_for(watcher, DEADLINE)
        assert seen == [[b"a"], [b"z"]]  # the commits made in the successors

        assert (await b.tag("after")).version == 3  # the partitions' versions: 2 + 1 (copy and put each)
        for handle in (a, b, c):
            after, before = await handle.snapshot(tag="after"), await handle.snapshot(tag="before")
            assert [kv async for kv in after.scan()] == [(b"a", 2), (b"z", 3)]
            assert [kv async for kv in before.scan()] == [(b"a", 1)]
        assert sorted(t.name for t in await c.tags()) == ["after", "before"]
        history = await c.history()
        assert history and all(i.partition is not None for i in history)  # the partitions' logs
        assert (await c.describe()).partitions == 2
        with pytest.raises(kvstore.TagExistsError, match="before the store was split"):
            await a.tag("before")
        await a.delete_tag("before")
        with pytest.raises(kvstore.TagNotFoundError):
            await c.snapshot(tag="before")
        assert [t.name for t in await b.tags()] == ["after"]


# ---------------------------------------------------------------------- finding 13


@pytest.mark.parametrize("first_split", [True, False], ids=["first-split", "later-split"])
async def test_a_read_only_handle_reads_a_partition_while_a_split_copies_it(
    durable_target: Target, first_split: bool
) -> None:
    """Between the seal and the map's CAS a read-only handle (which cannot finish the split)
    reads the sealed partition: its final version is what the successors will hold."""
    reached, release, wrap = _holding(lambda name: True, after_seal=True)
    async with durable_target.open(values="msgpack", split_keys=None if first_split else [b"m"]) as setup:
        await setup.put(b"a", 1)
        await setup.put(b"h", 2)
    async with (
        durable_target.open(values="msgpack", wrap_object_store=wrap) as a,
        durable_target.open(values="msgpack", read_only=True) as b,
    ):
        assert await b.get(b"a") == 1
        split = asyncio.create_task(a.split(b"g"))
        try:
            await asyncio.wait_for(reached.wait(), DEADLINE)  # sealed, its copy held
            assert await b.get(b"a") == 1
            assert [kv async for kv in b.scan(end=b"m")] == [(b"a", 1), (b"h", 2)]
        finally:
            release.set()
        await asyncio.wait_for(split, DEADLINE)
        assert await b.get(b"h") == 2
        assert [p.start for p in await b.partitions()][:2] == [b"", b"g"]


# ---------------------------------------------------------------------- finding 8


async def test_a_tag_taken_while_a_transaction_is_undecided_never_shows_it(durable_target: Target) -> None:
    """A cross-partition transaction prepared but undecided when the tag is taken is not in the
    tag, and stays out of it once decided committed: the tag records what it shows."""
    reached, release, wrap = _holding(lambda name: "txn/" in name, after_seal=False)
    async with durable_target.open(split_keys=[b"m"], values="msgpack") as setup:
        await setup.put(b"a", "old")
        await setup.put(b"z", "old")
    async with (
        durable_target.open(values="msgpack", wrap_object_store=wrap) as a,
        durable_target.open(values="msgpack") as b,
    ):

        async def write() -> None:
            async with a.transaction() as tx:
                tx.put(b"a", "new")
                tx.put(b"z", "new")

        writer = asyncio.create_task(write())
        try:
            await asyncio.wait_for(reached.wait(), DEADLINE)  # prepared in both, its decision held
            await b.tag("t1")
            assert await (await b.snapshot(tag="t1")).get_many([b"a", b"z"]) == ["old", "old"]
        finally:
            release.set()
        await asyncio.wait_for(writer, DEADLINE)
        assert await b.get_many([b"a", b"z"]) == ["new", "new"]
        for handle in (a, b):
            assert await (await handle.snapshot(tag="t1")).get_many([b"a", b"z"]) == ["old", "old"]


@pytest.mark.parametrize("compacted", [False, True])
async def test_a_transaction_resolved_in_one_partition_while_the_tag_copies_shows_wholly_or_not(
    durable_target: Target, monkeypatch: pytest.MonkeyPatch, compacted: bool
) -> None:
    """Review 4, finding 1: W undecided at the tag's instant is decided and resolved in
    partition A (only) between the instant and the copies of the manifests. A's copy held
    W's writes as data and showed them, B's copy hid W's intent: the tag showed half of W,
    forever. Now the tag takes another instant, also when A compacted W's segment into
    another since (review 5: the check looked for the segment's id)."""
    async with durable_target.open(split_keys=[b"m"], values="bytes") as db:
        await db.put(b"a", b"old")
        await db.put(b"x", b"old")
        (_, ea), (_, eb) = db._router.parts()
        decisions = db._router.decisions()
        txn = ea.new_txn_id()
        name = decisions.name(txn)
        await asyncio.gather(
            ea.prepare(partitions.request(ea, None, set(), {b"a": b"new"}, txn), name),
            eb.prepare(partitions.request(eb, None, set(), {b"x": b"new"}, txn), name),
        )
        real_tag_one, decided = ops._tag_one, asyncio.Lock()

        async def tag_one(router: Any, pid: str, tag: str) -> Any:
            async with decided:  # the first copy, between the instant (W undecided) and the copies
                if await decisions.outcome(name) is None:
                    assert await decisions.decide(name, "committed", txn, []) == "committed"
                    assert await ea.resolve()
                    if compacted:
                        await ea.compact(full=True)
            return await real_tag_one(router, pid, tag)

        monkeypatch.setattr(ops, "_tag_one", tag_one)
        await db.tag("t1")
        assert await (await db.snapshot(tag="t1")).get_many([b"a", b"x"]) == [b"new", b"new"]


# ---------------------------------------------------------------------- finding 5


async def test_a_creator_without_split_keys_racing_one_with_them_joins_its_partitions(
    durable_target: Target,
) -> None:
    """The root manifest decides the store's shape: a creator with split_keys makes it sealed
    first, so one without them, opening meanwhile (before the map exists), opens the partitions
    (finishing the creation), and its writes are everyone's."""
    reached, release, wrap = _holding(lambda name: name.endswith("partitions"), after_seal=False)
    creating = asyncio.create_task(
        _opened(durable_target.open(values="msgpack", split_keys=[b"m"], wrap_object_store=wrap))
    )
    try:
        await asyncio.wait_for(reached.wait(), DEADLINE)  # the split creator is about to write its map
        with pytest.raises(kvstore.StoreNotFoundError, match="being created with split keys"):
            await durable_target.open(values="msgpack", read_only=True)
        async with durable_target.open(values="msgpack") as x:
            assert [p.start for p in await x.partitions()] == [b"", b"m"]
            await x.put(b"a", "written by x")
    finally:
        release.set()
    y = await asyncio.wait_for(creating, DEADLINE)
    try:
        assert await y.get(b"a") == "written by x"
        assert len(await y.partitions()) == 2
    finally:
        await y.close()
    async with durable_target.open(values="msgpack", read_only=True) as fresh:
        assert await fresh.get(b"a") == "written by x"


async def _opened(opener: kvstore.StoreOpener) -> kvstore.Store:
    return await opener
