"""Compaction moves what it need not rewrite (issue 21, item 2): a segment whose key range
meets no other input and that needs no retention work joins the output run as it is, with
no GET of its blocks and no PUT; write amplification is reported per compaction."""

from __future__ import annotations

import dataclasses
import os
import random
from pathlib import Path
from typing import Any

import pytest
from segment_bytes import as_format_1, as_format_2
from targets import Target, engine_of, fault_injecting, file_target, gc_later, memory_target
from test_cli import invoke

import kvstore
from kvstore._compact import around, isolated, movable
from kvstore._manifest import SegmentRef
from kvstore._run import decode_run, encode_run
from kvstore._segment import encode_segment, parse_footer
from kvstore._segment_store import TAIL_READ_BYTES, WHOLE_READ_MAX_BYTES
from kvstore.testing.faults import SimulatedCrash

KiB = 1024
MiB = 1024 * KiB
RETRY = kvstore.RetryPolicy(max_attempts=3, base_delay=0.001, max_delay=0.005)
# Bulk segments above WHOLE_READ_MAX_BYTES, so that reading one's footer and index is a
# ranged GET of its tail, and below twice the target, so that they may move.
BIG = kvstore.StoreOptions(auto_compact=False, target_segment_bytes=1 * MiB, history_versions=0, retry=RETRY)
BIG_CHUNK = 1200 * KiB
# Small segments, for tests that only look at which segments moved.
SMALL = kvstore.StoreOptions(auto_compact=False, target_segment_bytes=32 * KiB, history_versions=0, retry=RETRY)
SMALL_CHUNK = 24 * KiB
CHUNK_PAIRS = 226  # pairs (9-byte keys, 100-byte values) that fill a SMALL_CHUNK chunk


class _CountsSegmentTraffic:
    """An object store that counts, per segment object, the bytes its GETs return and the
    writes that create it."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.read: dict[str, int] = {}
        self.written: list[str] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def get(self, name: str, **kwargs: Any) -> Any:
        blob = await self.inner.get(name, **kwargs)
        if blob is not None and name.endswith(".seg"):
            self.read[name] = self.read.get(name, 0) + len(blob.data)
        return blob

    async def put_if_absent(self, name: str, data: bytes) -> str:
        if name.endswith(".seg"):
            self.written.append(name)
        return str(await self.inner.put_if_absent(name, data))

    async def start_multipart(self, name: str) -> str:
        if name.endswith(".seg"):
            self.written.append(name)
        return str(await self.inner.start_multipart(name))


def _pairs(start: int, count: int, seed: int = 0) -> list[tuple[bytes, bytes]]:
    """`count` pairs in key order from key number `start`, with incompressible values."""
    return [(b"k%08d" % i, os.urandom(92) + b"%08d" % seed) for i in range(start, start + count)]


async def _state(source: Any) -> dict[bytes, bytes]:
    return {k: v async for k, v in source.scan()}


def _live(db: kvstore.Store) -> tuple[SegmentRef, ...]:
    return engine_of(db).manifest.segments  # white-box: the manifest's sources


async def _parts(db: kvstore.Store, ref: SegmentRef) -> list[SegmentRef]:
    return list(await engine_of(db)._sources.parts(ref))  # white-box: a run's segments


async def _loaded(db: kvstore.Store, items: Any, chunk_bytes: int) -> list[SegmentRef]:
    """Bulk-load `items`; the segments the load added (its sorted run's), in key order."""
    before = set(_live(db))
    await db.bulk_load(items, chunk_bytes=chunk_bytes)
    [ref] = [r for r in _live(db) if r not in before]
    return await _parts(db, ref)


async def test_a_full_compaction_moves_key_ordered_bulk_segments_without_reading_or_writing_them(
    target: Target,
) -> None:
    """The issue's case, scaled down: a bulk load in key order (several segments), then a
    few small commits of new keys, then compact(full=True)."""
    made: list[_CountsSegmentTraffic] = []

    def counting(inner: Any) -> _CountsSegmentTraffic:
        made.append(_CountsSegmentTraffic(inner))
        return made[-1]

    async with target.open(options=BIG, wrap_object_store=counting) as db:
        loaded = dict(_pairs(0, 45_000))  # 4 chunks of about 1.2 MiB
        bulk = await _loaded(db, loaded.items(), BIG_CHUNK)  # one sorted run of the chunks as they are
        assert len(bulk) >= 3 and all(WHOLE_READ_MAX_BYTES < r.size <= 2 * BIG.target_segment_bytes for r in bulk)
        await db.tag("loaded")
        expected = dict(loaded)
        for i in range(3):
            await db.put(b"z%02d" % i, b"small %d" % i)
            expected[b"z%02d" % i] = b"small %d" % i
        traffic = made[0]
        traffic.read.clear()
        traffic.written.clear()
        [result] = await db.compact(full=True)

        layout = engine_of(db).layout
        bulk_names = {layout.segment(r.id) for r in bulk}
        # Of each bulk segment, at most its tail (footer and index) was read; none was written.
        assert all(traffic.read.get(name, 0) <= TAIL_READ_BYTES for name in bulk_names), traffic.read
        assert not bulk_names & set(traffic.written)
        assert len(traffic.written) == 1  # the small commits, merged into one segment
        [run] = _live(db)
        parts = await _parts(db, run)
        assert {p.id for p in parts} >= {r.id for r in bulk}
        assert all(a.max_key < b.min_key for a, b in zip(parts, parts[1:], strict=False))
        assert (result.moved, result.outputs, result.inputs) == (len(bulk), len(bulk) + 1, 1 + 3)
        assert result.bytes_out == run.size == sum(p.size for p in parts)
        assert result.bytes_written == parts[-1].size and 0 < result.write_amplification < 0.01
        assert (await db.describe()).last_compaction_write_amplification == pytest.approx(result.write_amplification)

        assert await _state(db) == expected
        assert await _state(await db.snapshot(tag="loaded")) == loaded
        assert await db.get(b"k00012345") == loaded[b"k00012345"] and await db.get(b"z01") == b"small 1"
        assert await (await db.snapshot(tag="loaded")).get(b"z01") is None

        # GC follows the run: the moved segments are live through it, the tag's version too.
        await gc_later(db)
        assert (await db.verify()).ok
        await db.delete_tag("loaded")
        await gc_later(db)
        assert (await db.verify()).ok
    async with target.open(options=BIG) as db:  # cold: nothing cached
        assert await _state(db) == expected
        assert await db.get(b"k00044999") == loaded[b"k00044999"]


async def test_segments_that_overlap_another_input_are_rewritten_and_the_others_moved(target: Target) -> None:
    async with target.open(options=SMALL) as db:
        bulk = await _loaded(db, _pairs(0, 8 * CHUNK_PAIRS), SMALL_CHUNK)
        assert len(bulk) >= 4
        # a second load whose keys fall inside the first segment's range only
        first = bulk[0]
        inside = [(k, b"new") for k in (first.min_key + b"a", first.min_key + b"b")]
        assert all(first.min_key < k < first.max_key for k, _ in inside)
        await db.bulk_load(inside, chunk_bytes=SMALL_CHUNK)
        expected = {**dict(await _state(db))}
        [result] = await db.compact(full=True)
        [run] = _live(db)
        ids = {p.id for p in await _parts(db, run)}
        assert result.moved == len(bulk) - 1
        assert first.id not in ids and {r.id for r in bulk[1:]} <= ids
        assert await _state(db) == expected
        assert (await db.verify()).ok

    # Two loads of interleaved keys: every segment overlaps another; nothing moves.
    async with memory_target().open(options=SMALL) as db:
        even = await _loaded(db, ((b"k%06d" % i, b"even") for i in range(0, 4000, 2)), SMALL_CHUNK)
        odd = await _loaded(db, ((b"k%06d" % i, b"odd") for i in range(1, 4000, 2)), SMALL_CHUNK)
        before = {r.id for r in even + odd}
        [result] = await db.compact(full=True)
        [run] = _live(db)
        assert result.moved == 0 and result.write_amplification == 1.0
        assert not before & {p.id for p in await _parts(db, run)}
        assert len(await _state(db)) == 4000


async def test_a_segment_whose_tombstone_compaction_drops_is_rewritten(target: Target) -> None:
    async with target.open(options=dataclasses.replace(SMALL, inline_segment_bytes=0)) as db:
        loaded = {r.id for r in await _loaded(db, _pairs(0, 4 * CHUNK_PAIRS), SMALL_CHUNK)}
        bulk_sources = set(_live(db))
        # one commit segment of its own key range, large enough to move, holding a
        # tombstone (of a key nowhere else)
        async with db.transaction() as txn:
            for i in range(250):
                txn.put(b"t%03d" % i, os.urandom(100))
            txn.delete(b"t999")
        [with_tombstone] = [r for r in _live(db) if r not in bulk_sources]
        assert with_tombstone.inline is None and with_tombstone.commit_version is not None
        assert movable(with_tombstone, floor=0, target_segment_bytes=SMALL.target_segment_bytes)
        [result] = await db.compact(full=True)
        [run] = _live(db)
        ids = {p.id for p in await _parts(db, run)}
        assert loaded <= ids and with_tombstone.id not in ids  # the bulk segments moved, not it
        assert result.moved == len(loaded)
        assert result.entries_in - result.entries_out == 1  # its tombstone went
        assert run.count == 4 * CHUNK_PAIRS + 250 and await db.get(b"t999") is None
        assert await db.get(b"t249") is not None


def test_the_rule_moves_only_what_metadata_proves_unchanged() -> None:
    commit = SegmentRef("c", b"a", b"c", 10, 1000, 5, 5, commit_version=5)
    versioned = SegmentRef("v", b"a", b"c", 10, 1000, 6, 9)  # a compaction's output: versions 6..9
    assert movable(commit, floor=100, target_segment_bytes=1000)  # one version per key: nothing shadowed
    assert movable(versioned, floor=5, target_segment_bytes=1000)  # every version readable: all kept
    assert not movable(versioned, floor=6, target_segment_bytes=1000)  # an older version may be shadowed
    assert not movable(commit, floor=0, target_segment_bytes=499)  # too large for the run: split
    assert not movable(commit, floor=0, target_segment_bytes=2002)  # small: cheap to merge with others
    inline = SegmentRef("i", b"a", b"c", 1, 10, 5, 5, commit_version=5, inline=b"x")
    assert not movable(inline, floor=0, target_segment_bytes=1000)  # no object of its own
    run = SegmentRef("r", b"a", b"c", 10, 1000, 5, 5, None, 1, None, 3)
    assert not movable(run, floor=0, target_segment_bytes=1000)  # its segments are judged one by one

    def seg(name: str, lo: bytes, hi: bytes) -> SegmentRef:
        return SegmentRef(name, lo, hi, 1, 1, 1, 1)

    pieces = [
        seg("a", b"a", b"c"),
        seg("b", b"c", b"e"),
        seg("x", b"f", b"g"),
        seg("y", b"h", b"p"),
        seg("z", b"k", b"l"),
    ]
    assert [p.id for p in isolated(pieces)] == ["x"]  # a and b share "c"; z lies inside y
    moved = [seg("m", b"d", b"f"), seg("n", b"k", b"m")]
    # merged ranges stop short of each moved segment and start again just after it
    assert around([(None, b"e"), (b"e", None)], moved) == [(None, b"d"), (b"f\x00", b"k"), (b"m\x00", None)]
    assert around([(None, None)], []) == [(None, None)]


def _around_by_definition(
    ranges: list[tuple[bytes | None, bytes | None]], moved: list[SegmentRef]
) -> list[tuple[bytes | None, bytes | None]]:
    """What `around` means, spelled out: every range cut by every gap between moved segments."""
    starts = [None, *(m.max_key + b"\x00" for m in moved)]
    ends = [*(m.min_key for m in moved), None]
    out = []
    for r_start, r_end in ranges:
        for g_start, g_end in zip(starts, ends, strict=True):
            lo = g_start if r_start is None else r_start if g_start is None else max(r_start, g_start)
            hi = g_end if r_end is None else r_end if g_end is None else min(r_end, g_end)
            if lo is None or hi is None or lo < hi:
                out.append((lo, hi))
    return out


def test_around_is_every_range_less_the_moved_segments() -> None:
    """On random ranges and moved segments over a small alphabet (so boundaries touch and keys
    repeat), `around` (one walk over both lists) gives what its definition gives."""
    rng = random.Random(7)
    for _ in range(3000):
        keys = sorted({bytes(rng.choices(b"abcdefghijkl", k=rng.randint(1, 2))) for _ in range(rng.randint(2, 24))})
        moved, i = [], 0
        while i < len(keys):
            if rng.random() < 0.3:
                j = min(len(keys) - 1, i + rng.randint(0, 2))
                moved.append(SegmentRef(f"m{i}", keys[i], keys[j], 1, 1, 1, 1))
                i = j + 2
            else:
                i += 1
        cuts = sorted(rng.sample(keys, rng.randint(0, min(5, len(keys)))))
        ranges = list(zip([None, *cuts], [*cuts, None], strict=True))
        assert around(ranges, moved) == _around_by_definition(ranges, moved), (ranges, moved)


def test_the_no_tombstones_footer_flag_and_run_rows_with_commit_versions() -> None:
    clean = encode_segment([(b"a", 1, b"x"), (b"b", 1, b"y")], uniform_version=True).data
    dirty = encode_segment([(b"a", 1, b"x"), (b"b", 1, None)], uniform_version=True).data
    assert parse_footer(clean, "s").flags == 1 and parse_footer(dirty, "s").flags == 0
    # Segments written before the flag (formats 1 and 2, and format 3 until now) say
    # nothing: never moved, so a run never mixes in an older format by a move.
    assert parse_footer(as_format_1(clean), "s").flags == 0 == parse_footer(as_format_2(clean), "s").flags
    # docs/format.md, "Run object": a row with a commit version makes the run format 2
    data = encode_run([SegmentRef("r", b"a", b"b", 1, 2, 3, 3, commit_version=3)])
    assert data.hex() == "4b56524e02000000" + "9198a172c40161c40162010203" + "0303" + "b7f5bff88eca5f21"
    [part] = decode_run(data, level=2, object_name="r.run").parts
    assert part == SegmentRef("r", b"a", b"b", 1, 2, 3, 3, 3, 2)
    assert encode_run([SegmentRef("r", b"a", b"b", 1, 2, 3, 4)])[4] == 1  # without: format 1, as before


async def test_moved_segments_keep_their_versions_and_move_again(tmp_path: Path) -> None:
    options = kvstore.StoreOptions(
        auto_compact=False, target_segment_bytes=32 * KiB, history_versions=1000, retry=RETRY
    )
    async with file_target(tmp_path).open(options=options) as db:
        first = dict(_pairs(0, 6 * CHUNK_PAIRS, seed=1))
        v1 = await db.bulk_load(first.items(), chunk_bytes=SMALL_CHUNK)
        await db.put(b"a", b"1")
        [r1] = await db.compact(full=True)
        assert r1.moved >= 3
        [run] = _live(db)
        first_run = {p.id for p in await _parts(db, run)}
        # the segment compaction wrote for b"a" is too small to move again: it is rewritten
        [(tiny, tiny_size)] = [(p.id, p.size) for p in await _parts(db, run) if p.min_key == b"a"]
        second = dict(_pairs(10_000, 6 * CHUNK_PAIRS, seed=2))
        new_segments = len(await _loaded(db, second.items(), SMALL_CHUNK))
        v2 = db.version
        [r2] = await db.compact(full=True)
        [run] = _live(db)
        # The run's commit segments moved again (they keep their versions in the run
        # object), and the new load's.
        assert first_run - {tiny} <= {p.id for p in await _parts(db, run)}
        assert r2.moved == len(first_run) - 1 + new_segments and r2.bytes_written == tiny_size
        assert await _state(await db.snapshot(version=v1)) == first
        assert await _state(await db.snapshot(version=v2 - 1)) == {**first, b"a": b"1"}
        assert await _state(db) == {**first, b"a": b"1", **second}
        assert await (await db.snapshot(version=v1)).get(b"a") is None
        assert (await db.verify()).ok


CAS_FAULTS = {
    "answer lost, resolved from the log": (["lost_response"], True, False),
    "answer lost, the compactor dies": (["crash_after_apply"], True, True),
    "the compactor dies before the CAS": (["crash"], False, True),
}


@pytest.mark.parametrize("name", list(CAS_FAULTS))
async def test_a_compaction_that_moves_segments_commits_once_or_not_at_all(tmp_path: Path, name: str) -> None:
    faults, applied, dies = CAS_FAULTS[name]
    target = file_target(tmp_path)
    async with target.open(options=SMALL) as db:
        bulk = await _loaded(db, _pairs(0, 8 * CHUNK_PAIRS), SMALL_CHUNK)
        await db.put(b"z", b"1")
        expected = await _state(db)
        version, sources = db.version, _live(db)
    made, wrap = fault_injecting()
    async with target.open(options=SMALL, wrap_object_store=wrap) as db:
        made[0].script("put_if_match", *faults)  # type: ignore[arg-type]
        if dies:
            with pytest.raises(SimulatedCrash):
                await db.compact(full=True)
        else:
            [result] = await db.compact(full=True)
            assert result.moved == len(bulk)
    async with target.open(options=SMALL) as db:
        assert db.version == version + applied
        assert (len(_live(db)) == 1) if applied else _live(db) == sources
        assert await _state(db) == expected
        await db.compact(full=True)
        [run] = _live(db)
        ids = {r.id for r in bulk}
        assert len(ids) > 5 and ids <= {p.id for p in await _parts(db, run)}  # moved, by either compaction
        await gc_later(db)  # the dead compactor's run object is an orphan; the moved segments are not
        assert await _state(db) == expected
        assert (await db.verify()).ok


def test_info_shows_the_last_compactions_write_amplification(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    url = str(tmp_path / "s")
    db = kvstore.open_sync(f"file://{url}", options=SMALL)
    try:
        db.bulk_load(_pairs(0, 8 * CHUNK_PAIRS), chunk_bytes=SMALL_CHUNK)
        assert db.describe().last_compaction_write_amplification is None
        db.put(b"z", b"1")
        [result] = db.compact(full=True)
    finally:
        db.close()
    facts = invoke(monkeypatch, "info", url, "--json").json()
    assert facts["last_compaction_write_amplification"] == pytest.approx(result.write_amplification)
    assert 0 < result.write_amplification < 0.1
    [row] = [line for line in invoke(monkeypatch, "info", url).ok().text.splitlines() if line.startswith("write amp")]
    assert row.split()[2:4] == [f"{result.write_amplification:.3f}", "(last"]
