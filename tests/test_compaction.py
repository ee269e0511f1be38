"""Compaction: merged segments, bounded growth, and no lost or resurrected keys."""

from __future__ import annotations

import asyncio
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import workers
from targets import Target, engine_of, memory_target

import kvstore
from kvstore._compact import Retention, TombstoneCheck
from kvstore._engine import ours_to_compact
from kvstore._manifest import CommitRecord, Manifest, SegmentRef

NEVER = lambda key, version: False  # noqa: E731 - a tombstone check that keeps every tombstone
ALWAYS = lambda key, version: True  # noqa: E731


def merge_entries(
    entries: list[tuple[bytes, int, bytes | None]], *, floor: int, tombstone_droppable: TombstoneCheck
) -> list[tuple[bytes, int, bytes | None]]:
    """What `Retention` keeps of `entries`, fed one entry per batch (keys span batches)."""
    retention = Retention(floor, tombstone_droppable)
    kept = [e for entry in entries for e in retention.feed([entry])]
    return kept + retention.finish()


def test_merge_keeps_newest_and_what_readable_versions_see() -> None:
    entries = [(b"a", 9, b"a9"), (b"a", 5, b"a5"), (b"a", 2, b"a2"), (b"b", 4, b"b4")]
    assert list(merge_entries(entries, floor=0, tombstone_droppable=NEVER)) == entries
    # versions >= 6 readable: a5 is seen by version 6..8, a2 by none
    assert list(merge_entries(entries, floor=6, tombstone_droppable=NEVER)) == entries[:2] + entries[3:]
    assert list(merge_entries(entries, floor=9, tombstone_droppable=NEVER)) == [entries[0], entries[3]]


def test_merge_drops_tombstones_only_when_nothing_older_exists() -> None:
    entries = [(b"a", 7, None), (b"a", 3, b"old"), (b"b", 6, None), (b"c", 1, b"c")]
    assert list(merge_entries(entries, floor=10, tombstone_droppable=ALWAYS)) == [(b"c", 1, b"c")]
    assert list(merge_entries(entries, floor=10, tombstone_droppable=NEVER)) == [
        (b"a", 7, None),
        (b"b", 6, None),
        (b"c", 1, b"c"),
    ]
    # a readable version (5) still sees "old": both entries stay
    assert list(merge_entries(entries, floor=5, tombstone_droppable=ALWAYS))[:2] == [(b"a", 7, None), (b"a", 3, b"old")]


def test_merge_same_version_first_source_wins() -> None:
    entries = [(b"a", 4, b"newer segment"), (b"a", 4, b"older segment")]
    assert list(merge_entries(entries, floor=0, tombstone_droppable=NEVER)) == [(b"a", 4, b"newer segment")]


async def test_full_compaction_preserves_every_read(target: Target) -> None:
    options = kvstore.StoreOptions(auto_compact=False, history_versions=0)
    async with target.open(options=options) as db:
        expected: dict[bytes, bytes] = {}
        for i in range(30):
            key = f"k{i % 11:02d}".encode()
            if i % 7 == 6:
                await db.delete(key)
                expected.pop(key, None)
            else:
                await db.put(key, f"v{i}".encode())
                expected[key] = f"v{i}".encode()
        before = db.statistics()["version"]
        results = await db.compact(full=True)
        assert len(results) == 1 and results[0].inputs == 30
        assert results[0].entries_out == len(expected)  # shadowed versions and tombstones gone
        assert db.version == before + 1
        assert dict([kv async for kv in db.scan()]) == expected
        for i in range(11):
            key = f"k{i:02d}".encode()
            assert await db.get(key) == expected.get(key)
        manifest = engine_of(db).manifest
        assert len(manifest.segments) == 1
    async with target.open() as db:  # a fresh process view agrees
        assert dict([kv async for kv in db.scan()]) == expected


async def test_background_compaction_bounds_segments(target: Target) -> None:
    options = kvstore.StoreOptions(compaction_fanout=4)
    async with target.open(options=options, values="msgpack") as db:
        for i in range(80):
            await db.put(f"k{i % 20:02d}", i)
        # The background compaction started by the commits runs until no level is due.
        await engine_of(db).background_idle()
        levels: dict[int, int] = {}
        for ref in engine_of(db).manifest.segments:
            levels[ref.level] = levels.get(ref.level, 0) + 1
        # tiered: fewer than `fanout` sources per level once compaction caught up
        assert max(levels.values()) < 4, levels
        assert {k.decode(): v async for k, v in db.scan()} == {f"k{i % 20:02d}": i for i in range(80)}


async def test_compaction_does_not_conflict_with_transactions() -> None:
    target = memory_target()
    async with target.open(options=kvstore.StoreOptions(auto_compact=False)) as db:
        for i in range(5):
            await db.put(f"k{i}", b"v")
        tx = db.transaction()
        assert await tx.get(b"k1") == b"v"
        assert [k async for k, _ in tx.scan()] == [f"k{i}".encode() for i in range(5)]
        assert await db.compact(full=True)
        tx.put(b"k1", b"updated")
        assert await tx.commit() is not None
        assert await db.get(b"k1") == b"updated"


async def test_compaction_with_concurrent_writers_from_processes(durable_target: Target, tmp_path: Path) -> None:
    """Writers in several processes put and delete their own keys while another
    process compacts over and over: nothing is lost and nothing comes back."""
    t = durable_target
    options = kvstore.StoreOptions(auto_compact=False)
    async with t.open(options=options):
        pass
    loop = asyncio.get_running_loop()
    with ProcessPoolExecutor(4, mp_context=multiprocessing.get_context("spawn")) as pool:
        writers = [loop.run_in_executor(pool, workers.put_and_delete, t.url, t.kwargs, w, 16) for w in range(3)]
        stop_file = tmp_path / "writers-done"
        compactor = loop.run_in_executor(pool, workers.compact_until, t.url, t.kwargs, str(stop_file))
        expected_parts = await asyncio.gather(*writers)
        stop_file.touch()
        compactions = await compactor
    assert compactions > 0
    expected = {k: v for part in expected_parts for k, v in part.items()}
    async with t.open(options=options) as db:
        actual = {k.decode(): v async for k, v in db.scan()}
        assert actual == expected
        await db.compact(full=True)
        assert {k.decode(): v async for k, v in db.scan()} == expected
        assert (await db.verify()).ok


def _manifest_with_level0(count: int, newest_is_ours: bool) -> Manifest:
    refs = tuple(SegmentRef(f"s{i}", b"a", b"z", 1, 100, i + 1, i + 1, i + 1) for i in range(count, 0, -1))
    record = CommitRecord(count, 0.0, (b"t",), "s" + str(count) if newest_is_ours else "elsewhere", 1, b"a", b"z", None)
    return Manifest("id", count, 0.0, segments=refs, log=(record,), log_start=count - 1)


def test_only_the_writer_that_fills_a_level_compacts_it_unless_it_is_overdue() -> None:
    fanout = 4
    # The commit that made level 0 due (its segment is among the inputs) compacts it ...
    assert ours_to_compact(_manifest_with_level0(4, newest_is_ours=True), fanout)
    # ... a writer committing after that does not (another process is already merging) ...
    assert not ours_to_compact(_manifest_with_level0(5, newest_is_ours=True), fanout)
    assert not ours_to_compact(_manifest_with_level0(4, newest_is_ours=False), fanout)
    assert not ours_to_compact(_manifest_with_level0(3, newest_is_ours=True), fanout)
    # ... until the level holds twice the fanout: then whoever commits does.
    assert ours_to_compact(_manifest_with_level0(8, newest_is_ours=False), fanout)
