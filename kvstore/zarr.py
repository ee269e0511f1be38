"""A Zarr v3 store on kvstore: `ZarrStore` is a `zarr.abc.store.Store`.

Needs the extra: ``pip install 'kvstore[zarr]'``. ::

    from kvstore.zarr import ZarrStore, open_session

    store = await ZarrStore.open(url="file:///data/arrays", prefix="")   # each write commits
    store = ZarrStore(db=db, prefix="arrays/")                          # over an open kvstore.Store
    ro = await ZarrStore.open(url=..., tag="v1")                        # read-only, as it was at a tag
    session = await open_session(db, prefix="arrays/")                   # staged writes, one commit
    zarr.create_array(session.store, name="x", shape=..., dtype=...)
    version = await session.commit()

Zarr key ``k`` is the kvstore key ``(prefix + k).encode("utf-8")``; its value is
the raw bytes Zarr wrote. The store must keep bytes as they are: a store created
with ``values="msgpack"`` is refused (CodecMismatchError), since Zarr's chunks
are not msgpack objects. A value is at most `StoreOptions.max_value_bytes`
(8 MiB by default): choose chunks whose encoded size stays under it (a
1 MiB-4 MiB chunk is typical). Byte-range reads read the whole value and slice it.

**Loops.** A `kvstore.Store` belongs to the event loop that opened it; Zarr's
synchronous API runs a store's coroutines on its own loop thread, and tests run
them on theirs. So a `ZarrStore` opens one `kvstore.Store` per event loop it is
used in, on first use there (the `db=` form starts with `db` for `db`'s loop and
opens another handle by `db.url` for any other loop). Each handle sees the
same store: every write commits (writes from many tasks at once are group-committed).

**Sessions.** `open_session` returns a `ZarrSession` whose `store` stages its
writes as immutable segments of the store (a distributed write's segments,
written on kvstore's writer thread), never in memory: what the session holds in
memory is each key's newest staged segment (keys, no values) and the keys it
read. A read through the session's store returns its own staged value of a key
(read back from that segment), else the value at the version the session started
from (the session reads one consistent version, like a transaction). `commit()`
publishes every staged segment in one manifest CAS; it raises ConflictError when
a commit after the session's start wrote a key the session wrote or read (a
bulk commit is judged by its key range, so two sessions on disjoint arrays
commit side by side). `session.store` pickles: a Dask task (``dask.array.to_zarr``,
xarray's ``to_zarr``) writes through its copy, and each staged write leaves a small
record under the session's own prefix in the store (`_zarr_staging`), so the
driver's one `commit()` finds every copy's writes with no step of its own. Where
two writes staged one key, the later (by the writers' clocks, see docs/zarr.md)
wins. Nothing staged is visible to anyone else; a session never committed (or a
worker killed mid-write) leaves segments and records that GC collects. A
partitioned store refuses sessions (PartitionedSessionError).
docs/zarr.md has the guide.
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections.abc import AsyncIterator, Iterable
from dataclasses import replace
from typing import Any

from ._errors import (
    ClosedError,
    CodecMismatchError,
    CommitOutcomeUnknownError,
    InvalidValueError,
    JobAlreadyCommittedError,
    PartTooOldError,
    ReadOnlyError,
    StoreNotFoundError,
    ValidationError,
)
from ._objectstore import S3Options
from ._options import StoreOptions, grace_period_of
from ._snapshot import Snapshot
from ._store import Store
from ._store import open as open_store
from ._zarr_staging import Staged, collect, read_staged, stage

try:
    from zarr.abc.store import ByteRequest, OffsetByteRequest, RangeByteRequest, SuffixByteRequest
    from zarr.abc.store import Store as _ZarrStoreBase
    from zarr.core.buffer import Buffer, BufferPrototype, default_buffer_prototype
    from zarr.core.sync import sync as _zarr_sync
except ImportError as exc:  # pragma: no cover - the message is the point
    raise ImportError("kvstore.zarr needs Zarr v3: pip install 'kvstore[zarr]'") from exc

__all__ = ["PartitionedSessionError", "StoreReadOnlyError", "ZarrSession", "ZarrStore", "open_session"]

log = logging.getLogger("kvstore")
_closing: set[asyncio.Task[None]] = set()  # handles being closed by `ZarrStore.close`

# Zarr's own message for a write to a read-only store (its conformance suite matches it).
_READ_ONLY = "store was opened in read-only mode and does not support writing"
# Keys deleted per transaction by `delete_dir` (a transaction's write set is bounded).
_DELETE_BATCH = 1000


class StoreReadOnlyError(ReadOnlyError, ValueError):
    """A write through a read-only `ZarrStore` (opened with ``read_only=True``, at a tag or
    a version). A ValueError too, which is what Zarr expects of a read-only store."""


class _Handle:
    """A `kvstore.Store` opened in one event loop (and a snapshot, for a time-travel store)."""

    def __init__(self, db: Store | None, snapshot: Snapshot | None, owned: bool) -> None:
        self.db = db  # None: a read-only store that does not exist yet (reads find nothing)
        self.snapshot = snapshot
        self.owned = owned  # opened here (closed by `close`), not the caller's `db`


class PartitionedSessionError(ValidationError):
    """`open_session` on a partitioned store (``kvstore.open(url, split_keys=...)``): a
    session publishes its staged segments in one partition's manifest, and a partitioned
    store's keys (the session's arrays among them) may span many. Write the arrays
    through ``ZarrStore(db=db)`` (each write a transaction, which may span partitions),
    or keep them in a store that is not split."""


class ZarrStore(_ZarrStoreBase):
    """A Zarr v3 store (`zarr.abc.store.Store`) over a kvstore store; see the module docs.

    ``ZarrStore(url=..., prefix=..., read_only=...)`` is not open yet (Zarr opens
    it); ``await ZarrStore.open(url=...)`` opens it. ``tag=`` or ``version=``
    reads the store as it was then (read-only). ``ZarrStore(db=db, prefix=...)``
    works over an open `kvstore.Store` (bytes values). S3 settings: `endpoint_url`
    or `s3_options` (as for `kvstore.open`); `options` are the `StoreOptions`.
    """

    supports_writes: bool = True
    supports_deletes: bool = True
    supports_listing: bool = True

    def __init__(
        self,
        url: str | None = None,
        *,
        prefix: str = "",
        read_only: bool = False,
        tag: str | None = None,
        version: int | None = None,
        db: Store | None = None,
        endpoint_url: str | None = None,
        s3_options: S3Options | None = None,
        options: StoreOptions | None = None,
        _staged: Staged | None = None,
    ) -> None:
        if (url is None) == (db is None):
            raise ValidationError("ZarrStore takes url= or db= (one of them)")
        if not isinstance(prefix, str):
            raise ValidationError(f"prefix must be a str, not {type(prefix).__name__}")
        if tag is not None and version is not None:
            raise ValidationError("pass tag= or version=, not both")
        if db is not None:
            if db.recorded_values != "bytes":
                raise CodecMismatchError(
                    f"the store at {db.url} records values={db.recorded_values!r}; Zarr writes raw bytes: "
                    "use a store created with values='bytes' (the default), or another URL",
                    recorded=db.recorded_values,
                )
            url, s3_options, options = db.url, db._s3, db.options
            read_only = read_only or db.read_only
        assert url is not None
        if endpoint_url is not None:
            s3_options = replace(s3_options or S3Options(), endpoint_url=endpoint_url)
        # Past versions are read-only; so are stores whose handle was opened read-only.
        super().__init__(read_only=read_only or tag is not None or version is not None)
        self._url = url
        self._prefix = prefix
        self._tag = tag
        self._version = version
        self._s3 = s3_options or S3Options()
        self._options = options or StoreOptions()
        self._staged = _staged
        self._handles: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Task[_Handle]] = (
            weakref.WeakKeyDictionary()
        )
        self._given: tuple[Store, asyncio.AbstractEventLoop | None] | None = None
        if db is not None:
            self._given = (db, _running_loop())

    # ------------------------------------------------------------------ identity

    @property
    def db(self) -> Store:
        """The `kvstore.Store` underneath, in the running event loop (else the `db=` given,
        or the one opened first). Raises ClosedError if none is open."""
        loop = _running_loop()
        task = self._handles.get(loop) if loop is not None else None
        if task is not None and task.done() and not task.cancelled() and task.exception() is None:
            found = task.result().db
            if found is not None:
                return found
        if self._given is not None:
            return self._given[0]
        for task in list(self._handles.values()):
            if task.done() and not task.cancelled() and task.exception() is None and task.result().db is not None:
                db = task.result().db
                assert db is not None
                return db
        raise ClosedError(f"the ZarrStore over {self._url} has not opened its store yet: await ZarrStore.open(...)")

    @property
    def url(self) -> str:
        """The kvstore store's URL."""
        return self._url

    @property
    def prefix(self) -> str:
        """The prefix of this store's keys in the kvstore store."""
        return self._prefix

    def _identity(self) -> tuple[Any, ...]:
        job = None if self._staged is None else self._staged.job.job_id
        return (self._url, self._prefix, self.read_only, self._tag, self._version, self._s3, job)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ZarrStore) and self._identity() == other._identity()

    def __hash__(self) -> int:
        return hash(self._identity())

    def __repr__(self) -> str:
        at = f" tag={self._tag!r}" if self._tag else f" version={self._version}" if self._version is not None else ""
        mode = " session" if self._staged is not None else ""
        return f"ZarrStore({self._url!r}, prefix={self._prefix!r}{at}{mode}{' read-only' if self.read_only else ''})"

    def __str__(self) -> str:
        return f"kvstore+{self._url}#{self._prefix}"

    def __getstate__(self) -> dict[str, Any]:
        # No handle travels: each process (and loop) opens its own from the URL.
        return {
            "url": self._url,
            "prefix": self._prefix,
            "read_only": self._read_only,
            "tag": self._tag,
            "version": self._version,
            "s3": self._s3,
            "options": self._options,
            "staged": self._staged,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        staged: Staged | None = state["staged"]
        if staged is not None:
            # A copy elsewhere: the session cannot see its memory, so its writes leave records.
            staged.records = True
        self.__init__(  # type: ignore[misc]
            state["url"],
            prefix=state["prefix"],
            read_only=state["read_only"],
            tag=state["tag"],
            version=state["version"],
            s3_options=state["s3"],
            options=state["options"],
            _staged=state["staged"],
        )

    def with_read_only(self, read_only: bool = False) -> ZarrStore:
        """A new store (not open) at the same place with `read_only` set."""
        if self._staged is not None and read_only:
            raise ValidationError("a session's store cannot be made read-only: read at a version instead")
        return ZarrStore(
            self._url,
            prefix=self._prefix,
            read_only=read_only,
            tag=self._tag,
            version=self._version,
            s3_options=self._s3,
            options=self._options,
            _staged=self._staged,
        )

    def staged(self) -> Staged | None:
        """This copy's staged state (a session's store only): what `ZarrSession.merge` takes
        (not needed for the commit, which finds every copy's writes by their records)."""
        return self._staged

    # ------------------------------------------------------------------ opening

    async def _open(self) -> None:
        await super()._open()  # raises ValueError("store is already open"), as Zarr expects
        try:
            await self._handle()  # opening errors (URL, credentials, codec) surface here
        except BaseException:
            self._is_open = False
            raise

    def close(self) -> None:
        """Close the handles this store opened (not a `db` it was given)."""
        super().close()
        handles, self._handles = list(self._handles.items()), weakref.WeakKeyDictionary()
        running = _running_loop()
        for loop, task in handles:
            if loop.is_closed():
                continue
            coro = _close_handle(task)
            if loop is running:
                closing = loop.create_task(coro)
                _closing.add(closing)  # the loop keeps only a weak reference to a task
                closing.add_done_callback(_closing.discard)
            elif loop.is_running():
                asyncio.run_coroutine_threadsafe(coro, loop)
            else:
                coro.close()  # that loop no longer runs: nothing can close its handle now

    async def _handle(self) -> _Handle:
        loop = asyncio.get_running_loop()
        task = self._handles.get(loop)
        if task is None or (task.done() and (task.cancelled() or task.exception() is not None)):
            task = loop.create_task(self._open_handle())
            self._handles[loop] = task
        return await asyncio.shield(task)

    async def _open_handle(self) -> _Handle:
        given = self._given
        if given is not None and given[1] in (None, asyncio.get_running_loop()):
            db, owned = given[0], False
        else:
            # A session's copy (on a worker) only reads its base version: its writes are staged.
            read_only = self.read_only or self._staged is not None
            try:
                db = await open_store(
                    self._url,
                    create=not read_only,
                    read_only=read_only,
                    values="bytes",
                    options=self._options,
                    s3_options=self._s3,
                )
            except StoreNotFoundError:
                if not read_only or self._tag is not None or self._version is not None:
                    raise
                return _Handle(None, None, False)  # read-only and not made yet: it holds nothing
            owned = True
        snapshot = None
        try:
            if self._tag is not None:
                snapshot = await db.snapshot(tag=self._tag)
            elif self._version is not None:
                snapshot = await db.snapshot(version=self._version)
            elif self._staged is not None:
                snapshot = await db.snapshot(version=self._staged.base_version)
        except BaseException:
            if owned:
                await db.close()
            raise
        return _Handle(db, snapshot, owned)

    # ------------------------------------------------------------------ reads

    def _key(self, key: str) -> bytes:
        if not isinstance(key, str):
            raise ValidationError(f"Zarr keys are str, not {type(key).__name__}")
        return (self._prefix + key).encode("utf-8")

    async def _read(self, key: str, span: tuple[int, int | None] | None = None) -> bytes | None:
        """The value of `key`, or bytes [start, end) of it with `span` (a value stored out
        of line: ranged GETs of those bytes only, `Store.get_range`)."""
        await self._ensure_open()
        staged = self._staged
        if staged is not None and key in staged.keys:
            _, ref, deleted = staged.keys[key]
            whole = None if deleted else await read_staged(staged.job, ref, self._key(key))
            return whole if span is None or whole is None else whole[span[0] : span[1]]
        handle = await self._handle()
        if staged is not None:
            staged.reads.add(key)
        source = handle.snapshot if handle.snapshot is not None else handle.db
        if source is None:
            return None
        k = self._key(key)
        value = await (source.get(k) if span is None else source.get_range(k, *span))
        assert value is None or isinstance(value, bytes)
        return value

    async def get(
        self, key: str, prototype: BufferPrototype | None = None, byte_range: ByteRequest | None = None
    ) -> Buffer | None:
        """The value of `key` (a byte range of it with `byte_range`), or None if absent."""
        if prototype is None:
            prototype = default_buffer_prototype()
        _check_range(byte_range)
        span = _span(byte_range)
        value = await self._read(key, span)
        if value is None:
            return None
        buffer: Buffer = prototype.buffer.from_bytes(value if span is not None else _slice(value, byte_range))
        return buffer

    async def get_partial_values(
        self, prototype: BufferPrototype, key_ranges: Iterable[tuple[str, ByteRequest | None]]
    ) -> list[Buffer | None]:
        """`get` of each (key, byte range), concurrently; None for each absent key."""
        return list(await asyncio.gather(*(self.get(k, prototype, r) for k, r in key_ranges)))

    async def exists(self, key: str) -> bool:
        """Whether `key` has a value."""
        return await self._read(key) is not None

    def get_sync(
        self, key: str, *, prototype: BufferPrototype | None = None, byte_range: ByteRequest | None = None
    ) -> Buffer | None:
        """`get`, blocking (runs on Zarr's event-loop thread)."""
        result: Buffer | None = _zarr_sync(self.get(key, prototype, byte_range))
        return result

    # ------------------------------------------------------------------ writes

    def _check_writable(self) -> None:
        if self.read_only:
            raise StoreReadOnlyError(
                f"{_READ_ONLY}: {self!r} is read-only (read_only=True, a tag or a version); "
                "open a ZarrStore without them to write"
            )

    async def set(self, key: str, value: Buffer) -> None:
        """Write `value` to `key`: one commit, or, in a session, one staged segment."""
        self._check_writable()
        await self._ensure_open()
        data = _bytes_of(value, key)
        await self._write({key: data})

    async def set_if_not_exists(self, key: str, value: Buffer) -> None:
        """Write `value` to `key` unless it has a value (atomic: a transaction)."""
        self._check_writable()
        await self._ensure_open()
        data = _bytes_of(value, key)
        if self._staged is not None:
            # The session's commit conflicts if someone else writes the key meanwhile.
            if not await self.exists(key):
                await self._write({key: data})
            return
        db = await self._writer()
        k = self._key(key)

        async def put_if_absent(tx: Any) -> None:
            if await tx.get(k) is None:
                tx.put(k, data)

        await db.transact(put_if_absent)

    async def _set_many(self, values: Iterable[tuple[str, Buffer]]) -> None:
        self._check_writable()
        await self._ensure_open()
        await self._write({k: _bytes_of(v, k) for k, v in values})

    def set_sync(self, key: str, value: Buffer) -> None:
        """`set`, blocking (runs on Zarr's event-loop thread)."""
        _zarr_sync(self.set(key, value))

    async def delete(self, key: str) -> None:
        """Delete `key` (a missing key is not an error)."""
        self._check_writable()
        await self._ensure_open()
        await self._write({key: None})

    def delete_sync(self, key: str) -> None:
        """`delete`, blocking (runs on Zarr's event-loop thread)."""
        _zarr_sync(self.delete(key))

    async def delete_dir(self, prefix: str) -> None:
        """Delete every key under `prefix` (as a directory: ``prefix/...``), in transactions
        of up to 1000 keys (one staged segment in a session)."""
        self._check_writable()
        await self._ensure_open()
        if prefix != "" and not prefix.endswith("/"):
            prefix += "/"
        keys = [k async for k in self.list_prefix(prefix)]
        for start in range(0, len(keys), _DELETE_BATCH):
            await self._write(dict.fromkeys(keys[start : start + _DELETE_BATCH]))

    async def clear(self) -> None:
        """Delete every key of this store (under its prefix)."""
        await self.delete_dir("")

    async def _writer(self) -> Store:
        handle = await self._handle()
        assert handle.db is not None  # a writable handle is created if missing
        return handle.db

    async def _write(self, writes: dict[str, bytes | None]) -> None:
        if not writes:
            return
        limit = self._options.max_value_bytes
        for key, data in writes.items():
            if data is not None and len(data) > limit:
                raise InvalidValueError(
                    f"the value of Zarr key {key!r} is {len(data)} bytes, over max_value_bytes ({limit}): "
                    "use smaller chunks (or shards) in this array, or raise StoreOptions.max_value_bytes"
                )
        if self._staged is not None:
            await stage(self._staged, self._prefix, writes)
            return
        db = await self._writer()
        async with db.transaction() as tx:
            for key, data in writes.items():
                if data is None:
                    tx.delete(self._key(key))
                else:
                    tx.put(self._key(key), data)

    # ------------------------------------------------------------------ listing

    async def _keys(self, prefix: str) -> AsyncIterator[str]:
        """Zarr keys starting with `prefix` (after this store's own), ascending, with the
        session's staged writes and deletes laid over the base version."""
        await self._ensure_open()
        handle = await self._handle()
        full = self._key(prefix)
        strip = len(self._prefix.encode("utf-8"))
        base: list[str] = []
        if handle.snapshot is not None:
            base = [k[strip:].decode("utf-8") async for k, _ in handle.snapshot.scan(full)]
        elif handle.db is not None:
            base = [k[strip:].decode("utf-8") async for k, _ in handle.db.scan(full)]
        staged = self._staged
        if staged is None:
            for key in base:
                yield key
            return
        mine = {k: deleted for k, (_, _, deleted) in staged.keys.items() if k.startswith(prefix)}
        live = {k for k in base if k not in mine} | {k for k, deleted in mine.items() if not deleted}
        for key in sorted(live):
            yield key

    async def list(self) -> AsyncIterator[str]:
        """Every key of this store."""
        async for key in self._keys(""):
            yield key

    async def list_prefix(self, prefix: str) -> AsyncIterator[str]:
        """Every key starting with `prefix`."""
        async for key in self._keys(prefix):
            yield key

    async def list_dir(self, prefix: str) -> AsyncIterator[str]:
        """The names directly under the directory `prefix` (keys and sub-directories)."""
        if prefix and not prefix.endswith("/"):
            prefix += "/"
        seen: set[str] = set()
        async for key in self._keys(prefix):
            name = key[len(prefix) :].split("/", 1)[0]
            if name not in seen:
                seen.add(name)
                yield name

    async def getsize(self, key: str) -> int:
        """The size of `key`'s value in bytes (FileNotFoundError if absent, as Zarr expects)."""
        value = await self._read(key)
        if value is None:
            raise FileNotFoundError(key)
        return len(value)


class ZarrSession:
    """Writes staged through `store` (and its pickled copies) and published together by
    `commit`; see `open_session`."""

    def __init__(self, db: Store, store: ZarrStore, staged: Staged) -> None:
        self._db = db
        self.store = store
        self._staged = staged
        self.committed_version: int | None = None
        self._outcome_unknown = False  # an attempt to commit ended without knowing if it landed

    @property
    def base_version(self) -> int:
        """The store version the session reads (its own writes laid over it)."""
        return self._staged.base_version

    def merge(self, *copies: ZarrStore | Staged | None) -> None:
        """Add what copies of `store` staged (pickled to workers and returned, or their
        `staged()`). Not needed: `commit` finds every copy's writes by their records.
        It still lets this process's copy read what the others wrote before the commit."""
        for copy in copies:
            staged = copy.staged() if isinstance(copy, ZarrStore) else copy
            if staged is None:
                raise ValidationError("merge takes copies of session.store (or their staged())")
            self._staged.merge(staged)

    async def commit(self, *, meta: dict[str, Any] | None = None) -> int:
        """Publish every write staged through `store` or any copy of it, in any process,
        in one manifest CAS; returns the version.

        Lists the session's records (one LIST per 1000 writes, a GET each). A key
        staged by several copies takes the write with the later stamp (see
        docs/zarr.md). Raises ConflictError if a commit since `base_version` wrote a
        key this session wrote or read (nothing is published: open a new session and
        write again), PartTooOldError if the session opened longer ago than half of
        `segment_grace_period`, JobAlreadyCommittedError on a second commit,
        ValidationError if nothing was staged. After CommitOutcomeUnknownError, call
        `commit` again: it returns the version if the first attempt landed.
        """
        if self.committed_version is not None:
            raise JobAlreadyCommittedError(
                f"this session committed version {self.committed_version}; open a new session to write more"
            )
        own = self._staged
        age = time.time() - own.opened_at
        limit = grace_period_of(self._db.options) / 2
        if age > limit:
            # A record or segment this old may be collected by GC already (I8): the commit
            # could not tell a write GC took from one never made.
            raise PartTooOldError(
                f"this Zarr session opened {age:.0f} s ago, over half of segment_grace_period ({limit:.0f} s): "
                "its staged writes may be collected. Write them again in a new session, or raise "
                "StoreOptions.segment_grace_period above twice a session's duration"
            )
        staged = await collect(own)
        if not staged.keys:
            raise ValidationError("the session staged no writes: nothing to commit")
        # Newest first, as the manifest lists segments: a later write of a key wins. Only
        # segments holding some key's winning write are committed (a superseded one is garbage).
        newest = sorted({ref.id: (stamp, ref) for stamp, ref, _ in staged.keys.values()}.values(), key=lambda s: s[0])
        segments = [ref for _, ref in reversed(newest)]
        prefix = self.store.prefix
        read_keys = {(prefix + k).encode("utf-8") for k in (*staged.keys, *staged.reads)}
        engine = self._db._engine
        try:
            version = await engine.commit_parts(
                store_id=own.job.store_id,
                job_id=own.job.job_id,
                segments=segments,
                written_at=own.opened_at,
                meta={"zarr_session": prefix, **(meta or {})},
                values="bytes",
                read_version=own.base_version,
                read_keys=read_keys,
            )
        except CommitOutcomeUnknownError:
            self._outcome_unknown = True
            raise
        except JobAlreadyCommittedError:
            # Evidence of an earlier attempt whose answer was lost: the commit log names its job.
            landed = next((r.version for r in engine.manifest.log if r.job == own.job.job_id), None)
            if not self._outcome_unknown or landed is None:
                raise
            version = landed
        self.committed_version = version
        return version


async def open_session(db: Store, *, prefix: str = "") -> ZarrSession:
    """A session on `db` (a writable bytes store, not partitioned): ``session.store`` is a
    `ZarrStore` whose writes, and those of its pickled copies in other processes, are
    staged as segments, invisible until ``await session.commit()`` publishes them all in
    one manifest CAS. See the module docs. Raises PartitionedSessionError on a
    partitioned store."""
    if db.read_only:
        raise ReadOnlyError(f"a Zarr session writes; {db.url} was opened read-only")
    if db._partitioned:
        raise PartitionedSessionError(
            f"{db.url} is partitioned (split_keys), and a Zarr session commits into one partition: "
            "write the arrays through ZarrStore(db=db) (each write a transaction), or keep them in a store "
            "that is not split"
        )
    opened_at = time.time()  # before any write of the session (I8)
    job = await db.distributed_write()  # refreshes: the base is the latest version
    # The session's own store needs no records: its state is this object's memory.
    staged = Staged(job=job, base_version=db.version, opened_at=opened_at, records=False)
    store = ZarrStore(db=db, prefix=prefix, _staged=staged)
    return ZarrSession(db, store, staged)


async def _close_handle(task: asyncio.Task[_Handle]) -> None:
    try:
        handle = await task
    except Exception:  # noqa: BLE001 - it never opened: nothing to close
        return
    if handle.owned and handle.db is not None:
        await handle.db.close()


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def _bytes_of(value: Buffer, key: str) -> bytes:
    if not isinstance(value, Buffer):
        raise InvalidValueError(f"ZarrStore.set takes a zarr Buffer for {key!r}, not {type(value).__name__}")
    return value.to_bytes()


def _check_range(byte_range: ByteRequest | None) -> None:
    if byte_range is not None and not isinstance(byte_range, (RangeByteRequest, OffsetByteRequest, SuffixByteRequest)):
        raise ValidationError(f"Unexpected byte_range, got {byte_range!r}: pass a zarr.abc.store.ByteRequest")


def _span(byte_range: ByteRequest | None) -> tuple[int, int | None] | None:
    """[start, end) of a byte request that needs no length to place (a suffix does:
    None, the whole value is read and sliced)."""
    if isinstance(byte_range, RangeByteRequest):
        return byte_range.start, byte_range.end
    if isinstance(byte_range, OffsetByteRequest):
        return byte_range.offset, None
    return None


def _slice(value: bytes, byte_range: ByteRequest | None) -> bytes:
    if byte_range is None:
        return value
    if isinstance(byte_range, RangeByteRequest):
        return value[byte_range.start : byte_range.end]
    if isinstance(byte_range, OffsetByteRequest):
        return value[byte_range.offset :]
    return value[-byte_range.suffix :] if byte_range.suffix else b""
