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
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from bisect import bisect_left
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from ._codec import ValueMode, codec_changed, writes_fit
from ._errors import (
    CommitOutcomeUnknownError,
    ConflictError,
    JobAlreadyCommittedError,
    KvStoreError,
    PartitionMovedError,
    StoreUnavailableError,
    TransactionTooOldError,
)
from ._layout import new_object_id
from ._manifest import LOG_KEYS_MAX_BYTES, MOVED_SETTING, CommitRecord, Manifest, SegmentRef
from ._manifest_store import ManifestStore
from ._objectstore import PreconditionFailed, follows_uncertain_attempt
from ._options import StoreOptions, grace_period_of
from ._segment import encode_segment
from ._segment_store import SegmentStore

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
    writes: dict[bytes, bytes | None]  # None: delete
    # How the values were encoded (`_codec.ValueMode`): refused on a base that records
    # a codec they do not fit (the store took another one up after the handle opened).
    values: ValueMode
    meta: dict[str, Any] | None = None
    # Segments written beforehand (bulk loads): committed as they are, alone.
    segments: list[SegmentRef] | None = None
    # A distributed write's job id (hex): recorded in the commit's meta, and the commit is
    # refused if one after `read_version` records it (another driver committed the job).
    job: str | None = None
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


@dataclass
class _Pending:
    """Segments written for a batch, waiting for the manifest CAS."""

    refs: list[SegmentRef]  # commit_version is filled in per CAS attempt
    written_at: float  # time.monotonic() of the oldest
    keys: list[bytes] | None  # sorted written keys, or None (bulk: only the range is known)

    @property
    def inline(self) -> bool:
        """Whether the segment rides in the manifest (no object: no GC, no I8 age)."""
        return self.refs[0].inline is not None


class Committer:
    """Commits transactions of one process, batching those that arrive together."""

    def __init__(
        self,
        manifests: ManifestStore,
        segments: SegmentStore,
        options: StoreOptions,
        after_commit: Callable[[Manifest], None] | None = None,
    ) -> None:
        self._after_commit = after_commit
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
            if self._queue[0].segments is not None:
                batch = [self._queue.popleft()]  # a bulk load commits alone
            else:
                batch = []
                while (
                    self._queue
                    and self._queue[0].segments is None
                    and len(batch) < self._options.max_batch_transactions
                ):
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
        accepted = self._admit(batch, base, check_age=True)
        if not accepted:
            return
        pending = await self._write_segment(accepted, base)
        failures = 0
        lost_races = 0
        while True:
            if pending.inline:
                if not self._fits_inline(base, pending.refs[0].size):
                    pending = await self._write_segment(accepted, None)  # concurrent commits filled the manifest
            elif time.monotonic() - pending.written_at > grace_period_of(self._options) / 2:
                pending = await self._write_segment(accepted, None)  # I8: never commit an old segment
                # (bulk segments cannot be rewritten: _write_segment refuses them)
            if not maybe_applied and not lost_races:
                pause = self._turn_for_others(base)
                if pause:
                    await asyncio.sleep(pause)
            new = self._next_manifest(base, accepted, pending)
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
            still = self._admit(accepted, base, check_age=False)
            if not still:
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
            if record.key_count == 0:
                continue  # compactions
            if not record.txn_ids[0].startswith(mine):
                break
            streak += 1
            if streak >= _FAIR_STREAK:
                break
        if streak < _FAIR_STREAK:
            return 0.0
        since = time.time() - _FAIR_WINDOW
        others = any(r.time > since and r.key_count > 0 and not r.txn_ids[0].startswith(mine) for r in base.log[-256:])
        return random.uniform(0.5, 1.5) * self._cas_seconds if others else 0.0

    def _admit(self, requests: list[CommitRequest], base: Manifest, *, check_age: bool) -> list[CommitRequest]:
        """Requests that may commit on top of `base`, in order; fail the others.

        The age limit is checked only before the first CAS attempt: after an
        uncertain attempt, dropping a request could contradict its outcome.
        """
        accepted: list[CommitRequest] = []
        batch_writes: list[bytes] = []  # sorted keys written by accepted requests
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
            if request.job is not None and any(c.job == request.job for c in commits):
                _fail(request, _already_committed(request.job))
                continue
            clash = next((c for c in commits if c.wrote_any(request.read_keys, request.read_ranges)), None)
            if clash is not None or _reads_any(request, batch_writes):
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
            return _Pending(bulk, accepted[0].started, None)
        merged: dict[bytes, bytes | None] = {}
        for request in accepted:
            merged.update(request.writes)  # later transactions in the batch win
        keys = sorted(merged)
        encoded = encode_segment(((k, 0, merged[k]) for k in keys), uniform_version=True)
        size = len(encoded.data)
        if base is not None and self._fits_inline(base, size):
            ref = SegmentRef(
                new_object_id(), encoded.min_key, encoded.max_key, encoded.count, size, 0, 0, inline=encoded.data
            )
        else:
            segment_id = await self._segments.write(encoded)
            ref = SegmentRef(segment_id, encoded.min_key, encoded.max_key, encoded.count, size, 0, 0)
        return _Pending([ref], time.monotonic(), keys)

    def _fits_inline(self, base: Manifest, size: int) -> bool:
        """Whether a segment of `size` bytes may ride inline in the manifest after `base`."""
        options = self._options
        return size <= options.inline_segment_bytes and base.inline_bytes + size <= options.manifest_inline_bytes

    def _next_manifest(self, base: Manifest, accepted: list[CommitRequest], pending: _Pending) -> Manifest:
        version = base.version + 1
        refs = [replace(r, min_version=version, max_version=version, commit_version=version) for r in pending.refs]
        keys = pending.keys
        exact = keys is not None and sum(map(len, keys)) <= LOG_KEYS_MAX_BYTES
        metas = [r.meta for r in accepted]
        job = accepted[0].job  # a distributed write commits alone
        record = CommitRecord(
            version=version,
            time=time.time(),
            txn_ids=(accepted[0].txn_id,),  # what _find_own_commit looks for
            txn_count=len(accepted),
            segment_id=refs[0].id if len(refs) == 1 else None,
            key_count=sum(r.count for r in refs),
            min_key=min(r.min_key for r in refs),
            max_key=max(r.max_key for r in refs),
            keys=tuple(keys) if exact and keys is not None else None,
            meta=_record_meta(metas, job),
        )
        return base.with_commit(record, self._options.commit_log_length, add=refs)

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
            # The log no longer reaches back: our segment is the other evidence.
            if any(s.id == pending.refs[0].id for s in base.segments):
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
        f"this partition was split (into {moved.get('into')!r}) after the transaction started; nothing was "
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
