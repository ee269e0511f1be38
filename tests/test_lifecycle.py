"""Long-lived stores: tags, time travel, garbage collection, history and watch."""

from __future__ import annotations

import asyncio
import math
import os
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import msgpack
import pytest
from targets import LATER, Target, engine_of, file_target, gc_later, make_orphans

import kvstore
import kvstore._gc
from kvstore._envelope import unseal
from kvstore._manifest import decode_manifest, encode_manifest

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
        report = await gc_later(db)
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
        report = await gc_later(db)
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
        assert orphan not in report.deleted and orphan in report.collectable_after
        assert any("younger than the grace period" in why for why in report.kept)
        dry = await gc_later(db, dry_run=True)
        assert dry.deleted == [orphan] and orphan in await _segment_objects(db)
        report = await gc_later(db)
        assert report.deleted == [orphan]
        assert orphan not in await _segment_objects(db)
        assert await db.get(b"a") == b"1"
        assert all(n > 0 for n in report.kept.values())


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
            assert sum(n for why, n in report.kept.items() if "grace period" in why) >= 5  # the replaced segments
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
        report = await gc_later(db)
        assert set(report.deleted) == before  # the 5 replaced segments
        again = await gc_later(db)
        assert again.deleted == [] and set(again.kept) == {"live"}  # what is live (small commits ride inline)
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


class _HoldsACommit:
    """Delegates to a backend; once armed, the next manifest CAS sets `held` and waits for
    `release` (a slow CAS: contention, backoff, a slow network) before it is sent."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.armed = False
        self.held = asyncio.Event()
        self.release = asyncio.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def put_if_match(self, name: str, data: bytes, etag: str) -> str:
        if self.armed and name.endswith("manifest"):
            self.armed = False
            self.held.set()
            await self.release.wait()
        result: str = await self._inner.put_if_match(name, data, etag)
        return result


async def test_gc_from_another_process_spares_the_segment_of_a_commit_in_flight(target: Target) -> None:
    """I7 with I8: a writer may commit a segment up to half of its grace period old, so GC
    (in any process, whatever its own options) never applies a shorter one than the store
    records. A shorter `grace_period` is refused; a GC process opened with a short
    `segment_grace_period` still applies the recorded one. Its clock is moved past two of
    its own grace periods instead of waiting for them."""
    made: list[_HoldsACommit] = []
    writer_options = replace(NO_AUTO, **NO_INLINE)  # segment_grace_period: an hour
    hasty = kvstore.StoreOptions(auto_compact=False, segment_grace_period=2.0, max_transaction_age=0.5)
    async with (
        target.open(
            options=writer_options, wrap_object_store=lambda inner: made.append(_HoldsACommit(inner)) or made[-1]
        ) as db,
        target.open(options=hasty) as other,
    ):
        made[0].armed = True
        commit = asyncio.create_task(db.put(b"k", b"v"))
        try:
            await asyncio.wait_for(made[0].held.wait(), 30)  # the segment is written, its CAS held
            (segment,) = await _segment_objects(db)
            with pytest.raises(kvstore.GracePeriodTooShortError, match="Use at least 3600 s") as refused:
                await other.gc(grace_period=1)
            assert (refused.value.requested, refused.value.minimum) == (1, 3600)
            clock = engine_of(other)
            for ahead in (3.0, 6.0):  # marked at +3 s, two of `hasty`'s grace periods later: +6 s
                clock.wall_clock = lambda ahead=ahead: time.time() + ahead
                report = await other.gc()
                assert report.grace_period == 3600 and report.deleted == []
            assert await _segment_objects(db) == {segment}
        finally:
            made[0].release.set()  # a failed check must not leave the commit (and close) waiting
        version = await asyncio.wait_for(commit, 30)
        assert engine_of(db).manifest.segments[0].id in segment
        async with target.open(options=writer_options) as reader:
            assert reader.version == version and await reader.get(b"k") == b"v"
            assert (await reader.verify()).ok


async def test_the_store_records_the_longest_grace_period_of_its_writers(target: Target) -> None:
    """Created with its creator's grace period, raised (one settings commit) by a writer
    opening with a longer one, never lowered; a store that records none (made before it was
    recorded) is held to the GC process's own, and records it at its next writable open."""
    longer = replace(NO_AUTO, segment_grace_period=7200)
    async with target.open(options=NO_AUTO) as db:
        await db.put(b"a", b"1")
        assert engine_of(db).manifest.settings["segment_grace_period"] == 3600
        async with target.open(options=longer) as patient:
            assert patient.version == 2 and [c.kind for c in await patient.history()][0] == "settings"
        async with target.open(options=replace(NO_AUTO, segment_grace_period=10, max_transaction_age=1)) as hasty:
            assert hasty.version == 2  # nothing recorded: the record only rises
            assert (await hasty.gc()).grace_period == 7200
        with pytest.raises(kvstore.GracePeriodTooShortError, match="7200 s"):
            await db.gc(grace_period=3600)
        assert (await db.gc(grace_period=9000)).grace_period == 9000
        # A store made before the record: its manifest rewritten without it.
        engine = engine_of(db)
        blob = await engine.objects.get(engine.layout.manifest)
        assert blob is not None and blob.etag is not None
        unrecorded = replace(decode_manifest(blob.data, "manifest"), settings={"values": "bytes"})
        await engine.objects.put_if_match(engine.layout.manifest, encode_manifest(unrecorded), blob.etag)
    async with target.open(read_only=True) as reader:
        with pytest.raises(kvstore.GracePeriodTooShortError, match="3600 s"):
            await reader.gc(dry_run=True, grace_period=60)
    async with target.open(options=longer) as writer:
        assert engine_of(writer).manifest.settings["segment_grace_period"] == 7200


def test_options_refuse_a_grace_period_or_transaction_age_that_is_not_a_finite_number() -> None:
    """A NaN passes every `<` check as False, so the checks are written to refuse it; inf (or a
    period over 30 days) would keep every unreferenced object for good once recorded."""
    for grace in (math.nan, math.inf, -math.inf, 0.0, -1.0, 30 * 86400.0 + 1):
        with pytest.raises(kvstore.ValidationError, match="segment_grace_period must be a finite number"):
            kvstore.StoreOptions(segment_grace_period=grace)
    for age in (math.nan, math.inf, -1.0):
        with pytest.raises(kvstore.ValidationError, match="max_transaction_age must be a finite number"):
            kvstore.StoreOptions(max_transaction_age=age)
    assert kvstore.StoreOptions(segment_grace_period=30 * 86400.0).segment_grace_period == 30 * 86400.0


async def test_gc_refuses_a_grace_period_that_is_not_a_finite_number(target: Target) -> None:
    """GC asked for grace_period=nan (which no `<` check refuses) or inf refuses it before it
    deletes anything: with nan it would have deleted the segment of a commit in flight."""
    made: list[_HoldsACommit] = []
    options = replace(NO_AUTO, **NO_INLINE)
    async with (
        target.open(
            options=options, wrap_object_store=lambda inner: made.append(_HoldsACommit(inner)) or made[-1]
        ) as db,
        target.open(options=options) as other,
    ):
        made[0].armed = True
        commit = asyncio.create_task(db.put(b"k", b"v"))
        try:
            await asyncio.wait_for(made[0].held.wait(), 30)  # the segment is written, its CAS held
            (segment,) = await _segment_objects(db)
            for bad in (math.nan, math.inf, -1.0):
                with pytest.raises(kvstore.ValidationError, match="grace_period must be a finite number"):
                    await other.gc(grace_period=bad)
            assert await _segment_objects(db) == {segment}
        finally:
            made[0].release.set()
        await asyncio.wait_for(commit, 30)
    async with target.open(read_only=True) as reader:
        assert await reader.get(b"k") == b"v" and (await reader.verify()).ok


async def _record_grace(db: kvstore.Store, value: float) -> None:
    """Rewrite the manifest with `value` as its grace record, as a release without the checks could."""
    engine = engine_of(db)
    blob = await engine.objects.get(engine.layout.manifest)
    assert blob is not None and blob.etag is not None
    manifest = decode_manifest(blob.data, "manifest")
    poisoned = replace(manifest, settings={**manifest.settings, "segment_grace_period": value})
    await engine.objects.put_if_match(engine.layout.manifest, encode_manifest(poisoned), blob.etag)


@pytest.mark.parametrize("bad", [math.nan, math.inf])
async def test_a_record_that_is_not_a_finite_number_is_refused_by_gc_and_replaced_by_a_writer(
    target: Target, bad: float
) -> None:
    """A NaN record made every GC treat every object as old (deleting a commit in flight's
    segment); an inf one made GC keep everything for good, and no writer could replace either.
    Now GC refuses such a record (CorruptionError), and a writable open, even with default
    options, records its own period in its place; GC then spares a commit in flight and
    collects garbage again."""
    options = replace(NO_AUTO, **NO_INLINE)
    async with target.open(options=options) as db:
        await db.put(b"a", b"1")
        await _record_grace(db, bad)
    async with target.open(read_only=True) as reader:
        with pytest.raises(kvstore.CorruptionError, match="records segment_grace_period=") as refused:
            await reader.gc(dry_run=True)
        assert refused.value.object_name.endswith("manifest") and "Open the store for writing" in str(refused.value)
    made: list[_HoldsACommit] = []
    async with (
        target.open(
            options=options, wrap_object_store=lambda inner: made.append(_HoldsACommit(inner)) or made[-1]
        ) as db,
        target.open(options=options) as admin,
    ):
        assert engine_of(admin).manifest.settings["segment_grace_period"] == 3600
        orphans = await make_orphans(engine_of(admin), 2)
        made[0].armed = True
        commit = asyncio.create_task(db.put(b"k", b"v"))
        try:
            await asyncio.wait_for(made[0].held.wait(), 30)  # the segment is written, its CAS held
            in_flight = await _segment_objects(db) - orphans
            report = await admin.gc()
            assert report.grace_period == 3600 and report.deleted == []
            assert in_flight <= await _segment_objects(db)
        finally:
            made[0].release.set()
        await asyncio.wait_for(commit, 30)
        assert orphans <= set((await gc_later(admin)).deleted)  # GC collects garbage again
    async with target.open(read_only=True) as reader:
        assert await reader.get(b"k") == b"v" and (await reader.verify()).ok


async def test_a_writer_with_default_options_adopts_the_recorded_grace_period(target: Target) -> None:
    """A default `segment_grace_period` is the store's record: the open never raises it, its
    commits are held to half of it (I8), GC with that period works, and a default
    max_transaction_age too long for it is cut to a sixth of it. Only an explicit longer
    period raises the record."""
    short = replace(NO_AUTO, segment_grace_period=120, max_transaction_age=30)
    async with target.open(options=short) as db:
        await db.put(b"a", b"1")
        version = db.version
    async with target.open(options=NO_AUTO) as db:
        assert db.version == version  # no settings commit
        assert engine_of(db).manifest.settings["segment_grace_period"] == 120
        assert (db.options.segment_grace_period, db.options.max_transaction_age) == (120, 20)
        assert (await db.gc(grace_period=120)).grace_period == 120
        assert (await db.gc()).grace_period == 120
    async with target.open(options=replace(NO_AUTO, max_transaction_age=45)) as db:
        assert (db.options.segment_grace_period, db.options.max_transaction_age) == (120, 45)
    async with target.open(options=replace(NO_AUTO, segment_grace_period=7200)) as db:
        assert engine_of(db).manifest.settings["segment_grace_period"] == 7200
    async with target.open(options=NO_AUTO) as db:
        assert db.options.segment_grace_period == 7200 and db.options.max_transaction_age == 600


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
        orphans = await make_orphans(engine_of(db), 1500)
        dry = await gc_later(db, dry_run=True)
        assert set(dry.deleted) == orphans and dry.bytes_deleted == 1500 * len(b"lost")
        assert made[0].batches == [] and await _segment_objects(db) == live | orphans
        report = await gc_later(db)
        assert set(report.deleted) == orphans and len(report.deleted) == 1500
        assert report.kept == {"live": len(live)}
        assert made[0].batches == [1000, 500] and made[0].single_deletes == 0
        assert await _segment_objects(db) == live
        assert await db.get(b"a") == b"1"


class _CommitsWhileListed:
    """Delegates to a backend; the first listing of a prefix ending in `listed` (segments,
    by default) starts only after `during_listing` ran."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.during_listing: Any = None
        self.listed = "segments/"

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def list(self, prefix: str) -> AsyncIterator[Any]:
        if self.during_listing is not None and prefix.endswith(self.listed):
            hook, self.during_listing = self.during_listing, None
            await hook()
        async for info in self._inner.list(prefix):
            yield info


async def test_gc_deletes_nothing_committed_while_it_listed(tmp_path: Path) -> None:
    """The references are computed before the listing; a segment committed meanwhile is
    young, hence kept. Made to look old and long unreferenced here (GC's clock moved on
    while its commit was held: marked by one run, deletable by the next), the latest
    manifest, read again before each batch of deletes, still spares it."""
    target = file_target(tmp_path)
    made: list[_CommitsWhileListed] = []
    held: list[_HoldsACommit] = []
    options = replace(NO_AUTO, **NO_INLINE)
    async with (
        target.open(
            options=options, wrap_object_store=lambda inner: made.append(_CommitsWhileListed(inner)) or made[-1]
        ) as db,
        target.open(
            options=options, wrap_object_store=lambda inner: held.append(_HoldsACommit(inner)) or held[-1]
        ) as writer,
    ):
        await db.put(b"a", b"1")
        held[0].armed = True
        commit = asyncio.create_task(writer.put(b"late", b"2"))
        try:
            await asyncio.wait_for(held[0].held.wait(), 30)  # the segment is written, its CAS held
            late = await _segment_objects(db) - await _live_segments(db)
            engine, real = engine_of(db), time.time
            engine.wall_clock = lambda: real() + LATER
            first = await db.gc()
            assert first.objects_waiting == 1 and set(first.collectable_after) == late  # marked

            async def commit_now() -> None:
                held[0].release.set()
                await asyncio.wait_for(commit, 30)

            made[0].during_listing = commit_now
            engine.wall_clock = lambda: real() + 2 * LATER
            report = await db.gc()
        finally:
            held[0].release.set()
        assert made[0].during_listing is None  # the commit landed during the listing
        assert report.deleted == [] and report.kept == {"live": 2}
        assert await _segment_objects(db) == await _live_segments(db)
        assert await db.get(b"late") == b"2" and await db.get(b"a") == b"1"


async def _live_segments(db: kvstore.Store) -> set[str]:
    manifest = await engine_of(db).refresh()
    return {engine_of(db).layout.segment(ref.id) for ref in manifest.segments}


async def test_gc_marks_carry_a_time_after_the_objects_stopped_being_referenced(tmp_path: Path) -> None:
    """A mark says since when an object has been unreferenced, so a snapshot taken before
    that keeps it for a grace period (I6). Segments compacted away after a run started, but
    before it read the manifest, are marked no earlier than their compaction."""
    target = file_target(tmp_path)
    made: list[_CommitsWhileListed] = []
    options = replace(NO_AUTO, commit_log_length=2, **NO_INLINE)
    async with (
        target.open(
            options=options, wrap_object_store=lambda inner: made.append(_CommitsWhileListed(inner)) or made[-1]
        ) as db,
        target.open(options=options) as compactor,
    ):
        for i in range(3):
            await db.put(f"k{i}", b"v")
        replaced = await _live_segments(db)
        compacted_at: list[float] = []

        async def compact() -> None:
            await compactor.compact(full=True)
            for i in range(3, 5):  # the log moves past the compaction: nothing names `replaced`
                await compactor.put(f"k{i}", b"v")
            compacted_at.append(time.time())
            for name in replaced:  # old enough to be marked
                os.utime(tmp_path / "store" / name, (time.time() - 7200, time.time() - 7200))

        made[0].listed, made[0].during_listing = "tags/", compact  # where a GC run starts
        report = await db.gc()
        assert made[0].during_listing is None and report.objects_waiting == len(replaced) == 3
        marks = await _gc_marks(engine_of(db))
        assert set(marks) == replaced
        assert min(marks.values()) >= compacted_at[0]


async def test_gc_report_counts_every_object_and_names_a_bounded_few(
    target: Target, monkeypatch: pytest.MonkeyPatch
) -> None:
    """GC memory is not O(objects): the report counts what it kept by reason, and names
    only what it deleted and what waits out the grace period, up to REPORT_NAMES_MAX each."""
    monkeypatch.setattr(kvstore._gc, "REPORT_NAMES_MAX", 4)
    async with target.open(options=replace(NO_AUTO, **NO_INLINE)) as db:
        await db.put(b"a", b"1")
        orphans = await make_orphans(engine_of(db), 10)
        waiting = await db.gc()
        assert (waiting.objects_waiting, len(waiting.collectable_after)) == (10, 4)
        assert set(waiting.collectable_after) < orphans and waiting.deleted == []
        assert waiting.first_collectable is not None and waiting.last_collectable is not None
        assert waiting.first_collectable <= min(waiting.collectable_after.values()) <= waiting.last_collectable
        assert waiting.kept == {"live": 1, "younger than the grace period (may belong to a commit in progress)": 10}
        report = await gc_later(db)
        assert (report.objects_deleted, len(report.deleted)) == (10, 4) and set(report.deleted) < orphans
        assert report.bytes_deleted == 10 * len(b"lost") and report.kept == {"live": 1}


async def _gc_marks(engine: Any) -> dict[str, float]:
    blob = await engine.objects.get(engine.layout.gc_marks)
    return dict(msgpack.unpackb(unseal(blob.data, b"KVGC", 1, "marks", "gc marks"), raw=False))
