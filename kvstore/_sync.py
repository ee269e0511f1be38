"""The blocking API: a thin face over the async core, run on a private event-loop thread.

Every `SyncStore` owns one background thread running an asyncio loop; each
call submits the async operation there and waits. Nothing is implemented
twice: the sync classes only forward.

After `os.fork()` the child has no loop thread: a `SyncStore` used there
opens the store again, on a loop thread of the child's own, from the
arguments it was opened with (`_fork` keeps the parent's objects untouched).
Transactions, snapshots and scans begun before the fork raise
UsedAfterForkError in the child. No wait here is endless: a call waits for
its operation, whose requests have their deadlines, and checks every
`_LIVENESS_SECONDS` that the loop thread still runs.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
import logging
import os
import threading
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable, Iterator, MutableMapping, Sequence
from types import TracebackType
from typing import Any, TypeVar, overload

from . import _fork
from ._codec import Codec, ValueMode
from ._compact import CompactionResult
from ._distributed import DistributedWrite, Part
from ._doctor import DoctorReport, doctor
from ._engine import VerifyReport
from ._errors import ClosedError, ConflictError, SyncInAsyncError, UsedAfterForkError, ValidationError
from ._gc import GcReport
from ._nesting import Scope, enter, leave
from ._objectstore import ObjectStore, RetryPolicy, S3Options
from ._options import StoreOptions
from ._snapshot import Snapshot
from ._store import Change, CommitInfo, PartitionInfo, Store, StoreInfo, StoreOpener, open  # noqa: A004 - mirrors the builtin, like aiosqlite.connect
from ._tags import Tag
from ._transaction import TransactAttempts, Transaction

T = TypeVar("T")
_SCAN_BATCH = 256  # pairs fetched per hop to the loop thread
# How often a waiting call checks that the loop thread still runs: one that died
# (SystemExit or KeyboardInterrupt raised on it) would never answer.
_LIVENESS_SECONDS = 1.0
_STOP_SECONDS = 30.0  # longest wait for the loop thread to stop when closing
_log = logging.getLogger("kvstore")


class _LoopThread:
    """An event loop running forever in a daemon thread, in the process that made it."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.stopped = False
        self._pid = os.getpid()
        self._fork_generation = _fork.generation()
        self.died_of: BaseException | None = None
        self._thread = threading.Thread(target=self._run_forever, name="kvstore-loop", daemon=True)
        self._thread.start()
        # In a forked child the loop (its epoll set, self-pipe, sockets) is the parent's.
        _fork.keep_in_children(self)

    def _run_forever(self) -> None:
        try:
            self.loop.run_forever()
        except BaseException as exc:  # noqa: BLE001 - SystemExit or KeyboardInterrupt raised by a task
            self.died_of = exc  # reported to the callers, who would otherwise wait for ever

    @property
    def forked(self) -> bool:
        """Whether this process is a fork of the one that runs this loop thread."""
        return _fork.forked_since(self._fork_generation)

    @property
    def alive(self) -> bool:
        """Whether the loop thread runs (in the process that made it)."""
        return self._thread.is_alive() and not self.forked

    def check_process(self) -> None:
        """Raise UsedAfterForkError in a forked child: this loop thread is the parent's."""
        if self.forked:
            raise UsedAfterForkError(
                f"this transaction, snapshot or scan was begun in process {self._pid} before it forked, and "
                f"this process ({os.getpid()}) is the child: it can only be finished in the process that "
                "began it. Begin a new one here from the SyncStore, which re-opens the store in this process"
            )

    def check(self) -> None:
        """Raise if a call cannot run here: closed, forked, or the loop thread is gone."""
        if self.stopped or self.loop.is_closed():
            raise ClosedError("this store was closed; open it again with kvstore.open_sync()")
        self.check_process()
        if not self._thread.is_alive():
            raise ClosedError(
                f"the loop thread of this store has stopped: an operation on it raised {self.died_of!r}; "
                "open the store again with kvstore.open_sync()"
            ) from self.died_of

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        try:
            self.check()
            refuse_in_event_loop()
        except (ClosedError, UsedAfterForkError, SyncInAsyncError):
            coro.close()
            raise
        return self._wait(asyncio.run_coroutine_threadsafe(coro, self.loop))

    def _wait(self, future: concurrent.futures.Future[T]) -> T:
        """The operation's result. Its own deadlines bound it while the loop thread runs
        (`watch` and a bulk load's iterator excepted, which wait as long as they are
        meant to); a loop thread found dead ends the wait at once."""
        while True:
            try:
                return future.result(timeout=_LIVENESS_SECONDS)
            except concurrent.futures.TimeoutError:
                if future.done():  # finished meanwhile, or the operation itself raised TimeoutError
                    return future.result()
                if not self._thread.is_alive():
                    future.cancel()
                    self.check()

    def iterate(self, agen: AsyncIterator[T], batch_size: int = _SCAN_BATCH) -> Iterator[T]:
        async def next_batch() -> list[T]:
            batch: list[T] = []
            async for item in agen:
                batch.append(item)
                if len(batch) >= batch_size:
                    break
            return batch

        # Each hop pulls a batch; `async for ... break` leaves `agen` open for the next.
        while True:
            batch = self.run(next_batch())
            yield from batch
            if len(batch) < batch_size:
                return

    def stop(self) -> None:
        """Stop the loop thread and close the loop (in the process that made them)."""
        self.stopped = True
        if self.forked or self.loop.is_closed():
            return  # the parent's loop: the parent stops it
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(_STOP_SECONDS)
        if self._thread.is_alive():
            # Something blocks the loop (a bulk load's iterator, a progress callback): the
            # loop cannot be closed while it runs, so the daemon thread is left to it.
            _log.warning("the loop thread of a kvstore SyncStore did not stop within %g s; left running", _STOP_SECONDS)
            return
        self.loop.close()
        _fork.forget(self)


def refuse_in_event_loop() -> None:
    """Raise SyncInAsyncError if this thread is running an event loop (a blocking call would stall it)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return  # no loop here: blocking is fine
    raise SyncInAsyncError(
        "a blocking kvstore method (kvstore.open_sync / SyncStore) was called inside a running event loop, "
        "which it would block: in async code use the async API, `async with kvstore.open(url) as db` "
        "and `await db.get(...)`, or run the blocking call in a thread with `await asyncio.to_thread(...)`"
    )


class SyncSnapshot:
    """Blocking face of `Snapshot`."""

    def __init__(self, snapshot: Snapshot, runner: _LoopThread) -> None:
        self._snapshot = snapshot
        self._runner = runner

    @property
    def version(self) -> int:
        """Blocking form of `Snapshot.version`."""
        return self._snapshot.version

    def get(self, key: str | bytes, default: Any = None) -> Any:
        """Blocking form of `Snapshot.get`."""
        return self._runner.run(self._snapshot.get(key, default))

    def get_many(self, keys: Iterable[str | bytes], default: Any = None) -> list[Any]:
        """Blocking form of `Snapshot.get_many`."""
        return self._runner.run(self._snapshot.get_many(keys, default))

    def read_value(self, key: str | bytes, *, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        """Blocking form of `Snapshot.read_value`: an iterator of the chunks, each fetched when asked for."""
        return self._runner.iterate(self._snapshot.read_value(key, start=start, end=end), 1)

    def get_range(self, key: str | bytes, start: int, end: int | None = None) -> bytes | None:
        """Blocking form of `Snapshot.get_range`."""
        return self._runner.run(self._snapshot.get_range(key, start, end))

    def scan(
        self,
        prefix: str | bytes | None = None,
        *,
        start: str | bytes | None = None,
        end: str | bytes | None = None,
        limit: int | None = None,
        reverse: bool = False,
    ) -> Iterator[tuple[bytes, Any]]:
        """Blocking form of `Snapshot.scan`; pairs are fetched in batches."""
        return self._runner.iterate(self._snapshot.scan(prefix, start=start, end=end, limit=limit, reverse=reverse))


class SyncTransaction:
    """Blocking face of `Transaction`: ``with db.transaction() as tx:`` commits on normal exit."""

    def __init__(self, tx: Transaction, runner: _LoopThread, store_id: str) -> None:
        self._tx = tx
        self._runner = runner
        self._store_id = store_id
        self._scope: Scope | None = None

    @property
    def read_version(self) -> int | None:
        """Blocking form of `Transaction.read_version`."""
        return self._tx.read_version

    @property
    def committed_version(self) -> int | None:
        """Blocking form of `Transaction.committed_version`."""
        return self._tx.committed_version

    def get(self, key: str | bytes, default: Any = None) -> Any:
        """Blocking form of `Transaction.get`."""
        return self._runner.run(self._tx.get(key, default))

    def get_many(self, keys: Iterable[str | bytes], default: Any = None) -> list[Any]:
        """Blocking form of `Transaction.get_many`."""
        return self._runner.run(self._tx.get_many(keys, default))

    def put(self, key: str | bytes, value: Any, *, ttl: float | None = None) -> None:
        """Blocking form of `Transaction.put`."""
        self._runner.check_process()
        self._tx.put(key, value, ttl=ttl)

    def delete(self, key: str | bytes) -> None:
        """Blocking form of `Transaction.delete`."""
        self._runner.check_process()
        self._tx.delete(key)

    def delete_range(self, start: str | bytes, end: str | bytes | None) -> None:
        """Blocking form of `Transaction.delete_range`."""
        self._runner.check_process()
        self._tx.delete_range(start, end)

    def delete_prefix(self, prefix: str | bytes) -> None:
        """Blocking form of `Transaction.delete_prefix`."""
        self._runner.check_process()
        self._tx.delete_prefix(prefix)

    def add(self, key: str | bytes, n: int) -> None:
        """Blocking form of `Transaction.add`."""
        self._runner.check_process()
        self._tx.add(key, n)

    def max(self, key: str | bytes, n: int) -> None:
        """Blocking form of `Transaction.max`."""
        self._runner.check_process()
        self._tx.max(key, n)

    def min(self, key: str | bytes, n: int) -> None:
        """Blocking form of `Transaction.min`."""
        self._runner.check_process()
        self._tx.min(key, n)

    def scan(
        self,
        prefix: str | bytes | None = None,
        *,
        start: str | bytes | None = None,
        end: str | bytes | None = None,
        limit: int | None = None,
        reverse: bool = False,
    ) -> Iterator[tuple[bytes, Any]]:
        """Blocking form of `Transaction.scan`; pairs are fetched in batches."""
        return self._runner.iterate(self._tx.scan(prefix, start=start, end=end, limit=limit, reverse=reverse))

    def commit(self) -> int | None:
        """Blocking form of `Transaction.commit`."""
        return self._runner.run(self._tx.commit())

    def discard(self) -> None:
        """Blocking form of `Transaction.discard`."""
        self._tx.discard()

    def __enter__(self) -> SyncTransaction:
        self._scope = enter(self._store_id, self._tx)
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._scope is not None:
            leave(self._scope)
        self._runner.run(self._tx.__aexit__(exc_type, exc, tb))


class SyncDistributedWrite:
    """Blocking face of `DistributedWrite`: the same picklable job, whose `commit` blocks.

    `write` and `write_async` are the job's own; `job` is the async job itself.
    """

    def __init__(self, job: DistributedWrite, runner: _LoopThread | None) -> None:
        self.job = job
        self._runner = runner

    def __getstate__(self) -> dict[str, Any]:
        return {"job": self.job, "_runner": None}  # workers get the job, not the driver's thread

    def __repr__(self) -> str:
        return f"<kvstore.SyncDistributedWrite {self.job.job_id} of {self.job.url}>"

    def write(self, pairs: Iterable[tuple[str | bytes, Any]], *, index: int | None = None) -> Part:
        """`DistributedWrite.write` (blocking)."""
        return self.job.write(pairs, index=index)

    async def write_async(self, pairs: Iterable[tuple[str | bytes, Any]], *, index: int | None = None) -> Part:
        """`DistributedWrite.write_async`."""
        return await self.job.write_async(pairs, index=index)

    def commit(self, parts: Sequence[Part]) -> int:
        """Blocking form of `DistributedWrite.commit`. An unpickled copy (no store thread)
        opens the store by its URL to commit."""
        if self._runner is not None:
            return self._runner.run(self.job.commit(parts))
        refuse_in_event_loop()
        return asyncio.run(self.job.commit(parts))


class SyncStore(MutableMapping[bytes, Any]):
    """Blocking face of `Store`, and a `MutableMapping` of its latest version.

    ``db[k]`` raises KeyError for a missing key; ``len(db)`` and iteration
    scan the whole store (cost grows with its size).

    Safe to use from several threads, and in a process forked after it was
    opened: its first call there opens the store again (one GET of the
    manifest), with its own loop thread, connections and caches; the
    parent's are left alone. Until then its properties and `statistics`
    report what the parent had seen. A transaction, snapshot or scan begun
    before the fork raises UsedAfterForkError in the child.
    """

    def __init__(self, store: Store, runner: _LoopThread, reopen: Callable[[], StoreOpener] | None = None) -> None:
        self._store = store
        self._runner = runner
        self._reopen = reopen  # how a forked child opens the store again
        self._attempts = TransactAttempts(store.options.transact_max_attempts, store.url)

    def _live(self) -> tuple[Store, _LoopThread]:
        """The store and loop thread to use in this process: opened again on the first
        call in a forked child."""
        runner = self._runner
        if runner.forked and not runner.stopped and not runner.loop.is_closed():
            self._open_in_child()
        return self._store, self._runner

    def _open_in_child(self) -> None:
        with _fork.lock():
            if not self._runner.forked:
                return  # another thread of this process did it
            if self._reopen is None:
                self._runner.check()  # raises UsedAfterForkError
            assert self._reopen is not None
            runner = _LoopThread()
            try:
                store = runner.run(_await(self._reopen()))
            except BaseException:
                runner.stop()
                raise
            # The parent's store and loop thread are dropped here, never closed: `_fork`
            # keeps what they hold, which is the parent's.
            self._store, self._runner = store, runner
            self._attempts = TransactAttempts(store.options.transact_max_attempts, store.url)

    def __repr__(self) -> str:
        return repr(self._store).replace("kvstore.Store", "kvstore.SyncStore")

    @property
    def url(self) -> str:
        """Blocking form of `Store.url`."""
        return self._store.url

    @property
    def version(self) -> int:
        """Blocking form of `Store.version`."""
        return self._store.version

    @property
    def store_id(self) -> str:
        """Blocking form of `Store.store_id`."""
        return self._store.store_id

    @property
    def read_only(self) -> bool:
        """Blocking form of `Store.read_only`."""
        return self._store.read_only

    @property
    def recorded_values(self) -> Codec:
        """Blocking form of `Store.recorded_values`."""
        return self._store.recorded_values

    @property
    def options(self) -> StoreOptions:
        """Blocking form of `Store.options`."""
        return self._store.options

    def get(self, key: str | bytes, default: Any = None) -> Any:
        """Blocking form of `Store.get`."""
        store, runner = self._live()
        return runner.run(store.get(key, default))

    def get_many(self, keys: Iterable[str | bytes], default: Any = None) -> list[Any]:
        """Blocking form of `Store.get_many`."""
        store, runner = self._live()
        return runner.run(store.get_many(keys, default))

    def put(self, key: str | bytes, value: Any, *, ttl: float | None = None) -> int:
        """Blocking form of `Store.put`."""
        store, runner = self._live()
        return runner.run(store.put(key, value, ttl=ttl))

    def read_value(self, key: str | bytes, *, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        """Blocking form of `Store.read_value`: an iterator of the chunks, each fetched
        when asked for (the reads ahead run on the store's loop thread meanwhile)."""
        store, runner = self._live()
        return runner.iterate(store.read_value(key, start=start, end=end), 1)

    def get_range(self, key: str | bytes, start: int, end: int | None = None) -> bytes | None:
        """Blocking form of `Store.get_range`."""
        store, runner = self._live()
        return runner.run(store.get_range(key, start, end))

    def delete(self, key: str | bytes) -> int:
        """Blocking form of `Store.delete`."""
        store, runner = self._live()
        return runner.run(store.delete(key))

    def delete_range(self, start: str | bytes, end: str | bytes | None) -> int:
        """Blocking form of `Store.delete_range`."""
        store, runner = self._live()
        return runner.run(store.delete_range(start, end))

    def delete_prefix(self, prefix: str | bytes) -> int:
        """Blocking form of `Store.delete_prefix`."""
        store, runner = self._live()
        return runner.run(store.delete_prefix(prefix))

    def add(self, key: str | bytes, n: int) -> int:
        """Blocking form of `Store.add`."""
        store, runner = self._live()
        return runner.run(store.add(key, n))

    def max(self, key: str | bytes, n: int) -> int:
        """Blocking form of `Store.max`."""
        store, runner = self._live()
        return runner.run(store.max(key, n))

    def min(self, key: str | bytes, n: int) -> int:
        """Blocking form of `Store.min`."""
        store, runner = self._live()
        return runner.run(store.min(key, n))

    def scan(
        self,
        prefix: str | bytes | None = None,
        *,
        start: str | bytes | None = None,
        end: str | bytes | None = None,
        limit: int | None = None,
        reverse: bool = False,
    ) -> Iterator[tuple[bytes, Any]]:
        """Blocking form of `Store.scan`; pairs are fetched in batches."""
        store, runner = self._live()
        return runner.iterate(store.scan(prefix, start=start, end=end, limit=limit, reverse=reverse))

    def transaction(self, *, meta: dict[str, Any] | None = None) -> SyncTransaction:
        """Blocking form of `Store.transaction`."""
        store, runner = self._live()
        return SyncTransaction(store.transaction(meta=meta), runner, store.store_id)

    @overload
    def transact(self, fn: Callable[..., Coroutine[Any, Any, T]], *args: Any, **kwargs: Any) -> T: ...

    @overload
    def transact(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T: ...

    def transact(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run ``fn(tx, *args, **kwargs)`` in a transaction, retrying on ConflictError.

        A plain function gets a `SyncTransaction`; an ``async def`` function
        is run by `Store.transact` on the store's loop with a `Transaction`
        (the same rules and retries as the async face). A plain function that
        returns a coroutine is refused with ValidationError: declare it
        ``async def``.
        """
        if inspect.iscoroutinefunction(fn):
            store, runner = self._live()
            return runner.run(store.transact(fn, *args, **kwargs))
        for attempt in self._attempts:
            tx = self.transaction()
            scope = enter(tx._store_id, tx._tx)
            try:
                result = fn(tx, *args, **kwargs)
                if inspect.isawaitable(result):
                    if inspect.iscoroutine(result):
                        result.close()
                    raise ValidationError(
                        f"SyncStore.transact: {fn!r} returned an awaitable; make it an `async def` function "
                        "(it then runs on the store's loop with an async Transaction) or a blocking one"
                    )
                tx.commit()
                return result
            except ConflictError as exc:
                tx.discard()
                time.sleep(attempt.pause_after(exc, scope))
            except BaseException:
                tx.discard()
                raise
            finally:
                leave(scope)
        raise AssertionError("unreachable: the last attempt raises")

    def snapshot(self, *, version: int | None = None, tag: str | None = None) -> SyncSnapshot:
        """Blocking form of `Store.snapshot`."""
        store, runner = self._live()
        return SyncSnapshot(runner.run(store.snapshot(version=version, tag=tag)), runner)

    def tag(self, name: str, *, version: int | None = None) -> Tag:
        """Blocking form of `Store.tag`."""
        store, runner = self._live()
        return runner.run(store.tag(name, version=version))

    def tags(self) -> list[Tag]:
        """Blocking form of `Store.tags`."""
        store, runner = self._live()
        return runner.run(store.tags())

    def delete_tag(self, name: str) -> None:
        """Blocking form of `Store.delete_tag`."""
        store, runner = self._live()
        runner.run(store.delete_tag(name))

    def history(self, *, limit: int | None = None) -> list[CommitInfo]:
        """Blocking form of `Store.history`."""
        store, runner = self._live()
        return runner.run(store.history(limit=limit))

    def watch(
        self,
        prefix: str | bytes | None = None,
        *,
        start: str | bytes | None = None,
        end: str | bytes | None = None,
        interval: float = 1.0,
        since: int | None = None,
    ) -> Iterator[Change]:
        """Blocking form of `Store.watch`: yields each change as it is seen."""
        store, runner = self._live()
        return runner.iterate(store.watch(prefix, start=start, end=end, interval=interval, since=since), batch_size=1)

    def bulk_load(
        self,
        items: Iterable[tuple[str | bytes, Any]],
        *,
        progress: Callable[[int], None] | None = None,
        chunk_bytes: int = 64 * 1024 * 1024,
    ) -> int:
        """Blocking form of `Store.bulk_load`. `items` is iterated on the store's loop
        thread, and `progress` called there."""
        store, runner = self._live()
        return runner.run(store.bulk_load(items, progress=progress, chunk_bytes=chunk_bytes))

    def distributed_write(
        self, *, meta: dict[str, Any] | None = None, chunk_bytes: int = 64 * 1024 * 1024
    ) -> SyncDistributedWrite:
        """Blocking form of `Store.distributed_write`: the job's `commit` blocks."""
        store, runner = self._live()
        job = runner.run(store.distributed_write(meta=meta, chunk_bytes=chunk_bytes))
        return SyncDistributedWrite(job, runner)

    def split(self, key: str | bytes) -> list[PartitionInfo]:
        """Blocking form of `Store.split`."""
        store, runner = self._live()
        return runner.run(store.split(key))

    def merge_partitions(self, boundary: str | bytes) -> list[PartitionInfo]:
        """Blocking form of `Store.merge_partitions`."""
        store, runner = self._live()
        return runner.run(store.merge_partitions(boundary))

    def partitions(self) -> list[PartitionInfo]:
        """Blocking form of `Store.partitions`."""
        store, runner = self._live()
        return runner.run(store.partitions())

    def compact(self, *, full: bool = False, client: Any = None) -> list[CompactionResult]:
        """Blocking form of `Store.compact`."""
        store, runner = self._live()
        return runner.run(store.compact(full=full, client=client))

    def gc(self, *, dry_run: bool = False, grace_period: float | None = None) -> GcReport:
        """Blocking form of `Store.gc`."""
        store, runner = self._live()
        return runner.run(store.gc(dry_run=dry_run, grace_period=grace_period))

    def describe(self) -> StoreInfo:
        """Blocking form of `Store.describe`."""
        store, runner = self._live()
        return runner.run(store.describe())

    def refresh(self) -> int:
        """Blocking form of `Store.refresh`."""
        store, runner = self._live()
        return runner.run(store.refresh())

    def statistics(self) -> dict[str, Any]:
        """Blocking form of `Store.statistics`."""
        return self._store.statistics()

    def verify(self) -> VerifyReport:
        """Blocking form of `Store.verify`."""
        store, runner = self._live()
        return runner.run(store.verify())

    def close(self) -> None:
        """Finish queued commits, release connections and stop the loop thread.

        In a forked child that has not used the store, it only marks it
        closed: the parent's commits and connections are the parent's."""
        runner = self._runner
        if runner.stopped or runner.loop.is_closed():
            return
        if runner.forked:
            runner.stopped = True
            return
        try:
            if runner.alive:  # a dead loop thread cannot close anything: only the loop is left
                runner.run(self._store.close())
        finally:
            runner.stop()

    def __enter__(self) -> SyncStore:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # MutableMapping over the latest version
    def __getitem__(self, key: str | bytes) -> Any:
        missing = object()
        value = self.get(key, missing)
        if value is missing:
            raise KeyError(key)
        return value

    def __setitem__(self, key: str | bytes, value: Any) -> None:
        self.put(key, value)

    def __delitem__(self, key: str | bytes) -> None:
        def delete_existing(tx: SyncTransaction) -> bool:
            missing = object()
            if tx.get(key, missing) is missing:
                return False
            tx.delete(key)
            return True

        if not self.transact(delete_existing):
            raise KeyError(key)

    def __iter__(self) -> Iterator[bytes]:
        return (key for key, _ in self.scan())

    def __len__(self) -> int:
        return sum(1 for _ in self.scan())

    def __contains__(self, key: object) -> bool:
        if not isinstance(key, (str, bytes)):
            return False
        missing = object()
        return self.get(key, missing) is not missing


def open_sync(
    url: str | os.PathLike[str],
    *,
    create: bool = True,
    read_only: bool = False,
    values: ValueMode | None = None,
    options: StoreOptions | None = None,
    endpoint_url: str | None = None,
    region_name: str | None = None,
    profile: str | None = None,
    aws_access_key_id: str | None = None,
    aws_secret_access_key: str | None = None,
    aws_session_token: str | None = None,
    s3_options: S3Options | None = None,
    wrap_object_store: Callable[[ObjectStore], ObjectStore] | None = None,
    split_keys: Iterable[str | bytes] | None = None,
) -> SyncStore:
    """Open a store for blocking use; the arguments are those of `kvstore.open`.

    Use ``with kvstore.open_sync(url) as db:`` so the loop thread is stopped.
    """
    refuse_in_event_loop()

    def opener() -> StoreOpener:
        # Called again in a forked child: a new backend, so no connection of the parent's.
        return open(
            url,
            create=create,
            read_only=read_only,
            values=values,
            options=options,
            endpoint_url=endpoint_url,
            region_name=region_name,
            profile=profile,
            aws_access_key_id=aws_access_key_id,
            aws_secret_access_key=aws_secret_access_key,
            aws_session_token=aws_session_token,
            s3_options=s3_options,
            wrap_object_store=wrap_object_store,
            split_keys=split_keys,
        )

    first = opener()  # checks the arguments before a thread is started
    runner = _LoopThread()
    try:
        store = runner.run(_await(first))
    except BaseException:
        runner.stop()
        raise
    return SyncStore(store, runner, opener)


def doctor_sync(
    url: str | os.PathLike[str],
    *,
    endpoint_url: str | None = None,
    region_name: str | None = None,
    profile: str | None = None,
    aws_access_key_id: str | None = None,
    aws_secret_access_key: str | None = None,
    aws_session_token: str | None = None,
    s3_options: S3Options | None = None,
    grace_period: float | None = None,
    retry: RetryPolicy | None = None,
    wrap_object_store: Callable[[ObjectStore], ObjectStore] | None = None,
) -> DoctorReport:
    """`kvstore.doctor` for blocking code; the arguments are the same."""
    refuse_in_event_loop()
    return asyncio.run(
        doctor(
            url,
            endpoint_url=endpoint_url,
            region_name=region_name,
            profile=profile,
            aws_access_key_id=aws_access_key_id,
            aws_secret_access_key=aws_secret_access_key,
            aws_session_token=aws_session_token,
            s3_options=s3_options,
            grace_period=grace_period,
            retry=retry,
            wrap_object_store=wrap_object_store,
        )
    )


async def _await(opener: StoreOpener) -> Store:
    return await opener
