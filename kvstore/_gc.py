"""Garbage collection: deleting segments and manifest copies nothing needs (I7).

An object is deleted only if no current manifest, tagged manifest or
commit-log record references it, it is not a segment retired by compaction
less than the grace period ago, **and** the object itself is older than the
grace period. Listing happens before the manifest is read, so a segment
committed (or retired) during the run is seen as referenced; one written
during the run is not listed at all.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field

from ._manifest import CommitRecord
from ._manifest_store import ManifestStore
from ._objectstore import ObjectInfo, PreconditionFailed, RetryingObjectStore
from ._tags import TagStore

_FORGET_ATTEMPTS = 5


@dataclass
class GcReport:
    """What a garbage collection deleted (or would delete, in a dry run) and kept, and why."""

    dry_run: bool
    deleted: list[str] = field(default_factory=list)
    bytes_deleted: int = 0
    kept: dict[str, str] = field(default_factory=dict)  # object name -> reason


class GarbageCollector:
    """Collects one store's unreferenced segments and manifest copies."""

    def __init__(
        self,
        objects: RetryingObjectStore,
        manifests: ManifestStore,
        tags: TagStore,
        segments_prefix: str,
        log_length: int,
    ) -> None:
        self._objects = objects
        self._manifests = manifests
        self._tags = tags
        self._segments_prefix = segments_prefix
        self._log_length = log_length

    async def collect(self, *, grace_period: float, dry_run: bool) -> GcReport:
        """One pass. Costs a LIST of segments and manifest copies, a LIST and a GET
        per tag, a GET of each tagged manifest, a DELETE per deleted object and,
        when retired segments were deleted, one manifest CAS to forget them."""
        now = time.time()
        segment_objects = [o async for o in self._objects.list(self._segments_prefix)]
        snapshot_objects = [o async for o in self._objects.list(self._tags.snapshots_prefix)]
        tags = await self._tags.list()
        manifest = await self._manifests.refresh()

        reasons: dict[str, str] = {}
        for record in manifest.log:
            if record.segment_id is not None:
                reasons[record.segment_id] = f"named by the commit log (version {record.version})"
        for segment_id, retired_at in manifest.retired:
            if retired_at > now - grace_period:
                reasons[segment_id] = "retired by compaction less than the grace period ago"
        tagged_snapshots = set()
        for tag in tags:
            tagged_snapshots.add(self._tags.snapshot_name(tag.version))
            for ref in (await self._tags.manifest(tag)).segments:
                reasons[ref.id] = f"kept by tag {tag.name!r}"
        for ref in manifest.segments:
            reasons[ref.id] = "live"

        report = GcReport(dry_run)
        for info in segment_objects:
            segment_id = info.name[len(self._segments_prefix) :].removesuffix(".seg")
            self._judge(report, info, reasons.get(segment_id), now, grace_period)
        for info in snapshot_objects:
            reason = "manifest copy of a tag" if info.name in tagged_snapshots else None
            self._judge(report, info, reason, now, grace_period)
        for name in [] if dry_run else report.deleted:
            await self._objects.delete(name)
        deleted_ids = {n[len(self._segments_prefix) :].removesuffix(".seg") for n in report.deleted}
        if not dry_run and deleted_ids & {r[0] for r in manifest.retired}:
            await self._forget_retired(deleted_ids)
        return report

    def _judge(self, report: GcReport, info: ObjectInfo, reason: str | None, now: float, grace: float) -> None:
        if reason is None and now - info.last_modified < grace:
            reason = "younger than the grace period (may belong to a commit in progress)"
        if reason is None:
            report.deleted.append(info.name)
            report.bytes_deleted += info.size
        else:
            report.kept[info.name] = reason

    async def _forget_retired(self, deleted: set[str]) -> None:
        """Drop deleted segments from the manifest's retired list (best effort:
        a later run retries, and a stale entry only costs a few bytes)."""
        gc_id = uuid.uuid4().bytes
        for _ in range(_FORGET_ATTEMPTS):
            base, etag = self._manifests.current
            gone = frozenset(i for i, _ in base.retired if i in deleted)
            if not gone:
                return
            record = CommitRecord(
                base.version + 1, time.time(), (gc_id,), None, 0, b"", b"", (), {"gc": {"forgotten": len(gone)}}
            )
            new = base.with_commit(record, self._log_length).without_retired(gone)
            try:
                await self._manifests.compare_and_swap(new, etag)
                return
            except PreconditionFailed:
                await self._manifests.refresh()

