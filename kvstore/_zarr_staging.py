"""A Zarr session's staged writes: segments and the records that let the driver find them.

Every write through a pickled copy of a session's store (in a Dask worker, say)
is two safe-creates, on kvstore's writer thread (`_distributed._worker_runtime`,
the machinery of distributed writes); a write through the driver's own
`session.store` is only the first, since the session holds its state in memory:

    <prefix>segments/<id>.seg                                  the staged values (a distributed write's segment)
    <prefix>segments/zarr-sessions/<job id>/<stamp>-<id>.stg   its record: the segment, keys, stamp, reads

The record is written after its segment, so a record always names a segment that
exists; a writer killed between the two leaves a segment no record names. The
driver's `commit` lists its session's records (one LIST per 1000) and reads them
(a GET each), so a worker's writes need not travel back to the driver. Records
and segments live under ``segments/``, which GC sweeps: whatever no manifest
names is deleted after the grace period, committed session or not (a record is
never referenced; its job is done once the commit has read it).

A key staged twice resolves by the writes' stamps: the write with the larger
(wall-clock nanoseconds when it began, segment id) wins, on whichever copy it was
made. Within one process the stamps only grow (`next_stamp`); across hosts they
are as good as the hosts' clocks, which is why two workers should not write one
key (Zarr's tasks write distinct chunks).
"""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass, field, replace

import msgpack

from ._cache import ByteLRU
from ._distributed import DistributedWrite, _worker_runtime
from ._envelope import seal, unseal
from ._errors import CorruptionError, ValidationError
from ._manifest import SegmentRef
from ._objectstore import RetryingObjectStore
from ._segment import probe
from ._segment_store import SegmentStore

FORMAT = 1
_MAGIC = b"KVZS"
# Records read at once by a commit.
_READ_CONCURRENCY = 32
_stamp_lock = threading.Lock()
_last_stamp = 0


@dataclass
class Staged:
    """A session's staged state: small and picklable (segment records and keys, no values).

    Each copy of the session's store (the driver's, each Dask task's) holds its own:
    what it wrote, so that it reads its own writes. The driver's commit adds every
    copy's records to its own (`merge`)."""

    job: DistributedWrite
    base_version: int
    opened_at: float  # time.time() on the driver when the session opened: before every write (I8)
    # zarr key -> (stamp of its write, segment holding its newest staged value or tombstone,
    # whether that is a tombstone)
    keys: dict[str, tuple[int, SegmentRef, bool]] = field(default_factory=dict)
    reads: set[str] = field(default_factory=set)  # keys read from the base version
    recorded_reads: set[str] = field(default_factory=set)  # reads already in one of this copy's records
    # Whether this copy's writes leave records. Not the driver's own (the session holds its
    # state in memory: one PUT per write); every unpickled copy does (`ZarrStore.__setstate__`).
    records: bool = True

    def add(self, key: str, theirs: tuple[int, SegmentRef, bool]) -> None:
        """Stage `theirs` for `key` unless a later write of it is staged (the larger stamp, then id)."""
        mine = self.keys.get(key)
        if mine is None or (theirs[0], theirs[1].id) > (mine[0], mine[1].id):
            self.keys[key] = theirs

    def merge(self, other: Staged) -> None:
        """Add what another copy of this session staged."""
        if other.job.job_id != self.job.job_id:
            raise ValidationError("merge takes stores of this session (copies of session.store), not of another")
        for key, theirs in other.keys.items():
            self.add(key, theirs)
        self.reads |= other.reads


def next_stamp() -> int:
    """Wall-clock nanoseconds, strictly increasing within this process (two writes of one
    key from one copy in the same nanosecond still resolve in the order made)."""
    global _last_stamp
    with _stamp_lock:
        _last_stamp = max(time.time_ns(), _last_stamp + 1)
        return _last_stamp


async def stage(staged: Staged, prefix: str, writes: dict[str, bytes | None]) -> None:
    """Write `writes` (zarr key -> value, None: a delete) as one staged segment and (for a
    copy that leaves records) its record, then stage them in `staged` (this copy reads
    them back from the segment)."""
    stamp = next_stamp()
    entries = sorted(((prefix + k).encode("utf-8"), v) for k, v in writes.items())
    reads = sorted(staged.reads - staged.recorded_reads) if staged.records else []
    record = (writes, reads) if staged.records else None
    done = _worker_runtime().submit(_write_staged(staged.job, stamp, entries, record))
    ref = await asyncio.wrap_future(done)
    staged.recorded_reads.update(reads)
    for key, data in writes.items():
        staged.add(key, (stamp, ref, data is None))


async def _write_staged(
    job: DistributedWrite,
    stamp: int,
    entries: list[tuple[bytes, bytes | None]],
    record: tuple[dict[str, bytes | None], list[str]] | None,
) -> SegmentRef:
    async with _worker_runtime().objects(job) as (objects, layout):
        output = SegmentStore(objects, layout, ByteLRU(0)).new_output(uniform_version=True)
        try:
            for key, value in entries:
                output.writer.add(key, 0, value)
                await output.send_full_parts()
        except BaseException:
            await output.abort()
            raise
        ref = await output.finish(level=0, versioned=False)
        if record is None:
            return ref
        writes, reads = record
        # After the segment: a record never names a segment that is not there.
        doc = {
            "segment": [ref.id, ref.min_key, ref.max_key, ref.count, ref.size, ref.min_version, ref.max_version],
            "stamp": stamp,
            "writes": [[k, v is None] for k, v in writes.items()],
            "reads": reads,
        }
        payload = msgpack.packb(doc, use_bin_type=True)
        await objects.put_if_absent(
            layout.zarr_session_record(job.job_id, stamp, ref.id), seal(_MAGIC, FORMAT, payload)
        )
        return ref


async def collect(staged: Staged) -> Staged:
    """Every write recorded for `staged`'s session, by any copy in any process, added to a
    copy of `staged` (the driver's own state: its reads, and copies given to `merge`)."""
    found = await asyncio.wrap_future(_worker_runtime().submit(_read_records(staged.job)))
    merged = Staged(
        staged.job, staged.base_version, staged.opened_at, dict(staged.keys), set(staged.reads), records=False
    )
    for stamp, ref, writes, reads in found:
        for key, deleted in writes:
            merged.add(key, (stamp, ref, deleted))
        merged.reads.update(reads)
    return merged


_Record = tuple[int, SegmentRef, list[tuple[str, bool]], list[str]]


async def _read_records(job: DistributedWrite) -> list[_Record]:
    async with _worker_runtime().objects(job) as (objects, layout):
        names = [info.name async for info in objects.list(layout.zarr_session_records(job.job_id))]
        limit = asyncio.Semaphore(_READ_CONCURRENCY)

        async def read(name: str) -> _Record:
            async with limit:
                return await _read_record(objects, name)

        return list(await asyncio.gather(*(read(n) for n in names)))


async def _read_record(objects: RetryingObjectStore, name: str) -> _Record:
    blob = await objects.get(name)
    if blob is None:
        # Records are deleted only by GC, past the grace period; the commit refuses a session
        # that old before it lists them, so a listed record that is gone is damage.
        raise CorruptionError(
            f"the Zarr session record {name} was listed but is gone: open a new session", object_name=name
        )
    try:
        doc = msgpack.unpackb(unseal(blob.data, _MAGIC, FORMAT, name, "Zarr session record"), raw=False)
        sid, min_key, max_key, count, size, min_version, max_version = doc["segment"]
        ref = SegmentRef(sid, min_key, max_key, count, size, min_version, max_version, None, 0)
        writes = [(str(k), bool(deleted)) for k, deleted in doc["writes"]]
        return int(doc["stamp"]), ref, writes, [str(k) for k in doc["reads"]]
    except (KeyError, TypeError, ValueError) as exc:
        raise CorruptionError(
            f"the Zarr session record {name} is malformed ({exc}): open a new session", object_name=name
        ) from exc


async def read_staged(job: DistributedWrite, ref: SegmentRef, key: bytes) -> bytes | None:
    """The value (None: a tombstone or absent) of `key` in staged segment `ref`."""

    async def read() -> bytes | None:
        async with _worker_runtime().objects(job) as (objects, layout):
            segments = SegmentStore(objects, layout, ByteLRU(0))
            # A staged segment's entries have no version until the commit: read it as version 0.
            found = await segments.get(replace(ref, commit_version=0), key, probe(key), 0)
        if found is None:
            return None
        value = found[1]
        assert value is None or isinstance(value, bytes), "a staged segment holds plain values (`stage`)"
        return value

    return await asyncio.wrap_future(_worker_runtime().submit(read()))
