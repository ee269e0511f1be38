"""The public asyncio face: `open`, `Store`, and the reports its methods return.

`open` builds the engine (`_engine.open_engine`) and wraps it in a `Store`,
which validates and encodes arguments, then delegates. `Snapshot` lives with
the view it wraps, in `_snapshot.py`.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import os
import warnings
from collections.abc import (
    AsyncIterable,
    AsyncIterator,
    Awaitable,
    Callable,
    Generator,
    Iterable,
    Sequence,
)
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, TypeVar, overload

from ._bulk import encoded_batches
from ._codec import VALUE_MODES, Codec, ValueMode, decode_value, encode_key, encode_keys, key_range, value_mode
from ._compact import CompactionResult
from ._distributed import DistributedWrite, StoreAddress
from ._engine import Engine, VerifyReport
from ._errors import ConflictError, InvalidValueError, PartitionMovedError, ReadOnlyError, ValidationError
from ._gc import GcReport
from ._manifest import MOVED_SETTING, CommitRecord, Manifest
from ._nesting import Scope, enter, leave, refuse_nested
from ._objectstore import ObjectStore, RetryingObjectStore, S3Options
from ._options import StoreOptions, bulk_value_limit
from ._partition_map import ROOT_PID, Partition
from ._partition_ops import (
    bulk_load_partitions,
    commit_parts_partitions,
    delete_partition_tag,
    merge_gc_reports,
    partition_tags,
    tag_partitions,
    tagged_view,
)
from ._router import MAX_REDIRECTS, PartitionedView, Router, open_router, recent_commit_rate
from ._snapshot import Snapshot, SnapshotView
from ._streamed_put import NOT_BYTES, put_stream
from ._tags import Tag
from ._tasks import gather_all
from ._transaction import TransactAttempts, Transaction
from ._url import parse_url, s3_settings
from ._value_store import is_stream

T = TypeVar("T")
_NO_SCOPE = Scope("", None, None)  # a read retried by the store itself: no transact function ran
_log = logging.getLogger("kvstore")


@dataclass(frozen=True)
class StoreInfo:
    """A summary of a store, from its manifest (`Store.describe`).

    `entries` counts stored entries, including shadowed versions and
    tombstones not yet compacted away: an upper bound on the number of keys.
    `segments` counts segment objects (and inline segments), those of sorted
    runs included; `sorted_runs` counts the runs (what compactions wrote).
    `segments_per_level` counts what compaction counts, a run as one source.
    `last_compaction_write_amplification` is bytes written ÷ bytes of the output
    run of the newest compaction the commit log still lists (below 1.0 when
    segments were moved into the run instead of rewritten), or None.
    """

    url: str
    store_id: str
    created: float
    version: int
    oldest_readable_version: int
    segments: int
    segment_bytes: int
    entries: int
    segments_per_level: dict[int, int]
    commit_log_length: int
    values: Codec  # the value codec the store records (see `Store.recorded_values`)
    sorted_runs: int = 0
    last_compaction_write_amplification: float | None = None
    partitions: int = 1  # key-range partitions (`Store.partitions`); their figures are added up


def _last_write_amplification(manifest: Manifest) -> float | None:
    """The newest logged compaction's bytes written ÷ bytes output (compactions before
    this was recorded, and those that wrote nothing, give None)."""
    for record in reversed(manifest.log):
        stats = (record.meta or {}).get("compaction")
        if stats is not None:
            out = stats.get("bytes_out")
            return stats["bytes_written"] / out if out else None
    return None


@dataclass(frozen=True)
class CommitInfo:
    """One commit, as `Store.history` reports it.

    `kind` is "commit", "compaction", "gc", "settings" (values= or the writers' grace
    period recorded), "prepare" (a CAS that only prepared cross-partition transactions:
    each becomes data at its resolve, and never if it aborts) or "resolve" (a CAS of its
    own that turned decided cross-partition transactions into data; most resolves ride
    a later "commit" instead). A batch that committed some transactions and prepared others
    is a "commit" whose `transactions` counts only those it committed (`key_count` and
    `meta` cover all of them).
    """

    version: int
    time: float  # seconds since the epoch
    kind: str
    transactions: int
    key_count: int
    meta: list[dict[str, Any] | None] | None  # per transaction, as given to `transaction(meta=...)`
    partition: str | None = None  # the partition's id on a partitioned store (versions are per partition)

    @classmethod
    def from_record(cls, record: CommitRecord, partition: str | None = None) -> CommitInfo:
        """The public view of one commit-log record (of `partition`, on a partitioned store)."""
        meta = record.meta or {}
        kind = next((k for k in ("compaction", "gc", "settings") if k in meta), "commit")
        prepares = meta.get("prepares", 0)
        transactions = record.txn_count - prepares
        if "resolves" in meta:
            kind = "resolve"
        elif prepares and not transactions:
            kind, transactions = "prepare", prepares
        return cls(record.version, record.time, kind, transactions, record.key_count, meta.get("txns"), partition)


@dataclass(frozen=True)
class Change:
    """A commit seen by `Store.watch`: its version and the watched keys it wrote.

    `keys` is None when the commit wrote too many keys for the log to list
    them; rescan the watched range then. `deleted_ranges` are the [start, end)
    ranges (end None: to the end of the key space) the commit range-deleted
    (`delete_range`, `delete_prefix`), cut to the watched range: every key in
    them is gone as of `version` (those it wrote again at once are in `keys`).
    When `keys` is None the commit was too large for the log to list it
    exactly, and `deleted_ranges` is at most one range holding all it deleted
    (possibly more than it deleted): rescan then too.
    """

    version: int
    time: float
    keys: list[bytes] | None
    deleted_ranges: list[tuple[bytes, bytes | None]] = field(default_factory=list)
    partition: str | None = None  # the partition's id on a partitioned store (versions are per partition)


def _deleted_ranges(record: CommitRecord, lo: bytes | None, hi: bytes | None) -> list[tuple[bytes, bytes | None]]:
    """The ranges `record` deleted, cut to [lo, hi)."""
    cut: list[tuple[bytes, bytes | None]] = []
    for start, end in record.ranges:
        a = start if lo is None else max(start, lo)
        b = hi if end is None else end if hi is None else min(end, hi)
        if b is None or a < b:
            cut.append((a, b))
    return cut


@dataclass(frozen=True)
class PartitionInfo:
    """One key-range partition of a store (`Store.partitions`): it holds keys in
    [start, end) (end None: no upper bound), commits with a manifest of its own at
    `version`, and committed `commit_rate` batches per second over the last minute."""

    id: str
    start: bytes
    end: bytes | None
    version: int
    commit_rate: float


def _change_of(record: CommitRecord, lo: bytes | None, hi: bytes | None, partition: str | None = None) -> Change | None:
    """What `watch` of [lo, hi) reports of `record`: None if it changed nothing there."""
    keys = _changed_keys(record, lo, hi)
    deleted = _deleted_ranges(record, lo, hi)
    if keys is None and deleted:
        keys = []  # only a range delete met the watched range
    if keys is None:
        return None
    return Change(record.version, record.time, keys if record.keys is not None else None, deleted, partition)


def _changed_keys(record: CommitRecord, lo: bytes | None, hi: bytes | None) -> list[bytes] | None:
    """The keys of `record` inside [lo, hi): None if it wrote nothing there."""
    if record.key_count == 0:
        return [] if _deleted_ranges(record, lo, hi) else None
    if record.keys is None:
        overlaps = (lo is None or record.max_key >= lo) and (hi is None or record.min_key < hi)
        return [] if overlaps else None
    # A cross-partition prepare's keys are reported when its commit is resolved, not before
    # (an aborted one never): the record lists them for conflict checks only.
    held = set((record.meta or {}).get("prepared", ()))
    inside = [k for k in record.keys if (lo is None or k >= lo) and (hi is None or k < hi) and k not in held]
    return inside or None


class Store:
    """An open store. Create it with `kvstore.open(url)`.

    Store-level `get`, `scan` and `snapshot` read the latest version (one
    conditional GET of the manifest each, unless `max_staleness` allows
    reuse); `put` and `delete` are one-write transactions. Use `transaction`
    or `transact` to read and write several keys atomically.

    A thin face: it validates and encodes what it is given and hands the
    rest to the store's engine (`kvstore._engine.Engine`).
    """

    def __init__(self, router: Router, values: ValueMode, s3: S3Options | None = None) -> None:
        self._router = router
        self._values = values
        self._s3 = s3 or S3Options()  # what a distributed write's workers open the store with
        engine = router.first
        self._attempts = TransactAttempts(engine.options.transact_max_attempts, engine.url)

    @property
    def _engine(self) -> Engine:
        """The engine of the first partition: the store's only one unless it was split."""
        return self._router.first

    @property
    def _partitioned(self) -> bool:
        return self._router.partitioned

    @property
    def url(self) -> str:
        """The store's URL, normalised (``s3://bucket/prefix/``, ``file:///path/``, ...)."""
        return self._engine.url

    @property
    def store_id(self) -> str:
        """The store's unique id, made when it was created (no request)."""
        return self._router.store_id

    @property
    def read_only(self) -> bool:
        """Whether the store was opened with ``read_only=True``."""
        return self._engine.read_only

    @property
    def options(self) -> StoreOptions:
        """The options the store was opened with."""
        return self._engine.options

    @property
    def recorded_values(self) -> Codec:
        """The value codec the store records, ``"bytes"`` or ``"msgpack"`` (no request).

        The codec a store opened without `values=` uses, and the only one
        `values=` may name besides ``"raw"``: tools that open stores with
        ``values="raw"`` read it to decode the stored bytes. A store made
        before codecs were recorded says ``"bytes"`` (and accepts any `values=`).
        """
        recorded: Codec = self._engine.manifest.settings.get("values") or "bytes"
        return recorded

    def __repr__(self) -> str:
        state = "closed" if self._engine.closed else f"version {self.version}"
        return f"<kvstore.Store {self.url} {state}{' read-only' if self.read_only else ''}>"

    @property
    def version(self) -> int:
        """The newest store version this process has seen (no request).

        On a partitioned store versions are per partition (`partitions()`); this is
        the sum of the live partitions' versions: it grows with every commit, but a
        split starts new partitions, so it is not a version `snapshot` accepts.
        """
        if self._partitioned:
            return sum(e.manifest.version for e in self._router.all_engines())
        return self._engine.manifest.version

    async def get(self, key: str | bytes, default: Any = None) -> Any:
        """The latest value of `key`, or `default` if it is absent."""
        if not self._partitioned:
            view = await self._unsplit_view()
            if view is not None:
                return await Snapshot(view, self.options, self._values, self.url).get(key, default)
        if self._partitioned:
            k = encode_key(key, self.options.max_key_bytes)
            for _ in range(MAX_REDIRECTS):
                part, engine = self._router.engine_for(k)
                try:
                    view = await self._router.read_view(part, engine)
                except PartitionMovedError:
                    continue  # the router followed the split: route again
                return await Snapshot(view, self.options, self._values, self.url).get(k, default)
        raise self._kept_moving()

    async def _unsplit_view(self, keys: Sequence[bytes] = ()) -> SnapshotView | None:
        """The latest view of a store never split, as ever (`Engine.latest_view_for(keys)`
        with keys); None if it has been split since this handle read its map: the router
        then follows the split, and the caller reads the partitions. A read-only handle
        meeting the first split before its map CAS reads the sealed root (`Router.read_view`)."""
        view = await (self._engine.latest_view_for(keys) if keys else self._engine.latest_view())
        if view.manifest.settings.get(MOVED_SETTING) is None:
            return view
        await self._router.redirect(ROOT_PID)
        return None if self._partitioned else view

    async def _follow_split(self) -> None:
        """On a handle that has not seen a split yet: check the root manifest (one
        conditional GET) and, if the store's first split sealed it, follow the split,
        so that the operation goes to the partitions (`_partitioned` turns True). A
        read-only handle meeting a split not finished yet stays on the sealed root: its
        final version is what the successors will hold, until the map changes."""
        if not self._partitioned and (await self._engine.refresh()).settings.get(MOVED_SETTING) is not None:
            await self._router.redirect(ROOT_PID)

    async def get_many(self, keys: Iterable[str | bytes], default: Any = None) -> list[Any]:
        """The latest values of `keys`, in order; `default` for each absent one.

        One conditional GET of the manifest for the whole batch (as `get`), with
        the keys' index reads under way meanwhile; the keys not cached are read
        concurrently: at most one GET per distinct block they need (plus the
        indexes leading there), not one per key. A key may repeat. See
        `Snapshot.get_many`.
        """
        ks = encode_keys(keys, self.options.max_key_bytes)
        if not self._partitioned:
            view = await self._unsplit_view(ks)  # the indexes load while the manifest is checked
            if view is not None:
                return await Snapshot(view, self.options, self._values, self.url).get_many(ks, default)
        if self._partitioned:
            # One read-only transaction: each partition's keys read together, the
            # partitions in parallel, then checked unchanged (serializable across them).
            for attempt in self._attempts:
                tx = Transaction(self._router, self._values)  # not `transaction()`: no nesting rule for reads
                try:
                    values = await tx.get_many(ks, default)
                    await tx.commit()
                    return values
                except ConflictError as exc:
                    await asyncio.sleep(attempt.pause_after(exc, _NO_SCOPE))
        raise AssertionError("unreachable: the last attempt raises")

    async def put(self, key: str | bytes, value: Any, *, ttl: float | None = None) -> int:
        """Write one key; returns the version it committed at. With `ttl` (seconds) the
        value expires that long from now (`Transaction.put` has the rules).

        On a values="bytes" store `value` may also be streamed: a binary file-like
        object (its `read(n)` is called in a worker thread until it returns b"") or an
        async iterable of bytes. Its bytes are uploaded as they are read, as a value
        object of their own whatever their length (multipart parts of 16 MiB, 4 in
        flight: memory holds about 7 parts, not the value), then committed as one put.
        Past StoreOptions.max_value_bytes it raises InvalidValueError and commits
        nothing; an upload longer than half the GC grace period (segment_grace_period)
        raises TransactionTooOldError and commits nothing. No `ttl` with a stream (an
        expiring value lives in the commit's segment).
        """
        if is_stream(value):
            k = encode_key(key, self.options.max_key_bytes)
            if self._values != "bytes":
                raise InvalidValueError(NOT_BYTES.format(values=self._values))
            if ttl is not None:
                raise ValidationError(
                    "a put with ttl keeps its value in the commit's segment, so it cannot be streamed; "
                    "put the value as bytes, or stream it without ttl (and delete it when it is due)"
                )
            self._engine.check_open()
            refuse_nested(self.store_id, self.url)
            if self.read_only:
                raise ReadOnlyError("this store was opened with read_only=True; open it without to write")
            return await put_stream(self._router, k, value, self.options.max_value_bytes)
        return await self._write_alone(lambda tx: tx.put(key, value, ttl=ttl))

    async def read_value(self, key: str | bytes, *, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        """The latest value of `key` (its bytes [start, end)) as chunks, in order, never
        held whole; nothing for a missing key. One conditional GET of the manifest, then
        `Snapshot.read_value` (chunk sizes, memory, and the checksum check at the end)."""
        snapshot, k = await self._latest_for(key)
        async for chunk in snapshot.read_value(k, start=start, end=end):
            yield chunk

    async def get_range(self, key: str | bytes, start: int, end: int | None = None) -> bytes | None:
        """Bytes [start, end) of the latest value of `key` (clipped, as a slice), or None
        if the key is absent: ranged GETs of only those bytes for a value stored out of
        line. Not checked against the value's checksum (`Snapshot.get_range`)."""
        snapshot, k = await self._latest_for(key)
        return await snapshot.get_range(k, start, end)

    async def _latest_for(self, key: str | bytes) -> tuple[Snapshot, bytes]:
        """A snapshot of the latest version of the partition holding `key`, and the key."""
        k = encode_key(key, self.options.max_key_bytes)
        for _ in range(MAX_REDIRECTS):
            if not self._partitioned:
                view = await self._unsplit_view()
                if view is not None:
                    return Snapshot(view, self.options, self._values, self.url), k
                continue
            part, engine = self._router.engine_for(k)
            try:
                view = await self._router.latest_view(part, engine)
            except PartitionMovedError:
                continue  # the router followed the split: route again
            return Snapshot(view, self.options, self._values, self.url), k
        raise self._kept_moving()

    async def delete(self, key: str | bytes) -> int:
        """Delete one key (a missing key is not an error); returns the commit version."""
        return await self._write_alone(lambda tx: tx.delete(key))

    async def delete_range(self, start: str | bytes, end: str | bytes | None) -> int:
        """Delete every key in [start, end) (`end` None: every key from `start` on) in one
        commit; returns its version. See `Transaction.delete_range`: one small commit
        (one manifest PUT) however many keys the range holds."""
        return await self._write_alone(lambda tx: tx.delete_range(start, end))

    async def delete_prefix(self, prefix: str | bytes) -> int:
        """Delete every key starting with `prefix` in one commit; returns its version.
        See `Transaction.delete_prefix`."""
        return await self._write_alone(lambda tx: tx.delete_prefix(prefix))

    async def _write_alone(self, write: Callable[[Transaction], None]) -> int:
        """Commit a transaction of one blind write (`write(tx)`); its version. It reads
        nothing, so a conflict (on a partitioned store: a cross-partition transaction's
        undecided intent on the key) is retried as `transact` retries."""

        def attempt(tx: Transaction) -> Transaction:
            write(tx)
            return tx

        tx = await self.transact(attempt)
        assert tx.committed_version is not None
        return tx.committed_version

    async def add(self, key: str | bytes, n: int) -> int:
        """Atomically add `n` to the signed 64-bit integer at `key` (a missing key counts
        as 0; wraps around past the 64-bit range); returns the commit version. A blind
        write: concurrent adds never conflict (`Transaction.add` has the rules); on a
        partitioned store, one meeting an undecided cross-partition transaction's hold
        on the key is retried until it is decided."""
        return await self._write_alone(lambda tx: tx.add(key, n))

    async def max(self, key: str | bytes, n: int) -> int:
        """Atomically raise the integer at `key` to at least `n` (a missing key becomes `n`);
        returns the commit version. A blind write, as `add` (`Transaction.max`)."""
        return await self._write_alone(lambda tx: tx.max(key, n))

    async def min(self, key: str | bytes, n: int) -> int:
        """Atomically lower the integer at `key` to at most `n` (a missing key becomes `n`);
        returns the commit version. A blind write, as `add` (`Transaction.min`)."""
        return await self._write_alone(lambda tx: tx.min(key, n))

    async def scan(
        self,
        prefix: str | bytes | None = None,
        *,
        start: str | bytes | None = None,
        end: str | bytes | None = None,
        limit: int | None = None,
        reverse: bool = False,
    ) -> AsyncIterator[tuple[bytes, Any]]:
        """(key, value) pairs of the latest version; see `Snapshot.scan`.

        On a partitioned store the partitions are read one after the other, each at
        its latest version when the scan reaches it; `snapshot()` gives one
        consistent version of them all.
        """
        if self._partitioned:
            async for item in self._scan_partitions(prefix, start, end, limit, reverse):
                yield item
            return
        snapshot = await self.snapshot()
        async for item in snapshot.scan(prefix, start=start, end=end, limit=limit, reverse=reverse):
            yield item

    async def _scan_partitions(
        self,
        prefix: str | bytes | None,
        start: str | bytes | None,
        end: str | bytes | None,
        limit: int | None,
        reverse: bool,
    ) -> AsyncIterator[tuple[bytes, Any]]:
        if limit is not None and limit < 0:
            raise ValidationError(f"limit must be >= 0, not {limit}")
        lo, hi = key_range(self.options.max_key_bytes, prefix, start, end)
        count = 0
        done: bytes | None = None  # where the pairs handed out stop: a split meanwhile resumes there
        for _ in range(MAX_REDIRECTS):
            rlo, rhi = (lo, done) if reverse and done is not None else (done, hi) if done is not None else (lo, hi)
            parts = self._router.route(rlo, rhi)
            try:
                for part, engine in reversed(parts) if reverse else parts:
                    plo, phi = part.clip(rlo, rhi)
                    view = await self._router.read_view(part, engine)
                    async for key, raw in view.scan(plo, phi, reverse=reverse):
                        if limit is not None and count >= limit:
                            return
                        done = key if reverse else key + b"\x00"
                        count += 1
                        yield key, decode_value(raw, self._values, key, self.url)
                return
            except PartitionMovedError:
                continue
        raise self._kept_moving()

    def _kept_moving(self) -> PartitionMovedError:
        return PartitionMovedError(f"the partitions of {self.url} kept splitting under this read; retry it")

    def transaction(self, *, meta: dict[str, Any] | None = None) -> Transaction:
        """A new serializable transaction; use ``async with``. `meta` is kept in the commit log.

        Raises NestedTransactionError inside a `transact` function or an
        ``async with db.transaction()`` block on the same store in the same
        task (use that `tx`); store-level `put` and `delete` are refused there too.
        """
        self._engine.check_open()
        refuse_nested(self.store_id, self.url)
        return Transaction(self._router, self._values, meta)

    @overload
    async def transact(self, fn: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> T: ...

    @overload
    async def transact(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T: ...

    async def transact(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run ``fn(tx, *args, **kwargs)`` in a transaction and commit it,
        retrying from the start on ConflictError (with jittered backoff) up to
        `StoreOptions.transact_max_attempts` times. Returns fn's result.

        `fn` may be ``async def`` (its result is awaited) or a plain function
        (its result is used as is, so ``lambda tx: tx.put(k, v)`` works).
        It may run more than once: keep side effects out of it. Starting
        another transaction on this store inside it raises
        NestedTransactionError (use `tx`); a conflict that a retry cannot cure
        — fn committed other transactions on this store, e.g. from tasks it
        started — is raised at once with ``retryable=False``.
        """
        for attempt in self._attempts:
            tx = self.transaction()
            scope = enter(self.store_id, tx)
            try:
                result = fn(tx, *args, **kwargs)
                if inspect.isawaitable(result):
                    result = await result
                await tx.commit()
                return result
            except ConflictError as exc:
                tx.discard()
                await asyncio.sleep(attempt.pause_after(exc, scope))
            except BaseException:
                tx.discard()
                raise
            finally:
                leave(scope)
        raise AssertionError("unreachable: the last attempt raises")

    async def bulk_load(
        self,
        items: Iterable[tuple[str | bytes, Any]] | AsyncIterable[tuple[str | bytes, Any]],
        *,
        progress: Callable[[int], None] | None = None,
        chunk_bytes: int = 64 * 1024 * 1024,
    ) -> int:
        """Write many (key, value) pairs, in any order, as one transaction; returns its version.

        Pairs are gathered into chunks of about `chunk_bytes` (a repeated key
        counts again), each sorted and streamed into its own segment (multipart
        uploads for large ones, parts uploading while the next are encoded, and
        a chunk's upload finishing while the next chunk fills). Chunks whose key
        ranges overlap are then merged, so that the load lands as one sorted run
        of segments (a cold read right after it costs what it does in a compacted
        store); all of it commits in one manifest CAS, so readers see all or
        nothing. If a key repeats, its last value wins. Memory stays around one
        chunk plus a few upload parts, and while merging within
        `compaction_memory_bytes` (one pass while that holds a block, its
        read-ahead and its decoded entries per chunk: about 470 chunks, 30 GB,
        with the defaults; passes beyond). Input already in
        ascending key order is cheapest: its chunks become the run as they are.
        `progress(n)` is called with the number of pairs written so far after
        each chunk's upload. The write-size limits of ordinary transactions do
        not apply; the key and value limits do.

        On a partitioned store each partition's share of the pairs is written in that
        partition (concurrently), then all shares are published at once through the
        cross-partition protocol (a prepare per partition, one decision): readers see
        every partition's share or none. Returns the highest of the partitions'
        versions. ConflictError if the store is split during the load (load again).
        """
        self._engine.check_writable("bulk loads are writes")
        refuse_nested(self.store_id, self.url)
        limits = self.options.max_key_bytes, bulk_value_limit(self.options)
        batches = encoded_batches(items, self._values, *limits)
        if self._partitioned:
            return await bulk_load_partitions(self._router, batches, self._values, progress, chunk_bytes)
        return await self._engine.bulk_commit(batches, values=self._values, progress=progress, chunk_bytes=chunk_bytes)

    async def distributed_write(
        self, *, meta: dict[str, Any] | None = None, chunk_bytes: int = 64 * 1024 * 1024
    ) -> DistributedWrite:
        """A new distributed write: a small, picklable job whose parts any process writes.

        Send the job to workers (Dask, Ray, `concurrent.futures`, other hosts);
        each calls ``part = job.write(pairs, index=i)``, which checks and encodes
        the pairs like `bulk_load` and writes them as immutable segments (chunks
        of about `chunk_bytes`), committing nothing. ``await job.commit(parts)``
        on the driver publishes every part in one manifest CAS, or none, at most
        once; `meta` is kept in the commit log. Where parts overlap in keys, the
        later part in `parts` wins. Parts never committed stay invisible and are
        collected by `gc` after the grace period. On a partitioned store workers
        route their pairs to the partitions by key, and the commit publishes every
        partition's share at once (one cross-partition decision); a split while
        the job runs makes its commit fail (PartitionMovedError: run a new job).
        See docs/distributed.md.
        """
        self._engine.check_writable("distributed writes are writes")
        if not isinstance(chunk_bytes, int) or chunk_bytes < 1:
            raise ValidationError(f"chunk_bytes must be a positive int, not {chunk_bytes!r}")
        committer: Callable[..., Awaitable[int]] = self._engine.commit_parts
        pmap = None
        if self._partitioned:
            pmap = await self._router.reload()
            committer = functools.partial(commit_parts_partitions, self._router, pmap)
        else:
            await self._engine.refresh()
        return DistributedWrite(
            url=self.url,
            store_id=self.store_id,
            job_id=self._engine.new_txn_id().hex(),
            values=self._values,
            options=self.options,
            s3=self._s3,
            chunk_bytes=chunk_bytes,
            meta=meta,
            pmap=pmap,
            _committer=committer,
        )

    async def snapshot(self, *, version: int | None = None, tag: str | None = None) -> Snapshot:
        """A consistent read-only view of the latest version, or of the past.

        `version=N` reads version N exactly: any of the last
        `StoreOptions.history_versions` versions, or a tagged one.
        `tag="name"` reads the version retained under that tag. A version no
        longer retained raises VersionNotRetainedError, never a wrong answer;
        one no commit has made yet raises FutureVersionError, naming the latest.

        On a partitioned store a snapshot shows every partition at one instant
        (their manifests read twice, in parallel, until no partition changed in
        between; `Snapshot.version` is the sum of their versions); `version=`
        is refused there (versions are per partition), `tag=` works.
        """
        if tag is not None or version is not None:
            await self._follow_split()  # (the latest view checks the seal itself)
        if self._partitioned:
            return await self._partitioned_snapshot(version, tag)
        if tag is not None:
            if version is not None:
                raise ValidationError("pass version= or tag=, not both")
            view = await self._engine.tagged_view(tag)
        elif version is not None:
            view = await self._engine.view_at(version)
        else:
            latest = await self._unsplit_view()
            if latest is None:  # split since this handle read its map
                return await self._partitioned_snapshot(None, None)
            view = latest
        return Snapshot(view, self.options, self._values, self.url, self._engine.check_same_process)

    async def _partitioned_snapshot(self, version: int | None, tag: str | None) -> Snapshot:
        if version is not None:
            raise ValidationError(
                f"{self.url} is partitioned: versions are per partition, so snapshot(version=) cannot name one "
                "point of them all; read the latest (snapshot()) or a tag (snapshot(tag=...))"
            )
        if tag is not None:
            view = await tagged_view(self._router, tag)
        else:
            pmap, views = await self._router.consistent_views()
            view = PartitionedView(pmap, views)
        return Snapshot(view, self.options, self._values, self.url, self._engine.check_same_process)

    async def split(self, key: str | bytes) -> list[PartitionInfo]:
        """Add a partition boundary at `key`, online: the partition holding `key` is
        replaced by two, one ending and one starting at `key`. Returns `partitions()`.

        Writers keep going: one that commits to the old partition meanwhile is
        redirected (blind writes follow by themselves; a transaction that read the
        old partition gets PartitionMovedError, a ConflictError that `transact`
        retries). Costs a manifest CAS sealing the old partition, a copy of its
        keys into the two new ones (segment PUTs and a CAS each) and a CAS of the
        partition map. The copy keeps each key as stored: a put's expiry, atomic
        operands, and a value stored out of line (copied server-side, its bytes
        never read). A key that already is a boundary changes nothing.
        """
        k = encode_key(key, self.options.max_key_bytes)
        await self._router.split(k)
        return await self.partitions()

    async def merge_partitions(self, boundary: str | bytes) -> list[PartitionInfo]:
        """Remove the partition boundary `boundary`, online: the two partitions on either
        side of it are replaced by one holding both ranges. Returns `partitions()`.

        As safe as `split`: writers keep going (one that commits to either old
        partition meanwhile is redirected), intents of cross-partition transactions in
        them are resolved first, a tag taken before still reads everything, and a
        merge that died midway is finished by the next reader or writer that meets it
        (or by calling this again). Costs a manifest CAS sealing each of the two, a
        copy of their keys into the new one (segment PUTs and a CAS; values stored
        out of line are copied server-side) and a CAS of the partition map.
        ValidationError if `boundary` is not one (`partitions()` lists them).
        """
        k = encode_key(boundary, self.options.max_key_bytes)
        await self._router.merge(k)
        return await self.partitions()

    async def partitions(self) -> list[PartitionInfo]:
        """The partitions, in key order: range, id, version and recent commit rate (one
        conditional GET of the map and of each partition's manifest, in parallel)."""
        self._engine.check_open()
        await self._router.reload()
        parts = self._router.parts()
        manifests = await gather_all(e.refresh() for _, e in parts)
        return [
            PartitionInfo(p.pid, p.start, p.end, m.version, recent_commit_rate(m))
            for (p, _), m in zip(parts, manifests, strict=True)
        ]

    async def tag(self, name: str, *, version: int | None = None) -> Tag:
        """Retain the latest version under `name`.

        Copies the manifest server-side (CopyObject with CopySourceIfMatch: the
        exact bytes of that version) and creates the tag object: one COPY and
        one PUT. Tags never move: TagExistsError if the name is taken.
        `version` must be None or the latest version: tagging a past version
        is not supported yet (ValidationError).

        On a partitioned store the tag retains every partition at one instant
        (`snapshot`): a tag of each partition and one object listing their
        versions; `version` must be None there. A tag taken before the store's
        first split still reads, lists and deletes as it was.
        """
        await self._follow_split()
        if self._partitioned:
            if version is not None:
                raise ValidationError(f"{self.url} is partitioned: versions are per partition; tag without version=")
            return await tag_partitions(self._router, name)
        return await self._engine.tag(name, version=version)

    async def tags(self) -> list[Tag]:
        """Every tag, oldest version first. One LIST (two on a split store: its tags and those
        taken before its first split) and one GET per tag."""
        await self._follow_split()
        if self._partitioned:
            return await partition_tags(self._router)
        return await self._engine.tags()

    async def delete_tag(self, name: str) -> None:
        """Forget a tag. What only it kept alive is deleted by a later `gc()`."""
        await self._follow_split()
        if self._partitioned:
            await delete_partition_tag(self._router, name)
            return
        await self._engine.delete_tag(name)

    async def history(self, *, limit: int | None = None) -> list[CommitInfo]:
        """Recent commits, newest first, from the manifest's commit log (one conditional GET).

        The log holds the last `StoreOptions.commit_log_length` commits.

        On a partitioned store, the commits of every partition (each log its last
        `commit_log_length`), merged newest first by commit time: in version order
        within a partition, and across partitions in the order of the committers'
        clocks (`CommitInfo.partition` names the partition; a cross-partition
        commit appears once in each partition it wrote).
        """
        await self._follow_split()
        if self._partitioned:
            await self._router.reload()
            parts = self._router.parts()
            manifests = await gather_all(e.refresh() for _, e in parts)
            infos = [
                CommitInfo.from_record(r, p.pid) for (p, _), m in zip(parts, manifests, strict=True) for r in m.log
            ]
            infos.sort(key=lambda c: (c.time, c.version), reverse=True)
            return infos[: limit if limit is not None else None]
        manifest = (await self._engine.latest_view()).manifest
        records = list(reversed(manifest.log))[: limit if limit is not None else None]
        return [CommitInfo.from_record(r) for r in records]

    async def watch(
        self,
        prefix: str | bytes | None = None,
        *,
        start: str | bytes | None = None,
        end: str | bytes | None = None,
        interval: float = 1.0,
        since: int | None = None,
    ) -> AsyncIterator[Change]:
        """Yield every commit after `since` (default: now) that wrote keys in the range, in order.

        Polls the manifest with a conditional GET every `interval` seconds (a
        304 costs no body). Raises VersionNotRetainedError if it falls more
        than `commit_log_length` commits behind.

        On a partitioned store it polls each partition meeting the range (in
        parallel) and yields, per poll, each partition's new commits in version
        order, the partitions in key order (`Change.partition` names it; versions
        are per partition); across partitions, commits of one poll are not
        ordered in time. `since` is refused there. Partitions made by a split
        are followed from their first commit (the split's copy is not reported).
        """
        lo, hi = key_range(self.options.max_key_bytes, prefix, start, end)
        if self._partitioned:
            if since is not None:
                raise ValidationError(f"{self.url} is partitioned: versions are per partition; watch without since=")
            async for found in watch_partitions(self._router, lo, hi, interval):
                yield found
            return
        root = self._engine
        last = since if since is not None else (await root.latest_view()).version
        while True:
            for record in await root.commits_after(last):
                last = record.version
                change = _change_of(record, lo, hi)
                if change is not None:
                    yield change
            if root.manifest.settings.get(MOVED_SETTING) is not None:
                await self._router.redirect(ROOT_PID)
                if self._partitioned:  # the store's first split: its successors from their first commit
                    async for found in watch_partitions(self._router, lo, hi, interval, {ROOT_PID: last}):
                        yield found
                    return
            await asyncio.sleep(interval)

    async def gc(self, *, dry_run: bool = False, grace_period: float | None = None) -> GcReport:
        """Delete objects nothing references any more (I7); report what was kept and why.

        Only objects older than the grace period are deleted (and only once they
        have been unreferenced that long), which protects commits in progress and
        readers of snapshots younger than that. The grace period defaults to the
        longer of the store's recorded one (the longest `segment_grace_period` its
        writers opened it with) and this store's `StoreOptions.segment_grace_period`.
        A `grace_period` shorter than the recorded one raises
        `GracePeriodTooShortError`: a writer may still commit a segment that old.

        On a partitioned store, each live partition is collected in turn (each
        deletes only under its own prefix; a partition retired by a split is
        never collected), and the reports are added up.
        """
        await self._follow_split()
        if self._partitioned:
            await self._router.reload()
            reports = [await e.gc(grace_period=grace_period, dry_run=dry_run) for e in self._router.all_engines()]
            return merge_gc_reports(reports)
        return await self._engine.gc(grace_period=grace_period, dry_run=dry_run)

    async def refresh(self) -> int:
        """Fetch the latest manifest now (one conditional GET); returns its version
        (on a partitioned store: the map and every partition's, `version`)."""
        await self._follow_split()
        if self._partitioned:
            await self._router.reload()
            await gather_all(e.refresh() for e in self._router.all_engines())
            return self.version
        return (await self._engine.refresh()).version

    async def describe(self) -> StoreInfo:
        """What the latest manifest says about the store (one conditional GET).

        On a partitioned store, the partitions' figures added up (one conditional
        GET each): `version` as `Store.version`, `oldest_readable_version` the
        lowest, `commit_log_length` the sum, `partitions` their number.
        """
        await self._follow_split()
        if not self._partitioned:
            manifests = [(await self._engine.latest_view()).manifest]
        else:
            await self._router.reload()
            manifests = await gather_all(e.refresh() for e in self._router.all_engines())
        segments = [ref for m in manifests for ref in m.segments]
        levels: dict[int, int] = {}
        for ref in segments:
            levels[ref.level] = levels.get(ref.level, 0) + 1
        first = manifests[0]
        return StoreInfo(
            url=self.url,
            store_id=self.store_id,
            created=min(m.created for m in manifests),
            version=sum(m.version for m in manifests),
            oldest_readable_version=min(m.history_floor for m in manifests),
            segments=sum(max(r.parts, 1) for r in segments),
            segment_bytes=sum(r.size for r in segments),
            entries=sum(r.count for r in segments),
            segments_per_level=levels,
            commit_log_length=sum(len(m.log) for m in manifests),
            values=first.settings.get("values") or "bytes",
            sorted_runs=sum(r.is_run for r in segments),
            last_compaction_write_amplification=_last_write_amplification(first),
            partitions=len(manifests),
        )

    def statistics(self) -> dict[str, Any]:
        """Counters: object-store requests by kind, cache use, commits and conflicts
        (on a partitioned store, the partitions' added up: they share one connection pool)."""
        stats = self._engine.statistics()
        if self._partitioned:
            others = [e.statistics() for e in self._router.all_engines()[1:]]
            for name in ("commits", "transactions_committed", "conflicts", "cas_retries", "ambiguous_commits_resolved"):
                stats[name] += sum(o[name] for o in others)
            for name in ("bytes", "hits", "misses"):
                stats["cache"][name] += sum(o["cache"][name] for o in others)
            stats["version"] = self.version
        return stats

    async def verify(self) -> VerifyReport:
        """Read and check every object the latest version references.

        Costs one GET of the manifest, one per sorted run object and one or more
        per segment (ranged for large ones), bypassing the caches, one segment at
        a time. Damaged objects are reported, not raised. A partitioned store's
        partitions are verified one after the other, into one report.
        """
        await self._follow_split()
        if self._partitioned:
            await self._router.reload()
            reports = [await e.verify() for e in self._router.all_engines()]
            merged = VerifyReport(sum(r.version for r in reports))
            for r in reports:
                merged.objects_checked += r.objects_checked
                merged.damaged.update(r.damaged)
            return merged
        return await self._engine.verify()

    async def compact(self, *, full: bool = False, client: Any = None) -> list[CompactionResult]:
        """Merge segments until no level is due (or everything into one sorted run, with `full`).

        A merge streams into segments of about `StoreOptions.target_segment_bytes`,
        in key ranges run concurrently within `StoreOptions.compaction_memory_bytes`.
        With `client` (a `distributed.Client`; needs ``kvstore[dask]``) the key
        ranges run as tasks on its Dask cluster instead, each worker reading and
        writing the store itself; this process commits them all in one CAS.
        Compaction commits never conflict with transactions. Costs ranged GETs of
        the inputs (read ahead in windows of up to 4 MiB), a PUT (or multipart upload) per output segment, a PUT of the run
        object and a manifest CAS per merge.
        """
        run = None
        if client is not None:
            from .dask import sub_compactions_on

            run = sub_compactions_on(client, StoreAddress(self.url, self._s3, self.options))
        await self._follow_split()
        if self._partitioned:
            if client is not None:
                raise ValidationError(f"{self.url} is partitioned: compact it without client=")
            await self._router.reload()
            return [r for e in self._router.all_engines() for r in await e.compact(full=full)]
        return await self._engine.compact(full=full, run=run)

    async def close(self) -> None:
        """Finish queued commits and release connections. Idempotent.

        A background compaction in progress is cancelled; its half-done work
        is invisible (an orphan segment for garbage collection). Requests in
        flight (prefetches, refreshes) are waited for, within their deadline.
        """
        await self._router.close()

    async def __aenter__(self) -> Store:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    def __del__(self) -> None:
        router = getattr(self, "_router", None)
        if router is None:
            return
        engine = router.first
        if engine.closed or engine.forked:
            return  # in a forked child the engine is the parent's, to close there
        in_flight = sum(e.commits_in_flight() for e in router.all_engines())
        if not in_flight:
            warnings.warn(
                f"{self!r} was never closed; use `async with kvstore.open(...)`", ResourceWarning, stacklevel=1
            )
            return
        message = (
            f"{self!r} was garbage-collected, never closed, with {in_flight} commit(s) in flight: nothing "
            "waits for them any more, so their outcome is not reported, and they are lost if the process "
            "ends first; use `async with kvstore.open(...)` (or `with kvstore.open_sync(...)`), whose "
            "close() waits for queued commits"
        )
        _log.error(message)  # lost writes must be seen: a ResourceWarning is hidden by default
        warnings.warn(message, ResourceWarning, stacklevel=1)


async def watch_partitions(
    router: Router, lo: bytes | None, hi: bytes | None, interval: float, since: dict[str, int] | None = None
) -> AsyncIterator[Change]:
    """`Store.watch` on a partitioned store: every partition meeting [lo, hi) polled, from
    the versions `since` names (partition id -> version; default: every one's latest)."""
    await router.reload()
    if since is None:
        await gather_all(e.refresh() for _, e in router.route(lo, hi))
        since = {p.pid: e.manifest.version for p, e in router.route(lo, hi)}
    last = dict(since)
    while True:
        await router.reload()
        parts = router.route(lo, hi)
        live = {p.pid for p, _ in parts}
        # A partition split since the last poll: its log is final (sealed), so one more read
        # of it yields its last commits, then its successors take over.
        parts = [(Partition(pid, b"", None), await router.engine_of(pid)) for pid in last if pid not in live] + parts
        for part, _ in parts:
            last.setdefault(part.pid, 0)  # a split's successor: from its first commit
        records = await gather_all(e.commits_after(last[p.pid]) for p, e in parts)
        for pid in [pid for pid in last if pid not in live]:
            del last[pid]
        for (part, _), found in zip(parts, records, strict=True):
            for record in found:
                last[part.pid] = record.version
                if any(t is not None and "split_from" in t for t in (record.meta or {}).get("txns") or ()):
                    continue  # the split's copy of what the old partition held
                change = _change_of(record, lo, hi, part.pid)
                if change is not None:
                    yield change
        await asyncio.sleep(interval)


class StoreOpener:
    """What `kvstore.open` returns: ``await`` it, or use it with ``async with``."""

    def __init__(self, open_store: Callable[[], Awaitable[Store]]) -> None:
        self._open_store = open_store
        self._store: Store | None = None

    def __await__(self) -> Generator[Any, None, Store]:
        return self._open_store().__await__()

    async def __aenter__(self) -> Store:
        self._store = await self._open_store()
        return self._store

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._store is not None:
            await self._store.close()


def open(  # noqa: A001 - mirrors the builtin on purpose, like aiosqlite.connect
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
) -> StoreOpener:
    """Open the store at `url`, creating it if it does not exist (unless `create=False`).

    URLs: ``s3://bucket/prefix``, ``file:///absolute/path`` or a plain path,
    ``memory://name`` (tests only). S3 settings default to the AWS chain
    (environment, profile, instance role); `endpoint_url` selects any
    S3-compatible service. `values="msgpack"` stores any msgpack-serializable
    object instead of bytes (a value that would not read back equal, such as
    a tuple, is refused at `put`). A store records the `values` it was
    created with (bytes by default): leaving `values` out uses the recorded
    codec, and another explicit one is refused with CodecMismatchError.
    `values="raw"` reads the stored bytes of any store (to repair or copy
    values); in a msgpack store its writes take only bytes that are already
    one msgpack object (InvalidValueError otherwise), so it cannot make a
    key unreadable. A store that has never committed data takes the `values`
    of the first writable opener that names a codec (a handle opened before
    then gets CodecMismatchError for its writes if they do not fit).
    `wrap_object_store` wraps the backend (used to inject faults in tests).

    `split_keys` makes a new store with key-range partitions, one starting at
    each key (and one before them all): each partition commits with a manifest
    of its own, so their commit rates add up (docs/scaling.md). For a store
    that exists they must be boundaries it has (ValidationError otherwise);
    `Store.split` adds one later.

    Opening costs one GET of the manifest, plus, the first time a process
    opens a store for writing, two or three PUTs that prove the endpoint
    honours conditional writes (and one manifest PUT when an empty store
    takes a new `values`).
    """
    if values is not None and values not in VALUE_MODES:
        raise ValidationError(f"values must be one of {VALUE_MODES}, not {values!r}")
    s3 = s3_settings(
        s3_options,
        endpoint_url=endpoint_url,
        region_name=region_name,
        profile=profile,
        aws_access_key_id=aws_access_key_id,
        aws_secret_access_key=aws_secret_access_key,
        aws_session_token=aws_session_token,
    )
    location = parse_url(url, s3)
    store_options = options or StoreOptions()
    keys = None if split_keys is None else encode_keys(split_keys, store_options.max_key_bytes)

    async def open_store() -> Store:
        backend = location.objects if wrap_object_store is None else wrap_object_store(location.objects)
        objects = RetryingObjectStore(backend, store_options.retry)
        try:
            router = await open_router(
                location,
                store_options,
                objects,
                create=create,
                read_only=read_only,
                split_keys=keys,
                # "raw" chooses no codec: a store it creates records bytes, as without values=.
                new_settings={"values": "bytes" if values in (None, "raw") else values},
                adopt_settings={} if values in (None, "raw") else {"values": values},
            )
        except BaseException:
            await objects.close()
            raise
        try:
            recorded = router.first.manifest.settings.get("values")
            return Store(router, value_mode(recorded, values, location.url), s3)
        except BaseException:
            await router.close()
            raise

    return StoreOpener(open_store)
