"""Key filters: per-block bloom filters that let point reads of absent keys skip blocks."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest
from segment_bytes import as_format_1, whole_index
from targets import Target

import kvstore
from kvstore._segment import build_filter, encode_segment, probe


def _random_keys(rng: random.Random, n: int) -> list[bytes]:
    return sorted({rng.randbytes(rng.randint(1, 40)) for _ in range(n)})


@pytest.mark.parametrize("seed", range(5))
def test_no_false_negatives(seed: int) -> None:
    rng = random.Random(seed)
    keys = _random_keys(rng, 20_000)
    versions = rng.choice([1, 3])  # several versions of a key are one filter entry
    entries = [(k, v, rng.randbytes(rng.randint(0, 60))) for k in keys for v in range(versions, 0, -1)]
    index = whole_index(encode_segment(entries, uniform_version=versions == 1).data)
    assert len(index.offsets) > 5 and all(index.filters)
    assert all(index.block_for(k, probe(k)) is not None for k in keys)


def test_false_positive_rate_is_near_the_design() -> None:
    rng = random.Random(7)
    keys = _random_keys(rng, 50_000)
    present = set(keys)
    index = whole_index(encode_segment([(k, 1, b"v") for k in keys], uniform_version=True).data)
    passed = tested = 0
    while tested < 50_000:
        key = rng.randbytes(rng.randint(1, 40))
        block = index.block_for(key)  # inside some block's key range: only the filter decides
        if key in present or block is None:
            continue
        tested += 1
        passed += index.block_for(key, probe(key)) is not None
    assert passed / tested < 0.035, passed / tested  # about 2% by design (10 bits per key)


def test_filter_bytes_are_pinned() -> None:
    """The layout other implementations follow (docs/format.md): xxh3_64 of the key, one
    64-bit little-endian word per key, 10 bits per distinct key rounded up to whole words."""
    assert probe(b"kvstore") == (1809705657, 0x0408000051000400)
    assert build_filter([b"a", b"b", b"kvstore"]).hex() == "6284005996020884"
    assert build_filter([b"kvstore", b"a", b"b", b"a"]) == build_filter([b"a", b"b", b"kvstore"])
    assert len(build_filter([b"%d" % i for i in range(100)])) == 8 * 16  # ceil(1000 / 64) words


def test_a_segment_without_filters_answers_maybe() -> None:
    keys = [b"k%05d" % i for i in range(0, 20_000, 2)]
    index = whole_index(
        as_format_1(encode_segment([(k, 1, b"v" * 50) for k in keys], uniform_version=True).data, filters=False)
    )
    assert len(index.offsets) > 1 and not any(index.filters)
    for absent in (b"k%05d" % i for i in range(1, 20_000, 2)):
        assert index.block_for(absent, probe(absent)) == index.block_for(absent)


async def test_stores_written_without_filters_still_read(tmp_path: Path) -> None:
    target = Target("file", f"file://{tmp_path / 's'}")
    options = kvstore.StoreOptions(inline_segment_bytes=0, auto_compact=False)
    async with target.open(options=options) as db:
        await db.put(b"a", b"1")
        await db.put(b"b", b"2")  # two overlapping segments: reads filter both
        await db.put(b"c", b"3")
    for seg in (tmp_path / "s" / "segments").glob("*.seg"):
        seg.write_bytes(as_format_1(seg.read_bytes(), filters=False))  # format 1 before filters
    async with target.open(options=options) as db:
        assert [await db.get(k) for k in (b"a", b"b", b"c", b"bb", b"d")] == [b"1", b"2", b"3", None, None]
        assert (await db.verify()).ok


def _gets(db: kvstore.Store) -> int:
    return int(db.statistics()["requests"].get("GET", 0))


async def test_cold_read_of_an_absent_key_fetches_no_block(target: Target) -> None:
    rng = random.Random(3)
    keys = [b"key/%07d" % i for i in range(0, 40_000, 2)]  # odd numbers are absent, inside the range
    async with target.open() as db:
        await db.bulk_load((k, rng.randbytes(200)) for k in keys)  # about 4 MB: read by ranges
    async with target.open() as db:
        snap = await db.snapshot()
        (segment,) = snap._view.manifest.segments  # white-box: one large, multi-block segment
        assert segment.size > 2 * 1024 * 1024
        before = _gets(db)
        assert await snap.get(b"key/0000003") is None  # ruled out by its filter (not key/0000001)
        assert _gets(db) - before == 1  # the tail (footer, top index, the one partition with the filters), no block
        before = _gets(db)
        assert await snap.get(b"key/0030000") is not None
        assert _gets(db) - before == 1  # the block
        before = _gets(db)
        for i in range(3, 40_000, 200):
            assert await snap.get(b"key/%07d" % i) is None
        assert _gets(db) - before <= 12  # 200 absent keys: false positives only (about 2%)


async def test_warm_reads_across_overlapping_segments(tmp_path: Path) -> None:
    """Most segments covering a key lack it; their filters answer without their blocks."""
    options = kvstore.StoreOptions(auto_compact=False)
    async with kvstore.open(str(tmp_path / "s"), options=options) as db:
        for part in range(8):
            await db.bulk_load([(b"k%06d" % i, os.urandom(20)) for i in range(part, 8000, 8)])
        snap = await db.snapshot()
        for i in range(0, 8000, 7):
            assert await snap.get(b"k%06d" % i) is not None
            assert await snap.get(b"k%06d~" % i) is None
