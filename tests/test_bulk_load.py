"""Bulk load: large, unsorted input committed as one transaction with bounded memory."""

from __future__ import annotations

import os
import random
import tracemalloc
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from targets import Target, fault_injecting, file_target

import kvstore
import kvstore._engine as engine_module
import kvstore._segment_store as segment_store
from kvstore._objectstore import RetryPolicy
from kvstore.testing.faults import FaultInjectingStore, FaultPlan, FaultRule


async def test_unsorted_input_with_repeats_last_wins(target: Target) -> None:
    rng = random.Random(5)
    items = [(f"k{rng.randrange(3000):05d}", rng.randbytes(20)) for _ in range(6000)]
    expected = {b"k00001": b"before"} | {k.encode(): v for k, v in items}
    seen: list[int] = []
    async with target.open(options=kvstore.StoreOptions(auto_compact=False)) as db:
        await db.put(b"k00001", b"before")
        version = await db.bulk_load(items, progress=seen.append, chunk_bytes=20_000)
        assert version == 2  # one commit for everything
        assert seen == sorted(seen) and seen[-1] == len(items) and len(seen) > 3  # several chunks
        assert dict([kv async for kv in db.scan()]) == expected
        for key in list(expected)[:50]:
            assert await db.get(key) == expected[key]
        await db.compact(full=True)  # merging chunks keeps "last wins"
        assert dict([kv async for kv in db.scan()]) == expected


async def test_async_input_and_msgpack_values(target: Target) -> None:
    async def rows() -> AsyncIterator[tuple[str, dict[str, int]]]:
        for i in range(500):
            yield f"row/{i:04d}", {"i": i}

    async with target.open(values="msgpack") as db:
        await db.bulk_load(rows())
        assert [v["i"] async for _, v in db.scan(prefix="row/", limit=3)] == [0, 1, 2]
        with pytest.raises(kvstore.InvalidValueError):
            await db.bulk_load([("x", object())])
        with pytest.raises(kvstore.ValidationError, match="no items"):
            await db.bulk_load([])


async def test_large_segments_use_multipart_and_resolve_lost_completion(
    target: Target, monkeypatch: pytest.MonkeyPatch
) -> None:
    if target.kind != "s3":
        monkeypatch.setattr(segment_store, "PART_BYTES", 256 * 1024)  # S3 itself needs >= 5 MiB parts
    made: list[FaultInjectingStore] = []

    def wrap(inner: object) -> FaultInjectingStore:
        made.append(FaultInjectingStore(inner))  # type: ignore[arg-type]
        return made[0]

    rng = random.Random(1)
    n = 60_000 if target.kind == "s3" else 6_000
    items = [(b"b%07d" % i, rng.randbytes(200)) for i in range(n)]  # incompressible: about 12 MB on S3
    async with target.open(wrap_object_store=wrap) as db:
        made[0].script("complete_multipart_if_absent", "lost_response")
        await db.bulk_load(items)
        assert made[0].injected["complete_multipart_if_absent:lost_response"] == 1
        assert db.statistics()["requests"].get("POST", 0) >= 3  # start + completion retried
        assert await db.get(b"b%07d" % (n - 1)) == items[-1][1]
        assert len([k async for k, _ in db.scan()]) == n
        assert (await db.verify()).ok


def test_memory_stays_bounded(tmp_path: os.PathLike[str]) -> None:
    """Peak memory depends on the chunk size and the merge's fan-in, not on how much is
    loaded. The pairs come out of order, so the chunks overlap and are merged into one
    sorted run: with a fan-in of 2, the 8 chunks of the larger load merge in passes."""
    import asyncio

    options = kvstore.StoreOptions(compaction_memory_bytes=1024 * 1024)  # the least: a fan-in of 2

    async def peak_for(n: int, path: str) -> int:
        async with kvstore.open(path, options=options) as db:
            pairs = ((b"m%08d" % ((i * 7919) % n), b"v" * 80) for i in range(n))
            tracemalloc.start()
            await db.bulk_load(pairs, chunk_bytes=256 * 1024)
            _, peak = tracemalloc.get_traced_memory()
            tracemalloc.stop()
            assert await db.get(b"m%08d" % (n - 1)) == b"v" * 80
            return peak

    small = asyncio.run(peak_for(5_000, f"{tmp_path}/small"))
    large = asyncio.run(peak_for(20_000, f"{tmp_path}/large"))  # 1.8 MB of pairs
    assert large < 1.3 * small + 256 * 1024, (small, large)
    assert large < 1.2e6, large


def _merge_peaks(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """Patch the engine's `as_sorted_run` to record the peak of memory (tracemalloc, which
    the caller starts) over the merges' start, and how many ran at once at most."""
    state = {"active": 0, "most": 0, "base": 0, "peak": 0}
    real = engine_module.as_sorted_run

    async def measured(*args: Any, **kwargs: Any) -> Any:
        if not state["active"]:
            state["base"] = tracemalloc.get_traced_memory()[0]
            tracemalloc.reset_peak()
        state["active"] += 1
        state["most"] = max(state["most"], state["active"])
        try:
            return await real(*args, **kwargs)
        finally:
            state["active"] -= 1
            state["peak"] = max(state["peak"], tracemalloc.get_traced_memory()[1] - state["base"])

    monkeypatch.setattr(engine_module, "as_sorted_run", measured)
    return state


@pytest.mark.parametrize(("chunk_kib", "value_bytes"), [(300, 100), (150, 2)], ids=["objects-read-whole", "tiny-pairs"])
def test_a_loads_merge_stays_within_compaction_memory_bytes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, chunk_kib: int, value_bytes: int
) -> None:
    """The merge of a load's chunks holds at most `compaction_memory_bytes` (review 6):
    chunk objects of 1 MiB or less are read whole and held through the merge, and a block
    of tiny pairs decodes to many more Python objects than its bytes; both are counted
    (`_compact.merge_footprint`), so the fan-in shrinks and the merge takes passes."""
    import asyncio

    memory = 4 * 1024 * 1024
    options = kvstore.StoreOptions(auto_compact=False, target_segment_bytes=64 * 1024, compaction_memory_bytes=memory)
    state = _merge_peaks(monkeypatch)
    total = chunk_kib * 1024 // (12 + value_bytes) * 8  # 8 chunks, all overlapping

    async def load() -> None:
        async with kvstore.open(str(tmp_path / "store"), options=options) as db:
            tracemalloc.start()
            try:
                await db.bulk_load(
                    ((b"k%08d" % ((i * 7919) % total), os.urandom(value_bytes)) for i in range(total)),
                    chunk_bytes=chunk_kib * 1024,
                )
            finally:
                tracemalloc.stop()
            assert await db.get(b"k%08d" % (total - 1)) is not None

    asyncio.run(load())
    assert 0 < state["peak"] <= memory, f"the merge held {state['peak'] / 2**20:.1f} MiB of {memory / 2**20:.0f}"


def test_a_partitioned_loads_merges_run_one_at_a_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each partition's share of a load merges its chunks, each merge holding up to
    `compaction_memory_bytes`: they take turns, so the load holds that once, not once per
    partition (review 6)."""
    import asyncio
    import random

    memory = 4 * 1024 * 1024
    options = kvstore.StoreOptions(auto_compact=False, target_segment_bytes=64 * 1024, compaction_memory_bytes=memory)
    state = _merge_peaks(monkeypatch)
    per_partition = 300 * 1024 // 112 * 6
    keys = [b"a%08d" % i for i in range(per_partition)] + [b"z%08d" % i for i in range(per_partition)]
    random.Random(1).shuffle(keys)

    async def load() -> None:
        async with kvstore.open(str(tmp_path / "store"), options=options, split_keys=[b"m"]) as db:
            tracemalloc.start()
            try:
                await db.bulk_load(((k, os.urandom(100)) for k in keys), chunk_bytes=300 * 1024)
            finally:
                tracemalloc.stop()
            assert await db.get(keys[0]) is not None and await db.get(keys[-1]) is not None

    asyncio.run(load())
    assert state["most"] == 1 and 0 < state["peak"] <= memory, state


async def test_sorted_input_then_out_of_order_pairs(target: Target) -> None:
    """Ascending input is gathered without sorting; a later pair out of order, or a
    repeated key, still sorts into place and wins."""
    items: list[tuple[str | bytes, bytes | bytearray]] = [(b"s%05d" % i, b"%d" % i) for i in range(5000)]
    items += [(b"s00007", b"repeated"), ("a-first", bytearray(b"str key")), (b"s99999", b"last")]
    seen: list[int] = []
    async with target.open() as db:
        await db.bulk_load(items, progress=seen.append, chunk_bytes=16_000)
        expected = {(k.encode() if isinstance(k, str) else k): bytes(v) for k, v in items}
        assert dict([kv async for kv in db.scan()]) == expected
        assert await db.get(b"s00007") == b"repeated"
    assert seen == sorted(seen) and seen[-1] == len(items) and len(seen) > 3


async def test_invalid_pairs_are_refused_in_any_position(target: Target) -> None:
    async with target.open() as db:
        good = [(b"k%04d" % i, b"v") for i in range(3000)]
        with pytest.raises(kvstore.InvalidKeyError):
            await db.bulk_load([*good, (b"", b"empty key")])
        with pytest.raises(kvstore.InvalidKeyError):
            await db.bulk_load([*good, (42, b"not a key")])
        with pytest.raises(kvstore.InvalidValueError):
            await db.bulk_load([*good[:5], (b"x", "a str value")])
        with pytest.raises(kvstore.InvalidValueError):
            options = kvstore.StoreOptions(max_value_bytes=10)
            async with target.open(options=options) as small:
                await small.bulk_load([*good, (b"x", b"y" * 11)])
        assert [kv async for kv in db.scan()] == []


async def test_a_failed_part_fails_the_load_and_commits_nothing(
    tmp_path: os.PathLike[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(segment_store, "PART_BYTES", 256 * 1024)
    made: list[FaultInjectingStore] = []

    def wrap(inner: object) -> FaultInjectingStore:
        made.append(FaultInjectingStore(inner))  # type: ignore[arg-type]
        return made[0]

    rng = random.Random(2)
    items = [(b"f%06d" % i, rng.randbytes(200)) for i in range(8000)]  # about 1.7 MB: several parts
    options = kvstore.StoreOptions(retry=RetryPolicy(max_attempts=2))
    async with kvstore.open(f"{tmp_path}/s", wrap_object_store=wrap, options=options) as db:
        made[0].script("upload_part", "pass", "pass", *["error"] * 10)  # parts from the third fail
        with pytest.raises(kvstore.StoreUnavailableError):
            await db.bulk_load(items)
        assert [kv async for kv in db.scan()] == []
    work = [p.name for p in (Path(tmp_path) / "s" / ".kvstore-work").iterdir()]
    assert not [name for name in work if name.startswith("upload-")]  # the upload was aborted


async def test_a_bulk_load_may_take_longer_than_max_transaction_age(tmp_path: Path) -> None:
    # A bulk load reads nothing: only its segments' age counts (I8, half the grace period).
    # 0.15 s per segment PUT makes this one take longer than max_transaction_age (0.1 s).

    options = kvstore.StoreOptions(max_transaction_age=0.1, segment_grace_period=2.0)
    _, wrap = fault_injecting(FaultPlan(rules={"put_if_absent": FaultRule(latency=0.15)}))
    async with file_target(tmp_path).open(options=options, wrap_object_store=wrap) as db:
        pairs = [(b"k%05d" % i, os.urandom(100)) for i in range(2000)]
        await db.bulk_load(pairs, chunk_bytes=64 * 1024)  # several segments, 0.15 s each
        assert [k async for k, _ in db.scan()] == [k for k, _ in pairs]
    # An ordinary transaction still is: here its cold read alone takes 0.15 s.
    _, slow_reads = fault_injecting(FaultPlan(rules={"get": FaultRule(latency=0.15)}))
    async with file_target(tmp_path).open(options=options, wrap_object_store=slow_reads) as db:
        with pytest.raises(kvstore.TransactionTooOldError, match="max_transaction_age"):
            async with db.transaction() as tx:
                tx.put(b"k00001", await tx.get(b"k00002"))
