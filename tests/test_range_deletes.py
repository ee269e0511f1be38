"""Range deletes (issue 19, item 2): `delete_range` / `delete_prefix` on a transaction and a store.

A range delete at version v hides every entry of a key in its range older than v,
from every snapshot at v or later: reads, batched reads, scans both ways, old
versions and tags. It is a write of every key in the range for the conflict
checker and for `watch`, costs one small commit however many keys it holds, and
compaction drops what it hides and then the range itself.
"""

from __future__ import annotations

import asyncio
import random
from typing import Any

import pytest
from targets import Target, engine_of, gc_later

import kvstore
from kvstore._compact import ranges_to_drop
from kvstore._manifest import LOG_KEYS_MAX_BYTES, CommitRecord, Manifest, decode_manifest, encode_manifest
from kvstore._ranges import RangeIndex, RangeTombstone, normalized

RETRY = kvstore.RetryPolicy(max_attempts=4, base_delay=0.001, max_delay=0.01)
KEEP_ALL = kvstore.StoreOptions(auto_compact=False, history_versions=10_000, retry=RETRY)

Model = dict[bytes, bytes]


def _key(rng: random.Random) -> bytes:
    return b"%s/%02d" % (rng.choice([b"a", b"b", b"c"]), rng.randrange(30))


def _range(rng: random.Random) -> tuple[bytes, bytes | None]:
    a, b = sorted([_key(rng), _key(rng)])
    if a == b:
        b = a + b"\x00"
    return a, (None if rng.random() < 0.15 else b)


def _delete(model: Model, start: bytes, end: bytes | None) -> None:
    for k in [k for k in model if start <= k and (end is None or k < end)]:
        del model[k]


async def _check(source: Any, model: Model, rng: random.Random, where: str) -> None:
    """Every read of `source` (a store or snapshot) agrees with `model`."""
    expected = sorted(model.items())
    assert [(k, v) async for k, v in source.scan()] == expected, where
    assert [(k, v) async for k, v in source.scan(reverse=True)] == expected[::-1], where
    for _ in range(3):
        lo, hi = sorted([_key(rng), _key(rng)])
        inside = [(k, v) for k, v in expected if lo <= k < hi]
        limit = rng.randrange(1, 5)
        assert [(k, v) async for k, v in source.scan(start=lo, end=hi, limit=limit)] == inside[:limit], where
        got = [(k, v) async for k, v in source.scan(start=lo, end=hi, limit=limit, reverse=True)]
        assert got == inside[::-1][:limit], where
        prefix = rng.choice([b"a/", b"b/1", b"c/2"])
        assert [(k, v) async for k, v in source.scan(prefix)] == [(k, v) for k, v in expected if k.startswith(prefix)]
    keys = [_key(rng) for _ in range(12)]
    assert await source.get_many(keys) == [model.get(k) for k in keys], where
    for k in keys[:4]:
        assert await source.get(k) == model.get(k), where


@pytest.mark.parametrize("seed", [1, 2])
async def test_range_deletes_agree_with_a_model_at_every_version_through_compactions(target: Target, seed: int) -> None:
    """Random puts, deletes, range and prefix deletes (alone, and mixed with puts in one
    transaction both ways round), compactions, and old snapshots: every version reads as
    a dict that applied the same operations. Then compactions with no history kept: the
    latest version still reads the same, and compaction dropped the ranges it settled."""
    rng = random.Random(seed)
    model: Model = {}
    versions: dict[int, Model] = {}
    async with target.open(create=True, options=KEEP_ALL) as db:
        for step in range(40):
            op = rng.random()
            if op < 0.35:
                async with db.transaction() as tx:
                    for _ in range(rng.randrange(1, 6)):
                        k = _key(rng)
                        tx.put(k, b"v%d-%s" % (step, k))
                        model[k] = b"v%d-%s" % (step, k)
            elif op < 0.45:
                k = _key(rng)
                await db.delete(k)
                model.pop(k, None)
            elif op < 0.6:
                start, end = _range(rng)
                await db.delete_range(start, end)
                _delete(model, start, end)
            elif op < 0.67:
                prefix = rng.choice([b"a", b"b/1", b"c/"])
                await db.delete_prefix(prefix)
                _delete(model, prefix, prefix[:-1] + bytes([prefix[-1] + 1]))
            elif op < 0.85:  # one transaction: puts and range deletes in some order
                async with db.transaction() as tx:
                    for _ in range(rng.randrange(2, 5)):
                        if rng.random() < 0.5:
                            start, end = _range(rng)
                            tx.delete_range(start, end)
                            _delete(model, start, end)
                        else:
                            k = _key(rng)
                            tx.put(k, b"t%d" % step)
                            model[k] = b"t%d" % step
                    assert [(k, v) async for k, v in tx.scan()] == sorted(model.items())
            else:
                await db.compact(full=rng.random() < 0.5)
            versions[db.version] = dict(model)
        await _check(db, model, rng, "latest")
        for version, state in versions.items():
            await _check(await db.snapshot(version=version), state, rng, f"version {version}")
    # Everything read cold (nothing cached), with history dropped by compaction.
    async with target.open(options=kvstore.StoreOptions(auto_compact=False, history_versions=0, retry=RETRY)) as db:
        await _check(db, model, rng, "reopened")
        await db.put(b"z", b"z")  # compaction's floor is the version before the newest
        model[b"z"] = b"z"
        await db.compact(full=True)
        await db.compact(full=True)
        await _check(db, model, rng, "compacted")
        manifest = engine_of(db).manifest  # white-box: the live range tombstones
        assert all(t.version > manifest.history_floor for t in manifest.range_deletes)
        assert sum(r.count for r in manifest.segments) == len(model)  # nothing hidden is stored


async def test_delete_prefix_of_many_keys_is_one_small_commit(target: Target) -> None:
    """The issue's case, scaled: a prefix over more keys than a transaction may write goes
    in one commit of one manifest PUT, writing under 1 KB more manifest and no segment."""
    options = kvstore.StoreOptions(auto_compact=False, max_transaction_keys=1000, retry=RETRY)
    async with target.open(create=True, options=options) as db:
        await db.bulk_load(((b"ds/old/%06d" % i, b"x" * 20) for i in range(20_000)), chunk_bytes=256 * 1024)
        await db.put(b"ds/new/1", b"kept")
        await db.put(b"ds/olc", b"after the prefix")
        engine = engine_of(db)
        with pytest.raises(kvstore.TransactionTooLargeError):  # the keys one by one: too many
            async with db.transaction() as tx:
                async for k, _ in db.scan(b"ds/old/"):
                    tx.delete(k)
        before = len(encode_manifest(engine.manifest))
        requests = dict(db.statistics()["requests"])
        version = await db.delete_prefix(b"ds/old/")
        after = engine.statistics()["requests"]
        sent = {kind: n - requests.get(kind, 0) for kind, n in after.items() if n != requests.get(kind, 0)}
        assert sent == {"PUT": 1}, sent  # a blind write: the manifest CAS alone, one round trip
        assert len(encode_manifest(engine.manifest)) - before < 1024
        assert engine.manifest.log[-1].segment_id is None and engine.manifest.log[-1].key_count == 0
        assert await db.get(b"ds/old/000123") is None
        assert [k async for k, _ in db.scan(b"ds/")] == [b"ds/new/1", b"ds/olc"]
        assert [k async for k, _ in db.scan(b"ds/", reverse=True, limit=1)] == [b"ds/olc"]
        old = await db.snapshot(version=version - 1)
        assert await old.get(b"ds/old/000123") == b"x" * 20
        assert len([k async for k, _ in old.scan(b"ds/old/")]) == 20_000
    async with target.open(options=options) as db:  # cold: reads skip what the range hides
        before = dict(db.statistics()["requests"])
        assert await db.get(b"ds/old/000123") is None
        assert [k async for k, _ in db.scan(b"ds/old/")] == []
        got = [k async for k, _ in db.scan(end=b"ds/old/5", reverse=True, limit=2)]
        assert got == [b"ds/olc", b"ds/new/1"]  # (inline segments: in the manifest)
        after = db.statistics()["requests"]
        # the manifest checks alone: no segment's index or block is fetched
        assert {kind: n - before.get(kind, 0) for kind, n in after.items() if n != before.get(kind, 0)} == {"GET": 3}


async def test_a_transaction_sees_its_own_range_deletes_in_order(target: Target) -> None:
    async with target.open(create=True, options=KEEP_ALL) as db:
        for k in (b"a", b"b", b"c", b"d"):
            await db.put(k, k * 2)
        async with db.transaction() as tx:
            tx.put(b"b", b"written before")  # deleted by the range after it
            tx.delete_range(b"a", b"c")
            tx.put(b"a", b"written after")  # wins over the range before it
            assert await tx.get(b"b") is None
            assert await tx.get_many([b"a", b"b", b"c"]) == [b"written after", None, b"cc"]
            assert [k async for k, _ in tx.scan()] == [b"a", b"c", b"d"]
            assert [k async for k, _ in tx.scan(reverse=True)] == [b"d", b"c", b"a"]
            assert set().union(*tx._read_keys.values()) == {b"c"}  # white-box: a key it deleted itself is no read
        assert [(k, v) async for k, v in db.scan()] == [(b"a", b"written after"), (b"c", b"cc"), (b"d", b"dd")]
        async with db.transaction() as tx:
            tx.delete_range(b"", None)  # everything
        assert [k async for k, _ in db.scan()] == []
        with pytest.raises(kvstore.ValidationError, match="end after start"):
            db.transaction().delete_range(b"b", b"a")


async def test_range_deletes_conflict_with_readers_of_their_keys(target: Target) -> None:
    """A range delete is a write of every key in it: a transaction that read a key in the
    range, or scanned into it, conflicts; one that read only outside it does not."""
    async with target.open(create=True, options=KEEP_ALL) as db:
        for k in (b"a", b"k1", b"k5", b"z"):
            await db.put(k, b"1")

        async def read_then_commit_after_delete(read: Any) -> None:
            tx = db.transaction()  # not `async with`: another commit runs before its own
            await read(tx)
            tx.put(b"out", b"x")
            await db.delete_range(b"k", b"l")
            await tx.commit()

        async def get_inside(tx: kvstore.Transaction) -> None:
            await tx.get(b"k3")  # absent, but in the range

        async def scan_into(tx: kvstore.Transaction) -> None:
            [_ async for _ in tx.scan(start=b"j", end=b"k2")]

        async def get_many_inside(tx: kvstore.Transaction) -> None:
            await tx.get_many([b"a", b"k5"])

        for read in (get_inside, scan_into, get_many_inside):
            with pytest.raises(kvstore.ConflictError):
                await read_then_commit_after_delete(read)

        async def outside(tx: kvstore.Transaction) -> None:
            await tx.get(b"a")
            [_ async for _ in tx.scan(start=b"l")]

        await read_then_commit_after_delete(outside)  # no conflict
        assert await db.get(b"out") == b"x"


async def test_range_deletes_in_one_group_commit(target: Target) -> None:
    """Transactions committed together: a later range delete removes an earlier one's put,
    a later put survives an earlier range delete, and a reader after a range delete in the
    same batch conflicts."""
    async with target.open(create=True, options=KEEP_ALL) as db:
        await db.put(b"r1", b"old")
        t1, t2, t3 = db.transaction(), db.transaction(), db.transaction()
        t1.put(b"p1", b"put first")
        t1.delete_range(b"q", b"s")  # deletes r1
        t2.delete_range(b"p", b"q")  # deletes t1's p1
        t2.put(b"p2", b"put after")
        assert await t3.get(b"r1") == b"old"
        t3.put(b"x", b"x")
        v1, v2, conflict = await asyncio.gather(t1.commit(), t2.commit(), t3.commit(), return_exceptions=True)
        assert v1 == v2  # one batch, one version
        assert isinstance(conflict, kvstore.ConflictError)
        assert [(k, v) async for k, v in db.scan()] == [(b"p2", b"put after")]


def test_commit_records_carry_ranges_within_the_log_budget() -> None:
    m = Manifest("id", 0, 0.0)
    m = m.with_commit(
        CommitRecord(1, 0.0, (b"t" * 16,), None, 0, b"", b"", (), ranges=((b"k", b"l"),)),
        log_length=10,
        delete_ranges=[(b"k", b"l")],
    )
    [record] = m.log
    assert record.wrote_any([b"k9"], []) and not record.wrote_any([b"j", b"l"], [])
    assert record.wrote_any([], [(b"a", b"k0")]) and not record.wrote_any([], [(b"a", b"k")])
    assert m.range_deletes == (RangeTombstone(b"k", b"l", 1),)
    again = decode_manifest(encode_manifest(m), "m")
    assert again == m and again.log[0].ranges == ((b"k", b"l"),)
    # Many ranges: the log keeps one covering range once they pass the budget.
    many = [(b"r%05d-%s" % (i, b"x" * 90), b"r%05d-~" % i) for i in range(400)]
    for v in range(2, 12):
        record = CommitRecord(v, 0.0, (b"t" * 16,), None, 0, b"", b"", (), ranges=tuple(many))
        m = m.with_commit(record, log_length=1000, delete_ranges=many)
    from kvstore._manifest import LOG_KEYS_BUDGET_BYTES, _log_key_bytes

    assert _log_key_bytes(m) <= LOG_KEYS_BUDGET_BYTES
    assert len(m.log[1].ranges) == 1 and m.log[1].ranges[0] == (many[0][0], many[-1][1])
    assert m.log[1].wrote_any([b"r00200"], [])  # still a write of every key in them
    assert len(m.log[-1].ranges) == 400
    assert LOG_KEYS_MAX_BYTES < 400 * 100  # (why one commit's ranges fill the budget)


def test_range_index() -> None:
    index = RangeIndex([RangeTombstone(b"b", b"d", 5), RangeTombstone(b"c", None, 3), RangeTombstone(b"a", b"z", 9)], 6)
    assert index.floor(b"a") == 0 and index.floor(b"b") == 5 and index.floor(b"c") == 5 and index.floor(b"e") == 3
    assert index.hides(b"c", 4) and not index.hides(b"c", 5)
    assert index.unhidden(4, None, None) == [(None, b"b"), (b"d", None)]  # (the one at 9 is unseen)
    assert index.unhidden(2, b"0", b"zz") == [(b"0", b"b")]
    assert index.unhidden(2, b"c", b"e") == []
    assert index.unhidden(4, b"c", b"e") == [(b"d", b"e")]
    only = RangeIndex([RangeTombstone(b"b", b"d", 5)], 5)
    assert only.unhidden(4, None, None) == [(None, b"b"), (b"d", None)]
    assert only.unhidden(4, b"c", b"e") == [(b"d", b"e")]
    assert only.unhidden(5, b"a", b"c") == [(b"a", b"c")]
    everything_before_m = RangeIndex([RangeTombstone(b"", b"m", 5)], 5)
    assert everything_before_m.unhidden(1, None, None) == [(b"m", None)]  # no empty piece before b""
    assert normalized([(b"c", b"e"), (b"a", b"b"), (b"b", b"c"), (b"x", None), (b"y", b"z")]) == [
        (b"a", b"e"),
        (b"x", None),
    ]


async def test_watch_reports_range_deletes(target: Target) -> None:
    async with target.open(create=True, options=KEEP_ALL) as db:
        since = await db.put(b"start", b"1")
        await db.delete_range(b"m", b"p")
        await db.delete_prefix(b"zz")
        async with db.transaction() as tx:
            tx.delete_range(b"a", None)
            tx.put(b"n1", b"again")
        changes = []
        async for change in db.watch(start=b"n", end=b"o", since=since, interval=0.01):
            changes.append(change)
            if len(changes) == 2:
                break
        assert [(c.keys, c.deleted_ranges) for c in changes] == [
            ([], [(b"n", b"o")]),
            ([b"n1"], [(b"n", b"o")]),
        ]
        assert changes[0].version == since + 1 and changes[1].version == since + 3


async def test_snapshots_and_tags_before_a_range_delete_keep_its_keys(target: Target) -> None:
    async with target.open(create=True, options=kvstore.StoreOptions(auto_compact=False, history_versions=0)) as db:
        for i in range(10):
            await db.put(b"k%d" % i, b"v%d" % i)
        before = await db.tag("before")
        await db.delete_prefix(b"k")
        await db.put(b"k5", b"new")
        snap = await db.snapshot(tag="before")
        await db.compact(full=True)  # drops what the range hid (no history kept) and the range
        assert engine_of(db).manifest.range_deletes == ()
        await gc_later(db)
        assert [(k, v) async for k, v in db.scan()] == [(b"k5", b"new")]
        assert len([k async for k, _ in snap.scan()]) == 10
        tagged = await db.snapshot(tag="before")
        assert tagged.version == before.version and await tagged.get(b"k3") == b"v3"
        assert (await db.verify()).ok


async def test_compaction_keeps_what_readable_versions_need_and_drops_the_range_at_the_bottom(
    target: Target,
) -> None:
    options = kvstore.StoreOptions(auto_compact=False, history_versions=3, retry=RETRY)
    async with target.open(create=True, options=options) as db:
        for i in range(20):
            await db.put(b"k%02d" % i, b"v")
        deleted_at = await db.delete_range(b"k05", b"k15")
        [result] = await db.compact(full=True)  # the range is above the floor: nothing dropped
        manifest = engine_of(db).manifest
        assert manifest.range_deletes == (RangeTombstone(b"k05", b"k15", deleted_at),)
        assert result.entries_out == 20
        assert await (await db.snapshot(version=deleted_at - 1)).get(b"k07") == b"v"
        for i in range(3):
            await db.put(b"other%d" % i, b"x")  # the floor passes the range's version
        [result] = await db.compact(full=True)
        # the 10 deleted keys' entries are not even read: their segment is older than the range
        assert result.entries_in == result.entries_out == 13
        assert engine_of(db).manifest.range_deletes == ()
        assert [k async for k, _ in db.scan(b"k")] == [b"k%02d" % i for i in (*range(5), *range(15, 20))]


def test_a_range_stays_while_a_source_outside_the_merge_holds_what_it_hides() -> None:
    from kvstore._manifest import SegmentRef

    t = RangeTombstone(b"b", b"d", 10)
    merged = SegmentRef("in", b"a", b"z", 5, 100, 11, 11, 11)
    old_elsewhere = SegmentRef("old", b"c", b"c", 1, 100, 4, 4, 4)
    newer_elsewhere = SegmentRef("new", b"c", b"c", 1, 100, 12, 12, 12)
    apart = SegmentRef("apart", b"x", b"y", 1, 100, 1, 1, 1)
    for others, drop in (([old_elsewhere], []), ([newer_elsewhere, apart], [t]), ([], [t])):
        base = Manifest("s", 12, 0.0, segments=(merged, *others), range_deletes=(t,))
        assert ranges_to_drop(base, [t], frozenset({"in"})) == drop
    inner = RangeTombstone(b"c", b"c1", 3)  # inside a newer settled one: it goes too
    base = Manifest("s", 12, 0.0, segments=(merged, old_elsewhere), range_deletes=(inner, t))
    assert ranges_to_drop(base, [inner, t], frozenset({"in"})) == [inner]


# Small segments that compaction may move as they are (`_compact.movable`): 32 KiB target.
SMALL = kvstore.StoreOptions(auto_compact=False, target_segment_bytes=32 * 1024, history_versions=0, retry=RETRY)


async def test_compaction_never_moves_a_segment_past_a_range_delete_that_hides_its_entries(target: Target) -> None:
    """A key-ordered bulk load of segments that a full compaction would move as they are; a
    range delete over part of one of them. That one is merged (its hidden entries dropped),
    the others move, the range leaves the manifest, and the deleted keys stay deleted."""
    async with target.open(create=True, options=SMALL) as db:
        pairs = [(b"k%08d" % i, random.randbytes(92)) for i in range(226 * 4)]
        await db.bulk_load(pairs, chunk_bytes=24 * 1024)
        [run] = engine_of(db).manifest.segments  # white-box: the load's sorted run
        bulk = await engine_of(db)._sources.parts(run)  # and its segments, the chunks as they were
        assert len(bulk) == 4
        covered = sorted(bulk, key=lambda r: r.min_key)[1]
        lo, hi = covered.min_key + b"5", covered.max_key  # part of the second segment
        await db.delete_range(lo, hi)
        await db.put(b"z", b"a later commit")  # the floor passes the range delete
        [result] = await db.compact(full=True)
        assert result.moved == 3  # the other bulk segments
        parts = await engine_of(db)._sources.parts(engine_of(db).manifest.segments[0])
        assert covered.id not in {p.id for p in parts}
        assert engine_of(db).manifest.range_deletes == ()
        expected = [k for k, _ in pairs if not lo <= k < hi] + [b"z"]
        assert [k async for k, _ in db.scan()] == expected
        assert await db.get(lo + b"0") is None and await db.get(hi) is not None


def test_manifest_golden_bytes_with_a_range_delete() -> None:
    """docs/format.md, "Range deletes": the bytes, and that a store without range deletes
    still writes format 3 while one with them is refused by a format-3 reader."""
    from test_formats import _golden

    from kvstore._envelope import unseal

    m = Manifest("s", 0, 0.0)
    record = CommitRecord(1, 0.0, (b"\x01" * 16,), None, 0, b"", b"", (), ranges=((b"ds/", b"ds0"),))
    m = m.with_commit(record, 10, delete_ranges=[(b"ds/", b"ds0")])
    golden = _golden("manifest-format-4-range-delete")
    assert encode_manifest(m) == golden
    assert decode_manifest(golden, "m") == m
    with pytest.raises(kvstore.UnsupportedFormatError, match="format 4, newer"):
        unseal(golden, b"KVMF", 3, "m", "manifest")  # what a format-3 reader does
    plain = Manifest("s", 0, 0.0).with_commit(CommitRecord(1, 0.0, (b"\x01" * 16,), None, 0, b"", b"", ()), 10)
    assert encode_manifest(plain)[4:6] == b"\x03\x00"
    # Once compaction dropped the range and the log no longer lists it: format 3 again.
    later = m.with_commit(CommitRecord(2, 0.0, (b"\x02" * 16,), None, 0, b"", b"", ()), 1, drop_ranges=m.range_deletes)
    assert later.range_deletes == () and encode_manifest(later)[4:6] == b"\x03\x00"


def test_the_cli_deletes_a_prefix_or_a_range(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    import json

    from test_cli import invoke

    url = str(tmp_path / "s")
    invoke(monkeypatch, "init", url).ok()
    for key in ("ds/old/1", "ds/old/2", "ds/new/1", "m1", "m2", "z"):
        invoke(monkeypatch, "put", url, key, "v").ok()
    out = invoke(monkeypatch, "delete", url, "--prefix", "ds/old/", "--json").json()
    assert out == {"prefix": "ds/old/", "version": 7}
    text = invoke(monkeypatch, "delete", url, "--range", "m", "n").ok().text
    assert text == "deleted every key in ['m', 'n') at version 8\n"
    assert invoke(monkeypatch, "delete", url, "--range", "y", "", "--json").json() == {
        "start": "y",
        "end": None,
        "version": 9,
    }
    assert invoke(monkeypatch, "scan", url).ok().text.split() == ["ds/new/1", "v"]
    invoke(monkeypatch, "delete", url, "--prefix", "a", "--range", "a", "b").one_line_error(
        2, "give --prefix or --range, not both"
    )
    invoke(monkeypatch, "delete", url, "--range", "b", "a").one_line_error(2, "end after start")
    lines = invoke(monkeypatch, "watch", url, "--since", "7", "--count", "2").ok().text.splitlines()
    assert [line.split()[2:] for line in lines] == [["delete", "[m,", "n)"], ["delete", "[y,", ")"]]
    docs = [
        json.loads(line)
        for line in invoke(monkeypatch, "watch", url, "--since", "7", "--count", "1", "--json").ok().text.splitlines()
    ]
    assert docs[0]["keys"] == [] and docs[0]["deleted_ranges"] == [{"start": {"key": "m"}, "end": {"key": "n"}}]
