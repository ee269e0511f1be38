"""The one merging iterator: scans and compaction both read segments through it.

A source is a segment's entries a block at a time (`SegmentStore.blocks`).
`merge` interleaves any number of sources into scan order, a batch at a
time; `visible` then keeps, per key, the newest entry a snapshot may see.
Compaction applies its own retention rule to `merge`'s output instead
(`_compact.Retention`).
"""

from __future__ import annotations

import heapq
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from functools import total_ordering

from ._operands import combine, resolve, stacks
from ._segment import Value, value_size
from ._segment_store import Entry
from ._value_refs import ValueRef

# Reads the value an out-of-line reference names (`_value_store.ValueStore.read`).
ReadValue = Callable[[ValueRef, bytes], Awaitable[bytes]]

# Entries handed out per batch when several sources interleave (a single source
# passes its blocks through). Batches keep the per-entry cost synchronous; the byte
# bound keeps a batch of large values as small as a few blocks (compaction's memory).
_BATCH = 512
_BATCH_VALUE_BYTES = 256 * 1024


async def merge(sources: Sequence[AsyncIterator[list[Entry]]], *, reverse: bool = False) -> AsyncIterator[list[Entry]]:
    """Every entry of `sources`, in batches, in order of key (descending with
    `reverse`), then version descending, then source position (an earlier
    source wins a tie).

    Each source must already be in that order, as segment blocks are. Holds
    one block per source and one batch (at most _BATCH entries, and values of
    about _BATCH_VALUE_BYTES).
    """
    if len(sources) == 1:  # the common case of a compacted store: nothing to interleave
        async for entries in sources[0]:
            yield entries
        return
    cursors = [_Cursor(s) for s in sources]
    heap: list[tuple[tuple[object, int], int]] = []
    for n, cursor in enumerate(cursors):
        if await cursor.fill():
            heapq.heappush(heap, (_order(cursor.peek(), reverse), n))
    batch: list[Entry] = []
    value_bytes = 0
    while heap:
        _, n = heapq.heappop(heap)
        cursor = cursors[n]
        entry = cursor.take()
        batch.append(entry)
        if entry[2] is not None:
            value_bytes += value_size(entry[2])
        if cursor.has_more() or await cursor.fill():
            heapq.heappush(heap, (_order(cursor.peek(), reverse), n))
        if len(batch) >= _BATCH or value_bytes >= _BATCH_VALUE_BYTES:
            yield batch
            batch = []
            value_bytes = 0
    if batch:
        yield batch


async def visible(
    batches: AsyncIterator[list[Entry]],
    version: int,
    codec: str,
    now: float,
    read_value: ReadValue,
    hidden: Callable[[bytes, int], bool] | None = None,
) -> AsyncIterator[tuple[bytes, bytes]]:
    """Live (key, value) pairs as of `version` from merged entries: per key the
    newest entry at or below `version` (`newest`); a tombstone, or a put expired at
    `now` (`_ttl`), hides the key, and so does `hidden(key, entry_version)` (a range
    delete, `_ranges.RangeIndex.hides`). Atomic operands fold onto the key's older
    entries until a put or tombstone (`_operands`), and resolve to an integer in
    `codec`. A value stored out of line is read with `read_value` when its pair is
    handed out."""
    async for states in newest(batches, version, codec, hidden):
        for key, value in states:
            resolved = resolve(value, codec, key, now)
            if resolved is not None:
                yield key, await _read(resolved, key, read_value)


async def newest(
    batches: AsyncIterator[list[Entry]],
    version: int,
    codec: str,
    hidden: Callable[[bytes, int], bool] | None = None,
) -> AsyncIterator[list[tuple[bytes, Value]]]:
    """Per key of merged entries (ascending or descending), its state as of `version`,
    as stored, in batches: its newest entry at or below `version`, with atomic
    operands folded onto the key's older entries until a put or tombstone
    (`_operands.combine`); the value may be a tombstone, an expiring put (expired or
    not), a reference, or operands with nothing older (they apply to an absent key).
    A key whose newest entry `hidden(key, entry_version)` hides (a range delete) is
    left out. A split copies these as they are (`_router`); `visible` resolves them.
    Batches, not pairs: a scan pays this generator's step once per batch."""
    last_key: bytes | None = None
    pending: Value = None  # stacking operands of last_key, waiting for its older entries
    pending_version = 0
    async for entries in batches:
        states: list[tuple[bytes, Value]] = []
        emit = states.append
        for key, entry_version, value in entries:
            if entry_version > version:
                continue  # too new
            if key == last_key:
                if not stacks(pending) or entry_version == pending_version:
                    continue  # an older version of a key already decided (or a duplicate)
                if hidden is not None and hidden(key, entry_version):
                    value = None  # range-deleted: the operands above start from nothing
                pending, pending_version = combine(value, pending, codec), entry_version
                if not stacks(pending):
                    emit((key, pending))
                    pending = None
                continue
            if stacks(pending):
                assert last_key is not None
                emit((last_key, pending))
            last_key, pending, pending_version = key, None, entry_version
            if hidden is not None and hidden(key, entry_version):
                continue  # range-deleted
            if stacks(value):
                pending = value
                continue
            emit((key, value))
        if states:
            yield states
    if stacks(pending):
        assert last_key is not None
        yield [(last_key, pending)]


async def _read(value: bytes | ValueRef, key: bytes, read_value: ReadValue) -> bytes:
    return await read_value(value, key) if isinstance(value, ValueRef) else value


class _Cursor:
    """One source's entries, refilled a block at a time."""

    def __init__(self, blocks: AsyncIterator[list[Entry]]) -> None:
        self._blocks = blocks
        self._buffer: list[Entry] = []
        self._pos = 0

    def has_more(self) -> bool:
        """Whether an entry is buffered (no await needed)."""
        return self._pos < len(self._buffer)

    async def fill(self) -> bool:
        while self._pos >= len(self._buffer):
            try:
                self._buffer = await anext(self._blocks)
            except StopAsyncIteration:
                return False
            self._pos = 0
        return True

    def peek(self) -> Entry:
        return self._buffer[self._pos]

    def take(self) -> Entry:
        entry = self._buffer[self._pos]
        self._pos += 1
        return entry


@total_ordering
class _Descending:
    """Orders bytes in reverse, for reverse scans on a min-heap."""

    __slots__ = ("key",)

    def __init__(self, key: bytes) -> None:
        self.key = key

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Descending) and self.key == other.key

    def __lt__(self, other: _Descending) -> bool:
        return self.key > other.key


def _order(entry: Entry, reverse: bool) -> tuple[object, int]:
    key, version, _ = entry
    return (_Descending(key) if reverse else key, -version)
