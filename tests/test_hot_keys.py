"""A frequently rewritten key (issue 17, defect 4).

Before segment format 3 a block closed only at a key boundary, so every retained
version of a key sat in one block: 30 versions of a 1 MiB value made a 30 MiB block,
read whole by a cold get of the newest value and held several times over by a
compaction whatever `compaction_memory_bytes` said. Now such a key's versions fill
blocks of their own, newest first. These tests check that blocks, cold reads and
compaction memory stay bounded, and that every retained version still reads back
through point reads, scans both ways, ranges at the hot key and merges.
"""

from __future__ import annotations

import os
import random
import tracemalloc
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from segment_bytes import index_of, whole_index
from targets import Target, engine_of, file_target

import kvstore
import kvstore._segment as segment
from kvstore._cache import ByteLRU
from kvstore._compact import sub_compaction_bytes
from kvstore._layout import Layout
from kvstore._manifest import SegmentRef
from kvstore._objectstore._memory import MemoryObjectStore
from kvstore._objectstore._retry import RetryingObjectStore
from kvstore._segment import decode_block, encode_segment, probe
from kvstore._segment_store import NOT_CACHED, TAIL_READ_BYTES, Entry, SegmentStore

KiB = 1024
MiB = 1024 * KiB


@pytest.fixture
def tiny_blocks(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Blocks of ~512 bytes and a partition every few blocks: a key of a few small
    versions already spans blocks and partitions."""
    monkeypatch.setattr(segment, "BLOCK_TARGET_BYTES", 512)
    monkeypatch.setattr(segment, "PARTITION_TARGET_BYTES", 64)
    yield


def _history() -> list[Entry]:
    """Sorted entries: two hot keys with long histories (tombstones among them), a key of
    a single value larger than a block followed by small versions, and quiet keys."""
    rng = random.Random(17)
    entries: list[Entry] = [(b"a", 3, b"A")]
    entries += [(b"hot1", v, None if v % 7 == 0 else rng.randbytes(rng.randint(20, 120))) for v in range(90, 0, -1)]
    entries += [(b"huge", 5, rng.randbytes(1500)), (b"huge", 4, b"small"), (b"huge", 2, b"tiny")]
    entries += [(b"hot2", v, rng.randbytes(60)) for v in range(60, 10, -1)]
    entries += [(b"m", 8, b"M8"), (b"m", 1, b"M1"), (b"z", 2, b"Z")]
    return sorted(entries, key=lambda e: (e[0], -e[1]))


def _raw(entries: list[Entry]) -> int:
    return sum(len(k) + (len(v) if v is not None else 0) + 12 for k, _, v in entries)


def test_a_hot_key_fills_blocks_of_its_own(tiny_blocks: None) -> None:
    entries = _history()
    data = encode_segment(entries, uniform_version=False).data
    rows = whole_index(data)
    blocks = [decode_block(data[slice(*rows.span(b))], "s", b).keys for b in range(len(rows.offsets))]  # keys per block
    biggest_entry = max(_raw([e]) for e in entries)
    decoded: list[bytes] = [k for keys in blocks for k in keys]
    assert decoded == [e[0] for e in entries]
    offset = 0
    for b, keys in enumerate(blocks):
        block_entries = entries[offset : offset + len(keys)]
        offset += len(keys)
        # bounded whatever a key's history: the target, plus the entry that passed it
        assert _raw(block_entries) <= 512 + biggest_entry, (b, keys[0])
    for key in (b"hot1", b"hot2", b"huge"):
        holding = [b for b, keys in enumerate(blocks) if key in keys]
        assert len(holding) >= 2, key  # its versions span blocks...
        assert holding == list(range(holding[0], holding[-1] + 1))  # ...consecutive ones
        assert all(set(blocks[b]) == {key} for b in holding), key  # that hold no other key
    # The hot key's blocks run over a partition boundary, and a lookup lands on its
    # first block (its newest version) in the first partition holding it.
    top, parts = index_of(data)
    crossing = [p for p in range(1, len(parts)) if top.first_keys[p] == top.last_keys[p - 1] == b"hot1"]
    assert crossing
    p = top.partition_for(b"hot1")
    assert p is not None and p < crossing[0]
    block_no = parts[p].block_for(b"hot1", probe(b"hot1"))
    assert block_no is not None and blocks[block_no][0] == b"hot1" and blocks[block_no - 1][-1] == b"a"


def _newest(entries: list[Entry], key: bytes, max_version: int) -> tuple[int, bytes | None] | None:
    return next(((v, val) for k, v, val in entries if k == key and v <= max_version), None)


def _in_scan_order(entries: list[Entry], start: bytes | None, end: bytes | None, reverse: bool) -> list[Entry]:
    """Forward: key ascending, version descending; reverse: key descending, version descending."""
    chosen = [e for e in entries if (start is None or e[0] >= start) and (end is None or e[0] < end)]
    if reverse:
        return sorted(chosen, key=lambda e: (e[0], e[1]), reverse=True)
    return sorted(chosen, key=lambda e: (e[0], -e[1]))


async def test_segment_reads_of_keys_over_blocks_and_partitions(tiny_blocks: None) -> None:
    entries = _history()
    data = encode_segment(entries, uniform_version=False).data
    top, _ = index_of(data)
    assert len(whole_index(data).offsets) > 20 and len(top.offsets) > 5
    objects = RetryingObjectStore(MemoryObjectStore(f"seg-{uuid.uuid4().hex}"))
    layout = Layout("")
    await objects.put_if_absent(layout.segment("s1"), data)
    ref = SegmentRef("s1", entries[0][0], entries[-1][0], len(entries), len(data), 1, 90)
    keys = sorted({e[0] for e in entries}) + [b"absent", b"hot1\x00"]
    for max_version in [0, 1, 2, 5, 6, 7, 11, 30, 59, 60, 61, 89, 90, 1000]:
        cold = SegmentStore(objects, layout, ByteLRU(256 * MiB))  # nothing cached: partitions and blocks load
        for key in keys:
            expected = _newest(entries, key, max_version)
            assert await cold.get(ref, key, probe(key), max_version) == expected, (key, max_version)
            assert cold.get_cached(ref, key, None, max_version) == expected, (key, max_version)  # now cached
    store = SegmentStore(objects, layout, ByteLRU(256 * MiB))
    # The newest version loads the key's first block only; an old one needs blocks further on.
    assert await store.get(ref, b"hot1", probe(b"hot1"), 90) == _newest(entries, b"hot1", 90)
    assert store.get_cached(ref, b"hot1", None, 90) == _newest(entries, b"hot1", 90)
    assert store.get_cached(ref, b"hot1", None, 3) is NOT_CACHED
    ranges = [(None, None), (b"hot1", None), (None, b"hot1"), (b"hot1", b"hot1\x00"), (b"hot1", b"hot2")]
    ranges += [(b"huge", b"m"), (b"b", b"hot2\x00"), (b"hot2", b"hot2\x00"), (b"hot10", b"z")]
    for start, end in ranges:
        for reverse in (False, True):
            got = [e async for block in store.blocks(ref, start, end, reverse) for e in block]
            assert got == _in_scan_order(entries, start, end, reverse), (start, end, reverse)


async def _segment_refs(db: kvstore.Store) -> list[SegmentRef]:
    """Every segment the store's manifest lists, a run's segments included (white-box)."""
    engine = engine_of(db)
    return [part for ref in engine.manifest.segments for part in await engine._sources.parts(ref)]


async def _most_blocks_holding(db: kvstore.Store, key: bytes) -> int:
    """The most blocks of one segment that hold `key`."""
    most = 0
    for ref in await _segment_refs(db):
        data = ref.inline
        if data is None:
            blob = await engine_of(db).objects.get(engine_of(db).layout.segment(ref.id))
            assert blob is not None
            data = blob.data
        rows = whole_index(data)
        most = max(most, sum(first <= key <= last for first, last in zip(rows.first_keys, rows.last_keys, strict=True)))
    return most


async def _check_version(db: kvstore.Store, version: int, state: dict[bytes, bytes]) -> None:
    """Gets, scans both ways and ranges at and around the hot keys, at `version`."""
    snap = await db.snapshot(version=version)
    for key in [b"a", b"hot1", b"hot2", b"m", b"z", b"absent"]:
        assert await snap.get(key) == state.get(key), (version, key)
    ordered = sorted(state.items())
    ranges: list[tuple[bytes | None, bytes | None]] = [(None, None), (b"hot1", None), (None, b"hot1")]
    ranges += [(b"hot1", b"hot1\x00"), (b"hot1", b"hot2"), (b"hot1\x00", b"hot2\x00"), (b"b", b"hot2")]
    for start, end in ranges:
        want = [(k, v) for k, v in ordered if (start is None or k >= start) and (end is None or k < end)]
        assert [kv async for kv in snap.scan(start=start, end=end)] == want, (version, start, end)
        assert [kv async for kv in snap.scan(start=start, end=end, reverse=True)] == want[::-1], (version, start, end)


async def test_every_retained_version_of_hot_keys_reads_back(target: Target, tiny_blocks: None) -> None:
    history = 24
    # Output segments of ~1 KiB: compactions write sorted runs of several segments, and
    # a hot key's history is larger than one (it must stay in one, ranges disjoint).
    options = kvstore.StoreOptions(
        auto_compact=False, history_versions=history, compaction_fanout=4, target_segment_bytes=1024
    )
    rng = random.Random(4)
    states: dict[int, dict[bytes, bytes]] = {}
    state: dict[bytes, bytes] = {}
    async with target.open(options=options) as db:
        for round_no in range(40):
            async with db.transaction() as tx:
                value = rng.randbytes(rng.randint(40, 200))
                tx.put(b"hot1", value)
                state[b"hot1"] = value
                if round_no % 5 == 4:
                    tx.delete(b"hot2")
                    state.pop(b"hot2", None)
                else:
                    state[b"hot2"] = value[:50]
                    tx.put(b"hot2", value[:50])
                if round_no % 9 == 0:
                    quiet = [b"a", b"m", b"z"][round_no % 3]
                    state[quiet] = b"q%d" % round_no
                    tx.put(quiet, state[quiet])
            states[db.version] = dict(state)
            if round_no in (15, 30):
                await db.compact(full=True)  # the hot keys' histories into blocks of their own
            elif round_no % 6 == 5:
                await db.compact()  # tiered: a run merged with newer segments
            states[db.version] = dict(state)
        assert await _most_blocks_holding(db, b"hot1") >= 3  # a hot key really spans blocks
        assert (await db.verify()).ok
        runs = [r for r in engine_of(db).manifest.segments if r.is_run]
        assert runs
        for run in runs:
            parts = await engine_of(db)._sources.parts(run)
            assert len(parts) > 1 and all(a.max_key < b.min_key for a, b in zip(parts, parts[1:], strict=False)), parts
        newest = db.version
        retained = range(newest - history + 1, newest + 1)

        def state_at(version: int) -> dict[bytes, bytes]:
            return states[max(v for v in states if v <= version)]

        for version in retained:  # through the writer's warm cache
            await _check_version(db, version, state_at(version))
    # A reader with a cache too small to keep anything: every read fetches.
    async with target.open(options=kvstore.StoreOptions(cache_bytes=1, auto_compact=False)) as cold:
        for version in retained[::3]:
            await _check_version(cold, version, state_at(version))


class _CountsSegmentBytes:
    """An object store that counts the bytes its GETs of segments return."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.bytes_read = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def get(self, name: str, **kwargs: Any) -> Any:
        blob = await self.inner.get(name, **kwargs)
        if blob is not None and "segments/" in name:
            self.bytes_read += len(blob.data)
        return blob


async def test_a_cold_get_of_a_hot_keys_newest_value_reads_about_one_block(durable_target: Target) -> None:
    value_bytes, versions = 256 * KiB, 24
    options = kvstore.StoreOptions(auto_compact=False)
    written: dict[int, bytes] = {}
    async with durable_target.open(options=options) as db:
        for i in range(versions):
            value = bytes([i]) + os.urandom(value_bytes - 1)
            written[await db.put(b"doc", value)] = value
        await db.put(b"other", b"x")
        await db.compact(full=True)  # one segment: the key's 24 versions, 6 MiB
    made: list[_CountsSegmentBytes] = []

    def counting(inner: Any) -> _CountsSegmentBytes:
        made.append(_CountsSegmentBytes(inner))
        return made[-1]

    async with durable_target.open(options=options, wrap_object_store=counting) as db:
        made[0].bytes_read = 0
        assert await db.get(b"doc") == written[max(written)]
        # The segment's tail (footer, top index, its one partition), then one block: the
        # newest value. Before format 3 the one block held all 24 versions (6 MiB).
        assert made[0].bytes_read <= TAIL_READ_BYTES + value_bytes + 16 * KiB
        oldest = min(written)
        assert await (await db.snapshot(version=oldest)).get(b"doc") == written[oldest]
        assert [k async for k, _ in db.scan(reverse=True)] == [b"other", b"doc"]


async def test_compaction_memory_does_not_grow_with_a_keys_history(tmp_path: Path) -> None:
    versions = 40  # of a 1 MiB value: 40 MiB of history, all retained (history_versions=100)
    options = kvstore.StoreOptions(auto_compact=False, compaction_memory_bytes=1 * MiB)
    async with file_target(tmp_path).open(options=options) as db:
        for i in range(versions):
            await db.put(b"doc", bytes([i]) + os.urandom(MiB - 1))
        await db.compact(full=True)  # the history in one segment; then a merge of 2 inputs
        await db.put(b"other", b"x")
        tracemalloc.start()
        try:
            [result] = await db.compact(full=True)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert result.entries_out == versions + 1
        assert (await db.get(b"doc"))[:1] == bytes([versions - 1])
    # compaction_memory_bytes=1 MiB is below one sub-compaction, so one runs, and it holds
    # what `sub_compaction_bytes` says: here about 49 MiB, almost all of it the output's
    # 8 MiB upload parts (one filling, its copy, two in flight), the same for any history.
    # Measured: 20 to 36 MiB. Before format 3 the key's 40 versions made one 40 MiB block,
    # held whole about four times over (read, decoded, gathered as one key, encoded): 160 MiB.
    assert peak <= sub_compaction_bytes(2, options.target_segment_bytes)


async def test_an_output_segment_never_ends_inside_a_keys_versions() -> None:
    # A compaction hands its output a key's versions over several batches (a merge batch
    # holds about 256 KiB of values): the segment may end only where a key ends, else a
    # run's segments would overlap and a read would look in the wrong one.
    objects = RetryingObjectStore(MemoryObjectStore(f"seg-{uuid.uuid4().hex}"))
    store = SegmentStore(objects, Layout(""), ByteLRU(MiB))
    output = store.new_output(uniform_version=False)
    value = bytes(300)
    first: list[Entry] = [(b"a", 1, value), (b"hot", 9, value), (b"hot", 8, value)]
    assert output.add_until(first, 0, 100) == 1  # full after "a": the next key goes to the next segment
    output = store.new_output(uniform_version=False)
    assert output.add_until(first, 1, 100) == 3
    assert output.add_until([(b"hot", 7, value), (b"hot", 6, value), (b"m", 1, value)], 0, 100) == 2
    ref = await output.finish(level=1)
    assert (ref.min_key, ref.max_key, ref.count) == (b"hot", b"hot", 4)
