"""Key-range partitions at the face: the map, routing of the whole API, splits online.

Cross-partition WRITE transactions need the two-phase commit (`kvstore._two_phase`):
their tests are in tests/test_partitions_cross.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from pathlib import Path
from typing import Any

import pytest
from targets import Target, engine_of, engines_of, gc_later, make_orphans

import kvstore
from kvstore._partition_map import PartitionMap, decode_map, encode_map

SPLIT = [b"g", b"n", b"t"]


def _keys(n: int) -> list[bytes]:
    rng = random.Random(n)
    return sorted({bytes(rng.choice(b"abcdefghijklmnopqrstuvwxyz") for _ in range(3)) for _ in range(n)})


# ---------------------------------------------------------------------- the map format


def test_the_map_routes_keys_and_ranges_and_round_trips() -> None:
    pmap = PartitionMap.initial("id", [b"n", b"g"], ["a", "b", "c"])
    assert [(p.pid, p.start, p.end) for p in pmap.partitions] == [
        ("a", b"", b"g"),
        ("b", b"g", b"n"),
        ("c", b"n", None),
    ]
    assert [pmap.partition_for(k).pid for k in (b"", b"f", b"g", b"m\xff", b"n", b"zz")] == [
        "a",
        "a",
        "b",
        "b",
        "c",
        "c",
    ]
    assert [p.pid for p in pmap.overlapping(b"f", b"g")] == ["a"]
    assert [p.pid for p in pmap.overlapping(b"f", b"g\x00")] == ["a", "b"]
    assert [p.pid for p in pmap.overlapping(None, None)] == ["a", "b", "c"]
    middle = pmap.partitions[1]
    assert [middle.clip(*r) for r in ((None, None), (b"h", b"z"), (b"a", b"i"), (b"", None))] == [
        (b"g", b"n"),
        (b"h", b"n"),
        (b"g", b"i"),
        (b"g", b"n"),
    ]
    assert pmap.partitions[0].clip(None, b"c") == (None, b"c")  # the first partition keeps "no lower bound"
    split = pmap.split("b", b"k", "l", "r")
    assert split.version == 2 and split.retired == {"b": ("l", "r")}
    assert split.boundaries == [b"g", b"k", b"n"]
    assert decode_map(encode_map(split), "x") == split
    with pytest.raises(ValueError):
        split.split("l", b"g", "x", "y")  # a boundary already: nothing strictly inside to split
    with pytest.raises(kvstore.CorruptionError):
        data = bytearray(encode_map(split))
        data[-12] ^= 1
        decode_map(bytes(data), "x")
    with pytest.raises(kvstore.ValidationError):
        PartitionMap.initial("id", [b"a", b"a"], ["1", "2", "3"])


# ---------------------------------------------------------------------- opening


async def test_split_keys_make_one_partition_per_range(target: Target) -> None:
    async with target.open(split_keys=SPLIT) as db:
        parts = await db.partitions()
        assert [(p.start, p.end) for p in parts] == [(b"", b"g"), (b"g", b"n"), (b"n", b"t"), (b"t", None)]
        assert all(p.version == 0 for p in parts)
        await db.put(b"h", b"1")
        await db.put(b"u", b"2")
        await db.put(b"v", b"3")
        assert [p.version for p in await db.partitions()] == [0, 1, 0, 2]
        assert (await db.describe()).partitions == 4
    async with target.open() as db:  # reopened without split_keys: the map is read
        assert [p.version for p in await db.partitions()] == [0, 1, 0, 2]
        assert await db.get(b"u") == b"2"
    async with target.open(split_keys=[b"n"]) as db:  # a subset of the boundaries is fine
        assert len(await db.partitions()) == 4


async def test_split_keys_that_are_not_boundaries_are_refused(target: Target) -> None:
    async with target.open(split_keys=[b"m"]):
        pass
    with pytest.raises(kvstore.ValidationError, match="not all boundaries"):
        await target.open(split_keys=[b"m", b"q"])
    with pytest.raises(kvstore.ValidationError, match="repeat"):
        await target.open(split_keys=[b"q", b"q"])


async def test_an_unsplit_store_opens_unchanged_and_refuses_split_keys(tmp_path: Path) -> None:
    url = f"file://{tmp_path / 's'}"
    async with kvstore.open(url) as db:
        await db.put(b"a", b"1")
        assert [(p.id, p.start, p.end, p.version) for p in await db.partitions()] == [("", b"", None, 1)]
    assert not (tmp_path / "s" / "partitions").exists()  # no map written for a store never split
    with pytest.raises(kvstore.ValidationError, match="not all boundaries"):
        await kvstore.open(url, split_keys=[b"m"])
    assert not (tmp_path / "s" / "partitions").exists()


# ---------------------------------------------------------------------- the API across partitions


async def test_reads_and_writes_route_across_partitions_like_one_store(target: Target) -> None:
    keys = _keys(60)
    model = {k: k * 2 for k in keys}
    async with target.open(split_keys=SPLIT) as db:
        await asyncio.gather(*(db.put(k, v) for k, v in model.items()))
        for k in keys[::7]:
            await db.delete(k)
            del model[k]
        assert await db.get(keys[1]) == model[keys[1]]
        probe = [keys[3], b"zzzz", keys[-2], keys[3], keys[20]]
        assert await db.get_many(probe, default=b"-") == [model.get(k, b"-") for k in probe]
        ordered = sorted(model.items())
        assert [kv async for kv in db.scan()] == ordered
        assert [kv async for kv in db.scan(reverse=True)] == ordered[::-1]
        assert [kv async for kv in db.scan(start=b"f", end=b"p", limit=5)] == [
            kv for kv in ordered if b"f" <= kv[0] < b"p"
        ][:5]
        assert [kv async for kv in db.scan(start=b"f", end=b"p", reverse=True, limit=4)] == [
            kv for kv in ordered if b"f" <= kv[0] < b"p"
        ][::-1][:4]
        assert [kv async for kv in db.scan(limit=0)] == []
        snap = await db.snapshot()
        assert [kv async for kv in snap.scan(start=b"h")] == [kv for kv in ordered if kv[0] >= b"h"]
        assert await snap.get_many(probe) == [model.get(k) for k in probe]
        async with db.transaction() as tx:  # a read-only transaction over every partition
            assert [kv async for kv in tx.scan()] == ordered


async def test_a_single_partition_transaction_commits_there_with_one_cas(durable_target: Target) -> None:
    async with durable_target.open(split_keys=SPLIT, values="msgpack") as db:
        await db.put(b"h1", 1)
        before = await db.partitions()
        commits = db.statistics()["commits"]
        async with db.transaction() as tx:
            tx.put(b"h2", await tx.get(b"h1") + 1)
            tx.put(b"i", 5)
        assert tx.committed_version == before[1].version + 1
        assert db.statistics()["commits"] == commits + 1
        after = await db.partitions()
        assert [p.version for p in after] == [
            before[0].version,
            before[1].version + 1,
            *[p.version for p in before[2:]],
        ]
        assert [c.partition for c in await db.history(limit=1)] == [before[1].id]


async def test_a_read_only_transaction_across_partitions_validates_before_returning(durable_target: Target) -> None:
    async with durable_target.open(split_keys=SPLIT, values="msgpack") as db, durable_target.open() as other:
        await db.put(b"a", 1)
        await db.put(b"z", 1)
        async with db.transaction() as tx:  # nothing changed: returns None
            assert (await tx.get(b"a"), await tx.get(b"z")) == (1, 1)
        tx = db.transaction()
        assert await tx.get(b"a") == 1
        assert await tx.get(b"z") == 1
        await other.put(b"a", 2)  # after tx read it: tx's view of both partitions is no one instant
        with pytest.raises(kvstore.ConflictError):
            await tx.commit()
        tx = db.transaction()
        assert [k async for k, _ in tx.scan(start=b"s")] == [b"z"]
        assert await tx.get(b"b") is None
        await other.put(b"zz", 9)  # a new key inside the scanned range
        with pytest.raises(kvstore.ConflictError):
            await tx.commit()


class _SlowRequests:
    """Delays the requests of GETs of one object by 20 ms: the reader gets a later state
    of it than of the others it asked for at the same time, as over a slow connection."""

    def __init__(self, inner: Any, suffix: str) -> None:
        self._inner = inner
        self._suffix = suffix

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def get(self, name: str, **kwargs: Any) -> Any:
        if name.endswith(self._suffix):
            await asyncio.sleep(0.02)
        return await self._inner.get(name, **kwargs)


async def test_a_snapshot_across_partitions_keeps_real_time_order(durable_target: Target) -> None:
    """A writer puts a=i, then (once acknowledged) z=i. A snapshot that sees z=i must
    see a>=i: its partitions' views are one instant, not each its own, even when z's
    manifest is read later than a's. (The writer pauses up to 100 ms between pairs, as writers
    do: a snapshot needs a round of reads in which no partition committed,
    `Router.consistent_views`.)"""
    async with durable_target.open(split_keys=[b"m"], values="msgpack") as db:
        await db.put(b"a", 0)
        await db.put(b"z", 0)
        stop = asyncio.Event()

        async def writer() -> int:
            i = 0
            rng = random.Random(3)
            while not stop.is_set():
                i += 1
                await db.put(b"a", i)
                await db.put(b"z", i)
                await asyncio.sleep(rng.uniform(0, 0.1))
            return i

        running = asyncio.ensure_future(writer())
        seen = set()
        slow = lambda inner: _SlowRequests(inner, "p/0001/manifest")  # noqa: E731
        try:
            async with durable_target.open(values="msgpack", wrap_object_store=slow) as reader:
                for _ in range(40):
                    snap = await reader.snapshot()
                    a, z = await snap.get(b"a"), await snap.get(b"z")
                    assert a >= z, f"snapshot saw z={z} but a={a}"
                    seen.add(z)
        finally:
            stop.set()
            await running
        assert len(seen) > 3  # the snapshots really moved with the writer


async def test_bulk_load_history_watch_and_maintenance_span_partitions(durable_target: Target) -> None:
    async with durable_target.open(split_keys=SPLIT) as db:
        pairs = [(k, k) for k in _keys(200)]
        progress: list[int] = []
        await db.bulk_load(reversed(pairs), progress=progress.append)
        assert progress[-1] == len(pairs)
        assert [kv async for kv in db.scan()] == pairs
        assert {c.partition for c in await db.history()} == {p.id for p in await db.partitions()}
        changes: list[kvstore.Change] = []

        started = asyncio.Event()

        async def watch() -> None:
            # Until both writes are reported (the load's resolves, after it returned, may be
            # reported too: a cross-partition commit is reported when it is resolved).
            async for change in db.watch(start=b"f", end=b"u", interval=0.01):
                changes.append(change)
                if b"m-marker" in (change.keys or []):
                    started.set()
                if {b"h", b"p"} <= {k for c in changes for k in c.keys or []}:
                    return

        watching = asyncio.ensure_future(watch())
        for _ in range(400):  # until the watcher has its starting point: it reports a marker
            await db.put(b"m-marker", b"x")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(started.wait(), 0.05)
                break
        assert started.is_set()
        changes.clear()
        await db.put(b"a", b"outside")
        await db.put(b"h", b"1")
        await db.put(b"p", b"2")
        await asyncio.wait_for(watching, 10)
        await db.delete(b"m-marker")
        assert sorted(k for c in changes for k in c.keys or [] if k in (b"h", b"p")) == [b"h", b"p"]
        # Only keys in the watched range (not b"a"); a later marker put, or the load's resolves
        # reported after it returned, may be there too.
        assert all(b"f" <= k < b"u" for c in changes for k in c.keys or [])
        assert len({c.partition for c in changes if {b"h", b"p"} & set(c.keys or [])}) == 2
        await db.compact(full=True)
        report = await db.verify()
        assert report.ok and report.objects_checked >= 4
        assert (await db.describe()).entries >= len(pairs)
        await gc_later(db)
        assert [kv async for kv in db.scan()] == sorted([*pairs, (b"a", b"outside"), (b"h", b"1"), (b"p", b"2")])


async def test_a_tag_retains_every_partition_at_one_point(durable_target: Target) -> None:
    async with durable_target.open(split_keys=SPLIT, values="msgpack") as db:
        for k in (b"a", b"h", b"p", b"z"):
            await db.put(k, 1)
        tag = await db.tag("one")
        for k in (b"a", b"h", b"p", b"z"):
            await db.put(k, 2)
        await db.compact(full=True)
        await gc_later(db)
        snap = await db.snapshot(tag="one")
        assert [v async for _, v in snap.scan()] == [1, 1, 1, 1]
        assert [t.name for t in await db.tags()] == ["one"]
        assert tag.version == 4
        with pytest.raises(kvstore.TagExistsError):
            await db.tag("one")
        with pytest.raises(kvstore.ValidationError):
            await db.snapshot(version=3)
        await db.delete_tag("one")
        assert await db.tags() == []
        with pytest.raises(kvstore.TagNotFoundError):
            await db.snapshot(tag="one")


# ---------------------------------------------------------------------- splits


async def test_split_moves_keys_and_a_stale_handle_is_redirected(durable_target: Target) -> None:
    async with durable_target.open(values="msgpack") as stale, durable_target.open(values="msgpack") as db:
        for k in (b"a", b"k", b"x"):
            await db.put(k, 1)
        assert await stale.get(b"x") == 1  # `stale` holds the one-partition map from here on
        parts = await db.split(b"m")
        assert [(p.start, p.end) for p in parts] == [(b"", b"m"), (b"m", None)]
        assert await db.split(b"m") == parts  # already a boundary: nothing changes
        await stale.put(b"x", 2)  # a blind write with a stale map: redirected, lands in the successor
        assert await db.get(b"x") == 2
        assert [p.version for p in await db.partitions()] == [1, 2]  # the copy, then stale's write
        tx = stale.transaction()
        assert await tx.get(b"a") == 1
        await db.split(b"c")  # the partition tx read is retired under it
        tx.put(b"a", 5)
        with pytest.raises(kvstore.ConflictError):
            await tx.commit()
        assert await stale.transact(lambda tx: tx.get(b"k")) == 1  # transact retries on the new map
        assert [kv async for kv in stale.scan()] == [(b"a", 1), (b"k", 1), (b"x", 2)]
        assert len(await stale.partitions()) == 3


async def test_a_handle_of_a_store_never_split_reads_through_a_split_made_elsewhere(durable_target: Target) -> None:
    """A handle that read the store while it had one partition must not go on reading the
    sealed root manifest after another process split it: its reads follow the split."""
    async with durable_target.open(values="msgpack") as stale, durable_target.open(values="msgpack") as db:
        await db.put(b"a", 1)
        await db.put(b"x", 1)
        assert await stale.get(b"x") == 1
        await db.split(b"m")
        await db.put(b"x", 2)
        await db.put(b"a", 2)
        assert await stale.get(b"x") == 2
        assert await stale.get_many([b"a", b"x"]) == [2, 2]
        assert [kv async for kv in stale.scan()] == [(b"a", 2), (b"x", 2)]
        assert [v async for _, v in (await stale.snapshot()).scan()] == [2, 2]


async def test_watch_follows_a_split_without_missing_the_retired_partitions_last_commits(tmp_path: Path) -> None:
    async with kvstore.open(f"file://{tmp_path / 's'}", split_keys=[b"t"]) as db:
        seen: list[tuple[str | None, bytes]] = []
        polled = asyncio.Event()

        async def watch() -> None:
            async for change in db.watch(interval=1.0):
                seen.extend((change.partition, k) for k in change.keys or [] if k != b"y")
                polled.set()
                if len(seen) == 3:
                    return

        watching = asyncio.ensure_future(watch())
        for i in range(100):  # until the watcher reports one: it then sleeps for a second
            await db.put(b"y", b"%d" % i)
            if await _within(polled.wait(), 0.2):
                break
        await db.put(b"k", b"1")  # in the partition about to be retired, before the next poll
        await db.split(b"m")
        await db.put(b"k", b"2")
        await db.put(b"a", b"3")
        await asyncio.wait_for(watching, 10)
        left = (await db.partitions())[0].id
        assert sorted(map(str, seen)) == sorted(map(str, [(left, b"a"), ("0000", b"k"), (left, b"k")]))


async def _within(awaitable: Any, seconds: float) -> bool:
    try:
        await asyncio.wait_for(awaitable, seconds)
    except TimeoutError:
        return False
    return True


async def test_a_split_whose_splitter_died_after_sealing_is_finished_by_the_next_writer(durable_target: Target) -> None:
    async with durable_target.open(split_keys=[b"m"]) as db:
        await db.put(b"a", b"1")
        await db.put(b"f", b"2")
        # The splitter seals the partition, naming its successors, and dies.
        await engine_of(db).seal({"at": b"d", "into": ["left0000", "right0000"]})
    async with durable_target.open() as db:
        assert len(await db.partitions()) == 2  # the map does not show the split yet
        await db.put(b"e", b"3")  # meets the seal, finishes the split, commits in the successor
        parts = await db.partitions()
        assert [(p.id, p.start) for p in parts] == [("left0000", b""), ("right0000", b"d"), ("0001", b"m")]
        assert [kv async for kv in db.scan()] == [(b"a", b"1"), (b"e", b"3"), (b"f", b"2")]


async def test_gc_after_splits_collects_each_partition_but_never_a_retired_one(tmp_path: Path) -> None:
    """The GC rule of splits: a partition's GC deletes only under its own prefix, and a
    retired partition is never collected (its successors hold copies, not references)."""
    url = f"file://{tmp_path / 's'}"
    async with kvstore.open(url, options=kvstore.StoreOptions(inline_segment_bytes=0, auto_compact=False)) as db:
        for i in range(20):
            await db.put(b"k%02d" % i, b"v%d" % i)
        await db.split(b"k10")
        retired = {p.name for p in (tmp_path / "s" / "segments").iterdir()}
        assert len(retired) == 20
        for i in range(0, 20, 4):
            await db.put(b"k%02d" % i, b"w%d" % i)
        orphans = await make_orphans(engines_of(db)[1], 3)  # as a crashed writer of a successor leaves them
        report = await gc_later(db)
        assert set(report.deleted) == orphans
        assert {p.name for p in (tmp_path / "s" / "segments").iterdir()} == retired
        expected = [(b"k%02d" % i, b"%s%d" % (b"w" if i % 4 == 0 else b"v", i)) for i in range(20)]
        assert [kv async for kv in db.scan()] == expected
        assert (await db.verify()).ok


def test_the_blocking_face_creates_splits_and_lists_partitions(tmp_path: Path) -> None:
    with kvstore.open_sync(f"file://{tmp_path / 's'}", split_keys=["m"]) as db:
        db.put("a", b"1")
        db.put("x", b"2")
        parts = db.split("d")
        assert [p.start for p in parts] == [b"", b"d", b"m"]
        assert [p.start for p in db.partitions()] == [b"", b"d", b"m"]
        assert dict(db.scan()) == {b"a": b"1", b"x": b"2"}
