"""The steps of the list-append checker (`kvstore.testing.listappend.check`), one by one.

White-box: these call the checker's private step functions on small
histories, so a change that breaks one step fails here with the step's name
rather than as a missing or extra anomaly of the whole check.
"""

from __future__ import annotations

from typing import Any

import pytest

from kvstore.testing import listappend as la
from kvstore.testing.listappend import Status, Txn


def T(tid: int, *ops: tuple[str, Any, Any], status: Status = "ok") -> Txn:
    return Txn(tid, 0, list(ops), status, float(tid), None if status == "info" else tid + 0.5)


def steps(*txns: Txn) -> tuple[la._Appends, dict[Any, la._KeyOrder], set[int]]:
    """The appends, version orders and committed txns of a history."""
    appends = la._index_appends(list(txns))
    reads, _ = la._collect_reads(list(txns))
    orders = {k: la._version_order(groups) for k, groups in reads.items()}
    return appends, orders, la._committed(list(txns), appends, orders)


def edges(g: la._Graph) -> set[tuple[int, int, str]]:
    return {
        (a, b, name)
        for a, d in g.adj.items()
        for b, m in d.items()
        for kind, name in la._EDGE_NAMES.items()
        if m & kind
    }


def test_index_txns_rejects_duplicate_ids_and_bad_statuses() -> None:
    with pytest.raises(ValueError, match="duplicate txn id 1"):
        la._index_txns([T(1), T(1)])
    with pytest.raises(ValueError, match="bad status"):
        la._index_txns([Txn(1, 0, [], "maybe", 0.0)])  # type: ignore[arg-type]


def test_index_appends_names_writers_order_within_txn_and_duplicates() -> None:
    a = la._index_appends([T(1, ("append", "x", 1), ("append", "x", 2), ("append", "y", 1)), T(2, ("append", "x", 2))])
    assert a.writers == {"x": {1: 1, 2: 1}, "y": {1: 1}}
    assert a.seq == {"x": {1: 0, 2: 1}, "y": {1: 0}}
    assert a.intermediate == {"x": {1}}  # T1 appended 2 to x after 1
    assert a.duplicates == {("x", 2): [1, 2]}
    assert [x.kind for x in la._duplicate_appends(a)] == ["duplicate-append"]
    with pytest.raises(ValueError, match="unknown micro-op"):
        la._index_appends([T(3, ("write", "x", 1))])


def test_collect_reads_marks_external_reads_and_checks_each_txn_against_itself() -> None:
    reads, internal = la._collect_reads(
        [
            T(1, ("r", "x", [1]), ("append", "x", 2), ("r", "x", [1, 2])),  # consistent
            T(2, ("append", "x", 3), ("r", "x", [1, 2])),  # misses its own append
            T(3, ("r", "x", [9]), status="fail"),  # failed: ignored
        ]
    )
    assert [(a.kind, a.txns) for a in internal] == [("internal", [2])]
    found = {tuple(r.value): r.readers for group in reads["x"].values() for r in group}
    assert found == {(1,): [(1, True)], (1, 2): [(1, False), (2, False)]}


def test_version_order_is_the_longest_read_and_separates_incompatible_reads() -> None:
    _, orders, _ = steps(
        T(1, ("append", "x", 1)),
        T(2, ("append", "x", 2)),
        T(3, ("append", "x", 3)),
        T(4, ("r", "x", [1])),
        T(5, ("r", "x", [1, 2, 3])),
        T(6, ("r", "x", [2])),
    )
    ko = orders["x"]
    assert ko.order == [1, 2, 3] and not ko.chain
    assert [r.value for r in ko.compat] == [[1], [1, 2, 3]]
    assert [r.value for r in ko.incompat] == [[2]]
    assert sorted(i for i, _ in ko.readers_of(2)) == [5, 6]
    assert [a.kind for a in la._incompatible_reads("x", ko)] == ["incompatible-order"] * 2


def test_key_checks_find_duplicates_gaps_and_garbage() -> None:
    appends, orders, _ = steps(T(1, ("append", "x", 1), ("append", "x", 2)), T(2, ("r", "x", [2, 2, 7])))
    ko = orders["x"]
    assert [a.kind for a in la._duplicates_in_reads("x", ko)] == ["duplicate"]
    assert [a.txns for a in la._appends_out_of_order("x", ko, appends)] == [[1, 2]]  # #2 without #1
    assert [(a.kind, a.txns) for a in la._garbage_reads("x", ko, appends)] == [("garbage-read", [2])]


def test_committed_counts_info_txns_only_when_another_txn_saw_their_append() -> None:
    _, _, committed = steps(
        T(1, ("append", "x", 1), status="info"),
        T(2, ("r", "x", [1])),
        T(3, ("append", "y", 1), ("r", "y", [1]), status="info"),
    )
    assert committed == {1, 2}  # T3 only saw its own append


def test_aborted_and_intermediate_reads() -> None:
    history = [
        T(1, ("append", "x", 1), status="fail"),
        T(2, ("append", "y", 1), ("append", "y", 2)),
        T(3, ("r", "x", [1]), ("r", "y", [1])),
    ]
    appends, orders, committed = steps(*history)
    by_id = {t.id: t for t in history}
    assert [a.txns for a in la._aborted_reads(appends, orders, by_id, committed)] == [[1, 3]]
    assert [a.txns for a in la._intermediate_reads(appends, orders, by_id, committed)] == [[2, 3]]


def test_dependency_graph_ww_wr_rw_and_unobserved_appends() -> None:
    history = [
        T(1, ("append", "x", 1)),
        T(2, ("r", "x", [1])),
        T(3, ("append", "x", 2)),
        T(4, ("r", "x", [1, 2])),
        T(5, ("append", "x", 3)),
    ]
    appends, orders, committed = steps(*history)
    g = la._dependency_graph(orders, appends, committed, {t.id: t for t in history}, realtime=False)
    assert edges(g) == {
        (1, 3, "ww"),
        (1, 2, "wr"),
        (2, 3, "rw"),
        (3, 4, "wr"),  # wr: from the last writer only
        (3, 5, "ww"),
        (4, 5, "rw"),  # T5's 3 was never read: after the whole order
    }


def test_realtime_edges_are_sparse_but_keep_the_order() -> None:
    history = [
        Txn(1, 0, [], "ok", 0.0, 1.0),
        Txn(2, 0, [], "ok", 2.0, 3.0),
        Txn(3, 0, [], "ok", 4.0, 5.0),
        Txn(4, 0, [], "info", 0.5, None),
    ]
    g = la._Graph()
    la._add_realtime_edges(g, {t.id: t for t in history}, {1, 2, 3, 4})
    assert edges(g) == {(1, 2, "rt"), (2, 3, "rt")}  # 1 -> 3 follows; 4 never completed


def test_cycles_are_classified_by_their_weakest_class() -> None:
    g = la._Graph()
    g.add(1, 2, la.WW, ("x", 1, 2, False))
    g.add(2, 1, la.RW, ("y", None, 1, False))
    g.add(3, 4, la.WR, ("z", 1))
    by_id = {i: T(i) for i in (1, 2, 3, 4)}
    assert [(a.kind, a.txns) for a in la._cycle_anomalies(g, False, by_id)] == [("G-single", [2, 1])]
