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
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from itertools import pairwise

from . import _ttl as ttl
from ._cas import read_modify_cas
from ._errors import CompactionTooSlowError
from ._manifest import CommitRecord, Manifest, SegmentRef
from ._manifest_store import ManifestStore
from ._merge import merge
from ._operands import codec_of, combine, resolve, settle, stacks
from ._options import StoreOptions, grace_period_of
from ._segment import BLOCK_TARGET_BYTES, Value
from ._segment_store import PART_BYTES, PARTS_IN_FLIGHT, WHOLE_READ_MAX_BYTES, Entry, SegmentOutput
from ._sources import Sources
from ._tasks import run_bounded

TombstoneCheck = Callable[[bytes, int], bool]
# Runs a compaction's key ranges elsewhere (e.g. on a Dask cluster): results in the order given.
SubCompactionRunner = Callable[[Sequence["SubCompaction"]], Awaitable[list["SubCompactionResult"]]]


@dataclass(frozen=True)
class CompactionResult:
    """What one compaction did.

    `bytes_out` is the size of its output run, the `moved` input segments (joined
    as they were, not rewritten) included; `bytes_written` the part it wrote.
    """

    version: int  # the version its commit created
    inputs: int  # segments merged
    entries_in: int
    entries_out: int  # after dropping shadowed versions and tombstones
    bytes_in: int
    bytes_out: int
    level: int
    outputs: int = 0  # segments in the output run (written and moved)
    sub_compactions: int = 0  # key ranges merged
    moved: int = 0  # input segments that joined the output run as they were (not rewritten)
    bytes_written: int = 0  # bytes of the segments written (bytes_out less the moved ones)

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
# A sub-compaction covers about this many output segments' worth of input: enough
# that its last, partly filled segment is a small share of its output.
_RANGE_SEGMENTS = 4
# At most this many sub-compactions run at once (more do not help on a few cores).
MAX_SUB_COMPACTIONS = 4


def sub_compaction_bytes(inputs: int, target_segment_bytes: int) -> int:
    """Memory one sub-compaction holds: an input block and the one prefetched per
    input, and its output's unsent bytes and parts in flight (`SegmentOutput`),
    counted twice: they are copied once on their way out."""
    reading = inputs * 2 * _DECODED_BLOCK_FACTOR * BLOCK_TARGET_BYTES
    writing = 2 * min(target_segment_bytes, (PARTS_IN_FLIGHT + 1) * PART_BYTES) + BLOCK_TARGET_BYTES
    return reading + writing


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
    streams = [
        sources.blocks(ref, sub.start, sub.end, False, fill_cache=ref.size <= WHOLE_READ_MAX_BYTES)
        for ref in sub.inputs
        if ref.overlaps(sub.start, sub.end)
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
    async for batch in batches:
        counts.entries_in += len(batch)
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


class Compactor:
    """Merges segments and runs of one store and commits the result."""

    def __init__(self, manifests: ManifestStore, sources: Sources, options: StoreOptions) -> None:
        self._manifests = manifests
        self._sources = sources
        self._options = options

    async def compact(self, *, full: bool = False, run: SubCompactionRunner | None = None) -> CompactionResult | None:
        """Merge the next due group of sources (or all, with `full`) into one sorted run.

        `run` runs the key ranges (`SubCompaction`s) elsewhere; by default they run
        here, as many at once as `compaction_memory_bytes` holds.

        Returns None when nothing was due or a concurrent compaction took the
        same sources first. Costs a GET per input index or run not cached, ranged
        GETs of every input block but those of moved segments (`movable`), a PUT
        (or multipart upload) per output segment written, a PUT of the run object
        when there are several segments, and one manifest CAS (more on contention).
        """
        options = self._options
        base, _ = self._manifests.current
        inputs = choose_inputs(base, options.compaction_fanout, full=full, target_bytes=options.target_segment_bytes)
        if not inputs:
            return None
        level = max(r.level for r in inputs) + 1
        floor = history_floor(base, options, time.time())
        codec = codec_of(base.settings.get("values"))
        moved, rewritten = await self._moves(inputs, floor)
        input_ids = frozenset(r.id for r in inputs)
        others = tuple(r for r in base.segments if r.id not in input_ids)
        ranges = plan_ranges(await self._samples(rewritten, moved), _RANGE_SEGMENTS * options.target_segment_bytes)
        subs = [
            SubCompaction(
                start, end, tuple(rewritten), others, floor, level, options.target_segment_bytes, codec, ttl.clock()
            )
            for start, end in around(ranges, moved)
            if any(r.overlaps(start, end) for r in rewritten)
        ]
        per_sub = sub_compaction_bytes(len(rewritten), options.target_segment_bytes)
        concurrency = max(1, min(MAX_SUB_COMPACTIONS, options.compaction_memory_bytes // per_sub))
        started = time.monotonic()  # before any output is written
        results: list[SubCompactionResult] = []
        if subs:
            results = await (run_all(subs, self._sources, concurrency) if run is None else run(subs))
        written = [part for r in results for part in r.parts]
        # Moved segments take the run's level; they lie between the merged ranges (`around`).
        parts = sorted([*written, *(replace(p, level=level) for p in moved)], key=lambda p: p.min_key)
        assert all(a.max_key < b.min_key for a, b in pairwise(parts)), "a sorted run's segments overlap"
        ref: SegmentRef | None
        if not parts:
            ref = None
        elif len(parts) == 1:
            ref = parts[0]
        else:
            self._check_age(started)
            ref = await self._sources.write_run(parts, level)
        bytes_written = sum(p.size for p in written)
        bytes_out = sum(p.size for p in parts)
        stats = {"moved": len(moved), "bytes_written": bytes_written, "bytes_out": bytes_out}
        version = await self._commit(inputs, ref, level, floor, started, stats)
        if version is None:
            return None
        moved_entries = sum(p.count for p in moved)
        return CompactionResult(
            version=version,
            inputs=len(inputs),
            entries_in=sum(r.entries_in for r in results) + moved_entries,
            entries_out=sum(r.entries_out for r in results) + moved_entries,
            bytes_in=sum(r.size for r in inputs),
            bytes_out=bytes_out,
            level=level,
            outputs=len(parts),
            sub_compactions=len(subs),
            moved=len(moved),
            bytes_written=bytes_written,
        )

    async def _moves(self, inputs: Sequence[SegmentRef], floor: int) -> tuple[list[SegmentRef], list[SegmentRef]]:
        """The input segments (a run's segments included) to move into the output as they
        are (`movable`, key range apart from every other input's, no tombstone), in key
        order; and the inputs left to merge (a run stays one, read around its moved segments)."""
        if len(inputs) == 1:
            return [], list(inputs)  # a full compaction of one large segment: it is there to split it
        pieces: list[SegmentRef] = []
        for ref in inputs:
            pieces += await self._sources.parts(ref)
        target = self._options.target_segment_bytes
        candidates = [p for p in isolated(pieces) if movable(p, floor, target)]
        flags = await asyncio.gather(*(self._sources.segments.holds_no_tombstone(p) for p in candidates))
        moved = [p for p, clean in zip(candidates, flags, strict=True) if clean]
        moved_ids = {p.id for p in moved}
        return moved, [r for r in inputs if r.id not in moved_ids]

    def _check_age(self, started: float) -> None:
        """I8: never commit outputs that garbage collection may already have marked."""
        grace = grace_period_of(self._options)
        if time.monotonic() - started > grace / 2:
            raise CompactionTooSlowError(
                f"the compaction ran {time.monotonic() - started:.0f} s, more than half of segment_grace_period "
                f"({grace:.0f} s), so GC could collect its outputs before its commit (I8); it was abandoned. "
                "Set StoreOptions.segment_grace_period above twice the longest compaction"
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
        inputs: Sequence[SegmentRef],
        ref: SegmentRef | None,
        level: int,
        floor: int,
        started: float,
        stats: dict[str, int],
    ) -> int | None:
        """Replace `inputs` by `ref` in one manifest CAS; the version, or None if another
        compaction merged some of them first."""
        input_ids = frozenset(r.id for r in inputs)
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
                # `stats`: segments moved, bytes written and in the output (`describe` reports
                # the last compaction's write amplification from them)
                meta={"compaction": {"inputs": len(inputs), "level": level, **stats}},
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
            return await read_modify_cas("a compaction", load, write)
