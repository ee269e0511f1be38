"""The commit protocol: group commit, conflict checks, CAS with rebase, ambiguity resolution.

One batch is in flight per process. A batch takes every queued transaction,
drops those that conflict (with commits after their read version, or with
transactions before them in the batch), writes the survivors' writes as one
segment and commits it with one manifest CAS; a small segment rides inside
the manifest (one PUT in all), a larger one is safe-created first. On any 412
it reads the new manifest and first looks for its own transaction id there
(a 412 may answer our own applied attempt, whose answer was lost: I5); only
if it is not there does it re-check conflicts and retry with the same
segment. `docs/design.md` walks through it.

A cross-partition transaction's prepare (`CommitRequest.decision` set,
`_two_phase.py`) rides the same batches, as an intent with a segment of its
own instead of a share of the batch's segment; one carrying segments written
beforehand (a bulk load's or distributed write's share of a partition) commits
alone, as an intent per segment. Every CAS of the committer
first consults the decisions of the intents live in its base: it turns
committed ones into segments and drops aborted ones (resolution rides the
batch), aborts undecided ones older than `StoreOptions.intent_timeout`, and
fails requests that read or write an undecided intent's keys, or read a
committed one's.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from bisect import bisect_left
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from ._cas import read_modify_cas
from ._codec import ValueMode, codec_changed, writes_fit
from ._errors import (
    CommitOutcomeUnknownError,
    ConflictError,
    JobAlreadyCommittedError,
    KvStoreError,
    PartitionMovedError,
    StoreUnavailableError,
    TransactionTooOldError,
    UnsafeStoreError,
)
from ._layout import new_object_id
from ._manifest import LOG_KEYS_MAX_BYTES, MOVED_SETTING, CommitRecord, Intent, Manifest, SegmentRef
from ._manifest_store import ManifestStore
from ._objectstore import PreconditionFailed, follows_uncertain_attempt
from ._operands import codec_of, combine
from ._options import StoreOptions, grace_period_of
from ._ranges import KeyRange, cover, in_ranges, normalized, range_bytes, ranges_meet
from ._segment import Value, encode_segment
from ._segment_store import SegmentStore

if TYPE_CHECKING:
    from ._two_phase import Decisions, Outcome

# What the decision objects of a base's live intents say (name -> outcome, None: undecided).
Statuses = dict[str, "Outcome | None"]

# Consecutive unavailable-store failures of the manifest CAS before giving up.
_MAX_UNAVAILABLE_CAS = 3
# Longest pause after losing a CAS race, seconds.
_MAX_RACE_BACKOFF = 0.25
# Fairness between processes: after this many consecutive commits of ours while
# another writer committed within _FAIR_WINDOW seconds, pause about one CAS round
# trip before the next CAS so that a writer stuck losing races gets a turn.
_FAIR_STREAK = 3
_FAIR_WINDOW = 5.0
_WRITER_ID_BYTES = 6  # transaction ids start with their committer's random writer id


@dataclass
class CommitRequest:
    """A transaction ready to commit: what it read, what it writes."""

    txn_id: bytes
    read_version: int | None  # None: read nothing, so nothing to check
    started: float  # time.monotonic() when its snapshot was taken
    read_keys: set[bytes]
    read_ranges: list[tuple[bytes, bytes | None]]
    # None: delete; Operands: atomic add/max/min; a large value is a ValueRef once
    # `Engine.commit` has written its object.
    writes: Mapping[bytes, Value]
    # How the values were encoded (`_codec.ValueMode`): refused on a base that records
    # a codec they do not fit (the store took another one up after the handle opened).
    values: ValueMode
    meta: dict[str, Any] | None = None
    # Segments written beforehand (bulk loads): committed as they are, alone.
    segments: list[SegmentRef] | None = None
    # A distributed write's job id (hex): recorded in the commit's meta, and the commit is
    # refused if one after `read_version` records it (another driver committed the job).
    job: str | None = None
    # [start, end) ranges deleted (end None: to the end of the key space), before
    # `writes`: a write of a key in one of them wins. A write of every key in them.
    range_deletes: list[KeyRange] = field(default_factory=list)
    # time.monotonic() before the out-of-line values of `writes` were written (None: none
    # were): the commit is refused once they are older than half the grace period (I8).
    values_written_at: float | None = None
    # The decisions of cross-partition transactions its reads showed as committed: a commit
    # that only resolved those (turned their intents into segments) changed nothing it read.
    shown: frozenset[str] = frozenset()
    # Set for a cross-partition transaction's prepare: the name of its decision object.
    # Its writes become an intent (`_manifest.Intent`) with a segment of its own; with
    # `segments`, one intent per segment (all of one transaction, one decision).
    decision: str | None = None
    future: asyncio.Future[int] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


@dataclass
class CommitStatistics:
    """Counters of the committer, for `Store.statistics()`."""

    commits: int = 0  # manifest CAS that succeeded
    transactions: int = 0  # transactions those commits carried
    conflicts: int = 0
    cas_retries: int = 0  # 412s followed by a rebase
    ambiguous_resolved: int = 0  # commits found applied after an uncertain CAS
    segments_rewritten: int = 0
    intents_resolved: int = 0  # intents resolved (made segments or dropped) by resolve CASes of their own
    intents_aborted: int = 0  # undecided intents past intent_timeout whose decision we made "aborted"


@dataclass
class _PendingIntent:
    """A prepare of the batch: its segment (None: it only read) and sorted written keys
    (None: segments written beforehand, whose keys are known only by their range)."""

    request: CommitRequest
    ref: SegmentRef | None
    keys: list[bytes] | None


@dataclass
class _Pending:
    """Segments written for a batch, waiting for the manifest CAS."""

    refs: list[SegmentRef]  # commit_version is filled in per CAS attempt; empty: only range deletes or prepares
    written_at: float  # time.monotonic() of the oldest
    keys: list[bytes] | None  # sorted written keys, or None (bulk: only the range is known)
    ranges: list[KeyRange] = field(default_factory=list)  # the batch's range deletes, joined
    intents: list[_PendingIntent] = field(default_factory=list)  # the batch's prepares

    @property
    def all_refs(self) -> list[SegmentRef]:
        return [*self.refs, *(i.ref for i in self.intents if i.ref is not None)]

    @property
    def inline(self) -> bool:
        """Whether the segments ride in the manifest (no object: no GC, no I8 age)."""
        return all(r.inline is not None for r in self.all_refs)

    @property
    def has_object(self) -> bool:
        """Whether a segment object was written (one GC may collect: I8 applies)."""
        return any(r.inline is None for r in self.all_refs)

    @property
    def sizes(self) -> list[int]:
        return [r.size for r in self.all_refs]


class Committer:
    """Commits transactions of one process, batching those that arrive together."""

    def __init__(
        self,
        manifests: ManifestStore,
        segments: SegmentStore,
        options: StoreOptions,
        after_commit: Callable[[Manifest], None] | None = None,
        decisions: Decisions | None = None,
    ) -> None:
        self._after_commit = after_commit
        self._decisions = decisions
        self._manifests = manifests
        self._segments = segments
        self._options = options
        self._queue: deque[CommitRequest] = deque()
        self._batch: list[CommitRequest] = []  # the batch `_drain` is committing
        self._worker: asyncio.Task[None] | None = None
        self.stats = CommitStatistics()
        self.writer_id = os.urandom(_WRITER_ID_BYTES)
        self._cas_seconds = 0.0  # duration of the last successful CAS

    def new_txn_id(self) -> bytes:
        """A unique transaction id: this committer's writer id and 80 random bits."""
        return self.writer_id + os.urandom(16 - _WRITER_ID_BYTES)

    async def commit(self, request: CommitRequest) -> int:
        """Commit one transaction; returns the version it committed at."""
        self._queue.append(request)
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._drain())
            # An interruption (a BaseException) ends the worker after it failed every
            # request of its batch with it: those callers have it, so it is retrieved here.
            self._worker.add_done_callback(_retrieve)
        return await request.future

    def in_flight(self) -> int:
        """Requests queued or being committed whose outcome is not known yet."""
        return sum(not r.future.done() for r in (*self._batch, *self._queue))

    async def wait_idle(self) -> None:
        """Wait until every queued commit has finished."""
        while self._worker is not None and not self._worker.done():
            await asyncio.wait([self._worker])

    async def _drain(self) -> None:
        while self._queue:
            if _alone(self._queue[0]):
                batch = [self._queue.popleft()]  # a bulk load commits alone
            else:
                batch = []
                while self._queue and not _alone(self._queue[0]) and len(batch) < self._options.max_batch_transactions:
                    batch.append(self._queue.popleft())
            self._batch = batch
            try:
                async with self._manifests.writing:
                    await self._commit_batch(batch)
            except BaseException as exc:
                for request in batch:
                    _fail(request, exc if isinstance(exc, KvStoreError) else _unknown(exc))
                if not isinstance(exc, Exception):
                    raise
            finally:
                self._batch = []

    async def _commit_batch(self, batch: list[CommitRequest]) -> None:
        # Versions an attempt of ours would have produced and that no manifest read has
        # decided yet. Updated in place: what it holds when the batch fails says whether
        # the failure is definite.
        maybe_applied: list[int] = []
        try:
            await self._commit_batch_once(batch, maybe_applied)
        except CommitOutcomeUnknownError:
            raise
        except Exception as exc:  # interruptions (BaseException) pass through: _drain handles them
            if not maybe_applied:
                raise
            # An attempt may still land (an abandoned request in flight, a lost answer):
            # whatever failed afterwards, "failed" would be a guess (I5).
            raise CommitOutcomeUnknownError(
                f"the commit failed ({type(exc).__name__}: {exc}) after a manifest update whose outcome "
                "is unknown; read the data to find out before retrying"
            ) from exc

    async def _commit_batch_once(self, batch: list[CommitRequest], maybe_applied: list[int]) -> None:
        base, etag = self._manifests.current
        statuses = await self._statuses(base, batch)
        accepted = self._admit(batch, base, statuses, check_age=True)
        if not accepted:
            await self._resolve_unlocked(statuses)
            return
        pending = await self._write_segment(accepted, base)
        failures = 0
        lost_races = 0
        while True:
            if pending.inline:
                if not self._fits_inline(base, pending.sizes):
                    pending = await self._write_segment(accepted, None)  # concurrent commits filled the manifest
            elif pending.has_object and time.monotonic() - pending.written_at > grace_period_of(self._options) / 2:
                pending = await self._write_segment(accepted, None)  # I8: never commit an old segment
                # (bulk segments cannot be rewritten: _write_segment refuses them)
            _check_values_age(accepted, grace_period_of(self._options))
            if not maybe_applied and not lost_races:
                pause = self._turn_for_others(base)
                if pause:
                    await asyncio.sleep(pause)
            new = self._next_manifest(base, accepted, pending, statuses)
            sent = time.monotonic()
            try:
                await self._manifests.compare_and_swap(new, etag)
            except PreconditionFailed:
                # Maybe a rival's commit, maybe our own: an attempt whose answer was lost
                # (one we retried, or one the HTTP stack resent unseen) may have been
                # applied. The log tells which, below (I5).
                maybe_applied.append(new.version)
                lost_races += 1
                await asyncio.sleep(_backoff_after_lost_race(time.monotonic() - sent, lost_races))
            except StoreUnavailableError as exc:
                maybe_applied.append(new.version)
                failures += 1
                if failures >= _MAX_UNAVAILABLE_CAS:
                    raise CommitOutcomeUnknownError(
                        "the object store kept failing during the commit, so whether it was applied "
                        "is unknown; read the data to find out before retrying"
                    ) from exc
            except KvStoreError as exc:
                # A lasting error (credentials expired, bucket gone) refused this request, but
                # decides nothing about an attempt before it whose answer was lost: an earlier
                # try of this CAS (the retry layer marks the error then), or an earlier CAS at
                # this ETag. Only the log decides those (I5); until then the outcome is unknown.
                if follows_uncertain_attempt(exc):
                    maybe_applied.append(new.version)
                if not maybe_applied:
                    raise  # no attempt of ours in doubt: a definite failure
                base, etag = await self._fetch_to_decide(maybe_applied)
                version = self._find_own_commit(base, accepted, pending, maybe_applied)
                if version is None:
                    _keep_undecided(maybe_applied, base)
                    raise  # `_commit_batch`: CommitOutcomeUnknownError if any attempt is left undecided
                self.stats.ambiguous_resolved += 1
                self._succeed(accepted, version)
                return
            else:
                self._cas_seconds = time.monotonic() - sent
                self._succeed(accepted, new.version)
                return
            base, etag = await self._fetch_to_decide(maybe_applied)
            version = self._find_own_commit(base, accepted, pending, maybe_applied)
            if version is not None:
                self.stats.ambiguous_resolved += 1
                self._succeed(accepted, version)
                return
            _keep_undecided(maybe_applied, base)
            self.stats.cas_retries += 1
            statuses = await self._statuses(base, accepted)
            still = self._admit(accepted, base, statuses, check_age=False)
            if not still:
                await self._resolve_unlocked(statuses)
                return
            if len(still) != len(accepted):
                # Only possible once the store moved past every attempt of ours, so
                # no undecided attempt carries the transactions dropped here.
                accepted = still
                pending = await self._write_segment(accepted, base)

    def _turn_for_others(self, base: Manifest) -> float:
        """Seconds to wait before our CAS so that other writers get a turn, or 0.

        The writer that just committed knows the new ETag and wins the next race
        too, while the others first GET the manifest: without this, one process
        can commit every batch for seconds while the others only collect 412s.
        """
        mine = self.writer_id
        streak = 0
        for record in reversed(base.log):
            if record.key_count == 0 and not record.ranges:
                continue  # compactions
            if not record.txn_ids[0].startswith(mine):
                break
            streak += 1
            if streak >= _FAIR_STREAK:
                break
        if streak < _FAIR_STREAK:
            return 0.0
        since = time.time() - _FAIR_WINDOW
        others = any(
            r.time > since and (r.key_count > 0 or r.ranges) and not r.txn_ids[0].startswith(mine)
            for r in base.log[-256:]
        )
        return random.uniform(0.5, 1.5) * self._cas_seconds if others else 0.0

    async def _statuses(self, base: Manifest, batch: list[CommitRequest] | None = None) -> Statuses:
        """The decisions a CAS on `base` needs of its live intents, after aborting the
        undecided ones older than `intent_timeout` (their coordinator is presumed dead; the
        create-once decision makes that safe whatever it does).

        Without `batch` (a resolve of its own), every intent's decision is looked up: one
        GET each unless cached as decided. With a batch, only those of the intents a request
        of the batch meets (their outcome decides whether it may commit) and of those old
        enough to abort; any other is taken as this process knows it. An unknown one stays
        an intent, as an undecided one does, and is resolved by its coordinator, by a batch
        that meets it or once it is that old. An undecided decision answers 404, which
        nothing can cache, so looking every one up made each CAS of a partition holding a
        foreign intent pay a round trip more (docs/scaling.md). Also the decisions of
        shares that other attempts of the batch's distributed writes prepared
        (`_earlier_attempt`).
        """
        jobs = _job_decisions(base, batch)
        if not base.intents and not jobs:
            return {}
        decisions = self._decisions
        if decisions is None:
            raise UnsafeStoreError(
                f"{self._manifests.name} holds intents of cross-partition transactions, which this handle "
                "cannot look up: open the partitioned store at its root URL (kvstore.open), not one partition"
            )
        now = time.time()

        def needed(intent: Intent) -> bool:
            return (
                batch is None
                or now - intent.time > self._options.intent_timeout
                or any(_held_by_intent(r, (intent,), {}) is not None for r in batch)
            )

        statuses: Statuses = {i.decision: decisions.cached(i.decision) for i in base.intents}
        names = list(dict.fromkeys([*(i.decision for i in base.intents if needed(i)), *jobs]))
        statuses.update(zip(names, await asyncio.gather(*map(decisions.outcome, names)), strict=True))
        for intent in base.intents:
            if statuses[intent.decision] is None and now - intent.time > self._options.intent_timeout:
                try:
                    statuses[intent.decision] = await decisions.decide(intent.decision, "aborted", intent.txn_id, ())
                except KvStoreError:
                    continue  # still undecided here: it conflicts, and a later writer aborts it
                self.stats.intents_aborted += statuses[intent.decision] == "aborted"
        return statuses

    async def resolve(self) -> bool:
        """Resolve the decided intents of the latest manifest in one CAS of their own (an
        idle partition's; a busy one's ride its batches). Returns whether one was needed."""
        async with self._manifests.writing:
            await self._manifests.refresh()
            return await self._resolve_unlocked(None)

    async def _resolve_unlocked(self, statuses: Statuses | None) -> bool:
        """`resolve` with the manifest's writing lock held. `statuses`: those of the
        current manifest, if already known. Idempotent: an intent resolved by anyone
        (a lost answer of ours included) is simply no longer there."""

        async def load(fresh: bool) -> tuple[Manifest, str]:
            if fresh:
                await self._manifests.refresh()
            return self._manifests.current

        async def write(state: tuple[Manifest, str]) -> bool:
            nonlocal statuses
            base, etag = state
            if statuses is None or state[0] is not first:
                statuses = await self._statuses(base)
            if not any(statuses.get(i.decision) is not None for i in base.intents):
                return False
            record, add, intents = self._resolution(base, statuses, None)
            new = base.with_commit(record, self._options.commit_log_length, add=add, intents=intents)
            await self._manifests.compare_and_swap(new, etag)
            self.stats.intents_resolved += len(base.intents) - len(intents)
            return True

        first = self._manifests.current[0]
        if statuses is not None and not any(v is not None for v in statuses.values()):
            return False
        return await read_modify_cas("resolving cross-partition intents", load, write)

    def _resolution(
        self, base: Manifest, statuses: Statuses, pending: _Pending | None
    ) -> tuple[CommitRecord, list[SegmentRef], tuple[Intent, ...]]:
        """The record, the segments to add and the intents left of the CAS after `base` that
        commits `pending` (the batch's segments and prepares, if any) and resolves the
        decided intents of `base`. The record's txn ids, count and meta are the caller's
        to set (a resolve of its own carries a random id and no transaction).

        The record lists the prepares' keys and the keys of the committed intents it
        resolves: a transaction that read one of them before (it saw the old value, or
        the intent undecided) conflicts with it.
        """
        version = base.version + 1

        def at_version(r: SegmentRef) -> SegmentRef:
            return replace(r, min_version=version, max_version=version, commit_version=version)

        committed = [i for i in base.intents if statuses.get(i.decision) == "committed"]
        intents = [i for i in base.intents if statuses.get(i.decision) is None]
        refs = [] if pending is None else [at_version(r) for r in pending.refs]
        prepared = [] if pending is None else pending.intents
        now = time.time()
        for p in prepared:
            exact = tuple(p.keys) if p.keys is not None and sum(map(len, p.keys)) <= LOG_KEYS_MAX_BYTES else None
            ref = None if p.ref is None else at_version(p.ref)
            reads, read_ranges = _held_reads(p.request)
            intents.append(
                Intent(p.request.txn_id, version, now, str(p.request.decision), exact, ref, reads, read_ranges)
            )
        key_lists: list[list[bytes] | tuple[bytes, ...] | None] = [i.keys for i in committed]
        key_lists += [p.keys for p in prepared]
        if pending is not None and pending.refs:
            key_lists.append(pending.keys)
        committed_refs = [i.segment for i in committed if i.segment is not None]  # a read-only one wrote nothing
        written = [*refs, *(p.ref for p in prepared if p.ref is not None), *committed_refs]
        ranges = [] if pending is None else pending.ranges
        keys: tuple[bytes, ...] | None = None
        if all(k is not None for k in key_lists):
            merged = sorted({k for ks in key_lists if ks is not None for k in ks})
            if sum(map(len, merged)) + range_bytes(ranges) <= LOG_KEYS_MAX_BYTES:
                keys = tuple(merged)
        resolved = len(base.intents) + len(prepared) - len(intents)
        meta: dict[str, Any] = {"resolved": resolved} if resolved else {}
        if pending is None and resolved:  # a resolve of its own (`CommitRecord.only_resolves`)
            meta["resolves"] = [i.decision for i in committed]
        if keys is not None and prepared:
            # Keys listed only because a prepare holds them: not written yet (`watch` skips them).
            written_now = {k for i in committed for k in (i.keys or ())}
            written_now |= set(pending.keys or ()) if pending is not None and pending.refs else set()
            held = sorted({k for p in prepared for k in (p.keys or ())} - written_now)
            if held:
                meta["prepared"] = held
        record = CommitRecord(
            version=version,
            time=now,
            txn_ids=(os.urandom(16),),
            txn_count=0,
            segment_id=refs[0].id if len(refs) == 1 else None,
            key_count=sum(r.count for r in written),
            min_key=min((r.min_key for r in written), default=b""),
            max_key=max((r.max_key for r in written), default=b""),
            keys=keys,
            meta=meta or None,
            # As in `_next_manifest`: the batch's range deletes, exactly while the keys are.
            ranges=tuple(ranges) if keys is not None else cover(ranges),
        )
        return record, [*refs, *committed_refs], tuple(intents)

    def _admit(
        self, requests: list[CommitRequest], base: Manifest, statuses: Statuses, *, check_age: bool
    ) -> list[CommitRequest]:
        """Requests that may commit on top of `base`, in order; fail the others.

        The age limit is checked only before the first CAS attempt: after an
        uncertain attempt, dropping a request could contradict its outcome.
        """
        accepted: list[CommitRequest] = []
        batch_writes: list[bytes] = []  # sorted keys written by accepted requests
        batch_ranges: list[KeyRange] = []  # ranges they deleted
        # Keys written by accepted prepares: their intents sit at the batch's version, where
        # no other write of the batch may share a key with them (which would win is undefined).
        prepared: set[bytes] = set()
        # Accepted prepares that read something: their reads hold from this batch's CAS on,
        # so no later request of the batch may write what they read (it would serialize
        # after them, yet be visible before their decision).
        holding: list[CommitRequest] = []
        now = time.monotonic()
        recorded = base.settings.get("values")
        moved = base.settings.get(MOVED_SETTING)
        for request in requests:
            if moved is not None:
                # A split sealed this partition: its final version is copied into its
                # successors, so nothing may commit here any more (the face re-routes).
                _fail(request, _moved(moved))
                continue
            # Checked on every base: an empty store may take up another codec (open_engine)
            # between the handle's open and any attempt of this commit.
            if not writes_fit(recorded, request.values):
                _fail(request, codec_changed(recorded, request.values))
                continue
            # A bulk load reads nothing, so its age needs no log to check it against; its
            # segments' age (I8) is checked where they are committed (`_write_segment`).
            bulk = request.segments is not None
            if check_age and not bulk and now - request.started > self._options.max_transaction_age:
                _fail(
                    request,
                    TransactionTooOldError(
                        f"transaction ran {now - request.started:.0f} s, over max_transaction_age "
                        f"({self._options.max_transaction_age:.0f} s); retry it, faster"
                    ),
                )
                continue
            commits = () if request.read_version is None else base.commits_after(request.read_version)
            if commits is None:
                _fail(
                    request,
                    TransactionTooOldError(
                        f"transaction read version {request.read_version}, older than the commit log "
                        f"(it starts after version {base.log_start}); retry it"
                    ),
                )
                continue
            earlier = None if request.job is None else _earlier_attempt(request.job, commits, statuses)
            if earlier is not None:
                if earlier == "committed":
                    _fail(request, _already_committed(str(request.job)))
                    continue
                self.stats.conflicts += 1
                _fail(
                    request,
                    ConflictError(
                        f"another attempt to commit distributed write {request.job} prepared a share here and is "
                        "undecided; nothing was written: retry (the next attempt settles it)"
                    ),
                )
                continue
            held = _held_by_intent(request, base.intents, statuses)
            if held is not None:
                self.stats.conflicts += 1
                _fail(
                    request,
                    ConflictError(
                        f"transaction {held}; nothing was written: retry it (Store.transact does; the "
                        "intent is resolved within StoreOptions.intent_timeout at most)"
                    ),
                )
                continue
            clash = next(
                (
                    c
                    for c in commits
                    if c.wrote_any(request.read_keys, request.read_ranges) and not c.only_resolves(request.shown)
                ),
                None,
            )
            if request.decision is not None:
                shared = any(_written(batch_writes, k) or in_ranges(k, batch_ranges) for k in request.writes)
            else:
                shared = any(k in prepared for k in request.writes) or any(
                    in_ranges(k, request.range_deletes) for k in prepared
                )
            shared = shared or any(_writes_what_it_read(request, h) for h in holding)
            if (
                clash is not None
                or _reads_any(request, batch_writes)
                or _reads_in_ranges(request, batch_ranges)
                or shared
            ):
                self.stats.conflicts += 1
                where = f"version {clash.version}" if clash else "a transaction committing with it"
                _fail(
                    request,
                    ConflictError(
                        f"transaction read data that {where} changed after its read version "
                        f"{request.read_version}; nothing was written: retry it (Store.transact does)"
                    ),
                )
                continue
            accepted.append(request)
            batch_ranges += request.range_deletes
            if request.decision is not None:
                prepared.update(request.writes)
                if request.read_keys or request.read_ranges:
                    holding.append(request)
            for key in request.writes:
                i = bisect_left(batch_writes, key)
                if i == len(batch_writes) or batch_writes[i] != key:
                    batch_writes.insert(i, key)
        return accepted

    async def _write_segment(self, accepted: list[CommitRequest], base: Manifest | None) -> _Pending:
        """The batch's writes as one segment: inline in the manifest if it fits on top
        of `base` (None: never), else a new object."""
        bulk = accepted[0].segments
        if bulk is not None:
            if time.monotonic() - accepted[0].started > grace_period_of(self._options) / 2:
                raise TransactionTooOldError(
                    "the bulk load's segments are older than half the GC grace period (I8); load again"
                )
            if accepted[0].decision is not None:
                # A share of a load across partitions: its segments, newest first, become
                # intents in that order, and so resolve into segments in that order.
                return _Pending(
                    [], accepted[0].started, None, intents=[_PendingIntent(accepted[0], r, None) for r in bulk]
                )
            return _Pending(bulk, accepted[0].started, None)
        regular = [r for r in accepted if r.decision is None]
        merged: dict[bytes, Value] = {}
        codec = codec_of(self._manifests.current[0].settings.get("values"))
        for request in regular:
            if request.range_deletes:  # deletes what earlier transactions of the batch wrote there
                for key in [k for k in merged if in_ranges(k, request.range_deletes)]:
                    del merged[key]
            for key, value in request.writes.items():
                # Later transactions in the batch win; their atomic operands apply on top.
                merged[key] = combine(merged[key], value, codec) if key in merged else value
        ranges = normalized(r for request in regular for r in request.range_deletes)
        keys = sorted(merged)
        # The regular writes as one segment (none if they only delete ranges: the manifest
        # carries those), then each prepare's writes as a segment of its own.
        parts: list[tuple[list[bytes], Mapping[bytes, Value]]] = [(keys, merged)] if keys else []
        # A prepare that only read (a partition its transaction read and did not write) has
        # no segment: its intent only holds its reads.
        prepares = [r for r in accepted if r.decision is not None and r.writes]
        readers = [r for r in accepted if r.decision is not None and not r.writes]
        parts += [(sorted(r.writes), r.writes) for r in prepares]
        encoded = [encode_segment(((k, 0, w[k]) for k in ks), uniform_version=True) for ks, w in parts]
        inline = base is not None and self._fits_inline(base, [len(e.data) for e in encoded])
        if inline:
            ids = [new_object_id() for _ in encoded]
        else:
            ids = list(await asyncio.gather(*(self._segments.write(e) for e in encoded)))
        refs = [
            SegmentRef(i, e.min_key, e.max_key, e.count, len(e.data), 0, 0, inline=e.data if inline else None)
            for i, e in zip(ids, encoded, strict=True)
        ]
        regular_refs = refs[: len(refs) - len(prepares)]
        intents = [
            _PendingIntent(r, ref, ks)
            for r, ref, (ks, _) in zip(prepares, refs[len(regular_refs) :], parts[len(regular_refs) :], strict=True)
        ]
        intents += [_PendingIntent(r, None, []) for r in readers]
        return _Pending(regular_refs, time.monotonic(), keys, ranges, intents)

    def _fits_inline(self, base: Manifest, sizes: list[int]) -> bool:
        """Whether segments of `sizes` bytes may ride inline in the manifest after `base`."""
        options = self._options
        return (
            all(size <= options.inline_segment_bytes for size in sizes)
            and base.inline_bytes + sum(sizes) <= options.manifest_inline_bytes
        )

    def _next_manifest(
        self, base: Manifest, accepted: list[CommitRequest], pending: _Pending, statuses: Statuses
    ) -> Manifest:
        if base.intents or pending.intents:
            record, add, intents = self._resolution(base, statuses, pending)
            meta = {**(_record_meta([r.meta for r in accepted], accepted[0].job) or {}), **(record.meta or {})}
            prepares = sum(r.decision is not None for r in accepted)
            if prepares:  # transactions of the batch not committed by it (`CommitInfo.kind`)
                meta["prepares"] = prepares
            if accepted[0].job is not None and accepted[0].decision is not None:
                # A distributed write's share prepared here: whether the job committed is its
                # decision's to say (`Engine.parts_request` looks it up).
                meta["decision"] = accepted[0].decision
            record = replace(record, txn_ids=(accepted[0].txn_id,), txn_count=len(accepted), meta=meta or None)
            return base.with_commit(
                record, self._options.commit_log_length, add=add, intents=intents, delete_ranges=pending.ranges
            )
        version = base.version + 1
        refs = [replace(r, min_version=version, max_version=version, commit_version=version) for r in pending.refs]
        keys = pending.keys
        ranges = pending.ranges
        exact = keys is not None and sum(map(len, keys)) + range_bytes(ranges) <= LOG_KEYS_MAX_BYTES
        metas = [r.meta for r in accepted]
        job = accepted[0].job  # a distributed write commits alone
        record = CommitRecord(
            version=version,
            time=time.time(),
            txn_ids=(accepted[0].txn_id,),  # what _find_own_commit looks for
            txn_count=len(accepted),
            segment_id=refs[0].id if len(refs) == 1 else None,
            key_count=sum(r.count for r in refs),
            min_key=min((r.min_key for r in refs), default=b""),
            max_key=max((r.max_key for r in refs), default=b""),
            keys=tuple(keys) if exact and keys is not None else None,
            meta=_record_meta(metas, job),
            # Conflict checks and `watch` need the ranges; past the size a record may list
            # exactly, one range holding them all (conservative, as a key range is).
            ranges=tuple(ranges) if exact else cover(ranges),
        )
        return base.with_commit(record, self._options.commit_log_length, add=refs, delete_ranges=ranges)

    async def _fetch_to_decide(self, maybe_applied: list[int]) -> tuple[Manifest, str]:
        """The latest manifest, read to decide the attempts in `maybe_applied`."""
        try:
            await self._manifests.refresh()
        except KvStoreError as exc:
            if maybe_applied:
                raise CommitOutcomeUnknownError(
                    "the commit may have been applied, and the manifest could not be read to "
                    f"find out ({type(exc).__name__}: {exc}); read the data before retrying"
                ) from exc
            raise
        return self._manifests.current

    def _find_own_commit(
        self, base: Manifest, accepted: list[CommitRequest], pending: _Pending, maybe_applied: list[int]
    ) -> int | None:
        """The version an uncertain CAS of ours committed at, or None if none did (I5).

        Raises CommitOutcomeUnknownError when the evidence is gone.
        """
        txn_id = accepted[0].txn_id
        for version in maybe_applied:
            if version > base.version:
                continue  # the store has not reached that version: not applied there
            record = base.record_for(version)
            if record is not None:
                if txn_id in record.txn_ids:
                    return version
                continue
            # The log no longer reaches back: our segment (or intent) is the other evidence.
            refs = (*base.segments, *(i.segment for i in base.intents if i.segment is not None))
            if pending.all_refs and any(s.id == pending.all_refs[0].id for s in refs):
                return version
            raise CommitOutcomeUnknownError(
                f"cannot tell whether the commit at version {version} was applied: the commit log "
                "was trimmed past it; read the data to find out before retrying"
            )
        return None

    def _succeed(self, accepted: list[CommitRequest], version: int) -> None:
        self.stats.commits += 1
        self.stats.transactions += len(accepted)
        for request in accepted:
            if not request.future.done():
                request.future.set_result(version)
        if self._after_commit is not None:
            self._after_commit(self._manifests.current[0])


def _check_values_age(accepted: list[CommitRequest], grace_period: float) -> None:
    """Refuse a batch carrying out-of-line values written over half the grace period ago:
    GC may delete an unreferenced value object that old (I8). Unlike a segment, the batch
    cannot write them again (the bytes are gone); `_commit_batch` turns this into
    CommitOutcomeUnknownError if an earlier attempt of the batch may have landed."""
    now = time.monotonic()
    for request in accepted:
        if request.values_written_at is not None and now - request.values_written_at > grace_period / 2:
            raise TransactionTooOldError(
                f"the transaction's large values were written {now - request.values_written_at:.0f} s ago, "
                f"over half the GC grace period ({grace_period:.0f} s), so GC may already have deleted them "
                "(I8); nothing was committed: retry the transaction"
            )


def _alone(request: CommitRequest) -> bool:
    """Whether `request` commits in a batch of its own: a bulk load or distributed write
    (segments written beforehand)."""
    return request.segments is not None


def _written(sorted_writes: list[bytes], key: bytes) -> bool:
    i = bisect_left(sorted_writes, key)
    return i < len(sorted_writes) and sorted_writes[i] == key


def _held_by_intent(request: CommitRequest, intents: tuple[Intent, ...], statuses: Statuses) -> str | None:
    """Why `request` may not commit past one of the live `intents`, or None.

    An undecided intent holds its keys against every read and write (were it to commit,
    its writes would sit at its older version, under a newer write or a read that did not
    see them). A committed one is resolved by this very CAS, below the request's writes,
    but a read of its keys may have missed it.
    """
    for intent in intents:
        outcome = statuses.get(intent.decision)
        if outcome == "aborted":
            continue
        if intent.meets(request.read_keys, request.read_ranges):
            return f"read keys that cross-partition transaction {intent.txn_id.hex()} wrote ({outcome or 'undecided'})"
        if outcome is None and (
            intent.meets(request.writes, ())
            or intent.meets((), request.range_deletes)
            or intent.meets((), _segment_ranges(request.segments))
        ):
            return f"writes keys that cross-partition transaction {intent.txn_id.hex()} has prepared (undecided)"
        if outcome is None and (
            intent.reads_meet(request.writes, ())
            or intent.reads_meet((), request.range_deletes)
            or intent.reads_meet((), _segment_ranges(request.segments))
        ):
            return f"writes keys that cross-partition transaction {intent.txn_id.hex()} read (undecided)"
    return None


def _job_decisions(base: Manifest, batch: list[CommitRequest] | None) -> list[str]:
    """The decisions of shares that other attempts of the batch's distributed writes
    prepared after those requests read (`_earlier_attempt` needs their outcomes)."""
    names: list[str] = []
    for request in batch or ():
        if request.job is not None and request.read_version is not None:
            for c in base.commits_after(request.read_version) or ():
                decision = (c.meta or {}).get("decision") if c.job == request.job else None
                if decision is not None:
                    names.append(decision)
    return names


def _earlier_attempt(job: str, commits: Iterable[CommitRecord], statuses: Statuses) -> str | None:
    """ "committed" if a commit in `commits` published distributed write `job` (a share
    another attempt prepared counts once its decision says "committed"), "undecided" if
    only an attempt whose decision is not known yet prepared one, else None. Taking an
    undecided share for committed reported a job that then never showed."""
    verdict = None
    for c in commits:
        if c.job != job:
            continue
        decision = (c.meta or {}).get("decision")
        outcome = "committed" if decision is None else statuses.get(decision)
        if outcome == "committed":
            return "committed"
        if outcome is None:
            verdict = "undecided"
    return verdict


def _writes_what_it_read(request: CommitRequest, prepare: CommitRequest) -> bool:
    """Whether `request` writes (or deletes a range over) a key `prepare` read."""
    keys, ranges = prepare.read_keys, prepare.read_ranges
    if any(k in keys or in_ranges(k, ranges) for k in request.writes):
        return True
    deleted = [*request.range_deletes, *_segment_ranges(request.segments)]
    return any(in_ranges(k, deleted) for k in keys) or any(ranges_meet(r, lo, hi) for r in ranges for lo, hi in deleted)


def _held_reads(request: CommitRequest) -> tuple[tuple[bytes, ...], tuple[KeyRange, ...]]:
    """What a prepare's intent records of its reads: the keys exactly while they fit in a
    commit record's budget, else one range covering them (conservative: it holds more)."""
    if request.read_version is None:
        return (), ()
    keys = sorted(request.read_keys)
    ranges = list(request.read_ranges)
    if sum(map(len, keys)) + range_bytes(ranges) <= LOG_KEYS_MAX_BYTES:
        return tuple(keys), tuple(ranges)
    if keys:
        ranges.append((keys[0], keys[-1] + b"\0"))
    return (), cover(ranges)


def _segment_ranges(segments: list[SegmentRef] | None) -> list[KeyRange]:
    """The key ranges segments written beforehand cover (what a bulk load writes, as far
    as an intent's check can tell without reading them)."""
    return [(s.min_key, s.max_key + b"\0") for s in segments or ()]


def _keep_undecided(maybe_applied: list[int], base: Manifest) -> None:
    """Drop the attempts `base` decided. One at a version the store has reached was
    not applied (`_find_own_commit` looked); one at a version it has not reached was
    made on base's version and is still undecided: a delayed request may apply it
    as long as the manifest keeps the ETag it was sent with (I5)."""
    maybe_applied[:] = [v for v in maybe_applied if v > base.version]


def _backoff_after_lost_race(cas_seconds: float, lost_races: int) -> float:
    """Seconds to pause after our CAS lost to another process's (412), before rebasing.

    Retrying at once mostly collides with the other losers again, while the
    winner (which knows the new ETag) commits its next batch. A jittered pause
    of up to 2 CAS round trips, doubling per consecutive loss (up to 8 round
    trips, at most `_MAX_RACE_BACKOFF`), lets batches through instead of
    spending requests on 412s. Longer pauses (x4 per loss, up to 1 s) raised
    throughput further in a quick bench run but starved the losing processes
    for seconds.
    """
    return random.uniform(0, min(cas_seconds * min(2**lost_races, 8), _MAX_RACE_BACKOFF))


def _reads_any(request: CommitRequest, sorted_writes: list[bytes]) -> bool:
    """Whether the request read a key in `sorted_writes` (point reads or scanned ranges)."""
    if not sorted_writes:
        return False
    if any(k in request.read_keys for k in sorted_writes):
        return True
    for start, end in request.read_ranges:
        i = bisect_left(sorted_writes, start)
        if i < len(sorted_writes) and (end is None or sorted_writes[i] < end):
            return True
    return False


def _reads_in_ranges(request: CommitRequest, ranges: list[KeyRange]) -> bool:
    """Whether the request read a key in one of the deleted `ranges` (point reads or scans)."""
    if not ranges:
        return False
    if any(in_ranges(k, ranges) for k in request.read_keys):
        return True
    return any(ranges_meet(r, start, end) for r in ranges for start, end in request.read_ranges)


def _record_meta(metas: list[dict[str, Any] | None], job: str | None) -> dict[str, Any] | None:
    """A commit record's meta: the transactions' metas, and a distributed write's job id."""
    meta: dict[str, Any] = {"txns": metas} if any(m is not None for m in metas) else {}
    if job is not None:
        meta["job"] = job
    return meta or None


def _already_committed(job: str) -> JobAlreadyCommittedError:
    return JobAlreadyCommittedError(
        f"distributed write {job} has already committed (the commit log names it); start a new job to write more"
    )


def _moved(moved: Any) -> PartitionMovedError:
    return PartitionMovedError(
        f"this partition was {'split' if 'at' in moved else 'merged'} (into "
        f"{moved.get('into') or moved.get('merged_into')!r}) after the transaction started; nothing was "
        "written: retry it (Store.transact does; put and delete re-route by themselves)"
    )


def _fail(request: CommitRequest, exc: BaseException) -> None:
    if not request.future.done():
        request.future.set_exception(exc)
        request.future.exception()  # mark retrieved: the caller may have gone


def _retrieve(task: asyncio.Task[None]) -> None:
    if not task.cancelled():
        task.exception()


def _unknown(exc: BaseException) -> CommitOutcomeUnknownError:
    error = CommitOutcomeUnknownError(f"the commit was interrupted ({type(exc).__name__}); its outcome is unknown")
    error.__cause__ = exc
    return error
