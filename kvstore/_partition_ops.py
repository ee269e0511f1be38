"""What a partitioned store does across its partitions besides reading and committing:
tags retaining every partition at one instant, bulk loads split by partition, and
reports added up.

    <prefix>ptags/<hash of name>.tag    envelope "KVPT", msgpack {name, created,
                                        partitions: [[pid, start, version]] in key order,
                                        shown: {decision name: bool}}

A partitioned tag is a tag of the same name in each partition (a copy of its
manifest at that partition's latest version, `TagStore`) plus this object,
created last, naming the version of each partition at one instant
(`Router.consistent_views`); each partition reads its version from its copy,
which the commit history in it still reaches (else the tag is refused). `shown`
fixes, when the tag is taken, whether it shows each cross-partition transaction
whose intent its copies hold (undecided then: not shown); a tag written before it
was recorded looks the decisions up when read. A tag taken before the store's
first split is the root partition's own (`Engine.tag`), read as it was.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

import msgpack

from ._bulk import Batch, route_batches
from ._codec import ValueMode
from ._envelope import seal, unseal
from ._errors import (
    ConflictError,
    ContentionError,
    PartitionMovedError,
    StoreNotFoundError,
    TagExistsError,
    TagNotFoundError,
    TransactionTooOldError,
    ValidationError,
)
from ._gc import GcReport
from ._manifest import SegmentRef
from ._objectstore import ObjectNotFound, PreconditionFailed, RetryingObjectStore, S3Options
from ._options import StoreOptions
from ._partition_map import ROOT_PID, Partition, PartitionMap
from ._router import MAX_REDIRECTS, PartitionedView, Router, open_router
from ._snapshot import READS_IN_FLIGHT, SnapshotView
from ._tags import Tag, _check_name
from ._tasks import gather_all, run_bounded
from ._two_phase import Decisions, commit_across
from ._url import parse_url

if TYPE_CHECKING:
    from ._commit import CommitRequest
    from ._engine import Engine

FORMAT = 1
_MAGIC = b"KVPT"
# A load's publish meeting other transactions' undecided intents is retried for up to
# 2 x intent_timeout (they are resolved by then, or aborted) plus this, pausing from
# SHARE_RETRY_PAUSE seconds (doubling, at most 1 s) between attempts.
SHARE_RETRY_SECONDS = 5.0
SHARE_RETRY_PAUSE = 0.05


async def tag_partitions(router: Router, name: str) -> Tag:
    """Retain every partition at one instant under `name`; the Tag's version is the sum."""
    _check_name(name)
    ptag = router.root.partition_tag(name)
    if await _root_has_tag(router, name):
        raise TagExistsError(
            f"tag {name!r} exists (taken before the store was split); tags never move: delete it first"
        )
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
        shown = await _fixed_outcomes(router, views, copies)
        if _resolved_since(views, copies, shown, router.decisions()):
            # A transaction the instant did not show was resolved into a copy since: that
            # copy would show it, the others not. Take another instant.
            await gather_all(router.engines[pid].delete_tag(name) for pid in views)
            continue
        doc = {"name": name, "created": created, "partitions": parts, "shown": shown}
        payload = msgpack.packb(doc, use_bin_type=True)
        try:
            await router.objects.put_if_absent(ptag, seal(_MAGIC, FORMAT, payload))
        except PreconditionFailed:
            raise TagExistsError(f"tag {name!r} exists; tags never move: delete it first") from None
        return Tag(name, sum(v.version for v in views.values()), created)
    raise ContentionError(
        f"tagging {name!r}: compactions or cross-partition commits kept moving past the instant taken; retry it"
    )


async def _fixed_outcomes(
    router: Router, views: dict[str, SnapshotView], copies: list[SnapshotView]
) -> dict[str, bool]:
    """Whether the tag shows each cross-partition transaction whose intent its copies hold at
    the tagged versions: what the instant's views found, else its decision now (undecided:
    not shown). Recorded in the tag, so that reading it never looks a decision up: a tag
    never moves, not even when such a transaction is decided later."""
    seen: dict[str, bool] = {}
    for view in views.values():
        seen.update(view.shown)  # the views of one instant share one map
    names = list(
        dict.fromkeys(
            i.decision
            for (pid, view), copy in zip(views.items(), copies, strict=True)
            for i in (*view.manifest.intents, *copy.manifest.intents)
            if i.version <= view.version
        )
    )
    unknown = [n for n in names if n not in seen]
    outcomes = await run_bounded(router.decisions().outcome, unknown, READS_IN_FLIGHT)
    seen.update({n: outcome == "committed" for n, outcome in zip(unknown, outcomes, strict=True)})
    return {n: seen[n] for n in names}


def _resolved_since(
    views: dict[str, SnapshotView], copies: list[SnapshotView], shown: dict[str, bool], decisions: Decisions
) -> bool:
    """Whether a copy no longer holds the intent of a cross-partition transaction that the
    instant's view held and the tag does not show: resolved in that partition between the
    instant and the copy, so the copy would show it as data there only (whatever became of
    its segment since: a compaction may have rewritten it). One known aborted was dropped,
    which shows nothing anywhere."""
    for view, copy in zip(views.values(), copies, strict=True):
        held = {i.decision for i in copy.manifest.intents}
        for i in view.manifest.intents:
            hidden = i.version <= view.version and not shown.get(i.decision, False)
            if hidden and i.decision not in held and decisions.cached(i.decision) != "aborted":
                return True
    return False


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


async def tagged_view(router: Router, name: str) -> PartitionedView | SnapshotView:
    """The partitions as tag `name` retained them, under the map of their ids (a tag taken
    before the store's first split: the root partition as it retained it)."""
    _check_name(name)
    doc = await _read(router, name, missing_ok=True)
    if doc is None:
        if await _root_has_tag(router, name):
            return await (await router.engine_of(ROOT_PID)).tagged_view(name)
        await _read(router, name)  # raises TagNotFoundError
    assert doc is not None
    views: dict[str, SnapshotView] = {}
    # What the tag shows of each cross-partition transaction, fixed when it was taken (a
    # tag made before that was recorded: one lookup of each decision for every partition).
    seen: dict[str, bool] = dict(doc.get("shown", {}))
    for pid, _, version in doc["partitions"]:
        engine = await router.engine_of(pid)
        copy = await engine.tagged_view(name)
        views[pid] = SnapshotView(copy.manifest, engine.sources, version, engine.decisions, seen)
    starts = [(pid, bytes(start)) for pid, start, _ in doc["partitions"]]
    ends: list[bytes | None] = [s for _, s in starts[1:]] + [None]
    pmap = PartitionMap(router.store_id, 0, tuple(Partition(p, s, e) for (p, s), e in zip(starts, ends, strict=True)))
    return PartitionedView(pmap, views)


async def _root_has_tag(router: Router, name: str) -> bool:
    """Whether the root partition holds tag `name`: one taken before the store's first split."""
    try:
        await router.objects.get(router.root.tag(name))
    except ObjectNotFound:
        return False
    return True


async def partition_tags(router: Router) -> list[Tag]:
    """Every tag: the partitioned ones, and those taken before the store's first split."""
    tags = []
    async for _ in router.objects.list(router.root.tags_prefix):
        tags.extend(await (await router.engine_of(ROOT_PID)).tags())
        break
    async for info in router.objects.list(router.root.partition_tags_prefix):
        blob = await router.objects.get(info.name)
        assert blob is not None
        doc = msgpack.unpackb(unseal(blob.data, _MAGIC, FORMAT, info.name, "tag"), raw=False)
        tags.append(Tag(doc["name"], sum(v for _, _, v in doc["partitions"]), doc["created"]))
    return sorted(tags, key=lambda t: (t.created, t.name))


async def delete_partition_tag(router: Router, name: str) -> None:
    """Forget a tag: its versions object first (the tag is gone), then each partition's
    (one taken before the store's first split: the root partition's)."""
    _check_name(name)
    doc = await _read(router, name, missing_ok=True)
    if doc is None:
        if await _root_has_tag(router, name):
            await (await router.engine_of(ROOT_PID)).delete_tag(name)
            return
        await _read(router, name)  # raises TagNotFoundError
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
    """Route each batch's pairs to their partitions and write each partition's share there
    as a sorted run (concurrently), then publish every share at once: one commit if the
    load falls in one partition, else a cross-partition commit whose intents carry the
    runs (`_two_phase.commit_across`). Returns the highest version."""
    pmap, engines = router.pmap, dict(router.engines)  # one map throughout: a split fails the publish
    merge_lock = asyncio.Lock()  # the shares' merges, one at a time: each holds compaction_memory_bytes

    async def write(pid: str, stream: AsyncIterator[Batch]) -> tuple[list[SegmentRef], float]:
        return await engines[pid].write_bulk_run(stream, progress=None, chunk_bytes=chunk_bytes, merge_lock=merge_lock)

    runs = await route_batches(batches, lambda key: pmap.partition_for(key).pid, write, progress)
    if not runs:
        raise ValidationError("bulk_load got no items")

    async def shares(txn_id: bytes) -> list[tuple[Engine, CommitRequest]]:
        return [
            (engines[pid], engines[pid].bulk_request(parts, started, values, txn_id=txn_id))
            for pid, (parts, started) in runs.items()
        ]

    return await publish_shares(router, shares)


async def commit_parts_partitions(
    router: Router,
    pmap: PartitionMap,
    *,
    shares: dict[str, list[SegmentRef]],
    segments: list[SegmentRef],
    **commit: Any,
) -> int:
    """Commit a distributed write's segments, written into the partitions of `pmap` by key
    (`shares`: partition id -> its segments, newest first; `segments`: all of them), in
    every partition at once, at most once per job (`Engine.parts_request`).
    PartitionMovedError if the store was split since the job was made (its segments lie
    in partitions that no longer take commits)."""
    del segments  # the same, by partition, in `shares`
    await router.reload()
    store_id = commit.pop("store_id")
    if router.store_id != store_id:
        raise StoreNotFoundError(
            f"the store at {router.location.url} is not the one this distributed write was made for (store id "
            f"{store_id}, now {router.store_id}): it was deleted and made again; run the job again"
        )
    if router.pmap.version != pmap.version:
        raise PartitionMovedError(
            f"{router.location.url} was split while distributed write {commit['job_id']} ran (partition map "
            f"version {pmap.version}, now {router.pmap.version}), so its parts were written for partitions that "
            "no longer take commits; nothing was written: write the parts again with a new job"
        )
    engines = {pid: router.engines[pid] for pid in shares}

    async def requests(txn_id: bytes) -> list[tuple[Engine, CommitRequest]]:
        made = [
            # Each partition's manifest has a store id of its own (the map's is the first's).
            engines[pid].parts_request(segments=refs, txn_id=txn_id, store_id=engines[pid].store_id, **commit)
            for pid, refs in shares.items()
        ]
        return list(zip(engines.values(), await gather_all(made), strict=True))

    return await publish_shares(router, requests)


async def open_and_commit_parts(
    url: str, s3: S3Options, options: StoreOptions, pmap: PartitionMap, **commit: Any
) -> int:
    """`commit_parts_partitions` through the store opened by its URL (a job unpickled away
    from the store that made it)."""
    location = parse_url(url, s3)
    objects = RetryingObjectStore(location.objects, options.retry)
    try:
        router = await open_router(
            location,
            options,
            objects,
            create=False,
            read_only=False,
            split_keys=None,
            new_settings={},
            adopt_settings={},
        )
    except BaseException:
        await objects.close()
        raise
    try:
        return await commit_parts_partitions(router, pmap, **commit)
    finally:
        await router.close()  # and the object store


async def publish_shares(
    router: Router, shares: Callable[[bytes], Awaitable[list[tuple[Engine, CommitRequest]]]]
) -> int:
    """Commit segments written beforehand in their partitions, all or none; the highest
    version. `shares(txn_id)` gives each partition's request (made again for each attempt).

    One partition: one commit, as on a store never split. Several: prepare an intent per
    segment in each, then one decision (`commit_across`). A conflict (an undecided intent of
    another transaction over a share's key range, which resolves within intent_timeout)
    is retried with the same segments under a new transaction id, up to a deadline: a load
    reads nothing, so only the segments' age (I8, checked by the committer) limits it."""
    deadline = time.monotonic() + 2 * router.options.intent_timeout + SHARE_RETRY_SECONDS
    pause = SHARE_RETRY_PAUSE
    while True:
        parts = await shares(router.first.new_txn_id())
        try:
            if len(parts) == 1:
                engine, request = parts[0]
                return await engine.commit(request)
            return max(await commit_across(parts, router.decisions()))
        except ConflictError as exc:
            if isinstance(exc, PartitionMovedError | TransactionTooOldError) or isinstance(
                exc.__cause__, PartitionMovedError
            ):
                # The shares were written for partitions that no longer take commits (or
                # are too old to commit): no retry can publish them. Follow the splits so
                # that the next load routes by the new map.
                await router.follow_sealed()
                raise
            if time.monotonic() + pause > deadline:
                raise
        await asyncio.sleep(pause)
        pause = min(2 * pause, 1.0)


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
