"""Distributed writes: a picklable job whose parts any process writes, published by one commit.

    job = await db.distributed_write(meta={...})   # on the driver
    part = job.write(pairs, index=i)              # in any process, on any host
    version = await job.commit(parts)             # on the driver: one manifest CAS

A job is plain data: the store's URL, S3 options, store id, value codec and
limits, and a random job id. A worker opens the object store itself (one
client per process, reused by every part it writes), checks and encodes the
pairs exactly as `bulk_load` does and safe-creates immutable segments whose
entries take the version they commit at (`SegmentRef.commit_version`, set at
the CAS), so nothing needs the commit version before the commit. A `Part`
lists those segments. Nothing is visible until `commit`, whose one CAS adds
every part's segments or none; a part never committed is an orphan that GC
collects after the grace period (I7). The commit record names the job id,
which is how a second commit (from any process) is refused; an uncertain
CAS is resolved by the commit's own transaction id, like any commit (I5).

On a partitioned store the job carries the partition map: a worker routes its
pairs by key and writes each partition's share under that partition, and
`Part.partitions` names the partition of each segment. The commit publishes
every partition's share at once through one cross-partition decision
(`_partition_ops.commit_parts_partitions`); a split since the job was made
refuses it (PartitionMovedError).
docs/distributed.md has the guide, docs/design.md the protocol.
"""

from __future__ import annotations

import asyncio
import atexit
import functools
import os
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterable, Sequence
from concurrent.futures import Future
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

from ._bulk import Batch, encoded_batches, route_batches, write_chunks
from ._cache import ByteLRU
from ._codec import ValueMode
from ._compact import SubCompaction, SubCompactionResult, run_sub_compaction
from ._errors import InvalidPartError, JobAlreadyCommittedError, PartTooOldError, SyncInAsyncError, ValidationError
from ._layout import Layout
from ._manifest import SegmentRef
from ._objectstore import RetryingObjectStore, S3Options
from ._options import StoreOptions, bulk_value_limit, grace_period_of
from ._partition_map import ROOT_PID, PartitionMap
from ._segment_store import SegmentStore
from ._sources import Sources
from ._url import parse_url

T = TypeVar("T")
# Object-store clients a process keeps open for distributed writes (one per store).
_MAX_CLIENTS = 4
# Cache of one key range's compaction in a worker (indexes, run objects, small inputs).
_WORKER_CACHE_BYTES = 32 * 1024 * 1024
# Seconds `atexit` waits for a process's object-store clients to close.
_CLOSE_DEADLINE = 10.0


@dataclass(frozen=True)
class Part:
    """What one `DistributedWrite.write` wrote: small, picklable, committed by `DistributedWrite.commit`.

    `segments` are the immutable segments written (in the order the pairs
    came, a later one winning a key both hold); `written_at` is the writer's
    clock (seconds since the epoch) before the first of them was written:
    `commit` refuses a part older than half of `segment_grace_period` (I8).
    `index` identifies the part within its job (the task's number): `commit`
    refuses two parts of one index, so a retried task's earlier attempt can
    never be committed beside its retry.
    """

    job_id: str
    index: int | None
    segments: tuple[SegmentRef, ...]
    written_at: float
    pairs: int  # pairs taken from the input, a repeated key counted each time
    # On a partitioned store, the partition of each segment (parallel to `segments`).
    partitions: tuple[str, ...] = ()

    @property
    def size(self) -> int:
        """Bytes of the segments written."""
        return sum(s.size for s in self.segments)


@dataclass
class DistributedWrite:
    """A write whose parts run in other processes (or hosts) and commit together.

    Made by `Store.distributed_write`. Small and picklable: send it to Dask,
    Ray or `concurrent.futures` workers, which call `write` (blocking) or
    `write_async`; gather the `Part`s they return and pass them to `commit`
    on the driver. It carries what a worker needs to open the object store:
    the URL, the S3 options given to `kvstore.open` (credentials included,
    when given there rather than by the environment), the codec and limits.
    """

    url: str
    store_id: str
    job_id: str  # hex; the commit record's meta names it ("job")
    values: ValueMode
    options: StoreOptions
    s3: S3Options
    chunk_bytes: int
    meta: dict[str, Any] | None = None
    # A partitioned store's map when the job was made (None: a store never split): the
    # workers route pairs by it, and the commit refuses the job if the map changed.
    pmap: PartitionMap | None = None
    # Set on the driver by `Store.distributed_write`; not pickled. A copy without it
    # (unpickled, e.g. after a driver restart) opens the store by its URL to commit.
    _committer: Callable[..., Awaitable[int]] | None = field(default=None, repr=False, compare=False)
    _committed: bool = field(default=False, repr=False, compare=False)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_committer"] = None
        return state

    def write(self, pairs: Iterable[tuple[str | bytes, Any]], *, index: int | None = None) -> Part:
        """Write `pairs` as immutable segments of the store; returns the `Part` to commit.

        Blocking; call it in any process on any host (not inside a running event
        loop: use `write_async` there). Keys and values are checked and encoded as
        `bulk_load` does them (InvalidKeyError, InvalidValueError). Nothing is
        visible until `commit`. Pass `index` (e.g. the task's number) so that
        `commit` can refuse two parts of the same task.
        """
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            pass
        else:
            raise SyncInAsyncError(
                "DistributedWrite.write blocks, and this thread runs an event loop: use `await job.write_async(pairs)`"
            )
        return _worker_runtime().run(self._write(pairs, index))

    async def write_async(self, pairs: Iterable[tuple[str | bytes, Any]], *, index: int | None = None) -> Part:
        """`write` for async code: the pairs are encoded and uploaded on this process's
        kvstore writer thread (sharing its object-store client), so the caller's
        event loop stays free meanwhile. `pairs` is iterated on that thread."""
        return await asyncio.wrap_future(_worker_runtime().submit(self._write(pairs, index)))

    async def commit(self, parts: Sequence[Part]) -> int:
        """Publish every part's segments in one manifest CAS; returns the version.

        Each part is taken once, in the order given: where parts overlap in keys
        the later part in `parts` wins. Raises InvalidPartError (a part of
        another job, or one given twice), PartTooOldError (a part written longer
        ago than half of `segment_grace_period`: write it again), and
        JobAlreadyCommittedError if this job has committed, here or in any process
        (while its commit is in the commit log or its segments are live).
        """
        if self._committed:
            raise JobAlreadyCommittedError(
                f"distributed write {self.job_id} has already committed; start a new job for more writes"
            )
        oldest = self._check(parts)
        # Newest first, as the manifest lists segments: a later part (and within a part,
        # a later chunk) is listed first and so wins a key both hold.
        segments = [s for part in parts for s in part.segments][::-1]
        commit = self._committer or self._commit_by_url
        if self.pmap is not None:
            pids = [pid for part in parts for pid in part.partitions][::-1]
            shares: dict[str, list[SegmentRef]] = {}
            for pid, segment in zip(pids, segments, strict=True):
                shares.setdefault(pid, []).append(segment)
            commit = functools.partial(commit, shares=shares)
        version = await commit(
            store_id=self.store_id,
            job_id=self.job_id,
            segments=segments,
            written_at=oldest,
            meta=self.meta,
            values=self.values,
        )
        self._committed = True
        return version

    def _check(self, parts: Sequence[Part]) -> float:
        """Check `parts` (each of this job, each once, none too old for I8); the
        writer's time of the oldest."""
        if isinstance(parts, Part):
            raise InvalidPartError("commit takes a sequence of parts: job.commit([part])")
        seen_index: set[int] = set()
        seen_segments: set[str] = set()
        oldest: Part | None = None
        for part in parts:
            if not isinstance(part, Part):
                raise InvalidPartError(f"commit takes the Part objects job.write returned, not {type(part).__name__}")
            if part.job_id != self.job_id:
                raise InvalidPartError(
                    f"a part of distributed write {part.job_id} was given to the commit of {self.job_id}; "
                    "commit each job's parts with that job"
                )
            if part.index is not None:
                if part.index in seen_index:
                    raise InvalidPartError(
                        f"two parts of index {part.index} were given: pass each task's part once "
                        "(the part of an earlier, retried attempt is left to garbage collection)"
                    )
                seen_index.add(part.index)
            ids = {s.id for s in part.segments}
            if ids & seen_segments or len(ids) != len(part.segments):
                raise InvalidPartError("the same part was given twice: pass each part once")
            seen_segments |= ids
            if part.segments and (oldest is None or part.written_at < oldest.written_at):
                oldest = part
        if oldest is None:
            raise ValidationError("the parts hold no pairs: nothing to commit")
        age = time.time() - oldest.written_at
        limit = grace_period_of(self.options) / 2
        if age > limit:
            which = "" if oldest.index is None else f" (index {oldest.index})"
            raise PartTooOldError(
                f"a part{which} was written {age:.0f} s ago, over half of segment_grace_period ({limit:.0f} s): "
                "garbage collection may delete its segments (I8). Write the parts again with a new job, "
                "or raise StoreOptions.segment_grace_period above twice the job's duration"
            )
        return oldest.written_at

    async def _commit_by_url(self, **commit: Any) -> int:
        """Commit through the store opened by its URL (this job was unpickled away from its store)."""
        if self.pmap is not None:
            from ._partition_ops import open_and_commit_parts  # above this module: imported when needed

            return await open_and_commit_parts(self.url, self.s3, self.options, self.pmap, **commit)
        from ._engine import open_engine  # the engine commits; it does not need this module

        location = parse_url(self.url, self.s3)
        engine = await open_engine(
            location, self.options, create=False, read_only=False, new_settings={}, adopt_settings={}
        )
        try:
            return await engine.commit_parts(**commit)
        finally:
            await engine.close()

    async def _write(self, pairs: Iterable[tuple[str | bytes, Any]], index: int | None) -> Part:
        if index is not None and (not isinstance(index, int) or isinstance(index, bool)):
            raise ValidationError(f"index must be an int (the task's number) or None, not {index!r}")
        async with _worker_runtime().objects(self) as (objects, layout):
            limits = self.options.max_key_bytes, bulk_value_limit(self.options)
            taken = [0]  # pairs taken, as of the last chunk uploaded (no step per pair here)
            written_at = time.time()  # before the first segment: the part is at least this old
            batches = encoded_batches(pairs, self.values, *limits)
            pmap = self.pmap
            if pmap is None:
                segments = SegmentStore(objects, layout, ByteLRU(0))
                refs = await write_chunks(batches, segments, chunk_bytes=self.chunk_bytes, progress=taken.append)
                return Part(self.job_id, index, tuple(refs), written_at, taken[-1])

            async def write(pid: str, stream: AsyncIterator[Batch]) -> list[SegmentRef]:
                share = layout if pid == ROOT_PID else layout.partition(pid)
                return await write_chunks(
                    stream, SegmentStore(objects, share, ByteLRU(0)), chunk_bytes=self.chunk_bytes
                )

            written = await route_batches(batches, lambda key: pmap.partition_for(key).pid, write, taken.append)
        pids = tuple(pid for pid, refs in written.items() for _ in refs)
        segs = tuple(ref for refs in written.values() for ref in refs)
        return Part(self.job_id, index, segs, written_at, taken[-1], pids)


@dataclass(frozen=True)
class StoreAddress:
    """What a worker process needs to reach a store's objects: picklable, no client."""

    url: str
    s3: S3Options
    options: StoreOptions


def compact_range(address: StoreAddress, sub: SubCompaction) -> SubCompactionResult:
    """Run one key range of a compaction in this process (blocking): read its inputs and
    write its output segments through this process's client for the store. Commits
    nothing: the compacting process commits every range's outputs in one CAS."""
    return _worker_runtime().run(_compact_range(address, sub))


async def _compact_range(address: StoreAddress, sub: SubCompaction) -> SubCompactionResult:
    async with _worker_runtime().objects(address) as (objects, layout):
        cache = ByteLRU(_WORKER_CACHE_BYTES)  # the inputs' indexes and small segments, for this range only
        return await run_sub_compaction(sub, Sources(objects, layout, SegmentStore(objects, layout, cache), cache))


class _WorkerRuntime:
    """This process's writer thread: one event loop, and one object-store client per
    (URL, S3 options, retry policy), reused by every part the process writes."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._clients: dict[tuple[str, S3Options, Any], tuple[RetryingObjectStore, Layout]] = {}
        self._users: Counter[tuple[str, S3Options, Any]] = Counter()  # parts writing with each
        self._thread = threading.Thread(target=self.loop.run_forever, name="kvstore-distributed", daemon=True)
        self._thread.start()

    def submit(self, coro: Coroutine[Any, Any, T]) -> Future[T]:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.submit(coro).result()

    @asynccontextmanager
    async def objects(self, job: StoreAddress | DistributedWrite) -> AsyncIterator[tuple[RetryingObjectStore, Layout]]:
        """The process's client for the job's store, made on first use. The least recently
        used idle clients beyond `_MAX_CLIENTS` are closed (a process that writes to many
        stores in turn does not keep every connection pool)."""
        key = (job.url, job.s3, job.options.retry)
        found = self._clients.pop(key, None)
        if found is None:
            location = parse_url(job.url, job.s3)
            found = RetryingObjectStore(location.objects, job.options.retry), Layout(location.prefix)
        self._clients[key] = found  # most recently used last
        self._users[key] += 1
        try:
            yield found
        finally:
            self._users[key] -= 1
            idle = [k for k in self._clients if not self._users[k]]
            for old in idle[: max(0, len(self._clients) - _MAX_CLIENTS)]:
                objects, _ = self._clients.pop(old)
                del self._users[old]
                await objects.close()

    def close(self) -> None:
        async def close_all() -> None:
            clients, self._clients = list(self._clients.values()), {}
            await asyncio.gather(*(objects.close() for objects, _ in clients), return_exceptions=True)

        if self._thread.is_alive():
            try:
                self.submit(close_all()).result(timeout=_CLOSE_DEADLINE)
            except Exception:  # noqa: BLE001, S110 - best effort at exit: the process is ending
                pass
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(timeout=_CLOSE_DEADLINE)


_runtime: _WorkerRuntime | None = None
_runtime_lock = threading.Lock()


def _worker_runtime() -> _WorkerRuntime:
    global _runtime
    with _runtime_lock:
        if _runtime is None:
            _runtime = _WorkerRuntime()
        return _runtime


def _forget_after_fork() -> None:
    # A forked child has the parent's runtime object but not its thread: start afresh.
    global _runtime, _runtime_lock
    _runtime = None
    _runtime_lock = threading.Lock()


def _close_at_exit() -> None:
    if _runtime is not None:
        _runtime.close()


os.register_at_fork(after_in_child=_forget_after_fork)
atexit.register(_close_at_exit)
