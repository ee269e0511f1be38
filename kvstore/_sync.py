"""The blocking API: a thin face over the async core, run on a private event-loop thread.

Every `SyncStore` owns one background thread running an asyncio loop; each
call submits the async operation there and waits. Nothing is implemented
twice: the sync classes only forward.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import threading
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable, Iterator, MutableMapping
from types import TracebackType
from typing import Any, TypeVar, overload

from ._codec import Codec, ValueMode
from ._compact import CompactionResult
from ._engine import VerifyReport
from ._errors import ClosedError, ConflictError, SyncInAsyncError, ValidationError
from ._gc import GcReport
from ._nesting import Scope, enter, leave
from ._objectstore import ObjectStore, S3Options
from ._options import StoreOptions
from ._snapshot import Snapshot
from ._store import Change, CommitInfo, Store, StoreInfo, StoreOpener, open  # noqa: A004 - mirrors the builtin, like aiosqlite.connect
from ._tags import Tag
from ._transaction import TransactAttempts, Transaction

T = TypeVar("T")
_SCAN_BATCH = 256  # pairs fetched per hop to the loop thread


class _LoopThread:
    """An event loop running forever in a daemon thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="kvstore-loop", daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        if self.loop.is_closed():
            coro.close()
            raise ClosedError("this store was closed; open it again with kvstore.open_sync()")
        try:
            refuse_in_event_loop()
        except SyncInAsyncError:
            coro.close()
            raise
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

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
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join()
        self.loop.close()


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

    def put(self, key: str | bytes, value: Any) -> None:
        """Blocking form of `Transaction.put`."""
        self._tx.put(key, value)

    def delete(self, key: str | bytes) -> None:
        """Blocking form of `Transaction.delete`."""
        self._tx.delete(key)

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


class SyncStore(MutableMapping[bytes, Any]):
    """Blocking face of `Store`, and a `MutableMapping` of its latest version.

    ``db[k]`` raises KeyError for a missing key; ``len(db)`` and iteration
    scan the whole store (cost grows with its size).
    """

    def __init__(self, store: Store, runner: _LoopThread) -> None:
        self._store = store
        self._runner = runner
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
        return self._runner.run(self._store.get(key, default))

    def get_many(self, keys: Iterable[str | bytes], default: Any = None) -> list[Any]:
        """Blocking form of `Store.get_many`."""
        return self._runner.run(self._store.get_many(keys, default))

    def put(self, key: str | bytes, value: Any) -> int:
        """Blocking form of `Store.put`."""
        return self._runner.run(self._store.put(key, value))

    def delete(self, key: str | bytes) -> int:
        """Blocking form of `Store.delete`."""
        return self._runner.run(self._store.delete(key))

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
        return self._runner.iterate(self._store.scan(prefix, start=start, end=end, limit=limit, reverse=reverse))

    def transaction(self, *, meta: dict[str, Any] | None = None) -> SyncTransaction:
        """Blocking form of `Store.transaction`."""
        return SyncTransaction(self._store.transaction(meta=meta), self._runner, self._store.store_id)

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
            return self._runner.run(self._store.transact(fn, *args, **kwargs))
        for attempt in self._attempts:
            tx = self.transaction()
            scope = enter(self._store.store_id, tx._tx)
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
        return SyncSnapshot(self._runner.run(self._store.snapshot(version=version, tag=tag)), self._runner)

    def tag(self, name: str, *, version: int | None = None) -> Tag:
        """Blocking form of `Store.tag`."""
        return self._runner.run(self._store.tag(name, version=version))

    def tags(self) -> list[Tag]:
        """Blocking form of `Store.tags`."""
        return self._runner.run(self._store.tags())

    def delete_tag(self, name: str) -> None:
        """Blocking form of `Store.delete_tag`."""
        self._runner.run(self._store.delete_tag(name))

    def history(self, *, limit: int | None = None) -> list[CommitInfo]:
        """Blocking form of `Store.history`."""
        return self._runner.run(self._store.history(limit=limit))

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
        changes = self._store.watch(prefix, start=start, end=end, interval=interval, since=since)
        return self._runner.iterate(changes, batch_size=1)

    def bulk_load(
        self,
        items: Iterable[tuple[str | bytes, Any]],
        *,
        progress: Callable[[int], None] | None = None,
        chunk_bytes: int = 64 * 1024 * 1024,
    ) -> int:
        """Blocking form of `Store.bulk_load`. `items` is iterated on the store's loop
        thread, and `progress` called there."""
        return self._runner.run(self._store.bulk_load(items, progress=progress, chunk_bytes=chunk_bytes))

    def compact(self, *, full: bool = False) -> list[CompactionResult]:
        """Blocking form of `Store.compact`."""
        return self._runner.run(self._store.compact(full=full))

    def gc(self, *, dry_run: bool = False, grace_period: float | None = None) -> GcReport:
        """Blocking form of `Store.gc`."""
        return self._runner.run(self._store.gc(dry_run=dry_run, grace_period=grace_period))

    def describe(self) -> StoreInfo:
        """Blocking form of `Store.describe`."""
        return self._runner.run(self._store.describe())

    def refresh(self) -> int:
        """Blocking form of `Store.refresh`."""
        return self._runner.run(self._store.refresh())

    def statistics(self) -> dict[str, Any]:
        """Blocking form of `Store.statistics`."""
        return self._store.statistics()

    def verify(self) -> VerifyReport:
        """Blocking form of `Store.verify`."""
        return self._runner.run(self._store.verify())

    def close(self) -> None:
        """Finish queued commits, release connections and stop the loop thread."""
        if self._runner.loop.is_closed():
            return
        try:
            self._runner.run(self._store.close())
        finally:
            self._runner.stop()

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
) -> SyncStore:
    """Open a store for blocking use; the arguments are those of `kvstore.open`.

    Use ``with kvstore.open_sync(url) as db:`` so the loop thread is stopped.
    """
    refuse_in_event_loop()
    opener = open(
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
    )
    runner = _LoopThread()
    try:
        store = runner.run(_await(opener))
    except BaseException:
        runner.stop()
        raise
    return SyncStore(store, runner)


async def _await(opener: StoreOpener) -> Store:
    return await opener
