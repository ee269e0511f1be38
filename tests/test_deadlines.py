"""Every wait has a deadline, and closing abandons no request.

Stalls on the wire (an endpoint that stops answering, answers cut or stalled)
are in `test_wire_faults.py`; these are the waits of the protocol layers and
of the local backend.
"""

from __future__ import annotations

import asyncio
import fcntl
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from targets import Target, file_target

import kvstore
from kvstore._objectstore import ObjectInfo, RetryingObjectStore, TransientError
from kvstore.testing.faults import FaultInjectingStore, FaultPlan, FaultRule

pytestmark = pytest.mark.timeout(60)


async def test_open_and_reads_give_up_on_a_store_that_never_answers(target: Target) -> None:
    async with target.open() as db:
        await db.put(b"k", b"v")
    stuck = FaultPlan(rules={"get": FaultRule(latency=3600.0)})
    retry = kvstore.RetryPolicy(attempt_timeout=0.3, total_timeout=1.0)
    started = time.monotonic()
    with pytest.raises(kvstore.StoreUnavailableError, match="deadline"):
        await target.open(
            options=kvstore.StoreOptions(retry=retry),
            create=False,
            wrap_object_store=lambda inner: FaultInjectingStore(inner, stuck),
        )
    assert time.monotonic() - started < 1.0 + 1.0


class _ListsThenStalls:
    """A backend whose listing yields `names` and then, unless `finishes`, never answers again."""

    description = "a listing that stalls"

    def __init__(self, names: int, *, finishes: bool) -> None:
        self._names = names
        self._finishes = finishes

    async def list(self, prefix: str) -> AsyncIterator[ObjectInfo]:
        for i in range(self._names):
            yield ObjectInfo(f"{prefix}{i:06d}", 1, '"e"', 0.0)
        if not self._finishes:
            await asyncio.Event().wait()


async def test_a_listing_has_one_deadline_per_page(monkeypatch: pytest.MonkeyPatch) -> None:
    """Not a `wait_for` (a task, before Python 3.12) per listed name: a million-object
    listing would make a million."""
    waits = 0
    real_wait_for = asyncio.wait_for

    def counting(awaitable: Any, timeout: float | None) -> Any:
        nonlocal waits
        waits += 1
        return real_wait_for(awaitable, timeout)

    monkeypatch.setattr(asyncio, "wait_for", counting)
    objects = RetryingObjectStore(_ListsThenStalls(2500, finishes=True))  # type: ignore[arg-type]
    assert len([info async for info in objects.list("p/")]) == 2500
    assert waits == 3


@pytest.mark.parametrize(("listed", "pages"), [(0, 0), (1500, 1)])
async def test_a_stalled_listing_fails_within_its_deadline(listed: int, pages: int) -> None:
    """Before the first name it is retried until the total deadline; after names were
    consumed it fails at once (one page's deadline), since it cannot be retried. Names
    come a page (1000) at a time: the 500 of the page that never completes are not seen."""
    retry = kvstore.RetryPolicy(attempt_timeout=0.3, total_timeout=1.0)
    objects = RetryingObjectStore(_ListsThenStalls(listed, finishes=False), retry)  # type: ignore[arg-type]
    seen = 0
    started = time.monotonic()
    with pytest.raises(kvstore.StoreUnavailableError, match="deadline") as caught:
        async for _ in objects.list("p/"):
            seen += 1
    elapsed = time.monotonic() - started
    assert seen == pages * 1000
    assert "no page within 0.3 s" in str(caught.value)
    if listed:
        assert objects.requests["LIST"] == 1 and elapsed < 0.3 + 0.5
    else:  # the last attempt may start just before the total deadline
        assert objects.requests["LIST"] >= 3 and elapsed < 1.0 + 0.3 + 0.5


async def test_the_local_cas_lock_wait_is_bounded(tmp_path: Path) -> None:
    target = file_target(tmp_path)
    retry = kvstore.RetryPolicy(total_timeout=1.5)
    async with target.open(options=kvstore.StoreOptions(retry=retry)) as db:
        await db.put(b"k", b"1")
        lock_path = tmp_path / "store" / ".kvstore-work" / "locks" / "manifest"
        with open(lock_path, "a+b") as holder:  # another writer, stopped while holding the lock
            fcntl.flock(holder.fileno(), fcntl.LOCK_EX)
            started = time.monotonic()
            # Unknown, not failed: the CAS was sent, and the commit protocol cannot tell
            # how far it got (the worker thread gives up once the caller has).
            with pytest.raises(kvstore.CommitOutcomeUnknownError) as caught:
                await db.put(b"k", b"2")
            waited = time.monotonic() - started
            fcntl.flock(holder.fileno(), fcntl.LOCK_UN)
        assert isinstance(caught.value.__cause__, kvstore.StoreUnavailableError)
        assert "deadline" in str(caught.value.__cause__)
        assert waited < 3 * (1.5 + 0.5)  # three CAS attempts, each within the total deadline
    async with target.open() as db:
        await db.put(b"k", b"3")  # the lock is free again: writes go through
        assert await db.get(b"k") == b"3"
        assert db.version >= 2


class _Recording:
    """Delegates to a backend and records when reads finish and when it is closed;
    reads wait for `release` once `armed`."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.events: list[str] = []
        self.armed = False
        self.started = asyncio.Event()
        self.release = asyncio.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def get(self, name: str, **kwargs: Any) -> Any:
        if self.armed:
            self.started.set()
            await self.release.wait()
        blob = await self._inner.get(name, **kwargs)
        self.events.append("read done")
        return blob

    async def close(self) -> None:
        self.events.append("closed")
        await self._inner.close()


async def test_close_waits_for_requests_in_flight(durable_target: Target) -> None:
    async with durable_target.open() as db:
        await db.put(b"k", b"v")
    made: list[_Recording] = []
    db = await durable_target.open(wrap_object_store=lambda inner: made.append(_Recording(inner)) or made[-1])
    backend = made[0]
    backend.armed = True
    reading = asyncio.create_task(db.get(b"k"))
    await backend.started.wait()  # the read's request is in flight
    closing = asyncio.create_task(db.close())
    backend.release.set()
    await closing
    assert reading.done() and reading.result() == b"v"
    assert backend.events[-2:] == ["read done", "closed"]


class _FailsOnce:
    """Delegates to a backend; once `armed`, the next read fails transiently (so the
    retry layer backs off before trying again) and reads after `close` are counted."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.armed = False
        self.failed = asyncio.Event()
        self.closed = False
        self.reads_after_close = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def get(self, name: str, **kwargs: Any) -> Any:
        if self.closed:
            self.reads_after_close += 1
        if self.armed:
            self.armed = False
            self.failed.set()
            raise TransientError("a 503, say")
        return await self._inner.get(name, **kwargs)

    async def close(self) -> None:
        self.closed = True
        await self._inner.close()


async def test_close_waits_for_an_operation_between_two_attempts(durable_target: Target) -> None:
    async with durable_target.open() as db:
        await db.put(b"k", b"v")
    made: list[_FailsOnce] = []
    retry = kvstore.RetryPolicy(base_delay=0.2, max_delay=0.2)  # a real pause between the attempts
    db = await durable_target.open(
        options=kvstore.StoreOptions(retry=retry),
        wrap_object_store=lambda inner: made.append(_FailsOnce(inner)) or made[-1],
    )
    made[0].armed = True
    reading = asyncio.create_task(db.get(b"k"))
    await made[0].failed.wait()  # the read is now backing off before its second attempt
    await db.close()
    assert reading.done() and reading.result() == b"v"
    assert made[0].reads_after_close == 0


async def test_a_past_version_newer_than_the_reused_manifest_is_read(tmp_path: Path) -> None:
    target = file_target(tmp_path)
    stale_ok = kvstore.StoreOptions(max_staleness=3600.0)  # reads may reuse the manifest for an hour
    async with target.open(options=stale_ok) as db, target.open() as other:
        await db.put(b"k", b"1")
        later = await other.put(b"k", b"2")
        assert await (await db.snapshot(version=later)).get(b"k") == b"2"
