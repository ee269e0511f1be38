"""Transactions: snapshot reads, buffered writes, and the read set that makes them serializable."""

from __future__ import annotations

import logging
import random
import time
import warnings
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence
from types import TracebackType
from typing import Any

from . import _ttl as ttl_module
from ._codec import ValueMode, decode_value, encode_key, encode_keys, encode_value, key_range
from ._commit import CommitRequest
from ._engine import Engine
from ._errors import (
    ConflictError,
    PartitionMovedError,
    ReadOnlyError,
    TransactionStateError,
    TransactionTooLargeError,
    ValidationError,
)
from ._nesting import Scope, enter, leave, note_commit, retryable
from ._operands import ADD, MAX, MIN, Operands, checked_operand, codec_of, combine, resolve, stacks
from ._partition_map import Partition
from ._ranges import KeyRange, in_ranges, normalized
from ._router import MAX_REDIRECTS, Router
from ._segment import Value, value_size
from ._snapshot import SnapshotView
from ._tasks import gather_all
from ._two_phase import commit_across
from ._value_refs import REF_BYTES, ValueRef

_OPEN, _COMMITTING, _COMMITTED, _DISCARDED = "open", "committing", "committed", "discarded"
_log = logging.getLogger("kvstore")
# Ranges one transaction may delete (after joining those that overlap). Each is a row
# of the manifest until compaction drops it, and the manifest is uploaded by every
# commit: deleting many scattered ranges is a job for several transactions.
MAX_RANGE_DELETES = 1000


class Transaction:
    """A serializable transaction: reads see one snapshot, writes are buffered.

    Use it as ``async with db.transaction() as tx:`` — it commits when the
    block ends normally and is discarded if the block raises. Writes are plain
    (not awaited) calls; nothing reaches the object store before `commit`.
    A read-only transaction never writes to the object store.

    While the ``async with`` block runs, starting another transaction on the
    same store in the same task raises NestedTransactionError: use this `tx`.
    A transaction garbage-collected with writes neither committed nor
    discarded logs an error on the ``kvstore`` logger naming them (they are
    dropped), and emits a ResourceWarning.

    Cost: the snapshot is taken on first use (one conditional GET of the
    manifest unless the store allows staleness); a commit with writes is one
    manifest PUT carrying its segment inline (up to
    `StoreOptions.inline_segment_bytes`, 16 KiB encoded), or a segment PUT
    plus a manifest PUT for a larger one, shared with concurrent transactions.
    """

    def __init__(self, router: Router, values: ValueMode, meta: dict[str, Any] | None = None) -> None:
        self._router = router
        self._engine = engine = router.first
        self._url = engine.url
        self._store_id = router.store_id
        self._scope: Scope | None = None
        self._read_only = engine.read_only
        self._options = engine.options
        self._values = values
        self._meta = meta
        self.id: bytes = engine.new_txn_id()
        # Per partition read (by id): its view (taken on first use), engine and read set.
        self._views: dict[str, SnapshotView] = {}
        self._engines: dict[str, Engine] = {}
        self._read_keys: dict[str, set[bytes]] = {}
        self._read_ranges: dict[str, list[tuple[bytes, bytes | None]]] = {}
        self._started = time.monotonic()
        self._state = _OPEN
        self._writes: dict[bytes, Value] = {}
        self._write_bytes = 0
        self._range_deletes: list[KeyRange] = []  # joined, sorted; the writes above come after them
        self.committed_version: int | None = None

    @property
    def read_version(self) -> int | None:
        """The store version this transaction reads, once it has read anything (on a
        partitioned store: the version of the first partition it read; versions are
        per partition)."""
        return next((v.version for v in self._views.values()), None)

    async def get(self, key: str | bytes, default: Any = None) -> Any:
        """The value of `key` as of the snapshot (or as this transaction wrote it)."""
        self._check_open()
        k = encode_key(key, self._options.max_key_bytes)
        written = k in self._writes and not stacks(self._writes[k])
        if written or (self._range_deletes and in_ranges(k, self._range_deletes)):
            raw = self._own(k, None)  # decided here: nothing stored decides it, so it is no read
        else:
            part, engine = self._router.engine_for(k)
            view = await self._snapshot(part, engine)
            self._read_keys[part.pid].add(k)
            raw = self._own(k, await view.get(k))
        return default if raw is None else decode_value(raw, self._values, k, self._url)

    async def get_many(self, keys: Iterable[str | bytes], default: Any = None) -> list[Any]:
        """The values of `keys` as of the snapshot (or as this transaction wrote them), in
        order; `default` for each absent one. Like `get` of each: the keys read join the
        read set, so a commit by someone else to any of them is a conflict. Keys not
        written here are read together (`Snapshot.get_many`)."""
        self._check_open()
        ks = encode_keys(keys, self._options.max_key_bytes)
        own = self._range_deletes
        unwritten = [
            k for k in ks if (k not in self._writes or stacks(self._writes[k])) and not (own and in_ranges(k, own))
        ]
        read: dict[bytes, bytes | None] = {}
        groups: dict[str, tuple[Partition, Engine, list[bytes]]] = {}
        for k in unwritten:
            part, engine = self._router.engine_for(k)
            groups.setdefault(part.pid, (part, engine, []))[2].append(k)

        async def read_group(part: Partition, engine: Engine, group: list[bytes]) -> None:
            view = await self._snapshot(part, engine, group)
            self._read_keys[part.pid].update(group)
            read.update(zip(group, await view.get_many(group), strict=True))

        # Partitions in parallel: each a conditional GET of its manifest, then its reads.
        await gather_all(read_group(*g) for g in groups.values())
        values, url = self._values, self._url
        raws = [self._own(k, read.get(k)) for k in ks]
        return [default if raw is None else decode_value(raw, values, k, url) for k, raw in zip(ks, raws, strict=True)]

    def put(self, key: str | bytes, value: Any, *, ttl: float | None = None) -> None:
        """Buffer a write of `value` to `key`.

        With `ttl` (seconds, above 0) the value expires that long after this call
        (this process's clock): reads then find the key absent, as after a delete,
        judged by the reader's clock when it reads, at every version, and compaction
        removes it. Expiry is not a write: it commits nothing, never conflicts and
        shows in no `watch`.
        """
        self._check_open()
        k = encode_key(key, self._options.max_key_bytes)
        data = encode_value(value, self._values, self._options.max_value_bytes)
        if ttl is not None and len(data) > self._options.large_value_bytes:
            raise ValidationError(
                f"a put with ttl keeps its value in the commit's segment, so it may be at most "
                f"StoreOptions.large_value_bytes ({self._options.large_value_bytes}), not {len(data)} bytes; "
                "put a larger value without ttl (and delete it when it is due), or split it across keys"
            )
        self._buffer(k, data if ttl is None else ttl_module.expiring(data, ttl_module.checked_ttl(ttl)))

    def delete(self, key: str | bytes) -> None:
        """Buffer a deletion of `key` (deleting a missing key is not an error)."""
        self._check_open()
        self._buffer(encode_key(key, self._options.max_key_bytes), None)

    def delete_range(self, start: str | bytes, end: str | bytes | None) -> None:
        """Buffer a deletion of every key in [start, end) (`end` None: every key from `start` on).

        However many keys it deletes, the commit records only the range (a range
        tombstone in the manifest: a commit of a few hundred bytes, one request). A
        later `put` in this transaction of a key in the range wins; earlier buffered
        writes there are dropped. It is a write of every key in the range: a
        transaction that read one of them, or scanned into the range, and commits
        after it conflicts. Raises ValidationError if `end` is not after `start`.
        """
        self._check_open()
        limit = self._options.max_key_bytes
        lo = b"" if start in (b"", "") else encode_key(start, limit)  # "": from the first key
        self._delete_range(lo, None if end is None else encode_key(end, limit))

    def delete_prefix(self, prefix: str | bytes) -> None:
        """Buffer a deletion of every key starting with `prefix` (`delete_range` of the
        prefix's keys; the empty prefix deletes every key)."""
        self._check_open()
        lo, hi = key_range(self._options.max_key_bytes, prefix, None, None)
        self._delete_range(lo or b"", hi)

    def add(self, key: str | bytes, n: int) -> None:
        """Buffer an atomic add of `n` to the signed 64-bit integer at `key`.

        A blind write: nothing is read, so concurrent adds to a key never conflict.
        A missing (or deleted) key counts as 0; a sum past the 64-bit range wraps
        around (two's complement, as FoundationDB's does). The value reads as an
        int in a msgpack store and as 8 bytes little-endian in a bytes store; a read
        of a key whose value is not such an integer raises AtomicOperandError.
        A put of the key replaces earlier adds; later adds apply to the put.
        Reading the key in this transaction afterwards shows the sum (and makes it
        a read, which can conflict).
        """
        self._operate(key, ADD, n)

    def max(self, key: str | bytes, n: int) -> None:
        """Buffer an atomic max: the integer at `key` becomes the larger of it and `n`
        (signed); a missing key becomes `n`. Never conflicts; see `add`."""
        self._operate(key, MAX, n)

    def min(self, key: str | bytes, n: int) -> None:
        """Buffer an atomic min: the integer at `key` becomes the smaller of it and `n`
        (signed); a missing key becomes `n`. Never conflicts; see `add`."""
        self._operate(key, MIN, n)

    def _operate(self, key: str | bytes, kind: int, n: int) -> None:
        self._check_open()
        k = encode_key(key, self._options.max_key_bytes)
        operand = Operands(((kind, checked_operand(kind, n)),))
        self._buffer(k, combine(self._writes[k], operand, self._codec) if k in self._writes else operand)

    @property
    def _codec(self) -> str:
        """The codec atomic operands resolve in: the store's recorded one."""
        return codec_of(self._engine.manifest.settings.get("values"))

    def _own(self, key: bytes, stored: bytes | None) -> bytes | None:
        """What this transaction reads of `key`, whose stored value is `stored`: nothing
        if this transaction deleted a range holding it, then its own write over that, if
        any (operands apply to it)."""
        if self._range_deletes and in_ranges(key, self._range_deletes):
            stored = None
        if key not in self._writes:
            return stored
        value = resolve(combine(stored, self._writes[key], self._codec), self._codec, key, ttl_module.clock())
        assert not isinstance(value, ValueRef), "a transaction's writes hold their bytes until it commits"
        return value

    async def scan(
        self,
        prefix: str | bytes | None = None,
        *,
        start: str | bytes | None = None,
        end: str | bytes | None = None,
        limit: int | None = None,
        reverse: bool = False,
    ) -> AsyncIterator[tuple[bytes, Any]]:
        """(key, value) pairs in key order (descending if `reverse`), including own writes.

        Selects keys starting with `prefix` and in [start, end). The range
        actually read (up to where iteration stopped) joins the read set, so a
        commit by someone else inside it — even of a new key — is a conflict.
        """
        self._check_open()
        if limit is not None and limit < 0:
            raise ValidationError(f"limit must be >= 0, not {limit}")
        lo, hi = key_range(self._options.max_key_bytes, prefix, start, end)
        if limit == 0:
            return
        parts = self._router.route(lo, hi)
        if reverse:
            parts.reverse()
        count = 0
        # Partitions hold disjoint ranges in key order: one after the other is key order.
        for part, engine in parts:
            plo, phi = part.clip(lo, hi)
            view = await self._snapshot(part, engine)
            own = sorted(
                (k, v) for k, v in self._writes.items() if (plo is None or k >= plo) and (phi is None or k < phi)
            )
            if reverse:
                own.reverse()
            stored = view.scan(plo, phi, reverse=reverse)
            if self._range_deletes:
                stored = _outside(stored, list(self._range_deletes))
            # The read set grows before each pair is handed out, not when the
            # iteration ends: an abandoned async generator is finalised late.
            ranges = self._read_ranges[part.pid]
            slot = len(ranges)
            ranges.append((plo or b"", plo or b""))
            async for key, raw in _overlay(stored, own, reverse, self._own):
                ranges[slot] = (key, phi) if reverse else (plo or b"", key + b"\x00")
                if raw is None:
                    continue
                count += 1
                yield key, decode_value(raw, self._values, key, self._url)
                if limit is not None and count >= limit:
                    return
            ranges[slot] = (plo or b"", phi)

    async def commit(self) -> int | None:
        """Commit; returns the version committed at, or None for a read-only transaction.

        Raises ConflictError if another commit changed what this transaction read.
        On a partitioned store versions are per partition: the version returned is
        that of the partition written (of the highest one, for a transaction that
        writes several), and a read-only transaction that read several partitions
        checks, before returning, that none of them changed what it read (one
        conditional GET per partition, in parallel).
        """
        self._check_open()
        if not self._writes and not self._range_deletes:
            if len(self._views) > 1:
                self._state = _COMMITTING
                try:
                    await gather_all(
                        self._router.validate(self._engines[p], v, self._read_keys[p], self._read_ranges[p])
                        for p, v in self._views.items()
                    )
                finally:
                    self._state = _DISCARDED
            self._state = _COMMITTED
            return None
        self._state = _COMMITTING
        try:
            self.committed_version = await self._commit_writes()
        finally:
            self._state = _COMMITTED if self.committed_version is not None else _DISCARDED
        note_commit(self._store_id, self)
        return self.committed_version

    async def _commit_writes(self) -> int:
        for _ in range(MAX_REDIRECTS):
            groups: dict[str, tuple[Partition, Engine, dict[bytes, Value], list[KeyRange]]] = {}
            for key, value in self._writes.items():
                part, engine = self._router.engine_for(key)
                groups.setdefault(part.pid, (part, engine, {}, []))[2][key] = value
            for lo, hi in self._range_deletes:  # each range cut at the partitions' boundaries
                for part, engine in self._router.route(lo, hi):
                    start, end = part.clip(lo, hi)
                    assert start is not None, "a range delete has a start"
                    groups.setdefault(part.pid, (part, engine, {}, []))[3].append((start, end))
            touched = {*groups, *self._engines}
            if len(touched) > 1:
                try:
                    return await self._commit_across(groups)
                except PartitionMovedError:
                    # Follow the splits whatever happens next, so that this commit (blind
                    # writes) or a retry (`transact`) routes around the retired partitions.
                    await self._router.follow_sealed()
                    if self._views:
                        raise  # its reads were of the sealed partition: only a retry can check them
                    # Its decision is "aborted" for good: the next attempt is a new transaction.
                    self.id = self._router.engine_for(next(iter(self._writes), b""))[1].new_txn_id()
                    continue
            ((pid, (_, engine, writes, ranges)),) = groups.items()
            try:
                return await engine.commit(self._request(pid, writes, ranges))
            except PartitionMovedError:
                if self._views:
                    raise  # its reads were of the sealed partition: only a retry can check them
                await self._router.redirect(pid)  # blind writes: follow the split and route again
        raise PartitionMovedError(f"the partitions of {self._url} kept splitting under this commit; retry it")

    async def _commit_across(
        self, groups: dict[str, tuple[Partition, Engine, dict[bytes, Value], list[KeyRange]]]
    ) -> int:
        """Commit writes (and reads) spanning partitions: all or none (`_two_phase`).

        An intent holds written keys only, so a range delete here becomes a read of the
        range (at this transaction's view of the partition) and a delete of every key the
        range holds: serializable as the range delete is (a commit into the range after
        that view conflicts), at the cost of a scan of the range."""
        for part, engine, writes, ranges in groups.values():
            if ranges:
                await self._delete_keys_in(part, engine, writes, ranges)
        pids = sorted({*groups, *self._engines})
        parts = [
            (self._engines.get(p) or groups[p][1], self._request(p, groups[p][2] if p in groups else {}, []))
            for p in pids
        ]
        versions = await commit_across(parts, self._router.decisions())
        # A partition only read prepared a read-only intent: its version is not a commit's.
        return max(v for p, v in zip(pids, versions, strict=True) if p in groups)

    async def _delete_keys_in(
        self, part: Partition, engine: Engine, writes: dict[bytes, Value], ranges: list[KeyRange]
    ) -> None:
        """Turn the range deletes `ranges` of partition `part` into `writes` of their keys:
        a tombstone for each key its view holds there, and the transaction's own atomic
        operands there resolved on nothing (the range delete came before them)."""
        view = await self._snapshot(part, engine)
        for start, end in ranges:
            self._read_ranges[part.pid].append((start, end))
            async for key, _ in view.scan(start, end):
                writes.setdefault(key, None)
        for key, value in writes.items():
            if stacks(value) and in_ranges(key, ranges):
                writes[key] = combine(None, value, self._codec)

    def _request(self, pid: str, writes: dict[bytes, Value], ranges: list[KeyRange]) -> CommitRequest:
        view = self._views.get(pid)
        return CommitRequest(
            txn_id=self.id,
            read_version=None if view is None else view.version,
            started=self._started,
            read_keys=self._read_keys.get(pid, set()),
            read_ranges=self._read_ranges.get(pid, []),
            writes=writes,
            values=self._values,
            meta=self._meta,
            range_deletes=ranges,
            shown=frozenset() if view is None else frozenset(n for n, visible in view.shown.items() if visible),
        )

    def discard(self) -> None:
        """Drop the buffered writes. The transaction cannot be used afterwards."""
        if self._state == _OPEN:
            self._state = _DISCARDED

    async def __aenter__(self) -> Transaction:
        self._check_open()
        self._scope = enter(self._store_id, self)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._scope is not None:
            leave(self._scope)
        if exc_type is None and self._state == _OPEN:
            await self.commit()
        else:
            self.discard()

    def __del__(self) -> None:
        writes = getattr(self, "_writes", None)
        if getattr(self, "_range_deletes", None) and not writes:
            writes = {start: None for start, _ in self._range_deletes}  # named by where they start
        if getattr(self, "_state", None) != _OPEN or not writes or self._engine.forked:
            return  # in a forked child this is a copy: the parent's transaction is the one that counts
        keys = ", ".join(repr(k) for k in list(writes)[:3]) + (", ..." if len(writes) > 3 else "")
        message = (
            f"a kvstore transaction on {self._url} with {len(writes)} buffered write(s) ({keys}) was "
            "garbage-collected without commit() or discard(): the writes were dropped; use "
            "`async with db.transaction() as tx:` (or `with` in the blocking API), which commits"
        )
        # Lost writes must be seen: a ResourceWarning is hidden by default, a logged error is
        # not (as asyncio logs a pending task that is destroyed).
        _log.error(message)
        warnings.warn(message, ResourceWarning, stacklevel=1)

    async def _snapshot(self, part: Partition, engine: Engine, keys: Sequence[bytes] = ()) -> SnapshotView:
        """The transaction's view of partition `part`, taken on first use (with the index
        reads of `keys` under way meanwhile, `Engine.latest_view_for`)."""
        view = self._views.get(part.pid)
        if view is None:
            view = await self._router.latest_view(part, engine, keys)
            if part.pid in self._views:  # taken meanwhile by a concurrent read of this transaction
                return self._views[part.pid]
            if not self._views:
                self._started = time.monotonic()
            self._views[part.pid] = view
            self._engines[part.pid] = engine
            self._read_keys[part.pid] = set()
            self._read_ranges[part.pid] = []
        return view

    def _delete_range(self, start: bytes, end: bytes | None) -> None:
        if self._read_only:
            raise ReadOnlyError("this store was opened with read_only=True; open it without to write")
        if end is not None and end <= start:
            raise ValidationError(
                f"delete_range needs end after start (got start={start!r}, end={end!r}); "
                "pass end=None to delete every key from start on"
            )
        joined = normalized([*self._range_deletes, (start, end)])
        if len(joined) > MAX_RANGE_DELETES:
            raise TransactionTooLargeError(
                f"transaction deletes more than {MAX_RANGE_DELETES} separate key ranges; "
                "split it into several transactions (each range is a row of the manifest until compaction)"
            )
        for key in [k for k in self._writes if start <= k and (end is None or k < end)]:
            self._write_bytes -= len(key) + self._counted(self._writes.pop(key))
        self._range_deletes = joined

    def _buffer(self, key: bytes, value: Value) -> None:
        if self._read_only:
            raise ReadOnlyError("this store was opened with read_only=True; open it without to write")
        old_size = len(key) + self._counted(self._writes[key]) if key in self._writes else 0
        new_size = len(key) + self._counted(value)
        if not old_size and len(self._writes) >= self._options.max_transaction_keys:
            raise TransactionTooLargeError(
                f"transaction writes more than {self._options.max_transaction_keys} keys "
                "(StoreOptions.max_transaction_keys); split it into several transactions"
            )
        if self._write_bytes - old_size + new_size > self._options.max_transaction_bytes:
            raise TransactionTooLargeError(
                f"transaction writes more than {self._options.max_transaction_bytes} bytes "
                "(StoreOptions.max_transaction_bytes); split it into several transactions"
            )
        self._writes[key] = value
        self._write_bytes += new_size - old_size

    def _counted(self, value: Value) -> int:
        """Bytes a value counts towards max_transaction_bytes, which bounds the commit's
        segment: a value stored out of line puts only a reference there (an expiring or
        atomic write keeps its value in the segment)."""
        if isinstance(value, bytes) and len(value) > self._options.large_value_bytes:
            return REF_BYTES
        return value_size(value)

    def _check_open(self) -> None:
        self._engine.check_same_process()
        if self._state != _OPEN:
            raise TransactionStateError(f"this transaction is {self._state}; start a new one with db.transaction()")


async def _overlay(
    stored: AsyncIterator[tuple[bytes, bytes]],
    own: list[tuple[bytes, Value]],
    reverse: bool,
    over: Callable[[bytes, bytes | None], bytes | None],
) -> AsyncIterator[tuple[bytes, bytes | None]]:
    """Merge stored pairs with the transaction's own writes (None = deleted), which
    `over(key, stored value or None)` applies."""
    i = 0

    def before(a: bytes, b: bytes) -> bool:
        return a > b if reverse else a < b

    async for key, value in stored:
        while i < len(own) and before(own[i][0], key):
            yield own[i][0], over(own[i][0], None)
            i += 1
        if i < len(own) and own[i][0] == key:
            yield key, over(key, value)
            i += 1
        else:
            yield key, value
    while i < len(own):
        yield own[i][0], over(own[i][0], None)
        i += 1


async def _outside(
    stored: AsyncIterator[tuple[bytes, bytes]], ranges: list[KeyRange]
) -> AsyncIterator[tuple[bytes, bytes]]:
    """The stored pairs whose keys the transaction has not range-deleted."""
    async for key, value in stored:
        if not in_ranges(key, ranges):
            yield key, value


class TransactAttempts:
    """The retry schedule of `transact`, shared by the async and blocking faces.

    Iterating gives up to `attempts` attempts. After a conflict,
    `Attempt.pause_after` says how long to back off (full jitter, doubling
    from 2 ms, capped at 0.5 s) or raises when no retry is left or none
    could succeed.
    """

    def __init__(self, attempts: int, url: str) -> None:
        self._attempts = attempts
        self._url = url
        self._rng = random.Random()

    def __iter__(self) -> Iterator[Attempt]:
        for n in range(self._attempts):
            yield Attempt(n, n + 1 == self._attempts, self._url, self._rng)


class Attempt:
    """One attempt of a `transact` call."""

    def __init__(self, number: int, last: bool, url: str, rng: random.Random) -> None:
        self._number = number
        self._last = last
        self._url = url
        self._rng = rng

    def pause_after(self, exc: ConflictError, scope: Scope) -> float:
        """Seconds to wait before the next attempt; raises `exc` (or a non-retryable
        ConflictError) when this was the last attempt or no retry can cure it."""
        if self._last or not retryable(exc, scope, self._url):
            raise exc
        return self._rng.uniform(0, min(0.5, 0.002 * 2**self._number))
