"""Reading and writing segment objects through the object store and the cache.

A cold point read of a large segment is at most three GETs: its tail (footer, top
index and usually the last index partition), the one partition whose key range holds
the key (whose filter may rule out the block) and the block. The memory cache holds
top indexes under ("index", id), partitions under ("part", id, p), blocks under
("block", id, n) with n counted across the segment, and segment bytes already fetched
that later reads may slice under ("raw", id).

Scans and compactions read a segment's blocks in windows of consecutive blocks, one
ranged GET each (`_read_ahead`), instead of a GET per ~64 KiB block: a GET costs a
first-byte latency whatever its size (tens of ms on S3), so block-sized GETs one
after another move a few MB/s per segment.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from bisect import bisect_left
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Hashable, Sequence
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from ._cache import ByteLRU
from ._disk_cache import DiskCache
from ._errors import KvStoreError, VersionNotRetainedError
from ._layout import Layout, new_object_id
from ._manifest import SegmentRef
from ._objectstore import ObjectNotFound, PreconditionFailed, RetryingObjectStore
from ._segment import (
    BLOCK_TARGET_BYTES,
    HAS_VALUE_REFS,
    HEADER,
    NO_TOMBSTONES,
    Block,
    EncodedSegment,
    IndexPartition,
    Probe,
    SegmentWriter,
    TopIndex,
    Value,
    check_header,
    decode_block,
    parse_footer,
    parse_index,
    parse_partition,
)

_log = logging.getLogger("kvstore")

# Segments up to this size are read whole in one GET; larger ones by ranges.
WHOLE_READ_MAX_BYTES = 1024 * 1024
# The first ranged read of a large segment fetches its last TAIL_READ_BYTES: the footer,
# the top index (under 1 KiB for 64 MiB segments, about 10 KiB for 1 GiB ones) and the
# partitions that fit. A format-1 index (one row and filter per block) is larger: a second GET.
TAIL_READ_BYTES = 64 * 1024
# Multipart upload part size for streamed segments (S3 needs >= 5 MiB but the last).
PART_BYTES = 8 * 1024 * 1024
# Parts of one segment uploading while the next is encoded.
PARTS_IN_FLIGHT = 2
# Read-ahead of scans and compactions: windows of consecutive blocks, each one ranged
# GET. A walk's first window is one block (a scan with a small limit reads no more than
# it did block by block) and each next one doubles, up to the caller's `readahead`
# bytes; READAHEAD_WINDOWS windows are fetched or held at once (two GETs in flight while
# one window is consumed), so a segment walk holds at most READAHEAD_WINDOWS * readahead
# bytes of it. A scan merging many sources shrinks each one's window so that together
# they hold at most SCAN_MEMORY_BYTES (`scan_readahead`). bench/readahead.py chose the
# sizes (docs/benchmarks.md).
READAHEAD_WINDOWS = 3
SCAN_READAHEAD_BYTES = 4 * 1024 * 1024
SCAN_MEMORY_BYTES = 64 * 1024 * 1024


def scan_readahead(sources: int) -> int:
    """The read-ahead window of each source of a scan merging `sources` of them:
    SCAN_READAHEAD_BYTES, less when their windows together would pass
    SCAN_MEMORY_BYTES, never less than a block."""
    share = SCAN_MEMORY_BYTES // (READAHEAD_WINDOWS * max(sources, 1))
    return max(BLOCK_TARGET_BYTES, min(SCAN_READAHEAD_BYTES, share))


Entry = tuple[bytes, int, Value]
V = TypeVar("V")
# (start, bytes): a stretch of a segment object already fetched, from `start` on
Held = tuple[int, bytes]


class Miss(enum.Enum):
    """The answer of a cache-only lookup that would need a fetch."""

    NOT_CACHED = 0


NOT_CACHED = Miss.NOT_CACHED


class SegmentStore:
    """Segments under `<prefix>segments/`; indexes and blocks cached by bytes."""

    def __init__(
        self, objects: RetryingObjectStore, layout: Layout, cache: ByteLRU, disk: DiskCache | None = None
    ) -> None:
        self._objects = objects
        self._layout = layout
        self._cache = cache
        self._disk = disk  # below the memory cache: bytes fetched, by object and range
        # Read-ahead windows being fetched, by segment id: (start, end, bytes to come)
        self._windows: dict[str, list[tuple[int, int, asyncio.Future[bytes]]]] = {}

    def object_name(self, segment_id: str) -> str:
        return self._layout.segment(segment_id)

    async def read(self, name: str) -> bytes:
        """A whole immutable object of the store (through the disk cache, if any)."""
        return await self._fetch(name)

    async def write(self, encoded: EncodedSegment) -> str:
        """Safe-create a new segment object; returns its id. One PUT (I1)."""
        segment_id = new_object_id()
        await self._objects.put_if_absent(self.object_name(segment_id), encoded.data)
        return segment_id

    def new_output(self, *, uniform_version: bool) -> SegmentOutput:
        """A new segment to stream entries into (`SegmentOutput`)."""
        return SegmentOutput(self, uniform_version=uniform_version)

    async def write_sorted(self, keys: Sequence[bytes], values: Sequence[bytes]) -> asyncio.Task[SegmentRef]:
        """Encode distinct ascending keys and their values as a new segment whose entries take
        the version it commits at. Returns once it is encoded, with a task that finishes the
        upload and returns the segment's record (versions unset); cancelling it abandons the
        upload. Memory holds up to PARTS_IN_FLIGHT + 1 parts (`SegmentOutput`).
        """
        output = self.new_output(uniform_version=True)
        try:
            await output.add_pairs(keys, values)
        except BaseException:
            await output.abort()
            raise
        return asyncio.create_task(output.finish(level=0, versioned=False))

    async def get(self, ref: SegmentRef, key: bytes, key_probe: Probe, max_version: int) -> tuple[int, Value] | None:
        """The newest entry for `key` with version <= max_version: (version, value or None).

        `key_probe` is `probe(key)`: a key the block's filter rules out costs no block read.
        """
        cache = self._cache
        top = cache.get(("index", ref.id)) or await self._index(cache, ref)
        p = top.partition_for(key)
        if p is None:
            return None
        part = cache.get(("part", ref.id, p)) or await self._partition(cache, ref, top, p)
        block_no = part.block_for(key, key_probe)
        while block_no is not None:
            block = cache.get(("block", ref.id, block_no)) or await self._block(cache, ref, part, block_no)
            found = _newest(block, ref, key, max_version)
            if found is not None or block.keys[-1] != key:
                return found
            # All its versions here are too new: older ones may fill the next block.
            step = _next_block(top, p, part, block_no, key)
            if step is None:
                return None
            if step[0] != p:
                p = step[0]
                part = cache.get(("part", ref.id, p)) or await self._partition(cache, ref, top, p)
            block_no = step[1]
        return None

    async def locate(self, ref: SegmentRef, key: bytes) -> None:
        """Load what `get` of `key` reads before any block: the top index and the partition
        whose key range holds the key."""
        cache = self._cache
        top = cache.get(("index", ref.id)) or await self._index(cache, ref)
        p = top.partition_for(key)
        if p is not None and cache.get(("part", ref.id, p)) is None:
            await self._partition(cache, ref, top, p)

    def get_cached(
        self, ref: SegmentRef, key: bytes, key_probe: Probe | None, max_version: int
    ) -> tuple[int, Value] | None | Miss:
        """Like `get`, without awaiting: `NOT_CACHED` when the top index, the partition or
        the block is not cached.

        Without `key_probe` the block's filter is not consulted (a cached block answers
        exactly).
        """
        top: TopIndex | None = self._cache.get(("index", ref.id))
        if top is None:
            return NOT_CACHED
        p = top.partition_for(key)
        if p is None:
            return None
        part: IndexPartition | None = self._cache.get(("part", ref.id, p))
        if part is None:
            return NOT_CACHED
        block_no = part.block_for(key, key_probe)
        while block_no is not None:
            block = self._cache.get(("block", ref.id, block_no))
            if block is None:
                return NOT_CACHED
            found = _newest(block, ref, key, max_version)
            if found is not None or block.keys[-1] != key:
                return found
            step = _next_block(top, p, part, block_no, key)  # as in `get`
            if step is None:
                return None
            if step[0] != p:
                p = step[0]
                part = self._cache.get(("part", ref.id, p))
                if part is None:
                    return NOT_CACHED
            block_no = step[1]
        return None

    async def key_samples(self, ref: SegmentRef) -> list[tuple[bytes, int]]:
        """Where the segment's data lies in the key space: (first key, bytes of blocks) per
        index partition, or per block when there is one partition (a small segment, or
        a format-1 one). Reads around the cache, like a compaction's other reads."""
        cache = _Overlay(self._cache)
        top = await self._index(cache, ref)
        if len(top.offsets) == 1:
            part = await self._partition(cache, ref, top, 0)
            return list(zip(part.first_keys, part.lengths, strict=True))
        # Partition p follows the blocks it indexes: they lie between it and the partition before.
        starts = [HEADER.size] + [offset + length for offset, length in zip(top.offsets, top.lengths, strict=True)]
        return [(key, offset - start) for key, offset, start in zip(top.first_keys, top.offsets, starts, strict=False)]

    async def holds_no_tombstone(self, ref: SegmentRef) -> bool:
        """Whether the segment's footer says it holds no tombstone (False: it may, or it
        was written before footers said). Reads its index around the cache, if not cached."""
        top = await self._index(_Overlay(self._cache), ref)
        return bool(top.flags & NO_TOMBSTONES)

    async def holds_value_refs(self, ref: SegmentRef) -> bool:
        """Whether the segment's footer says it holds out-of-line value references. Reads
        its index around the cache, if not cached."""
        top = await self._index(_Overlay(self._cache), ref)
        return bool(top.flags & HAS_VALUE_REFS)

    async def blocks(
        self,
        ref: SegmentRef,
        start: bytes | None,
        end: bytes | None,
        reverse: bool,
        *,
        fill_cache: bool = True,
        readahead: int | None = None,
    ) -> AsyncIterator[list[Entry]]:
        """Entries in [start, end), a block at a time, in scan order.

        Forward: key ascending, version descending. Reverse: key descending,
        version descending (each key's versions keep their order).

        With `fill_cache` False what this iteration reads is neither put in the memory
        cache nor evicts from it (a compaction must not flush the hot data), though what
        the cache holds is used. Blocks not cached are fetched in windows of up to
        `readahead` bytes (`_read_ahead`; None: `scan_readahead(1)`).
        """
        cache: _Cache = self._cache if fill_cache else _Overlay(self._cache)
        if readahead is None:
            readahead = scan_readahead(1)
        top = await self._index(cache, ref)
        async with (
            aclosing(self._walk(cache, ref, top, start, end, reverse)) as walk,
            aclosing(self._read_ahead(cache, ref, walk, readahead)) as blocks,
        ):
            async for block in blocks:
                entries = _entries_in_range(block, ref, start, end)
                if reverse:
                    entries = _reverse_keys(entries)
                if entries:
                    yield entries

    async def _read_ahead(
        self, cache: _Cache, ref: SegmentRef, steps: AsyncIterator[tuple[IndexPartition, int]], readahead: int
    ) -> AsyncGenerator[Block, None]:
        """The blocks `steps` names, in order. A block cached in memory (or on disk) is used
        as it is; the others are fetched in windows: consecutive blocks whose bytes span at
        most the window's size, in one ranged GET (the index partitions between them come
        along). A block inside a window another scan of this process is fetching joins that
        GET. Windows start at one block and double up to `readahead` bytes; one is fetched
        until the first block is consumed (a scan with a small limit reads no more than it
        needs), then READAHEAD_WINDOWS are fetched or held at once."""
        pending: deque[_Pending] = deque()
        upcoming: deque[tuple[IndexPartition, int]] = deque()  # steps taken from `steps`, not yet placed
        window = 0  # bytes; 0: the next window is a single block
        ahead = 1

        async def peek() -> tuple[IndexPartition, int] | None:
            if not upcoming:
                step = await anext(steps, None)  # may load the next index partition
                if step is None:
                    return None
                upcoming.append(step)
            return upcoming[0]

        def cached(step: tuple[IndexPartition, int]) -> bool:
            return cache.get(("block", ref.id, step[1])) is not None

        try:
            while pending or await peek() is not None:
                while len(pending) < ahead and (step := await peek()) is not None:
                    found = await self._held_block(cache, ref, *step)
                    if found is not None:
                        pending.append(_Pending([upcoming.popleft()], found))
                        continue
                    joined = self._in_flight(ref.id, *step[0].span(step[1]))
                    group = [upcoming.popleft()]
                    if joined is not None:  # the blocks inside the window joined
                        lo, hi, fetch = joined
                        while (step := await peek()) is not None and not cached(step):
                            begin, end = step[0].span(step[1])
                            if not (lo <= begin and end <= hi):
                                break
                            group.append(upcoming.popleft())
                        pending.append(_Pending(group, fetch, lo))
                        continue
                    while (step := await peek()) is not None and not cached(step):
                        lo, hi = _bounds([*group, step])
                        if hi - lo > window:
                            break
                        group.append(upcoming.popleft())
                    # Taking steps awaited (index partitions): blocks another walk started
                    # fetching, or cached, meanwhile go back, to be joined or used.
                    taken = next(
                        (i for i, st in enumerate(group) if cached(st) or self._in_flight(ref.id, *st[0].span(st[1]))),
                        len(group),
                    )
                    upcoming.extendleft(reversed(group[taken:]))
                    if not taken:
                        continue
                    lo, hi = _bounds(group[:taken])
                    pending.append(_Pending(group[:taken], self._start_window(cache, ref, lo, hi), lo, own=True))
                    window = min(max(2 * window, hi - lo), readahead)
                item = pending.popleft()
                if isinstance(item.source, Block):
                    yield item.source
                else:
                    async with aclosing(self._window_blocks(cache, ref, item)) as arrived:
                        async for block in arrived:
                            yield block
                ahead = READAHEAD_WINDOWS
        finally:
            for item in pending:
                if item.own:
                    assert isinstance(item.source, asyncio.Future)
                    item.source.cancel()  # a walk that joined it may still need it: it fetches again
                    self._forget_window(ref.id, item.source)

    async def _held_block(self, cache: _Cache, ref: SegmentRef, part: IndexPartition, block_no: int) -> Block | None:
        """The block if the memory cache or the disk cache holds it."""
        block: Block | None = cache.get(("block", ref.id, block_no))
        if block is not None or self._disk is None:
            return block
        name = self.object_name(ref.id)
        data = await self._disk.get(self._disk_key(name, part.span(block_no)))
        if data is None:
            return None
        block = decode_block(data, name, block_no)
        cache.put(("block", ref.id, block_no), block, block.size)
        return block

    def _in_flight(self, segment_id: str, begin: int, end: int) -> tuple[int, int, asyncio.Future[bytes]] | None:
        """A window of the segment being fetched that holds bytes [begin, end)."""
        return next((w for w in self._windows.get(segment_id, ()) if w[0] <= begin and end <= w[1]), None)

    def _start_window(self, cache: _Cache, ref: SegmentRef, lo: int, hi: int) -> asyncio.Future[bytes]:
        """Fetch bytes [lo, hi) of a segment in the background, known to other scans until
        its blocks are in the cache (`_window_blocks`) or the fetch failed."""
        fetch = asyncio.ensure_future(self._read(cache, ref, lo, hi, disk=False))
        self._windows.setdefault(ref.id, []).append((lo, hi, fetch))

        def done(future: asyncio.Future[bytes]) -> None:
            if future.cancelled() or future.exception() is not None:
                self._forget_window(ref.id, future)

        fetch.add_done_callback(done)
        return fetch

    def _forget_window(self, segment_id: str, fetch: asyncio.Future[bytes]) -> None:
        windows = self._windows.get(segment_id, [])
        windows[:] = [w for w in windows if w[2] is not fetch]
        if not windows:
            self._windows.pop(segment_id, None)

    async def _window_blocks(self, cache: _Cache, ref: SegmentRef, item: _Pending) -> AsyncGenerator[Block, None]:
        """The blocks of a window, each decoded (and put in the caches) as it is handed out,
        once the window's bytes arrived: a walk holds one decoded block. A joined window
        whose own walk gave it up is fetched again."""
        assert isinstance(item.source, asyncio.Future)
        try:
            data, lo = await asyncio.shield(item.source), item.lo
        except asyncio.CancelledError:
            if not item.source.cancelled():
                raise  # this walk is the one cancelled
            lo, hi = _bounds(item.steps)
            data = await self._read(cache, ref, lo, hi, disk=False)
        name = self.object_name(ref.id)
        try:
            for part, block_no in item.steps:
                begin, end = part.span(block_no)
                raw = data[begin - lo : end - lo]
                block = decode_block(raw, name, block_no)
                cache.put(("block", ref.id, block_no), block, block.size)
                if self._disk is not None:  # by block, as point reads look for it
                    await self._disk.put(self._disk_key(name, (begin, end)), raw)
                yield block
        finally:
            if item.own:  # its blocks are cached now, or this walk gave up: others fetch their own
                self._forget_window(ref.id, item.source)

    async def _walk(
        self, cache: _Cache, ref: SegmentRef, top: TopIndex, start: bytes | None, end: bytes | None, reverse: bool
    ) -> AsyncGenerator[tuple[IndexPartition, int], None]:
        """(partition, block number) of the blocks in scan order; partitions load as reached.

        In reverse, the blocks of a key whose versions span blocks (consecutive blocks of
        that key only) come in forward order, so that its versions stay newest first: a
        run of such blocks is gathered (their numbers) and then handed out."""
        partitions = top.partitions_between(start, end)
        run: list[tuple[IndexPartition, int]] = []  # reverse: one key's blocks, last first
        for p in partitions[::-1] if reverse else partitions:
            part = cache.get(("part", ref.id, p)) or await self._partition(cache, ref, top, p)
            block_numbers = part.blocks_between(start, end)
            if not reverse:
                for block_no in block_numbers:
                    yield part, block_no
                continue
            for block_no in block_numbers[::-1]:
                key = part.sole_key(block_no)
                if run and key != run[0][0].sole_key(run[0][1]):
                    for step in run[::-1]:
                        yield step
                    run = []
                if key is None:
                    yield part, block_no
                else:
                    run.append((part, block_no))
        for step in run[::-1]:
            yield step

    async def read_all(self, ref: SegmentRef) -> None:
        """Fetch and verify every partition and block of a segment (raises CorruptionError),
        holding one partition and one block at a time."""
        top, only = await self._read_index(self._cache, ref)
        for p in range(len(top.offsets)):
            part = only if only is not None else (await self._load_partition(self._cache, ref, top, p))[0]
            for block_no in range(part.first_block, part.first_block + len(part.offsets)):
                await self._load_block(self._cache, ref, part, block_no)

    async def _index(self, cache: _Cache, ref: SegmentRef) -> TopIndex:
        return await cache.get_or_load(("index", ref.id), lambda: self._load_index(cache, ref))

    async def _partition(self, cache: _Cache, ref: SegmentRef, top: TopIndex, p: int) -> IndexPartition:
        return await cache.get_or_load(("part", ref.id, p), lambda: self._load_partition(cache, ref, top, p))

    async def _block(self, cache: _Cache, ref: SegmentRef, part: IndexPartition, block_no: int) -> Block:
        return await cache.get_or_load(
            ("block", ref.id, block_no), lambda: self._load_block(cache, ref, part, block_no)
        )

    def _disk_key(self, name: str, byte_range: tuple[int, int] | None) -> str:
        return f"{self._objects.description}/{name}" + (
            "" if byte_range is None else f"@{byte_range[0]}-{byte_range[1]}"
        )

    async def _fetch(self, name: str, byte_range: tuple[int, int] | None = None) -> bytes:
        if self._disk is None:
            return await self._get(name, byte_range)
        key = self._disk_key(name, byte_range)
        data = await self._disk.get(key)
        if data is None:
            data = await self._get(name, byte_range)
            await self._disk.put(key, data)
        return data

    async def _get(self, name: str, byte_range: tuple[int, int] | None) -> bytes:
        try:
            blob = await self._objects.get(name, byte_range=byte_range)
        except ObjectNotFound:
            raise VersionNotRetainedError(
                f"object {name} no longer exists: this snapshot is older than the garbage-collection "
                "grace period (or the object was deleted by hand); read a fresh snapshot, or tag "
                "versions you need to keep"
            ) from None
        assert blob is not None
        return blob.data

    async def _read(self, cache: _Cache, ref: SegmentRef, begin: int, end: int, *, disk: bool = True) -> bytes:
        """Bytes [begin, end) of a segment: sliced from bytes already held when they cover
        them, else a ranged GET (through the disk cache, unless `disk` is False: a
        read-ahead window is kept there block by block instead)."""
        held: Held | None = (0, ref.inline) if ref.inline is not None else cache.get(("raw", ref.id))
        if held is not None and held[0] <= begin and end <= held[0] + len(held[1]):
            return held[1][begin - held[0] : end - held[0]]
        name = self.object_name(ref.id)
        return await (self._fetch(name, (begin, end)) if disk else self._get(name, (begin, end)))

    async def _load_index(self, cache: _Cache, ref: SegmentRef) -> tuple[TopIndex, int]:
        top, only = await self._read_index(cache, ref)
        if only is not None:
            cache.put(("part", ref.id, 0), only, only.size)
        return top, top.size

    async def _read_index(self, cache: _Cache, ref: SegmentRef) -> tuple[TopIndex, IndexPartition | None]:
        """The top index, and a format-1 segment's only partition (its index block).

        Keeps under ("raw", id) the fetched bytes that hold partitions or blocks: the
        whole object of a small segment, or the partitions in a large one's tail."""
        name = self.object_name(ref.id)
        # An inline segment has no object: whatever its size, its bytes are in the manifest.
        if ref.inline is not None or ref.size <= WHOLE_READ_MAX_BYTES:
            tail = ref.inline if ref.inline is not None else await self._fetch(name)
            tail_start = 0
            check_header(tail, name)
            if ref.inline is None:
                cache.put(("raw", ref.id), (0, tail), len(tail))
        else:
            tail_start = max(0, ref.size - TAIL_READ_BYTES)
            tail = await self._fetch(name, (tail_start, ref.size))
        footer = parse_footer(tail, name)
        begin, end = footer.index_offset, footer.index_offset + footer.index_length
        if begin >= tail_start:
            raw_index = tail[begin - tail_start : end - tail_start]
        else:
            raw_index = await self._fetch(name, (begin, end))
        top, only = parse_index(raw_index, footer, name)
        held_from = next((offset for offset in top.offsets if offset >= tail_start), None)
        if tail_start > 0 and only is None and held_from is not None:
            # partitions wholly in the tail, up to the top index (all those after the first)
            held = tail[held_from - tail_start : begin - tail_start]
            cache.put(("raw", ref.id), (held_from, held), len(held))
        return top, only

    async def _load_partition(
        self, cache: _Cache, ref: SegmentRef, top: TopIndex, p: int
    ) -> tuple[IndexPartition, int]:
        part = parse_partition(await self._read(cache, ref, *top.span(p)), top, p, self.object_name(ref.id))
        return part, part.size

    async def _load_block(
        self, cache: _Cache, ref: SegmentRef, part: IndexPartition, block_no: int
    ) -> tuple[Block, int]:
        block = decode_block(await self._read(cache, ref, *part.span(block_no)), self.object_name(ref.id), block_no)
        return block, block.size


def _bounds(steps: Sequence[tuple[IndexPartition, int]]) -> tuple[int, int]:
    """The bytes [start, end) that hold the blocks `steps` name."""
    spans = [part.span(block_no) for part, block_no in steps]
    return min(begin for begin, _ in spans), max(end for _, end in spans)


@dataclass
class _Pending:
    """Blocks of a read-ahead walk on their way: held already (`source` is the one block),
    or in a window GET under way whose bytes start at `lo`."""

    steps: list[tuple[IndexPartition, int]]
    source: Block | asyncio.Future[bytes]
    lo: int = 0
    own: bool = False  # this walk's GET (others may have joined it), not one it joined


class _Cache(Protocol):
    """What reads need of a cache: the ByteLRU, or an _Overlay over it."""

    def get(self, key: Hashable) -> Any | None: ...

    def put(self, key: Hashable, value: Any, size: int) -> None: ...

    async def get_or_load(self, key: Hashable, load: Callable[[], Awaitable[tuple[V, int]]]) -> V: ...


class _Overlay:
    """The memory cache as a `fill_cache=False` iteration sees it: what the cache holds
    is used (without counting a hit or making it recent); what the iteration loads stays
    here, for the iteration only: the top index, the held bytes and the latest partition.
    Blocks are not kept (the iteration holds the one it yields)."""

    def __init__(self, cache: ByteLRU) -> None:
        self._cache = cache
        self._own: dict[Hashable, Any] = {}

    def get(self, key: Hashable) -> Any | None:
        value = self._cache.peek(key)
        return value if value is not None else self._own.get(key)

    def put(self, key: Hashable, value: Any, size: int) -> None:
        kind = key[0] if isinstance(key, tuple) else None
        if kind == "block":
            return
        if kind == "part":  # a walk moves on from partition to partition
            self._own = {k: v for k, v in self._own.items() if not (isinstance(k, tuple) and k[0] == "part")}
        self._own[key] = value

    async def get_or_load(self, key: Hashable, load: Callable[[], Awaitable[tuple[V, int]]]) -> V:
        value = self.get(key)
        if value is None:
            value, size = await load()
            self.put(key, value, size)
        return value


def _retrieve(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


def _next_block(top: TopIndex, p: int, part: IndexPartition, block_no: int, key: bytes) -> tuple[int, int] | None:
    """(partition, block number) of the block after `block_no` (in partition `p`) if it
    holds `key` too, the older versions of a key whose versions span blocks; else None."""
    holds = part.next_holds(block_no, key)
    if holds is None:  # the next block opens the next partition
        return (p + 1, block_no + 1) if p + 1 < len(top.offsets) and top.first_keys[p + 1] == key else None
    return (p, block_no + 1) if holds else None


def _newest(block: Block, ref: SegmentRef, key: bytes, max_version: int) -> tuple[int, Value] | None:
    i = block.find(key)
    if i is None:
        return None
    if block.versions is None:
        assert ref.commit_version is not None
        return (ref.commit_version, block.values[i]) if ref.commit_version <= max_version else None
    keys, versions = block.keys, block.versions
    while i < len(keys) and keys[i] == key:
        if versions[i] <= max_version:
            return versions[i], block.values[i]
        i += 1
    return None


def _entries_in_range(block: Block, ref: SegmentRef, start: bytes | None, end: bytes | None) -> list[Entry]:
    keys = block.keys
    lo = 0 if start is None else bisect_left(keys, start)
    hi = len(keys) if end is None else bisect_left(keys, end)
    versions = block.versions
    if versions is None:
        v = ref.commit_version
        assert v is not None
        return [(keys[i], v, block.values[i]) for i in range(lo, hi)]
    return list(zip(keys[lo:hi], versions[lo:hi], block.values[lo:hi], strict=True))


def _reverse_keys(entries: list[Entry]) -> list[Entry]:
    """Reverse key order while keeping each key's versions newest first."""
    out: list[Entry] = []
    i = len(entries)
    while i > 0:
        j = i - 1
        while j > 0 and entries[j - 1][0] == entries[i - 1][0]:
            j -= 1
        out.extend(entries[j:i])
        i = j
    return out


async def complete_checked(
    objects: RetryingObjectStore, name: str, upload_id: str, parts: list[tuple[int, str]], tail: bytes, size: int
) -> None:
    """Complete a multipart upload with If-None-Match: * (I1), deciding a 412 or a vanished
    upload by the evidence: the object is ours if it ends with `tail`, our last part's bytes
    (object names are random, so only our own attempts write this one)."""
    try:
        await objects.complete_multipart_if_absent(name, upload_id, parts)
    except (PreconditionFailed, ObjectNotFound) as exc:
        # An earlier attempt whose answer was lost may have completed it (a retry
        # then finds the object, or no upload): it is ours if it ends with our bytes
        # (for a segment, the footer's checksum covers the index, which covers every block).
        try:
            blob = await objects.get(name, byte_range=(size - len(tail), size))
        except ObjectNotFound:
            raise exc from None
        if blob is None or blob.data != tail:
            raise


class PartUploads:
    """The parts of one multipart upload, sent in the background, `in_flight` at a time.

    The upload starts with the first part; a failed part fails the next `send`."""

    def __init__(self, objects: RetryingObjectStore, name: str, in_flight: int = PARTS_IN_FLIGHT) -> None:
        self._objects = objects
        self._name = name
        self._in_flight = in_flight
        self.upload_id: str | None = None
        self.size = 0  # bytes sent so far
        self._tasks: list[asyncio.Task[str]] = []  # one per part, in part order
        self._pending: set[asyncio.Task[str]] = set()

    async def send(self, data: bytes) -> None:
        if self.upload_id is None:
            self.upload_id = await self._objects.start_multipart(self._name)
        while len(self._pending) >= self._in_flight:
            done, self._pending = await asyncio.wait(self._pending, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                task.result()
        part = self._objects.upload_part(self._name, self.upload_id, len(self._tasks) + 1, data)
        task = asyncio.create_task(part)
        self._tasks.append(task)
        self._pending.add(task)
        self.size += len(data)

    async def parts(self) -> list[tuple[int, str]]:
        """(part number, etag) of every part, once all are uploaded."""
        return list(enumerate(await asyncio.gather(*self._tasks), start=1))

    async def abort(self) -> None:
        """Cancel the parts in flight and abort the upload, best effort: this runs while
        another error is on its way, which must not be replaced (an upload left behind
        costs storage until a lifecycle rule removes it, and is never part of the store)."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.upload_id is not None:
            try:
                await self._objects.abort_multipart(self._name, self.upload_id)
            except KvStoreError as exc:
                _log.warning(
                    "could not abort the multipart upload of %s (left to a lifecycle rule): %s", self._name, exc
                )


class SegmentOutput:
    """A new segment, uploaded while entries are added to its `writer`.

    `send_full_parts` uploads what the writer has produced once it reaches
    PART_BYTES, as parts of a multipart upload running in the background;
    `finish` closes the segment: one PUT if it never reached a part, else the
    last part and a multipart complete with If-None-Match: * (I1). Memory
    holds the unsent bytes (< PART_BYTES plus a block) and up to
    PARTS_IN_FLIGHT parts being sent.
    """

    def __init__(self, store: SegmentStore, *, uniform_version: bool) -> None:
        self._store = store
        self.writer = SegmentWriter(uniform_version=uniform_version)
        self.id = new_object_id()
        self._name = store.object_name(self.id)
        self._upload = PartUploads(store._objects, self._name)

    def add_until(self, entries: Sequence[Entry], start: int, limit: int) -> int:
        """Add `entries[start:]` (in segment order) until the segment reaches about `limit`
        bytes, ending at a key boundary; returns the index of the first entry not added.

        The segment never ends inside a key's versions, even those of earlier calls: the
        segments of a sorted run have disjoint key ranges, so that a point read looks in
        one. A key with a long history of large values makes its segment that much larger
        than `limit` (streamed all the same, a block at a time)."""
        writer = self.writer
        add = writer.add
        # Bytes produced before this call; a block closed during it is then counted
        # neither here nor in the open block, so the segment may exceed `limit` by a block.
        produced = self._upload.size + writer.pending_bytes
        last = writer.last_key
        for i in range(start, len(entries)):
            key, version, value = entries[i]
            if key != last and writer.count and produced + writer.open_block_bytes >= limit:
                return i
            add(key, version, value)
            last = key
        return len(entries)

    async def add_pairs(self, keys: Sequence[bytes], values: Sequence[bytes]) -> None:
        """Append distinct ascending keys (above those added before) and their plain values,
        at the version the segment commits at, a block at a time (`SegmentWriter.add_many`);
        parts are sent as they fill."""
        for _ in self.writer.add_many(keys, values, 0):
            await self.send_full_parts()

    @property
    def bytes_so_far(self) -> int:
        """Bytes of the segment so far: encoded ones, and the open block's raw ones."""
        return self._upload.size + self.writer.pending_bytes + self.writer.open_block_bytes

    async def send_full_parts(self) -> None:
        """Start uploading a part if a whole one is ready; let the parts in flight progress."""
        if self.writer.pending_bytes >= PART_BYTES:
            await self._upload.send(self.writer.take())
        if self._upload.upload_id is not None:
            await asyncio.sleep(0)

    async def finish(self, *, level: int, versioned: bool = True) -> SegmentRef:
        """Close and upload the rest; the segment's record. Without `versioned` (a commit
        segment) its versions are left for the commit to set."""
        try:
            tail = self.writer.finish()
            size = self._upload.size + len(tail)
            if self._upload.upload_id is None:
                await self._store._objects.put_if_absent(self._name, tail)
            else:
                await self._upload.send(tail)
                await complete_checked(
                    self._store._objects, self._name, self._upload.upload_id, await self._upload.parts(), tail, size
                )
        except BaseException:
            await self._upload.abort()
            raise
        w = self.writer
        if not versioned:
            return SegmentRef(self.id, w.min_key, w.max_key, w.count, size, 0, 0)
        return SegmentRef(self.id, w.min_key, w.max_key, w.count, size, w.min_version, w.max_version, None, level)

    async def abort(self) -> None:
        """Give the segment up: cancel parts in flight and abort the multipart upload."""
        await self._upload.abort()
