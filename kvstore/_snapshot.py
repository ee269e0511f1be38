"""Reads at one manifest version: point lookups and merged range scans (bytes only)."""

from __future__ import annotations

import heapq
from collections.abc import AsyncIterator
from functools import total_ordering
from itertools import pairwise

from ._manifest import Manifest, SegmentRef
from ._segment import probe
from ._segment_store import NOT_CACHED, Entry, SegmentStore


class SnapshotView:
    """The store as of `manifest.version`. Costs no manifest reads; segments are cached."""

    def __init__(self, manifest: Manifest, segments: SegmentStore, version: int | None = None) -> None:
        """A view of `manifest` as of `version` (default: the manifest's own).

        An older version is exact only if it is >= manifest.history_floor.
        """
        self.manifest = manifest
        self.version = manifest.version if version is None else version
        self._segments = segments
        # Newest first: for commit segments this is commit order.
        self._refs = sorted(manifest.segments, key=lambda s: s.max_version, reverse=True)
        self._overlapping = _any_overlap(self._refs)

    async def get(self, key: bytes) -> bytes | None:
        """The value of `key`, or None if absent or deleted."""
        best: tuple[int, bytes | None] | None = None
        segments, version = self._segments, self.version
        # Where segments overlap, most of those covering a key lack it, and their filters
        # (the key hashed once, here) spare searching their blocks. A key's only candidate
        # is cheaper to search than to filter when its block is cached; `get` still
        # filters before fetching a block.
        key_probe = probe(key) if self._overlapping else None
        for ref in self._refs:
            if best is not None and ref.max_version <= best[0]:
                break  # no older segment can hold a newer entry
            if not ref.min_key <= key <= ref.max_key:
                continue
            found = segments.get_cached(ref, key, key_probe, version)
            if found is NOT_CACHED:
                found = await segments.get(ref, key, key_probe or probe(key), version)
            if found is not None and (best is None or found[0] > best[0]):
                best = found
        return None if best is None else best[1]

    def scan(self, start: bytes | None, end: bytes | None, *, reverse: bool = False) -> AsyncIterator[tuple[bytes, bytes]]:
        """Live (key, value) pairs in [start, end), in key order (or reversed)."""
        refs = [r for r in self._refs if r.overlaps(start, end)]
        if len(refs) == 1:  # the common case of a compacted store: no merge
            return self._scan_one(refs[0], start, end, reverse)
        return self._merge(refs, start, end, reverse)

    async def _merge(
        self, refs: list[SegmentRef], start: bytes | None, end: bytes | None, reverse: bool
    ) -> AsyncIterator[tuple[bytes, bytes]]:
        sources = [_Source(self._segments.blocks(r, start, end, reverse)) for r in refs]
        heap: list[tuple[tuple[object, int], int]] = []
        for n, source in enumerate(sources):
            if await source.fill():
                heapq.heappush(heap, (_order_key(source.peek(), reverse), n))
        last_key: bytes | None = None
        while heap:
            _, n = heapq.heappop(heap)
            source = sources[n]
            key, version, value = source.take()
            if await source.fill():
                heapq.heappush(heap, (_order_key(source.peek(), reverse), n))
            if key == last_key or version > self.version:
                continue  # an older version of a key already decided, or too new
            last_key = key
            if value is not None:
                yield key, value


    async def _scan_one(
        self, ref: SegmentRef, start: bytes | None, end: bytes | None, reverse: bool
    ) -> AsyncIterator[tuple[bytes, bytes]]:
        last_key: bytes | None = None
        snapshot_version = self.version
        async for entries in self._segments.blocks(ref, start, end, reverse):
            for key, version, value in entries:
                if key == last_key or version > snapshot_version:
                    continue
                last_key = key
                if value is not None:
                    yield key, value


class _Source:
    """One segment's entries, refilled a block at a time."""

    def __init__(self, blocks: AsyncIterator[list[Entry]]) -> None:
        self._blocks = blocks
        self._buffer: list[Entry] = []
        self._pos = 0

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


def _any_overlap(refs: list[SegmentRef]) -> bool:
    """Whether any two segments' key ranges overlap."""
    by_start = sorted(refs, key=lambda r: r.min_key)
    return any(later.min_key <= earlier.max_key for earlier, later in pairwise(by_start))


def _order_key(entry: Entry, reverse: bool) -> tuple[object, int]:
    key, version, _ = entry
    return (_Descending(key) if reverse else key, -version)
