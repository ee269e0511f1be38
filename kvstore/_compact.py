"""Compaction: merging segments and runs, committed as an ordinary manifest CAS.

Policy: size-tiered by level, over sorted runs. Commits write level-0
segments; when a level holds `compaction_fanout` sources (segments or runs)
they are merged into one sorted run of the next level. Every entry is
rewritten once per level (about log_fanout of the number of commits), and a
store holds at most fanout - 1 sources per level after compaction. Tiered
beats leveled here because S3 charges per request, commit segments are tiny,
and a leveled merge would rewrite a large neighbour for every small input
(docs/design.md has the measured amplification).

A merge streams: its output is a sorted run of segments of at most about
`target_segment_bytes`, each uploaded as it fills. The key space is split
into ranges of a few segments' worth of input (`plan_ranges`); each range is
a `SubCompaction`, self-contained so that any executor could run it, and
they run concurrently, as many as `compaction_memory_bytes` allows. Memory
is bounded by that budget whatever the store size. All ranges commit in one
CAS: the run replaces its inputs atomically.

A compaction writes nothing users can see: its commit record lists no keys,
so it never conflicts with a transaction; it conflicts only with another
compaction of the same sources, and then gives up.

A segment that would come out of the merge unchanged is not rewritten: it
joins the output run as it is (a "trivial move", `movable`), with no GET or
PUT of its data, and the key ranges merged stop short of it.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from bisect import bisect_left
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from itertools import accumulate, pairwise

from . import _ttl as ttl
from ._cas import read_modify_cas
from ._errors import CompactionTooSlowError
from ._manifest import CommitRecord, Manifest, SegmentRef
from ._manifest_store import ManifestStore
from ._merge import merge
from ._operands import codec_of, combine, resolve, settle, stacks
from ._options import StoreOptions, grace_period_of
from ._ranges import RangeIndex, RangeTombstone, inside
from ._segment import BLOCK_TARGET_BYTES, ENTRY_OVERHEAD, Value
from ._segment_store import (
    PART_BYTES,
    PARTS_IN_FLIGHT,
    READAHEAD_WINDOWS,
    SCAN_READAHEAD_BYTES,
    WHOLE_READ_MAX_BYTES,
    Entry,
    SegmentOutput,
)
from ._sources import Sources
from ._tasks import run_bounded

TombstoneCheck = Callable[[bytes, int], bool]


@dataclass(frozen=True)
class SubCompactionRunner:
    """Runs a compaction's key ranges elsewhere (e.g. on a Dask cluster), results in the
    order given. `width` is how many ranges it runs at once (the cluster's workers): a
    step then holds that many ranges, so every worker has one (a step stays about as long
    as one range takes, whatever the width)."""

    run: Callable[[Sequence[SubCompaction]], Awaitable[list[SubCompactionResult]]]
    width: int


@dataclass(frozen=True)
class CompactionResult:
    """What one compaction did.

    `bytes_out` is the size of its output run, the `moved` input segments (joined
    as they were, not rewritten) included; `bytes_written` the part it wrote.
    """

    version: int  # the version its commit created
    inputs: int  # segments merged
    entries_in: int  # entries read (a source is not read where a settled range delete hides all it holds)
    entries_out: int  # after dropping shadowed versions and tombstones
    bytes_in: int
    bytes_out: int
    level: int
    outputs: int = 0  # segments in the output run (written and moved)
    sub_compactions: int = 0  # key ranges merged
    moved: int = 0  # input segments that joined the output run as they were (not rewritten)
    bytes_written: int = 0  # bytes of the segments written (bytes_out less the moved ones)
    steps: int = 1  # manifest commits it made, each a bounded share of its key ranges

    @property
    def write_amplification(self) -> float:
        """Bytes written ÷ bytes of live data in the output run (`bytes_out`): 1.0 when every
        segment was rewritten, less when some were moved, 0.0 when all were."""
        return self.bytes_written / self.bytes_out if self.bytes_out else 0.0


def choose_inputs(manifest: Manifest, fanout: int, *, full: bool = False, target_bytes: int = 0) -> list[SegmentRef]:
    """The segments to merge next, newest first; empty if nothing is due.

    `full` merges every source into one run (when there are at least two, or one
    segment larger than `target_bytes`, which a full compaction splits). A lone
    segment of one key's versions is left alone, however large: an output segment
    never ends inside a key, so rewriting it would give the same oversized segment
    again (a lone segment is not rewritten only to drop old versions, large or small).
    """
    if full:
        sources = list(manifest.segments)
        lone = sources[0] if len(sources) == 1 else None
        if len(sources) > 1 or (
            lone is not None and not lone.is_run and lone.size > target_bytes and lone.min_key != lone.max_key
        ):
            return sources
        return []
    by_level: dict[int, list[SegmentRef]] = {}
    for ref in manifest.segments:
        by_level.setdefault(ref.level, []).append(ref)
    # Of the due levels, the fullest (the lowest on a tie): while commits keep level 0
    # due, always taking the lowest would starve the levels above it.
    due = [(-len(refs), level) for level, refs in by_level.items() if len(refs) >= fanout]
    return by_level[min(due)[1]] if due else []


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


class Retention:
    """Compaction's retention rule, over entries fed in merged order (key ascending,
    version descending, source priority) a batch at a time.

    Keeps each key's newest entry, and an older one while the entry after it
    is newer than `floor` (some readable version still sees it). A key's
    oldest kept entry is dropped while it is a tombstone that
    `tombstone_droppable(key, version)` allows: nothing older exists elsewhere.

    Entries stream through: a key's kept entries are handed out as they come
    (a key's history may be far larger than memory), except the tombstones that
    end them so far, held (they are small) until a value or the key's end
    decides them.

    Atomic operands (`_operands`) that stack on older entries are kept as they are
    above the floor. The one at the floor (the key's oldest readable state) takes
    in the older entries instead of dropping them: folded down to a put or
    tombstone it becomes a put of the result; with nothing older left anywhere
    (the tombstone rule) it resolves on an absent key; else it stays operands.
    """

    def __init__(self, floor: int, tombstone_droppable: TombstoneCheck, codec: str = "bytes", now: float = 0.0) -> None:
        self._floor = floor
        self._droppable = tombstone_droppable
        self._codec = codec
        self._now = now  # puts expired by then (`_ttl`) are tombstones
        self._key: bytes | None = None  # the key being fed
        self._newer = 0  # the version of its last entry kept (or held)
        self._past_floor = False  # its remaining entries are dropped
        self._tombstones: list[Entry] = []  # kept tombstones ending its entries so far
        self._folding: Entry | None = None  # stacking operands at the floor, taking in older entries

    def feed(self, batch: Iterable[Entry]) -> list[Entry]:
        """The entries to keep, of those `batch` decides, in order."""
        kept: list[Entry] = []
        for entry in batch:
            key, version, value = entry
            if value is not None and not isinstance(value, bytes):
                settled = settle(value, self._codec, self._now)  # an expired put: a tombstone
                if settled is not value:
                    value = settled
                    entry = key, version, value
            if key != self._key:
                kept += self._end_key()
                self._key, self._past_floor = key, False
            elif self._folding is not None:
                if version != self._newer:  # (the same version in two sources: the first won)
                    kept += self._fold(value, version)
                continue
            elif self._past_floor or version == self._newer:
                continue  # nothing readable sees it, or the same version in two sources: the first won
            elif self._newer <= self._floor:
                self._past_floor = True  # no readable version sees this or anything older
                continue
            self._newer = version
            if value is None:
                self._tombstones.append(entry)
            else:
                if self._tombstones:
                    kept += self._tombstones
                    self._tombstones = []
                if version <= self._floor and stacks(value):
                    self._folding = entry  # it needs what is older, which nothing else reads
                else:
                    kept.append(entry)
        return kept

    def _fold(self, value: Value, version: int) -> list[Entry]:
        """Fold an older entry into the operands at the floor; the result once they no
        longer stack (the key's remaining entries are then dropped)."""
        assert self._folding is not None
        key, at, operands = self._folding
        folded = combine(value, operands, self._codec)
        self._newer = version
        if stacks(folded):
            self._folding = key, at, folded
            return []
        self._folding = None
        self._past_floor = True
        return [(key, at, folded)]

    def finish(self) -> list[Entry]:
        """The entries to keep of the last key."""
        return self._end_key()

    def _end_key(self) -> list[Entry]:
        """The held tombstones of the key just ended that must stay."""
        tombstones, self._tombstones = self._tombstones, []
        while tombstones and self._droppable(tombstones[-1][0], tombstones[-1][1]):
            tombstones.pop()
        if self._folding is not None:
            key, at, operands = self._folding
            self._folding = None
            if self._droppable(key, self._newer):  # nothing older anywhere: they apply to nothing
                operands = resolve(operands, self._codec, key, self._now)
            tombstones.append((key, at, operands))
        return tombstones


# Memory a decoded block takes, as a multiple of its raw bytes (Python objects per
# key and value; `_segment.decode_block` has the exact accounting).
_DECODED_BLOCK_FACTOR = 4
DECODED_BLOCK_BYTES = _DECODED_BLOCK_FACTOR * BLOCK_TARGET_BYTES
# Memory per decoded entry beyond its data, as a merge holds it (CPython, 64-bit): the bytes
# objects of its key and value, its version's int, its (key, version, value) tuple, and the
# list slots that hold them. What makes a block of tiny pairs weigh more than the factor.
_ENTRY_OBJECTS_BYTES = 200
# A sub-compaction covers about this many output segments' worth of input: enough
# that its last, partly filled segment is a small share of its output.
_RANGE_SEGMENTS = 4
# At most this many sub-compactions run at once (more do not help on a few cores).
MAX_SUB_COMPACTIONS = 4


def sub_compaction_bytes(
    inputs: int,
    target_segment_bytes: int,
    readahead: int = BLOCK_TARGET_BYTES,
    *,
    held: int = 0,
    decoded: int = DECODED_BLOCK_BYTES,
) -> int:
    """Memory one sub-compaction (or any merge into segments) holds: per input, its
    read-ahead windows (`SegmentStore.blocks`), `held` bytes (an input object small enough
    to be read whole, `WHOLE_READ_MAX_BYTES`: its windows are then copies sliced from it)
    and the `decoded` block being merged; and its output's unsent bytes and parts in
    flight (`SegmentOutput`), counted twice: they are copied once on their way out."""
    reading = inputs * (READAHEAD_WINDOWS * readahead + held + decoded)
    writing = 2 * min(target_segment_bytes, (PARTS_IN_FLIGHT + 1) * PART_BYTES) + BLOCK_TARGET_BYTES
    return reading + writing


def merge_footprint(refs: Sequence[SegmentRef]) -> dict[str, int]:
    """What an input of a merge of `refs` (segments, not runs) holds at most besides its
    windows, as `sub_compaction_bytes` keywords: the largest of them small enough to be read
    whole (held for the whole merge when read around the cache), and a decoded block of
    their smallest entries (the most Python objects per block), at least DECODED_BLOCK_BYTES."""
    held = max((r.size for r in refs if r.size <= WHOLE_READ_MAX_BYTES), default=0)
    # Stored bytes per entry: no more than raw ones (blocks are compressed), so this counts
    # at least as many entries per block as there are; a block holds no more than one per
    # ENTRY_OVERHEAD bytes.
    entry_bytes = max(ENTRY_OVERHEAD, min((r.size / max(r.count, 1) for r in refs), default=ENTRY_OVERHEAD))
    per_block = BLOCK_TARGET_BYTES + int(BLOCK_TARGET_BYTES / entry_bytes * _ENTRY_OBJECTS_BYTES)
    return {"held": held, "decoded": max(DECODED_BLOCK_BYTES, per_block)}


def merge_readahead(inputs: int, target_segment_bytes: int, memory_bytes: int, **footprint: int) -> int:
    """The read-ahead window of each input of a merge: the largest (SCAN_READAHEAD_BYTES,
    halved down to a block) at which it holds at most `memory_bytes`
    (`sub_compaction_bytes`, with `footprint`: `merge_footprint`), so that larger GETs do
    not cost inputs or concurrency."""
    readahead = SCAN_READAHEAD_BYTES
    while (
        readahead > BLOCK_TARGET_BYTES
        and sub_compaction_bytes(inputs, target_segment_bytes, readahead, **footprint) > memory_bytes
    ):
        readahead //= 2
    return readahead


def merge_fan_in(target_segment_bytes: int, memory_bytes: int, **footprint: int) -> int:
    """The most inputs one merge reads at once within `memory_bytes`, each with a block of
    read-ahead (`sub_compaction_bytes`, with `footprint`: `merge_footprint`); at least 2."""
    one = sub_compaction_bytes(1, target_segment_bytes, **footprint)
    none = sub_compaction_bytes(0, target_segment_bytes, **footprint)
    return max(2, (memory_bytes - none) // (one - none))


def compaction_readahead(inputs: int, options: StoreOptions) -> int:
    """The read-ahead window of each input of a compaction: `merge_readahead` with room
    for MAX_SUB_COMPACTIONS sub-compactions in `compaction_memory_bytes`."""
    per_sub = options.compaction_memory_bytes // MAX_SUB_COMPACTIONS
    return merge_readahead(inputs, options.target_segment_bytes, per_sub)


def plan_ranges(samples: Iterable[tuple[bytes, int]], range_bytes: int) -> list[tuple[bytes | None, bytes | None]]:
    """Split the key space into [start, end) ranges holding about `range_bytes` of input each.

    `samples` are (key, bytes): each input's data from `key` on, up to its next
    sample (its segments' or index partitions' first keys). The first range starts
    at None and the last ends at None, so together they cover every key.
    """
    cuts: list[bytes] = []
    pending = 0
    for key, size in sorted(samples):
        if pending >= range_bytes and (not cuts or key > cuts[-1]):
            cuts.append(key)
            pending = 0
        pending += size
    return list(pairwise([None, *cuts, None]))


def movable(piece: SegmentRef, floor: int, target_segment_bytes: int) -> bool:
    """Whether the metadata alone proves that merging would leave the segment `piece` as it
    is, provided no other input overlaps its key range (checked by the caller, as is its
    footer's NO_TOMBSTONES flag: `SegmentStore.holds_no_tombstone`).

    Retention drops an entry only when it is shadowed by a newer entry of its key that
    is at or below the history floor, or when it is a tombstone ending its key. So:
    * one version per key: a commit segment (`commit_version` set: distinct keys, every
      entry at that version), or every version above `floor` (none is shadowed below it);
    * no tombstone (the footer flag);
    * an object of its own (not inline: a run lists objects) of half to twice
      `target_segment_bytes`. At most twice: the run's segments stay bounded, and a bulk
      load's segment (a chunk of 64 MiB of pairs by default, the default target) encodes
      to a little more than its chunk when values do not compress; a larger one is split.
      At least half: a smaller one costs little to merge, and moving small commit
      segments would leave a run of as many small objects as its inputs, never fewer.
    """
    return (
        piece.inline is None
        and not piece.is_run
        and target_segment_bytes // 2 <= piece.size <= 2 * target_segment_bytes
        and (piece.commit_version is not None or piece.min_version > floor)
    )


def range_deleted_in(piece: SegmentRef, ranges: Sequence[RangeTombstone]) -> bool:
    """Whether one of `ranges` may hide an entry of `piece` (its key range meets the range,
    and it holds a version older than the delete): merging would then drop entries, so
    the piece is not moved as it is."""
    return any(t.meets_keys(piece.min_key, piece.max_key) and piece.min_version < t.version for t in ranges)


def ranges_to_drop(
    base: Manifest, settled: Sequence[RangeTombstone], input_ids: frozenset[str]
) -> list[RangeTombstone]:
    """The `settled` range deletes (at or below the floor the merge applied, so it dropped
    every entry of its inputs they hide) still live in `base` that hide nothing once the
    inputs are replaced: no other source, in `base` as the CAS will find it, meets the
    range with an entry older than the delete. Moved segments never hold such an entry
    (`range_deleted_in`). When the merge is the bottom of the store (a full compaction,
    or the oldest level), the others are newer and the range goes. A range inside a newer
    settled one goes too, so deleting a prefix again and again leaves one row."""
    live = set(base.range_deletes)
    others = [r for r in base.segments if r.id not in input_ids]
    return [
        t
        for t in settled
        if t in live
        and (
            not any(range_deleted_in(r, (t,)) for r in others)
            # or a newer settled range holds it: every version a reader may ask for (at or
            # above the floor) sees that one, which hides all this one did
            or any(n.version > t.version and inside(t, n) for n in settled)
        )
    ]


def isolated(pieces: Sequence[SegmentRef]) -> list[SegmentRef]:
    """The pieces (segments) whose key range meets no other's, in key order."""
    ordered = sorted(pieces, key=lambda p: p.min_key)
    alone: list[SegmentRef] = []
    reach: bytes | None = None  # the largest max_key of the pieces before
    for i, piece in enumerate(ordered):
        before_clear = reach is None or reach < piece.min_key
        after_clear = i + 1 == len(ordered) or ordered[i + 1].min_key > piece.max_key
        if before_clear and after_clear:
            alone.append(piece)
        reach = piece.max_key if reach is None else max(reach, piece.max_key)
    return alone


def around(
    ranges: Iterable[tuple[bytes | None, bytes | None]], moved: Sequence[SegmentRef]
) -> list[tuple[bytes | None, bytes | None]]:
    """`ranges` (ascending [start, end)) less the key ranges of `moved` (disjoint, in key
    order): no merged range reaches into a moved segment, so the run's segments stay disjoint."""
    gaps: list[tuple[bytes | None, bytes | None]] = []
    start: bytes | None = None
    for piece in moved:
        gaps.append((start, piece.min_key))
        start = piece.max_key + b"\x00"  # the smallest key after it
    gaps.append((start, None))
    # Both lists ascend, so one walk intersects them: linear in ranges + moved segments
    # (a product of the two took 20 s, on the event loop, for 16,000 segments).
    out: list[tuple[bytes | None, bytes | None]] = []
    first = 0  # the first gap that may still meet a range: earlier ones end before it starts
    for r_start, r_end in ranges:
        while r_start is not None and _ends_by(gaps[first][1], r_start):
            first += 1
        for g_start, g_end in gaps[first:]:
            if r_end is not None and g_start is not None and g_start >= r_end:
                break  # this gap, and every later one, starts after the range ends
            lo = _later(r_start, g_start)
            hi = _earlier(r_end, g_end)
            if lo is None or hi is None or lo < hi:
                out.append((lo, hi))
    return out


def _ends_by(end: bytes | None, key: bytes) -> bool:
    """Whether a range ending at `end` (None: the last key) ends at or before `key`."""
    return end is not None and end <= key


def _later(a: bytes | None, b: bytes | None) -> bytes | None:
    """The later of two range starts (None: from the first key)."""
    return b if a is None else a if b is None else max(a, b)


def _earlier(a: bytes | None, b: bytes | None) -> bytes | None:
    """The earlier of two range ends (None: to the last key)."""
    return b if a is None else a if b is None else min(a, b)


@dataclass(frozen=True)
class SubCompaction:
    """One key range of a compaction: merge `inputs` within [start, end) into segments.

    Plain data, so that any executor can run it (`run_sub_compaction` here, an
    asyncio pool; a distributed engine could ship it to a worker).
    """

    start: bytes | None
    end: bytes | None
    inputs: tuple[SegmentRef, ...]  # newest first: an earlier input wins a tie
    others: tuple[SegmentRef, ...]  # live sources not merged (may hold older entries)
    floor: int  # see `history_floor`
    level: int
    target_segment_bytes: int
    readahead: int = BLOCK_TARGET_BYTES  # bytes per input GET (`compaction_readahead`)
    # Range deletes at or below `floor` meeting [start, end): the entries they hide are
    # dropped (no readable version sees them).
    ranges: tuple[RangeTombstone, ...] = ()
    codec: str = "bytes"  # the store's recorded codec: what atomic operands resolve to
    now: float = 0.0  # the compaction's clock: puts expired by then are tombstones (0: none)

    def tombstone_droppable(self, key: bytes, version: int) -> bool:
        """Whether a tombstone may go: no other source can hold an older entry of `key`."""
        return not any(r.min_version < version and r.may_contain(key) for r in self.others)


@dataclass
class SubCompactionResult:
    """What one key range wrote (plain data: it may come back from another process)."""

    parts: list[SegmentRef] = field(default_factory=list)  # in key order
    entries_in: int = 0
    entries_out: int = 0


async def run_sub_compaction(sub: SubCompaction, sources: Sources) -> SubCompactionResult:
    """Merge one key range into segments of about `target_segment_bytes`, each uploaded as
    it fills; returns them in key order. Abandoned outputs are left to GC (never committed)."""
    result = SubCompactionResult()
    # A small input (one GET reads it whole) is read through the cache: every key range
    # it overlaps would fetch it again otherwise. A large one is read around the cache,
    # so that a merge of GBs does not evict what readers use.
    # An input is read only outside the settled range deletes newer than all its entries
    # (everything it holds there would be dropped): compacting away a deleted range of
    # a million keys reads none of them.
    deleted = RangeIndex(sub.ranges, sub.floor)
    streams = [
        sources.blocks_in(ref, pieces, False, fill_cache=ref.size <= WHOLE_READ_MAX_BYTES, readahead=sub.readahead)
        for ref in sub.inputs
        if ref.overlaps(sub.start, sub.end)
        for pieces in [
            [(lo, hi) for lo, hi in deleted.unhidden(ref.max_version, sub.start, sub.end) if ref.overlaps(lo, hi)]
        ]
        if pieces
    ]
    output: SegmentOutput | None = None
    try:
        async for kept in _retained(merge(streams), sub, result):
            done = 0
            while done < len(kept):
                if output is None:
                    output = sources.segments.new_output(uniform_version=False)
                done = output.add_until(kept, done, sub.target_segment_bytes)
                await output.send_full_parts()
                if done < len(kept):  # this segment is full: the rest goes to the next one
                    full, output = output, None  # `finish` aborts the upload itself if it fails
                    result.parts.append(await full.finish(level=sub.level))
        if output is not None:
            last, output = output, None
            result.parts.append(await last.finish(level=sub.level))
    finally:
        if output is not None:
            await output.abort()
    return result


async def _retained(
    batches: AsyncIterator[list[Entry]], sub: SubCompaction, counts: SubCompactionResult
) -> AsyncIterator[list[Entry]]:
    """The entries to keep (`Retention`), in batches (a key's entries may run over
    several: an output segment ends only at a key boundary, `SegmentOutput.add_until`)."""
    retention = Retention(sub.floor, sub.tombstone_droppable, sub.codec, sub.now)
    ranges = sub.ranges
    async for batch in batches:
        counts.entries_in += len(batch)
        if ranges:  # what a range deleted at or below the floor hides, no readable version sees
            batch = [e for e in batch if not any(t.hides(e[0], e[1]) for t in ranges)]
        kept = retention.feed(batch)
        if kept:
            counts.entries_out += len(kept)
            yield kept
    last = retention.finish()
    if last:
        counts.entries_out += len(last)
        yield last


async def run_all(subs: Sequence[SubCompaction], sources: Sources, concurrency: int) -> list[SubCompactionResult]:
    """Run `subs`, at most `concurrency` at once; results in the order of `subs`.
    The first failure cancels the others (each aborts its unfinished upload)."""
    return await run_bounded(lambda sub: run_sub_compaction(sub, sources), subs, concurrency)


def _served(parts: Sequence[SegmentRef], ref: SegmentRef) -> list[SegmentRef]:
    """The segments of `ref` (a run's, or itself) as they serve its range: of a clipped
    run, those below its range left out and the one across its start clipped there."""
    if not ref.clipped or not ref.is_run:
        return list(parts)
    return [
        p if p.min_key >= ref.min_key else replace(p, min_key=ref.min_key, clipped=True)
        for p in parts
        if p.max_key >= ref.min_key
    ]


@dataclass
class _Step:
    """Key ranges of a compaction that commit together, and the moved segments among them."""

    subs: list[SubCompaction]
    moved: list[SegmentRef]
    end: bytes | None  # once the step commits, every key below `end` is merged (None: every key)


def _steps(
    subs: Sequence[SubCompaction], moved: Sequence[SegmentRef], samples: list[tuple[bytes, int]], step_bytes: int
) -> list[_Step]:
    """The compaction's key ranges (in key order) grouped into steps of about `step_bytes`
    of input each (`samples` say where the input lies, as for `plan_ranges`), each step
    with the moved segments below its end. A step's work is then bounded whatever the
    store's size, so its outputs commit well within the grace period (I8)."""
    keys = sorted(samples)
    starts = [k for k, _ in keys]
    upto = list(accumulate((size for _, size in keys), initial=0))  # bytes of the samples before each

    def input_bytes(sub: SubCompaction) -> int:
        lo = 0 if sub.start is None else bisect_left(starts, sub.start)
        hi = len(starts) if sub.end is None else bisect_left(starts, sub.end)
        return upto[hi] - upto[lo]

    groups: list[list[SubCompaction]] = [[]]
    pending = 0
    for sub in subs:
        if groups[-1] and pending >= step_bytes:
            groups.append([])
            pending = 0
        groups[-1].append(sub)
        pending += input_bytes(sub)
    steps: list[_Step] = []
    rest = sorted(moved, key=lambda p: p.min_key)
    for n, group in enumerate(groups):
        end = None if n == len(groups) - 1 else group[-1].end
        below = [p for p in rest if end is None or p.max_key < end]  # ranges stop short of moved segments
        rest = rest[len(below) :]
        steps.append(_Step(group, below, end))
    return steps


class _Progress:
    """A compaction between its steps: its inputs as the manifest now has them (clipped
    above the keys merged so far), its output so far, and its figures."""

    def __init__(self, inputs: list[SegmentRef], level: int) -> None:
        self.inputs = inputs
        self._count = len(inputs)
        self._level = level
        self.output: SegmentRef | None = None  # the committed output row, once a step committed
        self.parts: list[SegmentRef] = []  # the output's segments so far, in key order
        self._version = 0
        self._steps = 0
        self._subs = 0
        self._moved = 0
        self._entries_in = 0
        self._entries_out = 0
        self._bytes_written = 0

    def add(self, written: list[SegmentRef], moved: list[SegmentRef], results: list[SubCompactionResult]) -> None:
        """A step's outputs, before it commits. Moved segments take the run's level."""
        moved = [replace(p, level=self._level) for p in moved]
        self.parts = sorted([*self.parts, *written, *moved], key=lambda p: p.min_key)
        assert all(a.max_key < b.min_key for a, b in pairwise(self.parts)), "a sorted run's segments overlap"
        self._subs += len(results)
        self._moved += len(moved)
        self._entries_in += sum(r.entries_in for r in results) + sum(p.count for p in moved)
        self._entries_out += sum(r.entries_out for r in results) + sum(p.count for p in moved)
        self._bytes_written += sum(p.size for p in written)

    def clipped_at(self, end: bytes | None) -> list[SegmentRef]:
        """The inputs as they serve the keys from `end` on: clipped there, or gone when
        they end below it (all gone for None)."""
        if end is None:
            return []
        return [
            r if r.min_key >= end else replace(r, min_key=end, clipped=True) for r in self.inputs if r.max_key >= end
        ]

    def committed(self, output: SegmentRef | None, remaining: list[SegmentRef], version: int) -> None:
        self.output, self.inputs, self._version = output, remaining, version
        self._steps += 1

    def stats(self, *, done: bool) -> dict[str, int | bool]:
        """The commit record's figures: the whole compaction's so far."""
        return {
            "inputs": self._count,
            "level": self._level,
            "moved": self._moved,
            "bytes_written": self._bytes_written,
            "bytes_out": sum(p.size for p in self.parts),
            "step": self._steps + 1,
            "done": done,
        }

    def result(self, bytes_in: int) -> CompactionResult:
        return CompactionResult(
            version=self._version,
            inputs=self._count,
            entries_in=self._entries_in,
            entries_out=self._entries_out,
            bytes_in=bytes_in,
            bytes_out=sum(p.size for p in self.parts),
            level=self._level,
            outputs=len(self.parts),
            sub_compactions=self._subs,
            moved=self._moved,
            bytes_written=self._bytes_written,
            steps=self._steps,
        )


class Compactor:
    """Merges segments and runs of one store and commits the result."""

    def __init__(self, manifests: ManifestStore, sources: Sources, options: StoreOptions) -> None:
        self._manifests = manifests
        self._sources = sources
        self._options = options
        # What a step's age (I8) is measured with (tests move it on instead of waiting).
        self.clock: Callable[[], float] = time.monotonic

    async def compact(self, *, full: bool = False, run: SubCompactionRunner | None = None) -> CompactionResult | None:
        """Merge the next due group of sources (or all, with `full`) into one sorted run,
        in steps that each commit (`_steps`).

        `run` runs the key ranges (`SubCompaction`s) elsewhere; by default they run
        here, as many at once as `compaction_memory_bytes` holds.

        Returns None when nothing was due or a concurrent compaction took the
        same sources first (then the steps committed before stay). Costs a GET per
        input index or run not cached, ranged GETs of every input block but those of
        moved segments (`movable`), a PUT (or multipart upload) per output segment
        written, and per step a PUT of the run object so far (when it has several
        segments) and one manifest CAS (more on contention).
        """
        options = self._options
        base, _ = self._manifests.current
        inputs = choose_inputs(base, options.compaction_fanout, full=full, target_bytes=options.target_segment_bytes)
        if not inputs:
            return None
        level = max(r.level for r in inputs) + 1
        floor = history_floor(base, options, time.time())
        # Range deletes whose hidden entries no readable version sees: the merge drops those
        # entries, and the commit drops the range once no source outside the merge can
        # hold one (`_ranges_to_drop`).
        settled = tuple(t for t in base.range_deletes if t.version <= floor)
        moved, rewritten = await self._moves(inputs, floor, settled)
        codec = codec_of(base.settings.get("values"))
        input_ids = frozenset(r.id for r in inputs)
        others = tuple(r for r in base.segments if r.id not in input_ids)
        samples = await self._samples(rewritten, moved)
        ranges = plan_ranges(samples, _RANGE_SEGMENTS * options.target_segment_bytes)
        readahead = compaction_readahead(len(rewritten), options)
        subs = [
            SubCompaction(
                start,
                end,
                tuple(rewritten),
                others,
                floor,
                level,
                options.target_segment_bytes,
                readahead=readahead,
                ranges=tuple(t for t in settled if t.meets(start, end)),
                codec=codec,
                now=ttl.clock(),
            )
            for start, end in around(ranges, moved)
            if any(r.overlaps(start, end) for r in rewritten)
        ]
        per_sub = sub_compaction_bytes(len(rewritten), options.target_segment_bytes, readahead)
        concurrency = max(1, min(MAX_SUB_COMPACTIONS, options.compaction_memory_bytes // per_sub))
        progress = _Progress(list(inputs), level)
        # A step: as many key ranges' worth of input as run at once (1 GiB with the defaults:
        # about a minute at the measured 16 MB/s, far inside half the grace period; on a
        # cluster, one range per worker).
        width = concurrency if run is None else max(concurrency, run.width)
        step_bytes = width * _RANGE_SEGMENTS * options.target_segment_bytes
        for step in _steps(subs, moved, samples, step_bytes):
            started = self.clock()  # before any of the step's output is written
            results: list[SubCompactionResult] = []
            if step.subs:
                results = await (run_all(step.subs, self._sources, concurrency) if run is None else run.run(step.subs))
            written = [part for r in results for part in r.parts]
            progress.add(written, step.moved, results)
            ref = await self._output(progress.parts, level, started)
            remaining = progress.clipped_at(step.end)
            version = await self._commit(progress, ref, remaining, floor, started, settled)
            if version is None:
                return None
            progress.committed(ref, remaining, version)
        return progress.result(sum(r.size for r in inputs))

    async def _output(self, parts: list[SegmentRef], level: int, started: float) -> SegmentRef | None:
        """The manifest row of the output so far: its one segment, or a run object written now."""
        if not parts:
            return None
        if len(parts) == 1:
            return parts[0]
        self._check_age(started)
        return await self._sources.write_run(parts, level)

    async def _moves(
        self, inputs: Sequence[SegmentRef], floor: int, settled: Sequence[RangeTombstone] = ()
    ) -> tuple[list[SegmentRef], list[SegmentRef]]:
        """The input segments (a run's segments included) to move into the output as they
        are (`movable`, key range apart from every other input's, no tombstone, no entry a
        `settled` range delete hides), in key order; and the inputs left to merge (a run
        stays one, read around its moved segments)."""
        if len(inputs) == 1:
            return [], list(inputs)  # a full compaction of one large segment: it is there to split it
        pieces: list[SegmentRef] = []
        for ref in inputs:
            pieces += _served(await self._sources.parts(ref), ref)
        target = self._options.target_segment_bytes
        # A clipped piece's object holds keys below its range: it is merged, never moved.
        candidates = [
            p
            for p in isolated(pieces)
            if not p.clipped and movable(p, floor, target) and not range_deleted_in(p, settled)
        ]
        flags = await asyncio.gather(*(self._sources.segments.holds_no_tombstone(p) for p in candidates))
        moved = [p for p, clean in zip(candidates, flags, strict=True) if clean]
        moved_ids = {p.id for p in moved}
        return moved, [r for r in inputs if r.id not in moved_ids]

    def _check_age(self, started: float) -> None:
        """I8: never commit outputs that garbage collection may already have marked."""
        grace = grace_period_of(self._options)
        if self.clock() - started > grace / 2:
            raise CompactionTooSlowError(
                f"a step of the compaction ran {self.clock() - started:.0f} s, more than half of "
                f"segment_grace_period ({grace:.0f} s), so GC could collect its outputs before its commit (I8); "
                "it was abandoned (the steps committed before it stay). Set StoreOptions.segment_grace_period "
                "above twice the longest step, or lower compaction_memory_bytes to make steps smaller"
            )

    async def _samples(self, inputs: Sequence[SegmentRef], moved: Sequence[SegmentRef]) -> list[tuple[bytes, int]]:
        """Where the inputs' data to merge lies in the key space, to split it (`plan_ranges`):
        a run's segments (but the `moved` ones) as its run object lists them; inside a
        segment, its index rows."""
        moved_ids = {p.id for p in moved}
        samples: list[tuple[bytes, int]] = []
        segments = []
        for ref in inputs:
            if ref.is_run:
                parts = await self._sources.parts(ref)
                samples += [(part.min_key, part.size) for part in parts if part.id not in moved_ids]
            else:
                segments.append(ref)
        for found in await asyncio.gather(*(self._sources.segments.key_samples(ref) for ref in segments)):
            samples += found
        return samples

    async def _commit(
        self,
        progress: _Progress,
        ref: SegmentRef | None,
        remaining: list[SegmentRef],
        floor: int,
        started: float,
        settled: Sequence[RangeTombstone],
    ) -> int | None:
        """Commit one step in one manifest CAS: the inputs as they stand now (clipped by
        earlier steps) and the previous step's output give way to `remaining` (the inputs
        clipped above this step's keys; none after the last step) and to `ref`, the output
        so far. The version, or None if another compaction merged some of them first. The
        last step also drops the `settled` range deletes whose entries are now gone
        everywhere (until then the clipped inputs may still hold some)."""
        before = {r.id: r for r in progress.inputs}
        if progress.output is not None:
            before[progress.output.id] = progress.output
        compaction_id = uuid.uuid4().bytes
        stats = progress.stats(done=not remaining)

        async def load(fresh: bool) -> tuple[Manifest, str]:
            if fresh:
                await self._manifests.refresh()
            return self._manifests.current  # this process may have committed meanwhile

        async def write(current: tuple[Manifest, str]) -> int | None:
            base, etag = current
            found = next((r for r in base.log if compaction_id in r.txn_ids), None)
            if found is not None:
                return found.version  # an attempt of ours whose answer was lost was applied (I5)
            live = {r.id: r for r in base.segments}
            if any(live.get(i) != r for i, r in before.items()):
                return None  # another compaction merged some of them first
            self._check_age(started)
            record = CommitRecord(
                version=base.version + 1,
                time=time.time(),
                txn_ids=(compaction_id,),
                segment_id=None if ref is None else ref.id,
                key_count=0,
                min_key=b"",
                max_key=b"",
                keys=(),
                # `stats`: segments moved, bytes written and in the output so far (`describe`
                # reports the last compaction's write amplification from them)
                meta={"compaction": stats},
            )
            new = base.with_commit(
                record,
                self._options.commit_log_length,
                add=(*(() if ref is None else (ref,)), *remaining),
                remove=frozenset(before),
                history_floor=floor,
                drop_ranges=[] if remaining else ranges_to_drop(base, settled, frozenset(before)),
            )
            await self._manifests.compare_and_swap(new, etag)
            return new.version

        async with self._manifests.writing:
            return await read_modify_cas("a compaction", load, write)
