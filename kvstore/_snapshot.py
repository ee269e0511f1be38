"""Reads at one manifest version: point lookups and merged range scans (bytes only)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from itertools import pairwise

from ._manifest import Manifest, SegmentRef
from ._merge import merge, visible
from ._segment import probe
from ._segment_store import NOT_CACHED, SegmentStore


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
        sources = [self._segments.blocks(r, start, end, reverse) for r in self._refs if r.overlaps(start, end)]
        return visible(merge(sources, reverse=reverse), self.version)


def _any_overlap(refs: list[SegmentRef]) -> bool:
    """Whether any two segments' key ranges overlap."""
    by_start = sorted(refs, key=lambda r: r.min_key)
    return any(later.min_key <= earlier.max_key for earlier, later in pairwise(by_start))
