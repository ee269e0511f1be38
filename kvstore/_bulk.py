"""Bulk loading without a Python-level step per pair: input taken in batches, checked and
gathered into sorted chunks with built-ins working over whole lists; each chunk's upload
finishes while the next one fills. The chunks then become the parts of one sorted run
(`as_sorted_run`): as they are where their key ranges meet no other chunk's, merged
where they overlap."""

from __future__ import annotations

import asyncio
from bisect import bisect_left
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable, Iterator, Sequence
from dataclasses import replace
from itertools import accumulate, islice
from operator import add, lt
from typing import Any, NamedTuple, TypeVar, cast

from ._codec import BULK_VALUE_LIMIT, ValueMode, encode_key, encode_value
from ._compact import merge_fan_in, merge_footprint, merge_readahead
from ._errors import ValidationError
from ._manifest import SegmentRef
from ._merge import merge
from ._segment_store import Entry, SegmentOutput, SegmentStore

# Pairs taken from the input at a time: enough to amortise the per-batch work, few
# enough that a batch is small beside a chunk.
BATCH_PAIRS = 1024

Pairs = tuple[Sequence[bytes], Sequence[bytes]]  # parallel keys and values
T = TypeVar("T")


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


async def route_batches(
    batches: AsyncIterable[Batch],
    where: Callable[[bytes], str],
    consume: Callable[[str, AsyncIterator[Batch]], Awaitable[T]],
    progress: Callable[[int], None] | None = None,
) -> dict[str, T]:
    """Split a stream of batches by `where(key)` (a partition's id) into one stream per
    destination, each consumed concurrently by `consume(destination, stream)` (started on
    its first pair); their results. Memory: two batches queued per destination. The first
    failure of a consumer ends the whole (the others are cancelled). `progress(n)`: pairs
    routed so far, after each batch."""
    queues: dict[str, asyncio.Queue[Batch | None]] = {}
    consumers: dict[str, asyncio.Future[T]] = {}
    routed = 0

    async def stream(queue: asyncio.Queue[Batch | None]) -> AsyncIterator[Batch]:
        while (batch := await queue.get()) is not None:
            yield batch

    try:
        async for batch in batches:
            for dest, (keys, vals) in _shares(batch, where).items():
                if dest not in queues:
                    queues[dest] = asyncio.Queue(maxsize=2)
                    consumers[dest] = asyncio.ensure_future(consume(dest, stream(queues[dest])))
                share = Batch(keys, vals, sum(map(len, keys)) + sum(map(len, vals)))
                await _put(queues[dest], consumers[dest], share)
            routed += len(batch.keys)
            if progress is not None:
                progress(routed)
        for dest, queue in queues.items():
            await _put(queue, consumers[dest], None)
        results = await asyncio.gather(*consumers.values())
        return dict(zip(consumers, results, strict=True))
    finally:
        for task in consumers.values():
            task.cancel()
        await asyncio.gather(*consumers.values(), return_exceptions=True)


def _shares(batch: Batch, where: Callable[[bytes], str]) -> dict[str, tuple[Sequence[bytes], Sequence[bytes]]]:
    """A batch's pairs by destination. Input in key order (the cheap case of a load) is cut
    into slices by bisection, a few `where` calls per destination (`where` is monotone in
    the key: key ranges); other input takes one call per pair."""
    keys, values = batch.keys, batch.values
    shares: dict[str, tuple[Sequence[bytes], Sequence[bytes]]] = {}
    if _ascending(keys):
        i = 0
        while i < len(keys):
            dest = where(keys[i])
            lo, hi = i + 1, len(keys)  # the slice ends at the first key going elsewhere
            while lo < hi:
                mid = (lo + hi) // 2
                if where(keys[mid]) == dest:
                    lo = mid + 1
                else:
                    hi = mid
            shares[dest] = (keys[i:lo], values[i:lo])
            i = lo
        return shares
    lists: dict[str, tuple[list[bytes], list[bytes]]] = {}
    for key, value in zip(keys, values, strict=True):
        ks, vs = lists.setdefault(where(key), ([], []))
        ks.append(key)
        vs.append(value)
    return dict(lists)


async def _put(queue: asyncio.Queue[Batch | None], consumer: asyncio.Future[Any], item: Batch | None) -> None:
    """Queue `item` for `consumer`, or raise its failure if it ended (it would never take it)."""
    putting = asyncio.ensure_future(queue.put(item))
    await asyncio.wait([putting, consumer], return_when=asyncio.FIRST_COMPLETED)
    if not putting.done():
        putting.cancel()
        consumer.result()  # raises its error
        raise AssertionError("a consumer of routed batches ended before its input")


async def as_sorted_run(
    chunks: Sequence[SegmentRef], segments: SegmentStore, target_bytes: int, memory_bytes: int
) -> list[SegmentRef]:
    """The segments of `chunks` (in the order they were written; a later one wins a
    repeated key) turned into the parts of one sorted run, in key order.

    A chunk whose key range meets no other chunk's is a part as it is: input that came
    in key order (a listing, a table export) costs nothing more. Each group of chunks
    whose ranges overlap is merged into new segments of about `target_bytes`, in one
    pass when `memory_bytes` holds a block and its read-ahead of every chunk of the group
    (`_compact.merge_fan_in`: about 470 chunks, 30 GB of load, with the default options),
    in passes of that many otherwise. The merged chunks are never committed (GC collects
    them). Every part's entries still take the version the load commits at.
    """
    parts: list[SegmentRef] = []
    for group in _overlapping(chunks):
        if len(group) == 1:
            parts.append(group[0])
        else:
            parts += await _merged([[chunk] for chunk in group], segments, target_bytes, memory_bytes, group)
    return parts


def _overlapping(chunks: Sequence[SegmentRef]) -> list[list[SegmentRef]]:
    """The chunks grouped so that no two groups' key ranges meet, groups in key order,
    each group's chunks in the order they were written."""
    groups: list[list[int]] = []
    reach = b""  # the largest max_key of the current group
    for n in sorted(range(len(chunks)), key=lambda n: chunks[n].min_key):
        if groups and chunks[n].min_key <= reach:
            groups[-1].append(n)
            reach = max(reach, chunks[n].max_key)
        else:
            groups.append([n])
            reach = chunks[n].max_key
    return [[chunks[n] for n in sorted(group)] for group in groups]


async def _merged(
    runs: list[list[SegmentRef]],
    segments: SegmentStore,
    target_bytes: int,
    memory_bytes: int,
    chunks: Sequence[SegmentRef],
) -> list[SegmentRef]:
    """Merge sorted runs (each a list of key-ordered segments; a later run wins a
    repeated key) into one: segments of about `target_bytes`, their entries left without
    versions, for the commit to set. Its memory is counted from the load's `chunks`
    (`merge_footprint`: what each input may hold), for every pass."""
    footprint = merge_footprint(chunks)
    fan_in = merge_fan_in(target_bytes, memory_bytes, **footprint)
    while len(runs) > fan_in:  # a pass merges consecutive runs, keeping their order
        groups = [runs[i : i + fan_in] for i in range(0, len(runs), fan_in)]
        runs = [
            group[0] if len(group) == 1 else await _merged(group, segments, target_bytes, memory_bytes, chunks)
            for group in groups  # a last group of one run is already merged
        ]
    readahead = merge_readahead(len(runs), target_bytes, memory_bytes, **footprint)
    # Positions stand in for versions while merging, so the later run's entry comes first.
    streams = [_run_blocks(run, position + 1, segments, readahead) for position, run in reversed(list(enumerate(runs)))]
    written: list[SegmentRef] = []
    output: SegmentOutput | None = None
    last: bytes | None = None
    try:
        async for batch in merge(streams):
            # The first entry of each key is the one kept. A segment ends at a batch boundary:
            # past `target_bytes` by at most a batch (`_merge._BATCH` entries, or about
            # `_merge._BATCH_VALUE_BYTES` of values).
            keys = [entry[0] for entry in batch]
            firsts = [i for i, (key, before) in enumerate(zip(keys, [last, *keys], strict=False)) if key != before]
            last = keys[-1]
            if not firsts:  # older entries of the key before: no segment to open for them
                continue
            if output is None:
                output = segments.new_output(uniform_version=True)
            values = cast("list[bytes]", [batch[i][2] for i in firsts])  # a load's values are plain bytes
            await output.add_pairs([keys[i] for i in firsts], values)
            if output.bytes_so_far >= target_bytes:
                written.append(await output.finish(level=0, versioned=False))
                output = None
        if output is not None:
            written.append(await output.finish(level=0, versioned=False))
            output = None
    except BaseException:
        if output is not None:
            await output.abort()
        raise
    return written


async def _run_blocks(
    run: list[SegmentRef], version: int, segments: SegmentStore, readahead: int
) -> AsyncIterator[list[Entry]]:
    """The entries of a run's segments in key order, a block at a time, all at `version`."""
    for ref in run:
        async for entries in segments.blocks(
            replace(ref, commit_version=version), None, None, False, fill_cache=False, readahead=readahead
        ):
            yield entries


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
