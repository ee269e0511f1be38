"""Expiry (issue 19, item 3): `put(..., ttl=)` stores an expiring put (segment ext code 1);
reads hide it once the reader's clock passes its expiry, as a tombstone would, and
compaction removes it. Expiry is not a write.

The readers' clock is `kvstore._ttl.clock`; the tests move it on instead of sleeping.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import msgpack
import pytest
from segment_bytes import index_of
from targets import Target

import kvstore
import kvstore._ttl as ttl
from kvstore._operands import ADD, Operands
from kvstore._segment import decode_block, encode_segment
from kvstore._ttl import Expiring

NO_COMPACT = kvstore.StoreOptions(auto_compact=False)
HOUR = 3600.0


class Clock:
    """`kvstore._ttl.clock`, moved on by hand."""

    def __init__(self, start: float) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Iterator[Clock]:
    c = Clock(1_800_000_000.0)
    monkeypatch.setattr(ttl, "clock", c)
    yield c


async def test_an_expired_put_is_hidden_from_every_read(target: Target, clock: Clock) -> None:
    async with target.open(values="msgpack", create=True, options=NO_COMPACT) as db:
        await db.put("session", {"user": 1}, ttl=HOUR)
        await db.put("keep", 1)
        snap = await db.snapshot()
        clock.now += HOUR - 1
        assert await db.get("session") == {"user": 1}
        assert await db.get_many(["session", "keep"]) == [{"user": 1}, 1]
        clock.now += 1  # expiry is inclusive: at expires, it is gone
        assert await db.get("session") is None
        assert await db.get("session", "gone") == "gone"
        assert await db.get_many(["session", "keep"]) == [None, 1]
        assert [k async for k, _ in db.scan()] == [b"keep"]
        assert [k async for k, _ in db.scan(reverse=True)] == [b"keep"]
        assert await snap.get("session") is None  # judged when read, in an older snapshot too
        async with db.transaction() as tx:
            assert await tx.get("session") is None
            assert [k async for k, _ in tx.scan()] == [b"keep"]


async def test_an_expired_put_hides_the_older_value_below_it(target: Target, clock: Clock) -> None:
    options = kvstore.StoreOptions(auto_compact=False, history_versions=0, history_seconds=0)
    async with target.open(values="msgpack", create=True, options=options) as db:
        first = await db.put("k", "old")
        await db.put("k", "new", ttl=10)
        await db.put("other", 1)
        clock.now += 10
        assert await db.get("k") is None  # not "old": an expired put reads as a tombstone
        assert await (await db.snapshot(version=first)).get("k") == "old"  # "old" was newest then
        (result,) = await db.compact(full=True)
        assert await db.get("k") is None and await db.get("other") == 1
        # The expired put became a tombstone over "old", and with nothing older anywhere
        # both went: only "other" is left.
        assert result.entries_out == 1, result
        await db.put("k", "again")
        assert await db.get("k") == "again"


async def test_compaction_keeps_a_live_expiring_put_and_its_expiry(target: Target, clock: Clock) -> None:
    async with target.open(values="msgpack", create=True, options=NO_COMPACT) as db:
        await db.put("k", "v", ttl=100)
        await db.put("j", "w")
        await db.compact(full=True)
        clock.now += 99
        assert await db.get("k") == "v"
        clock.now += 1
        assert await db.get("k") is None
        assert await db.get("j") == "w"


async def test_ttl_in_a_transaction_and_its_own_reads(target: Target, clock: Clock) -> None:
    async with target.open(create=True, options=NO_COMPACT) as db:
        async with db.transaction() as tx:
            tx.put(b"a", b"1", ttl=5)
            assert await tx.get(b"a") == b"1"
            clock.now += 5
            assert await tx.get(b"a") is None  # its own write expired too
        assert await db.get(b"a") is None


@pytest.mark.parametrize("bad", [0, -1, float("nan"), float("inf"), True, "10"])
async def test_bad_ttls_are_refused(bad: Any) -> None:
    async with kvstore.open("memory://ttl-bad", create=True) as db:
        with pytest.raises(kvstore.ValidationError, match="ttl"):
            await db.put(b"k", b"v", ttl=bad)
        assert db.version == 0


async def test_expiry_is_not_a_write(tmp_path: Any, clock: Clock) -> None:
    # It commits nothing, so it conflicts with nothing and no watch sees it.
    async with kvstore.open(f"file://{tmp_path}/s", create=True, options=NO_COMPACT) as db:
        await db.put(b"k", b"v", ttl=1)
        version = db.version
        tx = db.transaction()
        assert await tx.get(b"k") == b"v"
        clock.now += 1
        assert await db.get(b"k") is None
        tx.put(b"other", b"x")
        await tx.commit()  # read k alive, k expired since: no conflict
        assert tx.committed_version == version + 1
        # The commit is there already: one poll finds it (the deadline bounds a bug's wait).
        changes = await asyncio.wait_for(_watched(db, version, version + 1), 30)
        assert [c.keys for c in changes] == [[b"other"]]


async def _watched(db: kvstore.Store, since: int, last: int) -> list[Any]:
    """The changes `watch` reports after `since`, up to version `last`."""
    changes = []
    async for change in db.watch(since=since, interval=0.01):
        changes.append(change)
        if change.version >= last:
            return changes
    return changes


async def test_atomic_operations_over_an_expiring_put(target: Target, clock: Clock) -> None:
    # An expired put is a tombstone: operands above it then apply to nothing.
    async with target.open(values="msgpack", create=True, options=NO_COMPACT) as db:
        await db.put("n", 100, ttl=10)
        await db.add("n", 5)
        assert await db.get("n") == 105
        await db.compact(full=True)  # not folded while the put lives: its expiry changes the sum
        assert await db.get("n") == 105
        clock.now += 10
        assert await db.get("n") == 5
        await db.compact(full=True)
        assert await db.get("n") == 5


async def test_ttl_from_the_sync_face_and_the_cli(tmp_path: Any, clock: Clock) -> None:
    def work() -> Any:
        with kvstore.open_sync(f"file://{tmp_path}/s", create=True) as db:
            db.put(b"a", b"1", ttl=3)
            with db.transaction() as tx:
                tx.put(b"b", b"2", ttl=3)
            before = db.get_many([b"a", b"b"])
            clock.now += 3
            return before, db.get_many([b"a", b"b"])

    assert await asyncio.to_thread(work) == ([b"1", b"2"], [None, None])


def test_golden_expiring_values() -> None:
    # docs/format.md, "Special values (format 4)": ext 1, and operands based on one
    value = Expiring(b"v", 1800000000.5)
    assert msgpack.packb(value.to_ext()).hex() == "c70d0192c40176cb41dad27480200000"
    based = Operands(((ADD, 1),), True, value)
    assert msgpack.packb(based.to_ext()).hex() == "c7140292920001c70d0192c40176cb41dad27480200000"
    entries = [(b"k", 2, based), (b"k", 1, value)]
    data = encode_segment(entries, uniform_version=False).data
    (part,) = index_of(data)[1]
    block = decode_block(data[slice(*part.span(0))], "s", 0)
    assert list(zip(block.keys, block.versions or [], block.values, strict=True)) == entries
