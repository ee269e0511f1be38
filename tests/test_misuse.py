"""Misuse of the API says so: dropped writes, nested transactions, sync and async mixed up."""

from __future__ import annotations

import asyncio
import gc
import logging
import warnings
from typing import Any

import pytest
from targets import Target, engine_of, memory_target

import kvstore

FEW_ATTEMPTS = kvstore.StoreOptions(transact_max_attempts=5)


# -- dropped writes ----------------------------------------------------------


async def test_collected_transaction_with_writes_warns() -> None:
    async with memory_target().open() as db:
        tx = db.transaction()
        tx.put(b"dropped", b"v")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            del tx
            gc.collect()
        messages = [str(w.message) for w in caught if w.category is ResourceWarning]
        assert len(messages) == 1
        assert "1 buffered write(s) (b'dropped')" in messages[0] and "dropped" in messages[0]
        assert await db.get(b"dropped") is None


def _errors_logged(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "kvstore" and r.levelno >= logging.ERROR]


async def test_collected_transaction_with_writes_logs_an_error(caplog: pytest.LogCaptureFixture) -> None:
    """Lost writes are seen by default: ResourceWarning is hidden unless asked for, a logged error is not."""
    async with memory_target().open() as db:
        tx = db.transaction()
        tx.put(b"a", b"1")
        tx.put(b"b", b"2")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ResourceWarning)  # the default filter: hidden
            del tx
            gc.collect()
    (message,) = _errors_logged(caplog)
    assert message.startswith("a kvstore transaction on memory://")
    assert "with 2 buffered write(s) (b'a', b'b') was garbage-collected without commit() or discard()" in message
    assert "the writes were dropped" in message


def test_collected_blocking_transaction_with_writes_logs_an_error(caplog: pytest.LogCaptureFixture) -> None:
    with memory_target().open_sync() as db:
        tx = db.transaction()
        tx.put(b"lost", b"1")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ResourceWarning)
            del tx
            gc.collect()
        assert db.get(b"lost") is None
    (message,) = _errors_logged(caplog)
    assert "1 buffered write(s) (b'lost')" in message and "the writes were dropped" in message


async def test_finished_or_empty_transactions_do_not_warn(caplog: pytest.LogCaptureFixture) -> None:
    async with memory_target().open() as db:
        with warnings.catch_warnings():
            warnings.simplefilter("error", ResourceWarning)
            committed = db.transaction()
            committed.put(b"a", b"1")
            await committed.commit()
            discarded = db.transaction()
            discarded.put(b"b", b"2")
            discarded.discard()
            read_only = db.transaction()
            await read_only.get(b"a")
            del committed, discarded, read_only
            gc.collect()
    assert _errors_logged(caplog) == []


class _HeldCAS:
    """A backend whose manifest compare-and-swaps wait, once `holding`, until `release` is set."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.holding = False
        self.held = asyncio.Event()
        self.release = asyncio.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def put_if_match(self, name: str, data: bytes, etag: str) -> str:
        if self.holding:
            self.held.set()
            await self.release.wait()
        result: str = await self.inner.put_if_match(name, data, etag)
        return result


async def test_store_collected_with_commits_in_flight_logs_an_error(caplog: pytest.LogCaptureFixture) -> None:
    backend: list[_HeldCAS] = []

    def wrap(inner: Any) -> _HeldCAS:
        backend.append(_HeldCAS(inner))
        return backend[0]

    db = await memory_target().open(wrap_object_store=wrap)
    engine = engine_of(db)
    backend[0].holding = True
    tx = db.transaction()
    tx.put(b"k", b"v")
    commit = asyncio.create_task(tx.commit())
    await asyncio.wait_for(backend[0].held.wait(), 10)  # the commit is in flight
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        del db
        gc.collect()
    (message,) = _errors_logged(caplog)
    assert message.startswith("<kvstore.Store memory://")
    assert "was garbage-collected, never closed, with 1 commit(s) in flight" in message
    assert [str(w.message) for w in caught if w.category is ResourceWarning] == [message]
    backend[0].release.set()
    assert await asyncio.wait_for(commit, 10) == 1
    await engine.close()


async def test_store_collected_without_commits_in_flight_only_warns(caplog: pytest.LogCaptureFixture) -> None:
    db = await memory_target().open()
    await db.put(b"k", b"v")
    engine = engine_of(db)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        del db
        gc.collect()
    assert any("was never closed" in str(w.message) for w in caught if w.category is ResourceWarning)
    assert _errors_logged(caplog) == []
    await engine.close()


# -- nested transactions -----------------------------------------------------


async def test_transact_inside_transact_fails_at_once(target: Target) -> None:
    calls = 0

    async def inner(tx: kvstore.Transaction) -> None:
        tx.put(b"inner", b"1")

    async def outer(tx: kvstore.Transaction) -> None:
        nonlocal calls
        calls += 1
        await tx.get(b"inner")
        await db.transact(inner)

    async with target.open() as db:
        with pytest.raises(kvstore.NestedTransactionError, match="outer `tx`"):
            await db.transact(outer)
        assert calls == 1
        assert await db.get(b"inner") is None
        assert db.version == 0


@pytest.mark.parametrize("nested", ["put", "delete", "transaction", "bulk_load"])
async def test_any_transaction_inside_a_transaction_block_is_refused(nested: str) -> None:
    async with memory_target().open() as db:
        start = {
            "put": lambda: db.put(b"k", b"v"),
            "delete": lambda: db.delete(b"k"),
            "transaction": lambda: db.transaction().commit(),
            "bulk_load": lambda: db.bulk_load([(b"k", b"v")]),
        }[nested]
        with pytest.raises(kvstore.NestedTransactionError):
            async with db.transaction() as tx:
                tx.put(b"outer", b"1")
                await start()
        with pytest.raises(kvstore.NestedTransactionError):
            await db.transact(lambda tx: start())
        assert [k async for k, _ in db.scan()] == []
        await start()  # outside any transaction: fine


async def test_nesting_is_per_store_and_per_task() -> None:
    target = memory_target()
    async with target.open() as db, target.open() as same, memory_target().open() as other:
        async with db.transaction() as tx:
            tx.put(b"a", b"1")
            await other.put(b"o", b"1")  # another store: independent
            with pytest.raises(kvstore.NestedTransactionError):
                await same.put(b"s", b"1")  # the same store opened twice is still the same store
            await asyncio.create_task(db.put(b"task", b"1"))  # another task: allowed
        async with db.transaction() as tx:  # one after the other: fine
            tx.put(b"b", b"1")
        assert [k async for k, _ in db.scan()] == [b"a", b"b", b"task"]


def test_sync_nesting_is_refused_too() -> None:
    with memory_target().open_sync() as db:
        with pytest.raises(kvstore.NestedTransactionError):
            db.transact(lambda tx: db.put(b"inner", b"1"))
        with pytest.raises(kvstore.NestedTransactionError), db.transaction() as tx:
            tx.put(b"outer", b"1")
            db[b"inner"] = b"1"
        assert list(db) == []


# -- conflicts a retry cannot cure -------------------------------------------


async def test_conflict_with_its_own_commit_is_not_retried() -> None:
    calls = 0

    async def fn(tx: kvstore.Transaction) -> None:
        nonlocal calls
        calls += 1
        await tx.get(b"counter")
        await asyncio.create_task(db.put(b"counter", b"%d" % calls))  # commits on its own
        tx.put(b"seen", b"1")

    async with memory_target().open(options=FEW_ATTEMPTS) as db:
        with pytest.raises(kvstore.ConflictError, match="not retried") as raised:
            await db.transact(fn)
        assert raised.value.retryable is False
        assert calls == 1
        assert await db.get(b"seen") is None


async def test_an_ordinary_conflict_is_retryable() -> None:
    async with memory_target().open() as db:
        tx = db.transaction()
        await tx.get(b"k")
        await db.put(b"k", b"other")
        tx.put(b"k", b"mine")
        with pytest.raises(kvstore.ConflictError) as raised:
            await tx.commit()
        assert raised.value.retryable is True


# -- sync and async functions in both faces ----------------------------------


async def test_async_transact_takes_plain_functions() -> None:
    async with memory_target().open() as db:
        await db.transact(lambda tx: tx.put(b"k", b"v"))
        assert await db.get(b"k") == b"v"
        assert await db.transact(lambda tx, n: n + 1, 41) == 42


def test_sync_transact_runs_async_functions() -> None:
    async def fn(tx: kvstore.Transaction, value: bytes) -> bytes | None:
        old: bytes | None = await tx.get(b"k")
        tx.put(b"k", value)
        return old

    with memory_target().open_sync() as db:
        assert db.transact(fn, b"1") is None
        assert db.transact(fn, b"2") == b"1"
        assert db[b"k"] == b"2"


def test_sync_transact_refuses_a_plain_function_returning_a_coroutine() -> None:
    async def body(tx: kvstore.Transaction) -> None:
        tx.put(b"k", b"v")

    with memory_target().open_sync() as db:
        with warnings.catch_warnings():
            warnings.simplefilter("error", RuntimeWarning)  # the coroutine is closed, not leaked
            with pytest.raises(kvstore.ValidationError, match="async def"):
                db.transact(lambda tx: body(tx))
        assert b"k" not in db


# -- the blocking API inside an event loop -----------------------------------


async def test_sync_store_inside_a_running_loop_raises() -> None:
    db = await asyncio.to_thread(memory_target().open_sync)
    try:
        with pytest.raises(kvstore.SyncInAsyncError, match=r"kvstore\.open\(url\)") as raised:
            db.get(b"k")
        assert isinstance(raised.value, RuntimeError)
        with pytest.raises(kvstore.SyncInAsyncError):
            db[b"k"] = b"v"
        with pytest.raises(kvstore.SyncInAsyncError):
            list(db.scan())
        with pytest.raises(kvstore.SyncInAsyncError):
            kvstore.open_sync(memory_target().url)
    finally:
        await asyncio.to_thread(db.close)
