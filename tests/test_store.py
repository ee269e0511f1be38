"""The public async API, run against every backend."""

from __future__ import annotations

import asyncio
import os
from typing import Any

import pytest
from targets import Target, engine_of

import kvstore


async def test_put_get_delete(target: Target) -> None:
    async with target.open() as db:
        v1 = await db.put(b"k", b"v")
        assert await db.get(b"k") == b"v"
        assert await db.get(b"missing") is None
        assert await db.get(b"missing", b"default") == b"default"
        v2 = await db.delete(b"k")
        assert v2 == v1 + 1
        assert await db.get(b"k") is None
        assert db.version == v2


async def test_str_keys_are_utf8(target: Target) -> None:
    async with target.open() as db:
        await db.put("clé", b"1")
        assert await db.get("clé".encode()) == b"1"
        assert [k async for k, _ in db.scan()] == ["clé".encode()]


async def test_scan_prefix_range_limit_reverse(target: Target) -> None:
    async with target.open() as db:
        async with db.transaction() as tx:
            for i in range(20):
                tx.put(f"users/{i:02d}", str(i).encode())
            tx.put(b"other", b"x")
            tx.put(b"users0", b"not in prefix")
        keys = [k async for k, _ in db.scan(prefix=b"users/")]
        assert keys == [f"users/{i:02d}".encode() for i in range(20)]
        assert [k async for k, _ in db.scan(prefix="users/", limit=3)] == [b"users/00", b"users/01", b"users/02"]
        assert [k async for k, _ in db.scan(prefix="users/", reverse=True, limit=2)] == [b"users/19", b"users/18"]
        assert [k async for k, _ in db.scan(start=b"users/05", end=b"users/08")] == [
            b"users/05",
            b"users/06",
            b"users/07",
        ]
        assert [v async for _, v in db.scan(prefix=b"users/1", start=b"users/18")] == [b"18", b"19"]
        all_keys = [k async for k, _ in db.scan()]
        assert all_keys == sorted(all_keys) and len(all_keys) == 22
        assert [k async for k, _ in db.scan(limit=0)] == []


async def test_scan_merges_many_segments_newest_wins(target: Target) -> None:
    async with target.open() as db:
        for round_ in range(4):
            async with db.transaction() as tx:
                for i in range(round_, 12, 2):
                    tx.put(f"k{i:02d}", f"r{round_}".encode())
        await db.delete(b"k05")
        expected = {}
        for round_ in range(4):
            for i in range(round_, 12, 2):
                expected[f"k{i:02d}".encode()] = f"r{round_}".encode()
        del expected[b"k05"]
        assert dict([kv async for kv in db.scan()]) == expected
        assert [kv async for kv in db.scan(reverse=True)] == sorted(expected.items(), reverse=True)
        for key, value in expected.items():
            assert await db.get(key) == value


async def test_transaction_commits_on_exit_and_discards_on_error(target: Target) -> None:
    async with target.open() as db:
        async with db.transaction() as tx:
            tx.put(b"a", b"1")
            assert await tx.get(b"a") == b"1"  # reads its own writes
        assert await db.get(b"a") == b"1"
        with pytest.raises(RuntimeError):
            async with db.transaction() as tx:
                tx.put(b"a", b"2")
                raise RuntimeError("boom")
        assert await db.get(b"a") == b"1"


async def test_transaction_scan_sees_own_writes_and_deletes(target: Target) -> None:
    async with target.open() as db:
        async with db.transaction() as tx:
            for k in (b"p/1", b"p/2", b"p/3"):
                tx.put(k, b"old")
        async with db.transaction() as tx:
            tx.delete(b"p/2")
            tx.put(b"p/4", b"new")
            tx.put(b"p/1", b"changed")
            seen = [kv async for kv in tx.scan(prefix=b"p/")]
            assert seen == [(b"p/1", b"changed"), (b"p/3", b"old"), (b"p/4", b"new")]
            seen_rev = [kv async for kv in tx.scan(prefix=b"p/", reverse=True)]
            assert seen_rev == list(reversed(seen))


async def test_read_only_transaction_sends_no_write(target: Target) -> None:
    async with target.open() as db:
        await db.put(b"a", b"1")
        before = db.statistics()["requests"].get("PUT", 0)
        async with db.transaction() as tx:
            assert await tx.get(b"a") == b"1"
            assert [k async for k, _ in tx.scan()] == [b"a"]
        assert tx.committed_version is None
        assert db.statistics()["requests"].get("PUT", 0) == before


def _requests(db: kvstore.Store) -> dict[str, int]:
    return dict(db.statistics()["requests"])


def _spent(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {verb: after[verb] - before.get(verb, 0) for verb in after if after[verb] != before.get(verb, 0)}


async def test_small_commit_costs_one_put(target: Target) -> None:
    async with target.open() as db:
        await db.put(b"warm", b"up")
        before = _requests(db)
        await db.put(b"a", b"1")
        assert _spent(before, _requests(db)) == {"PUT": 1}  # the manifest CAS, segment inline


async def test_commit_over_the_inline_limit_costs_two_puts(target: Target) -> None:
    options = kvstore.StoreOptions(inline_segment_bytes=1024)
    async with target.open(options=options) as db:
        await db.put(b"warm", b"up")
        before = _requests(db)
        await db.put(b"a", os.urandom(2048))  # incompressible: the segment exceeds 1 KiB
        assert _spent(before, _requests(db)) == {"PUT": 2}  # segment object + manifest CAS
        before = _requests(db)
        await db.put(b"b", b"small")
        assert _spent(before, _requests(db)) == {"PUT": 1}


async def test_manifest_stops_inlining_at_its_limit(target: Target) -> None:
    options = kvstore.StoreOptions(inline_segment_bytes=1024, manifest_inline_bytes=2048, auto_compact=False)
    async with target.open(options=options) as db:
        puts = []
        for i in range(12):
            before = _requests(db)
            await db.put(f"k{i}", os.urandom(300))
            puts.append(_spent(before, _requests(db))["PUT"])
        manifest = engine_of(db).manifest  # white-box: what the manifest carries
        assert 0 < manifest.inline_bytes <= 2048
        assert puts[0] == 1 and puts[-1] == 2  # inline until the manifest is full, then objects
        assert [await db.get(f"k{i}") is not None for i in range(12)] == [True] * 12


async def test_an_inline_segment_over_a_mebibyte_reads_back(target: Target) -> None:
    """Past the size read whole in one GET (1 MiB), an inline segment is still read from the
    manifest, which holds its bytes: there is no object to fetch ranges of. Reads, compaction
    (which samples the segment's index to plan) and verify all go through that index."""
    options = kvstore.StoreOptions(
        inline_segment_bytes=2 << 20, manifest_inline_bytes=4 << 20, auto_compact=False, large_value_bytes=2 << 20
    )
    value = os.urandom(1536 * 1024)  # incompressible, and kept in the segment: it is over 1.5 MiB
    async with target.open(options=options) as db:
        await db.put(b"big", value)
        (ref,) = engine_of(db).manifest.segments  # white-box: the commit rode inline
        assert ref.inline is not None and ref.size > 1 << 20
    async with target.open(options=options) as db:  # cold: nothing cached
        assert await db.get(b"big") == value
        report = await db.verify()
        assert report.ok, report.damaged
        await db.put(b"small", b"x")
        assert await db.compact(full=True)
        assert await db.get(b"big") == value and await db.get(b"small") == b"x"


async def test_cold_point_read_of_an_inline_segment_costs_only_the_manifest(target: Target) -> None:
    async with target.open() as db:
        await db.put(b"a", b"1")
    async with target.open() as db:
        before = _requests(db)
        assert await db.get(b"a") == b"1"
        assert _spent(before, _requests(db)) == {"GET": 1}  # conditional GET of the manifest (304)


async def test_cold_point_read_costs_manifest_and_one_segment_get(target: Target) -> None:
    options = kvstore.StoreOptions(inline_segment_bytes=0)
    async with target.open(options=options) as db:
        await db.put(b"a", b"1")
    async with target.open(options=options) as db:
        before = _requests(db)
        assert await db.get(b"a") == b"1"
        # one conditional GET of the manifest (304) + one GET of the segment
        assert _spent(before, _requests(db)) == {"GET": 2}


async def test_msgpack_values(target: Target) -> None:
    async with target.open(values="msgpack") as db:
        doc = {"name": "ds", "shards": [1, 2, 3], "meta": {"owner": "ml"}, "blob": b"\x00\x01"}
        await db.put("datasets/a", doc)
        assert await db.get("datasets/a") == doc
        async with db.transaction() as tx:
            tx.put("n", 41)
            tx.put("n", await tx.get("n") + 1)
        assert await db.get("n") == 42


async def test_transact_retries_until_commit(target: Target) -> None:
    async def increment(tx: kvstore.Transaction, key: bytes) -> int:
        n = int(await tx.get(key, b"0")) + 1
        tx.put(key, str(n).encode())
        return n

    async with target.open() as db:
        results = await asyncio.gather(*(db.transact(increment, b"ctr") for _ in range(25)))
        assert sorted(results) == list(range(1, 26))
        assert await db.get(b"ctr") == b"25"


async def test_snapshot_is_repeatable_while_others_commit(target: Target) -> None:
    async with target.open() as db, target.open() as other:
        await db.put(b"x", b"1")
        await db.put(b"y/1", b"1")
        snap = await db.snapshot()
        for i in range(5):
            await other.put(b"x", str(i + 2).encode())
            await other.put(f"y/{i + 2}".encode(), b"new")
            assert await snap.get(b"x") == b"1"
            assert [k async for k, _ in snap.scan(prefix=b"y/")] == [b"y/1"]
        assert snap.version < db.version or snap.version < (await db.refresh())
        assert await db.get(b"x") == b"6"


async def test_reopen_sees_data(target: Target) -> None:
    async with target.open() as db:
        await db.put(b"persist", b"yes")
        version = db.version
    async with target.open(create=False) as db:
        assert db.version == version
        assert await db.get(b"persist") == b"yes"


async def test_open_is_awaitable_and_close_is_idempotent(target: Target) -> None:
    db = await target.open()
    await db.put(b"a", b"1")
    await db.close()
    await db.close()
    with pytest.raises(kvstore.ClosedError, match="closed"):
        await db.get(b"a")


async def test_two_clients_see_each_others_commits(target: Target) -> None:
    async with target.open() as a, target.open() as b:
        await a.put(b"k", b"from a")
        assert await b.get(b"k") == b"from a"
        await b.put(b"k", b"from b")
        assert await a.get(b"k") == b"from b"


async def test_verify_reports_healthy_store(target: Target) -> None:
    async with target.open() as db:
        for i in range(3):
            await db.put(f"k{i}", b"v")
        report = await db.verify()
        assert report.ok
        assert report.objects_checked == 4  # manifest + 3 segments


class _GetConcurrency:
    """Wraps an object store and records the most GETs it ever had in flight at once."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.in_flight = self.most = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def get(self, name: str, **kwargs: Any) -> Any:
        self.in_flight += 1
        self.most = max(self.most, self.in_flight)
        try:
            await asyncio.sleep(0)  # yield: a GET started meanwhile is in flight with this one
            return await self._inner.get(name, **kwargs)
        finally:
            self.in_flight -= 1


async def test_cold_scan_fetches_the_next_block_while_one_is_consumed(tmp_path: Any) -> None:
    made: list[_GetConcurrency] = []

    def wrap(inner: Any) -> _GetConcurrency:
        made.append(_GetConcurrency(inner))
        return made[-1]

    url = f"file://{tmp_path / 'store'}"
    items = [(f"k{i:06d}", os.urandom(200)) for i in range(20_000)]  # ~4 MiB: ranged reads, many blocks
    async with kvstore.open(url) as db:
        await db.bulk_load(items)
    async with kvstore.open(url, wrap_object_store=wrap) as db:
        scanned = [k async for k, _ in db.scan()]
    assert len(scanned) == len(items)
    assert made[0].most >= 2  # a block GET overlapped the one before it
