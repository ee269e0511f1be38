"""Elle-style isolation anomaly checker for the *list-append* workload.

Model
-----
Each key (a small int or a string) holds a list of ints. A transaction is a
list of micro-ops: ``("append", k, v)`` appends ``v`` to ``k``'s list and
``("r", k, observed)`` reads the whole list (``observed`` is ``None`` when the
result is unknown). Every appended value is unique per key across the whole
history, so a read names exactly which writes it saw and in what order. A
transaction's status is ``"ok"`` (committed), ``"fail"`` (definitely did not
commit) or ``"info"`` (unknown; treated as committed iff another transaction
observed one of its appends, otherwise ignored). Reads of failed transactions
are ignored.

This follows Kingsbury & Alvaro, "Elle: Inferring Isolation Anomalies from
Experimental Observations" (2020). Non-cycle checks: ``internal`` (a read
disagrees with the transaction's own earlier reads/appends), ``duplicate`` (a
value twice in one read), ``duplicate-append`` (the history broke the
uniqueness rule), ``garbage-read`` (a read value nobody appended),
``incompatible-order`` (two reads of a key that are not prefixes of one
another, or a read showing one transaction's appends out of order or with a
gap), ``G1a`` (a committed txn read a value appended by a failed txn) and
``G1b`` (a read ends in a value its writer followed with another append to the
same key).

Each key's version order is its longest observed read. Over the committed
transactions we then build a dependency graph (a transaction's consecutive
appends to one key count as one version, so they yield no edges):

* ``ww``: T1 appended v1, T2 appended the next value of the version order.
* ``wr``: T2 read a list whose last element T1 appended.
* ``rw``: T1 read a list (possibly empty) and T2 appended the next value
  after it (the first value not appended by the last writer T1 saw).
* A committed append that no read observed must come after every observed
  value, so it gets a ``ww`` edge from the order's last writer and an ``rw``
  edge from each txn that read the whole order (beyond Elle; this is what
  catches lost appends and stale reads of never-read values).
* ``rt`` (``realtime=True``): T1 (ok) completed before T2 was invoked; encoded
  sparsely, so the edge set is a subgraph whose transitive closure is exactly
  the real-time order.

wr and rw edges come only from *external* reads (the first read of a key in a
transaction, before the transaction appended to it). Strongly connected
components are found with an iterative Tarjan, and in each one the checker
reports one concrete cycle of the weakest class it contains: ``G0`` (ww only),
``G1c`` (ww+wr, at least one wr), ``G-single`` (exactly one rw) or ``G2`` (two
or more rw); if the component has no cycle without rt edges, the class gets a
``-realtime`` suffix (a strict-serializability violation only).
"""

from __future__ import annotations

import bisect
import itertools
import json
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

__all__ = ["Anomaly", "CheckResult", "HistoryRecorder", "Op", "Status", "Txn", "check"]

Op = tuple[str, Any, Any]
"""A micro-op: ``("append", key, value)`` or ``("r", key, list_or_None)``."""

Status = Literal["ok", "fail", "info"]
"""Transaction outcome: committed, definitely aborted, or unknown."""

WW, WR, RW, RT = 1, 2, 4, 8
_EDGE_NAMES = {WW: "ww", WR: "wr", RW: "rw", RT: "rt"}
_SEARCH_BUDGET = 1_000_000  # BFS node visits per SCC spent looking for G-single
_MAX_EDGES_EXPLAINED = 12
_MAX_READERS_LISTED = 10
_KIND_ORDER = [
    "internal",
    "duplicate-append",
    "duplicate",
    "garbage-read",
    "incompatible-order",
    "G1a",
    "G1b",
    "G0",
    "G0-realtime",
    "G1c",
    "G1c-realtime",
    "G-single",
    "G-single-realtime",
    "G2",
    "G2-realtime",
]


@dataclass
class Txn:
    """One transaction of a history (see the module docstring for ``ops``)."""

    id: int
    process: int
    ops: list[Op]
    status: Status
    invoke_time: float = 0.0
    complete_time: float | None = None


@dataclass
class Anomaly:
    """One detected anomaly: its kind, the txn ids involved and a human explanation."""

    kind: str
    txns: list[int]
    explanation: str

    def __str__(self) -> str:
        return f"{self.kind}: {self.explanation}"


@dataclass
class CheckResult:
    """Outcome of :func:`check`: the anomalies found plus bookkeeping counts."""

    anomalies: list[Anomaly]
    txn_count: int = 0  # transactions checked
    ok_count: int = 0
    fail_count: int = 0
    info_count: int = 0
    info_committed_count: int = 0  # info txns whose appends were observed
    graph_edges: int = 0  # dependency edges (distinct (a, b, kind) triples)
    realtime: bool = False  # whether real-time order was enforced

    @property
    def ok(self) -> bool:
        """True iff no anomaly was found."""
        return not self.anomalies

    def kinds(self) -> Counter[str]:
        """Number of anomalies per kind."""
        return Counter(a.kind for a in self.anomalies)

    def summary(self, max_examples: int = 10) -> str:
        """A short multi-line human-readable report."""
        head = (
            f"list-append check (realtime={self.realtime}): {self.txn_count} txns "
            f"(ok {self.ok_count}, fail {self.fail_count}, info {self.info_count}, "
            f"{self.info_committed_count} info treated as committed), "
            f"{self.graph_edges} dependency edges: "
        )
        if self.ok:
            return head + "no anomalies"
        counts = ", ".join(f"{k} x{n}" for k, n in sorted(self.kinds().items()))
        lines = [head + f"{len(self.anomalies)} anomalies ({counts})"]
        lines += [f"  - {a}" for a in self.anomalies[:max_examples]]
        if len(self.anomalies) > max_examples:
            lines.append(f"  ... {len(self.anomalies) - max_examples} more")
        return "\n".join(lines)


class _Read:
    """A distinct observed value of one key, with the txns that observed it."""

    __slots__ = ("compatible", "readers", "value")

    def __init__(self, value: list[Any]) -> None:
        self.value = value
        self.readers: list[tuple[int, bool]] = []  # (txn id, is external read)
        self.compatible = True  # is a prefix of the key's version order


def _tarjan(nodes: Iterable[int], succ: Callable[[int], Iterable[int]]) -> list[list[int]]:
    """Strongly connected components, iteratively (no recursion limit)."""
    index: dict[int, int] = {}
    low: dict[int, int] = {}
    on_stack: set[int] = set()
    stack: list[int] = []
    sccs: list[list[int]] = []
    for root in nodes:
        if root in index:
            continue
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        work: list[tuple[int, Iterator[int]]] = [(root, iter(succ(root)))]
        while work:
            v, it = work[-1]
            for w in it:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(succ(w))))
                    break
                if w in on_stack and index[w] < low[v]:
                    low[v] = index[w]
            else:
                work.pop()
                if work and low[v] < low[work[-1][0]]:
                    low[work[-1][0]] = low[v]
                if low[v] == index[v]:
                    comp: list[int] = []
                    while True:
                        w = stack.pop()
                        on_stack.discard(w)
                        comp.append(w)
                        if w == v:
                            break
                    sccs.append(comp)
    return sccs


class _Graph:
    """Dependency multigraph: ``adj[a][b]`` is a bitmask of edge kinds a -> b."""

    def __init__(self) -> None:
        self.adj: dict[int, dict[int, int]] = {}
        self.why: dict[tuple[int, int, int], tuple[Any, ...]] = {}
        self.edges = 0

    def add(self, a: int, b: int, kind: int, reason: tuple[Any, ...]) -> None:
        d = self.adj.setdefault(a, {})
        m = d.get(b, 0)
        if not m & kind:
            d[b] = m | kind
            self.why[(a, b, kind)] = reason
            self.edges += 1

    def succ(self, mask: int, allowed: set[int]) -> Callable[[int], Iterable[int]]:
        adj = self.adj

        def f(v: int) -> Iterable[int]:
            return [w for w, m in adj.get(v, {}).items() if m & mask and w in allowed]

        return f

    def path(self, src: int, dst: int, mask: int, allowed: set[int], budget: list[int]) -> list[int] | None:
        """Shortest path src -> ... -> dst (a cycle if src == dst) over ``mask`` edges."""
        parent: dict[int, int] = {}
        queue = deque([src])
        succ = self.succ(mask, allowed)
        while queue and budget[0] > 0:
            v = queue.popleft()
            budget[0] -= 1
            for w in succ(v):
                if w == dst:
                    out = [w, v]
                    while v != src:
                        v = parent[v]
                        out.append(v)
                    out.reverse()
                    return out
                if w not in parent and w != src:
                    parent[w] = v
                    queue.append(w)
        return None

    def label(self, a: int, b: int, mask: int) -> int:
        m = self.adj[a][b] & mask
        return next(k for k in (WW, WR, RW, RT) if m & k)

    def explain(self, a: int, b: int, kind: int, times: dict[int, Txn]) -> str:
        r = self.why[(a, b, kind)]
        later = "later, never-observed" if kind in (WW, RW) and r[3] else "next"
        if kind == WW:
            return f"T{a} appended {r[1]!r} to {r[0]!r} and T{b} appended the {later} value {r[2]!r}"
        if kind == WR:
            return f"T{b} read {r[0]!r} ending in {r[1]!r}, appended by T{a}"
        if kind == RW:
            seen = "an empty list" if r[1] is None else f"a list ending in {r[1]!r}"
            return f"T{a} read {r[0]!r} as {seen}; T{b} appended the {later} value {r[2]!r}"
        return f"T{a} completed at {times[a].complete_time} before T{b} was invoked at {times[b].invoke_time}"


def _cycle_anomaly(g: _Graph, cycle: list[int], labels: list[int], by_id: dict[int, Txn]) -> Anomaly:
    n_rw = labels.count(RW)
    kind = ("G0" if all(k in (WW, RT) for k in labels) else "G1c") if n_rw == 0 else ("G-single" if n_rw == 1 else "G2")
    if RT in labels:
        kind += "-realtime"
    hops = [f"T{cycle[i]} -{_EDGE_NAMES[k]}-> " for i, k in enumerate(labels)]
    why = [
        g.explain(cycle[i], cycle[(i + 1) % len(cycle)], k, by_id) for i, k in enumerate(labels[:_MAX_EDGES_EXPLAINED])
    ]
    if len(labels) > _MAX_EDGES_EXPLAINED:
        why.append(f"... {len(labels) - _MAX_EDGES_EXPLAINED} more edges")
    text = f"cycle of {len(cycle)} txns: {''.join(hops)}T{cycle[0]}. " + "; ".join(why)
    return Anomaly(kind, list(cycle), text)


def _classify_scc(g: _Graph, scc: list[int], realtime: bool, by_id: dict[int, Txn]) -> Anomaly:
    """Find a concrete cycle of the weakest anomaly class inside one SCC.

    Tries G0, G1c, G-single, G2 without real-time edges, then (if enabled)
    the same classes allowing real-time edges.
    """
    nodes = set(scc)
    steps = [(False, WW), (False, WW | WR), (True, WW | WR), (False, WW | WR | RW)]
    if realtime:
        steps += [(single, mask | RT) for single, mask in steps]
    for single, mask in steps:
        full = mask | RW if single else mask
        for sub in _tarjan(scc, g.succ(full, nodes)):
            if len(sub) < 2:
                continue
            if not single:
                return _any_cycle(g, sub, mask, by_id)
            found = _single_rw_cycle(g, sub, mask, by_id)
            if found is not None:
                return found
    raise AssertionError("a strongly connected component must contain a cycle")


def _any_cycle(g: _Graph, sub: list[int], mask: int, by_id: dict[int, Txn]) -> Anomaly:
    """A shortest cycle through `sub[0]` over `mask` edges, in the SCC `sub` of those edges."""
    cyc = g.path(sub[0], sub[0], mask, set(sub), [len(sub) + 1])
    assert cyc is not None
    cyc.pop()
    labels = [g.label(cyc[i], cyc[(i + 1) % len(cyc)], mask) for i in range(len(cyc))]
    return _cycle_anomaly(g, cyc, labels, by_id)


def _single_rw_cycle(g: _Graph, sub: list[int], mask: int, by_id: dict[int, Txn]) -> Anomaly | None:
    """G-single: an rw edge a -> b closed by a path b -> a over `mask` edges (no rw), if one is
    found within `_SEARCH_BUDGET`; edges that cross SCCs of `mask` edges cannot close one."""
    members = set(sub)
    comp: dict[int, int] = {}
    for i, c in enumerate(_tarjan(sub, g.succ(mask, members))):
        comp.update((v, i) for v in c)
    rws = [(a, b) for a in sub for b, m in g.adj.get(a, {}).items() if m & RW and b in members]
    rws.sort(key=lambda e: comp[e[0]] != comp[e[1]])  # certain hits first
    budget = [_SEARCH_BUDGET]
    for a, b in rws:
        p = g.path(b, a, mask, members, budget)
        if p is not None:
            labels = [RW] + [g.label(p[i], p[i + 1], mask) for i in range(len(p) - 1)]
            return _cycle_anomaly(g, [a] + p[:-1], labels, by_id)
    return None


def _short(values: list[Any], at: int | None = None) -> str:
    """A list for humans: whole if short, else a window around ``at`` (or the end)."""
    if len(values) <= 12:
        return repr(values)
    lo = max(0, (len(values) - 8 if at is None else at - 3))
    hi = min(len(values), lo + 8)
    body = ", ".join(map(repr, values[lo:hi]))
    return f"[{'..., ' if lo else ''}{body}{', ...' if hi < len(values) else ''}] (length {len(values)})"


def _readers_text(ids: list[int]) -> str:
    shown = ", ".join(f"T{i}" for i in ids[:_MAX_READERS_LISTED])
    more = len(ids) - _MAX_READERS_LISTED
    return shown + (f" and {more} more" if more > 0 else "")


def check(history: Iterable[Txn], *, realtime: bool = False) -> CheckResult:
    """Check a list-append history for isolation anomalies (see module docstring).

    With ``realtime=True`` real-time order (completion before invocation, by
    ``time.monotonic``-style timestamps) is also enforced, i.e. the history is
    checked for strict serializability. Raises ``ValueError`` on malformed input.

    The steps, each a function below: index the transactions and their
    appends, collect the reads (checking each transaction against itself),
    build each key's version order and check the reads against it, decide
    which transactions committed, look for aborted and intermediate reads,
    then build the dependency graph and classify its cycles.
    """
    txns, by_id = _index_txns(history)
    appends = _index_appends(txns)
    out = _duplicate_appends(appends)
    reads, internal = _collect_reads(txns)
    out += internal
    orders = {k: _version_order(groups) for k, groups in reads.items()}
    for k, order in orders.items():
        out += _key_anomalies(k, order, appends)
    committed = _committed(txns, appends, orders)
    out += _aborted_reads(appends, orders, by_id, committed)
    out += _intermediate_reads(appends, orders, by_id, committed)
    graph = _dependency_graph(orders, appends, committed, by_id, realtime)
    out += _cycle_anomalies(graph, realtime, by_id)
    status = Counter(t.status for t in txns)
    return CheckResult(
        _ranked(out),
        len(txns),
        status["ok"],
        status["fail"],
        status["info"],
        len(committed) - status["ok"],
        graph.edges,
        realtime,
    )


# --------------------------------------------------------------- check: transactions and appends


def _index_txns(history: Iterable[Txn]) -> tuple[list[Txn], dict[int, Txn]]:
    """The history as a list and by id; rejects duplicate ids and unknown statuses (ValueError)."""
    txns = list(history)
    by_id: dict[int, Txn] = {}
    for t in txns:
        if t.id in by_id:
            raise ValueError(f"duplicate txn id {t.id}")
        if t.status not in ("ok", "fail", "info"):
            raise ValueError(f"T{t.id}: bad status {t.status!r}")
        by_id[t.id] = t
    return txns, by_id


@dataclass
class _Appends:
    """Every append of the history (whatever its txn's status), indexed by key and value."""

    writers: dict[Any, dict[Any, int]]  # key -> value -> the txn that appended it (first, if several)
    intermediate: dict[Any, set[Any]]  # key -> values that are not their txn's last append to the key
    seq: dict[Any, dict[Any, int]]  # key -> value -> its index among its txn's appends to the key
    duplicates: dict[tuple[Any, Any], list[int]]  # (key, value) appended more than once -> txns


def _index_appends(txns: list[Txn]) -> _Appends:
    """Who appended each value, in which order within its txn; rejects unknown micro-ops.

    Reads name the writes they saw by value, so this index is how every later
    step turns an observed value into the transaction that wrote it.
    """
    a = _Appends({}, {}, {}, {})
    for t in txns:
        last: dict[Any, Any] = {}
        count: Counter[Any] = Counter()
        for f, k, v in t.ops:
            if f == "append":
                wk = a.writers.setdefault(k, {})
                if v in wk:
                    a.duplicates.setdefault((k, v), [wk[v]]).append(t.id)
                else:
                    wk[v] = t.id
                    a.seq.setdefault(k, {})[v] = count[k]
                count[k] += 1
                if k in last:
                    a.intermediate.setdefault(k, set()).add(last[k])
                last[k] = v
            elif f != "r":
                raise ValueError(f"T{t.id}: unknown micro-op {f!r}")
    return a


def _duplicate_appends(appends: _Appends) -> list[Anomaly]:
    """``duplicate-append``: a value appended to a key twice.

    The checker relies on every appended value being unique per key; a
    history that breaks the rule cannot be checked reliably, so say so.
    """
    return [
        Anomaly(
            "duplicate-append",
            ids,
            f"value {v!r} appended to {k!r} more than once, by "
            f"{_readers_text(ids)} (history violates the uniqueness rule)",
        )
        for (k, v), ids in appends.duplicates.items()
    ]


# --------------------------------------------------------------- check: reads


_ReadGroups = dict[tuple[int, Any], list[_Read]]
"""One key's distinct reads, grouped by (length, last value): cheap to find equal lists."""


def _collect_reads(txns: list[Txn]) -> tuple[dict[Any, _ReadGroups], list[Anomaly]]:
    """The distinct reads of each key with their readers, and the ``internal`` anomalies.

    Reads of failed txns are ignored: they are no evidence of anything.
    """
    reads: dict[Any, _ReadGroups] = {}
    out: list[Anomaly] = []
    for t in txns:
        if t.status != "fail":
            out += _read_ops(t, reads)
    return reads, out


def _read_ops(t: Txn, reads: dict[Any, _ReadGroups]) -> list[Anomaly]:
    """Add `t`'s reads to `reads`; its ``internal`` anomalies.

    ``internal``: a read that disagrees with what the txn's own earlier reads
    and appends imply (after reading L and appending v, a read must see L + [v];
    after appending v without reading, a read must end in v). No isolation
    level allows a transaction to miss its own writes or see a key change
    under it. A read is *external* iff it is the txn's first touch of the key:
    only those say something about other transactions.
    """
    out: list[Anomaly] = []
    # Per key: (last list read or None, values appended since); reads alias
    # the history's lists, never copied.
    state: dict[Any, tuple[list[Any] | None, list[Any]]] = {}
    for f, k, v in t.ops:
        base, since = state.get(k, (None, []))
        if f == "append":
            state[k] = (base, since + [v])
            continue
        if v is None:
            continue
        obs = v if isinstance(v, list) else list(v)
        bad = _internal_anomaly(t, k, obs, base, since)
        if bad is not None:
            out.append(bad)
        group = reads.setdefault(k, {}).setdefault((len(obs), obs[-1] if obs else None), [])
        r = next((r for r in group if r.value == obs), None)
        if r is None:
            r = _Read(obs)
            group.append(r)
        r.readers.append((t.id, k not in state))  # external: first touch of k
        state[k] = (obs, [])
    return out


def _internal_anomaly(t: Txn, k: Any, obs: list[Any], base: list[Any] | None, since: list[Any]) -> Anomaly | None:
    """An ``internal`` anomaly if `t` read `obs` from `k` after reading `base` and appending `since`."""
    if base is not None:
        exp = base + since if since else base
        bad = obs != exp
    else:
        exp = since
        bad = bool(since) and (len(obs) < len(since) or obs[len(obs) - len(since) :] != since)
    if not bad:
        return None
    what = "" if base is not None else "... + "
    return Anomaly(
        "internal",
        [t.id],
        f"T{t.id} read {k!r} = {_short(obs)} but its own earlier reads/appends imply {what}{_short(exp)}",
    )


# --------------------------------------------------------------- check: version orders


@dataclass
class _KeyOrder:
    """One key's version order (its longest read) and its distinct reads, sorted for lookups."""

    groups: _ReadGroups
    by_len: list[_Read]  # every distinct read, shortest first
    chain: bool  # every read is a prefix of the next longer one
    order_read: _Read  # the longest read
    positions: dict[Any, int]  # first index of each value in the order
    repeats: dict[Any, int]  # index of a value's second occurrence in the order
    observed: set[Any]  # every value some read saw
    compat: list[_Read]  # reads that are prefixes of the order, by length
    compat_lens: list[int]
    incompat: list[_Read]  # the others

    @property
    def order(self) -> list[Any]:
        return self.order_read.value

    def readers_of(self, v: Any) -> list[tuple[int, bool]]:
        """Every (txn, external) that observed value `v`."""
        p = self.positions.get(v)
        found = (
            [] if p is None else [x for r in self.compat[bisect.bisect_right(self.compat_lens, p) :] for x in r.readers]
        )
        return found + [x for r in self.incompat if v in r.value for x in r.readers]


def _version_order(groups: _ReadGroups) -> _KeyOrder:
    """A key's version order: its longest read, against which every other read is compared.

    Appended values are unique, so if the store is serializable every read of
    a key is a prefix of the same list; the longest read is then the best
    knowledge of the order in which the key's appends were applied.
    """
    rs = sorted((r for g in groups.values() for r in g), key=lambda r: len(r.value))
    chain = all(b.value[: len(a.value)] == a.value for a, b in itertools.pairwise(rs))
    order_read = rs[-1] if chain else max(rs, key=lambda r: len(r.value))
    order = order_read.value
    positions: dict[Any, int] = {}
    repeats: dict[Any, int] = {}
    for i, v in enumerate(order):
        if v in positions:
            repeats.setdefault(v, i)
        else:
            positions[v] = i
    observed = set(positions)
    for r in rs:
        r.compatible = chain or order[: len(r.value)] == r.value
        if not r.compatible:
            observed.update(r.value)
    compat = [r for r in rs if r.compatible]
    return _KeyOrder(
        groups,
        rs,
        chain,
        order_read,
        positions,
        repeats,
        observed,
        compat,
        [len(r.value) for r in compat],
        [r for r in rs if not r.compatible],
    )


def _key_anomalies(k: Any, ko: _KeyOrder, appends: _Appends) -> list[Anomaly]:
    """Every check of one key's reads against each other and against its appends."""
    return (
        _incompatible_reads(k, ko)
        + _duplicates_in_reads(k, ko)
        + _appends_out_of_order(k, ko, appends)
        + _garbage_reads(k, ko, appends)
    )


def _incompatible_reads(k: Any, ko: _KeyOrder) -> list[Anomaly]:
    """``incompatible-order``: two reads of `k` where neither is a prefix of the other.

    Appends only ever extend a list, so two such reads cannot both be states
    of one history of the key: no serial order explains them.
    """
    out: list[Anomaly] = []
    if ko.chain:
        return out
    for a, b in itertools.pairwise(ko.by_len):
        if b.value[: len(a.value)] != a.value:
            i = next(i for i, (x, y) in enumerate(zip(a.value, b.value, strict=False)) if x != y)
            ta, tb = a.readers[0][0], b.readers[0][0]
            out.append(
                Anomaly(
                    "incompatible-order",
                    [ta, tb],
                    f"reads of {k!r} disagree at index {i}: T{ta} saw "
                    f"{_short(a.value, i)}, T{tb} saw {_short(b.value, i)}",
                )
            )
    return out


def _duplicates_in_reads(k: Any, ko: _KeyOrder) -> list[Anomaly]:
    """``duplicate``: a read of `k` showing one value more than once (an append applied twice)."""
    dup: dict[Any, list[int]] = {}
    for v, i in ko.repeats.items():
        dup[v] = [x for r in ko.compat[bisect.bisect_right(ko.compat_lens, i) :] for x, _ in r.readers]
    for r in ko.incompat:
        for v, n in Counter(r.value).items():
            if n > 1:
                dup.setdefault(v, []).extend(x for x, _ in r.readers)
    out: list[Anomaly] = []
    for v in sorted(dup, key=repr):
        ids = sorted(set(dup[v]))
        out.append(
            Anomaly("duplicate", ids, f"{_readers_text(ids)} read {k!r} with value {v!r} appearing more than once")
        )
    return out


def _appends_out_of_order(k: Any, ko: _KeyOrder, appends: _Appends) -> list[Anomaly]:
    """``incompatible-order``: one txn's appends to `k` read out of order or with a gap.

    A transaction's appends to a key take effect together and in the order it
    made them; a read showing its second append without its first, or before
    it, saw a state no execution produces. Checked on the version order and on
    every read incompatible with it (the others are its prefixes).
    """
    out: list[Anomaly] = []
    wk = appends.writers.get(k, {})
    sk = appends.seq.get(k, {})
    for r in [ko.order_read] + ko.incompat:
        got: dict[int, int] = {}
        for n, v in enumerate(r.value):
            w = wk.get(v)
            if w is None or (sk[v] < got.get(w, 0) and v in r.value[:n]):
                continue  # garbage or duplicate: reported separately
            j = sk[v]
            if j != got.get(w, 0):
                ids = [w] + [i for i, _ in r.readers]
                out.append(
                    Anomaly(
                        "incompatible-order",
                        ids,
                        f"T{w}'s appends to {k!r} were observed out of order or "
                        f"with gaps: its append #{j + 1} ({v!r}) follows "
                        f"{got.get(w, 0)} of its appends in {_short(r.value)}, "
                        f"read by {_readers_text(ids[1:])}",
                    )
                )
                break
            got[w] = j + 1
    return out


def _garbage_reads(k: Any, ko: _KeyOrder, appends: _Appends) -> list[Anomaly]:
    """``garbage-read``: a value of `k` that some txn read but no txn appended."""
    wk = appends.writers.get(k, {})
    out: list[Anomaly] = []
    for v in sorted((v for v in ko.observed if v not in wk), key=repr):
        ids = sorted({i for i, _ in ko.readers_of(v)})
        out.append(
            Anomaly("garbage-read", ids, f"{_readers_text(ids)} read value {v!r} of {k!r}, which no txn appended")
        )
    return out


# --------------------------------------------------------------- check: committed txns, G1a, G1b


def _committed(txns: list[Txn], appends: _Appends, orders: dict[Any, _KeyOrder]) -> set[int]:
    """The txns taken as committed: every ``ok`` one, and each ``info`` one whose append
    another txn observed (it must have committed for that to be seen)."""
    committed = {t.id for t in txns if t.status == "ok"}
    for t in txns:
        if t.status == "info" and any(
            f == "append"
            and k in orders
            and v in orders[k].observed
            and appends.writers[k].get(v) == t.id
            and any(i != t.id for i, _ in orders[k].readers_of(v))
            for f, k, v in t.ops
        ):
            committed.add(t.id)
    return committed


def _aborted_reads(
    appends: _Appends, orders: dict[Any, _KeyOrder], by_id: dict[int, Txn], committed: set[int]
) -> list[Anomaly]:
    """``G1a``: a committed txn read a value appended by a failed txn (an aborted read)."""
    out: list[Anomaly] = []
    for k, wk in appends.writers.items():
        ko = orders.get(k)
        if ko is None:
            continue
        for v, w in wk.items():
            if by_id[w].status == "fail" and v in ko.observed:
                ids = sorted({i for i, _ in ko.readers_of(v) if i in committed and i != w})
                if ids:
                    out.append(
                        Anomaly(
                            "G1a", [w] + ids, f"{_readers_text(ids)} read {v!r} from {k!r}, appended by failed txn T{w}"
                        )
                    )
    return out


def _intermediate_reads(
    appends: _Appends, orders: dict[Any, _KeyOrder], by_id: dict[int, Txn], committed: set[int]
) -> list[Anomaly]:
    """``G1b``: a committed txn read a list ending in a value its writer followed with
    another append to the same key: a state in the middle of a transaction."""
    out: list[Anomaly] = []
    for k, ko in orders.items():
        wk = appends.writers.get(k, {})
        inter = appends.intermediate.get(k, set())
        for (_, v), group in ko.groups.items():
            iw = wk.get(v)
            if v not in inter or iw is None or by_id[iw].status == "fail":
                continue
            ids = sorted({i for r in group for i, _ in r.readers if i in committed and i != iw})
            if ids:
                out.append(
                    Anomaly(
                        "G1b",
                        [iw] + ids,
                        f"{_readers_text(ids)} read {k!r} ending in {v!r}, an "
                        f"intermediate state: T{iw} appended more to {k!r} after it",
                    )
                )
    return out


# --------------------------------------------------------------- check: the dependency graph


def _dependency_graph(
    orders: dict[Any, _KeyOrder], appends: _Appends, committed: set[int], by_id: dict[int, Txn], realtime: bool
) -> _Graph:
    """The ww, wr and rw edges between committed txns, key by key, then the rt edges if asked."""
    g = _Graph()
    for k, ko in orders.items():
        wk = appends.writers.get(k, {})
        _add_ww_edges(g, k, ko, wk, committed)
        for r in ko.by_len:
            _add_read_edges(g, k, ko, r, wk, committed)
        _add_unobserved_append_edges(g, k, ko, wk, committed)
    if realtime:
        _add_realtime_edges(g, by_id, committed)
    return g


def _add_ww_edges(g: _Graph, k: Any, ko: _KeyOrder, wk: dict[Any, int], committed: set[int]) -> None:
    """``ww``: each committed writer of the version order precedes the next committed writer."""
    prev: int | None = None
    prev_v: Any = None
    for v in ko.order:
        ww = wk.get(v)
        if ww is None or ww not in committed:
            continue
        if prev is not None and ww != prev:
            g.add(prev, ww, WW, (k, prev_v, v, False))
        prev, prev_v = ww, v


def _last_committed(values: list[Any], wk: dict[Any, int], committed: set[int]) -> tuple[int | None, Any]:
    """The last value of `values` appended by a committed txn, and that txn (None, None if none)."""
    i = len(values) - 1
    while i >= 0 and wk.get(values[i]) not in committed:
        i -= 1
    return (wk[values[i]], values[i]) if i >= 0 else (None, None)


def _add_read_edges(g: _Graph, k: Any, ko: _KeyOrder, r: _Read, wk: dict[Any, int], committed: set[int]) -> None:
    """``wr`` and ``rw`` edges of one distinct read `r` of `k`, for its external committed readers.

    ``wr``: the writer of the last value read precedes the reader. ``rw``: the
    reader precedes the writer of the next value of the version order after
    what it read (the first one not appended by that last writer).
    """
    if not any(ext and i in committed for i, ext in r.readers):
        return
    w_last, v_last = _last_committed(r.value, wk, committed)
    nxt: int | None = None
    v_next: Any = None
    if r.compatible:
        for v in ko.order[len(r.value) :]:
            nw = wk.get(v)
            if nw is not None and nw in committed and nw != w_last:
                nxt, v_next = nw, v
                break
    for reader, ext in r.readers:
        if not ext or reader not in committed or reader == w_last:
            continue
        if w_last is not None:
            g.add(w_last, reader, WR, (k, v_last))
        if nxt is not None and nxt != reader:
            g.add(reader, nxt, RW, (k, v_last, v_next, False))


def _add_unobserved_append_edges(g: _Graph, k: Any, ko: _KeyOrder, wk: dict[Any, int], committed: set[int]) -> None:
    """A committed append no read observed comes after the whole version order.

    So it gets a ``ww`` edge from the order's last committed writer and an
    ``rw`` edge from each txn that read the whole order: this is what catches
    lost appends and stale reads of never-read values (beyond Elle).
    """
    unseen = [(v, w) for v, w in wk.items() if w in committed and v not in ko.observed]
    if not unseen:
        return
    last_w, last_v = _last_committed(ko.order, wk, committed)
    tail_readers = [tr for tr, ext in ko.order_read.readers if ext and tr in committed and tr != last_w]
    for v, w in unseen:
        if w == last_w:  # same version as the last observed one
            continue
        if last_w is not None:
            g.add(last_w, w, WW, (k, last_v, v, True))
        for tr in tail_readers:
            if tr != w:
                g.add(tr, w, RW, (k, last_v, v, True))


def _add_realtime_edges(g: _Graph, by_id: dict[int, Txn], committed: set[int]) -> None:
    """``rt``: T1 (ok) completed before T2 was invoked, so T1 must come first.

    Encoded sparsely: each txn gets edges only from the frontier of latest
    completions before its invocation, a subgraph whose transitive closure is
    exactly the real-time order.
    """
    events: list[tuple[float, int, int]] = []
    for tid in committed:
        t = by_id[tid]
        events.append((t.invoke_time, 0, tid))
        if t.status == "ok" and t.complete_time is not None:
            events.append((t.complete_time, 1, tid))
    events.sort()
    frontier: set[int] = set()
    preds: dict[int, list[int]] = {}
    for _, is_completion, tid in events:
        if is_completion:
            frontier.difference_update(preds.pop(tid, ()))
            frontier.add(tid)
        else:
            preds[tid] = sorted(frontier)
            for p in preds[tid]:
                g.add(p, tid, RT, ())


def _cycle_anomalies(g: _Graph, realtime: bool, by_id: dict[int, Txn]) -> list[Anomaly]:
    """``G0``, ``G1c``, ``G-single``, ``G2`` (``-realtime``): one cycle per strongly connected
    component of the graph, of the weakest class it contains. A cycle means no serial
    order is consistent with what the txns observed."""
    return [
        _classify_scc(g, sorted(scc), realtime, by_id)
        for scc in _tarjan(sorted(g.adj), lambda v: g.adj.get(v, {}).keys())
        if len(scc) > 1
    ]


def _ranked(anomalies: list[Anomaly]) -> list[Anomaly]:
    """The anomalies sorted by kind (in `_KIND_ORDER`), then by txns."""
    rank = {k: i for i, k in enumerate(_KIND_ORDER)}
    return sorted(anomalies, key=lambda a: (rank.get(a.kind, len(rank)), a.txns))


def _copy_ops(ops: Iterable[Sequence[Any]]) -> list[Op]:
    return [(str(f), k, list(v) if isinstance(v, (list, tuple)) else v) for f, k, v in ops]


class HistoryRecorder:
    """Records a list-append history as clients run transactions.

    Call :meth:`invoke` before starting a transaction (reads as
    ``("r", k, None)``) and :meth:`complete` once its outcome is known, passing
    the ops with read results filled in. Transactions never completed appear
    as ``"info"``. Every method is synchronous and lock-protected, so one
    recorder may be shared by asyncio tasks (and threads) of one process. For
    multi-process campaigns give each process its own ``first_id`` range, write
    with :meth:`to_jsonl` and concatenate :meth:`from_jsonl` results; the
    default clock, ``time.monotonic``, is comparable across processes of one
    Linux host but not across hosts.
    """

    def __init__(self, *, first_id: int = 0, clock: Callable[[], float] = time.monotonic) -> None:
        self._lock = threading.Lock()
        self._next_id = first_id
        self._clock = clock
        self._txns: dict[int, Txn] = {}

    def invoke(self, process: int, ops: Iterable[Sequence[Any]]) -> int:
        """Record the start of a transaction; returns its id."""
        copied = _copy_ops(ops)
        with self._lock:
            tid = self._next_id
            self._next_id += 1
            self._txns[tid] = Txn(tid, process, copied, "info", self._clock(), None)
        return tid

    def complete(self, txn_id: int, status: Status, ops_with_reads: Iterable[Sequence[Any]] | None = None) -> None:
        """Record a transaction's outcome (and its ops with read results)."""
        if status not in ("ok", "fail", "info"):
            raise ValueError(f"bad status {status!r}")
        copied = None if ops_with_reads is None else _copy_ops(ops_with_reads)
        with self._lock:
            t = self._txns[txn_id]
            if t.complete_time is not None:
                raise ValueError(f"T{txn_id} already completed")
            t.complete_time = self._clock()
            t.status = status
            if copied is not None:
                t.ops = copied

    def history(self) -> list[Txn]:
        """A snapshot of the recorded transactions, ordered by id."""
        with self._lock:
            return [
                Txn(t.id, t.process, _copy_ops(t.ops), t.status, t.invoke_time, t.complete_time)
                for _, t in sorted(self._txns.items())
            ]

    def to_jsonl(self, path: str) -> None:
        """Write the history as JSON lines (keys must be ints or strings)."""
        with open(path, "w", encoding="utf-8") as fh:
            for t in self.history():
                for _, k, _ in t.ops:
                    if not isinstance(k, (int, str)):
                        raise TypeError(f"T{t.id}: key {k!r} is not an int or str")
                fh.write(
                    json.dumps(
                        {
                            "id": t.id,
                            "process": t.process,
                            "status": t.status,
                            "invoke_time": t.invoke_time,
                            "complete_time": t.complete_time,
                            "ops": [list(op) for op in t.ops],
                        }
                    )
                    + "\n"
                )

    @staticmethod
    def from_jsonl(path: str) -> list[Txn]:
        """Read a history written by :meth:`to_jsonl`."""
        txns: list[Txn] = []
        with open(path, encoding="utf-8") as fh:
            for line in fh:
                if line.strip():
                    d = json.loads(line)
                    txns.append(
                        Txn(
                            d["id"],
                            d["process"],
                            _copy_ops(d["ops"]),
                            d["status"],
                            d["invoke_time"],
                            d["complete_time"],
                        )
                    )
        return txns
