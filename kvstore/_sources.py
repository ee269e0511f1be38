"""Reads of any source a manifest lists, a segment or a sorted run, through one interface.

A sorted run is read through the segments its run object lists: a point read
goes to the one segment whose key range holds the key, a scan walks the
segments in order. Run objects are immutable and cached like segment indexes.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence

from ._cache import ByteLRU
from ._layout import Layout, new_object_id
from ._manifest import SegmentRef
from ._objectstore import RetryingObjectStore
from ._run import Run, decode_run, encode_run, run_ref
from ._segment import Probe, Value
from ._segment_store import NOT_CACHED, Entry, Miss, SegmentStore
from ._value_store import ValueStore


class Sources:
    """Segments and sorted runs of one store."""

    def __init__(self, objects: RetryingObjectStore, layout: Layout, segments: SegmentStore, cache: ByteLRU) -> None:
        self._objects = objects
        self._layout = layout
        self.segments = segments
        self.values = ValueStore(objects, layout)  # out-of-line values the entries name
        self._cache = cache

    async def run(self, ref: SegmentRef) -> Run:
        """The segments of the run `ref` (one GET the first time)."""
        return await self._cache.get_or_load(("run", ref.id), lambda: self._load_run(ref))

    async def parts(self, ref: SegmentRef) -> Sequence[SegmentRef]:
        """The segments of `ref`, in key order: a run's, or the segment itself."""
        return (await self.run(ref)).parts if ref.is_run else (ref,)

    async def write_run(self, parts: Sequence[SegmentRef], level: int, *, commit_segments: bool = False) -> SegmentRef:
        """Safe-create the run object listing `parts` (written, key-ordered, disjoint);
        returns its manifest row. With `commit_segments` the parts' entries take the
        version the run commits at (a bulk load's run; `_run.encode_run`). One PUT (I1)."""
        run_id = new_object_id()
        await self._objects.put_if_absent(self._layout.run(run_id), encode_run(parts, commit_segments=commit_segments))
        return run_ref(run_id, parts, level)

    async def get(self, ref: SegmentRef, key: bytes, key_probe: Probe, max_version: int) -> tuple[int, Value] | None:
        """The newest entry for `key` with version <= max_version (`SegmentStore.get`)."""
        if ref.is_run:
            part = (self._cache.get(("run", ref.id)) or await self.run(ref)).part_for(key)
            if part is None:
                return None
            ref = part
        return await self.segments.get(ref, key, key_probe, max_version)

    async def locate(self, ref: SegmentRef, key: bytes) -> None:
        """Load what `get` of `key` reads before any block (`SegmentStore.locate`), a run's
        object first."""
        if ref.is_run:
            part = (await self.run(ref)).part_for(key)
            if part is None:
                return
            ref = part
        await self.segments.locate(ref, key)

    def get_cached(
        self, ref: SegmentRef, key: bytes, key_probe: Probe | None, max_version: int
    ) -> tuple[int, Value] | None | Miss:
        """Like `get`, without awaiting: `NOT_CACHED` when something is not cached."""
        if ref.is_run:
            run: Run | None = self._cache.get(("run", ref.id))
            if run is None:
                return NOT_CACHED
            part = run.part_for(key)
            if part is None:
                return None
            ref = part
        return self.segments.get_cached(ref, key, key_probe, max_version)

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
        """Entries of `ref` in [start, end), a block at a time, in scan order (`SegmentStore.blocks`).
        Only keys in the range `ref` serves: a clipped source's objects hold keys below it."""
        if ref.clipped:
            start = ref.min_key if start is None else max(start, ref.min_key)
        parts = (await self.run(ref)).parts_between(start, end) if ref.is_run else [ref]
        for part in reversed(parts) if reverse else parts:
            async for entries in self.segments.blocks(
                part, start, end, reverse, fill_cache=fill_cache, readahead=readahead
            ):
                yield entries

    async def blocks_in(
        self,
        ref: SegmentRef,
        pieces: Sequence[tuple[bytes | None, bytes | None]],
        reverse: bool,
        *,
        fill_cache: bool = True,
        readahead: int | None = None,
    ) -> AsyncIterator[list[Entry]]:
        """`blocks` of `ref` in each of the disjoint, ascending key ranges `pieces` (the parts
        of a range that range deletes leave to read, `RangeIndex.unhidden`), in scan order."""
        for start, end in reversed(pieces) if reverse else pieces:
            async for entries in self.blocks(ref, start, end, reverse, fill_cache=fill_cache, readahead=readahead):
                yield entries

    async def _load_run(self, ref: SegmentRef) -> tuple[Run, int]:
        name = self._layout.run(ref.id)
        run = decode_run(await self.segments.read(name), ref.level, name, ref.commit_version)
        return run, run.size
