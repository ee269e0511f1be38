"""A concurrency and fault campaign: many processes, injected faults, SIGKILLs, checked histories.

Run it from the command line (``--help`` lists every option)::

    python -m kvstore.testing.campaign --url file:///tmp/campaign --processes 4 --tasks 8 \\
        --txns 3000 --seed 1 --faults on --kills on --workload all --duration-limit 120

Several client processes (multiprocessing *spawn*), each running ``--tasks``
asyncio tasks, run transactions of three workloads against their own store
under ``--url`` (``<url>/list-append``, ``<url>/bank``, ``<url>/counter``,
``<url>/atomic-counter``):

* **list-append** (Elle's workload): 1-4 random micro-ops per transaction,
  append a unique int to a key's list or read the whole list, over a small
  rotating key set. The merged history is checked with
  `kvstore.testing.listappend.check` (strict serializability: real-time order
  is enforced), after a final read of every key is added to it.
* **bank**: transfers between accounts; an auditor task per process checks
  that every snapshot sums to the initial total with no negative balance; the
  final total is checked too.
* **counter**: read-increment-write of a few counters; every acknowledged
  increment must be present and none twice (final value between acknowledged
  and acknowledged + unknown), and no two acknowledged increments may have
  read the same value (a lost update).
* **atomic-counter**: blind atomic adds (`Transaction.add`) of random amounts
  to a few counters; never a conflict, and each final value must be the sum
  of the acknowledged adds plus the sum of some subset of the unknown ones.
* **bank-xp** (not in ``all``; ``--workload bank-xp``): the bank over
  `XP_PARTITIONS` partitions of one store root (`kvstore.testing.partitions`,
  at the engine level), account i in partition i % `XP_PARTITIONS`: most
  transfers span two partitions and commit with the two-phase protocol
  (`kvstore._two_phase.commit_across`). Audits read every partition and
  validate (`Engine.changed_since`) as a read-only transaction across
  partitions does; every validated audit and the final state (after resolving
  every decided intent) must sum to the total, none negative.

With ``--faults on`` every process's object store is wrapped in a
`FaultInjectingStore` (`FAULT_RULES`: errors, 409s, timeouts, lost responses
after the write was applied, resends the client never saw, latency,
outages). On an S3 endpoint the workers always reach it through a
store-and-forward `FaultProxy` run by the coordinator (so the server never
sees a killed worker vanish mid-answer, which hangs LocalStack); with
``--net-faults on`` that proxy also injects `NET_RULE` on the wire: answers
lost after the request was applied, resets, cut and stalled answers. With ``--kills on`` the
coordinator SIGKILLs a random worker every ``--kill-interval`` seconds on
average and starts a replacement that carries on with the rest of its share;
``--planned-kills N`` also has N workers freeze themselves (SIGSTOP, from a
timer thread) a few milliseconds after a random invocation, to be SIGKILLed
and replaced, so that a short run is killed however fast the machine is.

Outcomes: ``ok`` (commit returned), ``fail`` (ConflictError or
TransactionTooOldError from commit, or any kvstore error before commit: nothing
was sent), ``info`` (anything else from commit — CommitOutcomeUnknownError,
StoreUnavailableError, ... — or the process was killed: unknown); `txn_outcome`
is that mapping, and `_Client.attempt` the one path every transaction takes
to it. Every worker
appends its history to a JSON-lines journal as it goes (invoke before the
transaction starts, completion once its outcome is known) with one ``write``
each, so a SIGKILL loses nothing already recorded; an invocation without a
completion is ``info``.

The result is a summary table on stdout and a JSON document (``--out``);
the exit status is 0 iff no anomaly was found.

The parts, in the order of this file: the journal; the workload clients (one
per workload, run in the workers); the worker process (`_Worker`: open the
stores, run the tasks and the bank auditor, finish); the coordinator
(`_Coordinator`: launch, kill and replace, reap, planned and timed kills, the
hang watchdog); the checks of the merged journals; the command line.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import importlib
import json
import logging
import multiprocessing
import multiprocessing.connection
import os
import random
import signal
import sys
import tempfile
import threading
import time
import traceback
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import kvstore
from kvstore._engine import Engine
from kvstore._two_phase import commit_across
from kvstore.testing.faults import FaultInjectingStore, FaultPlan, FaultRule
from kvstore.testing.listappend import HistoryRecorder, Status, Txn, check
from kvstore.testing.netproxy import FaultProxy, NetRule
from kvstore.testing.partitions import Parts, open_parts, read_balances, request

WORKLOADS = ("list-append", "bank", "counter", "atomic-counter")
EXTRA_WORKLOADS = ("bank-xp",)  # run only when named
_SHORT = {"list-append": "la", "bank": "bank", "counter": "ctr", "atomic-counter": "actr", "bank-xp": "bxp"}
_MAX_ATOMIC_ADD = 1000  # atomic-counter adds 1..this: sums then tell which unknown adds landed
XP_PARTITIONS = 4
# Undecided intents of a killed coordinator hold their keys this long (StoreOptions.intent_timeout).
_XP_INTENT_TIMEOUT = 1.0

# Injected per request when --faults on. Rates are per request and per
# operation; `outage` starts a burst that fails the next `outage_length`
# requests, which exhausts the retries and so produces unknown outcomes.
FAULT_RULES: dict[str, FaultRule] = {
    "get": FaultRule(error=0.02, timeout=0.01, lost_response=0.01, jitter=0.002),
    "put_if_absent": FaultRule(error=0.03, conflict=0.01, timeout=0.02, lost_response=0.03, jitter=0.003),
    "put_if_match": FaultRule(error=0.03, conflict=0.03, timeout=0.03, lost_response=0.04, resent=0.02, jitter=0.003),
}
FAULT_DEFAULT = FaultRule(error=0.02)
FAULT_OUTAGE = 0.002
FAULT_OUTAGE_LENGTH = 12

# Injected per HTTP exchange on the wire with --net-faults on (any method).
NET_RULE = NetRule(lose_answer=0.03, reset=0.01, truncate=0.01, stop_mid_body=0.003, swallow=0.002)

# Fewer, faster retries than the default policy: faults then exhaust them now
# and then, which is what exercises the unknown-outcome paths. Short deadlines
# too: a stalled answer on the wire is given up after about a second.
CAMPAIGN_RETRY = kvstore.RetryPolicy(
    max_attempts=4, base_delay=0.002, max_delay=0.05, attempt_timeout=2.0, total_timeout=10.0
)
CAMPAIGN_S3 = kvstore.S3Options(connect_timeout=2.0, read_timeout=1.0)

# Seconds the coordinator waits past the duration limit before it calls a worker hung.
_HANG_GRACE = 30.0
_JOURNAL_STATS_EVERY = 100  # transactions between a worker's fault-counter lines
_AUDIT_PAUSE = 0.1  # seconds between two bank audits of one process (pacing, not sync)
_INITIAL_BALANCE = 100
_IDS_PER_PROCESS = 10_000_000
_OPEN_ATTEMPTS = 10  # a worker that cannot open a store in this many tries gives up
_STARTED_BYTES = 200  # a journal this long holds the start record and some invocations
_FREEZE_DELAY_MAX = 0.02  # seconds from a planned freeze's invocation to its SIGSTOP


@dataclass(frozen=True)
class CampaignConfig:
    """Everything a campaign run depends on; the seed makes the random choices reproducible."""

    url: str
    endpoint_url: str | None = None
    processes: int = 4
    tasks: int = 8
    txns: int = 2000  # transactions invoked in all, over every process and workload
    seed: int = 0
    faults: bool = True
    net_faults: bool = False  # S3 only: NET_RULE on the wire, through the coordinator's proxy
    kills: bool = True
    workloads: tuple[str, ...] = WORKLOADS
    duration_limit: float = 300.0  # seconds; no transaction is started after it
    kill_interval: float = 3.0  # mean seconds between two kills
    max_kills: int | None = None  # no more SIGKILLs after this many (bounds a short run on a slow machine)
    # Workers that freeze themselves (SIGSTOP) at a random invocation of their
    # share, to be SIGKILLed: kills that happen whatever the machine's speed
    # (the timed kills alone can all miss a run that ends in a second).
    planned_kills: int = 0
    workdir: str | None = None  # journals and the result; a new temporary directory if None
    keys: int = 6  # list-append: keys appended to at a time
    max_appends: int = 40  # list-append: a key is retired once its list is this long
    accounts: int = 8
    counters: int = 4
    # "module:function" that every worker calls before it opens its stores; the
    # module must be importable there (spawned workers inherit the coordinator's
    # sys.path). The tests use it to break kvstore on purpose (tests/sabotage.py).
    worker_setup: str | None = None
    # StoreOptions.target_segment_bytes of every worker (None: the default). A few KiB
    # make every compaction write many segments and a sorted run.
    target_segment_bytes: int | None = None
    # Partitions of the list-append, bank, counter and atomic-counter stores: above 1 each
    # is created with `kvstore.open(url, split_keys=...)` (`split_keys_of`) and its items
    # spread over the partitions (`item_key`), so transactions span partitions.
    partitions: int = 1


@dataclass(frozen=True)
class WorkerSpec:
    """What one worker process (one incarnation of a slot) is asked to do."""

    config: CampaignConfig
    slot: int
    incarnation: int  # campaign-wide number of this process, 0, 1, ...
    quota: int  # transactions to invoke
    stop_at: float  # time.time() after which no transaction starts
    journal: str
    freeze_after: int | None = None  # SIGSTOP itself shortly after invoking this many transactions
    endpoint_url: str | None = None  # where the worker reaches S3: the coordinator's proxy


# --------------------------------------------------------------------------- journal


class Journal:
    """An append-only JSON-lines file; each record is one `os.write`, so a kill never splits
    a record that was written, and whatever was written survives the process."""

    def __init__(self, path: str) -> None:
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    def write(self, record: dict[str, Any]) -> None:
        os.write(self._fd, (json.dumps(record, separators=(",", ":")) + "\n").encode())

    def close(self) -> None:
        os.close(self._fd)


def read_journal(path: str | Path) -> Iterator[dict[str, Any]]:
    """The records of a journal; a torn last line (killed mid-write) is skipped."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    for n, line in enumerate(lines):
        try:
            yield json.loads(line)
        except json.JSONDecodeError:
            if n != len(lines) - 1:
                raise
            return


class _Clock:
    """time.monotonic, remembering its last reading (the recorder's invoke time)."""

    def __init__(self) -> None:
        self.last = 0.0

    def __call__(self) -> float:
        self.last = time.monotonic()
        return self.last


def txn_outcome(exc: BaseException | None, *, reached_commit: bool) -> tuple[Status, str | None]:
    """The journal status of a transaction and, unless ok, why: the campaign's one error mapping.

    * no exception: ``ok``;
    * anything raised before the commit (by the reads): ``fail``, nothing was sent;
    * a conflict (ConflictError, TransactionTooOldError) from the commit: ``fail``,
      a definite "not applied";
    * anything else from the commit: ``info``. It may come after a CAS that
      reached the store (kvstore raises StoreUnavailableError from the segment
      write, before any CAS, too, but we stay conservative).
    """
    if exc is None:
        return "ok", None
    if not reached_commit:
        return "fail", f"{type(exc).__name__} before commit"
    return ("fail" if isinstance(exc, kvstore.ConflictError) else "info"), type(exc).__name__


def item_key(prefix: str, i: int, width: int, partitions: int) -> str:
    """The key of item `i` (a list, an account, a counter) of a workload whose keys start
    with `prefix`: in partition i % `partitions` of a store split by `split_keys_of`."""
    if partitions <= 1:
        return f"{prefix}/{i:0{width}d}"
    return f"{prefix}/{i % partitions}/{i:0{width}d}"


def split_keys_of(prefix: str, partitions: int) -> list[bytes]:
    """The boundaries that put `item_key(prefix, i, ...)` in partition i % `partitions`."""
    return [f"{prefix}/{p}/".encode() for p in range(1, partitions)]


def spans(items: Iterable[int], partitions: int) -> bool:
    """Whether a transaction on `items` touches several partitions (`item_key`)."""
    return partitions > 1 and len({i % partitions for i in items}) > 1


# Each workload's key prefix (`item_key`).
_PREFIX = {"list-append": "la", "bank": "acct", "counter": "ctr", "atomic-counter": "actr"}


# --------------------------------------------------------------------------- workloads (worker side)


_TxnBody = Callable[[kvstore.Transaction], Awaitable[dict[str, Any]]]
"""A transaction's reads and writes; returns fields for its completion record."""


class _Client:
    """Shared plumbing of the workload clients of one worker process."""

    name = ""

    def __init__(self, db: kvstore.Store, journal: Journal, spec: WorkerSpec, ids: Iterator[int]) -> None:
        self.db = db
        self.journal = journal
        self.spec = spec
        self.process = spec.incarnation
        self._ids = ids

    async def run_one(self, rng: random.Random) -> None:
        raise NotImplementedError

    def next_id(self) -> int:
        return next(self._ids)

    def key(self, i: int, width: int = 4) -> str:
        """The key of this workload's item `i` (`item_key`)."""
        return item_key(_PREFIX[self.name], i, width, self.spec.config.partitions)

    def spans(self, items: Iterable[int]) -> bool:
        """Whether a transaction on `items` touches several partitions."""
        return spans(items, self.spec.config.partitions)

    def record(self, **fields: Any) -> None:
        self.journal.write({"w": _SHORT[self.name], **fields})

    def complete(self, txn_id: int, status: Status, why: str | None, **fields: Any) -> None:
        """Journal a transaction's completion record."""
        self.record(e="c", id=txn_id, s=status, **fields, why=why)

    def error(self, txn_id: int, exc: BaseException) -> None:
        """An exception kvstore should never raise here: a finding, journaled with its traceback."""
        self.journal.write(
            {
                "e": "error",
                "w": _SHORT[self.name],
                "id": txn_id,
                "error": "".join(traceback.format_exception(exc))[-4000:],
            }
        )

    async def attempt(self, txn_id: int, body: _TxnBody) -> tuple[Status, str | None, dict[str, Any]]:
        """Run `body` in a new transaction and commit it: the one path of every outcome.

        Returns the status and why (`txn_outcome`) and the fields `body`
        returned for the completion record (none if it raised). An exception
        that is not a kvstore error is also journaled as a finding.
        """
        tx = self.db.transaction()
        fields: dict[str, Any] = {}
        reached_commit = False
        failure: Exception | None = None
        try:
            fields = await body(tx)
            reached_commit = True
            await tx.commit()
        except Exception as exc:  # noqa: BLE001 - every exception is an outcome to record
            failure = exc
            if not reached_commit:
                tx.discard()  # nothing was sent
            if not isinstance(exc, kvstore.KvStoreError):
                self.error(txn_id, exc)
        status, why = txn_outcome(failure, reached_commit=reached_commit)
        return status, why, fields


class ListAppendClient(_Client):
    """Elle's list-append transactions, recorded with a HistoryRecorder and the journal."""

    name = "list-append"

    def __init__(
        self, db: kvstore.Store, journal: Journal, spec: WorkerSpec, ids: Iterator[int], low_hint: Any, first_id: int
    ) -> None:
        super().__init__(db, journal, spec, ids)
        self._clock = _Clock()
        self.recorder = HistoryRecorder(first_id=first_id, clock=self._clock)
        self._next_value = first_id  # appended values: unique campaign-wide (disjoint id ranges)
        self._hint = low_hint  # shared by all workers: lowest key not known to be full
        self._low = int(low_hint.value)
        self._full: set[int] = set()

    def _plan(self, rng: random.Random) -> list[list[Any]]:
        cfg = self.spec.config
        window = [k for k in range(self._low, self._low + cfg.keys) if k not in self._full]
        ops: list[list[Any]] = []
        for _ in range(rng.randint(1, 4)):
            key = rng.choice(window)
            if rng.random() < 0.5:
                ops.append(["append", key, self._next_value])
                self._next_value += 1
            else:
                ops.append(["r", key, None])
        return ops

    async def run_one(self, rng: random.Random) -> None:
        ops = self._plan(rng)
        txn_id = self.recorder.invoke(self.process, ops)
        x = self.spans(op[1] for op in ops)
        self.record(e="i", id=txn_id, p=self.process, t=self._clock.last, ops=ops, x=x)
        done: list[list[Any]] = []
        status, why, _ = await self.attempt(txn_id, lambda tx: self._apply(tx, ops, done))
        final_ops = done if status == "ok" else ops  # reads of unknown txns are not evidence
        self.recorder.complete(txn_id, status, final_ops)
        self.complete(txn_id, status, why, t=self._clock.last, ops=final_ops)

    async def _apply(self, tx: kvstore.Transaction, ops: list[list[Any]], done: list[list[Any]]) -> dict[str, Any]:
        """Run `ops` in `tx`, appending each with its read result to `done`."""
        for f, key, value in ops:
            current = await tx.get(self.key(key, 8), [])
            self._note_length(key, len(current))
            if f == "append":
                tx.put(self.key(key, 8), [*current, value])
                done.append([f, key, value])
            else:
                done.append([f, key, current])
        return {}

    def _note_length(self, key: int, length: int) -> None:
        """Retire full keys, so lists (and the history) stay small."""
        if length < self.spec.config.max_appends:
            return
        self._full.add(key)
        while self._low in self._full:
            self._low += 1
        if self._low > self._hint.value:
            self._hint.value = self._low  # racy max on shared memory: only a hint


class BankClient(_Client):
    """Transfers between accounts; `audit` checks snapshots."""

    name = "bank"

    async def run_one(self, rng: random.Random) -> None:
        cfg = self.spec.config
        a, b = rng.sample(range(cfg.accounts), 2)
        amount = rng.randint(1, 30)
        txn_id = self.next_id()
        self.record(e="i", id=txn_id, a=a, b=b, n=amount, x=self.spans((a, b)))

        async def transfer(tx: kvstore.Transaction) -> dict[str, Any]:
            balance_a = await tx.get(self.key(a))
            balance_b = await tx.get(self.key(b))
            moved = balance_a >= amount
            if moved:
                tx.put(self.key(a), balance_a - amount)
                tx.put(self.key(b), balance_b + amount)
            return {"moved": moved}

        status, why, fields = await self.attempt(txn_id, transfer)
        self.complete(txn_id, status, why, **fields)

    async def audit(self) -> None:
        """One audit: a snapshot's balances must sum to the total, none negative."""
        cfg = self.spec.config
        try:
            snap = await self.db.snapshot()  # partitioned: all partitions at one instant
            balances = [await snap.get(self.key(i)) for i in range(cfg.accounts)]
        except kvstore.KvStoreError:
            return  # injected faults; an audit that could not read proves nothing
        total = sum(b for b in balances if isinstance(b, int))
        self.record(e="a", v=snap.version, sum=total, bad=[b for b in balances if not isinstance(b, int) or b < 0])


class CrossBankClient(_Client):
    """The bank across partitions, at the engine level (`bank-xp`)."""

    name = "bank-xp"

    def __init__(self, parts: Parts, journal: Journal, spec: WorkerSpec, ids: Iterator[int]) -> None:
        super().__init__(None, journal, spec, ids)  # type: ignore[arg-type]  # no Store: engines
        self.parts = parts

    def _engine(self, account: int) -> Engine:
        return self.parts.engines[account % len(self.parts.engines)]

    async def run_one(self, rng: random.Random) -> None:
        cfg = self.spec.config
        a, b = rng.sample(range(cfg.accounts), 2)
        amount = rng.randint(1, 30)
        txn_id = self.next_id()
        ea, eb = self._engine(a), self._engine(b)
        self.record(e="i", id=txn_id, a=a, b=b, n=amount, x=ea is not eb)
        reached_commit = False
        failure: Exception | None = None
        moved = False
        try:
            va = await ea.latest_view()
            vb = va if eb is ea else await eb.latest_view()
            ka, kb = _xp_account(a), _xp_account(b)
            balance_a, balance_b = int(await va.get(ka) or b"0"), int(await vb.get(kb) or b"0")
            moved = balance_a >= amount
            if moved:
                new_a, new_b = str(balance_a - amount).encode(), str(balance_b + amount).encode()
                reached_commit = True
                if ea is eb:
                    await ea.commit(request(ea, va, {ka, kb}, {ka: new_a, kb: new_b}))
                else:
                    txn = ea.new_txn_id()
                    await commit_across(
                        [(ea, request(ea, va, {ka}, {ka: new_a}, txn)), (eb, request(eb, vb, {kb}, {kb: new_b}, txn))],
                        self.parts.decisions,
                    )
        except Exception as exc:  # noqa: BLE001 - every exception is an outcome to record
            failure = exc
            if not isinstance(exc, kvstore.KvStoreError):
                self.error(txn_id, exc)
        status, why = txn_outcome(failure, reached_commit=reached_commit)
        self.complete(txn_id, status, why, moved=moved)

    async def audit(self) -> None:
        """One audit across partitions, validated as a read-only transaction is."""
        cfg = self.spec.config
        try:
            balances = await xp_balances(self.parts, cfg.accounts)
        except kvstore.KvStoreError:
            return  # injected faults; an audit that could not read proves nothing
        if balances is None:  # a commit or a decision came between its reads: no consistent cut
            self.record(e="a", torn=True)
            return
        self.record(e="a", sum=sum(balances), bad=[b for b in balances if b < 0])


def _xp_account(i: int) -> bytes:
    return f"acct/{i:04d}".encode()


async def xp_balances(parts: Parts, accounts: int) -> list[int] | None:
    """Every balance of the `bank-xp` store, read partition by partition and validated
    (`Engine.changed_since`); None if a partition changed under the reads."""
    return await read_balances(parts, accounts, _xp_account)


class CounterClient(_Client):
    """Read-increment-write of a few counters; the value read is recorded."""

    name = "counter"

    async def run_one(self, rng: random.Random) -> None:
        keys = _counters_of_one_txn(self.spec.config, rng)
        txn_id = self.next_id()
        self.record(e="i", id=txn_id, k=keys, x=self.spans(keys))

        async def increment(tx: kvstore.Transaction) -> dict[str, Any]:
            read: list[int] = []
            for key in keys:
                value = await tx.get(self.key(key), 0)
                tx.put(self.key(key), value + 1)
                read.append(value)
            return {"r": read}

        status, why, fields = await self.attempt(txn_id, increment)
        self.complete(txn_id, status, why, **fields)


class AtomicCounterClient(_Client):
    """Blind atomic adds (`Transaction.add`) of random amounts to a few counters."""

    name = "atomic-counter"

    async def run_one(self, rng: random.Random) -> None:
        keys = _counters_of_one_txn(self.spec.config, rng)
        amount = rng.randint(1, _MAX_ATOMIC_ADD)
        txn_id = self.next_id()
        self.record(e="i", id=txn_id, k=keys, n=amount, x=self.spans(keys))

        async def add(tx: kvstore.Transaction) -> dict[str, Any]:
            for key in keys:
                tx.add(self.key(key), amount)
            return {}

        status, why, fields = await self.attempt(txn_id, add)
        self.complete(txn_id, status, why, **fields)


def _counters_of_one_txn(cfg: CampaignConfig, rng: random.Random) -> list[int]:
    """The counters one counter or atomic-counter transaction changes: one, or on a
    partitioned store half the time two (in two partitions when `counters` allows)."""
    if cfg.partitions > 1 and cfg.counters > 1 and rng.random() < 0.5:
        return rng.sample(range(cfg.counters), 2)
    return [rng.randrange(cfg.counters)]


# --------------------------------------------------------------------------- worker process


def store_url(base: str, workload: str) -> str:
    """The URL of one workload's store under the campaign's base URL."""
    return f"{base.rstrip('/')}/{workload}"


def store_options(*, inline: bool, target_segment_bytes: int | None = None) -> kvstore.StoreOptions:
    """A worker's options. Half the incarnations write every commit's segment as an
    object (`inline=False`), so safe creates meet faults as often as CAS does."""
    options = kvstore.StoreOptions(retry=CAMPAIGN_RETRY, inline_segment_bytes=16 * 1024 if inline else 0)
    if target_segment_bytes is None:
        return options
    return dataclasses.replace(options, target_segment_bytes=target_segment_bytes)


def fault_plan(seed: int) -> FaultPlan:
    """The fault matrix of a campaign process (see FAULT_RULES)."""
    return FaultPlan(
        seed=seed,
        rules=dict(FAULT_RULES),
        default=FAULT_DEFAULT,
        outage=FAULT_OUTAGE,
        outage_length=FAULT_OUTAGE_LENGTH,
    )


def resolve_worker_setup(name: str) -> Callable[[], object]:
    """The function a `CampaignConfig.worker_setup` hook names (``"module:function"``).

    Raises ValueError if the name is malformed, TypeError if it names no function, ImportError
    if the module cannot be imported.
    """
    module, sep, attr = name.partition(":")
    if not (sep and module and attr):
        raise ValueError(f"worker_setup {name!r}: expected 'module:function'")
    setup: object = getattr(importlib.import_module(module), attr, None)
    if not callable(setup):
        raise TypeError(f"worker_setup {name!r}: {module} has no function {attr!r}")
    return setup


def worker_main(spec: WorkerSpec, low_hint: Any) -> None:
    """Entry point of a worker process (spawned): the setup hook, if any, then its transactions."""
    if spec.config.worker_setup is not None:
        resolve_worker_setup(spec.config.worker_setup)()
    asyncio.run(_Worker(spec, low_hint).run())


class _CountingHandler(logging.Handler):
    """Counts kvstore's log records by level (e.g. background compactions that met faults)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.counts: Counter[str] = Counter()

    def emit(self, record: logging.LogRecord) -> None:
        self.counts[f"log:{record.levelname.lower()}"] += 1


class _FaultCounters:
    """What a worker's fault injectors injected, plus kvstore's log records (counted, not printed)."""

    def __init__(self) -> None:
        self.injectors: list[FaultInjectingStore] = []
        self.logs = _CountingHandler()
        kv_logger = logging.getLogger("kvstore")
        kv_logger.addHandler(self.logs)
        kv_logger.propagate = False  # faults make warnings expected

    def totals(self) -> dict[str, int]:
        total: Counter[str] = Counter()
        for injector in self.injectors:
            total.update(injector.injected)
        total.update(self.logs.counts)
        return dict(total)


class _Worker:
    """One worker process: its stores, clients and journal, and `tasks` tasks sharing its quota."""

    def __init__(self, spec: WorkerSpec, low_hint: Any) -> None:
        self.spec = spec
        self.low_hint = low_hint
        self.journal = Journal(spec.journal)
        self.faults = _FaultCounters()
        self.left = spec.quota  # transactions still to invoke
        self.stores: dict[str, kvstore.Store] = {}
        self.parts: Parts | None = None  # bank-xp's partitions
        self.clients: list[_Client] = []

    async def run(self) -> None:
        """Open the stores, run the tasks (and the bank auditor) to the end, then close."""
        await self._start()
        stop = asyncio.Event()
        auditor = asyncio.ensure_future(self._audit_until(stop))
        await asyncio.gather(*(self._task(n) for n in range(self.spec.config.tasks)))
        stop.set()
        await auditor
        await self._finish()

    async def _start(self) -> None:
        cfg, spec = self.spec.config, self.spec
        for w in cfg.workloads:
            if w == "bank-xp":
                self.parts = await _open_parts_with_retry(cfg, spec, self.faults.injectors)
            else:
                self.stores[w] = await _open_with_retry(cfg, w, spec, self.faults.injectors)
        self.clients = _make_clients(spec, self.stores, self.journal, self.low_hint, self.parts)
        self.journal.write({"e": "start", "slot": spec.slot, "inc": spec.incarnation, "pid": os.getpid()})

    async def _task(self, n: int) -> None:
        """One task: random transactions of random workloads while the quota and time last."""
        spec = self.spec
        rng = random.Random(f"{spec.config.seed}/{spec.incarnation}/{n}")
        while self.left > 0 and time.time() < spec.stop_at:
            self.left -= 1
            if spec.quota - self.left == spec.freeze_after:
                _freeze_soon(rng.uniform(0.0, _FREEZE_DELAY_MAX))
            await rng.choice(self.clients).run_one(rng)
            if self.left % _JOURNAL_STATS_EVERY == 0:
                self.journal.write({"e": "stats", "faults": self.faults.totals()})

    async def _audit_until(self, stop: asyncio.Event) -> None:
        """Audit the bank every `_AUDIT_PAUSE` seconds until `stop` is set (if bank is a workload)."""
        banks = [c for c in self.clients if isinstance(c, BankClient | CrossBankClient)]
        while banks and not stop.is_set():
            for bank in banks:
                await bank.audit()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), _AUDIT_PAUSE)

    async def _finish(self) -> None:
        """A clean exit: save the recorder's history, close the stores, journal `done`."""
        for client in self.clients:
            if isinstance(client, ListAppendClient):
                # The recorder's own copy, to cross-check the journal on a clean exit.
                client.recorder.to_jsonl(self.spec.journal + ".history")
        for db in self.stores.values():
            await db.close()
        if self.parts is not None:
            await self.parts.close()
        self.journal.write({"e": "done", "faults": self.faults.totals()})
        self.journal.close()


def _freeze_soon(delay: float) -> None:
    """SIGSTOP this process from a timer thread: it stops wherever the event loop is then."""
    timer = threading.Timer(delay, os.kill, (os.getpid(), signal.SIGSTOP))
    timer.daemon = True
    timer.start()


def _make_clients(
    spec: WorkerSpec, stores: dict[str, kvstore.Store], journal: Journal, low_hint: Any, parts: Parts | None = None
) -> list[_Client]:
    """One client per workload, with transaction ids from this process's own range."""
    base = spec.incarnation * _IDS_PER_PROCESS
    ids = iter(range(base + _IDS_PER_PROCESS // 2, base + _IDS_PER_PROCESS))  # list-append takes the lower half
    clients: list[_Client] = []
    for w in spec.config.workloads:
        if w == "list-append":
            clients.append(ListAppendClient(stores[w], journal, spec, ids, low_hint, base + 1))
        elif w == "bank":
            clients.append(BankClient(stores[w], journal, spec, ids))
        elif w == "atomic-counter":
            clients.append(AtomicCounterClient(stores[w], journal, spec, ids))
        elif w == "bank-xp":
            assert parts is not None
            clients.append(CrossBankClient(parts, journal, spec, ids))
        else:
            clients.append(CounterClient(stores[w], journal, spec, ids))
    return clients


async def _open_with_retry(
    cfg: CampaignConfig, workload: str, spec: WorkerSpec, injectors: list[FaultInjectingStore]
) -> kvstore.Store:
    """Open one workload's store, through a fault injector if faults are on.

    An injected outage can outlast the retry policy, so opening is tried
    again, each time with a differently seeded injector: the same seed would
    replay the same outage forever.
    """
    inline = spec.incarnation % 2 == 1
    for attempt in range(_OPEN_ATTEMPTS):
        wrap = _fault_wrapper(f"{cfg.seed}/{spec.incarnation}/{workload}/{attempt}", inline, injectors)
        try:
            options = store_options(inline=inline, target_segment_bytes=cfg.target_segment_bytes)
            if cfg.partitions > 1:
                options = dataclasses.replace(options, intent_timeout=_XP_INTENT_TIMEOUT)
            return await kvstore.open(
                store_url(cfg.url, workload),
                values="msgpack",
                options=options,
                endpoint_url=spec.endpoint_url,
                s3_options=CAMPAIGN_S3,
                create=False,
                wrap_object_store=wrap if cfg.faults else None,
            )
        except kvstore.StoreUnavailableError:
            if attempt + 1 == _OPEN_ATTEMPTS:
                raise  # the worker exits non-zero: reported as a finding
    raise AssertionError("unreachable")


async def _open_parts_with_retry(cfg: CampaignConfig, spec: WorkerSpec, injectors: list[FaultInjectingStore]) -> Parts:
    """Open the partitions of the bank-xp store (`_open_with_retry` for several engines);
    each partition and the root get an injector of their own."""
    inline = spec.incarnation % 2 == 1
    options = dataclasses.replace(
        store_options(inline=inline, target_segment_bytes=cfg.target_segment_bytes), intent_timeout=_XP_INTENT_TIMEOUT
    )
    s3 = dataclasses.replace(CAMPAIGN_S3, endpoint_url=spec.endpoint_url) if spec.endpoint_url else CAMPAIGN_S3
    for attempt in range(_OPEN_ATTEMPTS):
        wrap = _numbered_fault_wrapper(f"{cfg.seed}/{spec.incarnation}/bank-xp/{attempt}", inline, injectors)
        try:
            return await open_parts(
                store_url(cfg.url, "bank-xp"),
                XP_PARTITIONS,
                options=options,
                s3=s3,
                create=False,
                wrap=wrap if cfg.faults else None,
                wrap_root=wrap if cfg.faults else None,
            )
        except kvstore.StoreUnavailableError:
            if attempt + 1 == _OPEN_ATTEMPTS:
                raise
    raise AssertionError("unreachable")


def _numbered_fault_wrapper(seed: str, inline: bool, injectors: list[FaultInjectingStore]) -> Callable[[Any], Any]:
    """`_fault_wrapper` for several backends (partitions, root): each gets its own seed."""
    numbers = iter(range(1 << 30))
    return lambda inner: _fault_wrapper(f"{seed}/{next(numbers)}", inline, injectors)(inner)


def _fault_wrapper(seed: str, inline: bool, injectors: list[FaultInjectingStore]) -> Callable[[Any], Any]:
    """A `wrap_object_store` that puts a `fault_plan` injector seeded from `seed` around the store."""

    def wrap(inner: Any) -> Any:
        injector = FaultInjectingStore(inner, fault_plan(random.Random(seed).getrandbits(32)))
        if not inline:
            # Past the open's probe, the first segment create loses its answer: a
            # short run meets that case however the random draws fall.
            injector.script("put_if_absent", "pass", "lost_response")
        injectors.append(injector)
        return injector

    return wrap


# --------------------------------------------------------------------------- coordinator


@dataclass
class _Slot:
    """One of the `processes` client slots and its successive incarnations."""

    index: int
    quota: int
    journals: list[str] = field(default_factory=list)
    process: Any = None  # multiprocessing.Process of the current incarnation
    killed: int = 0
    freezing: bool = False  # the current incarnation will SIGSTOP itself (planned kill)


@dataclass
class CampaignResult:
    """What a campaign did and found. `anomalies` empty means every check held."""

    config: dict[str, Any]
    duration: float = 0.0
    workloads: dict[str, dict[str, Any]] = field(default_factory=dict)
    faults_injected: dict[str, int] = field(default_factory=dict)
    log_records: dict[str, int] = field(default_factory=dict)  # kvstore's warnings in the workers
    kills: int = 0
    incarnations: int = 0
    anomalies: list[dict[str, Any]] = field(default_factory=list)
    stopped_by_duration_limit: bool = False
    workdir: str = ""

    @property
    def ok(self) -> bool:
        return not self.anomalies

    def add(self, workload: str, kind: str, detail: str) -> None:
        self.anomalies.append({"workload": workload, "kind": kind, "detail": detail})

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}


def run_campaign(config: CampaignConfig) -> CampaignResult:
    """Run a campaign to the end and check it; writes `result.json` in the workdir."""
    if config.worker_setup is not None:
        resolve_worker_setup(config.worker_setup)  # a bad name fails here, not in every worker
    workdir = Path(config.workdir or tempfile.mkdtemp(prefix="kvstore-campaign-"))
    workdir.mkdir(parents=True, exist_ok=True)
    config = replace(config, workdir=str(workdir))
    result = CampaignResult(config=asdict(config), workdir=str(workdir))
    started = time.monotonic()
    asyncio.run(_prepare_stores(config))
    with _worker_proxy(config) as proxy:
        slots = _Coordinator(config, workdir, result, None if proxy is None else proxy.endpoint_url).run()
        if proxy is not None:
            result.faults_injected.update({f"net:{k}": n for k, n in proxy.stats.faults.items()})
    journals = [j for s in slots for j in s.journals]
    asyncio.run(_check_all(config, journals, result))
    result.duration = round(time.monotonic() - started, 2)
    (workdir / "result.json").write_text(json.dumps(result.to_json(), indent=2, default=str))
    return result


async def _prepare_stores(config: CampaignConfig) -> None:
    """Create each workload's store (and the bank's accounts) before any worker starts."""
    for w in config.workloads:
        if w == "bank-xp":
            await _prepare_xp(config)
            continue
        split = split_keys_of(_PREFIX[w], config.partitions) if config.partitions > 1 else None
        async with kvstore.open(
            store_url(config.url, w), values="msgpack", endpoint_url=config.endpoint_url, split_keys=split
        ) as db:
            if w == "bank":
                async with db.transaction() as tx:
                    for i in range(config.accounts):
                        key = item_key("acct", i, 4, config.partitions)
                        if await tx.get(key) is None:
                            tx.put(key, _INITIAL_BALANCE)


async def _xp_parts(config: CampaignConfig, *, create: bool) -> Parts:
    s3 = kvstore.S3Options(endpoint_url=config.endpoint_url) if config.endpoint_url else None
    return await open_parts(store_url(config.url, "bank-xp"), XP_PARTITIONS, s3=s3, create=create)


async def _prepare_xp(config: CampaignConfig) -> None:
    parts = await _xp_parts(config, create=True)
    try:
        for p, engine in enumerate(parts.engines):
            view = await engine.latest_view()
            mine = [_xp_account(i) for i in range(config.accounts) if i % XP_PARTITIONS == p]
            missing = {k: str(_INITIAL_BALANCE).encode() for k in mine if await view.get(k) is None}
            if missing:
                await engine.commit(request(engine, view, set(mine), dict[bytes, bytes | None](missing)))
    finally:
        await parts.close()


@contextlib.contextmanager
def _worker_proxy(config: CampaignConfig) -> Iterator[FaultProxy | None]:
    """The proxy between the workers and an S3 endpoint (None for other stores).

    Store-and-forward, so a worker SIGKILLed at any instant never leaves the
    server writing an answer to a vanished client; with `net_faults` it also
    injects NET_RULE.
    """
    if config.endpoint_url is None:
        yield None
        return
    rule = NET_RULE if config.net_faults else NetRule()
    with FaultProxy(upstream=config.endpoint_url, seed=config.seed) as proxy:
        proxy.set_rule(rule)
        yield proxy


class _Coordinator:
    """Starts the workers, kills and replaces them at random moments, and waits for the end.

    Each round of `run` waits a little, then: reaps the workers that exited,
    kills the ones that froze themselves (planned kills), kills a random one if
    a kill is due, and kills every worker still running long past the duration
    limit (the hang watchdog).
    """

    def __init__(self, config: CampaignConfig, workdir: Path, result: CampaignResult, endpoint_url: str | None) -> None:
        self.config = config
        self.workdir = workdir
        self.result = result
        self.endpoint_url = endpoint_url  # where workers reach S3: the proxy
        self._ctx = multiprocessing.get_context("spawn")
        self._low_hint = self._ctx.RawValue("q", 0)  # no lock: a killed holder would leave it locked
        self._rng = random.Random(f"{config.seed}/kills")
        share, extra = divmod(config.txns, config.processes)
        self.slots = [_Slot(i, share + (1 if i < extra else 0)) for i in range(config.processes)]
        self._stop_at = time.time() + config.duration_limit
        self._incarnations = 0
        self._planned_left = config.planned_kills if config.kills else 0
        self._next_kill = 0.0

    def run(self) -> list[_Slot]:
        """Run every slot's share to the end; returns the slots with their journals."""
        for slot in self.slots:
            self.launch(slot, slot.quota)
        self._schedule_next_kill(time.time())
        while any(s.process is not None for s in self.slots):
            self._wait()
            self.reap()
            self.kill_frozen()
            self.kill_if_due()
            self.watch_for_hangs()
        self.result.incarnations = self._incarnations
        self.result.stopped_by_duration_limit = time.time() >= self._stop_at
        return self.slots

    def launch(self, slot: _Slot, quota: int) -> None:
        """Start a new incarnation of `slot`, with its own journal, to invoke `quota` transactions."""
        inc = self._incarnations
        self._incarnations += 1
        journal = str(self.workdir / f"journal-{slot.index:02d}-{inc:04d}.jsonl")
        slot.journals.append(journal)
        freeze_after = self._plan_freeze(quota)
        slot.freezing = freeze_after is not None
        spec = WorkerSpec(self.config, slot.index, inc, quota, self._stop_at, journal, freeze_after, self.endpoint_url)
        slot.process = self._ctx.Process(target=worker_main, args=(spec, self._low_hint), name=f"campaign-{inc}")
        slot.process.start()

    def _plan_freeze(self, quota: int) -> int | None:
        """If planned kills are left, the invocation after which a new incarnation freezes itself.

        In the first half of its share, so that the worker is still busy when its timer fires.
        """
        if self._planned_left <= 0 or quota < 4:
            return None
        self._planned_left -= 1
        return self._rng.randint(1, quota // 2)

    def kill_and_replace(self, victim: _Slot) -> None:
        """SIGKILL the slot's worker and start one that carries on with the rest of its share."""
        _kill(victim, self.result)
        left = victim.quota - sum(_count_invoked(j) for j in victim.journals)
        if left > 0:
            self.launch(victim, left)

    def _wait(self) -> None:
        """Until a worker exits, the next kill is due, or 1 s passed (50 ms while one may freeze)."""
        due_in = self._next_kill - time.time() if self.config.kills else 1.0
        wait_for = max(0.05, min(due_in, 1.0))
        if any(s.freezing for s in self.slots):
            wait_for = 0.05  # a frozen worker does not wake this wait
        alive = [s.process.sentinel for s in self.slots if s.process is not None]
        multiprocessing.connection.wait(alive, timeout=wait_for)

    def reap(self) -> None:
        """Collect workers that exited; a non-zero exit we did not cause is a finding."""
        for s in self.slots:
            p = s.process
            if p is not None and not p.is_alive():
                p.join()
                if p.exitcode != 0:
                    self.result.add("campaign", "worker-crash", f"worker {p.name} exited with code {p.exitcode}")
                s.process = None
                s.freezing = False

    def kill_frozen(self) -> None:
        """Planned kills: SIGKILL and replace each worker that has stopped itself."""
        for s in self.slots:
            if s.freezing and s.process is not None and _is_stopped(s.process.pid):
                self.kill_and_replace(s)

    def kill_if_due(self) -> None:
        """Timed kills: at the scheduled moment, SIGKILL and replace a random busy worker.

        If no worker is running transactions yet, the kill stays due.
        """
        now = time.time()
        kills_left = self.config.max_kills is None or self.result.kills < self.config.max_kills
        if not (self.config.kills and kills_left and self._next_kill <= now < self._stop_at):
            return
        victim = _pick_victim(self.slots, self._rng)
        if victim is not None:
            self.kill_and_replace(victim)
            self._schedule_next_kill(now)

    def _schedule_next_kill(self, now: float) -> None:
        self._next_kill = now + self._rng.expovariate(1 / self.config.kill_interval)

    def watch_for_hangs(self) -> None:
        """Report and kill every worker still running `_HANG_GRACE` seconds past the duration limit."""
        if time.time() <= self._stop_at + _HANG_GRACE:
            return
        for s in self.slots:
            if s.process is not None:
                self.result.add(
                    "campaign",
                    "hang",
                    f"worker {s.process.name} still running {_HANG_GRACE:.0f} s after the duration limit; killed",
                )
                _kill(s, self.result)


def _is_stopped(pid: int) -> bool:
    """Whether the child is stopped (SIGSTOP); WNOWAIT leaves its state for multiprocessing to reap."""
    found = os.waitid(os.P_PID, pid, os.WSTOPPED | os.WNOHANG | os.WNOWAIT)
    return found is not None


def _pick_victim(slots: list[_Slot], rng: random.Random) -> _Slot | None:
    """A random running worker that has started transactions (killing a booting one tests little)."""
    running = [
        s
        for s in slots
        if s.process is not None and s.process.is_alive() and _journal_size(s.journals[-1]) > _STARTED_BYTES
    ]
    return rng.choice(running) if running else None


def _kill(slot: _Slot, result: CampaignResult) -> None:
    """SIGKILL the slot's worker at once, wherever it is (the proxy shields S3 servers)."""
    slot.process.kill()  # SIGKILL
    slot.process.join()
    slot.process = None
    slot.freezing = False
    slot.killed += 1
    result.kills += 1


def _journal_size(journal: str) -> int:
    try:
        return os.path.getsize(journal)
    except FileNotFoundError:
        return 0


def _count_invoked(journal: str) -> int:
    if not os.path.exists(journal):
        return 0
    return sum(1 for r in read_journal(journal) if r.get("e") == "i")


# --------------------------------------------------------------------------- checks


async def _check_all(config: CampaignConfig, journals: list[str], result: CampaignResult) -> None:
    """Merge the journals and run every workload's checks, plus `verify` of every store."""
    records = [r for j in journals for r in read_journal(j)]
    _collect_faults(journals, result)
    for r in records:
        if r.get("e") == "error":
            result.add(_long(r["w"]), "unexpected-exception", f"txn {r['id']}: {r['error']}")
    by_workload: dict[str, list[dict[str, Any]]] = {w: [] for w in config.workloads}
    for r in records:
        if "w" in r and r.get("e") in ("i", "c", "a"):
            by_workload[_long(r["w"])].append(r)
    for w in config.workloads:
        await _check_workload(config, w, by_workload[w], journals, result)


async def _check_workload(
    config: CampaignConfig, workload: str, records: list[dict[str, Any]], journals: list[str], result: CampaignResult
) -> None:
    """One workload's checks of its journal records and final state, then `verify` of its store."""
    if workload == "bank-xp":
        await _check_xp(config, records, result)
        return
    async with kvstore.open(
        store_url(config.url, workload), values="msgpack", endpoint_url=config.endpoint_url, create=False
    ) as db:
        if workload == "list-append":
            await _check_list_append(db, config, records, journals, result)
        elif workload == "bank":
            await _check_bank(db, config, records, result)
        elif workload == "atomic-counter":
            await _check_atomic_counter(db, config, records, result)
        else:
            await _check_counter(db, config, records, result)
        report = await db.verify()
        result.workloads[workload]["objects_verified"] = report.objects_checked
        for name, what in report.damaged.items():
            result.add(workload, "corruption", f"{name}: {what}")


def _long(short: str) -> str:
    return next(w for w, s in _SHORT.items() if s == short)


def _collect_faults(journals: list[str], result: CampaignResult) -> None:
    """Sum each incarnation's last fault counters (a killed one: its last `stats` line)."""
    total: Counter[str] = Counter()
    for j in journals:
        last: dict[str, int] = {}
        for r in read_journal(j):
            if r.get("e") in ("stats", "done"):
                last = r["faults"]
        total.update(last)
    result.faults_injected.update({k: v for k, v in sorted(total.items()) if not k.startswith("log:")})
    result.log_records = {k[4:]: v for k, v in sorted(total.items()) if k.startswith("log:")}


def _outcomes(records: Sequence[dict[str, Any]]) -> tuple[dict[int, dict[str, Any]], dict[int, dict[str, Any]]]:
    """Invocations and completions by transaction id."""
    invoked = {r["id"]: r for r in records if r["e"] == "i"}
    completed = {r["id"]: r for r in records if r["e"] == "c"}
    return invoked, completed


def _counts(invoked: dict[int, Any], completed: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """ok / fail / info counts, and why transactions failed or ended unknown."""
    status = Counter(completed[i]["s"] if i in completed else "info" for i in invoked)
    why = Counter(
        f"{completed[i]['s']}: {completed[i].get('why')}" if i in completed else "info: killed"
        for i in invoked
        if i not in completed or completed[i]["s"] != "ok"
    )
    ok = [i for i in invoked if i in completed and completed[i]["s"] == "ok"]
    return {
        "invoked": len(invoked),
        "ok": status["ok"],
        "fail": status["fail"],
        "info": status["info"],
        "unfinished": sum(1 for i in invoked if i not in completed),
        # Transactions whose keys fall in several partitions: invoked, and committed (ok).
        "cross_partition": sum(1 for r in invoked.values() if r.get("x")),
        "cross_partition_ok": sum(1 for i in ok if invoked[i].get("x")),
        "why": dict(sorted(why.items())),
    }


async def _check_list_append(
    db: kvstore.Store,
    config: CampaignConfig,
    records: list[dict[str, Any]],
    journals: list[str],
    result: CampaignResult,
) -> None:
    invoked, completed = _outcomes(records)
    history = [_txn(inv, completed.get(tid)) for tid, inv in sorted(invoked.items())]
    _cross_check_recorders(journals, history, result)
    keys = sorted({op[1] for t in history for op in t.ops})
    history.append(await _final_read(db, keys, max(invoked, default=0) + 1, config.partitions))
    checked = check(history, realtime=True)
    result.workloads["list-append"] = {
        **_counts(invoked, completed),
        # Committed transactions whose appends (writes) fall in several partitions.
        "cross_partition_writes_ok": sum(
            1
            for tid, c in completed.items()
            if c["s"] == "ok" and spans((op[1] for op in c["ops"] if op[0] == "append"), config.partitions)
        ),
        "keys": len(keys),
        "info_committed": checked.info_committed_count,
        "graph_edges": checked.graph_edges,
    }
    for a in checked.anomalies:
        result.add("list-append", a.kind, str(a))


def _txn(inv: dict[str, Any], comp: dict[str, Any] | None) -> Txn:
    """A journal invocation (+ completion) as a checker transaction; no completion is info."""
    if comp is None:
        return Txn(inv["id"], inv["p"], _ops(inv["ops"]), "info", inv["t"], None)
    return Txn(inv["id"], inv["p"], _ops(comp["ops"]), comp["s"], inv["t"], comp["t"])


def _ops(ops: list[list[Any]]) -> list[tuple[str, Any, Any]]:
    return [(str(f), k, v) for f, k, v in ops]


def _cross_check_recorders(journals: list[str], history: list[Txn], result: CampaignResult) -> None:
    """A worker that exited cleanly also saved its HistoryRecorder: it must match the journal."""
    by_id = {t.id: t for t in history}
    for j in journals:
        path = j + ".history"
        if not os.path.exists(path):
            continue
        for t in HistoryRecorder.from_jsonl(path):
            mine = by_id.get(t.id)
            if mine is None or (mine.status, mine.ops) != (t.status, t.ops):
                result.add("list-append", "journal-mismatch", f"T{t.id} in {path} differs from the journal")


async def _final_read(db: kvstore.Store, keys: list[int], txn_id: int, partitions: int) -> Txn:
    """One read-only transaction reading every key, after every worker has stopped.

    Through `transact`: across partitions its validation fails while an intent a killed
    coordinator decided "committed" is unresolved (it starts the resolution), and the
    retry then passes."""
    invoked = time.monotonic()

    async def read(tx: kvstore.Transaction) -> list[tuple[str, Any, Any]]:
        return [("r", k, await tx.get(item_key("la", k, 8, partitions), [])) for k in keys]

    ops = await db.transact(read)
    return Txn(txn_id, -1, ops, "ok", invoked, time.monotonic())


async def _check_bank(
    db: kvstore.Store, config: CampaignConfig, records: list[dict[str, Any]], result: CampaignResult
) -> None:
    total = config.accounts * _INITIAL_BALANCE
    audits = [r for r in records if r["e"] == "a"]
    for a in audits:
        if a["sum"] != total or a["bad"]:
            result.add(
                "bank", "audit", f"snapshot {a['v']} sums to {a['sum']} (expected {total}); bad balances {a['bad']}"
            )
    snap = await db.snapshot()
    final = [await snap.get(item_key("acct", i, 4, config.partitions)) for i in range(config.accounts)]
    if sum(final) != total or any(b < 0 for b in final):
        result.add("bank", "final-total", f"final balances {final} sum to {sum(final)}, expected {total}")
    invoked, completed = _outcomes(records)
    moved = [tid for tid, c in completed.items() if c["s"] == "ok" and c.get("moved")]
    result.workloads["bank"] = {
        **_counts(invoked, completed),
        "transfers_moved": len(moved),
        "cross_partition_writes_ok": sum(1 for tid in moved if invoked[tid].get("x")),
        "audits": len(audits),
        "audited_versions": len({a["v"] for a in audits}),
        "final_total": sum(final),
    }


async def _check_xp(config: CampaignConfig, records: list[dict[str, Any]], result: CampaignResult) -> None:
    """bank-xp: validated audits and the final state sum to the total; every partition verifies."""
    total = config.accounts * _INITIAL_BALANCE
    audits = [r for r in records if r["e"] == "a" and not r.get("torn")]
    for a in audits:
        if a["sum"] != total or a["bad"]:
            result.add("bank-xp", "audit", f"a validated audit sums to {a['sum']} (expected {total}); bad {a['bad']}")
    parts = await _xp_parts(config, create=False)
    try:
        for engine in parts.engines:
            await engine.resolve()  # decided intents of killed coordinators (undecided ones stay invisible)
        final = await xp_balances(parts, config.accounts)
        if final is None:
            result.add("bank-xp", "final-total", "the final balances did not validate with no writer running")
            final = []
        elif sum(final) != total or any(b < 0 for b in final):
            result.add("bank-xp", "final-total", f"final balances {final} sum to {sum(final)}, expected {total}")
        verified = 0
        for engine in parts.engines:
            report = await engine.verify()
            verified += report.objects_checked
            for name, what in report.damaged.items():
                result.add("bank-xp", "corruption", f"{name}: {what}")
    finally:
        await parts.close()
    invoked, completed = _outcomes(records)
    result.workloads["bank-xp"] = {
        **_counts(invoked, completed),
        "transfers_moved": sum(1 for c in completed.values() if c["s"] == "ok" and c.get("moved")),
        "cross_partition_writes_ok": sum(
            1 for tid, c in completed.items() if c["s"] == "ok" and c.get("moved") and invoked[tid].get("x")
        ),
        # Validated audits while writers ran; how many validate depends on the machine's
        # speed (slower reads meet more commits), so none may. The final audit below, on
        # the quiet store, always runs and must validate (else a "final-total" anomaly).
        "audits": len(audits),
        "audits_torn": sum(1 for r in records if r["e"] == "a" and r.get("torn")),
        "final_audit_validated": bool(final),
        "final_total": sum(final),
        "objects_verified": verified,
    }


async def _check_counter(
    db: kvstore.Store, config: CampaignConfig, records: list[dict[str, Any]], result: CampaignResult
) -> None:
    invoked, completed = _outcomes(records)
    snap = await db.snapshot()
    summary: dict[str, Any] = _counts(invoked, completed)
    summary["cross_partition_writes_ok"] = summary["cross_partition_ok"]  # every counter it reads, it writes
    for key in range(config.counters):
        name = item_key("ctr", key, 4, config.partitions)
        value = await snap.get(name, 0)
        increments: list[tuple[str, int | None]] = []  # (status, value read) of each increment of it
        for tid, r in invoked.items():
            if key in _as_list(r["k"]):
                c = completed.get(tid, {"s": "info"})
                read = c.get("r")
                increments.append((c["s"], _as_list(read)[_as_list(r["k"]).index(key)] if read is not None else None))
        summary[name] = _check_one_counter(name, value, increments, result)
    result.workloads["counter"] = summary


def _as_list(k: Any) -> list[Any]:
    """A journal's counter field: a list (one entry per counter), or one value (older journals)."""
    return k if isinstance(k, list) else [k]


def _check_one_counter(
    name: str, value: int, increments: list[tuple[str, int | None]], result: CampaignResult
) -> dict[str, int]:
    """Exactly-once checks of one counter whose final value is `value`.

    The committed increments read exactly 0, 1, ..., value - 1, each once. So:
    acknowledged ones read distinct values below `value`; there are between
    acknowledged and acknowledged + unknown of them; and every value below
    `value` was read by an acknowledged or unknown increment (one that only
    failed increments read means a "failed" increment was applied). Unknown
    increments killed before their read was recorded may account for any value.
    """
    acked: list[int] = [r for s, r in increments if s == "ok" and r is not None]
    unknown = [r for s, r in increments if s == "info"]
    if not len(acked) <= value <= len(acked) + len(unknown):
        result.add(
            "counter",
            "count",
            f"{name} = {value}, but {len(acked)} increments were acknowledged and {len(unknown)} are unknown",
        )
    twice = sorted(v for v, n in Counter(acked).items() if n > 1)
    if twice:
        result.add(
            "counter",
            "lost-update",
            f"{name}: acknowledged increments read the same value(s) {twice[:10]} ({len(twice)} in all)",
        )
    if acked and max(acked) >= value:
        result.add("counter", "count", f"{name} = {value}, but an acknowledged increment read {max(acked)}")
    explained = set(acked) | {r for r in unknown if r is not None}
    unexplained = [v for v in range(value) if v not in explained]
    if len(unexplained) > sum(1 for r in unknown if r is None):
        result.add(
            "counter",
            "count",
            f"{name}: the increments that read {unexplained[:10]} were committed, "
            "but only failed increments read those values",
        )
    return {"value": value, "acked": len(acked), "unknown": len(unknown)}


async def _check_atomic_counter(
    db: kvstore.Store, config: CampaignConfig, records: list[dict[str, Any]], result: CampaignResult
) -> None:
    """Each counter's final value is the sum of its acknowledged adds plus that of some
    subset of its unknown ones (never of a failed one); and no add conflicted."""
    invoked, completed = _outcomes(records)
    snap = await db.snapshot()
    summary: dict[str, Any] = _counts(invoked, completed)
    summary["cross_partition_writes_ok"] = summary["cross_partition_ok"]  # every counter it reads, it writes
    for key in range(config.counters):
        name = item_key("actr", key, 4, config.partitions)
        value = await snap.get(name, 0)
        outcome = {t: completed.get(t, {"s": "info"}) for t, r in invoked.items() if key in _as_list(r["k"])}
        acked = sum(invoked[t]["n"] for t, c in outcome.items() if c["s"] == "ok")
        unknown = [invoked[t]["n"] for t, c in outcome.items() if c["s"] == "info"]
        if value - acked not in _subset_sums(unknown):
            result.add(
                "atomic-counter",
                "count",
                f"{name} = {value}: acknowledged adds sum to {acked}, and no subset of the "
                f"{len(unknown)} unknown adds {sorted(unknown)[:20]} sums to the difference {value - acked}",
            )
        summary[name] = {"value": value, "acked_sum": acked, "unknown": len(unknown)}
    conflicts = [c for c in completed.values() if c.get("why") == "ConflictError"]
    summary["conflicts"] = len(conflicts)
    # On a partitioned store a write meeting a cross-partition transaction's undecided intent
    # on its key conflicts, blind or not (docs/scaling.md): letting it commit past the intent
    # would order it after a transaction that a reader may yet see before it. So there a
    # conflicting add is an ordinary failure (never applied: the sums above check that).
    if conflicts and config.partitions <= 1:
        result.add("atomic-counter", "conflict", f"{len(conflicts)} blind adds failed with ConflictError")
    result.workloads["atomic-counter"] = summary


def _subset_sums(amounts: Sequence[int]) -> set[int]:
    """Every sum of a subset of `amounts` (0 included)."""
    sums = {0}
    for n in amounts:
        sums |= {s + n for s in sums}
    return sums


# --------------------------------------------------------------------------- command line


def format_summary(result: CampaignResult) -> str:
    """The human summary table of a result."""
    lines = [f"{'workload':<12} {'invoked':>8} {'ok':>8} {'fail':>8} {'info':>8}  details"]
    for w, s in result.workloads.items():
        details = ", ".join(
            f"{k}={v}" for k, v in s.items() if k not in ("invoked", "ok", "fail", "info") and not isinstance(v, dict)
        )
        lines.append(
            f"{w:<12} {s.get('invoked', 0):>8} {s.get('ok', 0):>8} {s.get('fail', 0):>8} "
            f"{s.get('info', 0):>8}  {details}"
        )
    for w, s in result.workloads.items():
        if s.get("why"):
            lines.append(f"  {w} not ok: " + ", ".join(f"{k} x{v}" for k, v in s["why"].items()))
    total = sum(s.get("invoked", 0) for s in result.workloads.values())
    faults = sum(v for k, v in result.faults_injected.items())
    lines.append(
        f"total transactions {total}, duration {result.duration:.1f} s, processes started "
        f"{result.incarnations}, SIGKILLs {result.kills}, faults injected {faults}"
        f"{' (stopped by the duration limit)' if result.stopped_by_duration_limit else ''}"
    )
    crossing = sum(s.get("cross_partition_ok", 0) for s in result.workloads.values())
    if crossing:
        committed = sum(s.get("ok", 0) for s in result.workloads.values())
        lines.append(
            f"spanning partitions: {crossing} of {committed} committed transactions "
            f"({crossing / max(committed, 1):.0%}; "
            f"{sum(s.get('cross_partition_writes_ok', 0) for s in result.workloads.values())} wrote in several), "
            f"{sum(s.get('cross_partition', 0) for s in result.workloads.values())} of {total} invoked"
        )
    lines.append("faults: " + (", ".join(f"{k}={v}" for k, v in result.faults_injected.items()) or "none"))
    if result.log_records:
        lines.append("kvstore log records in workers: " + ", ".join(f"{k}={v}" for k, v in result.log_records.items()))
    lines.append(f"anomalies: {len(result.anomalies)}")
    for a in result.anomalies[:20]:
        lines.append(f"  [{a['workload']}] {a['kind']}: {a['detail'][:500]}")
    lines.append(f"result: {result.workdir}/result.json")
    return "\n".join(lines)


def _on_off(text: str) -> bool:
    if text not in ("on", "off"):
        raise argparse.ArgumentTypeError("on or off")
    return text == "on"


def _workloads(text: str) -> tuple[str, ...]:
    names: list[str] = []
    for name in text.split(","):
        expanded = WORKLOADS if name == "all" else (name,)
        for n in expanded:
            if n not in (*WORKLOADS, *EXTRA_WORKLOADS):
                raise argparse.ArgumentTypeError(f"unknown workload {n!r}")
            if n not in names:
                names.append(n)
    return tuple(names)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m kvstore.testing.campaign", description=__doc__.split("\n\n")[0])
    p.add_argument("--url", required=True, help="base URL; each workload gets <url>/<workload>")
    p.add_argument("--endpoint-url", default=None, help="S3-compatible endpoint (LocalStack, MinIO, ...)")
    p.add_argument("--processes", type=int, default=4)
    p.add_argument("--tasks", type=int, default=8, help="asyncio tasks per process")
    p.add_argument("--txns", type=int, default=2000, help="transactions in all")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--faults", type=_on_off, default=True, metavar="on|off")
    p.add_argument("--kills", type=_on_off, default=True, metavar="on|off")
    p.add_argument(
        "--workload",
        type=_workloads,
        default=WORKLOADS,
        metavar="NAME[,NAME...]",
        help=f"comma-separated, of {', '.join((*WORKLOADS, *EXTRA_WORKLOADS))}; all = {','.join(WORKLOADS)}",
    )
    p.add_argument("--accounts", type=int, default=8, help="bank and bank-xp: accounts")
    p.add_argument(
        "--partitions",
        type=int,
        default=1,
        help="create the list-append, bank, counter and atomic-counter stores with this many partitions "
        "(kvstore.open(url, split_keys=...)); transactions then span partitions",
    )
    p.add_argument("--duration-limit", type=float, default=300.0, help="seconds")
    p.add_argument("--kill-interval", type=float, default=3.0, help="mean seconds between SIGKILLs")
    p.add_argument("--max-kills", type=int, default=None, help="stop killing after this many SIGKILLs")
    p.add_argument(
        "--planned-kills",
        type=int,
        default=0,
        help="workers that also freeze themselves at a random invocation and are SIGKILLed",
    )
    p.add_argument(
        "--net-faults",
        type=_on_off,
        default=False,
        metavar="on|off",
        help="S3 only: inject faults on the wire (lost answers, resets, cut answers)",
    )
    p.add_argument(
        "--worker-setup",
        default=None,
        metavar="MODULE:FUNCTION",
        help="a function every worker calls before it starts (importable in the workers)",
    )
    p.add_argument(
        "--target-segment-bytes",
        type=int,
        default=None,
        help="StoreOptions.target_segment_bytes of the workers (a few KiB: compactions write many segments)",
    )
    p.add_argument("--workdir", default=None, help="journals and result.json (default: a new temp dir)")
    p.add_argument("--out", default=None, help="also write the JSON result here")
    return p


def parse_args(argv: Sequence[str] | None = None) -> tuple[CampaignConfig, str | None]:
    """The campaign configuration and the --out path from the command line."""
    a = _parser().parse_args(argv)
    workloads = a.workload
    config = CampaignConfig(
        url=a.url,
        endpoint_url=a.endpoint_url,
        processes=a.processes,
        tasks=a.tasks,
        txns=a.txns,
        seed=a.seed,
        faults=a.faults,
        net_faults=a.net_faults,
        kills=a.kills,
        workloads=workloads,
        accounts=a.accounts,
        partitions=a.partitions,
        duration_limit=a.duration_limit,
        kill_interval=a.kill_interval,
        max_kills=a.max_kills,
        planned_kills=a.planned_kills,
        worker_setup=a.worker_setup,
        workdir=a.workdir,
        target_segment_bytes=a.target_segment_bytes,
    )
    return config, a.out


def main(argv: Sequence[str] | None = None) -> int:
    config, out = parse_args(argv)
    result = run_campaign(config)
    print(format_summary(result))
    if out:
        Path(out).write_text(json.dumps(result.to_json(), indent=2, default=str))
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
