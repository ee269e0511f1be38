"""Write a Dask collection into a store: each partition becomes one part of a
distributed write, written on the Dask workers; one commit publishes them all.

Needs the extra: ``pip install 'kvstore[dask]'``. ::

    import kvstore, kvstore.dask

    async with kvstore.open("s3://bucket/catalog", values="msgpack") as db:
        version = await kvstore.dask.store(db, files_dataframe, key="path", client=client)

A `dask.bag.Bag` holds (key, value) pairs. A `dask.dataframe.DataFrame` gives
its keys from the column `key` (its index when `key` is None) and its values
from the column `value`, or, when `value` is None, as a dict of the row's other
columns: stored as it is in a ``values="msgpack"`` store, as msgpack bytes in a
bytes store. Keys and values are checked as `Store.bulk_load` checks them.

Partition i is part i. When a worker dies, Dask runs its tasks again
elsewhere; the retried task writes its part again (new segments) and only the
part it returns is committed, so a key is never written twice nor reordered,
and the segments of the dead attempt are left to `Store.gc`. Where partitions
hold the same key, the later partition wins. If the job fails (a task fails
more often than Dask allows), nothing is committed: rerun it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from typing import Any

import msgpack

from ._compact import SubCompaction, SubCompactionResult, SubCompactionRunner
from ._distributed import DistributedWrite, Part, StoreAddress, compact_range
from ._errors import InvalidValueError, ValidationError

try:
    import dask
    import dask.bag
    import dask.dataframe
except ImportError as exc:  # pragma: no cover - the message is the point
    raise ImportError("kvstore.dask needs Dask: pip install 'kvstore[dask]'") from exc

__all__ = ["compute_parts", "store", "store_sync", "sub_compactions_on", "write_parts"]


def write_parts(job: DistributedWrite, data: Any, *, key: str | None = None, value: str | None = None) -> list[Any]:
    """One lazy task (a `dask.delayed` object) per partition of `data` (a Bag of pairs or a
    DataFrame), each writing that partition as part i of `job` and returning its `Part`.

    Compute them with any Dask scheduler, then ``await job.commit(parts)`` in the
    order given here.
    """
    if isinstance(data, dask.bag.Bag):
        if key is not None or value is not None:
            raise ValidationError("key= and value= name DataFrame columns; a Bag holds (key, value) pairs")
        chunks = data.to_delayed()
        write = dask.delayed(_write_pairs, pure=False)
        return [write(job, chunk, i) for i, chunk in enumerate(chunks)]
    if isinstance(data, dask.dataframe.DataFrame):
        columns = list(data.columns)
        for name in (key, value):
            if name is not None and name not in columns:
                raise ValidationError(f"no column {name!r} in the DataFrame (columns: {columns})")
        if key is not None and key == value:
            raise ValidationError("key= and value= must name different columns")
        chunks = data.to_delayed()
        write = dask.delayed(_write_frame, pure=False)
        return [write(job, chunk, i, key, value) for i, chunk in enumerate(chunks)]
    raise ValidationError(
        f"kvstore.dask writes a dask.bag.Bag or a dask.dataframe.DataFrame, not {type(data).__name__}"
    )


def compute_parts(
    job: DistributedWrite, data: Any, *, key: str | None = None, value: str | None = None, client: Any = None
) -> list[Part]:
    """Write every partition of `data` (blocking) and return the parts, in partition order.

    With `client` (a `distributed.Client`) the tasks run on its cluster; without, on
    Dask's current scheduler (the default client if there is one).
    """
    tasks = write_parts(job, data, key=key, value=value)
    if client is not None:
        parts: list[Part] = client.gather(client.compute(tasks))
        return parts
    return list(dask.compute(*tasks))


async def store(
    db: Any,
    data: Any,
    *,
    key: str | None = None,
    value: str | None = None,
    meta: dict[str, Any] | None = None,
    chunk_bytes: int = 64 * 1024 * 1024,
    client: Any = None,
) -> int:
    """Write `data` into the `Store` `db` as one distributed write; returns the version.

    The partitions are written on the Dask workers (this event loop stays free
    meanwhile); one manifest CAS commits them all, or nothing is committed.
    """
    job = await db.distributed_write(meta=meta, chunk_bytes=chunk_bytes)
    parts = await asyncio.to_thread(compute_parts, job, data, key=key, value=value, client=client)
    version: int = await job.commit(parts)
    return version


def store_sync(
    db: Any,
    data: Any,
    *,
    key: str | None = None,
    value: str | None = None,
    meta: dict[str, Any] | None = None,
    chunk_bytes: int = 64 * 1024 * 1024,
    client: Any = None,
) -> int:
    """`store` for a `SyncStore` (blocking)."""
    job = db.distributed_write(meta=meta, chunk_bytes=chunk_bytes)
    parts = compute_parts(job.job, data, key=key, value=value, client=client)
    version: int = job.commit(parts)
    return version


def sub_compactions_on(client: Any, address: StoreAddress) -> SubCompactionRunner:
    """A runner for `Compactor.compact` that runs each key range as a task on `client`'s
    cluster (`Store.compact(client=...)` uses it), a step holding one range per worker
    process. The first failure fails the compaction; outputs already written are left to GC."""

    async def run(subs: Sequence[SubCompaction]) -> list[SubCompactionResult]:
        futures = client.map(compact_range, [address] * len(subs), subs, pure=False)
        try:
            results: list[SubCompactionResult] = await asyncio.to_thread(client.gather, futures)
        except BaseException:
            client.cancel(futures)
            raise
        return results

    # One range per worker process: a range is CPU-bound Python, so threads of one worker share a core.
    return SubCompactionRunner(run, width=max(1, len(client.nthreads())))


def _write_pairs(job: DistributedWrite, pairs: Iterable[tuple[Any, Any]], index: int) -> Part:
    return job.write(pairs, index=index)


def _write_frame(job: DistributedWrite, frame: Any, index: int, key: str | None, value: str | None) -> Part:
    keys: Sequence[Any] = frame.index.tolist() if key is None else frame[key].tolist()
    if value is not None:
        values: Sequence[Any] = frame[value].tolist()
    else:
        rows = frame.drop(columns=[key]) if key is not None else frame
        values = rows.to_dict(orient="records")
        if job.values == "bytes":
            values = [_packed(row) for row in values]
    return job.write(zip(keys, values, strict=True), index=index)


def _packed(row: dict[str, Any]) -> bytes:
    try:
        packed: bytes = msgpack.packb(row, use_bin_type=True)
    except (TypeError, ValueError, OverflowError) as exc:
        raise InvalidValueError(
            f"a row's columns cannot be stored as msgpack ({exc}): convert them to str, numbers, bytes, "
            "lists or dicts first (e.g. timestamps with .astype(str))"
        ) from exc
    return packed
