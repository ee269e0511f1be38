"""Garbage collection: deleting segments, value objects and manifest copies nothing needs (I7).

Mark and sweep across passes. An object is *unreferenced* when no current
manifest, tagged manifest or commit-log record names it. A pass deletes an
unreferenced object only if it was already unreferenced when some pass saw it
at least `grace_period` ago **and** the object itself is older than that.
The marks live in `<prefix>gc/marks` (replaced with If-Match by GC runs
only), so the manifest carries no GC state and commits never contend with GC.

Why both clocks: a segment replaced by compaction may still be read through
an older snapshot; it is deleted only a grace period after it stopped being
referenced. A segment written by a commit in progress is unreferenced but
young; it is kept, and not even marked, until it is older than the grace
period, and writers never commit a segment that old (I8). (A mark taken
while it was young could outlive its commit and its compaction, and let it
go too soon.) So an orphan goes after two grace periods, a segment
compacted away after one (counted from the first run that sees it so).

Out-of-line value objects (`_value_store.py`) follow the same rules: one is
referenced while a segment kept for any of those reasons holds a reference
to it. Segments whose footer says they hold references (HAS_VALUE_REFS) are
read whole once per engine to list them (segments are immutable: the lists
are cached by segment id); a segment named only by the commit log is found
with a HEAD. A value object written for a commit that never landed is young,
then unreferenced: it goes like an orphan segment.

The references are computed first (they are bounded by the live segments);
the listing is then judged object by object as it arrives and the doomed
deleted 1000 at a time, so a run holds no list of the store's objects. A
segment committed during the run is young, hence kept; and each batch is
checked against the latest manifest before it goes (`_sweep`). The report
counts what it keeps, by reason, and names only a bounded number of the
objects deleted and waiting.

The grace period is the store's, not the caller's: the manifest records the
longest `segment_grace_period` its writers opened it with, and a run never
applies less (`gc_grace_period`), since a writer commits segments up to half
of it old (I8) and a shorter period would delete the segment of a commit in
flight.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import msgpack

from ._cas import read_modify_cas
from ._envelope import seal, unseal
from ._errors import CorruptionError, GracePeriodTooShortError, ValidationError
from ._layout import Layout
from ._manifest import Manifest, SegmentRef, invalid_grace_record, recorded_grace_period
from ._manifest_store import ManifestStore
from ._objectstore import MAX_DELETE_BATCH, ObjectInfo, ObjectNotFound, RetryingObjectStore
from ._segment import value_ref_of
from ._sources import Sources
from ._tags import Tag, TagStore

_FORMAT = 1
_MAGIC = b"KVGC"


# A report lists at most this many names of each kind (deleted, waiting); it counts them all.
REPORT_NAMES_MAX = 10_000


@dataclass
class GcReport:
    """What a garbage collection deleted (or would delete, in a dry run) and kept, and why.

    A run holds counts, not the store's object names: it lists only the objects it
    deleted and those waiting out the grace period, the first `REPORT_NAMES_MAX` of
    each (`objects_deleted` and `objects_waiting` count them all).

    Attributes:
        dry_run: nothing was deleted and no marks were saved.
        grace_period: the grace period the run applied: at least the store's recorded
            `segment_grace_period`.
        deleted: names of the objects deleted (would be, in a dry run), the first
            REPORT_NAMES_MAX.
        objects_deleted: how many were deleted.
        bytes_deleted: their bytes.
        kept: why objects were kept -> how many were kept for that reason (one
            reason, `NAMED_BY_LOG`, for every object a commit-log record names).
        commit_log_versions: the oldest and newest commit-log versions that kept an
            object, or None.
        collectable_after: unreferenced objects kept only for the grace period -> when
            a run may delete them (in a dry run, assuming a real run marks them now),
            the first REPORT_NAMES_MAX.
        objects_waiting: how many objects wait out the grace period.
        first_collectable: the earliest of their times (None if none waits).
        last_collectable: the latest of their times (None if none waits).
    """

    # The reason of every object a commit-log record names (`kept` counts them together).
    NAMED_BY_LOG: ClassVar[str] = "named by the commit log"

    dry_run: bool
    grace_period: float = 0.0
    deleted: list[str] = field(default_factory=list)
    objects_deleted: int = 0
    bytes_deleted: int = 0
    kept: dict[str, int] = field(default_factory=dict)
    commit_log_versions: tuple[int, int] | None = None
    collectable_after: dict[str, float] = field(default_factory=dict)
    objects_waiting: int = 0
    first_collectable: float | None = None
    last_collectable: float | None = None


# Why an object is kept, and the commit-log version that names it (if one does).
_Reason = tuple[str, "int | None"]


class GarbageCollector:
    """Collects one store's unreferenced segments and manifest copies."""

    def __init__(
        self,
        objects: RetryingObjectStore,
        manifests: ManifestStore,
        tags: TagStore,
        sources: Sources,
        layout: Layout,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._objects = objects
        self._sources = sources
        self._manifests = manifests
        self._tags = tags
        self._layout = layout
        self._marks_name = layout.gc_marks
        # Wall-clock time, compared with objects' last-modified times (tests move it on).
        self._clock = clock
        # Segment id -> the value object ids it references (segments are immutable);
        # trimmed after each run to the segments that run saw.
        self._value_ids: dict[str, frozenset[str]] = {}
        self._seen: set[str] = set()
        self._no_object: set[str] = set()  # log-named segment ids without an object (inline)
        self._any_values = True  # whether the run found any value object (`collect`)

    async def collect(self, *, grace_period: float | None, own_grace_period: float, dry_run: bool) -> GcReport:
        """One pass, streaming: objects are judged as the listing arrives and deleted
        in batches. Costs a LIST and a GET per tag, a GET per tagged manifest, a LIST
        of segments and of manifest copies (a request per 1000 objects), a
        conditional GET of the manifest and (unless a dry run) a DeleteObjects per
        1000 deleted objects, and a GET and (unless a dry run) a PUT of the marks.

        `grace_period` None means the longer of the store's recorded grace period and
        `own_grace_period`; a shorter one than recorded raises GracePeriodTooShortError.
        """
        tags = await self._tags.list()
        manifest = await self._manifests.refresh()
        grace = gc_grace_period(manifest, grace_period, own_grace_period, self._layout.manifest)
        # After the manifest read: an object it does not name was unreferenced by then,
        # so a mark stamped now never predates its last reference (I6).
        now = self._clock()
        # No value object now (one LIST): then no segment of this manifest or an older
        # one (a tag's) references any, since value objects are written before the commit
        # that names them, and segments need not be read. (One made after this is young.)
        self._any_values = await self._values_exist()
        reasons = await self._referenced(manifest, tags)
        marks, marks_etag = await self._read_marks()
        report = GcReport(dry_run, grace)
        new_marks: dict[str, float] = {}
        doomed: list[ObjectInfo] = []
        for prefix in (self._layout.segments_prefix, self._layout.values_prefix, self._layout.snapshots_prefix):
            async for info in self._objects.list(prefix):
                if self._keep(info, reasons, marks, now, grace, report, new_marks):
                    continue
                doomed.append(info)
                if len(doomed) == MAX_DELETE_BATCH:
                    manifest = await self._sweep(doomed, manifest, reasons, report)
                    doomed = []
        if doomed:
            await self._sweep(doomed, manifest, reasons, report)
        if not dry_run:
            await self._write_marks(new_marks, marks_etag)
        self._value_ids = {k: v for k, v in self._value_ids.items() if k in self._seen}
        self._no_object &= self._seen
        self._seen = set()
        return report

    async def _referenced(self, manifest: Manifest, tags: Sequence[Tag]) -> dict[str, _Reason]:
        """Every object the manifest, its commit log or a tag names -> why it is kept."""
        reasons: dict[str, _Reason] = {}
        live = {ref.id for ref in manifest.segments}
        for record in manifest.log:
            if record.segment_id is not None:  # a commit's segment, or a compaction's segment or run
                why = (GcReport.NAMED_BY_LOG, record.version)
                reasons[self._layout.segment(record.segment_id)] = reasons[self._layout.run(record.segment_id)] = why
                if record.segment_id not in live:  # compacted away, its object kept by the log
                    await self._keep_values_of_logged(record.segment_id, why, reasons)
        for tag in tags:
            reasons[self._layout.snapshot(tag.version)] = (f"manifest copy of tag {tag.name!r}", None)
            tagged = await self._tags.manifest(tag)
            for ref in (*tagged.segments, *(i.segment for i in tagged.intents if i.segment is not None)):
                await self._keep_source(ref, f"kept by tag {tag.name!r}", reasons)
        for ref in manifest.segments:
            await self._keep_source(ref, "live", reasons)
        for intent in manifest.intents:  # a prepared cross-partition write, perhaps committed already
            if intent.segment is not None:  # a read-only intent wrote nothing
                await self._keep_source(intent.segment, "an intent's", reasons)
        return reasons

    async def _keep_source(self, ref: SegmentRef, why: str, reasons: dict[str, _Reason]) -> None:
        """Keep the objects `ref` reads: its segment, or its run object and the run's segments."""
        if not ref.is_run:
            reasons[self._layout.segment(ref.id)] = (why, None)
            await self._keep_values(ref, (f"{why} (a value its segment names)", None), reasons)
            return
        reasons[self._layout.run(ref.id)] = (why, None)
        for part in (await self._sources.run(ref)).parts:
            reasons[self._layout.segment(part.id)] = (f"{why} (in a sorted run)", None)
            await self._keep_values(part, (f"{why} (a value its segment names)", None), reasons)

    async def _values_exist(self) -> bool:
        listing = self._objects.list(self._layout.values_prefix)
        try:
            return await anext(listing, None) is not None
        finally:
            close = getattr(listing, "aclose", None)  # an async generator: end its request now
            if close is not None:
                await close()

    async def _keep_values(self, ref: SegmentRef, why: _Reason, reasons: dict[str, _Reason]) -> None:
        """Keep the value objects the segment `ref` references."""
        if not self._any_values:
            return
        self._seen.add(ref.id)
        ids = self._value_ids.get(ref.id)
        if ids is None:
            ids = frozenset()
            if await self._sources.segments.holds_value_refs(ref):
                found: set[str] = set()
                async for entries in self._sources.segments.blocks(ref, None, None, False, fill_cache=False):
                    found.update(held.id for _, _, v in entries if (held := value_ref_of(v)) is not None)
                ids = frozenset(found)
            self._value_ids[ref.id] = ids
        for value_id in ids:
            reasons.setdefault(self._layout.value(value_id), why)

    async def _keep_values_of_logged(self, segment_id: str, why: _Reason, reasons: dict[str, _Reason]) -> None:
        """Keep the value objects of a segment only the commit log names (its object, if
        there is one: an inline segment has none, a compaction's id may name a run)."""
        if not self._any_values:
            return
        self._seen.add(segment_id)
        if segment_id in self._no_object:
            return
        if segment_id not in self._value_ids:
            try:
                info = await self._objects.head(self._layout.segment(segment_id))
            except ObjectNotFound:
                # Not `_value_ids`: a tagged manifest may still carry it inline.
                self._no_object.add(segment_id)
                return
            ref = SegmentRef(segment_id, b"", b"", 0, info.size, 0, 0, commit_version=0)
            await self._keep_values(ref, why, reasons)
            return
        await self._keep_values(SegmentRef(segment_id, b"", b"", 0, 0, 0, 0), why, reasons)

    def _keep(
        self,
        info: ObjectInfo,
        reasons: dict[str, _Reason],
        marks: dict[str, float],
        now: float,
        grace_period: float,
        report: GcReport,
        new_marks: dict[str, float],
    ) -> bool:
        """Whether `info` stays; if so, count why in `report` (and record its mark in `new_marks`)."""
        # Only an object older than the grace period is marked. A younger one may be a
        # segment not committed yet: committed and compacted away again before the next
        # run, a mark taken before its commit would let it go less than a grace period
        # after it stopped being referenced (I6). An older one never becomes referenced
        # again, since writers commit no segment that old (I8).
        young = not now - info.last_modified >= grace_period  # so a NaN could never make it old
        marked_at = now if young else marks.get(info.name, now)
        referenced = reasons.get(info.name)
        waiting = None if referenced else self._too_young(info, marked_at, now, grace_period)
        reason = referenced or (None if waiting is None else (waiting, None))
        if reason is None:
            return False
        _count_kept(report, reason)
        if referenced is None:
            if not young:
                new_marks[info.name] = marked_at
            first_marked = info.last_modified + grace_period if young else marked_at
            _count_waiting(report, info.name, first_marked + grace_period)
        return True

    async def _sweep(
        self, doomed: list[ObjectInfo], seen: Manifest, reasons: dict[str, _Reason], report: GcReport
    ) -> Manifest:
        """Delete `doomed` (unless a dry run) but what a manifest newer than `seen` names.

        The references were computed before these objects were listed, so a segment
        committed since is not in them. It was young when the run read the manifest
        (writers commit no segment older than half the grace period, I8, and `now` is
        taken right after that read), so `_keep` kept it anyway; still, as when GC
        listed before reading the manifest, nothing goes that the latest manifest
        names: a conditional GET per batch, and new references only if it moved.
        Returns the manifest read.
        """
        manifest = await self._manifests.refresh()
        if manifest.version != seen.version:
            # Tags were read once: a tag made during the run names segments its manifest
            # had, which were either in the references already or committed since.
            for name, why in (await self._referenced(manifest, ())).items():
                reasons.setdefault(name, why)
        names: list[str] = []
        for info in doomed:
            reason = reasons.get(info.name)
            if reason is not None:
                _count_kept(report, reason)
                continue
            names.append(info.name)
            _count_deleted(report, info)
        if names and not report.dry_run:
            await self._objects.delete_many(names)
        return manifest

    @staticmethod
    def _too_young(info: ObjectInfo, marked_at: float, now: float, grace: float) -> str | None:
        if now - info.last_modified < grace:
            return "younger than the grace period (may belong to a commit in progress)"
        if now - marked_at < grace:
            return "unreferenced for less than the grace period (an older snapshot may still read it)"
        return None

    async def _read_marks(self) -> tuple[dict[str, float], str | None]:
        try:
            blob = await self._objects.get(self._marks_name)
        except ObjectNotFound:
            return {}, None
        assert blob is not None
        payload = unseal(blob.data, _MAGIC, _FORMAT, self._marks_name, "gc marks")
        return dict(msgpack.unpackb(payload, raw=False)), blob.etag

    async def _write_marks(self, marks: dict[str, float], etag: str | None) -> None:
        """Save the marks; a concurrent run's marks win (ours are only ever later)."""

        async def load(fresh: bool) -> tuple[dict[str, float], str | None]:
            if not fresh:
                return marks, etag
            theirs, their_etag = await self._read_marks()
            # Earliest mark wins: a later mark only delays deletion, never hastens it.
            # (Our own write, applied with its answer lost, merges into itself.)
            return {name: min(at, theirs.get(name, at)) for name, at in marks.items()}, their_etag

        async def write(state: tuple[dict[str, float], str | None]) -> None:
            merged, current = state
            data = seal(_MAGIC, _FORMAT, msgpack.packb(merged, use_bin_type=True))
            if current is None:
                await self._objects.put_if_absent(self._marks_name, data)
            else:
                await self._objects.put_if_match(self._marks_name, data, current)

        await read_modify_cas("garbage collection's marks", load, write)


def _count_kept(report: GcReport, reason: _Reason) -> None:
    why, log_version = reason
    report.kept[why] = report.kept.get(why, 0) + 1
    if log_version is not None:
        lo, hi = report.commit_log_versions or (log_version, log_version)
        report.commit_log_versions = (min(lo, log_version), max(hi, log_version))


def _count_waiting(report: GcReport, name: str, when: float) -> None:
    report.objects_waiting += 1
    if len(report.collectable_after) < REPORT_NAMES_MAX:
        report.collectable_after[name] = when
    first, last = report.first_collectable, report.last_collectable
    report.first_collectable = when if first is None else min(first, when)
    report.last_collectable = when if last is None else max(last, when)


def _count_deleted(report: GcReport, info: ObjectInfo) -> None:
    report.objects_deleted += 1
    report.bytes_deleted += info.size
    if len(report.deleted) < REPORT_NAMES_MAX:
        report.deleted.append(info.name)


def gc_grace_period(manifest: Manifest, requested: float | None, own: float, manifest_name: str) -> float:
    """The grace period a GC run applies: `requested`, or by default the longer of the
    store's recorded one and `own`; never shorter than the recorded one (I7, I8).

    A store that records none (made before it was recorded, and not opened for writing
    since) is held to `own`. One that records an invalid period (NaN, inf: only an
    older release could write one) is refused: GC cannot know how long its writers
    keep segments, and every writable open replaces the record with a valid one.
    Comparisons are written so that a NaN can never pass them.
    """
    if requested is not None and not (math.isfinite(requested) and requested >= 0):
        raise ValidationError(f"grace_period must be a finite number of seconds >= 0, not {requested!r}")
    invalid = invalid_grace_record(manifest)
    if invalid is not None:
        raise CorruptionError(
            f"the store records segment_grace_period={invalid!r}, not a finite number of seconds in "
            "(0, 30 days], so GC cannot know how long its writers keep segments and deletes nothing. "
            "Open the store for writing once (it records the opener's period in place of it), then run GC again",
            object_name=manifest_name,
        )
    recorded = recorded_grace_period(manifest)
    minimum = own if recorded is None else recorded
    if requested is None:
        return max(minimum, own)
    if not requested >= minimum:
        raise GracePeriodTooShortError(
            f"grace_period={requested:g} s is shorter than the store's segment_grace_period "
            f"({minimum:g} s, recorded by its writers): a writer may commit a segment up to "
            f"{minimum / 2:g} s after writing it (I8), so GC could delete the data of a commit in "
            f"flight. Use at least {minimum:g} s, or leave the grace period out",
            requested=requested,
            minimum=minimum,
        )
    return requested
