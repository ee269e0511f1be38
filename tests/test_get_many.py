"""Batched reads: `get_many` on a store, a snapshot and a transaction (issue 19, item 1).

Answers must equal `get` of each key at every version; a cold batch must cost one
manifest check plus at most one GET per distinct block, issued together.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterator
from typing import Any

import pytest
from segment_bytes import whole_index
from targets import Target, engine_of

import kvstore
import kvstore._segment as segment
import kvstore._segment_store as segment_store
from kvstore._objectstore import Blob
from kvstore.testing.faults import FaultInjectingStore

GATE_DEADLINE = 10.0  # seconds a held GET waits for the others before the test fails (< attempt_timeout)


@pytest.fixture
def tiny_blocks(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Blocks of ~512 bytes and a partition every few blocks, so that a few hundred keys
    fill many blocks and a hot key's versions span blocks."""
    monkeypatch.setattr(segment, "BLOCK_TARGET_BYTES", 512)
    monkeypatch.setattr(segment, "PARTITION_TARGET_BYTES", 64)
    yield


@pytest.fixture
def ranged_reads(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every segment read by ranges (tail, partition, block), as large segments are on S3."""
    monkeypatch.setattr(segment_store, "WHOLE_READ_MAX_BYTES", 0)
    monkeypatch.setattr(segment_store, "TAIL_READ_BYTES", 256)
    yield


class CountingStore(FaultInjectingStore):
    """Counts GETs by (object, range); holds the GETs of `gated` ranges until `gate_at` of
    them are in flight at once (or fails after GATE_DEADLINE), which only concurrent
    requests can reach."""

    def __init__(self, inner: Any) -> None:
        super().__init__(inner)
        self.gets: list[tuple[str, tuple[int, int] | None]] = []
        self.gated: set[tuple[str, tuple[int, int]]] = set()
        self.gate_at = 0
        self.in_flight = 0
        self.most_in_flight = 0
        self._open = asyncio.Event()
        self.held_manifest = ""  # a GET of this object waits until some other GET has started
        self._other_started = asyncio.Event()

    async def get(
        self, name: str, *, byte_range: tuple[int, int] | None = None, if_none_match: str | None = None
    ) -> Blob | None:
        self.gets.append((name, byte_range))
        if self.held_manifest and name != self.held_manifest:
            self._other_started.set()
        elif self.held_manifest:
            try:
                await asyncio.wait_for(self._other_started.wait(), GATE_DEADLINE)
            except asyncio.TimeoutError:
                raise AssertionError("nothing else was read while the manifest was checked") from None
        if byte_range is not None and (name, byte_range) in self.gated:
            self.in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self.in_flight)
            if self.in_flight >= self.gate_at:
                self._open.set()
            try:
                await asyncio.wait_for(self._open.wait(), GATE_DEADLINE)
            except asyncio.TimeoutError:  # not a transient fault: no retry may hide it
                raise AssertionError(f"only {self.most_in_flight} of {self.gate_at} GETs in flight at once") from None
            finally:
                self.in_flight -= 1
        return await super().get(name, byte_range=byte_range, if_none_match=if_none_match)


def _wrap(made: list[CountingStore]) -> Any:
    def wrap(inner: Any) -> CountingStore:
        store = CountingStore(inner)
        made.append(store)
        return store

    return wrap


async def test_answers_equal_get_at_every_version(target: Target, tiny_blocks: None) -> None:
    """Keys across commit segments and sorted runs, hot keys whose versions span blocks,
    tombstones, absent keys and repeats: at the latest version and every older one,
    through a fresh (cold) store and a warm one."""
    options = kvstore.StoreOptions(
        auto_compact=False, history_versions=100, compaction_fanout=4, target_segment_bytes=2048
    )
    rng = random.Random(19)
    keys = [b"k%03d" % i for i in range(120)]
    versions: list[int] = []
    async with target.open(options=options, create=True) as db:
        await db.bulk_load((k, rng.randbytes(40)) for k in keys)
        versions.append(db.version)
        for round_no in range(30):
            async with db.transaction() as tx:
                tx.put(b"hot", rng.randbytes(rng.randint(60, 200)))  # a hot key over many blocks
                for k in rng.sample(keys, 5):
                    tx.put(k, rng.randbytes(30))
                if round_no % 4 == 3:
                    tx.delete(rng.choice(keys))
                    tx.delete(b"hot")
            versions.append(db.version)
            if round_no in (10, 22):
                await db.compact(full=True)  # sorted runs of several segments
            elif round_no % 5 == 4 and round_no < 20:
                await db.compact()  # a level-1 run; the last rounds stay commit segments
        refs = engine_of(db).manifest.segments
        assert any(r.is_run for r in refs) and len(refs) > 4
    asked = [b"hot", *rng.sample(keys, 40), b"absent", b"k000", b"hot", b"zzz", b"k119"]
    for fresh in (True, False):
        async with target.open(options=options) as db:
            for version in [None, *versions[::-1]]:
                snap = await db.snapshot(version=version)
                want = [await snap.get(k) for k in asked]
                if fresh and version is None:
                    # answered cold: the snapshot's gets above filled the cache, so use another store
                    async with target.open(options=options) as cold:
                        assert await cold.get_many(asked) == want
                assert await snap.get_many(asked) == want, version
                assert await snap.get_many(asked, default=b"?") == [b"?" if w is None else w for w in want]
                assert None in want and any(w is not None for w in want)
            assert await db.get_many(asked) == [await db.get(k) for k in asked]


async def test_a_cold_batch_costs_one_get_per_block_all_in_flight_at_once(
    durable_target: Target, tiny_blocks: None, ranged_reads: None
) -> None:
    """One manifest check for the batch, with the index reads under way meanwhile (it is
    held until another GET starts), then one GET per distinct block the keys fall in
    (keys sharing a block share it), never a GET twice, and the block GETs all in flight
    together: each is held until all K are, which reads one after another never reach
    (they would fail at the deadline instead)."""
    options = kvstore.StoreOptions(auto_compact=False, inline_segment_bytes=0)
    keys = [b"key%05d" % i for i in range(2000)]
    async with durable_target.open(options=options, create=True) as db:
        await db.bulk_load((k, b"v" * 40 + k) for k in keys)
        (ref,) = engine_of(db).manifest.segments
        blob = await engine_of(db).objects.get(engine_of(db).layout.segment(ref.id))
        assert blob is not None
        name = engine_of(db).layout.segment(ref.id)
        manifest_name = engine_of(db).layout.manifest
    rows = whole_index(blob.data)
    assert len(rows.offsets) > 100
    # K blocks spread over the segment (and its partitions); two keys in each, and a repeat
    blocks = list(range(3, len(rows.offsets), len(rows.offsets) // 12))[:12]
    asked = [rows.first_keys[b] for b in blocks] + [rows.last_keys[b] for b in blocks] + [rows.first_keys[blocks[0]]]
    made: list[CountingStore] = []
    async with durable_target.open(options=options, wrap_object_store=_wrap(made)) as db:
        (counter,) = made
        counter.gated = {(name, rows.span(b)) for b in blocks}
        counter.gate_at = len(blocks)
        counter.gets.clear()  # opening read the manifest
        counter.held_manifest = manifest_name  # the index reads start while it is checked
        values = await db.get_many(asked)
        assert values == [b"v" * 40 + k for k in asked]
        block_gets = [g for g in counter.gets if g[0] == name and g[1] in {rows.span(b) for b in blocks}]
        assert sorted(block_gets) == sorted((name, rows.span(b)) for b in blocks)  # one each
        assert counter.most_in_flight == len(blocks)
        assert [g for g in counter.gets if g[0] == manifest_name] == [(manifest_name, None)]
        assert len(set(counter.gets)) == len(counter.gets)  # no object or range fetched twice
        assert all(g[0] in (name, manifest_name) for g in counter.gets)
        # Warm: the same batch is answered from the cache, after one manifest check.
        counter.gets.clear()
        assert await db.get_many(asked) == values
        assert counter.gets == [(manifest_name, None)]


async def test_a_transaction_sees_its_writes_and_reads_join_its_read_set(durable_target: Target) -> None:
    """Read-your-writes, and a conflict when another store (its own engine and manifest
    view) commits to one of the keys read; a commit elsewhere does not conflict."""
    async with durable_target.open(create=True) as db, durable_target.open() as other:
        for k in (b"a", b"b", b"c", b"d"):
            await db.put(k, k.upper())
        tx = db.transaction()
        tx.put(b"a", b"mine")
        tx.delete(b"b")
        assert await tx.get_many([b"a", b"b", b"c", b"x", b"a"], default=0) == [b"mine", 0, b"C", 0, b"mine"]
        await other.put(b"zz", b"elsewhere")  # not read: no conflict
        tx.put(b"e", b"E")
        assert await tx.commit() is not None

        tx = db.transaction()
        assert await tx.get_many([b"c", b"d"]) == [b"C", b"D"]
        await other.put(b"d", b"changed")  # a key it read
        tx.put(b"e", b"E2")
        with pytest.raises(kvstore.ConflictError):
            await tx.commit()
        assert await db.get(b"e") == b"E"

        tx = db.transaction()
        assert await tx.get_many([b"x"]) == [None]
        await other.put(b"x", b"born")  # an absent key read is in the read set too
        tx.put(b"e", b"E3")
        with pytest.raises(kvstore.ConflictError):
            await tx.commit()


async def test_keys_are_checked_as_get_checks_them(tmp_path: Any) -> None:
    async with kvstore.open(f"file://{tmp_path / 's'}", create=True) as db:
        await db.put("k", b"v")
        assert await db.get_many([]) == []
        assert await db.get_many(("k", b"k", bytearray(b"k"))) == [b"v", b"v", b"v"]
        assert await db.get_many(k for k in ["k", "nope"]) == [b"v", None]
        for bad in ([b""], [1], ["x" * 5000]):
            with pytest.raises(kvstore.InvalidKeyError) as raised:
                await db.get(bad[0])  # type: ignore[arg-type]
            with pytest.raises(kvstore.InvalidKeyError, match=str(raised.value)[:20]):
                await db.get_many(bad)  # type: ignore[arg-type]
        for one_key in ("k", b"k"):
            with pytest.raises(kvstore.InvalidKeyError, match=r"a list of keys.*pass \[key\]"):
                await db.get_many(one_key)
        with pytest.raises(kvstore.InvalidKeyError, match="a list of keys, not a int"):
            await db.get_many(3)  # type: ignore[arg-type]
        async with db.transaction() as tx:
            with pytest.raises(kvstore.InvalidKeyError):
                await tx.get_many([b"k", b""])
            assert tx.read_version is None  # refused before reading anything


def test_the_blocking_face(tmp_path: Any) -> None:
    with kvstore.open_sync(f"file://{tmp_path / 's'}", create=True, values="msgpack") as db:
        db.put("a", {"n": 1})
        version = db.put("b", [2])
        db.delete("a")
        assert db.get_many(["a", "b", "c"], default="-") == ["-", [2], "-"]
        assert db.snapshot(version=version).get_many(["a", "b"]) == [{"n": 1}, [2]]
        with db.transaction() as tx:
            tx.put("c", 3)
            assert tx.get_many(["c", "b", "a"]) == [3, [2], None]
