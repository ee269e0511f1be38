"""Readers that share one load of a cold segment, when one of them gives up.

Concurrent misses of one segment index, partition or block share a single GET
(`ByteLRU.get_or_load`), run by the first reader. When that reader is cancelled
or times out, the others were not: they must not get its CancelledError, but
load the segment themselves. `Store.close()` during such a load neither hangs
nor leaves a task behind.

The segment GET is held on an event, so which reader loads and which one joins
is decided by the test, not by timing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

import pytest
from targets import Target

import kvstore

pytestmark = pytest.mark.timeout(60)

DEADLINE = 10.0  # seconds any single wait of these tests may take


class HeldSegmentReads:
    """Delegates to a backend; while `hold` is set, a GET of a segment object waits for
    `release` (it has been sent, its answer has not arrived)."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.hold = False
        self.started = asyncio.Event()  # a held GET is waiting
        self.release = asyncio.Event()
        self.segment_gets = 0
        self.cancelled_gets = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def get(self, name: str, **kwargs: Any) -> Any:
        if "/segments/" in f"/{name}":
            self.segment_gets += 1
            if self.hold:
                self.started.set()
                try:
                    await self.release.wait()
                except asyncio.CancelledError:
                    self.cancelled_gets += 1
                    raise
        return await self._inner.get(name, **kwargs)


OPTIONS = kvstore.StoreOptions(inline_segment_bytes=0, auto_compact=False, max_staleness=3600)


async def _store_of_two_keys(target: Target) -> None:
    async with target.open(options=OPTIONS) as db:
        async with db.transaction() as tx:
            tx.put(b"a", b"1")
            tx.put(b"b", b"2")  # one segment object holds both


async def _open_held(target: Target) -> tuple[kvstore.Store, HeldSegmentReads]:
    made: list[HeldSegmentReads] = []

    def wrap(inner: Any) -> HeldSegmentReads:
        made.append(HeldSegmentReads(inner))
        return made[-1]

    db = await target.open(options=OPTIONS, wrap_object_store=wrap)
    made[0].hold = True
    return db, made[0]


async def _until(condition: Callable[[], bool], what: str) -> None:
    """Let the other tasks run until `condition` holds (each step is one loop turn)."""
    for _ in range(10_000):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError(f"never happened: {what}")


async def _loader_and_joiner(
    db: kvstore.Store, held: HeldSegmentReads, first: Coroutine[Any, Any, Any]
) -> tuple[asyncio.Task[Any], asyncio.Task[Any]]:
    """`first` starts the load of the cold segment (its GET held); a get of b"b" joins it."""
    a = asyncio.create_task(first)
    await asyncio.wait_for(held.started.wait(), DEADLINE)
    joined_before = db.statistics()["cache"]["hits"]
    b = asyncio.create_task(db.get(b"b"))
    # B finds the load under way and waits for it (a cache hit on a pending load).
    await _until(lambda: db.statistics()["cache"]["hits"] > joined_before, "B joins A's load")
    assert held.segment_gets == 1
    return a, b


async def _loader_cancelled(target: Target) -> tuple[kvstore.Store, HeldSegmentReads, asyncio.Task[Any]]:
    """A store whose segment GETs are held; the reader that loaded the segment was
    cancelled, and B, which had joined its load, has sent a GET of its own."""
    await _store_of_two_keys(target)
    db, held = await _open_held(target)
    a, b = await _loader_and_joiner(db, held, db.get(b"a"))
    a.cancel()
    await _until(lambda: a.done(), "A ends")
    assert not b.done()  # B, never cancelled, still waits for the segment
    await _until(lambda: held.segment_gets == 2, "B loads the segment itself")
    return db, held, b


async def test_a_cancelled_reader_leaves_the_shared_load_to_the_others(target: Target) -> None:
    await _store_of_two_keys(target)
    db, held = await _open_held(target)
    async with db:
        a, b = await _loader_and_joiner(db, held, db.get(b"a"))
        a.cancel()
        with pytest.raises(asyncio.CancelledError):
            await a
        await _until(lambda: a.done(), "A ends")
        assert not b.done()  # B, never cancelled, still waits for the segment
        held.release.set()
        assert await asyncio.wait_for(b, DEADLINE) == b"2"
        assert held.cancelled_gets == 1  # A's GET, cancelled with A
        assert held.segment_gets == 2  # B's own, once A's load was gone
        assert await db.get(b"a") == b"1"  # cached by then
        assert held.segment_gets == 2


async def test_a_reader_that_times_out_leaves_the_shared_load_to_the_others(target: Target) -> None:
    # The way a request handler's deadline cancels a read: asyncio.wait_for on A.
    await _store_of_two_keys(target)
    db, held = await _open_held(target)
    async with db:
        a, b = await _loader_and_joiner(db, held, asyncio.wait_for(db.get(b"a"), 0.05))
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(a, DEADLINE)  # the GET is held: A always times out
        assert not b.done()
        held.release.set()
        assert await asyncio.wait_for(b, DEADLINE) == b"2"
        assert held.segment_gets == 2


async def test_close_during_a_shared_load_waits_for_the_reader_still_waiting(target: Target) -> None:
    db, held, b = await _loader_cancelled(target)
    closing = asyncio.create_task(db.close())
    for _ in range(100):  # loop turns enough for close to reach its wait
        await asyncio.sleep(0)
    assert not b.done() and not closing.done()  # close waits for the request in flight
    held.release.set()
    await asyncio.wait_for(closing, DEADLINE)
    assert b.done() and b.result() == b"2"  # answered before the store closed
    assert asyncio.all_tasks() == {asyncio.current_task()}  # nothing left running past close


async def test_a_load_every_reader_left_stops_and_close_does_not_wait_for_it(target: Target) -> None:
    db, held, b = await _loader_cancelled(target)
    b.cancel()
    await _until(lambda: b.done(), "B ends")
    assert held.cancelled_gets == 2  # no GET goes on once no reader wants it
    # The held GET is never released: close must not wait for it (nor for its deadline).
    await asyncio.wait_for(db.close(), DEADLINE)
    assert asyncio.all_tasks() == {asyncio.current_task()}
