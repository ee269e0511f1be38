"""Long-lived stores: tags, time travel, garbage collection, history and watch."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import msgpack
import pytest
from targets import Target, engine_of, file_target, make_orphans

import kvstore
from kvstore._envelope import unseal

NO_AUTO = kvstore.StoreOptions(auto_compact=False, history_versions=3)
# Tests about segment objects (GC, missing objects) make every commit write one.
NO_INLINE = {"inline_segment_bytes": 0}


async def _segment_objects(db: kvstore.Store) -> set[str]:
    return {info.name async for info in engine_of(db).objects.list(engine_of(db).layout.segments_prefix)}


@pytest.mark.parametrize("inline", [0, 16 * 1024])
async def test_tag_reads_the_past_after_compaction_and_gc(target: Target, inline: int) -> None:
    options = kvstore.StoreOptions(
        auto_compact=False, history_versions=0, commit_log_length=2, inline_segment_bytes=inline
    )
    async with target.open(options=options, values="msgpack") as db:
        await db.put("ds/a", {"rows": 10})
        await db.put("ds/b", {"rows": 20})
        tag = await db.tag("release-2026-11")
        assert tag.version == db.version
        await db.put("ds/a", {"rows": 11})
        await db.delete("ds/b")
        await db.put("ds/c", {"rows": 30})
        await db.compact(full=True)
        report = await db.gc(grace_period=0)
        # the segments of versions 3 and 4 (none when they rode inline in the manifest) ...
        assert len(report.deleted) == (0 if inline else 2)
        snap = await db.snapshot(tag="release-2026-11")
        assert snap.version == tag.version
        # ... but not what the tag needs
        assert {k: v async for k, v in snap.scan()} == {b"ds/a": {"rows": 10}, b"ds/b": {"rows": 20}}
        assert await (await db.snapshot(version=tag.version)).get("ds/b") == {"rows": 20}
        assert {k async for k, _ in db.scan()} == {b"ds/a", b"ds/c"}
        assert [t.name for t in await db.tags()] == ["release-2026-11"]
        with pytest.raises(kvstore.TagExistsError, match="delete it first"):
            await db.tag("release-2026-11")
        await db.delete_tag("release-2026-11")
        with pytest.raises(kvstore.TagNotFoundError):
            await db.snapshot(tag="release-2026-11")
        report = await db.gc(grace_period=0)
        assert any("snapshots/" in name for name in report.deleted)  # the manifest copy went too


async def test_snapshot_of_recent_versions_is_exact(target: Target) -> None:
    async with target.open(options=NO_AUTO) as db:
        versions = {}
        for i in range(8):
            versions[await db.put(b"k", str(i).encode())] = str(i).encode()
        await db.delete(b"k")
        await db.compact(full=True)  # keeps what the last 3 versions need
        latest = db.version
        for version in range(latest - 3, latest):
            snap = await db.snapshot(version=version)
            expected = versions.get(version)
            assert await snap.get(b"k") == expected
        with pytest.raises(kvstore.VersionNotRetainedError, match="history_versions"):
            await db.snapshot(version=1)
        with pytest.raises(kvstore.FutureVersionError):
            await db.snapshot(version=latest + 5)


async def test_a_version_not_committed_yet_says_so_with_the_latest(target: Target) -> None:
    """A future version is not "not retained": FutureVersionError (a ValidationError, not a
    VersionNotRetainedError) names the latest version, read afresh, so a version another
    opener committed meanwhile is still found."""
    async with target.open(options=NO_AUTO) as db, target.open(options=NO_AUTO) as other:
        await db.put(b"k", b"1")
        newer = await other.put(b"k", b"2")  # db has not seen it yet
        assert await (await db.snapshot(version=newer)).get(b"k") == b"2"
        for future in (newer + 1, 10**6):
            with pytest.raises(kvstore.FutureVersionError, match=f"version {future} does not exist yet") as raised:
                await db.snapshot(version=future)
            assert raised.value.latest == newer
            assert f"the latest version of {db.url} is {newer}" in str(raised.value)
            assert isinstance(raised.value, kvstore.ValidationError)
            assert not isinstance(raised.value, kvstore.VersionNotRetainedError)
    await asyncio.to_thread(_sync_future_version, target, newer)


def _sync_future_version(target: Target, latest: int) -> None:
    with target.open_sync() as db, pytest.raises(kvstore.FutureVersionError, match=f"latest version .* is {latest}"):
        db.snapshot(version=10**6)


async def test_gc_keeps_young_orphans_and_collects_old_ones(target: Target) -> None:
    """A crashed writer leaves a segment no manifest references."""
    async with target.open(options=NO_AUTO) as db:
        await db.put(b"a", b"1")
        orphan = engine_of(db).layout.segment("000000000000-crashedwriter0000")
        await engine_of(db).objects.put_if_absent(orphan, b"a crashed writer's segment")
        report = await db.gc()  # default grace: an hour
        assert orphan not in report.deleted and "younger than the grace period" in report.kept[orphan]
        dry = await db.gc(grace_period=0, dry_run=True)
        assert dry.deleted == [orphan] and orphan in await _segment_objects(db)
        report = await db.gc(grace_period=0)
        assert report.deleted == [orphan]
        assert orphan not in await _segment_objects(db)
        assert await db.get(b"a") == b"1"
        assert all(reason for reason in report.kept.values())


async def test_gc_spares_segments_an_old_snapshot_still_reads(target: Target) -> None:
    short_log = kvstore.StoreOptions(auto_compact=False, history_versions=0, commit_log_length=2, **NO_INLINE)
    async with target.open(options=short_log) as db:
        for i in range(6):
            await db.put(f"k{i}", b"v")
        reader = await db.snapshot()
        async with target.open(options=short_log) as other:
            await other.compact(full=True)
            report = await other.gc()  # default grace
            assert not report.deleted
            assert sum("grace period" in r for r in report.kept.values()) >= 5  # the replaced segments
        assert [k async for k, _ in reader.scan()] == [f"k{i}".encode() for i in range(6)]
        assert await reader.get(b"k3") == b"v"


async def test_gc_after_log_moves_on_deletes_replaced_segments(target: Target) -> None:
    options = kvstore.StoreOptions(auto_compact=False, commit_log_length=2, history_versions=0)
    async with target.open(options=options) as db:
        for i in range(5):
            await db.put(f"k{i}", b"v")
        before = await _segment_objects(db)
        await db.compact(full=True)
        await db.put(b"k9", b"v")
        await db.put(b"k8", b"v")  # the compaction record leaves the 2-entry log
        report = await db.gc(grace_period=0)
        assert set(report.deleted) == before  # the 5 replaced segments
        again = await db.gc(grace_period=0)
        assert again.deleted == [] and set(again.kept.values()) == {"live"}  # merged, k9, k8
        assert [k async for k, _ in db.scan()] == [b"k0", b"k1", b"k2", b"k3", b"k4", b"k8", b"k9"]
        assert (await db.verify()).ok


async def test_history_lists_commits_with_meta(target: Target) -> None:
    async with target.open(options=NO_AUTO) as db:
        async with db.transaction(meta={"who": "ada", "why": "register dataset"}) as tx:
            tx.put(b"ds/x", b"1")
        await db.put(b"ds/y", b"2")
        await db.compact(full=True)
        history = await db.history()
        assert [h.kind for h in history] == ["compaction", "commit", "commit"]
        assert [h.version for h in history] == [3, 2, 1]
        assert history[2].meta == [{"who": "ada", "why": "register dataset"}]
        assert history[2].key_count == 1 and history[1].meta is None
        assert len(await db.history(limit=1)) == 1


async def test_watch_sees_every_commit_in_prefix_once_in_order(target: Target) -> None:
    async with target.open(options=NO_AUTO) as db, target.open(options=NO_AUTO) as writer:
        seen: list[kvstore.Change] = []
        start = db.version

        async def watch() -> None:
            async for change in db.watch(prefix=b"jobs/", interval=0.01, since=start):
                seen.append(change)
                if len(seen) == 5:
                    return

        watcher = asyncio.create_task(watch())
        expected = []
        for i in range(8):
            if i % 3 == 2:
                await writer.put(f"other/{i}", b"x")
            else:
                version = await writer.put(f"jobs/{i}", b"x")
                expected.append((version, [f"jobs/{i}".encode()]))
            if i == 4:
                await writer.compact(full=True)  # writes no keys: not a change
        await asyncio.wait_for(watcher, timeout=30)
        assert [(c.version, c.keys) for c in seen] == expected[:5]


async def test_missing_segment_is_a_clear_error_and_verify_reports_it(target: Target) -> None:
    options = replace(NO_AUTO, **NO_INLINE)
    async with target.open(options=options) as db:
        await db.put(b"a", b"1")
        await db.put(b"b", b"2")
        manifest = engine_of(db).manifest
        victim = engine_of(db).layout.segment(manifest.segments[-1].id)  # a's segment
        await engine_of(db).objects.delete(victim)
    async with target.open(options=options) as db:
        with pytest.raises(kvstore.VersionNotRetainedError, match="no longer exists"):
            await db.get(b"a")
        assert await db.get(b"b") == b"2"
        report = await db.verify()
        assert report.damaged == {victim: "missing: referenced by the manifest but absent"}


async def test_gc_marks_no_object_younger_than_the_grace_period(tmp_path: Path) -> None:
    """A young unreferenced segment may be a commit in progress: it may yet be committed,
    and then compacted away. A mark taken now would outlive both and let a later run
    delete it less than a grace period after it stopped being referenced (I6)."""
    target = file_target(tmp_path)
    async with target.open(options=kvstore.StoreOptions(auto_compact=False)) as db:
        await db.put(b"k", b"v")
        engine = engine_of(db)
        young = engine.layout.segment("000000000001-inflight00000000")
        old = engine.layout.segment("000000000000-crashed000000000")
        await engine.objects.put_if_absent(young, b"a segment of a commit in progress")
        await engine.objects.put_if_absent(old, b"a crashed writer's segment")
        two_hours_ago = time.time() - 7200
        os.utime(tmp_path / "store" / old, (two_hours_ago, two_hours_ago))
        report = await db.gc(grace_period=3600)
        marks = await _gc_marks(engine)
        assert young not in marks and old in marks
        assert report.deleted == []  # the old one is marked now: collectable an hour from now
        assert report.collectable_after[young] == pytest.approx(time.time() + 7200, abs=60)


class _CountsDeletes:
    """Delegates to a backend and records the size of every delete_many and each delete."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.batches: list[int] = []
        self.single_deletes = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def delete(self, name: str) -> None:
        self.single_deletes += 1
        await self._inner.delete(name)

    async def delete_many(self, names: list[str]) -> None:
        self.batches.append(len(names))
        await self._inner.delete_many(names)


async def test_gc_deletes_many_objects_in_batches_as_it_lists(target: Target) -> None:
    made: list[_CountsDeletes] = []
    async with target.open(
        options=replace(NO_AUTO, **NO_INLINE),
        wrap_object_store=lambda inner: made.append(_CountsDeletes(inner)) or made[-1],
    ) as db:
        await db.put(b"a", b"1")
        live = await _segment_objects(db)
        orphans = await make_orphans(engine_of(db), 2500)
        dry = await db.gc(grace_period=0, dry_run=True)
        assert set(dry.deleted) == orphans and dry.bytes_deleted == 2500 * len(b"lost")
        assert made[0].batches == [] and await _segment_objects(db) == live | orphans
        report = await db.gc(grace_period=0)
        assert set(report.deleted) == orphans and len(report.deleted) == 2500
        assert report.kept == dict.fromkeys(live, "live")
        assert made[0].batches == [1000, 1000, 500] and made[0].single_deletes == 0
        assert await _segment_objects(db) == live
        assert await db.get(b"a") == b"1"


class _CommitsWhileListed:
    """Delegates to a backend; the first listing starts only after `during_listing` ran."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.during_listing: Any = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def list(self, prefix: str) -> AsyncIterator[Any]:
        if self.during_listing is not None and "segments/" in prefix:
            hook, self.during_listing = self.during_listing, None
            await hook()
        async for info in self._inner.list(prefix):
            yield info


async def test_gc_deletes_nothing_committed_while_it_listed(tmp_path: Path) -> None:
    """The references are computed before the listing; a segment committed meanwhile is
    young, hence kept. Made to look old here, the latest manifest still spares it."""
    target = file_target(tmp_path)
    made: list[_CommitsWhileListed] = []
    options = replace(NO_AUTO, **NO_INLINE)
    async with (
        target.open(
            options=options, wrap_object_store=lambda inner: made.append(_CommitsWhileListed(inner)) or made[-1]
        ) as db,
        target.open(options=options) as writer,
    ):
        await db.put(b"a", b"1")

        async def commit_and_age() -> None:
            await writer.put(b"late", b"2")
            for segment in (tmp_path / "store" / "segments").iterdir():
                os.utime(segment, (time.time() - 7200, time.time() - 7200))

        made[0].during_listing = commit_and_age
        report = await db.gc(grace_period=0)
        assert made[0].during_listing is None  # the commit landed during the listing
        assert report.deleted == []
        assert list(report.kept.values()) == ["live", "live"]
        assert await db.get(b"late") == b"2" and await db.get(b"a") == b"1"


async def _gc_marks(engine: Any) -> dict[str, float]:
    blob = await engine.objects.get(engine.layout.gc_marks)
    return dict(msgpack.unpackb(unseal(blob.data, b"KVGC", 1, "marks", "gc marks"), raw=False))
