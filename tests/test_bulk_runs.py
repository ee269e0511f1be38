"""Bulk loads land as one sorted run (issue 21, item 4): chunks whose key ranges meet no
other's become parts as they are, overlapping ones are merged before the commit, so a
cold read right after a load costs what it costs in a compacted store."""

from __future__ import annotations

import os
import random
from dataclasses import replace
from typing import Any

import pytest
from targets import Target, engine_of, fault_injecting, gc_later

import kvstore
import kvstore._bulk as bulk
from kvstore._engine import BULK_RUN_LEVEL
from kvstore._envelope import unseal
from kvstore._manifest import SegmentRef
from kvstore._run import decode_run, encode_run

KiB = 1024
MiB = 1024 * KiB
OPTIONS = kvstore.StoreOptions(auto_compact=False, target_segment_bytes=64 * KiB, history_versions=0)
CHUNK = 48 * KiB


class _CountsSegmentTraffic:
    """Counts GETs and creates of segment objects."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.gets: list[str] = []
        self.created: list[str] = []
        self.created_before_reading: list[str] = []  # the segments created before the first GET of one

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def get(self, name: str, **kwargs: Any) -> Any:
        if name.endswith(".seg"):
            if not self.gets:
                self.created_before_reading = list(self.created)
            self.gets.append(name)
        return await self.inner.get(name, **kwargs)

    async def put_if_absent(self, name: str, data: bytes) -> str:
        if name.endswith(".seg"):
            self.created.append(name)
        return str(await self.inner.put_if_absent(name, data))

    async def start_multipart(self, name: str) -> str:
        if name.endswith(".seg"):
            self.created.append(name)
        return str(await self.inner.start_multipart(name))


def _counting() -> tuple[list[_CountsSegmentTraffic], Any]:
    made: list[_CountsSegmentTraffic] = []

    def wrap(inner: Any) -> _CountsSegmentTraffic:
        made.append(_CountsSegmentTraffic(inner))
        return made[-1]

    return made, wrap


async def _run_parts(db: kvstore.Store) -> tuple[SegmentRef, list[SegmentRef]]:
    [ref] = engine_of(db).manifest.segments  # white-box: the manifest's one source
    return ref, list(await engine_of(db)._sources.parts(ref))


async def test_input_in_any_order_lands_as_one_sorted_run(target: Target) -> None:
    rng = random.Random(21)
    keys = list(range(6000))
    rng.shuffle(keys)
    items = [(b"k%06d" % i, os.urandom(40)) for i in keys]
    items += [(b"k%06d" % i, b"again %d" % i) for i in range(0, 6000, 7)]  # repeats in later chunks win
    expected = dict(items)
    made, wrap = _counting()
    async with target.open(options=OPTIONS, wrap_object_store=wrap) as db:
        await db.bulk_load(items, chunk_bytes=CHUNK)
        ref, parts = await _run_parts(db)
        assert ref.is_run and ref.level == BULK_RUN_LEVEL and len(parts) >= 3
        assert all(a.max_key < b.min_key for a, b in zip(parts, parts[1:], strict=False))  # disjoint, in order
        assert all(p.size <= 2 * OPTIONS.target_segment_bytes for p in parts)
        assert all(p.commit_version == ref.commit_version == db.version for p in parts)
        assert ref.count == len(expected)
        assert dict([kv async for kv in db.scan()]) == expected
    async with target.open(options=OPTIONS, wrap_object_store=wrap) as db:  # cold: nothing cached
        traffic = made[-1]
        traffic.gets.clear()
        key = b"k%06d" % 4242
        assert await db.get(key) == expected[key]
        assert len(traffic.gets) <= 3  # one segment's tail, partition and block: no other source
        assert (await db.verify()).ok
        await gc_later(db)  # the merged chunks were never committed: GC takes them
        assert (await db.verify()).ok
        assert dict([kv async for kv in db.scan()]) == expected


async def test_sorted_input_streams_into_the_run_with_no_extra_pass(target: Target) -> None:
    items = [(b"k%06d" % i, os.urandom(40)) for i in range(6000)]
    made, wrap = _counting()
    async with target.open(options=OPTIONS, wrap_object_store=wrap) as db:
        traffic = made[0]
        await db.bulk_load(items, chunk_bytes=CHUNK)
        _, parts = await _run_parts(db)
        # Each chunk written once and never read back: the chunks are the run's parts.
        assert len(parts) >= 3 and sorted(traffic.created) == sorted(engine_of(db).layout.segment(p.id) for p in parts)
        assert traffic.gets == []
        assert dict([kv async for kv in db.scan()]) == dict(items)


async def test_only_the_chunks_that_overlap_are_merged(target: Target) -> None:
    # Key order, but for a stretch in the middle whose odd keys come after its even ones:
    # the chunks before and after the stretch overlap nothing, those within it overlap.
    first = [(b"k%06d" % i, b"a" * 40) for i in range(0, 2000)]
    even = [(b"k%06d" % i, b"b" * 40) for i in range(2000, 4000, 2)]
    odd = [(b"k%06d" % i, b"c" * 40) for i in range(2001, 4000, 2)]
    rest = [(b"k%06d" % i, b"d" * 40) for i in range(4000, 6000)]
    items = first + even + odd + rest
    made, wrap = _counting()
    async with target.open(options=OPTIONS, wrap_object_store=wrap) as db:
        traffic = made[0]
        await db.bulk_load(items, chunk_bytes=CHUNK)
        chunks = set(traffic.created_before_reading)
        names = {engine_of(db).layout.segment(p.id): p for p in (await _run_parts(db))[1]}
        moved = [p for name, p in names.items() if name in chunks]
        # Chunks wholly before or after the stretch are parts as they were written, never
        # read; the others were read back, merged, and replaced by new segments.
        assert any(p.max_key < b"k002000" for p in moved) and any(p.min_key >= b"k004000" for p in moved)
        assert all(p.max_key < b"k002000" or p.min_key >= b"k004000" for p in moved)
        assert not set(traffic.gets) & {name for name in names if name in chunks}
        assert set(traffic.gets) <= chunks and len(names) > len(moved)
        assert dict([kv async for kv in db.scan()]) == dict(items)


@pytest.mark.parametrize("pairs", [8000, 10000])  # 4 chunks; 5, so that passes leave a run alone
async def test_a_merge_of_more_chunks_than_its_fan_in_goes_in_passes(
    target: Target, monkeypatch: pytest.MonkeyPatch, pairs: int
) -> None:
    """The fan-in is what `compaction_memory_bytes` holds: with the least it takes, 2. A
    pass leaving one run of a group alone does not rewrite it."""
    merges: list[int] = []
    merged = bulk._merged

    async def counted(runs: list[list[SegmentRef]], *args: Any) -> list[SegmentRef]:
        merges.append(len(runs))
        return await merged(runs, *args)

    monkeypatch.setattr(bulk, "_merged", counted)
    rng = random.Random(3)
    items = [(b"k%05d" % rng.randrange(4000), b"%06d" % n) for n in range(pairs)]  # many repeats
    expected = dict(items)  # the last value of each key
    async with target.open(options=replace(OPTIONS, compaction_memory_bytes=1 * MiB)) as db:
        await db.bulk_load(items, chunk_bytes=CHUNK // 2)
        assert merges[0] > 2 and len(merges) >= 1 + merges[0] // 2  # a pass of pairs, then more
        assert min(merges) >= 2
        _, parts = await _run_parts(db)
        assert all(a.max_key < b.min_key for a, b in zip(parts, parts[1:], strict=False))
        assert dict([kv async for kv in db.scan()]) == expected


async def test_a_merge_ending_with_a_key_an_earlier_chunk_repeats_commits_every_pair(target: Target) -> None:
    """Large values make a merged batch one entry, and a tiny target ends a segment at every
    batch: the last batch, the older value of the last key, then holds nothing to keep. The
    merge must not open a segment for it (an empty segment cannot be written)."""
    big = [os.urandom(300 * KiB) for _ in range(3)]
    items = [(b"a", big[0]), (b"b", big[1]), (b"b", big[2])]  # the second b, in a chunk of its own, wins
    async with target.open(options=replace(OPTIONS, target_segment_bytes=256)) as db:
        await db.bulk_load(items, chunk_bytes=600 * KiB)
        assert dict([kv async for kv in db.scan()]) == {b"a": big[0], b"b": big[2]}
        _, parts = await _run_parts(db)
        assert [(p.min_key, p.max_key) for p in parts] == [(b"a", b"a"), (b"b", b"b")]


@pytest.mark.parametrize("fault", ["lost_response", "crash", "crash_after_apply"])
async def test_a_bulk_load_whose_commit_fails_commits_once_or_not_at_all(target: Target, fault: str) -> None:
    rng = random.Random(9)
    items = [(b"k%06d" % rng.randrange(10**6), os.urandom(40)) for _ in range(3000)]
    made, wrap = fault_injecting()
    async with target.open(options=OPTIONS) as db:
        await db.put(b"before", b"1")
        version = db.version
    async with target.open(options=OPTIONS, wrap_object_store=wrap) as db:
        made[0].script("put_if_match", fault)  # type: ignore[arg-type]
        if fault == "lost_response":
            assert await db.bulk_load(items, chunk_bytes=CHUNK) == version + 1  # resolved from the log
        else:
            with pytest.raises(kvstore.CommitOutcomeUnknownError, match="SimulatedCrash"):  # the process "died"
                await db.bulk_load(items, chunk_bytes=CHUNK)
    applied = fault != "crash"
    async with target.open(options=OPTIONS) as db:
        assert db.version == version + applied
        state = dict([kv async for kv in db.scan()])
        assert state == ({b"before": b"1"} | dict(items) if applied else {b"before": b"1"})
        await gc_later(db)
        assert (await db.verify()).ok
        assert dict([kv async for kv in db.scan()]) == state


def test_a_format_3_runs_segments_take_its_commit_version() -> None:
    # docs/format.md, "Run object": format 3 rows are format 1's; the version comes from
    # the manifest's row of the run.
    parts = [SegmentRef("a", b"a", b"b", 1, 2, 0, 0), SegmentRef("c", b"c", b"d", 3, 4, 0, 0)]
    data = encode_run(parts, commit_segments=True)
    assert data.hex() == (
        "4b56524e03000000" + "9297a161c40161c401620102000097a163c40163c40164030400" + "00" + "d09b91ca94461e07"
    )
    run = decode_run(data, level=1, object_name="r.run", commit_version=7)
    assert [(p.id, p.commit_version, p.min_version, p.max_version, p.level) for p in run.parts] == [
        ("a", 7, 7, 7, 1),
        ("c", 7, 7, 7, 1),
    ]
    with pytest.raises(kvstore.UnsupportedFormatError, match="format 3, newer than this kvstore's 2"):
        unseal(data, b"KVRN", 2, "r.run", "run")  # what a reader of format 2 says of it
