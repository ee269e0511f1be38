"""Atomic add / max / min (issue 19, item 4): blind writes recorded as operands, resolved
at read time and folded by compaction; they never conflict with one another. The
retention model at the end covers expiring puts (TTL, tests/test_ttl.py) too."""

from __future__ import annotations

import asyncio
import multiprocessing
import random
from collections.abc import AsyncIterator
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import pytest
import workers
from targets import Target, engine_of

import kvstore
from kvstore._compact import Retention
from kvstore._merge import visible
from kvstore._operands import ADD, INT64_MAX, INT64_MIN, MAX, MIN, Operands, encode_int
from kvstore._segment import Entry, Value
from kvstore._ttl import Expiring
from kvstore._value_refs import ValueRef

NO_COMPACT = kvstore.StoreOptions(auto_compact=False)


async def test_add_max_min_in_a_msgpack_store(target: Target) -> None:
    async with target.open(values="msgpack", create=True, options=NO_COMPACT) as db:
        await db.add("hits", 5)  # a missing key counts as 0
        await db.add("hits", -2)
        assert await db.get("hits") == 3
        await db.max("hits", 10)
        await db.max("hits", 4)  # smaller: no change
        assert await db.get("hits") == 10
        await db.min("hits", -7)
        assert await db.get("hits") == -7
        await db.max("high", 42)  # max and min of a missing key take the operand
        await db.min("low", 42)
        assert await db.get_many(["hits", "high", "low", "none"]) == [-7, 42, 42, None]
        assert [(k, v) async for k, v in db.scan()] == [(b"high", 42), (b"hits", -7), (b"low", 42)]
        assert [(k, v) async for k, v in db.scan(reverse=True)] == [(b"low", 42), (b"hits", -7), (b"high", 42)]


async def test_integers_are_8_bytes_little_endian_in_a_bytes_store(target: Target) -> None:
    async with target.open(create=True, options=NO_COMPACT) as db:
        await db.add(b"n", 1)
        await db.add(b"n", 255)
        assert await db.get(b"n") == (256).to_bytes(8, "little")
        await db.add(b"n", -257)
        assert await db.get(b"n") == b"\xff" * 8  # -1, two's complement
        await db.put(b"m", (40).to_bytes(8, "little", signed=True))
        await db.add(b"m", 2)
        assert await db.get(b"m") == (42).to_bytes(8, "little")


async def test_put_replaces_and_delete_starts_again_from_nothing(target: Target) -> None:
    async with target.open(values="msgpack", create=True, options=NO_COMPACT) as db:
        await db.add("k", 5)
        await db.put("k", 100)  # a put replaces the adds before it
        await db.add("k", 1)  # ... and the adds after it apply to it
        assert await db.get("k") == 101
        await db.delete("k")
        assert await db.get("k") is None
        await db.add("k", 3)  # after a delete: from 0
        assert await db.get("k") == 3
        await db.delete("k")
        await db.max("k", -9)  # after a delete: max takes its operand (not max(0, -9))
        assert await db.get("k") == -9


async def test_add_wraps_around_the_64_bit_range(target: Target) -> None:
    async with target.open(values="msgpack", create=True, options=NO_COMPACT) as db:
        await db.put("k", INT64_MAX)
        await db.add("k", 1)
        assert await db.get("k") == INT64_MIN
        await db.add("k", -1)
        assert await db.get("k") == INT64_MAX
        async with db.transaction() as tx:  # folded in one transaction, the same
            tx.add("j", INT64_MAX)
            tx.add("j", INT64_MAX)
            tx.add("j", 2)
        assert await db.get("j") == 0


@pytest.mark.parametrize("n", [2**63, -(2**63) - 1, True, 1.5, "1", None])
async def test_operands_outside_signed_64_bits_are_refused(n: Any) -> None:
    async with kvstore.open("memory://refused", values="msgpack", create=True) as db:
        for op in (db.add, db.max, db.min):
            with pytest.raises(kvstore.ValidationError, match="int"):
                await op("k", n)
        assert await db.get("k") is None and db.version == 0


async def test_an_operand_on_a_value_that_is_not_an_integer_fails_the_read(target: Target) -> None:
    async with target.open(values="msgpack", create=True, options=NO_COMPACT) as db:
        await db.put("name", "ada")
        await db.add("name", 1)  # blind: the write cannot know, so it is accepted
        with pytest.raises(kvstore.AtomicOperandError, match="not a msgpack int") as info:
            await db.get("name")
        assert info.value.key == b"name"
        with pytest.raises(kvstore.AtomicOperandError):
            [kv async for kv in db.scan()]
        await db.put("flag", True)  # a bool is not an int either
        await db.max("flag", 1)
        with pytest.raises(kvstore.AtomicOperandError):
            await db.get("flag")
        async with db.transaction() as tx:  # put and add in one transaction: the same rule
            tx.put("t", [1])
            tx.add("t", 1)
        with pytest.raises(kvstore.AtomicOperandError):
            await db.get("t")
        await db.put("name", 7)  # a put of an integer cures the key
        await db.add("name", 1)
        assert await db.get("name") == 8
        await db.compact(full=True)  # compaction keeps the (failing) state as it is
        with pytest.raises(kvstore.AtomicOperandError):
            await db.get("t")
        assert await db.get("name") == 8
    async with target.open(create=False) as raw:  # the bytes as stored: 8 is msgpack 0x08
        assert await raw.get("name") is not None
    bytes_target = Target(target.kind, target.url + "-bytes", target.kwargs)
    async with bytes_target.open(create=True, options=NO_COMPACT) as db:
        await db.put(b"short", b"abc")
        await db.add(b"short", 1)
        with pytest.raises(kvstore.AtomicOperandError, match="not 8 bytes"):
            await db.get(b"short")


async def test_a_transaction_reads_its_own_adds(target: Target) -> None:
    async with target.open(values="msgpack", create=True, options=NO_COMPACT) as db:
        await db.put("a", 10)
        async with db.transaction() as tx:
            tx.add("a", 5)
            tx.add("b", 2)
            assert await tx.get("a") == 15
            assert await tx.get_many(["a", "b", "c"]) == [15, 2, None]
            tx.max("a", 100)
            assert [(k, v) async for k, v in tx.scan()] == [(b"a", 100), (b"b", 2)]
        assert await db.get_many(["a", "b"]) == [100, 2]


async def test_reading_after_adding_makes_it_a_read() -> None:
    # The add itself reads nothing; reading the key afterwards does, so a concurrent
    # write to it is a conflict like any read's.
    async with kvstore.open("memory://own", values="msgpack", create=True) as db:
        await db.put("a", 1)
        tx = db.transaction()
        tx.add("a", 1)
        assert await tx.get("a") == 2
        await db.add("a", 10)
        with pytest.raises(kvstore.ConflictError):
            await tx.commit()
        blind = db.transaction()
        blind.add("a", 1)
        await db.add("a", 10)  # no read: no conflict
        await blind.commit()
        assert await db.get("a") == 22


async def test_snapshots_at_past_versions_see_the_sum_then(target: Target) -> None:
    async with target.open(values="msgpack", create=True, options=NO_COMPACT) as db:
        versions = [await db.add("c", n) for n in (1, 2, 3)]
        tag = await db.tag("three")
        versions.append(await db.add("c", 4))
        for expected, version in zip((1, 3, 6, 10), versions, strict=True):
            assert await (await db.snapshot(version=version)).get("c") == expected
        await db.compact(full=True)
        assert await (await db.snapshot(tag=tag.name)).get("c") == 6
        assert await (await db.snapshot(version=versions[1])).get("c") == 3
        assert await db.get("c") == 10


async def test_adds_never_conflict_across_tasks_and_processes(durable_target: Target) -> None:
    t = durable_target
    processes, tasks, adds, counters = 2, 16, 6, 4
    async with t.open(values="msgpack", create=True):
        pass
    loop = asyncio.get_running_loop()
    with ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("spawn")) as pool:
        results = await asyncio.gather(
            *(
                loop.run_in_executor(pool, workers.atomic_add, t.url, t.kwargs, w, tasks, adds, counters)
                for w in range(processes)
            )
        )
    assert [r["stats"]["conflicts"] for r in results] == [0] * processes
    assert sum(r["stats"]["transactions_committed"] for r in results) == processes * tasks * adds
    expected = {f"actr/{c}": sum(r["acked"][f"actr/{c}"] for r in results) for c in range(counters)}
    async with t.open(values="msgpack") as db:
        assert {k.decode(): v async for k, v in db.scan(prefix="actr/")} == expected
        await db.compact(full=True)
        assert {k.decode(): v async for k, v in db.scan(prefix="actr/")} == expected


async def test_compaction_folds_operands_and_keeps_past_versions_exact(durable_target: Target) -> None:
    options = kvstore.StoreOptions(auto_compact=False, history_versions=3, history_seconds=0)
    async with durable_target.open(values="msgpack", create=True, options=options) as db:
        await db.put("c", 1000)
        for n in range(1, 21):
            await db.add("c", n)
        await db.max("m", 5)
        await db.min("m", 3)
        latest = db.version
        before = {v: await (await db.snapshot(version=v)).get("c") for v in range(latest - 3, latest + 1)}
        (result,) = await db.compact(full=True)
        # The floor is version 20 (23 - 3): "c"'s 20 entries at or below it fold into one put
        # of their sum at 20, the add at 21 stays an operand; "m"'s two (22, 23) stay.
        assert (result.entries_in, result.entries_out) == (23, 2 + 2), result
        for v, value in before.items():
            assert await (await db.snapshot(version=v)).get("c") == value
        assert await db.get("c") == 1000 + sum(range(1, 21)) and await db.get("m") == 3


async def test_a_partial_compaction_keeps_operands_over_older_sources(tmp_path: Any) -> None:
    # Level-0 adds compacted without the level-1 put below them must stay operands:
    # resolving them on "nothing" would lose the put.
    options = kvstore.StoreOptions(auto_compact=False, compaction_fanout=3, history_versions=0, history_seconds=0)
    async with kvstore.open(f"file://{tmp_path}/s", values="msgpack", create=True, options=options) as db:
        await db.put("c", 100)
        await db.put("other", 1)
        await db.compact(full=True)  # the put now lies in a level-1 source
        for n in (1, 2, 3):
            await db.add("c", n)
        (result,) = await db.compact()  # merges the three level-0 commits only
        assert result.inputs == 3 and result.level == 1
        assert len(engine_of(db).manifest.segments) == 2
        assert await db.get("c") == 106
        await db.compact(full=True)
        assert await db.get("c") == 106


async def test_sync_store_mirrors_the_operations(tmp_path: Any) -> None:
    def work() -> tuple[Any, Any]:
        with kvstore.open_sync(f"file://{tmp_path}/sync", values="msgpack", create=True) as db:
            db.add("a", 2)
            db.max("a", 7)
            db.min("a", 5)
            with db.transaction() as tx:
                tx.add("b", 1)
                tx.max("b", 4)
                tx.min("b", 3)
            return db.get("a"), db.get("b")

    assert await asyncio.to_thread(work) == (5, 3)


# ----------------------------------------------------------------- retention, against a model


def _random_value(rng: random.Random) -> Value:
    r = rng.random()
    if r < 0.15:
        return None
    if r < 0.3:
        return encode_int(rng.randint(-50, 50), "msgpack")
    if r < 0.35:
        return b"\xa3abc"  # msgpack "abc": not an integer
    if r < 0.45:  # an expiring put (TTL), expired or not at the times the model reads
        return Expiring(encode_int(rng.randint(-50, 50), "msgpack"), rng.uniform(0, 200))
    ops = tuple((rng.choice((ADD, MAX, MIN)), rng.randint(-20, 20)) for _ in range(rng.randint(1, 3)))
    return Operands(ops)


async def _no_value_objects(ref: ValueRef, key: bytes) -> bytes:
    raise AssertionError(f"no value is stored out of line here ({key!r})")


async def _read(entries: list[Entry], version: int, now: float) -> list[tuple[bytes, bytes | str]]:
    """What a scan at `version` and `now` sees of entries in merged order, key by key (a key whose
    read fails: the error's name)."""
    out: list[tuple[bytes, bytes | str]] = []
    for key in sorted({e[0] for e in entries}):

        async def source(key: bytes = key) -> AsyncIterator[list[Entry]]:
            yield [e for e in entries if e[0] == key]

        try:
            out += [pair async for pair in visible(source(), version, "msgpack", now, _no_value_objects)]
        except kvstore.AtomicOperandError:
            out.append((key, "AtomicOperandError"))
    return out


@pytest.mark.parametrize("seed", range(300))
async def test_retention_keeps_every_readable_version_exact(seed: int) -> None:
    rng = random.Random(seed)
    entries: list[Entry] = []
    for key in (b"a", b"b", b"c"):
        versions = sorted(rng.sample(range(1, 30), rng.randint(1, 8)), reverse=True)
        entries += [(key, v, _random_value(rng)) for v in versions]
    floor = rng.randint(0, 30)
    # Something older elsewhere (an int put at version 0, outside the merge) or nothing.
    elsewhere = rng.random() < 0.5
    older: list[Entry] = [(k, 0, encode_int(1000, "msgpack")) for k in (b"a", b"b", b"c")] if elsewhere else []
    compacted_at = rng.uniform(0, 150)  # expiry only moves forward: reads come at or after it
    retention = Retention(floor, lambda key, version: not elsewhere, "msgpack", compacted_at)
    kept = retention.feed(entries[: len(entries) // 2]) + retention.feed(entries[len(entries) // 2 :])
    kept += retention.finish()

    def with_older(es: list[Entry]) -> list[Entry]:
        return sorted(es + older, key=lambda e: (e[0], -e[1]))

    for version in range(floor, 31):
        for now in (compacted_at, compacted_at + 30, 1000.0):
            got, expected = await _read(with_older(kept), version, now), await _read(with_older(entries), version, now)
            assert got == expected, (version, now, kept)
    assert len(kept) <= len(entries)
