"""Tests for the list-append anomaly checker in kvstore.testing.listappend."""

from __future__ import annotations

import asyncio
import itertools
import random
import time
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from kvstore.testing.listappend import CheckResult, HistoryRecorder, Status, Txn, check


def T(
    tid: int,
    *ops: tuple[str, Any, Any],
    status: Status = "ok",
    process: int = 0,
    invoke: float | None = None,
    complete: float | None = None,
) -> Txn:
    """Build a txn; times default to a serial schedule by id."""
    inv = float(tid) if invoke is None else invoke
    comp = complete if complete is not None else (None if status == "info" else inv + 0.5)
    return Txn(tid, process, list(ops), status, inv, comp)


def kinds(result: CheckResult) -> set[str]:
    return {a.kind for a in result.anomalies}


def only(result: CheckResult, kind: str) -> None:
    assert kinds(result) == {kind}, result.summary()


# --------------------------------------------------------------- hand-made


def test_valid_serializable_history() -> None:
    h = [
        T(1, ("append", "x", 1), ("r", "y", [])),
        T(2, ("r", "x", [1]), ("append", "y", 1), ("append", "x", 2)),
        T(3, ("r", "x", [1, 2]), ("r", "y", [1]), ("append", 7, 1)),
        T(4, ("r", 7, [1]), ("r", "x", [1, 2]), ("append", 7, 2), ("r", 7, [1, 2])),
    ]
    for rt in (False, True):
        r = check(h, realtime=rt)
        assert r.ok, r.summary()
        assert (r.txn_count, r.ok_count) == (4, 4)
        assert "no anomalies" in r.summary()


def test_g0_write_cycle() -> None:
    h = [
        T(1, ("append", "x", 1), ("append", "y", 1)),
        T(2, ("append", "x", 2), ("append", "y", 2)),
        T(3, ("r", "x", [1, 2]), ("r", "y", [2, 1])),
    ]
    r = check(h)
    only(r, "G0")
    assert sorted(r.anomalies[0].txns) == [1, 2]
    assert "-ww->" in r.anomalies[0].explanation


def test_g1a_aborted_read() -> None:
    h = [T(1, ("append", "x", 1), status="fail"), T(2, ("r", "x", [1]))]
    r = check(h)
    only(r, "G1a")
    assert r.anomalies[0].txns == [1, 2]


def test_g1b_intermediate_read() -> None:
    h = [
        T(1, ("append", "x", 1), ("append", "x", 2)),
        T(2, ("r", "x", [1])),
        T(3, ("r", "x", [1, 2])),
    ]
    r = check(h)
    only(r, "G1b")
    assert r.anomalies[0].txns == [1, 2]


def test_g1c_circular_information_flow() -> None:
    h = [
        T(1, ("append", "x", 1), ("r", "y", [1])),
        T(2, ("append", "y", 1), ("r", "x", [1])),
    ]
    r = check(h)
    only(r, "G1c")
    assert "-wr->" in r.anomalies[0].explanation


def test_g_single_read_skew() -> None:
    h = [
        T(1, ("append", "x", 1), ("append", "y", 1)),
        T(2, ("r", "x", []), ("r", "y", [1])),
        T(3, ("r", "x", [1])),
    ]
    r = check(h)
    only(r, "G-single")
    assert sorted(r.anomalies[0].txns) == [1, 2]


def test_g2_write_skew() -> None:
    h = [
        T(1, ("r", "x", []), ("r", "y", []), ("append", "x", 1)),
        T(2, ("r", "x", []), ("r", "y", []), ("append", "y", 1)),
        T(3, ("r", "x", [1]), ("r", "y", [1])),
    ]
    r = check(h)
    only(r, "G2")
    assert r.anomalies[0].explanation.count("-rw->") == 2


def test_internal_after_own_append() -> None:
    r = check([T(1, ("append", "x", 1), ("r", "x", [])), T(2, ("r", "x", [1]))])
    only(r, "internal")
    assert r.anomalies[0].txns == [1]


def test_internal_between_reads() -> None:
    h = [
        T(1, ("append", "x", 5)),
        T(2, ("r", "x", [5]), ("r", "x", [5, 6])),
        T(3, ("append", "x", 6)),
    ]
    only(check(h), "internal")


def test_internal_read_after_read_and_append() -> None:
    h = [T(1, ("append", "x", 1)), T(2, ("r", "x", [1]), ("append", "x", 2), ("r", "x", [2, 1]))]
    assert "internal" in kinds(check(h))
    ok = [T(1, ("append", "x", 1)), T(2, ("r", "x", [1]), ("append", "x", 2), ("r", "x", [1, 2]))]
    assert check(ok).ok


def test_incompatible_order() -> None:
    h = [
        T(1, ("append", "x", 1)),
        T(2, ("append", "x", 2)),
        T(3, ("r", "x", [1])),
        T(4, ("r", "x", [2])),
    ]
    r = check(h)
    only(r, "incompatible-order")
    assert sorted(r.anomalies[0].txns) == [3, 4]


def test_duplicate_in_read() -> None:
    r = check([T(1, ("append", "x", 1)), T(2, ("r", "x", [1, 1]))])
    only(r, "duplicate")
    assert r.anomalies[0].txns == [2]


def test_garbage_read_and_duplicate_append() -> None:
    assert kinds(check([T(1, ("append", "x", 1)), T(2, ("r", "x", [1, 9]))])) == {"garbage-read"}
    h = [T(1, ("append", "x", 1)), T(2, ("append", "x", 1)), T(3, ("r", "x", [1]))]
    assert kinds(check(h)) == {"duplicate-append"}


def test_observed_info_txn_is_committed() -> None:
    # T1's outcome is unknown, but T2 saw its append to y, so T1 committed; the
    # read skew between them is then a real G-single.
    h = [
        T(1, ("append", "x", 1), ("append", "y", 1), status="info"),
        T(2, ("r", "x", []), ("r", "y", [1])),
        T(3, ("r", "x", [1])),
    ]
    r = check(h)
    only(r, "G-single")
    assert r.info_count == 1 and r.info_committed_count == 1


def test_unobserved_info_txn_is_ignored() -> None:
    h = [T(1, ("append", "x", 1), status="info"), T(2, ("r", "x", [])), T(3, ("r", "x", []))]
    r = check(h)
    assert r.ok, r.summary()
    assert r.info_committed_count == 0


def test_unseen_failed_write_is_fine() -> None:
    h = [T(1, ("append", "x", 1), status="fail"), T(2, ("r", "x", [])), T(3, ("append", "x", 2)), T(4, ("r", "x", [2]))]
    r = check(h)
    assert r.ok, r.summary()
    assert r.fail_count == 1


def test_failed_txn_reads_are_ignored() -> None:
    h = [T(1, ("append", "x", 1)), T(2, ("r", "x", [7, 7]), ("r", "x", [3]), status="fail")]
    assert check(h).ok


def test_realtime_stale_read() -> None:
    h = [
        T(1, ("append", "x", 1), invoke=0, complete=1),
        T(2, ("r", "x", []), invoke=2, complete=3),
        T(3, ("r", "x", [1]), invoke=4, complete=5),
    ]
    assert check(h).ok  # serializable: T2 before T1
    r = check(h, realtime=True)
    only(r, "G-single-realtime")
    assert "-rt->" in r.anomalies[0].explanation


def test_realtime_overlapping_is_fine() -> None:
    h = [
        T(1, ("append", "x", 1), invoke=0, complete=3),
        T(2, ("r", "x", []), invoke=1, complete=2),
        T(3, ("r", "x", [1]), invoke=4, complete=5),
    ]
    assert check(h, realtime=True).ok


def test_realtime_lost_append() -> None:
    # Nobody ever reads T1's append, yet T2 started after T1 finished and missed it.
    h = [T(1, ("append", "x", 1), invoke=0, complete=1), T(2, ("r", "x", []), invoke=2, complete=3)]
    assert check(h).ok
    r = check(h, realtime=True)
    only(r, "G-single-realtime")
    assert sorted(r.anomalies[0].txns) == [1, 2]
    assert "never-observed" in r.anomalies[0].explanation


def test_unobserved_append_still_ordered() -> None:
    # x's only value is never read, but T2 read x = [] so T2 precedes T1, while
    # T1 read y = [] so T1 precedes T2: a G2 that needs the unobserved append.
    h = [
        T(1, ("r", "y", []), ("append", "x", 1)),
        T(2, ("r", "x", []), ("append", "y", 1)),
    ]
    only(check(h), "G2")


def test_append_order_within_txn() -> None:
    h = [T(1, ("append", "x", 1), ("append", "x", 2), ("append", "x", 3)), T(2, ("r", "x", [2, 1, 3]))]
    only(check(h), "incompatible-order")
    h = [T(1, ("append", "x", 1), ("append", "x", 2), ("append", "x", 3)), T(2, ("r", "x", [1, 3]))]
    only(check(h), "incompatible-order")


def test_long_cycle_no_recursion() -> None:
    n = 5000  # a G1c cycle through every txn: T(i-1) -wr-> T(i)
    h = [T(i, ("append", i, 1), ("r", (i - 1) % n, [1])) for i in range(n)]
    r = check(h)
    only(r, "G1c")
    assert sorted(r.anomalies[0].txns) == list(range(n))


def test_duplicate_ids_rejected() -> None:
    try:
        check([T(1, ("r", "x", [])), T(1, ("r", "x", []))])
    except ValueError:
        return
    raise AssertionError("expected ValueError")


# --------------------------------------------------------------- simulators


KEYS: list[Any] = [0, 1, 2, 3, 4, "a", "b", "c", "d", "e"]


def serial_history(n: int, keys: list[Any], seed: int) -> list[Txn]:
    """Random txns executed one at a time (so serializable and strictly so)."""
    rng = random.Random(seed)
    state: dict[Any, list[int]] = {k: [] for k in keys}
    next_val = dict.fromkeys(keys, 0)
    out: list[Txn] = []
    for i in range(n):
        statuses: list[Status] = ["ok", "fail", "info"]
        status = rng.choices(statuses, [90, 5, 5])[0]
        apply = status == "ok" or (status == "info" and rng.random() < 0.5)
        view: dict[Any, list[int]] = {}
        ops: list[tuple[str, Any, Any]] = []
        for _ in range(rng.randint(1, 5)):
            k = rng.choice(keys)
            cur = view.setdefault(k, list(state[k]))
            if rng.random() < 0.5:
                next_val[k] += 1
                cur.append(next_val[k])
                ops.append(("append", k, next_val[k]))
            else:
                ops.append(("r", k, list(cur) if status == "ok" else None))
        if apply:
            state.update(view)
        out.append(Txn(i, i % 7, ops, status, float(i), None if status == "info" else i + 0.5))
    return out


def si_history(n: int, keys: list[Any], seed: int, concurrency: int = 6) -> list[Txn]:
    """Random txns under snapshot isolation with first-committer-wins."""
    rng = random.Random(seed)
    state: dict[Any, list[int]] = {k: [] for k in keys}
    log: list[set[Any]] = []  # keys written by each commit, in commit order
    next_val = dict.fromkeys(keys, 0)
    active: list[dict[str, Any]] = []
    out: list[Txn] = []
    clock = 0.0
    started = 0
    while started < n or active:
        clock += 1
        if started < n and (len(active) < concurrency and rng.random() < 0.5 or not active):
            rk = rng.sample(keys, 2)
            plan: list[tuple[str, Any]] = [("r", rk[0]), ("r", rk[1]), ("append", rng.choice(rk))]
            active.append(
                {
                    "id": started,
                    "plan": plan,
                    "ops": [],
                    "start": len(log),
                    "snap": {k: list(v) for k, v in state.items()},
                    "invoke": clock,
                }
            )
            started += 1
            continue
        t = rng.choice(active)
        if len(t["ops"]) < len(t["plan"]):
            f, k = t["plan"][len(t["ops"])]
            if f == "r":
                t["ops"].append(("r", k, list(t["snap"][k])))
            else:
                next_val[k] += 1
                t["snap"][k].append(next_val[k])
                t["ops"].append(("append", k, next_val[k]))
            continue
        active.remove(t)
        written = {k for f, k, _ in t["ops"] if f == "append"}
        status: Status = "ok"
        if any(written & w for w in log[t["start"] :]):
            status = "fail"
        else:
            for k in written:
                state[k] = list(t["snap"][k])
            log.append(written)
        out.append(Txn(t["id"], t["id"] % 5, t["ops"], status, t["invoke"], clock))
    return out


def linearizable_history(n: int, keys: list[Any], seed: int) -> list[Txn]:
    """Overlapping txns, each taking effect atomically between invoke and complete."""
    rng = random.Random(seed)
    state: dict[Any, list[int]] = {k: [] for k in keys}
    next_val = dict.fromkeys(keys, 0)
    timed = []
    for i in range(n):
        invoke = rng.uniform(0, n / 4)
        timed.append((rng.uniform(invoke, invoke + 3), invoke, i))
    out: list[Txn] = []
    for point, invoke, i in sorted(timed):
        statuses: list[Status] = ["ok", "fail", "info"]
        status = rng.choices(statuses, [90, 5, 5])[0]
        view: dict[Any, list[int]] = {}
        ops: list[tuple[str, Any, Any]] = []
        for _ in range(rng.randint(1, 4)):
            k = rng.choice(keys)
            cur = view.setdefault(k, list(state[k]))
            if rng.random() < 0.5:
                next_val[k] += 1
                cur.append(next_val[k])
                ops.append(("append", k, next_val[k]))
            else:
                ops.append(("r", k, list(cur) if status == "ok" else None))
        if status == "ok" or (status == "info" and rng.random() < 0.5):
            state.update(view)
        complete = None if status == "info" else point + rng.uniform(0, 3)
        out.append(Txn(i, i % 10, ops, status, invoke, complete))
    return out


def test_linearizable_concurrent_history_is_clean_in_realtime() -> None:
    h = linearizable_history(3000, KEYS[:4], seed=5)
    r = check(h, realtime=True)
    assert r.ok, r.summary()
    # A stale read: a reader invoked after every write finished sees an old state.
    end = max(t.complete_time or t.invoke_time for t in h) + 1
    last = max(max(v) for t in h for f, k, v in t.ops if f == "r" and k == 0 and v)
    stale = [v for t in h for f, k, v in t.ops if f == "r" and k == 0 and v and max(v) < last][-1]
    h.append(Txn(10**6, 99, [("r", 0, stale)], "ok", end, end + 1))
    assert check(h).ok
    r = check(h, realtime=True)
    assert kinds(r) == {"G-single-realtime"}, r.summary()


def brute_force_serializable(h: list[Txn]) -> bool:
    """Is there a serial order of some committed subset explaining every read?"""
    oks = [t for t in h if t.status == "ok"]
    infos = [t for t in h if t.status == "info"]
    for mask in range(1 << len(infos)):
        chosen = oks + [t for j, t in enumerate(infos) if mask >> j & 1]
        for perm in itertools.permutations(chosen):
            if replays(perm):
                return True
    return False


def replays(order: Iterable[Txn]) -> bool:
    """Does executing ``order`` serially reproduce every known read?"""
    state: dict[Any, list[Any]] = {}
    for t in order:
        for f, k, v in t.ops:
            if f == "append":
                state.setdefault(k, []).append(v)
            elif v is not None and state.get(k, []) != v:
                return False
    return True


def random_small_history(rng: random.Random) -> list[Txn]:
    """A few txns interleaved op by op, reads seeing random (often bogus) states."""
    n, keys = rng.randint(2, 5), ["x", "y", 3][: rng.randint(1, 3)]
    plans = [[(rng.choice(["r", "append"]), rng.choice(keys)) for _ in range(rng.randint(1, 3))] for _ in range(n)]
    outcomes: list[Status] = ["ok", "fail", "info"]
    statuses = rng.choices(outcomes, [6, 1, 1], k=n)
    state: dict[Any, list[int]] = {k: [] for k in keys}
    ops: list[list[tuple[str, Any, Any]]] = [[] for _ in range(n)]
    counter = 0
    while any(len(ops[i]) < len(plans[i]) for i in range(n)):
        i = rng.choice([i for i in range(n) if len(ops[i]) < len(plans[i])])
        f, k = plans[i][len(ops[i])]
        if f == "append":
            counter += 1
            state[k].append(counter)
            ops[i].append(("append", k, counter))
        else:
            cur, mode = state[k], rng.random()
            val = (
                list(cur)
                if mode < 0.75
                else cur[: rng.randint(0, len(cur))]
                if mode < 0.95
                else rng.sample(cur, rng.randint(0, len(cur)))
            )
            ops[i].append(("r", k, None if statuses[i] == "info" else val))
    return [Txn(i, i, ops[i], statuses[i]) for i in range(n)]


def test_agrees_with_brute_force_on_small_histories() -> None:
    rng = random.Random(11)
    verdicts: Counter[bool] = Counter()
    for _ in range(3000):
        h = random_small_history(rng)
        r = check(h)
        assert r.ok == brute_force_serializable(h), (r.summary(), h)
        verdicts[r.ok] += 1
    assert min(verdicts.values()) > 500  # both outcomes well exercised


def test_random_serial_history_is_clean() -> None:
    h = serial_history(5000, KEYS, seed=42)
    start = time.perf_counter()
    r = check(h)
    elapsed = time.perf_counter() - start
    r_rt = check(h, realtime=True)
    elapsed_rt = time.perf_counter() - start - elapsed
    print(
        f"\n5000-txn serial history: check {elapsed:.3f}s, realtime check {elapsed_rt:.3f}s; "
        f"{r.graph_edges} edges ({r_rt.graph_edges} with realtime)"
    )
    assert r.ok, r.summary()
    assert r_rt.ok, r_rt.summary()
    assert r.txn_count == 5000 and r.info_committed_count > 0 and r.graph_edges > 5000


def test_snapshot_isolation_simulator_shows_write_skew() -> None:
    h = si_history(600, ["x", "y", "z", 1], seed=7)
    r = check(h)
    assert "G2" in kinds(r), r.summary()
    assert kinds(r) <= {"G2"}, r.summary()  # SI forbids G0, G1 and G-single


def test_snapshot_isolation_can_pass_when_serial() -> None:
    h = si_history(300, ["x", "y", "z", 1], seed=3, concurrency=1)
    assert check(h, realtime=True).ok


# --------------------------------------------------------------- recorder


def test_recorder_asyncio_tasks_and_check() -> None:
    rec = HistoryRecorder()
    store: dict[Any, list[int]] = {}
    lock = asyncio.Lock()

    async def client(proc: int) -> None:
        rng = random.Random(proc)
        for j in range(20):
            k = rng.choice(["x", 1, 2])
            v = proc * 1000 + j
            tid = rec.invoke(proc, [("r", k, None), ("append", k, v)])
            await asyncio.sleep(0)
            async with lock:  # a serializable "store"
                seen = list(store.get(k, []))
                await asyncio.sleep(0)
                store.setdefault(k, []).append(v)
            await asyncio.sleep(0)
            rec.complete(tid, "ok", [("r", k, seen), ("append", k, v)])
        rec.invoke(proc, [("append", "x", proc * 1000 + 999)])  # never completed

    async def main() -> None:
        await asyncio.gather(*(client(p) for p in range(30)))

    asyncio.run(main())
    h = rec.history()
    assert [t.id for t in h] == list(range(len(h))) and len(h) == 30 * 21
    assert all(t.complete_time is None and t.status == "info" for t in h if len(t.ops) == 1)
    assert all(t.complete_time is not None and t.complete_time >= t.invoke_time for t in h if t.status == "ok")
    r = check(h, realtime=True)
    assert r.ok, r.summary()


def test_recorder_jsonl_roundtrip(tmp_path: Path) -> None:
    rec = HistoryRecorder(first_id=100)
    a = rec.invoke(1, [("append", 1, 10), ("append", "1", 20), ("r", 1, None)])
    rec.complete(a, "ok", [("append", 1, 10), ("append", "1", 20), ("r", 1, [10])])
    b = rec.invoke(2, [("r", "1", None)])
    rec.complete(b, "fail")
    rec.invoke(3, [("r", 1, None)])
    path = str(tmp_path / "h.jsonl")
    rec.to_jsonl(path)
    back = HistoryRecorder.from_jsonl(path)
    assert back == rec.history()
    assert [t.id for t in back] == [100, 101, 102]
    assert back[0].ops[0][1] == 1 and back[0].ops[1][1] == "1"
    assert [t.status for t in back] == ["ok", "fail", "info"]
    assert check(back).ok


def test_recorder_rejects_double_completion() -> None:
    rec = HistoryRecorder()
    tid = rec.invoke(0, [("r", "x", None)])
    rec.complete(tid, "ok", [("r", "x", [])])
    try:
        rec.complete(tid, "ok")
    except ValueError:
        return
    raise AssertionError("expected ValueError")
