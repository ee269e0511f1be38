"""What a partitioned store does across its partitions besides reading and committing:
tags retaining every partition at one instant, bulk loads split by partition, and
reports added up.

    <prefix>ptags/<hash of name>.tag    envelope "KVPT", msgpack {name, created,
                                        partitions: [[pid, start, version]] in key order}

A partitioned tag is a tag of the same name in each partition (a copy of its
manifest at that partition's latest version, `TagStore`) plus this object,
created last, naming the version of each partition at one instant
(`Router.consistent_views`); each partition reads its version from its copy,
which the commit history in it still reaches (else the tag is refused).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, AsyncIterator, Callable
from typing import Any

import msgpack

from ._bulk import Batch
from ._codec import ValueMode
from ._envelope import seal, unseal
from ._errors import ContentionError, TagExistsError, TagNotFoundError, ValidationError
from ._gc import GcReport
from ._objectstore import ObjectNotFound, PreconditionFailed
from ._partition_map import Partition, PartitionMap
from ._router import MAX_REDIRECTS, PartitionedView, Router
from ._snapshot import SnapshotView
from ._tags import Tag, _check_name
from ._tasks import gather_all

FORMAT = 1
_MAGIC = b"KVPT"


async def tag_partitions(router: Router, name: str) -> Tag:
    """Retain every partition at one instant under `name`; the Tag's version is the sum."""
    _check_name(name)
    ptag = router.root.partition_tag(name)
    for _ in range(MAX_REDIRECTS):
        pmap, views = await router.consistent_views()
        tags = await gather_all(_tag_one(router, pid, name) for pid in views)
        copies = await gather_all(router.engines[pid].tagged_view(name) for pid in views)
        if any(c.manifest.history_floor > views[pid].version for pid, c in zip(views, copies, strict=True)):
            # A compaction dropped the instant's history before the copy: take another instant.
            await gather_all(router.engines[pid].delete_tag(name) for pid in views)
            continue
        parts = [[p.pid, p.start, views[p.pid].version] for p in pmap.partitions]
        created = max(t.created for t in tags)
        payload = msgpack.packb({"name": name, "created": created, "partitions": parts}, use_bin_type=True)
        try:
            await router.objects.put_if_absent(ptag, seal(_MAGIC, FORMAT, payload))
        except PreconditionFailed:
            raise TagExistsError(f"tag {name!r} exists; tags never move: delete it first") from None
        return Tag(name, sum(v.version for v in views.values()), created)
    raise ContentionError(f"tagging {name!r}: compaction kept moving past the instant taken; retry it")


async def _tag_one(router: Router, pid: str, name: str) -> Tag:
    engine = router.engines[pid]
    try:
        return await engine.tag(name)
    except TagExistsError:
        if await _read(router, name, missing_ok=True) is not None:
            raise TagExistsError(f"tag {name!r} exists; tags never move: delete it first") from None
        # Left by an attempt that died before naming the versions (or by a retry above).
        await engine.delete_tag(name)
        return await engine.tag(name)


async def _read(router: Router, name: str, *, missing_ok: bool = False) -> dict[str, Any] | None:
    object_name = router.root.partition_tag(name)
    try:
        blob = await router.objects.get(object_name)
    except ObjectNotFound:
        if missing_ok:
            return None
        raise TagNotFoundError(f"no tag {name!r}: Store.tags() lists the tags") from None
    assert blob is not None
    doc: dict[str, Any] = msgpack.unpackb(unseal(blob.data, _MAGIC, FORMAT, object_name, "tag"), raw=False)
    return doc


async def tagged_view(router: Router, name: str) -> PartitionedView:
    """The partitions as tag `name` retained them, under the map of their ids."""
    _check_name(name)
    doc = await _read(router, name)
    assert doc is not None
    views: dict[str, SnapshotView] = {}
    seen: dict[str, bool] = {}  # one lookup of each decision for every partition (`consistent_views`)
    for pid, _, version in doc["partitions"]:
        engine = await router.engine_of(pid)
        copy = await engine.tagged_view(name)
        views[pid] = SnapshotView(copy.manifest, engine.sources, version, engine.decisions, seen)
    starts = [(pid, bytes(start)) for pid, start, _ in doc["partitions"]]
    ends: list[bytes | None] = [s for _, s in starts[1:]] + [None]
    pmap = PartitionMap(router.store_id, 0, tuple(Partition(p, s, e) for (p, s), e in zip(starts, ends, strict=True)))
    return PartitionedView(pmap, views)


async def partition_tags(router: Router) -> list[Tag]:
    tags = []
    async for info in router.objects.list(router.root.partition_tags_prefix):
        blob = await router.objects.get(info.name)
        assert blob is not None
        doc = msgpack.unpackb(unseal(blob.data, _MAGIC, FORMAT, info.name, "tag"), raw=False)
        tags.append(Tag(doc["name"], sum(v for _, _, v in doc["partitions"]), doc["created"]))
    return sorted(tags, key=lambda t: (t.created, t.name))


async def delete_partition_tag(router: Router, name: str) -> None:
    """Forget a tag: its versions object first (the tag is gone), then each partition's."""
    _check_name(name)
    doc = await _read(router, name)
    assert doc is not None
    await router.objects.delete(router.root.partition_tag(name))
    for pid, _, _ in doc["partitions"]:
        engine = await router.engine_of(pid)
        try:
            await engine.delete_tag(name)
        except TagNotFoundError:
            pass  # deleted by an earlier attempt


async def bulk_load_partitions(
    router: Router,
    batches: AsyncIterable[Batch],
    values: ValueMode,
    progress: Callable[[int], None] | None,
    chunk_bytes: int,
) -> int:
    """Route each batch's pairs to their partitions and bulk-load each partition's share
    there (concurrently, each its own commit); returns the highest version."""
    queues: dict[str, asyncio.Queue[Batch | None]] = {}
    loads: dict[str, asyncio.Task[int]] = {}
    written = 0

    async def stream(queue: asyncio.Queue[Batch | None]) -> AsyncIterator[Batch]:
        while (batch := await queue.get()) is not None:
            yield batch

    try:
        async for batch in batches:
            shares: dict[str, tuple[list[bytes], list[bytes]]] = {}
            for key, value in zip(batch.keys, batch.values, strict=True):
                keys, vals = shares.setdefault(router.pmap.partition_for(key).pid, ([], []))
                keys.append(key)
                vals.append(value)
            for pid, (keys, vals) in shares.items():
                if pid not in queues:
                    queues[pid] = asyncio.Queue(maxsize=2)  # memory: a chunk and two batches per partition
                    engine = router.engines[pid]
                    loads[pid] = asyncio.ensure_future(
                        engine.bulk_commit(stream(queues[pid]), values=values, progress=None, chunk_bytes=chunk_bytes)
                    )
                await _put(queues[pid], loads[pid], Batch(keys, vals, sum(map(len, keys)) + sum(map(len, vals))))
            written += len(batch.keys)
            if progress is not None:
                progress(written)
        for pid, queue in queues.items():
            await _put(queue, loads[pid], None)
        if not loads:
            raise ValidationError("bulk_load got no items")
        return max(await gather_all(loads.values()))
    finally:
        for task in loads.values():
            task.cancel()
        await asyncio.gather(*loads.values(), return_exceptions=True)


async def _put(queue: asyncio.Queue[Batch | None], load: asyncio.Task[int], item: Batch | None) -> None:
    """Queue `item` for `load`, or raise its failure if it ended (it would never take it)."""
    putting = asyncio.ensure_future(queue.put(item))
    await asyncio.wait([putting, load], return_when=asyncio.FIRST_COMPLETED)
    if not putting.done():
        putting.cancel()
        load.result()  # raises its error
        raise AssertionError("a partition's bulk load ended before its input")


def merge_gc_reports(reports: list[GcReport]) -> GcReport:
    """The reports of the partitions' GC runs as one."""
    merged = GcReport(dry_run=reports[0].dry_run, grace_period=max(r.grace_period for r in reports))
    for r in reports:
        merged.deleted += r.deleted
        merged.objects_deleted += r.objects_deleted
        merged.bytes_deleted += r.bytes_deleted
        for reason, n in r.kept.items():
            merged.kept[reason] = merged.kept.get(reason, 0) + n
        merged.collectable_after.update(r.collectable_after)
        merged.objects_waiting += r.objects_waiting
        if r.commit_log_versions is not None:
            lo, hi = r.commit_log_versions
            old = merged.commit_log_versions
            merged.commit_log_versions = (lo, hi) if old is None else (min(old[0], lo), max(old[1], hi))
        for attr, pick in (("first_collectable", min), ("last_collectable", max)):
            mine, theirs = getattr(merged, attr), getattr(r, attr)
            if theirs is not None:
                setattr(merged, attr, theirs if mine is None else pick(mine, theirs))
    return merged
