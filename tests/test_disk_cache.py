"""The optional on-disk segment cache (`StoreOptions.cache_dir`)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from targets import Target

import kvstore


def _options(cache_dir: Path) -> kvstore.StoreOptions:
    # Segment objects (not inline), so that reads have something to fetch.
    return kvstore.StoreOptions(cache_dir=str(cache_dir), inline_segment_bytes=0, auto_compact=False)


def _gets(db: kvstore.Store) -> int:
    return int(db.statistics()["requests"].get("GET", 0))


async def _fill(target: Target, options: kvstore.StoreOptions) -> None:
    async with target.open(options=options) as db:
        for i in range(5):
            await db.put(f"k{i}", f"v{i}".encode())


async def test_a_second_store_reads_segments_from_the_disk_cache(durable_target: Target, tmp_path: Path) -> None:
    options = _options(tmp_path / "cache")
    await _fill(durable_target, options)
    async with durable_target.open(options=options) as db:  # cold memory, cold disk
        before = _gets(db)
        assert [await db.get(f"k{i}") for i in range(5)] == [f"v{i}".encode() for i in range(5)]
        assert _gets(db) - before == 5 + 5  # a manifest refresh and a segment GET per key
    async with durable_target.open(options=options) as db:  # cold memory, warm disk
        before = _gets(db)
        assert [await db.get(f"k{i}") for i in range(5)] == [f"v{i}".encode() for i in range(5)]
        assert _gets(db) - before == 5  # the manifest refreshes only


async def test_a_damaged_cache_entry_is_refetched(tmp_path: Path) -> None:
    target = Target("file", f"file://{tmp_path / 'store'}")
    options = _options(tmp_path / "cache")
    await _fill(target, options)
    async with target.open(options=options) as db:
        assert await db.get("k0") == b"v0"
    import diskcache

    with diskcache.Cache(str(tmp_path / "cache")) as raw:
        keys = list(raw.iterkeys())
        assert keys
        for key in keys:
            framed = raw[key]
            raw[key] = framed[:10] + bytes([framed[10] ^ 0xFF]) + framed[11:]
    async with target.open(options=options) as db:
        before = _gets(db)
        assert await db.get("k0") == b"v0"  # no CorruptionError: the object store is fine
        assert _gets(db) - before == 2  # manifest + the segment again


async def test_verify_reads_the_objects_not_the_disk_cache(tmp_path: Path) -> None:
    target = Target("file", f"file://{tmp_path / 'store'}")
    options = _options(tmp_path / "cache")
    await _fill(target, options)
    async with target.open(options=options) as db:
        assert await db.get("k0") == b"v0"  # now cached on disk
    for segment in (tmp_path / "store" / "segments").glob("*.seg"):
        data = bytearray(segment.read_bytes())
        data[12] ^= 0xFF
        segment.write_bytes(bytes(data))
    async with target.open(options=options) as db:
        report = await db.verify()
        assert not report.ok and len(report.damaged) == 5


async def test_cache_dir_without_diskcache_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "diskcache", None)  # import diskcache -> ImportError
    with pytest.raises(kvstore.ValidationError, match=r"pip install 'kvstore\[disk-cache\]'"):
        async with kvstore.open(f"file://{tmp_path / 'store'}", options=_options(tmp_path / "cache")):
            pass


async def test_an_unusable_cache_dir_is_a_clear_error(tmp_path: Path) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    with pytest.raises(kvstore.ValidationError, match="writable directory"):
        async with kvstore.open(f"file://{tmp_path / 'store'}", options=_options(not_a_dir)):
            pass
