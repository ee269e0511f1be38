"""A prepared cross-partition transaction holds its READS until its decision (issue 18,
review finding 2; `_manifest.Intent.reads`, `_commit._held_by_intent`).

What must hold: from a transaction's prepares to its decision, no other commit may write
what it read, in a partition it writes or one it only read (a read-only intent holds
those); so a reader can never see a write that the transaction must precede without
seeing the transaction. Of two transactions each reading what the other writes (write
skew), at most one commits. A partition the transaction only read that was split
meanwhile refuses the commit.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import msgpack
import pytest
import two_phase_workers as w
from targets import Target

import kvstore
from kvstore import ConflictError, PartitionMovedError
from kvstore._commit import CommitRequest
from kvstore._manifest import (
    FORMAT,
    Intent,
    Manifest,
    SegmentRef,
    _intent_of,
    _intent_row,
    decode_manifest,
    encode_manifest,
)
from kvstore._two_phase import commit_across
from kvstore.testing.faults import FaultInjectingStore

DEADLINE = 30.0  # seconds any one wait below may take


class _HeldDecisions(FaultInjectingStore):
    """Holds every create of a decision object until `go`, after setting `reached`: the
    transaction is then prepared in every partition and not decided."""

    def __init__(self, inner: Any, reached: asyncio.Event, go: asyncio.Event) -> None:
        super().__init__(inner)
        self.reached, self.go = reached, go

    async def put_if_absent(self, name: str, data: bytes) -> str:
        if "txn/" in name:
            self.reached.set()
            await asyncio.wait_for(self.go.wait(), DEADLINE)
        return await super().put_if_absent(name, data)


@pytest.mark.parametrize("part", ["written", "only-read"])
async def test_a_write_to_what_a_prepared_transaction_read_is_refused_until_its_decision(
    target: Target, part: str
) -> None:
    """The review's scenario: T reads c (partition 0000) and writes d there ("written") or
    writes only in partition 0001 ("only-read"). After T's prepares and before its decision,
    U writes c: it is refused (T's intent holds c), so a reader R in that gap sees neither
    U nor T, never U without T (T < U < R < T). Once T is decided, U commits."""
    async with target.open(split_keys=[b"m"], values="msgpack") as setup:
        for key, value in [(b"c", "r0"), (b"d", "init"), (b"y", "init"), (b"z", "init")]:
            await setup.put(key, value)
    reached, go = asyncio.Event(), asyncio.Event()
    held = target.open(values="msgpack", wrap_object_store=lambda inner: _HeldDecisions(inner, reached, go))
    async with held as a, target.open(values="msgpack") as b:

        async def t() -> int | None:
            async with a.transaction() as tx:
                seen = await tx.get(b"c")
                tx.put(b"d" if part == "written" else b"y", seen)
                tx.put(b"z", "T")
            return tx.committed_version

        task = asyncio.create_task(t())
        await asyncio.wait_for(reached.wait(), DEADLINE)
        assert not task.done()
        with pytest.raises(ConflictError, match="cross-partition transaction [0-9a-f]+ read \\(undecided\\)"):
            async with b.transaction() as u:  # one attempt (a plain put would retry until the decision)
                u.put(b"c", "U")
        assert await b.get_many([b"c", b"d", b"y", b"z"]) == ["r0", "init", "init", "init"]  # R
        go.set()
        assert await asyncio.wait_for(task, DEADLINE) is not None
        await b.put(b"c", "U")  # T is decided: its intent holds nothing any more
        written = "d" if part == "written" else "y"
        assert await b.get_many([b"c", written.encode(), b"z"]) == ["U", "r0", "T"]


async def _two_parts(target: Target) -> tuple[w.Parts, bytes, bytes]:
    parts = await w.open_parts(target.url, target.kwargs, 2)
    await w.open_bank(parts, 2)
    return parts, w.account(0), w.account(1)  # account 0 in partition a, account 1 in b


async def _views(parts: w.Parts) -> tuple[Any, Any]:
    a, b = parts.engines
    return await a.latest_view(), await b.latest_view()


async def test_write_skew_prepared_one_after_the_other_commits_at_most_one(target: Target) -> None:
    """T1 reads x in a and writes y in b; T2 reads y in b and writes x in a; both read before
    either prepares. T1 prepares everywhere (its read-only intent in a holds x), then T2,
    before T1's decision: T2's prepare in a writes x, which T1 read, and is refused at
    once; T1 commits. (The old second read check refused T2 too, one round trip later:
    this checks that the read intent does it, with no such round.)"""
    parts, x, y = await _two_parts(target)
    a, b = parts.engines
    try:
        va, vb = await _views(parts)
        t1, t2 = a.new_txn_id(), a.new_txn_id()
        t1_parts = [(a, w.request(a, va, {x}, {}, t1)), (b, w.request(b, vb, set(), {y: b"1"}, t1))]
        # T2's write part first: its refusal is the one raised (its read part in b is refused
        # too, meeting T1's write of y).
        t2_parts = [(a, w.request(a, va, set(), {x: b"2"}, t2)), (b, w.request(b, vb, {y}, {}, t2))]
        decide = parts.decisions.decide
        t1_prepared, t2_done = asyncio.Event(), asyncio.Event()

        async def held_decide(name: str, outcome: Any, txn_id: bytes, participants: Any) -> Any:
            if txn_id == t1:
                t1_prepared.set()
                await asyncio.wait_for(t2_done.wait(), DEADLINE)
            return await decide(name, outcome, txn_id, participants)

        parts.decisions.decide = held_decide  # type: ignore[method-assign]
        first = asyncio.create_task(commit_across(t1_parts, parts.decisions))
        await asyncio.wait_for(t1_prepared.wait(), DEADLINE)
        with pytest.raises(ConflictError, match=f"cross-partition transaction {t1.hex()} read"):
            await commit_across(t2_parts, parts.decisions)
        t2_done.set()
        await asyncio.wait_for(first, DEADLINE)
        assert await parts.decisions.outcome(parts.decisions.name(t1)) == "committed"
        assert await parts.decisions.outcome(parts.decisions.name(t2)) == "aborted"
        for engine in parts.engines:
            await engine.resolve()
        assert await w.audit(parts, 2) == [w.START, 1]  # T1's y, not T2's x
    finally:
        await parts.close()


async def test_write_skew_with_crossed_prepares_commits_neither(target: Target) -> None:
    """The same two transactions, their prepares crossed: T1's read-only intent lands in a
    and T2's in b before either prepares its write. Each write prepare then meets the
    other's reads and is refused: both abort, nothing is written."""
    parts, x, y = await _two_parts(target)
    a, b = parts.engines
    try:
        va, vb = await _views(parts)
        t1, t2 = a.new_txn_id(), a.new_txn_id()
        reads_in = {t1: asyncio.Event(), t2: asyncio.Event()}
        writes_in = {t1: asyncio.Event(), t2: asyncio.Event()}
        prepare_a, prepare_b, decide = a.prepare, b.prepare, parts.decisions.decide

        async def crossed(prepare: Any, request: CommitRequest, decision: str) -> int:
            done = writes_in if request.writes else reads_in
            if request.writes:  # a write prepare waits for both read-only intents
                await asyncio.wait_for(asyncio.gather(*(e.wait() for e in reads_in.values())), DEADLINE)
            try:
                return int(await prepare(request, decision))
            finally:
                done[request.txn_id].set()

        async def after_both_writes(name: str, outcome: Any, txn_id: bytes, participants: Any) -> Any:
            # Neither decides before both write prepares met the other's reads (the first
            # to abort would otherwise let the other's prepare through: one commits).
            await asyncio.wait_for(asyncio.gather(*(e.wait() for e in writes_in.values())), DEADLINE)
            return await decide(name, outcome, txn_id, participants)

        a.prepare = lambda r, d: crossed(prepare_a, r, d)  # type: ignore[method-assign]
        b.prepare = lambda r, d: crossed(prepare_b, r, d)  # type: ignore[method-assign]
        parts.decisions.decide = after_both_writes  # type: ignore[method-assign]
        t1_parts = [(a, w.request(a, va, {x}, {}, t1)), (b, w.request(b, vb, set(), {y: b"1"}, t1))]
        t2_parts = [(b, w.request(b, vb, {y}, {}, t2)), (a, w.request(a, va, set(), {x: b"2"}, t2))]
        results = await asyncio.gather(
            commit_across(t1_parts, parts.decisions), commit_across(t2_parts, parts.decisions), return_exceptions=True
        )
        assert all(isinstance(r, ConflictError) for r in results), results
        assert f"cross-partition transaction {t2.hex()} read" in str(results[0])
        assert f"cross-partition transaction {t1.hex()} read" in str(results[1])
        a.prepare, b.prepare = prepare_a, prepare_b  # type: ignore[method-assign]
        parts.decisions.decide = decide  # type: ignore[method-assign]
        for engine in parts.engines:
            await engine.resolve()
            assert not (await engine.refresh()).intents
        assert await w.audit(parts, 2) == [w.START, w.START]
    finally:
        await parts.close()


async def test_a_partition_only_read_and_split_meanwhile_refuses_the_commit(target: Target) -> None:
    """Review finding 1: T1 reads a (partition 0000), the partition is split and T2
    increments a in its successor; T1 then writes a+1 (routed to the successor) and z.
    The retired partition, which T1 only read, gets a read-only intent whose prepare
    meets the seal: T1 is refused, and a keeps T2's increment only once."""
    async with target.open(split_keys=[b"m"], values="msgpack") as db:
        await db.put(b"a", 0)
        await db.put(b"z", 0)
        t1 = db.transaction()
        seen = await t1.get(b"a")
        await db.split(b"g")
        async with db.transaction() as t2:
            t2.put(b"a", await t2.get(b"a") + 1)
        t1.put(b"a", seen + 1)
        t1.put(b"z", 1)
        with pytest.raises(PartitionMovedError):
            await t1.commit()
        assert await db.get_many([b"a", b"z"]) == [1, 0]
        # Retried, it reads the successor and commits on top of T2's increment.
        await db.transact(_increment)
        assert await db.get_many([b"a", b"z"]) == [2, 1]


async def _increment(tx: kvstore.Transaction) -> None:
    tx.put(b"a", await tx.get(b"a") + 1)
    tx.put(b"z", 1)


def test_an_intent_with_reads_is_format_5_and_old_rows_read_as_holding_no_reads() -> None:
    ref = SegmentRef("s", b"a", b"b", 2, 10, 3, 3, 3, inline=b"x")
    writer = Intent(b"t" * 16, 3, 1.0, "txn/74", (b"a", b"b"), ref)
    reader = Intent(b"u" * 16, 3, 1.0, "txn/75", (), None, (b"c",), ((b"d", b"f"), (b"x", None)))
    assert FORMAT == 5
    old = Manifest(store_id="x", version=3, created=0.0, intents=(writer,))
    new = Manifest(store_id="x", version=3, created=0.0, intents=(writer, reader))
    assert encode_manifest(old)[4:6] == (4).to_bytes(2, "little")  # no reads: as before
    assert encode_manifest(new)[4:6] == (5).to_bytes(2, "little")
    assert decode_manifest(encode_manifest(new), "m") == new
    assert decode_manifest(encode_manifest(old), "m").intents[0].reads == ()
    assert reader.reads_meet([b"c"], ()) and reader.reads_meet([b"e"], ()) and reader.reads_meet([b"y"], ())
    assert not reader.reads_meet([b"b", b"f"], ()) and reader.reads_meet((), [(b"a", b"d\0")])
    assert not reader.meets([b"c", b"e"], [(b"", None)])  # a read-only intent writes nothing
    assert not writer.reads_meet([b"a"], [(b"", None)])
    # docs/format.md, "Intent row": a read-only intent's row, golden bytes.
    row = Intent(b"\x01\x01", 7, 0.0, "txn/0101", (), None, (b"c",), ((b"d", b"f"),))
    golden = "98c402010107cb0000000000000000a874786e2f3031303190c091c401639192c40164c40166"
    assert msgpack.packb(_intent_row(row), use_bin_type=True).hex() == golden
    assert _intent_of(msgpack.unpackb(bytes.fromhex(golden), raw=False)) == row


async def test_a_commit_returns_the_version_of_a_partition_it_wrote_not_of_one_it_only_read(tmp_path: Path) -> None:
    """Review 4, finding 5: a partition only read prepares a read-only intent, and its
    (higher) version was returned as the commit's."""
    async with kvstore.open(f"file://{tmp_path}/s", split_keys=[b"m"], values="bytes", create=True) as db:
        for i in range(5):
            await db.put(b"a", b"%d" % i)
        async with db.transaction() as tx:
            await tx.get(b"a")
            tx.put(b"z", b"T")
        versions = {p.start: p.version for p in await db.partitions()}
        assert tx.committed_version == versions[b"m"] < versions[b""]
