"""Compaction into sorted runs of bounded segments (issue 12): what readers see, what the
manifest carries, what GC and verify keep, memory, and crash points with many outputs."""

from __future__ import annotations

import dataclasses
import random
import tracemalloc
from collections.abc import AsyncIterator
from pathlib import Path

import crash_workers
import pytest
from targets import Target, engine_of, fault_injecting, file_target, gc_later, memory_target

import kvstore
from kvstore._compact import plan_ranges
from kvstore._envelope import seal, unseal
from kvstore._manifest import SegmentRef, encode_manifest
from kvstore._merge import merge
from kvstore._run import Run
from kvstore.testing.faults import FaultPlan, FaultRule, SimulatedCrash

KiB = 1024
MiB = 1024 * KiB
RETRY = kvstore.RetryPolicy(max_attempts=3, base_delay=0.001, max_delay=0.005)
# Segments of a few KiB: a compaction of a few hundred KiB writes dozens of them.
SMALL = kvstore.StoreOptions(auto_compact=False, target_segment_bytes=4 * KiB, history_versions=0, retry=RETRY)


async def _load(db: kvstore.Store, loads: int = 3, keys: int = 3000, seed: int = 1) -> dict[bytes, bytes]:
    """`loads` overlapping bulk loads of random keys (level-0 segments); the expected state."""
    rnd = random.Random(seed)
    expected: dict[bytes, bytes] = {}
    for _ in range(loads):
        items = {b"k%06d" % rnd.randrange(keys * 2): rnd.randbytes(100) for _ in range(keys)}
        await db.bulk_load(sorted(items.items()))
        expected.update(items)
    return expected


async def _state(db: kvstore.Store) -> dict[bytes, bytes]:
    return {k: v async for k, v in db.scan()}


def _live(db: kvstore.Store) -> tuple[SegmentRef, ...]:
    return engine_of(db).manifest.segments  # white-box: the manifest's sources


async def test_full_compaction_writes_one_run_of_bounded_segments_and_reads_are_unchanged(target: Target) -> None:
    async with target.open(options=SMALL) as db:
        expected = await _load(db)
        await db.delete(b"k000010")
        expected.pop(b"k000010", None)
        [result] = await db.compact(full=True)
        [run] = _live(db)
        parts = await engine_of(db)._sources.parts(run)  # white-box
        assert run.is_run and run.parts == len(parts) == result.outputs > 10
        assert result.sub_compactions > 1
        assert all(a.max_key < b.min_key for a, b in zip(parts, parts[1:], strict=False))  # disjoint, in order
        # each segment ends at the first key boundary past the target: one block of slack
        assert max(p.size for p in parts) < SMALL.target_segment_bytes + 64 * KiB
        assert run.count == sum(p.count for p in parts) == len(expected)
        assert await _state(db) == dict(sorted(expected.items()))
        keys = sorted(expected)
        assert [k async for k, _ in db.scan(reverse=True)] == keys[::-1]
        lo, hi = keys[len(keys) // 3], keys[2 * len(keys) // 3]  # a range across many segments
        assert [k async for k, _ in db.scan(start=lo, end=hi)] == [k for k in keys if lo <= k < hi]
        for key in random.Random(2).sample(keys, 200):
            assert await db.get(key) == expected[key]
        assert await db.get(b"k000010") is None and await db.get(b"zzz") is None


async def test_a_run_compacts_again_with_newer_writes_and_old_versions_stay_exact() -> None:
    options = kvstore.StoreOptions(auto_compact=False, target_segment_bytes=4 * KiB, history_versions=50)
    async with memory_target().open(options=options) as db:
        expected = await _load(db, loads=2)
        await db.compact(full=True)
        before = await db.snapshot()
        old = await _state(db)
        for i in range(0, 6000, 500):
            await db.put(b"k%06d" % i, b"new")
            expected[b"k%06d" % i] = b"new"
        await db.delete(b"k000501")
        expected.pop(b"k000501", None)
        [result] = await db.compact(full=True)
        assert result.inputs > 1 and result.level == 2
        assert await _state(db) == dict(sorted(expected.items()))
        assert {k: v async for k, v in before.scan()} == old  # the older version, read after the merge
        assert {k: v async for k, v in (await db.snapshot(version=before.version)).scan()} == old


async def test_the_manifest_carries_one_row_per_run_however_many_segments() -> None:
    sizes = []
    for keys in (1500, 6000):
        async with memory_target().open(options=SMALL) as db:
            await _load(db, loads=2, keys=keys)
            [result] = await db.compact(full=True)
            # Without the log, which holds a record per compaction step (more for more data).
            manifest = dataclasses.replace(engine_of(db).manifest, log=())
            sizes.append((result.outputs, len(encode_manifest(manifest))))
    (few, small), (many, large) = sizes
    assert many > 3 * few
    assert abs(large - small) < 200  # same rows; only key and count bytes differ


async def test_gc_keeps_a_live_run_and_its_segments_and_deletes_what_it_replaced(tmp_path: Path) -> None:
    async with file_target(tmp_path).open(options=SMALL) as db:
        expected = await _load(db)
        await db.compact(full=True)
        [first] = _live(db)
        await db.put(b"k000001", b"x")
        expected[b"k000001"] = b"x"
        await db.compact(full=True)  # replaces the first run
        report = await gc_later(db)
        # The first run's segments go; its run object stays while the commit log names it.
        assert sum(name.endswith(".seg") for name in report.deleted) >= first.parts
        assert engine_of(db).layout.run(first.id) not in report.deleted
        assert report.kept[kvstore.GcReport.NAMED_BY_LOG] >= 1
        [run] = _live(db)
        assert report.kept["live (in a sorted run)"] == run.parts
    async with file_target(tmp_path).open(options=SMALL) as db:
        assert await _state(db) == dict(sorted(expected.items()))
        assert (await db.verify()).ok


async def test_verify_names_a_damaged_run_object_and_a_missing_run_segment(tmp_path: Path) -> None:
    async with file_target(tmp_path).open(options=SMALL) as db:
        await _load(db, loads=2)
        await db.compact(full=True)
        [run] = _live(db)
        engine = engine_of(db)
        part = (await engine._sources.parts(run))[3]  # white-box
        run_name, part_name = engine.layout.run(run.id), engine.layout.segment(part.id)
        report = await db.verify()
        assert report.ok and report.objects_checked == 1 + run.parts + 1  # + the manifest
    (tmp_path / "store" / part_name).unlink()
    async with file_target(tmp_path).open(options=SMALL, read_only=True) as db:
        assert set((await db.verify()).damaged) == {part_name}
    data = bytearray((tmp_path / "store" / run_name).read_bytes())
    data[20] ^= 0xFF
    (tmp_path / "store" / run_name).write_bytes(bytes(data))
    async with file_target(tmp_path).open(options=SMALL, read_only=True) as db:  # opens all the same
        assert set((await db.verify()).damaged) == {run_name}
        with pytest.raises(kvstore.CorruptionError, match=r"run .*\.run is damaged"):
            await db.get(b"k000100")


async def test_a_store_of_manifest_format_2_with_one_large_segment_compacts_into_a_run(tmp_path: Path) -> None:
    # What stores made before sorted runs look like: one merged segment of any size,
    # named by a format-2 manifest (same payload, older format number).
    target = file_target(tmp_path)
    one_segment = kvstore.StoreOptions(auto_compact=False, target_segment_bytes=1024 * MiB, history_versions=0)
    async with target.open(options=one_segment) as db:
        expected = await _load(db)
        await db.compact(full=True)
        [segment] = _live(db)
        assert not segment.is_run and segment.size > 100 * KiB
        engine = engine_of(db)
        manifest_path = tmp_path / "store" / engine.layout.manifest
    payload = unseal(manifest_path.read_bytes(), b"KVMF", 3, "manifest", "manifest")
    manifest_path.write_bytes(seal(b"KVMF", 2, payload))
    async with target.open(options=SMALL) as db:
        assert await _state(db) == dict(sorted(expected.items()))
        [result] = await db.compact(full=True)  # a segment larger than the target is split
        [run] = _live(db)
        assert run.is_run and result.outputs == run.parts > 10
        assert await _state(db) == dict(sorted(expected.items()))
        assert await db.compact(full=True) == []  # one run: nothing left to do


async def test_compaction_memory_stays_within_its_budget(tmp_path: Path) -> None:
    # 190 MB of incompressible entries merged under a 16 MiB budget: the merge used to hold about six
    # times its input. tracemalloc counts every Python allocation (the cache included).
    budget, cache = 16 * MiB, 1 * MiB
    options = kvstore.StoreOptions(
        auto_compact=False,
        target_segment_bytes=1 * MiB,
        compaction_memory_bytes=budget,
        cache_bytes=cache,
        history_versions=0,
    )
    async with file_target(tmp_path).open(options=options) as db:
        rnd = random.Random(3)
        loaded, keys = 0, set()
        for _ in range(4):  # overlapping key ranges: the merge interleaves four inputs
            items = sorted(
                (b"k%08d" % rnd.randrange(10**8), rnd.randbytes(rnd.randrange(2000, 4000))) for _ in range(16000)
            )
            await db.bulk_load(items)
            loaded += sum(len(k) + len(v) for k, v in items)
            keys.update(k for k, _ in items)
        assert loaded > 180 * MiB
        tracemalloc.start()
        try:
            [result] = await db.compact(full=True)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert result.outputs > 100 and result.entries_out == len(keys)
        assert peak < budget + cache + 4 * MiB, f"compaction peak {peak / MiB:.1f} MiB"


def test_plan_ranges_cover_every_key_in_ordered_ranges_of_about_the_asked_size() -> None:
    rnd = random.Random(4)
    samples = [(rnd.randbytes(6), rnd.randrange(1, 100)) for _ in range(2000)]
    ranges = plan_ranges(samples, 5000)
    assert ranges[0][0] is None and ranges[-1][1] is None
    assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:], strict=False))  # contiguous
    cuts = [start for start, _ in ranges[1:]]
    assert cuts == sorted(set(cuts))  # ascending, distinct
    total = sum(size for _, size in samples)
    assert total // 5000 - 1 <= len(ranges) <= total // 5000 + 1
    assert plan_ranges(samples, 10**9) == [(None, None)]
    assert plan_ranges([], 10) == [(None, None)]


# --------------------------------------------------------------------------- crash points


CRASH_POINTS = {
    "some segments written, the compactor dies before the next": ("put_if_absent", ["pass"] * 5, False),
    "CAS applied with many outputs, answer lost, resolved": ("put_if_match", ["lost_response"], True),
    "CAS applied with many outputs, answer lost, the compactor dies": ("put_if_match", ["crash_after_apply"], True),
}


@pytest.mark.parametrize("name", list(CRASH_POINTS))
async def test_a_compaction_with_many_outputs_is_safe_at_every_crash_point(tmp_path: Path, name: str) -> None:
    operation, before_fault, applied = CRASH_POINTS[name]
    target = file_target(tmp_path)
    async with target.open(options=SMALL) as db:
        expected = await _load(db)
        version, sources = db.version, _live(db)
    made, wrap = fault_injecting()
    async with target.open(options=SMALL, wrap_object_store=wrap) as db:
        faults = before_fault if applied else [*before_fault, "crash_after_apply"]
        made[0].script(operation, *faults)  # type: ignore[arg-type]
        steps = 0
        if "dies" in name:
            with pytest.raises(SimulatedCrash):
                await db.compact(full=True)
        else:
            [result] = await db.compact(full=True)
            assert result.outputs > 10
            steps = result.steps
    async with target.open(options=SMALL) as db:
        assert await _state(db) == dict(sorted(expected.items()))
        live = _live(db)
        if steps:  # every step applied once
            assert db.version == version + steps and len(live) == 1 and live[0].is_run
        elif applied:  # the first step's CAS applied, then the compactor died: its output and the rest
            run, rest = live[0], live[1:]
            assert db.version == version + 1 and run.is_run and rest
            assert all(r.clipped or r.min_key > run.max_key for r in rest)  # they serve the keys above it
        else:  # it died writing a step's outputs: the steps before it stay committed, if any
            committed = db.version - version
            assert (committed == 0 and live == sources) or (committed >= 1 and any(r.clipped for r in live))
        await db.compact(full=True)  # the store compacts again
        assert await _state(db) == dict(sorted(expected.items()))
        # The dead compactor's outputs are orphans: GC takes them, not live data.
        await gc_later(db)
        assert await _state(db) == dict(sorted(expected.items()))
        assert (await db.verify()).ok


async def test_a_compactor_killed_between_outputs_changes_nothing(durable_target: Target, tmp_path: Path) -> None:
    target = durable_target
    async with target.open(options=SMALL) as db:
        expected = await _load(db)
        version, sources = db.version, _live(db)
    await crash_workers.kill_when_stalled(
        crash_workers.compact_then_stall,
        target.url,
        target.kwargs,
        SMALL.target_segment_bytes,
        marker=tmp_path / "stalled",
    )
    async with target.open(options=SMALL) as db:
        assert (db.version, _live(db)) == (version, sources)
        assert await _state(db) == dict(sorted(expected.items()))
        [result] = await db.compact(full=True)
        assert result.outputs > 10
        assert await _state(db) == dict(sorted(expected.items()))


async def test_a_compaction_longer_than_half_the_grace_period_commits_nothing(tmp_path: Path) -> None:
    # I8: GC may collect an unreferenced object older than the grace period; a compaction
    # must not make such outputs live. 50 ms per PUT makes this one take longer than 0.1 s.
    options = kvstore.StoreOptions(
        auto_compact=False,
        target_segment_bytes=4 * KiB,
        history_versions=0,
        segment_grace_period=0.2,
        max_transaction_age=0.05,
    )
    target = file_target(tmp_path)
    async with target.open(options=SMALL) as db:
        expected = await _load(db, loads=2)
        version = db.version
    made, wrap = fault_injecting(FaultPlan(rules={"put_if_absent": FaultRule(latency=0.05)}))
    async with target.open(options=options, wrap_object_store=wrap) as db:
        with pytest.raises(kvstore.CompactionTooSlowError, match="segment_grace_period"):
            await db.compact(full=True)
        assert db.version == version
    async with target.open(options=SMALL) as db:
        assert db.version == version and await _state(db) == dict(sorted(expected.items()))


async def test_merge_batches_of_large_values_stay_small() -> None:
    value = bytes(100 * KiB)

    async def source(keys: range) -> AsyncIterator[list[tuple[bytes, int, bytes | None]]]:
        for k in keys:
            yield [(b"%04d" % k, 1, value)]

    batches = [b async for b in merge([source(range(0, 60, 2)), source(range(1, 60, 2))])]
    assert [e[0] for b in batches for e in b] == [b"%04d" % k for k in range(60)]
    assert max(sum(len(e[2] or b"") for e in b) for b in batches) <= 256 * KiB + len(value)


def test_a_run_finds_the_segments_of_a_key_range() -> None:
    parts = tuple(SegmentRef(f"s{i}", b"%02d" % (10 * i), b"%02d" % (10 * i + 5), 1, 1, 1, 1) for i in range(6))
    run = Run(parts)
    bounds = [None, b"", b"00", b"03", b"05", b"07", b"10", b"33", b"55", b"56", b"99"]
    for start in bounds:
        for end in bounds:
            assert run.parts_between(start, end) == [p for p in parts if p.overlaps(start, end)], (start, end)
    assert run.part_for(b"12") == parts[1] and run.part_for(b"17") is None and run.part_for(b"") is None
