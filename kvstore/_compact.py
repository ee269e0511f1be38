"""Compaction: merging segments, committed as an ordinary manifest CAS.

Policy: size-tiered by level. Commits write level-0 segments; when a level
holds `compaction_fanout` segments they are merged into one segment of the
next level. Every entry is rewritten once per level (about log_fanout of the
number of commits), and a store holds at most fanout - 1 segments per level
after compaction. Tiered beats leveled here because S3 charges per request,
commit segments are tiny, and a leveled merge would rewrite a large
neighbour for every small input.

A compaction writes nothing users can see: its commit record lists no keys,
so it never conflicts with a transaction; it conflicts only with another
compaction of the same segments, and then gives up.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from ._cas import read_modify_cas
from ._manifest import CommitRecord, Manifest, SegmentRef
from ._manifest_store import ManifestStore
from ._merge import merge
from ._options import StoreOptions
from ._segment import encode_segment
from ._segment_store import Entry, SegmentStore

TombstoneCheck = Callable[[bytes, int], bool]


@dataclass(frozen=True)
class CompactionResult:
    """What one compaction did."""

    version: int  # the version its commit created
    inputs: int  # segments merged
    entries_in: int
    entries_out: int  # after dropping shadowed versions and tombstones
    bytes_in: int
    bytes_out: int
    level: int


def choose_inputs(manifest: Manifest, fanout: int, *, full: bool = False) -> list[SegmentRef]:
    """The segments to merge next, newest first; empty if nothing is due.

    `full` merges every segment into one (when there are at least two).
    """
    if full:
        return list(manifest.segments) if len(manifest.segments) > 1 else []
    by_level: dict[int, list[SegmentRef]] = {}
    for ref in manifest.segments:
        by_level.setdefault(ref.level, []).append(ref)
    for level in sorted(by_level):
        if len(by_level[level]) >= fanout:
            return by_level[level]
    return []


def history_floor(manifest: Manifest, options: StoreOptions, now: float) -> int:
    """The oldest version whose exact state compaction must keep readable.

    A version stays readable while it is among the last `history_versions`
    versions or was committed less than `history_seconds` ago (known from the
    commit log; versions the log no longer lists count as expired).
    """
    by_count = manifest.version - options.history_versions
    by_time = manifest.log_start
    for record in manifest.log:
        if record.time > now - options.history_seconds:
            break
        by_time = record.version
    return max(manifest.history_floor, min(by_count, by_time), 0)


def merge_entries(ordered: Iterable[Entry], floor: int, tombstone_droppable: TombstoneCheck) -> Iterator[Entry]:
    """Entries to keep, from entries sorted by key, version descending, source priority.

    Keeps each key's newest entry, and an older one while the entry after it
    is newer than `floor` (some readable version still sees it). A key's
    oldest kept entry is dropped while it is a tombstone that
    `tombstone_droppable(key, version)` allows: nothing older exists elsewhere.
    """
    group: list[Entry] = []
    for entry in ordered:
        if group and entry[0] != group[0][0]:
            yield from _trim(group, floor, tombstone_droppable)
            group = []
        group.append(entry)
    if group:
        yield from _trim(group, floor, tombstone_droppable)


def _trim(group: list[Entry], floor: int, tombstone_droppable: TombstoneCheck) -> list[Entry]:
    kept = [group[0]]
    for entry in group[1:]:
        newer = kept[-1][1]
        if entry[1] == newer:
            continue  # same version in two sources: the first (newer segment) won
        if newer <= floor:
            break  # no readable version sees this or anything older
        kept.append(entry)
    while kept and kept[-1][2] is None and tombstone_droppable(kept[-1][0], kept[-1][1]):
        kept.pop()
    return kept


class Compactor:
    """Merges segments of one store and commits the result."""

    def __init__(self, manifests: ManifestStore, segments: SegmentStore, options: StoreOptions) -> None:
        self._manifests = manifests
        self._segments = segments
        self._options = options

    async def compact(self, *, full: bool = False) -> CompactionResult | None:
        """Merge the next due group of segments (or all, with `full`).

        Returns None when nothing was due or a concurrent compaction took the
        same segments first. Costs one GET per input segment not cached, one
        PUT for the merged segment and one manifest CAS (more on contention).
        """
        base, etag = self._manifests.current
        inputs = choose_inputs(base, self._options.compaction_fanout, full=full)
        if not inputs:
            return None
        floor = history_floor(base, self._options, time.time())
        input_ids = frozenset(r.id for r in inputs)
        others = [r for r in base.segments if r.id not in input_ids]

        def tombstone_droppable(key: bytes, version: int) -> bool:
            return not any(r.min_version < version and r.may_contain(key) for r in others)

        sources = [self._segments.blocks(ref, None, None, False) for ref in inputs]
        merged = [entry async for batch in merge(sources) for entry in batch]
        kept = list(merge_entries(merged, floor, tombstone_droppable))
        level = max(r.level for r in inputs) + 1
        if not kept:
            ref = None
        else:
            encoded = encode_segment(kept, uniform_version=False)
            segment_id = await self._segments.write(encoded)
            ref = SegmentRef(
                segment_id,
                encoded.min_key,
                encoded.max_key,
                encoded.count,
                len(encoded.data),
                encoded.min_version,
                encoded.max_version,
                None,
                level,
            )
        compaction_id = uuid.uuid4().bytes

        async def load(fresh: bool) -> tuple[Manifest, str]:
            if fresh:
                await self._manifests.refresh()
            return self._manifests.current  # this process may have committed meanwhile

        async def write(current: tuple[Manifest, str]) -> int | None:
            base, etag = current
            found = next((r for r in base.log if compaction_id in r.txn_ids), None)
            if found is not None:
                return found.version  # an attempt of ours whose answer was lost was applied (I5)
            if not input_ids <= {r.id for r in base.segments}:
                return None  # another compaction merged some of them first
            record = CommitRecord(
                version=base.version + 1,
                time=time.time(),
                txn_ids=(compaction_id,),
                segment_id=None if ref is None else ref.id,
                key_count=0,
                min_key=b"",
                max_key=b"",
                keys=(),
                meta={"compaction": {"inputs": len(inputs), "level": level}},
            )
            new = base.with_commit(
                record,
                self._options.commit_log_length,
                add=() if ref is None else (ref,),
                remove=input_ids,
                history_floor=floor,
            )
            await self._manifests.compare_and_swap(new, etag)
            return new.version

        async with self._manifests.writing:
            version = await read_modify_cas("a compaction", load, write)
        if version is None:
            return None
        return CompactionResult(
            version=version,
            inputs=len(inputs),
            entries_in=len(merged),
            entries_out=len(kept),
            bytes_in=sum(r.size for r in inputs),
            bytes_out=0 if ref is None else ref.size,
            level=level,
        )
