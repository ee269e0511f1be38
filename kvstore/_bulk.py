"""Bulk loading without a Python-level step per pair: input taken in batches, checked and
gathered into sorted chunks with built-ins working over whole lists; each chunk's upload
finishes while the next one fills."""

from __future__ import annotations

import asyncio
from bisect import bisect_left
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Iterator, Sequence
from itertools import accumulate, islice
from operator import add, lt
from typing import Any, NamedTuple

from ._codec import BULK_VALUE_LIMIT, ValueMode, encode_key, encode_value
from ._errors import ValidationError
from ._manifest import SegmentRef
from ._segment_store import SegmentStore

# Pairs taken from the input at a time: enough to amortise the per-batch work, few
# enough that a batch is small beside a chunk.
BATCH_PAIRS = 1024

Pairs = tuple[Sequence[bytes], Sequence[bytes]]  # parallel keys and values


class Batch(NamedTuple):
    keys: Sequence[bytes]
    values: Sequence[bytes]
    size: int  # bytes of keys and values


async def encoded_batches(
    items: Iterable[tuple[Any, Any]] | AsyncIterable[tuple[Any, Any]],
    mode: ValueMode,
    max_key_bytes: int,
    max_value_bytes: int,
) -> AsyncIterator[Batch]:
    """The input as batches of checked, encoded keys and values (InvalidKeyError, InvalidValueError)."""
    async for batch in _batches(items):
        try:
            raw_keys, raw_values = zip(*batch, strict=True)
        except (TypeError, ValueError):
            bad = next((item for item in batch if not (isinstance(item, (tuple, list)) and len(item) == 2)), None)
            raise ValidationError(f"items must be (key, value) pairs, not {type(bad).__name__} {bad!r:.80}") from None
        keys, key_bytes = _encoded_keys(raw_keys, max_key_bytes)
        values, value_bytes = _encoded_values(raw_values, mode, max_value_bytes)
        yield Batch(keys, values, key_bytes + value_bytes)


class ChunkBuffer:
    """Pairs gathered until they reach about `chunk_bytes` (keys and values; a repeated key
    counts again), handed out sorted by key. A repeated key keeps its last value.

    While the input arrives in ascending key order (as it often does) the pairs are kept
    in two lists, with nothing to sort or look up; from the first batch out of order, in
    a dict.
    """

    def __init__(self, chunk_bytes: int) -> None:
        self._chunk_bytes = chunk_bytes
        self._keys: list[bytes] = []
        self._values: list[bytes] = []
        self._pairs: dict[bytes, bytes] | None = None  # once the input was out of order
        self._bytes = 0
        self.taken = 0  # pairs taken in so far

    def __len__(self) -> int:
        return len(self._keys) if self._pairs is None else len(self._pairs)

    def add(self, batch: Batch) -> Iterator[Pairs]:
        """Take in a batch, yielding each chunk it fills before taking in the rest."""
        keys, values = batch.keys, batch.values
        if self._bytes + batch.size < self._chunk_bytes:  # the common case: no chunk fills
            self._take_in(keys, values)
            self._bytes += batch.size
            self.taken += len(keys)
            return
        ends = list(accumulate(map(add, map(len, keys), map(len, values)), initial=0))
        start = 0
        while start < len(keys):
            # the chunk is full with the pair that takes it to chunk_bytes
            end = min(len(keys), bisect_left(ends, self._chunk_bytes - self._bytes + ends[start], start + 1))
            self._take_in(keys[start:end], values[start:end])
            self._bytes += ends[end] - ends[start]
            self.taken += end - start
            start = end
            if self._bytes >= self._chunk_bytes:
                yield self.take()

    def take(self) -> Pairs:
        """The gathered pairs, sorted by key; the buffer starts again empty."""
        keys, values, pairs = self._keys, self._values, self._pairs
        self._keys, self._values, self._pairs, self._bytes = [], [], None, 0
        if pairs is None:
            return keys, values
        keys = sorted(pairs)
        return keys, list(map(pairs.__getitem__, keys))

    def _take_in(self, keys: Sequence[bytes], values: Sequence[bytes]) -> None:
        if self._pairs is None and _ascending(keys) and not (self._keys and keys[0] <= self._keys[-1]):
            self._keys.extend(keys)
            self._values.extend(values)
            return
        if self._pairs is None:
            self._pairs = dict(zip(self._keys, self._values, strict=True))
            self._keys, self._values = [], []
        self._pairs.update(zip(keys, values, strict=True))


class ChunkUploads:
    """The uploads of chunks' segments, finishing in the background: each while the next
    chunk fills and is encoded. `progress` hears of each chunk once its upload is done."""

    def __init__(self, progress: Callable[[int], None] | None) -> None:
        self._progress = progress
        self._pending: deque[tuple[asyncio.Task[SegmentRef], int]] = deque()  # and pairs taken by then
        self.refs: list[SegmentRef] = []  # of the finished uploads, in chunk order

    async def add(self, upload: asyncio.Task[SegmentRef], taken: int) -> None:
        """Queue a chunk's upload, first finishing the one before it."""
        self._pending.append((upload, taken))
        while len(self._pending) > 1:
            await self._finish_oldest()

    async def let_run(self) -> None:
        """Give an upload in flight a turn of the event loop (reading input never awaits)."""
        if self._pending:
            await asyncio.sleep(0)

    async def finish(self) -> list[SegmentRef]:
        while self._pending:
            await self._finish_oldest()
        return self.refs

    async def cancel(self) -> None:
        """Abandon the uploads in flight (each aborts its multipart upload)."""
        tasks = [task for task, _ in self._pending]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _finish_oldest(self) -> None:
        upload, taken = self._pending.popleft()
        self.refs.append(await upload)
        if self._progress is not None:
            self._progress(taken)


async def write_chunks(
    batches: AsyncIterable[Batch],
    segments: SegmentStore,
    *,
    chunk_bytes: int,
    progress: Callable[[int], None] | None = None,
) -> list[SegmentRef]:
    """Write encoded batches as segments of about `chunk_bytes` each (entries taking the
    version they commit at); their records in chunk order. Nothing is committed: a
    bulk load and a distributed write's parts both commit what this returns.
    On any failure the uploads in flight are abandoned."""
    chunk = ChunkBuffer(chunk_bytes)
    uploads = ChunkUploads(progress)

    async def write(keys: Sequence[bytes], values: Sequence[bytes]) -> None:
        await uploads.add(await segments.write_sorted(keys, values), chunk.taken)

    try:
        async for batch in batches:
            for full in chunk.add(batch):
                await write(*full)
            await uploads.let_run()
        if len(chunk):
            await write(*chunk.take())
        return await uploads.finish()
    except BaseException:
        await uploads.cancel()
        raise


def _ascending(keys: Sequence[bytes]) -> bool:
    """Whether every key is greater than the one before it (so none repeats)."""
    return all(map(lt, keys, islice(keys, 1, None)))


async def _batches(items: Iterable[Any] | AsyncIterable[Any]) -> AsyncIterator[list[Any]]:
    if isinstance(items, AsyncIterable):
        batch: list[Any] = []
        async for item in items:
            batch.append(item)
            if len(batch) == BATCH_PAIRS:
                yield batch
                batch = []
        if batch:
            yield batch
    else:
        iterator = iter(items)
        while batch := list(islice(iterator, BATCH_PAIRS)):
            yield batch


# isinstance(x, bytes) as a function that map() can call without a Python frame
_is_bytes = bytes.__instancecheck__


def _encoded_keys(keys: Sequence[Any], max_bytes: int) -> tuple[Sequence[bytes], int]:
    """The keys as bytes, and their total size."""
    if all(map(_is_bytes, keys)):  # the common case, checked without a call per key
        sizes = list(map(len, keys))
        if min(sizes) > 0 and max(sizes) <= max_bytes:
            return keys, sum(sizes)
    encoded = [encode_key(key, max_bytes) for key in keys]
    return encoded, sum(map(len, encoded))


def _encoded_values(values: Sequence[Any], mode: ValueMode, max_bytes: int) -> tuple[Sequence[bytes], int]:
    """The values as stored bytes, and their total size."""
    if mode == "bytes" and all(map(_is_bytes, values)):
        sizes = list(map(len, values))
        if max(sizes) <= max_bytes:
            return values, sum(sizes)
    encoded = [encode_value(value, mode, max_bytes, BULK_VALUE_LIMIT) for value in values]
    return encoded, sum(map(len, encoded))
