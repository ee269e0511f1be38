"""Splits and merges keep every key's state exactly; merges run online (issue 18).

A split or a merge copies each key as stored (`SnapshotView.stored`): a put's expiry,
a reference to a value stored out of line (copied server-side, never re-uploaded),
atomic operands. Merges follow the protocol of splits: seal, copy, CAS the map.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import random
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import pytest
import workers
from targets import Target, engines_of, gc_later
from test_ttl import Clock

import kvstore
from kvstore import _ttl as ttl
from kvstore._manifest import MOVED_SETTING
from kvstore.testing.faults import FaultInjectingStore
from kvstore.testing.partitions import request

HOUR = 3600.0
LARGE = kvstore.StoreOptions(large_value_bytes=1024, auto_compact=False)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Iterator[Clock]:
    """`kvstore._ttl.clock` (readers judge expiry by it), moved on by hand."""
    c = Clock(1_800_000_000.0)
    monkeypatch.setattr(ttl, "clock", c)
    yield c


class CountingStore(FaultInjectingStore):
    """Counts the requests that send or fetch value objects' bytes, and server-side copies."""

    def __init__(self, inner: Any) -> None:
        super().__init__(inner)
        self.calls: Counter[str] = Counter()

    def _note(self, operation: str, name: str) -> None:
        if "/values/" in f"/{name}":
            self.calls[operation] += 1

    async def put_if_absent(self, name: str, data: bytes) -> str:
        self._note("put", name)
        return await super().put_if_absent(name, data)

    async def start_multipart(self, name: str) -> str:
        self._note("put", name)
        return await super().start_multipart(name)

    async def get(self, name: str, **kwargs: Any) -> Any:
        self._note("get", name)
        return await super().get(name, **kwargs)

    async def copy_if_match(self, source: str, destination: str, etag: str) -> str:
        self._note("copy", destination)
        return await super().copy_if_match(source, destination, etag)


def counting() -> tuple[list[CountingStore], Any]:
    made: list[CountingStore] = []

    def wrap(inner: Any) -> CountingStore:
        made.append(CountingStore(inner))
        return made[-1]

    return made, wrap


async def retired_manifests_end_sealed(db: kvstore.Store) -> list[int]:
    """For every partition the store's handle saw retired: its latest version, checked to be
    the seal (nothing committed there after it)."""
    versions = []
    for engine in db._router._retired:
        manifest = await engine.refresh()
        assert manifest.settings.get(MOVED_SETTING) is not None
        assert manifest.log[-1].key_count == 0  # the seal, a settings commit, is the last
        versions.append(manifest.version)
    return versions


async def value_orphans(db: kvstore.Store) -> set[str]:
    """A value object no segment references in each live partition."""
    names = {e.layout.value(f"000000000000-orphan{i:05d}") for i, e in enumerate(engines_of(db))}
    for name in names:
        await engines_of(db)[0].objects.put_if_absent(name, b"lost")
    return names


# ---------------------------------------------------------------------- split fidelity


async def test_a_split_keeps_every_puts_expiry_on_both_sides(durable_target: Target, clock: Clock) -> None:
    async with durable_target.open(options=kvstore.StoreOptions(auto_compact=False)) as db:
        await db.put(b"a-short", b"1", ttl=HOUR)
        await db.put(b"x-short", b"2", ttl=HOUR)
        await db.put(b"a-long", b"3", ttl=3 * HOUR)
        await db.put(b"x-long", b"4", ttl=3 * HOUR)
        await db.put(b"a-gone", b"5", ttl=1)
        await db.put(b"x-keep", b"6")
        clock.now += 2  # a-gone expired before the split: it may be dropped, never revived
        await db.split(b"m")
        assert len(await db.partitions()) == 2
        expected = {b"a-short": b"1", b"x-short": b"2", b"a-long": b"3", b"x-long": b"4", b"x-keep": b"6"}
        assert dict([kv async for kv in db.scan()]) == expected
        clock.now += HOUR
        assert await db.get_many([b"a-short", b"x-short", b"a-long", b"x-long"]) == [None, None, b"3", b"4"]
        assert [k async for k, _ in db.scan()] == [b"a-long", b"x-keep", b"x-long"]
        clock.now += 2 * HOUR
        assert [k async for k, _ in db.scan()] == [b"x-keep"]
        assert await db.get(b"a-gone") is None


async def test_a_merge_keeps_expiry_and_atomic_operands(durable_target: Target, clock: Clock) -> None:
    async with durable_target.open(split_keys=[b"m"], values="msgpack") as db:
        await db.put(b"a", "left", ttl=HOUR)
        await db.put(b"x", "right", ttl=HOUR)
        await db.put(b"n", 5)
        await db.add(b"n", 2)
        await db.put(b"c", 10, ttl=HOUR)  # operands on an expiring put: their value changes at expiry
        await db.add(b"c", 1)
        parts = await db.merge_partitions(b"m")
        assert [(p.start, p.end) for p in parts] == [(b"", None)]
        assert dict([kv async for kv in db.scan()]) == {b"a": "left", b"c": 11, b"n": 7, b"x": "right"}
        clock.now += HOUR
        assert dict([kv async for kv in db.scan()]) == {b"c": 1, b"n": 7}
        assert await db.get(b"c") == 1


async def test_a_split_copies_large_values_server_side_and_gc_keeps_them(durable_target: Target) -> None:
    made, wrap = counting()
    big = {k: random.Random(k).randbytes(5000) for k in (b"a", b"f", b"x", b"z")}
    async with durable_target.open(split_keys=[b"t"], options=LARGE, wrap_object_store=wrap) as db:
        for k, v in big.items():
            await db.put(k, v)
        await db.put(b"y", b"small")
        await db.tag("before")
        calls = made[0].calls
        calls.clear()
        await db.split(b"m")
        assert calls["put"] == 0 and calls["get"] == 0  # no value's bytes went up or down
        assert calls["copy"] == 2  # a and f, the split partition's values: copied server-side
        await db.put(b"f", b"f" * 3000)
        del big[b"f"]
        orphans = await value_orphans(db)  # as writers that died before their commit leave them
        report = await gc_later(db)
        assert set(report.deleted) == orphans  # GC collects the new partitions' values, and only garbage
        assert await db.get_many(list(big)) == list(big.values())
        assert dict([kv async for kv in db.scan()]) == {**big, b"f": b"f" * 3000, b"y": b"small"}
        before = await db.snapshot(tag="before")  # the retired partition: never collected
        assert await before.get(b"f") == random.Random(b"f").randbytes(5000)
        assert (await db.verify()).ok


async def test_a_merge_copies_large_values_server_side_and_gc_keeps_them(durable_target: Target) -> None:
    made, wrap = counting()
    big = {k: random.Random(k).randbytes(5000) for k in (b"a", b"x")}
    async with durable_target.open(split_keys=[b"m"], options=LARGE, wrap_object_store=wrap) as db:
        for k, v in big.items():
            await db.put(k, v)
        await db.tag("before")
        made[0].calls.clear()
        await db.merge_partitions(b"m")
        assert made[0].calls == Counter({"copy": 2})
        orphans = await value_orphans(db)
        assert set((await gc_later(db)).deleted) == orphans
        assert await db.get_many(list(big)) == list(big.values())
        before = await db.snapshot(tag="before")  # reads the retired partitions' own value objects
        assert await before.get_many(list(big)) == list(big.values())
        assert (await db.verify()).ok


# ---------------------------------------------------------------------- merges


async def test_merge_removes_a_boundary_and_a_stale_handle_is_redirected(durable_target: Target) -> None:
    async with (
        durable_target.open(split_keys=[b"g", b"n", b"t"], values="msgpack") as stale,
        durable_target.open(values="msgpack") as db,
    ):
        for k in (b"a", b"h", b"p", b"x"):
            await db.put(k, 1)
        assert await stale.get_many([b"h", b"p"]) == [1, 1]  # `stale` holds the 4-partition map
        await db.tag("before")
        parts = await db.merge_partitions(b"n")
        assert [(p.start, p.end) for p in parts] == [(b"", b"g"), (b"g", b"t"), (b"t", None)]
        with pytest.raises(kvstore.ValidationError, match=r"not a partition boundary .*\[b'g', b't'\]"):
            await db.merge_partitions(b"n")
        await stale.put(b"p", 2)  # a blind write with a stale map: redirected to the merged partition
        assert await db.get(b"p") == 2
        tx = stale.transaction()
        assert await tx.get(b"x") == 1
        await db.merge_partitions(b"t")  # the partition tx read is retired under it
        tx.put(b"x", 5)
        with pytest.raises(kvstore.ConflictError):
            await tx.commit()
        assert await stale.transact(lambda tx: tx.get(b"h")) == 1  # transact retries on the new map
        assert [kv async for kv in stale.scan()] == [(b"a", 1), (b"h", 1), (b"p", 2), (b"x", 1)]
        assert [(p.start, p.end) for p in await stale.partitions()] == [(b"", b"g"), (b"g", None)]
        old = await db.snapshot(tag="before")
        assert [kv async for kv in old.scan()] == [(b"a", 1), (b"h", 1), (b"p", 1), (b"x", 1)]
        await db.merge_partitions(b"g")
        await db.split(b"k")  # a merged partition splits like any other
        assert [kv async for kv in db.scan()] == [(b"a", 1), (b"h", 1), (b"p", 2), (b"x", 1)]
        assert (await db.verify()).ok


async def test_a_merge_waits_for_an_intent_in_flight_and_keeps_its_writes(durable_target: Target) -> None:
    """A cross-partition transaction prepared in both partitions, decided "committed" while a
    merge of them waits: the merged partition holds its writes (a merge copying the prepared
    partitions at once would have lost them)."""
    async with durable_target.open(split_keys=[b"m"]) as db:
        await db.put(b"a", b"old")
        await db.put(b"x", b"old")
        left, right = engines_of(db)
        decisions = db._router.decisions()
        txn = left.new_txn_id()
        name = decisions.name(txn)
        await asyncio.gather(
            left.prepare(request(left, None, set(), {b"a": b"new"}, txn), name),
            right.prepare(request(right, None, set(), {b"x": b"new"}, txn), name),
        )
        merging = asyncio.ensure_future(db.merge_partitions(b"m"))
        done, _ = await asyncio.wait([merging], timeout=0.5)
        assert not done  # sealing waits while the partition holds an undecided intent
        assert await decisions.decide(name, "committed", txn, []) == "committed"
        parts = await asyncio.wait_for(merging, 30)
        assert len(parts) == 1
        assert await db.get_many([b"a", b"x"]) == [b"new", b"new"]


async def test_a_merge_whose_merger_died_is_finished_by_the_next_writer_or_a_retry(durable_target: Target) -> None:
    async with durable_target.open(split_keys=[b"g", b"n"]) as db:
        for k in (b"a", b"h", b"p"):
            await db.put(k, k)
        left, middle, right = db._router.all_engines()
        # A merger at "g" seals the left partition and dies; one at "n" seals both sides and dies.
        await left.seal({"merge_at": b"g", "into": "merged0000"})
        await middle.seal({"merge_at": b"n", "into": "merged0001"})
        await right.seal({"merged_into": "merged0001", "with": db._router.pmap.partitions[1].pid})
    async with durable_target.open() as db:
        assert len(await db.partitions()) == 3  # the map shows neither merge yet
        assert await db.get(b"p") == b"p"  # a reader meeting a seal finishes the merge it names
        await db.put(b"b", b"b")  # meets the first seal: finishes both merges (the one at "n" first)
        assert [(p.id, p.start) for p in await db.partitions()] == [("merged0000", b"")]
        assert [kv async for kv in db.scan()] == [(b"a", b"a"), (b"b", b"b"), (b"h", b"h"), (b"p", b"p")]
        with pytest.raises(kvstore.ValidationError):
            await db.merge_partitions(b"g")


async def test_a_merge_retried_after_its_merger_died_finishes_it(durable_target: Target) -> None:
    async with durable_target.open(split_keys=[b"m"]) as db:
        await db.put(b"a", b"1")
        await db.put(b"x", b"2")
        left, right = db._router.all_engines()
        await left.seal({"merge_at": b"m", "into": "merged0000"})
        await right.seal({"merged_into": "merged0000", "with": db._router.pmap.partitions[0].pid})
    async with durable_target.open() as db:
        assert [(p.id, p.start) for p in await db.merge_partitions(b"m")] == [("merged0000", b"")]
        assert [kv async for kv in db.scan()] == [(b"a", b"1"), (b"x", b"2")]


# boundaries the store is made with, the moves run while counters are incremented, the
# boundaries after them, and how many partitions the moves retire
MOVES = {
    "split": ([b"counter/3"], [("split", b"counter/1"), ("split", b"counter/5")], 2),
    "merge": ([b"counter/1", b"counter/3", b"counter/5"], [("merge", b"counter/3"), ("merge", b"counter/5")], 4),
}


@pytest.mark.parametrize("kind", sorted(MOVES))
async def test_moves_while_tasks_and_another_process_commit_lose_nothing(durable_target: Target, kind: str) -> None:
    """Counters incremented by tasks here and by a second process while two splits or two
    merges run: every acknowledged increment is there exactly once, and nothing was
    committed to a partition after its seal."""
    t = durable_target
    counters = 6
    split_keys, moves, retired = MOVES[kind]
    async with t.open(split_keys=split_keys, values="msgpack") as db:
        loop = asyncio.get_running_loop()
        acked = {f"counter/{c}": 0 for c in range(counters)}
        rng = random.Random(7)

        async def increment(tx: kvstore.Transaction, key: str) -> None:
            tx.put(key, await tx.get(key, 0) + 1)

        async def task() -> None:
            for _ in range(12):
                key = f"counter/{rng.randrange(counters)}"
                await db.transact(increment, key)
                acked[key] += 1
                incremented.set()

        incremented = asyncio.Event()

        async def move() -> None:
            await incremented.wait()  # some increments first, then the moves among them
            for how, key in moves:
                await (db.split(key) if how == "split" else db.merge_partitions(key))

        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
            other = loop.run_in_executor(pool, workers.count, t.url, t.kwargs, 1, 4, 12, counters)
            await asyncio.gather(*(task() for _ in range(8)), move())
            theirs = await other
        boundaries = sorted(
            {*split_keys, *(k for how, k in moves if how == "split")} - {k for how, k in moves if how == "merge"}
        )
        assert [p.start for p in await db.partitions()] == [b"", *boundaries]
        actual = {k.decode(): v async for k, v in db.scan(prefix=b"counter/")}
        expected = {k: acked[k] + theirs[k] for k in acked}
        assert actual == {k: v for k, v in expected.items() if v}
        assert len(await retired_manifests_end_sealed(db)) == retired


def test_the_blocking_face_and_an_unpartitioned_store_refuse_a_merge_with_the_boundaries(tmp_path: Any) -> None:
    with kvstore.open_sync(f"file://{tmp_path / 's'}") as db:
        db.put("a", b"1")
        with pytest.raises(kvstore.ValidationError, match=r"not a partition boundary .*\(its boundaries: \[\]\)"):
            db.merge_partitions("a")
        db.split("m")
        db.put("x", b"2")
        assert [p.start for p in db.merge_partitions("m")] == [b""]
        assert dict(db.scan()) == {b"a": b"1", b"x": b"2"}
