"""The engine of one store: its manifest, segments, caches, committer, compactor,
tags, garbage collection and verification, built in one place (`open_engine`).

An engine speaks bytes and versions. The faces above it (`Store`, `SyncStore`,
the CLI) validate and encode what users pass, then call it; they never reach
past it to the object store. One store is one engine today. A store split
into key-range partitions will be several engines, each with its own
manifest, under one face, so an engine knows nothing of faces or other engines,
and of value codecs only that a commit's values must fit the codec its
base manifest records (`_codec.writes_fit`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import AsyncIterable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from . import _fork
from ._bulk import Batch, as_sorted_run, write_chunks
from ._cache import ByteLRU
from ._codec import ValueMode
from ._commit import CommitRequest, Committer
from ._compact import CompactionResult, Compactor, SubCompactionRunner, choose_inputs
from ._disk_cache import DiskCache
from ._errors import (
    ClosedError,
    ContentionError,
    CorruptionError,
    FutureVersionError,
    JobAlreadyCommittedError,
    KvStoreError,
    ReadOnlyError,
    StoreNotFoundError,
    TransactionTooOldError,
    UnsupportedFormatError,
    UsedAfterForkError,
    ValidationError,
    VersionNotRetainedError,
)
from ._gc import GarbageCollector, GcReport
from ._layout import Layout
from ._manifest import GRACE_SETTING, CommitRecord, Manifest, SegmentRef, recorded_grace_period
from ._manifest_store import ManifestStore
from ._objectstore import ObjectNotFound, ObjectStore, RetryingObjectStore
from ._options import StoreOptions, grace_period_of, resolve_options
from ._probe import check_conditional_writes
from ._segment import Value, value_ref_of
from ._segment_store import Entry, SegmentOutput, SegmentStore
from ._snapshot import SnapshotView
from ._sources import Sources
from ._tags import Tag, TagStore
from ._tasks import run_bounded
from ._url import Location
from ._value_refs import ValueRef
from ._value_store import ValueStore

if TYPE_CHECKING:
    from ._two_phase import Decisions

_log = logging.getLogger("kvstore")
# Value objects of one commit written at once (each a PUT, or a multipart upload of its own).
VALUES_IN_FLIGHT = 4
# `verify` reads each small segment whole once, then its blocks from this.
_VERIFY_CACHE_BYTES = 2 * 1024 * 1024
# How long past twice intent_timeout a split waits for the partition's intents to be
# resolved before giving up, and how often it looks again meanwhile.
SEAL_WAIT_SECONDS = 30.0
SEAL_POLL_SECONDS = 0.1
# A bulk load's sorted run enters at level 0, as any commit does: a lower level must hold
# only newer entries than a higher one (compaction folds atomic operands onto the next
# older entry in its merge, which must be the key's next older entry in the store).
BULK_RUN_LEVEL = 0
# Entries a split's copy hands its segment writer at once.
COPY_BATCH = 1024


@dataclass
class VerifyReport:
    """What `Store.verify` found: objects checked and the damaged ones with the reason."""

    version: int
    objects_checked: int = 0
    damaged: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.damaged


class Engine:
    """One store's machinery. Build it with `open_engine`; close it with `close`."""

    def __init__(
        self,
        url: str,
        objects: RetryingObjectStore,
        layout: Layout,
        manifests: ManifestStore,
        options: StoreOptions,
        read_only: bool,
        decisions: Decisions | None = None,
        owns_objects: bool = True,
    ) -> None:
        self.url = url
        # Decisions of cross-partition transactions (None: a store that is not a partition).
        self.decisions = decisions
        # False when partitions share one object store (`open_engine(objects=...)`): whoever
        # passed it closes it, once, after every engine.
        self._owns_objects = owns_objects
        self.read_only = read_only
        self.options = options
        self.layout = layout
        self.objects = objects
        self._manifests = manifests
        self._cache = ByteLRU(options.cache_bytes)
        self._disk_cache = None if options.cache_dir is None else DiskCache(options.cache_dir, options.cache_dir_bytes)
        self._segments = SegmentStore(objects, layout, self._cache, self._disk_cache)
        self._sources = Sources(objects, layout, self._segments, self._cache)
        self._committer = Committer(manifests, self._segments, options, self._after_commit, decisions)
        self._resolving: asyncio.Task[None] | None = None  # `resolve_soon`'s background resolve
        self._resolve_again = False  # another `resolve_soon` came while it ran
        self._compactor = Compactor(manifests, self._sources, options)
        self._tags = TagStore(objects, layout)
        # The wall clock GC compares objects' ages with (tests move it on instead of waiting).
        self.wall_clock: Callable[[], float] = time.time
        self._gc = GarbageCollector(objects, manifests, self._tags, self._sources, layout, lambda: self.wall_clock())
        self._last_gc = time.monotonic()
        self._background: asyncio.Task[None] | None = None
        self._latest: SnapshotView | None = None
        self.closed = False
        # A forked child must neither use nor finalise what this engine holds (`_fork`).
        self._pid = os.getpid()
        self._fork_generation = _fork.generation()
        _fork.keep_in_children(self)

    # ------------------------------------------------------------------ state, no requests

    @property
    def manifest(self) -> Manifest:
        """The newest manifest this process has seen (no request)."""
        return self._manifests.current[0]

    @property
    def store_id(self) -> str:
        return self.manifest.store_id

    @property
    def sources(self) -> Sources:
        """Where this engine's views read segments from (a split copies a sealed view)."""
        return self._sources

    @property
    def forked(self) -> bool:
        """Whether this process is a fork of the one that opened the engine."""
        return _fork.forked_since(self._fork_generation)

    def check_open(self) -> None:
        self.check_same_process()
        if self.closed:
            raise ClosedError(f"{self.url} was closed; open it again with kvstore.open()")

    def check_same_process(self) -> None:
        """Raise UsedAfterForkError in a forked child: the connections, queued commits and
        background work belong to the parent, and no thread of the child runs them."""
        if self.forked:
            raise UsedAfterForkError(
                f"{self.url} was opened in process {self._pid}, and this process ({os.getpid()}) is a fork "
                "of it: an async kvstore.Store belongs to the process and event loop that opened it. Open the "
                "store again in this process (`async with kvstore.open(url) as db:` in its own event loop, "
                "e.g. in the worker's start-up hook); a blocking kvstore.open_sync store re-opens by itself"
            )

    def check_writable(self, what: str) -> None:
        self.check_open()
        if self.read_only:
            raise ReadOnlyError(f"this store was opened with read_only=True; {what}: open it without")

    def statistics(self) -> dict[str, Any]:
        """Counters: object-store requests by kind, cache use, commits and conflicts."""
        c = self._committer.stats
        return {
            "version": self.manifest.version,
            "requests": dict(self.objects.requests),
            "cache": {"bytes": self._cache.size, "hits": self._cache.hits, "misses": self._cache.misses},
            "commits": c.commits,
            "transactions_committed": c.transactions,
            "conflicts": c.conflicts,
            "cas_retries": c.cas_retries,
            "ambiguous_commits_resolved": c.ambiguous_resolved,
            "ambiguous_creates_resolved": self.objects.own_creates_found,
            "intents_resolved": c.intents_resolved,
            "intents_aborted": c.intents_aborted,
        }

    # ------------------------------------------------------------------ reads

    async def refresh(self) -> Manifest:
        """The latest manifest: one conditional GET (304 and no body when unchanged)."""
        self.check_open()
        return await self._manifests.refresh()

    async def latest_view(self) -> SnapshotView:
        """A view of the latest version; one conditional GET unless
        `StoreOptions.max_staleness` allows the last one."""
        self.check_open()
        manifest = await self._manifests.refresh_if_older_than(self.options.max_staleness)
        if self._latest is None or self._latest.manifest is not manifest or not self._latest.reusable:
            # A view that found an intent undecided, or is looking one up, is not reused: its
            # decision may have been made since, and a transaction started after it must see
            # it (real-time order).
            self._latest = self._view(manifest)
        return self._latest

    def _view(self, manifest: Manifest, version: int | None = None) -> SnapshotView:
        return SnapshotView(manifest, self._sources, version, self.decisions)

    async def latest_view_for(self, keys: Sequence[bytes]) -> SnapshotView:
        """`latest_view`, with the index reads of `keys` (`SnapshotView.locate`) under way
        on the manifest already held while it is checked: a cold batch waits for the
        check and its indexes together, not one after the other. They serve the reads that
        follow unless the check brings other segments (a compaction's output), which
        costs those few index GETs more."""
        self.check_open()
        held = self._latest if self._latest is not None else self._view(self.manifest)
        locating = asyncio.ensure_future(held.locate(keys))
        try:
            return await self.latest_view()
        except BaseException:
            locating.cancel()
            raise
        finally:
            # Only a head start: the reads that follow load again, and report, what failed here.
            await asyncio.gather(locating, return_exceptions=True)

    async def view_at(self, version: int) -> SnapshotView:
        """A view of `version`: the latest, a recent one compaction still keeps, or a tagged one."""
        latest = await self.latest_view()
        if version > latest.version:  # committed after the copy `max_staleness` let us reuse
            await self._manifests.refresh()
            latest = await self.latest_view()
        if version > latest.version:  # not gone: never made, so "not retained" would mislead
            raise FutureVersionError(
                f"version {version} does not exist yet: the latest version of {self.url} is {latest.version}; "
                "pass a version that has been committed, or leave version= out to read the latest",
                latest=latest.version,
            )
        if version == latest.version:
            return latest
        manifest = latest.manifest
        if manifest.history_floor <= version < manifest.version:
            return self._view(manifest, version)
        for tag in await self._tags.list():
            if tag.version == version:
                return self._view(await self._tags.manifest(tag))
        raise VersionNotRetainedError(
            f"version {version} is not retained: readable versions are {manifest.history_floor}.."
            f"{manifest.version} and tagged ones; keep more with StoreOptions.history_versions or tag versions"
        )

    async def tagged_view(self, name: str) -> SnapshotView:
        """A view of the version retained under tag `name`."""
        self.check_open()
        tag = await self._tags.get(name)
        return self._view(await self._tags.manifest(tag))

    async def commits_after(self, version: int) -> list[CommitRecord]:
        """The commit records after `version`, oldest first (one conditional GET).

        Raises VersionNotRetainedError when they have left the commit log.
        """
        records = (await self.refresh()).commits_after(version)
        if records is None:
            raise VersionNotRetainedError(
                f"commits after version {version} have left the commit log (the last "
                f"{self.options.commit_log_length}); read the data again from the current version"
            )
        return list(records)

    @property
    def values(self) -> ValueStore:
        """The store's out-of-line value objects."""
        return self._sources.values

    async def _commits_since(self, version: int) -> tuple[Manifest, tuple[CommitRecord, ...]]:
        """The latest manifest (one conditional GET) and its commits after `version`;
        TransactionTooOldError when its log no longer reaches back that far."""
        manifest = await self.refresh()
        records = manifest.commits_after(version)
        if records is None:
            raise TransactionTooOldError(
                f"transaction read version {version}, older than the commit log "
                f"(it starts after version {manifest.log_start}); retry it"
            )
        return manifest, records

    async def changed_since(
        self,
        version: int,
        keys: Iterable[bytes],
        ranges: Iterable[tuple[bytes, bytes | None]],
        shown: Mapping[str, bool] | None = None,
    ) -> bool:
        """Whether a read of `keys` and `ranges` at `version` may no longer hold: a commit after
        `version` wrote one of them, or a live intent holding one is decided "committed" and
        the view did not show it (`shown`: decision name -> whether the view showed its
        writes). One conditional GET, plus one GET per undecided intent meeting them. An
        undecided intent counts as no change: whoever reads now, after all its reads, saw it
        nowhere, and precedes it. For validating read-only transactions across partitions;
        raises TransactionTooOldError when the log no longer reaches back."""
        shown = shown or {}
        keys, ranges = list(keys), list(ranges)
        manifest, records = await self._commits_since(version)
        showed = {name for name, visible in shown.items() if visible}  # committed, as the view showed them
        if any(r.wrote_any(keys, ranges) and not r.only_resolves(showed) for r in records):
            return True
        # A committed intent the view showed is no change: nothing about it is news to the
        # reads (a coordinator that died before resolving must not fail every validation).
        meeting = [i for i in manifest.intents if i.meets(keys, ranges) and not shown.get(i.decision)]
        if not meeting:
            return False
        if self.decisions is None:
            return True  # cannot look the decisions up (the reads raised already, had they met them)
        outcomes = await asyncio.gather(*(self.decisions.outcome(i.decision) for i in meeting))
        if any(o == "committed" for o in outcomes):
            self.resolve_soon()  # until resolved, every validation meeting it fails
            return True
        return False

    # ------------------------------------------------------------------ writes

    def new_txn_id(self) -> bytes:
        return self._committer.new_txn_id()

    async def commit(self, request: CommitRequest) -> int:
        """Commit one transaction (group-committed with others of this process). Values over
        `StoreOptions.large_value_bytes` are first written as value objects of their own,
        and the commit's segment holds references to them."""
        self.check_open()
        await self._values_out_of_line(request)
        return await self._committer.commit(request)

    async def _values_out_of_line(self, request: CommitRequest) -> None:
        """Write `request`'s large values as value objects (VALUES_IN_FLIGHT at once), before
        its commit CAS, and put their references in its writes. Each object is new (I1): a
        transaction that never commits leaves them to GC, after the grace period (I7)."""
        threshold = self.options.large_value_bytes
        large = [k for k, v in request.writes.items() if isinstance(v, bytes) and len(v) > threshold]
        if not large:
            return
        written_at = time.monotonic()
        writes = dict(request.writes)
        values = self._sources.values

        async def write(key: bytes) -> ValueRef:
            data = writes[key]
            assert isinstance(data, bytes)
            return await values.write(data)

        refs = await run_bounded(write, large, VALUES_IN_FLIGHT)
        writes.update(zip(large, refs, strict=True))
        request.writes = writes
        request.values_written_at = written_at

    async def prepare(self, request: CommitRequest, decision: str) -> int:
        """Prepare this partition's part of a cross-partition transaction (`_two_phase`): its
        writes and reads become an intent naming decision object `decision` (one that only
        read: a read-only intent, holding its reads), after the usual conflict checks, in
        one manifest CAS. Returns the intent's version."""
        self.check_writable("cross-partition commits are writes")
        request.decision = decision
        await self._values_out_of_line(request)
        return await self._committer.commit(request)

    async def resolve(self) -> bool:
        """Resolve the decided intents of this partition in one manifest CAS, if it has any
        (a busy partition's commits do it anyway). Returns whether a CAS was needed."""
        self.check_writable("resolving intents is a write")
        return await self._committer.resolve()

    def resolve_soon(self) -> None:
        """`resolve` in the background (after a cross-partition commit's acknowledgement),
        unless one is under way. A failure is only logged: this process's next commit resolves
        it (its decision is cached here), any commit meeting it or once older than intent_timeout."""
        if self.read_only or self.closed or self.forked:
            return
        self._resolve_again = True  # a resolve under way may have read the manifest before this intent
        if self._resolving is None or self._resolving.done():
            self._resolving = asyncio.create_task(self._resolve_in_background())

    async def _resolve_in_background(self) -> None:
        while self._resolve_again:
            self._resolve_again = False
            try:
                await self._committer.resolve()
            except Exception as exc:  # noqa: BLE001 - a background task has no caller to raise to
                _log.warning(
                    "resolving intents of %s failed (the next commit does it): %s: %s",
                    self.url,
                    type(exc).__name__,
                    exc,
                )
                return

    async def bulk_commit(
        self,
        batches: AsyncIterable[Batch],
        *,
        values: ValueMode,
        progress: Callable[[int], None] | None,
        chunk_bytes: int,
        read_version: int | None = None,
        meta: dict[str, Any] | None = None,
    ) -> int:
        """Write encoded batches (`_bulk.encoded_batches`) as segments of about `chunk_bytes` each,
        then commit them all in one manifest CAS; returns the version. `values`: how
        the batches' values were encoded (the commit is refused if the store records
        a codec they do not fit)."""
        parts, started = await self.write_bulk_run(batches, progress=progress, chunk_bytes=chunk_bytes)
        return await self.commit(self.bulk_request(parts, started, values, read_version=read_version, meta=meta))

    async def write_bulk_run(
        self,
        batches: AsyncIterable[Batch],
        *,
        progress: Callable[[int], None] | None,
        chunk_bytes: int,
        merge_lock: asyncio.Lock | None = None,
    ) -> tuple[list[SegmentRef], float]:
        """The first half of `bulk_commit`: the batches written as one sorted run (a source
        of its own), committing nothing; with the time.monotonic() before its oldest object
        (I8). ValidationError if the batches hold no pair. The merge of its chunks holds up
        to `compaction_memory_bytes`: loads writing several runs at once (one per partition)
        share a `merge_lock`, so that one merges at a time."""
        self.check_writable("bulk loads are writes")
        started = time.monotonic()
        chunks = await write_chunks(batches, self._segments, chunk_bytes=chunk_bytes, progress=progress)
        if not chunks:
            raise ValidationError("bulk_load got no items")
        async with merge_lock or contextlib.nullcontext():
            merging = time.monotonic()
            parts = await as_sorted_run(
                chunks, self._segments, self.options.target_segment_bytes, self.options.compaction_memory_bytes
            )
        if not {c.id for c in chunks} & {p.id for p in parts}:
            started = merging  # every chunk was merged: the oldest object committed is younger (I8)
        if len(parts) > 1:
            # One source, as a compaction of the chunks would have made, so a cold read
            # right after the load costs what it costs in a compacted store.
            parts = [await self._sources.write_run(parts, BULK_RUN_LEVEL, commit_segments=True)]
        return parts, started

    def bulk_request(
        self,
        parts: list[SegmentRef],
        started: float,
        values: ValueMode,
        *,
        read_version: int | None = None,
        meta: dict[str, Any] | None = None,
        txn_id: bytes | None = None,
    ) -> CommitRequest:
        """The commit of a run `write_bulk_run` wrote (here, or as a prepare with `txn_id`:
        a share of a load across partitions, `_partition_ops.bulk_load_partitions`)."""
        return CommitRequest(
            txn_id=self.new_txn_id() if txn_id is None else txn_id,
            read_version=read_version,
            started=started,
            read_keys=set(),
            read_ranges=[] if read_version is None else [(b"", None)],
            writes={},
            values=values,
            meta=meta,
            segments=parts,
        )

    async def commit_entries(
        self,
        pairs: AsyncIterable[tuple[bytes, Value]],
        *,
        values: ValueMode,
        read_version: int,
        meta: dict[str, Any],
    ) -> int | None:
        """Write `pairs` (distinct keys, ascending, with values as segments store them:
        expiring puts, references to this partition's value objects, operands) as
        segments of about `target_segment_bytes`, and commit them in one manifest CAS
        if no commit came after `read_version` (ConflictError). A split's copy
        (`_router`). The version, or None if there were no pairs."""
        self.check_writable("splitting is a write")
        started = time.monotonic()  # before `pairs` makes objects (a split copies values as it goes)
        target = self.options.target_segment_bytes
        parts: list[SegmentRef] = []
        output: SegmentOutput | None = None
        batch: list[Entry] = []

        async def add(entries: list[Entry]) -> None:
            nonlocal output
            done = 0
            while done < len(entries):
                if output is None:
                    output = self._segments.new_output(uniform_version=True)
                done = output.add_until(entries, done, target)
                await output.send_full_parts()
                if done < len(entries):
                    parts.append(await output.finish(level=0, versioned=False))
                    output = None

        try:
            async for key, value in pairs:
                batch.append((key, 0, value))
                if len(batch) >= COPY_BATCH:
                    await add(batch)
                    batch = []
            await add(batch)
            if output is not None:
                parts.append(await output.finish(level=0, versioned=False))
                output = None
        finally:
            if output is not None:
                await output.abort()
        if not parts:
            return None
        if len(parts) > 1:  # key-disjoint and in key order: one sorted run, as a bulk load makes
            parts = [await self._sources.write_run(parts, BULK_RUN_LEVEL, commit_segments=True)]
        return await self.commit(self.bulk_request(parts, started, values, read_version=read_version, meta=meta))

    async def commit_parts(
        self,
        *,
        store_id: str,
        job_id: str,
        segments: list[SegmentRef],
        written_at: float,
        meta: dict[str, Any] | None,
        values: ValueMode,
        read_version: int | None = None,
        read_keys: set[bytes] | None = None,
    ) -> int:
        """Commit segments written elsewhere (a distributed write's parts; newest first) in
        one manifest CAS, at most once per `job_id` (hex), which the commit record keeps.
        `written_at` is the writer's clock (epoch seconds) before the oldest was written;
        `values` how the parts' values were encoded (as in `bulk_commit`). With
        `read_version`, a commit after it that wrote one of `read_keys` is a conflict
        (ConflictError), as for a transaction that read them (a Zarr session)."""
        request = await self.parts_request(
            store_id=store_id,
            job_id=job_id,
            segments=segments,
            written_at=written_at,
            meta=meta,
            values=values,
            read_version=read_version,
            read_keys=read_keys,
        )
        return await self.commit(request)

    async def parts_request(
        self,
        *,
        store_id: str,
        job_id: str,
        segments: list[SegmentRef],
        written_at: float,
        meta: dict[str, Any] | None,
        values: ValueMode,
        read_version: int | None = None,
        read_keys: set[bytes] | None = None,
        txn_id: bytes | None = None,
    ) -> CommitRequest:
        """The request `commit_parts` commits (or, with `txn_id`, prepares: this partition's
        share of a job across partitions), after checking here that the job has not
        committed: no commit record names it, unless that record prepared a share whose
        transaction was aborted, and none of its segments is live."""
        self.check_writable("distributed writes are writes")
        manifest = await self.refresh()
        if manifest.store_id != store_id:
            raise StoreNotFoundError(
                f"the store at {self.url} is not the one this distributed write was made for (store id "
                f"{store_id}, now {manifest.store_id}): it was deleted and made again; run the job again"
            )
        # A share prepared across partitions by an earlier attempt whose decision does not
        # exist yet (its coordinator died, or could not write "aborted") is settled now:
        # this attempt aborts it, unless its "committed" lands first (the create-once
        # decision says which). Counting it as committed would report a job that may
        # never show; counting it as absent could apply the job twice.
        settled = {
            name: await self._settle(name, txn)
            for record in manifest.log
            if record.job == job_id and (name := (record.meta or {}).get("decision")) is not None
            for txn in [next((i.txn_id for i in manifest.intents if i.decision == name), record.txn_ids[0])]
        }
        live = {s.id for s in manifest.segments}
        for intent in manifest.intents:
            if intent.segment is None:
                continue  # a read-only intent writes nothing
            outcome = settled[intent.decision] if intent.decision in settled else await self._outcome(intent.decision)
            if outcome != "aborted":
                live.add(intent.segment.id)
        done: int | None = None
        for record in manifest.log:
            if record.job == job_id:
                # A share prepared across partitions counts unless its transaction was aborted.
                decision = (record.meta or {}).get("decision")
                if decision is None or settled[decision] != "aborted":
                    done = record.version
                    break
        if done is not None or any(s.id in live for s in segments):
            raise JobAlreadyCommittedError(
                f"distributed write {job_id} has already committed"
                f"{'' if done is None else f' (version {done})'}; start a new job to write more"
            )
        return CommitRequest(
            # A new id per attempt to commit: two drivers committing one job must not take
            # each other's commit for their own (I5 looks for this id), so the job id goes
            # in the record's meta, where the check above and the committer find it.
            txn_id=self.new_txn_id() if txn_id is None else txn_id,
            # Commits after it are checked for this job id (and for `read_keys`).
            read_version=manifest.version if read_version is None else read_version,
            # The committer holds segments to I8 by monotonic time; the parts' clock is another host's.
            started=time.monotonic() - max(0.0, time.time() - written_at),
            read_keys=set() if read_keys is None else read_keys,
            read_ranges=[],
            writes={},
            values=values,
            meta=meta,
            segments=segments,
            job=job_id,
        )

    async def _outcome(self, decision: str) -> str | None:
        """The outcome of decision object `decision` (None: undecided, or no decisions to ask)."""
        return None if self.decisions is None else await self.decisions.outcome(decision)

    async def _settle(self, decision: str, txn_id: bytes) -> str | None:
        """The outcome of `decision`, deciding "aborted" if it has none yet (the
        create-once object keeps a rival's "committed" that lands first)."""
        if self.decisions is None:
            return None
        outcome = await self.decisions.outcome(decision)
        if outcome is None:
            outcome = await self.decisions.decide(decision, "aborted", txn_id, [])
        return outcome

    async def seal(self, moved: dict[str, Any]) -> Manifest:
        """Make the latest version this partition's last (a split moves its keys elsewhere,
        `MOVED_SETTING`); returns that final manifest. Idempotent."""
        self.check_writable("splitting is a write")
        # A live intent may yet be decided "committed", after the split copied the partition
        # without it: its writes would be lost. So the seal waits until every intent is
        # resolved (decided ones now; undecided ones are aborted after intent_timeout).
        deadline = time.monotonic() + 2 * self.options.intent_timeout + SEAL_WAIT_SECONDS
        while True:
            sealed = await self._manifests.seal(moved, self.options.commit_log_length)
            if sealed is not None:
                return sealed
            if time.monotonic() > deadline:
                raise ContentionError(
                    f"{self.url} kept holding intents of cross-partition transactions, so it could not be "
                    "sealed for a split; retry the split"
                )
            if not await self._committer.resolve():
                await asyncio.sleep(SEAL_POLL_SECONDS)  # undecided: wait for the decision or the timeout

    # ------------------------------------------------------------------ tags, maintenance

    async def tag(self, name: str, *, version: int | None = None) -> Tag:
        """Retain the latest version under `name` (one COPY and one PUT); with `version`,
        only if that is still the latest."""
        self.check_writable("tags are writes")
        return await self._tags.create_at_latest(name, self._manifests, expected=version)

    async def tags(self) -> list[Tag]:
        self.check_open()
        return await self._tags.list()

    async def delete_tag(self, name: str) -> None:
        self.check_writable("deleting a tag is a write")
        await self._tags.delete(name)

    async def gc(self, *, grace_period: float | None, dry_run: bool) -> GcReport:
        """A GC pass; `grace_period` None: the store's (see `gc_grace_period`)."""
        if not dry_run:
            self.check_writable("garbage collection deletes; use dry_run=True to only look")
        self.check_open()
        return await self._gc.collect(
            grace_period=grace_period, own_grace_period=grace_period_of(self.options), dry_run=dry_run
        )

    async def compact(self, *, full: bool, run: SubCompactionRunner | None = None) -> list[CompactionResult]:
        """Merge segments until no level is due (or everything into one, with `full`);
        `run` runs the key ranges elsewhere (`Compactor.compact`)."""
        self.check_writable("compaction writes")
        await self._manifests.refresh()
        results: list[CompactionResult] = []
        while True:
            result = await self._compactor.compact(full=full, run=run)
            if result is None:
                return results
            results.append(result)
            if full:
                return results

    async def load_runs(self) -> None:
        """Fetch the run objects of the latest version (one GET each, concurrently), so that
        a point read of a sorted run costs only its segment's reads. Best effort: a damaged
        or missing run object fails the reads that need it (and `verify` names it), not
        the open."""
        runs = [r for r in self.manifest.segments if r.is_run]
        for ref, outcome in zip(
            runs, await asyncio.gather(*(self._sources.run(r) for r in runs), return_exceptions=True), strict=True
        ):
            if isinstance(outcome, KvStoreError):
                _log.warning("run %s of %s is unreadable: %s", ref.id, self.url, outcome)
            elif isinstance(outcome, BaseException):
                raise outcome

    async def verify(self) -> VerifyReport:
        """Read and check every object the latest version references, bypassing the caches."""
        self.check_open()
        try:
            manifest = await self._manifests.refresh()
        except CorruptionError as exc:
            return VerifyReport(self.manifest.version, 1, {exc.object_name: str(exc)})
        report = VerifyReport(manifest.version, 1)
        uncached_segments = SegmentStore(self.objects, self.layout, ByteLRU(_VERIFY_CACHE_BYTES))
        uncached = Sources(self.objects, self.layout, uncached_segments, ByteLRU(_VERIFY_CACHE_BYTES))
        for ref in (*manifest.segments, *(i.segment for i in manifest.intents if i.segment is not None)):
            name = self.layout.run(ref.id) if ref.is_run else self.layout.segment(ref.id)
            try:
                parts = await uncached.parts(ref)
                if ref.is_run:
                    report.objects_checked += 1
            except (CorruptionError, UnsupportedFormatError) as exc:
                report.damaged[name] = str(exc)
                continue
            except VersionNotRetainedError:
                report.damaged[name] = "missing: referenced by the manifest but absent"
                continue
            for part in parts:
                report.objects_checked += 1
                try:
                    await uncached_segments.read_all(part)
                    await self._verify_values(uncached, part, report)
                except (CorruptionError, UnsupportedFormatError) as exc:
                    report.damaged[self.layout.segment(part.id)] = str(exc)
                except VersionNotRetainedError:
                    report.damaged[self.layout.segment(part.id)] = "missing: referenced by the manifest but absent"
        return report

    async def _verify_values(self, sources: Sources, part: SegmentRef, report: VerifyReport) -> None:
        """Read back every value object the segment `part` references (each once per run)."""
        if not await sources.segments.holds_value_refs(part):
            return
        async for entries in sources.segments.blocks(part, None, None, False, fill_cache=False):
            for _, _, value in entries:
                if (held := value_ref_of(value)) is not None:  # an operands' base's too
                    name = sources.values.object_name(held)
                    if name in report.damaged:
                        continue
                    report.objects_checked += 1
                    problem = await sources.values.check(held)
                    if problem is not None:
                        report.damaged[name] = problem

    def commits_in_flight(self) -> int:
        """Commits queued or under way and not finished (no request)."""
        return self._committer.in_flight()

    async def close(self) -> None:
        """Finish queued commits, cancel background compaction, wait for requests in
        flight (bounded) and release connections. Idempotent.

        In a forked child it only marks the engine closed: its commits, tasks and
        connections are the parent's, to finish and close there."""
        if self.closed:
            return
        self.closed = True
        if self.forked:
            return
        try:
            await self._committer.wait_idle()
            if self._resolving is not None:
                await asyncio.wait([self._resolving])  # bounded by the retry policy's deadlines
            if self._background is not None:
                self._background.cancel()
                await asyncio.wait([self._background])
        finally:
            if self._owns_objects:
                await self.objects.close()
            if self._disk_cache is not None:
                self._disk_cache.close()
            _fork.forget(self)

    async def background_idle(self) -> None:
        """Wait for the background compaction and intent resolution under way, if any (they end
        once nothing is due)."""
        for task in (self._background, self._resolving):
            if task is not None:
                await asyncio.wait([task])

    def _after_commit(self, manifest: Manifest) -> None:
        if not self.options.auto_compact or self.closed:
            return
        if self._background is not None and not self._background.done():
            return
        if ours_to_compact(manifest, self.options.compaction_fanout):
            self._background = asyncio.create_task(self._compact_in_background())

    async def _compact_in_background(self) -> None:
        try:
            while await self._compactor.compact() is not None:
                pass
            interval = self.options.auto_gc_interval
            if interval is not None and time.monotonic() - self._last_gc >= interval:
                self._last_gc = time.monotonic()
                await self._gc.collect(grace_period=None, own_grace_period=grace_period_of(self.options), dry_run=False)
        except Exception as exc:  # noqa: BLE001 - a background task has no caller to raise to
            _log.warning(
                "background compaction or GC of %s failed (retried after a later commit): %s: %s",
                self.url,
                type(exc).__name__,
                exc,
            )


def ours_to_compact(manifest: Manifest, fanout: int) -> bool:
    """Whether the writer that just committed `manifest` should start compacting.

    Every process sees a level fill up, but only one merge of it can commit:
    the others would each upload a merged segment and lose the CAS. So the
    writer whose commit made the level due compacts it, and anyone does once
    the level holds twice the fanout (that writer died or fell behind).
    """
    if len(choose_inputs(manifest, fanout)) >= 2 * fanout:
        return True
    newest = manifest.log[-1].segment_id if manifest.log else None
    level = next((r.level for r in manifest.segments if r.id == newest), None)
    return level is not None and sum(r.level == level for r in manifest.segments) == fanout


async def open_engine(
    location: Location,
    options: StoreOptions,
    *,
    create: bool,
    read_only: bool,
    new_settings: Mapping[str, Any],
    adopt_settings: Mapping[str, Any],
    wrap_object_store: Callable[[ObjectStore], ObjectStore] | None = None,
    decisions: Decisions | None = None,
    layout: Layout | None = None,
    objects: RetryingObjectStore | None = None,
) -> Engine:
    """Open (and with `create`, make) the store at `location`.

    A new store records `new_settings`. A store that has never committed
    data (`Manifest.never_written`: at most settings commits) takes
    `adopt_settings` where they differ from what it records (one manifest
    CAS), since no data yet depends on them; a commit of a handle opened
    before then is refused by the committer if its values do not fit. The
    engine holds `options` resolved against the store's record
    (`resolve_options`: a None `segment_grace_period` is the record's). A
    writer whose period is longer than the store records (or that finds
    none, or an invalid one, recorded) records its own (one manifest CAS):
    GC never applies less than the record.

    `decisions`: where a partition of a store split into several looks up the decisions
    of cross-partition transactions whose intents it holds (`_two_phase.Decisions`).

    Costs one GET of the manifest and one per sorted run, plus, the first time a process opens a
    store for writing, two or three PUTs that prove the endpoint honours
    conditional writes.

    `layout` opens one partition of a split store (default: the store's root
    layout); `objects` shares one object store (and its retry layer) among the
    partitions: the engine then never closes it, its caller does.
    """
    owns_objects = objects is None
    if objects is None:
        backend = location.objects if wrap_object_store is None else wrap_object_store(location.objects)
        objects = RetryingObjectStore(backend, options.retry)
    if layout is None:
        layout = Layout(location.prefix)
    manifests = ManifestStore(objects, layout)
    try:
        try:
            await manifests.refresh()
            exists = True
        except ObjectNotFound:
            if read_only or not create:
                raise StoreNotFoundError(
                    f"no kvstore at {location.url}: open it with create=True (and not read_only) "
                    "to make one, or check the URL"
                ) from None
            exists = False
        if not read_only and (owns_objects or layout.prefix == location.prefix):
            # Once per store (its root), not per partition: they share the one endpoint.
            await check_conditional_writes(objects, layout)
        if not exists:
            await manifests.create({**new_settings, GRACE_SETTING: grace_period_of(resolve_options(options, None))})
        manifest = manifests.current[0]
        differ = {k: v for k, v in adopt_settings.items() if manifest.settings.get(k) != v}
        if differ and manifest.never_written and not read_only:
            manifest = await manifests.settle_empty(differ, options.commit_log_length)
        recorded = recorded_grace_period(manifest)
        options = resolve_options(options, recorded)
        own = grace_period_of(options)
        if not read_only and not (recorded is not None and recorded >= own):
            # This writer's I8 holds its segments to half of its own grace period: GC (in
            # any process) must not apply less, and never applies less than the record.
            await manifests.raise_grace_period(own, options.commit_log_length)
        engine = Engine(location.url, objects, layout, manifests, options, read_only, decisions, owns_objects)
        await engine.load_runs()
        return engine
    except BaseException:
        if owns_objects:
            await objects.close()
        raise
