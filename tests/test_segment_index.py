"""The partitioned segment index (format 2): what a read loads, and format 1 still read."""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from segment_bytes import as_format_1, index_of

import kvstore
import kvstore._segment as segment
from kvstore._cache import ByteLRU
from kvstore._compact import MAX_SUB_COMPACTIONS, compaction_readahead, sub_compaction_bytes
from kvstore._layout import Layout
from kvstore._manifest import SegmentRef
from kvstore._objectstore._local import LocalObjectStore
from kvstore._objectstore._memory import MemoryObjectStore
from kvstore._objectstore._protocol import Blob
from kvstore._objectstore._retry import RetryingObjectStore
from kvstore._segment import SegmentWriter, encode_segment, probe
from kvstore._segment_store import (
    NOT_CACHED,
    READAHEAD_WINDOWS,
    SCAN_MEMORY_BYTES,
    SCAN_READAHEAD_BYTES,
    TAIL_READ_BYTES,
    WHOLE_READ_MAX_BYTES,
    Entry,
    SegmentStore,
    scan_readahead,
)

# Even-numbered keys with 8-byte values: ~1.4 MB, 52 blocks in 5 partitions. Small values
# make many keys per block, hence large filters and several partitions in little data.
KEYS = [b"k%07d" % i for i in range(0, 240_000, 2)]
_rng = random.Random(5)
VALUES = [_rng.randbytes(8) for _ in KEYS]
ENTRIES: list[Entry] = [(k, 1, v) for k, v in zip(KEYS, VALUES, strict=True)]
DATA = encode_segment(ENTRIES, uniform_version=True).data
TOP, PARTS = index_of(DATA)
BLOCKS = TOP.first_blocks[-1]


def _absent(i: int) -> bytes:
    return b"k%07d" % (2 * i + 1)


class _Segment:
    """One segment object in a memory object store, and SegmentStores that read it."""

    def __init__(self, data: bytes, *, intact: bytes | None = None) -> None:
        """`intact`: the undamaged bytes of a damaged segment, for its manifest record."""
        self.objects = RetryingObjectStore(MemoryObjectStore(f"seg-{uuid.uuid4().hex}"))
        self.layout = Layout("")
        self.data = data
        footer = segment.parse_footer(intact or data, "s")
        top, _ = index_of(intact or data)
        self.ref = SegmentRef("s1", top.first_keys[0], top.last_keys[-1], footer.entry_count, len(data), 1, 1, 1)

    async def put(self) -> _Segment:
        await self.objects.put_if_absent(self.layout.segment(self.ref.id), self.data)
        return self

    def store(self, cache: ByteLRU | None = None) -> SegmentStore:
        return SegmentStore(self.objects, self.layout, cache or ByteLRU(256 * 1024 * 1024))

    def gets(self) -> int:
        return self.objects.requests["GET"]


async def _scan(
    store: SegmentStore, ref: SegmentRef, start: bytes | None, end: bytes | None, reverse: bool
) -> list[Entry]:
    return [entry async for chunk in store.blocks(ref, start, end, reverse) for entry in chunk]


def test_partitions_are_written_between_the_blocks_they_index() -> None:
    assert len(DATA) > WHOLE_READ_MAX_BYTES and len(TOP.offsets) >= 4 and BLOCKS > 40
    assert TOP.first_blocks[:-1] == [p.first_block for p in PARTS]
    for p, part in enumerate(PARTS):
        assert (TOP.first_keys[p], TOP.last_keys[p]) == (part.first_keys[0], part.last_keys[-1])
        # its blocks come just before it, and the next partition's blocks just after
        assert part.offsets[-1] + part.lengths[-1] == TOP.offsets[p]
        if p + 1 < len(PARTS):
            assert PARTS[p + 1].offsets[0] == TOP.offsets[p] + TOP.lengths[p]
            assert TOP.last_keys[p] < TOP.first_keys[p + 1]
    decoded = []
    for part in PARTS:
        for b in part.blocks_between(None, None):
            block = segment.decode_block(DATA[slice(*part.span(b))], "s", b)
            decoded.extend(zip(block.keys, block.values, strict=True))
    assert decoded == list(zip(KEYS, VALUES, strict=True))


def test_a_streamed_segment_has_the_same_bytes() -> None:
    writer = SegmentWriter(uniform_version=True)
    chunks = []
    for _ in writer.add_many(KEYS, VALUES, 1):
        if writer.pending_bytes >= 100_000:
            chunks.append(writer.take())
    chunks.append(writer.finish())
    assert len(chunks) > 10 and b"".join(chunks) == DATA
    assert (writer.min_key, writer.max_key, writer.count) == (KEYS[0], KEYS[-1], len(KEYS))


async def test_every_key_and_absent_keys() -> None:
    seg = await _Segment(DATA).put()
    store = seg.store()
    for i, key in enumerate(KEYS):
        assert await store.get(seg.ref, key, probe(key), 1) == (1, VALUES[i])
    for i in range(0, len(KEYS), 7):
        assert await store.get(seg.ref, _absent(i), probe(_absent(i)), 1) is None
    for outside in (b"", b"j", KEYS[-1] + b"\0", b"z"):
        assert await store.get(seg.ref, outside, probe(outside), 1) is None
    assert await store.get(seg.ref, KEYS[0], probe(KEYS[0]), 0) is None  # newer than the version read


def _bounds() -> Iterator[tuple[bytes | None, bytes | None]]:
    """Ranges that start and end inside partitions, at their first and last keys, between
    keys, and cross one or several partition boundaries."""
    firsts = TOP.first_keys
    yield None, None
    yield None, firsts[1]
    yield firsts[2], None
    yield KEYS[100], KEYS[-100]
    yield firsts[1], firsts[3]
    yield TOP.last_keys[0], firsts[1] + b"\0"
    yield _absent(KEYS.index(firsts[2]) - 1), _absent(KEYS.index(firsts[4]) + 3)
    yield KEYS[5], KEYS[5]  # empty
    yield KEYS[9], KEYS[5]  # empty


@pytest.mark.parametrize("reverse", [False, True])
async def test_scans_across_partitions(reverse: bool) -> None:
    seg = await _Segment(DATA).put()
    for start, end in _bounds():
        store = seg.store()  # cold: partitions load as the scan reaches them
        want = [e for e in ENTRIES if (start is None or e[0] >= start) and (end is None or e[0] < end)]
        got = await _scan(store, seg.ref, start, end, reverse)
        assert got == (want[::-1] if reverse else want), (start, end)
        assert await _scan(store, seg.ref, start, end, reverse) == got  # warm


async def test_a_cold_point_read_costs_at_most_three_gets() -> None:
    seg = await _Segment(DATA).put()
    first, last = PARTS[1], PARTS[-1]
    # ruled out by the filter of its block (in a partition not in the tail read)
    ruled_out = next(
        k for k in map(_absent, range(first.first_block * 1000, len(KEYS))) if first.block_for(k, probe(k)) is None
    )
    cases = [
        (first.first_keys[3], 3),  # the tail (footer, top index), the partition, the block
        (ruled_out, 2),  # the tail, the partition: no block
        (last.first_keys[0], 2),  # the last partition came with the tail
        (b"z", 1),  # beyond every partition: the top index answers
    ]
    for key, gets in cases:
        store = seg.store()
        before = seg.gets()
        value = await store.get(seg.ref, key, probe(key), 1)
        assert seg.gets() - before == gets, key
        assert (value is not None) == (key in KEYS)
        before = seg.gets()
        assert await store.get(seg.ref, key, probe(key), 1) == value
        assert seg.gets() == before  # cached now


async def test_get_cached_needs_the_top_index_the_partition_and_the_block() -> None:
    seg = await _Segment(DATA).put()
    cache = ByteLRU(256 * 1024 * 1024)
    store = seg.store(cache)
    key, other = PARTS[0].first_keys[0], PARTS[1].first_keys[0]
    assert store.get_cached(seg.ref, key, probe(key), 1) is NOT_CACHED  # no top index
    assert await store.get(seg.ref, key, probe(key), 1) == (1, VALUES[0])
    assert store.get_cached(seg.ref, key, probe(key), 1) == (1, VALUES[0])
    assert store.get_cached(seg.ref, b"z", probe(b"z"), 1) is None  # outside every partition
    assert store.get_cached(seg.ref, other, probe(other), 1) is NOT_CACHED  # its partition is not cached
    assert ("index", "s1") in cache._items and ("part", "s1", 0) in cache._items
    assert ("block", "s1", 0) in cache._items and ("part", "s1", 1) not in cache._items
    assert cache.size == sum(size for _, size in cache._items.values())


async def test_fill_cache_false_leaves_the_cache_as_it_was() -> None:
    seg = await _Segment(DATA).put()
    cache = ByteLRU(256 * 1024 * 1024)
    store = seg.store(cache)
    hot = PARTS[1].first_keys[0]
    await store.get(seg.ref, hot, probe(hot), 1)  # top index, held tail bytes, partition 1 and a block
    before_items, before_size, before = list(cache._items.items()), cache.size, seg.gets()
    for reverse in (False, True):
        blocks = store.blocks(seg.ref, None, None, reverse, fill_cache=False, readahead=1)  # a GET per block
        got = [e async for chunk in blocks for e in chunk]
        assert got == (ENTRIES[::-1] if reverse else ENTRIES)
    assert list(cache._items.items()) == before_items and cache.size == before_size  # LRU order too
    # Each scan fetched what the cache lacked, once: every block but the cached one, and
    # the partitions neither cached (1) nor in the cached tail bytes (the last).
    assert seg.gets() - before == 2 * (BLOCKS - 1 + len(PARTS) - 2)
    # The control: a scan that fills the cache adds every block and partition.
    assert await _scan(store, seg.ref, None, None, False) == ENTRIES
    assert len(cache._items) == len(before_items) + BLOCKS - 1 + len(PARTS) - 1


class _RecordingStore(MemoryObjectStore):
    """Records the byte range of every ranged GET, and how many were in flight at most."""

    def __init__(self) -> None:
        super().__init__(f"seg-{uuid.uuid4().hex}")
        self.ranges: list[tuple[int, int]] = []
        self.in_flight = self.most_in_flight = 0

    async def get(
        self, name: str, *, byte_range: tuple[int, int] | None = None, if_none_match: str | None = None
    ) -> Blob | None:
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            await asyncio.sleep(0)  # let the scan start what it would start meanwhile
            if byte_range is not None:
                self.ranges.append(byte_range)
            return await super().get(name, byte_range=byte_range, if_none_match=if_none_match)
        finally:
            self.in_flight -= 1


@pytest.mark.parametrize("reverse", [False, True])
async def test_a_scan_reads_ahead_in_doubling_windows_up_to_its_readahead(reverse: bool) -> None:
    seg = _Segment(DATA)
    recording = _RecordingStore()
    seg.objects = RetryingObjectStore(recording)
    await seg.put()
    store = seg.store()
    readahead = 256 * 1024
    got = [e async for chunk in store.blocks(seg.ref, None, None, reverse, readahead=readahead) for e in chunk]
    assert got == (ENTRIES[::-1] if reverse else ENTRIES)
    spans = [part.span(b) for part in PARTS for b in part.blocks_between(None, None)]
    windows = [
        r
        for r in recording.ranges
        if r not in {(TOP.offsets[p], TOP.offsets[p] + TOP.lengths[p]) for p in range(len(PARTS))}
        and r != (len(DATA) - TAIL_READ_BYTES, len(DATA))  # the tail: footer, top index, last partitions
    ]
    # The first window is one block; each next at most twice as large, never over readahead
    # (bar a single block larger than it); together they fetch each block exactly once.
    assert windows[0] in spans
    sizes = [hi - lo for lo, hi in windows]
    assert all(size <= 2 ** (n + 1) * sizes[0] for n, size in enumerate(sizes))
    assert max(sizes) <= readahead and max(sizes) > readahead // 2
    covered = {span for span in spans if any(lo <= span[0] and span[1] <= hi for lo, hi in windows)}
    assert {span for span in spans if span[0] < len(DATA) - TAIL_READ_BYTES} <= covered  # the rest: the tail's bytes
    assert sum(sizes) <= len(DATA)  # no block fetched twice
    assert len(windows) < BLOCKS // 4  # against one GET per block
    assert recording.most_in_flight <= READAHEAD_WINDOWS


async def test_fill_cache_false_reads_a_small_segment_in_one_get() -> None:
    small = encode_segment(ENTRIES[:20_000], uniform_version=True).data
    assert len(small) <= WHOLE_READ_MAX_BYTES and len(index_of(small)[1][0].offsets) > 3
    seg = await _Segment(small).put()
    cache = ByteLRU(256 * 1024 * 1024)
    chunks = [c async for c in seg.store(cache).blocks(seg.ref, None, None, False, fill_cache=False)]
    assert [e for c in chunks for e in c] == ENTRIES[:20_000] and len(chunks) > 3
    assert seg.gets() == 1 and cache.size == 0 and not cache._items


def _damaged(data: bytes, at: int) -> bytes:
    out = bytearray(data)
    out[at] ^= 0x20
    return bytes(out)


@pytest.mark.parametrize("p", [1, len(PARTS) - 1])  # fetched on its own; in the tail read
async def test_a_damaged_partition_is_named_and_spares_the_others(p: int) -> None:
    seg = await _Segment(_damaged(DATA, TOP.offsets[p] + TOP.lengths[p] // 2), intact=DATA).put()
    store = seg.store()
    key = PARTS[p].first_keys[1]
    with pytest.raises(kvstore.CorruptionError, match=f"index partition {p}") as info:
        await store.get(seg.ref, key, probe(key), 1)
    assert info.value.block == f"index partition {p}" and info.value.object_name == "segments/s1.seg"
    assert await store.get(seg.ref, KEYS[0], probe(KEYS[0]), 1) == (1, VALUES[0])
    with pytest.raises(kvstore.CorruptionError, match=f"index partition {p}"):
        await _scan(store, seg.ref, None, None, False)
    with pytest.raises(kvstore.CorruptionError, match=f"index partition {p}"):
        await seg.store().read_all(seg.ref)


async def test_read_all_checks_every_block_a_partition_at_a_time() -> None:
    seg = await _Segment(DATA).put()
    await seg.store().read_all(seg.ref)
    assert seg.gets() == 1 + len(PARTS) - 1 + BLOCKS  # the last partition came with the tail
    last_block = PARTS[-1].first_block + len(PARTS[-1].offsets) - 1
    start, end = PARTS[-1].span(last_block)
    seg = await _Segment(_damaged(DATA, (start + end) // 2), intact=DATA).put()
    with pytest.raises(kvstore.CorruptionError, match=f"data block {last_block}"):
        await seg.store(ByteLRU(1024 * 1024)).read_all(seg.ref)


async def test_verify_reports_a_damaged_partition(tmp_path: Path) -> None:
    async with kvstore.open(str(tmp_path / "s"), options=kvstore.StoreOptions(auto_compact=False)) as db:
        await db.bulk_load(zip(KEYS, VALUES, strict=True))
        assert (await db.verify()).ok
    (path,) = (tmp_path / "s" / "segments").glob("*.seg")
    assert path.read_bytes() == DATA
    path.write_bytes(_damaged(DATA, TOP.offsets[2] + 10))
    async with kvstore.open(str(tmp_path / "s")) as db:
        report = await db.verify()
        assert list(report.damaged) == [f"segments/{path.name}"]
        assert "index partition 2" in report.damaged[f"segments/{path.name}"]
        assert await db.get(KEYS[0]) == VALUES[0]  # partition 0 is intact


@pytest.fixture
def format_1(monkeypatch: pytest.MonkeyPatch) -> bytes:
    """DATA as format 1 wrote it: every block row in one index block."""
    with monkeypatch.context() as patch:
        patch.setattr(segment, "PARTITION_TARGET_BYTES", 1 << 40)
        one_partition = encode_segment(ENTRIES, uniform_version=True).data
    return as_format_1(one_partition)


async def test_a_format_1_segment_is_still_read(format_1: bytes) -> None:
    assert segment.parse_footer(format_1, "s").format == 1 and len(format_1) > WHOLE_READ_MAX_BYTES
    seg = await _Segment(format_1).put()
    store = seg.store()
    before = seg.gets()
    assert await store.get(seg.ref, KEYS[500], probe(KEYS[500]), 1) == (1, VALUES[500])
    assert seg.gets() - before == 3  # the tail; the index block, larger than the tail read; the block
    for i in range(0, len(KEYS), 3):
        assert await store.get(seg.ref, KEYS[i], probe(KEYS[i]), 1) == (1, VALUES[i])
        assert await store.get(seg.ref, _absent(i), probe(_absent(i)), 1) is None
    for reverse in (False, True):
        assert await _scan(seg.store(), seg.ref, KEYS[10], KEYS[-10], reverse) == (
            ENTRIES[10:-10][::-1] if reverse else ENTRIES[10:-10]
        )
    await seg.store().read_all(seg.ref)
    broken = await _Segment(_damaged(format_1, len(format_1) - 100), intact=format_1).put()  # in the index block
    with pytest.raises(kvstore.CorruptionError, match="index") as info:
        await broken.store().read_all(broken.ref)
    assert info.value.block == "index"


async def test_a_small_format_1_segment_is_read_whole(tmp_path: Path) -> None:
    small = as_format_1(encode_segment(ENTRIES[:3000], uniform_version=True).data)
    objects = RetryingObjectStore(LocalObjectStore(tmp_path))
    await objects.put_if_absent("segments/s2.seg", small)
    ref = SegmentRef("s2", KEYS[0], KEYS[2999], 3000, len(small), 1, 1, 1)
    store = SegmentStore(objects, Layout(""), ByteLRU(64 * 1024 * 1024))
    assert await _scan(store, ref, None, None, True) == ENTRIES[:3000][::-1]
    assert await store.get(ref, KEYS[2000], probe(KEYS[2000]), 1) == (1, VALUES[2000])
    assert objects.requests["GET"] == 1


def test_a_scan_of_many_sources_shares_its_read_ahead_memory() -> None:
    assert scan_readahead(1) == SCAN_READAHEAD_BYTES
    for sources in (1, 2, 5, 20, 100, 10_000):
        window = scan_readahead(sources)
        assert window >= segment.BLOCK_TARGET_BYTES
        assert window == segment.BLOCK_TARGET_BYTES or sources * READAHEAD_WINDOWS * window <= SCAN_MEMORY_BYTES
    assert scan_readahead(10_000) == segment.BLOCK_TARGET_BYTES


@pytest.mark.parametrize("budget_mib", [1, 16, 256, 1024])
@pytest.mark.parametrize("inputs", [1, 4, 10, 300])
def test_a_compactions_read_ahead_keeps_four_sub_compactions_in_its_budget(budget_mib: int, inputs: int) -> None:
    options = kvstore.StoreOptions(compaction_memory_bytes=budget_mib * 1024 * 1024)
    window = compaction_readahead(inputs, options)
    assert segment.BLOCK_TARGET_BYTES <= window <= SCAN_READAHEAD_BYTES
    fits = sub_compaction_bytes(inputs, options.target_segment_bytes, window) * MAX_SUB_COMPACTIONS
    assert window == segment.BLOCK_TARGET_BYTES or fits <= options.compaction_memory_bytes
    if window < SCAN_READAHEAD_BYTES:  # the largest that fits: twice it would not
        bigger = sub_compaction_bytes(inputs, options.target_segment_bytes, 2 * window) * MAX_SUB_COMPACTIONS
        assert bigger > options.compaction_memory_bytes


async def test_a_scan_that_stops_in_its_first_block_fetches_only_that_block() -> None:
    seg = _Segment(DATA)
    recording = _RecordingStore()
    seg.objects = RetryingObjectStore(recording)
    await seg.put()
    store = seg.store()
    await store.get(seg.ref, KEYS[-1], probe(KEYS[-1]), 1)  # the tail (index), as a scan finds it cached
    recording.ranges.clear()
    blocks = store.blocks(seg.ref, None, None, False)
    first = await anext(blocks)
    await blocks.aclose()  # a scan whose limit the first block met
    assert first == ENTRIES[: len(first)]
    partitions = {(TOP.offsets[p], TOP.offsets[p] + TOP.lengths[p]) for p in range(len(PARTS))}
    # the first block, and no window ahead of what was consumed
    assert [r for r in recording.ranges if r not in partitions] == [PARTS[0].span(0)]


async def test_concurrent_scans_of_cold_blocks_fetch_each_once() -> None:
    seg = _Segment(DATA)
    recording = _RecordingStore()
    seg.objects = RetryingObjectStore(recording)
    await seg.put()
    store = seg.store()
    await store.get(seg.ref, KEYS[-1], probe(KEYS[-1]), 1)
    recording.ranges.clear()
    scans = await asyncio.gather(*(_scan(store, seg.ref, None, None, False) for _ in range(4)))
    assert all(got == ENTRIES for got in scans)
    partitions = {(TOP.offsets[p], TOP.offsets[p] + TOP.lengths[p]) for p in range(len(PARTS))}
    windows = [r for r in recording.ranges if r not in partitions]
    assert sum(hi - lo for lo, hi in windows) <= len(DATA)  # each block's bytes fetched once, for all four


async def test_blocks_a_scan_read_ahead_are_in_the_disk_cache_for_point_reads(tmp_path: Path) -> None:
    from kvstore._disk_cache import DiskCache

    seg = _Segment(DATA)
    recording = _RecordingStore()
    seg.objects = RetryingObjectStore(recording)
    await seg.put()
    disk = DiskCache(str(tmp_path / "disk"), 64 * 1024 * 1024)
    try:
        assert (
            await _scan(SegmentStore(seg.objects, seg.layout, ByteLRU(1024), disk), seg.ref, None, None, False)
            == ENTRIES
        )
        fresh = SegmentStore(seg.objects, seg.layout, ByteLRU(256 * 1024 * 1024), disk)  # as another process
        before = seg.gets()
        for key in KEYS[::997]:
            assert await fresh.get(seg.ref, key, probe(key), 1) == (1, VALUES[KEYS.index(key)])
        assert seg.gets() == before  # the tail, partitions and blocks all came from the disk
        recording.ranges.clear()
        assert await _scan(fresh, seg.ref, None, None, True) == ENTRIES[::-1]
        assert recording.ranges == []  # and a scan finds the blocks point reads or scans left there
    finally:
        disk.close()


async def test_an_abandoned_scan_leaves_no_window_behind() -> None:
    seg = await _Segment(DATA).put()
    store = seg.store()
    for stop_after in (1, 3, 7):  # inside the first window, and inside later ones
        blocks = store.blocks(seg.ref, None, None, False, fill_cache=False)
        for _ in range(stop_after):
            await anext(blocks)
        await blocks.aclose()
        assert store._windows == {}  # white-box: no window's bytes held for a walk that ended
