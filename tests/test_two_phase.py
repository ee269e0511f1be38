"""Cross-partition transactions (issue 18, `_two_phase.py`) at the engine level: engines on
sub-prefixes of one store root, a bank of accounts spread over them.

What must hold: a transfer across partitions is seen wholly or not at all (readers
validate, as read-only transactions across partitions do); an undecided intent is
invisible and an aborted one never becomes visible; a coordinator that dies at any step
leaves a transaction that is committed or aborted, never both, and resolved by others;
every lost answer is decided by evidence.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import random
import time
from pathlib import Path
from typing import Any

import crash_workers
import pytest
import two_phase_workers as w
from servers import s3_client
from targets import LATER, Target, engines_of, fault_injecting

import kvstore
from kvstore import CommitOutcomeUnknownError, ConflictError, RetryPolicy, StoreOptions
from kvstore import _two_phase as two_phase
from kvstore._manifest import FORMAT, Intent, Manifest, SegmentRef, decode_manifest, encode_manifest
from kvstore._two_phase import commit_across
from kvstore.testing.faults import FaultInjectingStore, SimulatedCrash

ACCOUNTS = 12


async def _bank(target: Target, count: int, **kwargs: object) -> w.Parts:
    parts = await w.open_parts(target.url, target.kwargs, count, **kwargs)  # type: ignore[arg-type]
    await w.open_bank(parts, ACCOUNTS)
    return parts


async def _prepared(parts: w.Parts, first: bytes, second: bytes) -> tuple[bytes, str]:
    """A transaction writing account 0 (partition 0) and account 1 (partition 1), prepared in
    both and undecided: its id and its decision's name."""
    a, b = parts.engines
    txn = a.new_txn_id()
    name = parts.decisions.name(txn)
    await a.prepare(w.request(a, None, set(), {w.account(0): first}, txn), name)
    await b.prepare(w.request(b, None, set(), {w.account(1): second}, txn), name)
    return txn, name


async def _final_balances(target: Target, count: int) -> list[int]:
    """The balances as a fresh process sees them, once every intent is resolved."""
    parts = await w.open_parts(target.url, target.kwargs, count)
    try:
        for engine in parts.engines:
            await engine.refresh()
            await engine.resolve()
        assert all(not e.manifest.intents for e in parts.engines)
        balances = await w.audit(parts, ACCOUNTS)
        assert balances is not None  # nothing commits now: validation must pass
        return balances
    finally:
        await parts.close()


# --------------------------------------------------------------------------- atomic visibility


@pytest.mark.parametrize("count", [2, 4])
async def test_concurrent_transfers_keep_the_sum_for_every_validated_reader(durable_target: Target, count: int) -> None:
    """Many tasks transfer between accounts of different partitions while readers audit:
    every audit that validates sees the opening total (a partial transfer would not), and
    so does the end state."""
    target = durable_target
    parts = await _bank(target, count)
    rng = random.Random(count)
    deadline = time.monotonic() + 120
    done = asyncio.Event()
    audits: list[int] = []
    crossing = 0

    async def writer() -> None:
        nonlocal crossing
        for _ in range(12):
            src = rng.randrange(ACCOUNTS)
            dst = (src + rng.randrange(1, ACCOUNTS)) % ACCOUNTS
            crossing += src % count != dst % count
            await w.transfer(parts, src, dst, rng.randrange(1, 30), deadline=deadline)

    async def reader() -> None:
        # Until the writers are done, and at least one audit validated (a loaded machine may
        # tear every audit while they run; once they stop, the next one validates).
        while not (done.is_set() and audits):
            assert time.monotonic() < deadline, "no audit validated"
            balances = await w.audit(parts, ACCOUNTS)
            if balances is not None:
                audits.append(sum(balances))
            await asyncio.sleep(0)

    try:
        readers = [asyncio.create_task(reader()) for _ in range(3)]
        await asyncio.gather(*(writer() for _ in range(8)))
        done.set()
        await asyncio.gather(*readers)
        # Every transaction is decided, and each coordinator resolved in the background
        # what the partitions' batches did not: no intent is left anywhere.
        for engine in parts.engines:
            await engine.background_idle()
            assert not (await engine.refresh()).intents
    finally:
        await parts.close()
    assert crossing >= 40  # most transfers span partitions
    assert audits and set(audits) == {ACCOUNTS * w.START}
    assert sum(await _final_balances(target, count)) == ACCOUNTS * w.START


async def test_transfers_from_several_processes(durable_target: Target) -> None:
    """Three processes transfer across two partitions at once; the total holds."""
    target = durable_target
    await (await _bank(target, 2)).close()
    ctx = multiprocessing.get_context("spawn")
    children = [
        ctx.Process(target=w.run_transfers, args=(target.url, target.kwargs, 2, ACCOUNTS, seed, 15))
        for seed in range(3)
    ]
    for child in children:
        child.start()
    for child in children:
        child.join(180)
        assert child.exitcode == 0
    balances = await _final_balances(target, 2)
    assert sum(balances) == ACCOUNTS * w.START
    assert balances != [w.START] * ACCOUNTS  # the transfers did happen


async def test_transfers_under_faults_and_a_kill(durable_target: Target, tmp_path: Path) -> None:
    """The campaign's fault matrix on every request of three transferring processes, one of
    them SIGKILLed mid-run, while this process audits: every validated audit and the end
    state keep the total (a torn, doubled or lost transfer would change it)."""
    target = durable_target
    await (await _bank(target, 3)).close()
    ctx = multiprocessing.get_context("spawn")
    journals = [tmp_path / f"journal-{n}" for n in range(3)]
    children = [
        ctx.Process(target=w.run_faulty_transfers, args=(target.url, target.kwargs, 3, ACCOUNTS, n, 40, str(j)))
        for n, j in enumerate(journals)
    ]
    for child in children:
        child.start()
    parts = await w.open_parts(target.url, target.kwargs, 3)
    audits: list[int] = []
    try:
        deadline = time.monotonic() + 120
        victim = children[0]
        while not (journals[0].exists() and len(journals[0].read_text().split()) >= 8):
            assert victim.is_alive() and time.monotonic() < deadline, "the victim never got going"
            balances = await w.audit(parts, ACCOUNTS)
            if balances is not None:
                audits.append(sum(balances))
            await asyncio.sleep(0.01)  # pacing between audits; the loop waits for the journal
        w.kill(victim.pid)  # type: ignore[arg-type]
        while any(c.is_alive() for c in children[1:]):
            assert time.monotonic() < deadline, "the workers did not finish"
            balances = await w.audit(parts, ACCOUNTS)
            if balances is not None:
                audits.append(sum(balances))
            await asyncio.sleep(0.01)
    finally:
        for child in children:
            child.join(30)
        await parts.close()
    assert children[0].exitcode == -9 and [c.exitcode for c in children[1:]] == [0, 0]
    outcomes = [line for j in journals for line in j.read_text().split()]
    assert outcomes.count("ok") >= 20
    assert audits and set(audits) == {ACCOUNTS * w.START}
    assert sum(await _final_balances(target, 3)) == ACCOUNTS * w.START


# --------------------------------------------------------------------------- intents


async def test_an_undecided_intent_is_invisible_and_an_aborted_one_never_shows(target: Target) -> None:
    parts = await _bank(target, 2)
    a, b = parts.engines
    try:
        txn = a.new_txn_id()
        name = parts.decisions.name(txn)
        va, vb = await a.latest_view(), await b.latest_view()
        await asyncio.gather(
            a.prepare(w.request(a, va, set(), {w.account(0): b"0"}, txn), name),
            b.prepare(w.request(b, vb, set(), {w.account(1): b"200"}, txn), name),
        )
        assert [len(a.manifest.intents), len(b.manifest.intents)] == [1, 1]
        assert await w.audit(parts, ACCOUNTS) == [w.START] * ACCOUNTS  # undecided: invisible, validated
        # A writer of the intent's key waits for the decision (a conflict, retried by transact).
        with pytest.raises(ConflictError, match="undecided"):
            await a.commit(w.request(a, None, set(), {w.account(0): b"7"}))
        assert await parts.decisions.decide(name, "aborted", txn, []) == "aborted"
        assert await parts.decisions.decide(name, "committed", txn, []) == "aborted"  # create-once
        assert await w.audit(parts, ACCOUNTS) == [w.START] * ACCOUNTS
        assert await a.resolve() and await b.resolve()
        assert not a.manifest.intents and not b.manifest.intents
    finally:
        await parts.close()
    assert await _final_balances(target, 2) == [w.START] * ACCOUNTS


async def test_a_batch_looks_up_only_the_decisions_it_needs(target: Target) -> None:
    """A batch that meets no live intent sends no GET of the intent's decision (every CAS
    of a partition holding a foreign intent used to: an undecided decision answers 404,
    which cannot be cached); a batch meeting it looks it up and waits for it. (One older
    than intent_timeout is looked up by any batch: test_an_abandoned_intent_is_aborted...)"""
    looked_up: list[str] = []

    class Counting(FaultInjectingStore):
        async def get(self, name: str, **kw: Any) -> Any:
            looked_up.append(name)
            return await super().get(name, **kw)

    parts = await _bank(target, 2, wrap_root=Counting)
    a, _ = parts.engines
    try:
        txn = a.new_txn_id()
        name = parts.decisions.name(txn)
        await a.prepare(w.request(a, None, set(), {w.account(0): b"1"}, txn), name)
        looked_up.clear()
        for n in range(3):  # other keys of the intent's partition
            await a.commit(w.request(a, None, set(), {w.account(2): str(n).encode()}))
        assert name not in looked_up and len(a.manifest.intents) == 1
        with pytest.raises(ConflictError, match="undecided"):
            await a.commit(w.request(a, None, set(), {w.account(0): b"7"}))
        assert looked_up.count(name) == 1
        # Decided and known (cached) here: the next batch resolves it, with no GET.
        assert await parts.decisions.decide(name, "aborted", txn, []) == "aborted"
        looked_up.clear()
        await a.commit(w.request(a, None, set(), {w.account(2): b"9"}))
        assert name not in looked_up and not a.manifest.intents
    finally:
        await parts.close()


async def test_history_shows_a_prepare_as_a_prepare_and_a_resolve_as_a_resolve(target: Target) -> None:
    """A CAS that only prepared a cross-partition transaction committed nothing (the
    transaction may yet abort): `history` says "prepare", and "resolve" for a resolve of
    its own. It said "commit" for both."""
    parts = await _bank(target, 2)
    a, b = parts.engines
    try:
        txn, name = await _prepared(parts, b"1", b"199")
        assert await parts.decisions.decide(name, "committed", txn, []) == "committed"
        assert await a.resolve() and await b.resolve()
        for engine in (a, b):
            infos = [kvstore.CommitInfo.from_record(r) for r in engine.manifest.log[-3:]]
            assert [i.kind for i in infos] == ["commit", "prepare", "resolve"]
            assert [i.key_count for i in infos[1:]] == [1, 1]
        # A prepare riding a batch of another commit: a "commit" of that one transaction.
        t = a.new_txn_id()
        await asyncio.gather(
            a.prepare(w.request(a, None, set(), {w.account(2): b"2"}, t), parts.decisions.name(t)),
            a.commit(w.request(a, None, set(), {w.account(4): b"4"})),
        )
        info = kvstore.CommitInfo.from_record(a.manifest.log[-1])
        assert (info.kind, info.transactions) == ("commit", 1)
    finally:
        await parts.close()


async def test_a_store_copied_to_another_prefix_keeps_its_cross_partition_commits(s3_bucket: tuple[str, str]) -> None:
    """Review 4, finding 3: an intent records its decision's full name, prefix included. A
    store moved to another prefix looked the decision up where the store was made,
    found none and aborted it: a transaction resolved in one partition before the copy
    stayed there and vanished from the other. Decisions are looked up under the copy's root."""
    endpoint, bucket = s3_bucket
    options = StoreOptions(intent_timeout=0.001)  # every intent is old enough to settle at once
    async with kvstore.open(
        f"s3://{bucket}/old", split_keys=[b"m"], values="bytes", options=options, endpoint_url=endpoint, create=True
    ) as db:
        await db.put(b"a", b"old")
        await db.put(b"x", b"old")
        (_, ea), (_, eb) = db._router.parts()
        txn = ea.new_txn_id()
        name = db._router.decisions().name(txn)
        await ea.prepare(w.request(ea, None, set(), {b"a": b"new"}, txn), name)
        await eb.prepare(w.request(eb, None, set(), {b"x": b"new"}, txn), name)
        assert await db._router.decisions().decide(name, "committed", txn, []) == "committed"
        assert await ea.resolve()  # the coordinator dies before resolving partition b
    async with s3_client(endpoint) as s3:  # moved, byte for byte, to another prefix
        listed = await s3.list_objects_v2(Bucket=bucket, Prefix="old/")
        assert not listed.get("IsTruncated")
        for obj in listed["Contents"]:
            key = "new/" + obj["Key"][len("old/") :]
            await s3.copy_object(Bucket=bucket, Key=key, CopySource={"Bucket": bucket, "Key": obj["Key"]})
            await s3.delete_object(Bucket=bucket, Key=obj["Key"])
    async with kvstore.open(f"s3://{bucket}/new", values="bytes", options=options, endpoint_url=endpoint) as copy:
        await copy.put(b"y", b"w")  # partition b's next batch settles the old intent
        assert await copy.get_many([b"a", b"x"]) == [b"new", b"new"]


async def test_a_handle_remembers_a_bounded_number_of_outcomes(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Review 4, finding 4: every outcome a handle learnt stayed in memory for good. The
    least recently learnt are forgotten past KNOWN_OUTCOMES (a later lookup GETs again)."""
    monkeypatch.setattr(two_phase, "KNOWN_OUTCOMES", 2)
    parts = await w.open_parts(str(tmp_path / "db"), {}, 2)
    try:
        d = parts.decisions
        txns = [parts.engines[0].new_txn_id() for _ in range(3)]
        for txn in txns:
            assert await d.decide(d.name(txn), "committed", txn, []) == "committed"
        assert [d.cached(d.name(t)) for t in txns] == [None, "committed", "committed"]
        assert await d.outcome(d.name(txns[0])) == "committed"  # read again
    finally:
        await parts.close()


async def test_prepares_ride_the_group_commit_batch(target: Target) -> None:
    """Prepares queued together with ordinary commits go out in one manifest CAS; within
    it, an intent shares no key with another write of the batch (the first comes first)."""
    parts = await _bank(target, 2)
    a, _ = parts.engines
    try:
        before = a.statistics()["commits"]
        txns = [a.new_txn_id() for _ in range(10)]
        prepares = [
            a.prepare(w.request(a, None, set(), {f"p{n}".encode(): b"x"}, t), parts.decisions.name(t))
            for n, t in enumerate(txns)
        ]
        plain = [a.commit(w.request(a, None, set(), {f"c{n}".encode(): b"y"})) for n in range(10)]
        clash_txn = a.new_txn_id()
        clashing = [
            a.prepare(w.request(a, None, set(), {b"k": b"intent"}, clash_txn), parts.decisions.name(clash_txn)),
            a.commit(w.request(a, None, set(), {b"k": b"plain"})),  # after the prepare: refused
            a.commit(w.request(a, None, set(), {b"j": b"plain"})),
        ]
        outcomes = await asyncio.gather(*prepares, *plain, *clashing, return_exceptions=True)
        assert a.statistics()["commits"] == before + 1  # one CAS for all of them
        assert isinstance(outcomes[21], ConflictError) and "committing with it" in str(outcomes[21])
        versions = {o for n, o in enumerate(outcomes) if n != 21}
        assert versions == {a.manifest.version}
        assert len(a.manifest.intents) == 11
        # The other way round: a plain write first, then a prepare of the same key.
        t = a.new_txn_id()
        outcomes = await asyncio.gather(
            a.commit(w.request(a, None, set(), {b"m": b"plain"})),
            a.prepare(w.request(a, None, set(), {b"m": b"intent"}, t), parts.decisions.name(t)),
            return_exceptions=True,
        )
        assert isinstance(outcomes[0], int) and isinstance(outcomes[1], ConflictError)
    finally:
        await parts.close()


async def test_a_committed_intent_is_visible_before_and_after_resolution(target: Target) -> None:
    parts = await _bank(target, 2)
    a, b = parts.engines
    try:
        txn = a.new_txn_id()
        name = parts.decisions.name(txn)
        versions = await asyncio.gather(
            a.prepare(w.request(a, None, set(), {w.account(0): b"70"}, txn), name),
            b.prepare(w.request(b, None, set(), {w.account(1): b"130"}, txn), name),
        )
        before = await w.audit(parts, ACCOUNTS)  # undecided
        assert await parts.decisions.decide(name, "committed", txn, []) == "committed"
        # Real-time order: a view taken after the decision sees it, though no manifest changed.
        va = await a.latest_view()
        assert va.version == versions[0] and await va.get(w.account(0)) == b"70"
        # A read-only validation over a committed, unresolved intent fails (a view may have
        # read before the decision); it passes once resolved.
        assert await a.changed_since(versions[0], [w.account(0)], [])
        assert await a.resolve() and await b.resolve()
        assert not await a.changed_since(a.manifest.version, [w.account(0)], [])
        after = await w.audit(parts, ACCOUNTS)
    finally:
        await parts.close()
    assert before == [w.START] * ACCOUNTS
    assert after is not None and after[:2] == [70, 130] and sum(after) == ACCOUNTS * w.START


async def test_a_read_before_the_decision_conflicts_after_resolution(target: Target) -> None:
    """A transaction that read an intent's key while it was undecided (it saw the old value)
    must not commit after the intent was decided "committed" and resolved: the resolving
    CAS's record lists the intent's keys."""
    parts = await _bank(target, 2)
    a, b = parts.engines
    try:
        txn, name = await _prepared(parts, b"70", b"130")
        view = await a.latest_view()
        assert await view.get(w.account(0)) == b"100"  # undecided: the old value
        await parts.decisions.decide(name, "committed", txn, [])
        assert await a.resolve()
        stale = w.request(a, view, {w.account(0)}, {w.account(2): b"100"})  # copies what it read
        with pytest.raises(ConflictError):
            await a.commit(stale)
    finally:
        await parts.close()
    assert (await _final_balances(target, 2))[:3] == [70, 130, w.START]


async def test_gc_and_verify_keep_and_check_an_intents_segment(durable_target: Target) -> None:
    """An intent's segment written as an object is live for GC (the coordinator may still
    decide "committed") and checked by verify."""
    options = StoreOptions(inline_segment_bytes=0, auto_compact=False, commit_log_length=2)
    parts = await _bank(durable_target, 2, options=options)
    a, b = parts.engines
    try:
        txn, name = await _prepared(parts, b"70", b"130")
        segment = a.manifest.intents[0].segment
        assert segment.inline is None
        for n in range(3):  # the prepare's record leaves the log: only the intent names its segment
            await a.commit(w.request(a, None, set(), {w.account(2): str(n).encode()}))
        assert all(r.segment_id != segment.id for r in a.manifest.log)
        real = a.wall_clock
        for later in (LATER, 2 * LATER):  # mark, then delete what was marked (as gc_later does)
            a.wall_clock = lambda later=later: real() + later  # type: ignore[misc]
            await a.gc(grace_period=None, dry_run=False)
        a.wall_clock = real
        report = await a.verify()
        # The manifest, every segment and the intent's segment were read.
        assert report.ok and report.objects_checked == 2 + len(a.manifest.segments)
        await a.objects.head(a.layout.segment(segment.id))  # still there
        await parts.decisions.decide(name, "committed", txn, [])
        assert await (await a.latest_view()).get(w.account(0)) == b"70"
    finally:
        await parts.close()


async def test_an_abandoned_intent_is_aborted_after_the_timeout(durable_target: Target) -> None:
    """A coordinator that prepared and vanished: a writer meeting the intent after
    `intent_timeout` aborts it; the late coordinator then finds "aborted"."""
    parts = await _bank(durable_target, 2)  # the default intent_timeout: 5 s
    a, b = parts.engines
    try:
        txn, name = await _prepared(parts, b"1", b"199")
        with pytest.raises(ConflictError):  # young: the writer waits
            await a.commit(w.request(a, None, {w.account(0)}, {w.account(0): b"5"}))
    finally:
        await parts.close()
    parts = await w.open_parts(durable_target.url, durable_target.kwargs, 2, options=StoreOptions(intent_timeout=0.2))
    a, b = parts.engines
    try:
        await asyncio.sleep(0.3)  # past the timeout (what is waited for is the clock itself)
        await a.commit(w.request(a, None, set(), {w.account(2): b"5"}))  # any commit of the partition
        assert parts.decisions.cached(name) == "aborted"
        assert not a.manifest.intents and len(b.manifest.intents) == 1
        assert await b.resolve() and not b.manifest.intents
    finally:
        await parts.close()
    # The late coordinator (a process that knows nothing of the abort) tries to commit:
    # its create meets the aborter's object and reads it back. Never both.
    late = await w.open_parts(durable_target.url, durable_target.kwargs, 2)
    try:
        assert await late.decisions.decide(name, "committed", txn, []) == "aborted"
    finally:
        await late.close()
    balances = await _final_balances(durable_target, 2)
    assert balances[:3] == [w.START, w.START, 5]


# --------------------------------------------------------------------------- crash points


@pytest.mark.parametrize("step", w.CRASH_STEPS)
async def test_the_coordinator_killed_at_a_2pc_step(durable_target: Target, tmp_path: Path, step: str) -> None:
    """SIGKILL the coordinator of a transfer of 30 from account 0 (partition 0) to account 1
    (partition 1): before its decision it is aborted (after the timeout, by a writer that
    meets it); after it, readers see it committed, and commits resolve it."""
    target = durable_target
    await (await _bank(target, 2)).close()
    await crash_workers.kill_when_stalled(
        w.transfer_then_stall, target.url, target.kwargs, step, marker=tmp_path / "stalled"
    )
    parts = await w.open_parts(target.url, target.kwargs, 2, options=StoreOptions(intent_timeout=0.2))
    a, b = parts.engines
    try:
        assert [len(a.manifest.intents), len(b.manifest.intents)] == [1, 1]
        name = a.manifest.intents[0].decision
        seen = await w.audit(parts, ACCOUNTS)
        if step == "prepared":
            assert seen == [w.START] * ACCOUNTS  # undecided: invisible (and validated)
            await asyncio.sleep(0.3)  # past intent_timeout
            # A transfer meeting the intent aborts it, then commits on its retry.
            await w.transfer(parts, 0, 2, 10, deadline=time.monotonic() + 30)
            assert parts.decisions.cached(name) == "aborted"
        else:
            # Committed, unresolved: the audit shows it and validates (the views showed it:
            # no writer need resolve it first).
            assert seen == [w.START - 30, w.START + 30] + [w.START] * (ACCOUNTS - 2)
            va, vb = await a.latest_view(), await b.latest_view()
            assert (await va.get(w.account(0)), await vb.get(w.account(1))) == (b"70", b"130")
            await w.transfer(parts, 0, 2, 10, deadline=time.monotonic() + 30)  # its batch resolves, if not done
            assert not a.manifest.intents
            assert parts.decisions.cached(name) == "committed"
    finally:
        await parts.close()
    balances = await _final_balances(target, 2)
    moved = 0 if step == "prepared" else 30
    assert balances[:3] == [w.START - moved - 10, w.START + moved, w.START + 10]
    assert sum(balances) == ACCOUNTS * w.START


async def test_a_lost_answer_to_the_decision_create_is_read_back(target: Target) -> None:
    stores, wrap_root = fault_injecting()

    parts = await _bank(target, 2, wrap_root=wrap_root)
    try:
        stores[0].script("put_if_absent", "lost_response")
        await w.transfer_once(parts, 0, 1, 30)
        assert stores[0].injected["put_if_absent:lost_response"] == 1
        assert parts.root_objects.own_creates_found == 1  # the 412 on the retry was our own create
    finally:
        await parts.close()
    assert (await _final_balances(target, 2))[:2] == [70, 130]


async def test_the_coordinator_dies_when_the_decision_create_answer_is_lost(target: Target) -> None:
    """The status create is applied, its answer lost, and the coordinator dies there (it
    never learns it committed, never resolves): readers see the transfer committed, and the
    partitions' next commits (or `resolve`) apply it, once."""
    stores, wrap_root = fault_injecting()
    parts = await _bank(target, 2, wrap_root=wrap_root)
    try:
        stores[0].script("put_if_absent", "crash_after_apply")
        with pytest.raises(SimulatedCrash):
            await w.transfer_once(parts, 0, 1, 30)
        assert stores[0].injected["put_if_absent:crash_after_apply"] == 1
    finally:
        with contextlib.suppress(SimulatedCrash):  # the dead coordinator's root store
            await parts.close()
    parts = await w.open_parts(target.url, target.kwargs, 2)
    a, b = parts.engines
    try:
        assert [len(a.manifest.intents), len(b.manifest.intents)] == [1, 1]  # nobody resolved them
        name = a.manifest.intents[0].decision
        # Committed, unresolved: the audit shows it and validates (the views showed it).
        assert await w.audit(parts, ACCOUNTS) == [w.START - 30, w.START + 30] + [w.START] * (ACCOUNTS - 2)
        assert parts.decisions.cached(name) == "committed"
        va, vb = await a.latest_view(), await b.latest_view()
        assert (await va.get(w.account(0)), await vb.get(w.account(1))) == (b"70", b"130")
        await w.transfer(parts, 0, 2, 10, deadline=time.monotonic() + 30)  # its batch resolves, if not done
        assert not a.manifest.intents
    finally:
        await parts.close()
    balances = await _final_balances(target, 2)
    assert balances[:3] == [w.START - 30 - 10, w.START + 30, w.START + 10]
    assert sum(balances) == ACCOUNTS * w.START


async def test_a_split_during_cross_partition_commits_keeps_every_transfer_exactly_once(
    durable_target: Target,
) -> None:
    """Through the face: two handles (independent routers, like two processes) move money
    between accounts of different partitions, most transfers two-phase commits, while one
    of them splits both partitions. Every acknowledged transfer is applied exactly once
    (each balance is its opening one plus the acknowledged moves), nothing else is."""
    t = durable_target
    keys = [f"acct/{i:02d}" for i in range(ACCOUNTS)]
    boundary = "acct/06"
    async with t.open(split_keys=[boundary.encode()], values="msgpack") as db, t.open(values="msgpack") as other:
        async with db.transaction() as tx:
            for key in keys:
                tx.put(key, w.START)
        rng = random.Random(18)
        moved = dict.fromkeys(keys, 0)
        crossing = 0

        async def move(tx: kvstore.Transaction, a: str, b: str, amount: int) -> None:
            tx.put(a, await tx.get(a) - amount)
            tx.put(b, await tx.get(b) + amount)

        async def transfers(handle: kvstore.Store) -> None:
            nonlocal crossing
            for _ in range(12):
                a, b = rng.sample(keys, 2)
                amount = rng.randint(1, 20)
                await handle.transact(move, a, b, amount)
                moved[a] -= amount
                moved[b] += amount
                crossing += (a < boundary) != (b < boundary)
                transferred.set()

        transferred = asyncio.Event()

        async def splits() -> None:
            await transferred.wait()  # some transfers first, then both splits among them
            await db.split(b"acct/03")
            await db.split(b"acct/09")

        await asyncio.gather(*(transfers(h) for h in (db, db, other, other)), splits())
        assert [p.start for p in await db.partitions()] == [b"", b"acct/03", b"acct/06", b"acct/09"]
        for handle in (db, other):
            snap = await handle.snapshot()
            assert {k: await snap.get(k) for k in keys} == {k: w.START + moved[k] for k in keys}
        assert crossing >= 10  # two-phase commits, not only single-partition ones
        assert (await db.verify()).ok


async def test_a_split_waits_for_an_undecided_intent_of_its_partition(target: Target) -> None:
    """A split of a partition holding a prepared, undecided intent: sealing it then would
    copy its pairs without the intent, and a "committed" decided later would be lost in the
    new partitions. The split waits for the decision, then copies the committed writes."""
    async with target.open(split_keys=[b"m"], options=StoreOptions(intent_timeout=60.0)) as db:
        await db.put(b"a", b"old-a")
        await db.put(b"x", b"old-x")
        a, b = engines_of(db)
        decisions = db._router.decisions()  # white-box: the store's decisions
        txn = a.new_txn_id()
        name = decisions.name(txn)
        await a.prepare(w.request(a, None, set(), {b"c": b"new-c"}, txn), name)
        await b.prepare(w.request(b, None, set(), {b"x": b"new-x"}, txn), name)
        split = asyncio.ensure_future(db.split(b"f"))  # the partition holding the intent on b"c"
        done, _ = await asyncio.wait({split}, timeout=0.3)
        assert not done  # waiting for the decision (the timeout is a minute away)
        assert await decisions.decide(name, "committed", txn, [a.layout.prefix, b.layout.prefix]) == "committed"
        await asyncio.wait_for(split, 60)
        assert [p.start for p in await db.partitions()] == [b"", b"f", b"m"]
        snap = await db.snapshot()
        assert [await snap.get(k) for k in (b"a", b"c", b"x")] == [b"old-a", b"new-c", b"new-x"]


async def test_a_snapshot_shows_a_commit_decided_after_it_in_no_partition(target: Target) -> None:
    """Found by the partitioned campaign (bank audits summing to 770-806 of 800): a snapshot
    of several partitions taken while a transaction had prepared in one partition only. Its
    views are one instant at which it was undecided; it is decided "committed" before the
    snapshot reads. The snapshot must show it nowhere: not in the partition whose view holds
    its intent (a decision looked up at read time) while the other's view predates it."""
    async with target.open(split_keys=[b"m"]) as db:
        await db.put(b"a", b"old-a")
        await db.put(b"x", b"old-x")
        a, b = engines_of(db)
        decisions = db._router.decisions()  # white-box: the store's decisions
        txn = a.new_txn_id()
        name = decisions.name(txn)
        await b.prepare(w.request(b, None, set(), {b"x": b"new-x"}, txn), name)
        snap = await db.snapshot()  # partition "a..m" holds no intent yet, "m.." an undecided one
        await a.prepare(w.request(a, None, set(), {b"a": b"new-a"}, txn), name)
        assert await decisions.decide(name, "committed", txn, [a.layout.prefix, b.layout.prefix]) == "committed"
        assert [await snap.get(b"a"), await snap.get(b"x")] == [b"old-a", b"old-x"]
        later = await db.snapshot()
        assert [await later.get(b"a"), await later.get(b"x")] == [b"new-a", b"new-x"]


async def test_a_decision_create_that_never_lands_leaves_nothing_applied(target: Target) -> None:
    """The decision cannot be created (the store keeps timing out): the coordinator reports
    the outcome unknown, and the intents, undecided, stay invisible until aborted."""
    stores, wrap_root = fault_injecting()

    options = StoreOptions(intent_timeout=0.2, retry=RetryPolicy(max_attempts=2, base_delay=0.001))
    parts = await _bank(target, 2, wrap_root=wrap_root, options=options)
    try:
        stores[0].script("put_if_absent", *(["timeout"] * 20))
        stores[0].script("get", *(["error"] * 20))
        with pytest.raises(CommitOutcomeUnknownError, match="neither created nor read"):
            await w.transfer_once(parts, 0, 1, 30)
    finally:
        await parts.close()
    parts = await w.open_parts(target.url, target.kwargs, 2, options=StoreOptions(intent_timeout=0.2))
    try:
        assert await w.audit(parts, ACCOUNTS) == [w.START] * ACCOUNTS
    finally:
        await parts.close()


async def test_a_lost_answer_to_a_prepare_is_decided_by_the_log(target: Target) -> None:
    stores, wrap = fault_injecting()

    parts = await _bank(target, 2, wrap=wrap)
    try:
        stores[1].script("put_if_match", "lost_response")  # partition 1's prepare CAS
        await w.transfer_once(parts, 0, 1, 30)
        assert stores[1].injected["put_if_match:lost_response"] == 1
        assert parts.engines[1].statistics()["ambiguous_commits_resolved"] == 1
    finally:
        await parts.close()
    assert (await _final_balances(target, 2))[:2] == [70, 130]


async def test_a_conflicting_prepare_aborts_at_once(target: Target) -> None:
    """A prepare that conflicts in one partition: the coordinator decides "aborted" at once
    (no intent waits for the timeout elsewhere) and nothing is applied."""
    parts = await _bank(target, 2)
    a, b = parts.engines
    try:
        va, vb = await a.latest_view(), await b.latest_view()
        await b.commit(w.request(b, None, set(), {w.account(1): b"500"}))  # after vb: a conflict
        txn = a.new_txn_id()
        with pytest.raises(ConflictError):
            await commit_across(
                [
                    (a, w.request(a, va, {w.account(0)}, {w.account(0): b"70"}, txn)),
                    (b, w.request(b, vb, {w.account(1)}, {w.account(1): b"130"}, txn)),
                ],
                parts.decisions,
            )
        assert await parts.decisions.outcome(parts.decisions.name(txn)) == "aborted"
    finally:
        await parts.close()
    balances = await _final_balances(target, 2)
    assert balances[:2] == [w.START, 500]


# --------------------------------------------------------------------------- the second read check


def _gets(parts: w.Parts) -> int:
    return sum(e.objects.requests["GET"] for e in parts.engines)


async def test_a_read_modify_write_across_partitions_reads_nothing_again(target: Target) -> None:
    """Each part read only keys it writes: its intent holds them from its prepare on, so the
    second read check needs no GET and the commit is the 2 prepares and the decision."""
    parts = await _bank(target, 2)
    try:
        gets = _gets(parts)
        await w.transfer_once(parts, 0, 1, 30)  # reads and writes account 0 in a, 1 in b
        # commit_across returned without yielding since: the background resolves have not begun.
        assert _gets(parts) == gets + 2  # the two views' manifest reads before the commit, no more
    finally:
        await parts.close()
    assert (await _final_balances(target, 2))[:2] == [70, 130]


async def test_a_write_to_a_read_and_written_key_after_its_prepare_is_refused(target: Target) -> None:
    """What the skipped check would catch cannot happen: once T1's prepare in a is in place,
    a commit writing the key T1 read and writes there is refused, and T1 commits."""
    parts = await _bank(target, 2)
    a, b = parts.engines
    try:
        va, vb = await a.latest_view(), await b.latest_view()
        txn = a.new_txn_id()
        a_prepared = asyncio.Event()
        late: list[BaseException | None] = []
        prepare_a, prepare_b = a.prepare, b.prepare

        async def prepare_a_then_signal(request: object, decision: str) -> int:
            version = await prepare_a(request, decision)  # type: ignore[arg-type]
            a_prepared.set()
            return version

        async def prepare_b_after_a_rival(request: object, decision: str) -> int:
            await asyncio.wait_for(a_prepared.wait(), 10)
            try:
                await a.commit(w.request(a, None, set(), {w.account(0): b"999"}))
                late.append(None)
            except ConflictError as exc:
                late.append(exc)
            return await prepare_b(request, decision)  # type: ignore[arg-type]

        a.prepare, b.prepare = prepare_a_then_signal, prepare_b_after_a_rival  # type: ignore[method-assign]
        await commit_across(
            [
                (a, w.request(a, va, {w.account(0)}, {w.account(0): b"70"}, txn)),
                (b, w.request(b, vb, {w.account(1)}, {w.account(1): b"130"}, txn)),
            ],
            parts.decisions,
        )
        assert isinstance(late[0], ConflictError)
    finally:
        await parts.close()
    assert (await _final_balances(target, 2))[:2] == [70, 130]


async def test_write_skew_between_interleaved_prepares_of_two_writing_parts_is_refused(target: Target) -> None:
    """T1 reads k0 in a and writes k2 there and k1 in b; T2 reads k1 in b and writes k3 there
    and k0 in a. Their prepares interleave (T2's intent on k0 lands in a after T1's prepare
    there): T1's intent in a holds k0, which it read, so T2's prepare there is refused, and
    T1's prepare in b, writing k1 which T2's intent read, is refused: T1 is aborted."""
    parts = await _bank(target, 2)
    a, b = parts.engines
    k0, k1, k2, k3 = (w.account(i) for i in range(4))  # k0, k2 in a; k1, k3 in b
    try:
        va, vb = await a.latest_view(), await b.latest_view()
        t1, t2 = a.new_txn_id(), a.new_txn_id()
        t2_name = parts.decisions.name(t2)
        prepare_a, prepare_b = a.prepare, b.prepare
        a_prepared = asyncio.Event()

        async def prepare_a_then_signal(request: object, decision: str) -> int:
            version = await prepare_a(request, decision)  # type: ignore[arg-type]
            a_prepared.set()
            return version

        t2_refused: list[ConflictError] = []

        async def prepare_b_after_t2(request: object, decision: str) -> int:
            await asyncio.wait_for(a_prepared.wait(), 10)
            try:
                await prepare_a(w.request(a, va, set(), {k0: b"0"}, t2), t2_name)
            except ConflictError as exc:
                t2_refused.append(exc)
            await prepare_b(w.request(b, vb, {k1}, {k3: b"0"}, t2), t2_name)
            return await prepare_b(request, decision)  # type: ignore[arg-type]

        a.prepare, b.prepare = prepare_a_then_signal, prepare_b_after_t2  # type: ignore[method-assign]
        with pytest.raises(ConflictError, match=f"cross-partition transaction {t2.hex()} read"):
            await commit_across(
                [(a, w.request(a, va, {k0}, {k2: b"0"}, t1)), (b, w.request(b, vb, set(), {k1: b"0"}, t1))],
                parts.decisions,
            )
        assert await parts.decisions.outcome(parts.decisions.name(t1)) == "aborted"
        assert len(t2_refused) == 1 and f"cross-partition transaction {t1.hex()} read" in str(t2_refused[0])
        await parts.decisions.decide(t2_name, "aborted", t2, [])
    finally:
        await parts.close()
    assert (await _final_balances(target, 2))[:4] == [w.START] * 4


# --------------------------------------------------------------------------- format


def test_a_manifest_with_intents_is_format_4_or_5_and_without_stays_readable_by_format_3() -> None:
    ref = SegmentRef("s", b"a", b"b", 2, 10, 3, 3, 3, inline=b"x")
    plain = Manifest(store_id="x", version=3, created=0.0)
    with_intent = Manifest(
        store_id="x", version=3, created=0.0, intents=(Intent(b"t" * 16, 3, 1.0, "txn/74", (b"a", b"b"), ref),)
    )
    assert FORMAT == 5  # 5 only once an intent holds reads (tests/test_two_phase_reads.py)
    assert encode_manifest(plain)[4:6] == (3).to_bytes(2, "little")
    assert encode_manifest(with_intent)[4:6] == (4).to_bytes(2, "little")
    assert decode_manifest(encode_manifest(with_intent), "m") == with_intent
    assert decode_manifest(encode_manifest(plain), "m").intents == ()
