"""Transactions across partitions: two phases, one commit point (docs/scaling.md).

A transaction whose writes fall in several partitions (one engine each):

1. **Prepare**: in every participant at once, its writes go through that
   partition's committer as an *intent* (`_manifest.Intent`): conflict-checked
   like any commit (against commits since its read version and against live
   intents), riding the partition's next group-commit CAS. Its writes are
   invisible while undecided.
2. **Decide**: the coordinator safe-creates the decision object
   `<root>txn/<txn id>` holding "committed". That create is the commit point:
   atomic and once only. Anyone who finds an intent older than
   `StoreOptions.intent_timeout` and undecided may create it holding "aborted"
   instead; the first create wins, so a transaction is never both.
3. **Acknowledge**, then **resolve** in the background: each participant's
   next manifest CAS turns a committed intent into an ordinary segment at its
   prepared version and drops an aborted one (`Engine.resolve` makes one CAS
   for an idle partition).

Readers meeting an intent consult its decision (`Decisions.outcome`: one GET,
cached once decided) and see its writes iff committed. Every lost answer is
decided by evidence: a prepare's by the committer (its transaction id in the
partition's log, I5), the decision's by reading the decision object back.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal

import msgpack

from ._envelope import seal, unseal
from ._errors import CommitOutcomeUnknownError, ConflictError, CorruptionError, JobAlreadyCommittedError, KvStoreError
from ._layout import Layout
from ._objectstore import ObjectNotFound, PreconditionFailed, RetryingObjectStore

if TYPE_CHECKING:
    from ._commit import CommitRequest
    from ._engine import Engine

Outcome = Literal["committed", "aborted"]
_MAGIC = b"KVTX"
_FORMAT = 1
# Creates of the decision tried before its outcome counts as unknown (each is
# itself retried by the retry layer; a lost answer is checked by reading back).
_DECIDE_ATTEMPTS = 3


def encode_decision(outcome: Outcome, txn_id: bytes, participants: Sequence[str]) -> bytes:
    """A decision object's bytes. A nonce makes every body unique, so that the retry
    layer can tell our own create (whose answer was lost) from a rival's by its bytes."""
    doc = {
        "outcome": outcome,
        "txn": txn_id,
        "participants": list(participants),
        "time": time.time(),
        "nonce": os.urandom(8),
    }
    return seal(_MAGIC, _FORMAT, msgpack.packb(doc, use_bin_type=True))


def decode_decision(data: bytes, name: str) -> Outcome:
    """The outcome a decision object records; CorruptionError if it is damaged."""
    payload = unseal(data, _MAGIC, _FORMAT, name, "transaction decision")
    try:
        outcome = msgpack.unpackb(payload, raw=False)["outcome"]
    except (ValueError, KeyError, TypeError, msgpack.UnpackException) as exc:
        raise CorruptionError(
            f"transaction decision {name} is damaged (undecodable); run `Store.verify()`",
            object_name=name,
            block="transaction decision",
        ) from exc
    if outcome not in ("committed", "aborted"):
        raise CorruptionError(
            f"transaction decision {name} records {outcome!r}, neither committed nor aborted",
            object_name=name,
            block="transaction decision",
        )
    return outcome  # type: ignore[no-any-return]


class Decisions:
    """Create-once decision objects of cross-partition transactions, under the store ROOT layout.

    A decision never changes once created, so decided outcomes are cached for good;
    an absent one (undecided) is asked again every time, by a GET of its own: a GET
    already in flight may have been answered before a decision that a later caller
    must see (a transaction acknowledged before the caller began), so none is shared.
    """

    def __init__(self, objects: RetryingObjectStore, root: Layout) -> None:
        self._objects = objects
        self.root = root
        self._known: dict[str, Outcome] = {}

    def name(self, txn_id: bytes) -> str:
        """The decision object of transaction `txn_id`."""
        return self.root.decision(txn_id)

    def cached(self, name: str) -> Outcome | None:
        """The outcome of `name` if this process knows it is decided (no request)."""
        return self._known.get(name)

    async def outcome(self, name: str) -> Outcome | None:
        """The outcome recorded in decision object `name`, or None if undecided (absent).
        One GET, sent after this call began, unless cached as decided."""
        known = self._known.get(name)
        if known is not None:
            return known
        try:
            blob = await self._objects.get(name)
        except ObjectNotFound:
            return None
        assert blob is not None
        outcome = decode_decision(blob.data, self._objects.description + "/" + name)
        self._known[name] = outcome
        return outcome

    async def decide(self, name: str, outcome: Outcome, txn_id: bytes, participants: Sequence[str]) -> Outcome:
        """Create decision `name` holding `outcome` unless one exists; returns THE decision:
        ours, or the one a rival created first (a coordinator's "committed", an aborter's
        "aborted").

        A 412 or a lost answer is decided by reading the object back (the retry layer
        recognises our own bytes after a lost answer). Raises CommitOutcomeUnknownError
        when the object can be neither created nor read.
        """
        known = self._known.get(name)
        if known is not None:
            return known
        data = encode_decision(outcome, txn_id, participants)
        failure: BaseException | None = None
        for _ in range(_DECIDE_ATTEMPTS):
            try:
                await self._objects.put_if_absent(name, data)
            except PreconditionFailed:
                pass  # a rival's decision (ours is recognised by the retry layer): read it
            except KvStoreError as exc:
                failure = exc  # the create may have landed or may still land: read back
            else:
                self._known[name] = outcome
                return outcome
            try:
                found = await self.outcome(name)
            except KvStoreError as exc:
                failure = exc
                continue
            if found is not None:
                return found
            # Absent: our create did not land (yet). Creating again is safe: if an
            # earlier attempt lands first, this one gets a 412 and reads ours back.
        raise CommitOutcomeUnknownError(
            f"the decision {name} of a cross-partition transaction could be neither created nor read "
            f"({type(failure).__name__}: {failure}); read the data to find out whether it committed"
        ) from failure


async def commit_across(parts: Sequence[tuple[Engine, CommitRequest]], decisions: Decisions) -> list[int]:
    """Commit one transaction whose writes fall in several partitions (one engine each; every
    request carries the SAME txn_id, its own partition's writes, read keys/ranges and
    read_version), atomically: all partitions or none. Returns, per part, the partition version
    at which its writes became visible (the intent's version). Raises ConflictError (nothing
    applied anywhere) or CommitOutcomeUnknownError (decided by evidence when at all possible;
    unknown only when the decision object itself cannot be read).

    Round trips on the critical path: the participants' segment writes (none when their
    writes ride inline) and prepare CASes in parallel; the second check of reads (one
    conditional GET per part, in parallel) for parts that read keys they do not write;
    then the decision create. The resolve CASes run in the background after the
    acknowledgement.
    """
    txn_ids = {request.txn_id for _, request in parts}
    if len(txn_ids) != 1:
        raise ValueError("every part of a cross-partition commit carries the same txn_id")
    txn_id = txn_ids.pop()
    name = decisions.name(txn_id)
    # A part that only read prepares no intent (it has nothing to write); its reads are
    # checked with every part's in the second round below. A part carrying segments written
    # beforehand (a bulk load's share) prepares them as they are.
    writing = [(e, r) for e, r in parts if r.writes or r.range_deletes or r.segments]
    participants = [engine.layout.prefix for engine, _ in writing]
    prepared: list[int | BaseException] = list(
        await asyncio.gather(*(engine.prepare(request, name) for engine, request in writing), return_exceptions=True)
    )
    failures = [r for r in prepared if isinstance(r, BaseException)]
    if not failures:
        # Intents lock only what they write, so two transactions each reading what the
        # other writes (write skew) could both pass their prepares' checks. Checking every
        # part's reads again once all of this transaction's intents are in place closes
        # that: of two such transactions, the later check sees the other's intent.
        checks = await asyncio.gather(
            *(_reads_hold(e, r, v) for (e, r), v in _per_part(parts, writing, prepared)),
            return_exceptions=True,
        )
        failures = [c for c in checks if isinstance(c, BaseException)]
        if not failures and not all(checks):
            failures = [
                ConflictError(
                    "transaction read data that another transaction changed or is committing across "
                    "partitions; nothing was written: retry it (Store.transact does)"
                )
            ]
    if failures:
        # Abort at once (no intent lingers until the timeout). Only we decide "committed",
        # so nothing is applied whatever happens here: should the create fail, the
        # intents stay undecided, invisible, until a writer aborts them after the timeout.
        try:
            await decisions.decide(name, "aborted", txn_id, participants)
        except KvStoreError:
            pass
        else:
            _resolve_in_background(parts)
        interrupted = next((f for f in failures if not isinstance(f, Exception)), None)
        if interrupted is not None:
            raise interrupted
        conflict = next((f for f in failures if isinstance(f, ConflictError | JobAlreadyCommittedError)), None)
        if conflict is not None:
            raise conflict
        # Unknown or failed prepares: the aborted decision makes every intent that did
        # land invisible for good, so nothing was applied anywhere.
        raise ConflictError(
            f"a cross-partition transaction could not prepare in every partition ({type(failures[0]).__name__}: "
            f"{failures[0]}); it was aborted and nothing was written: retry it (Store.transact does)"
        ) from failures[0]
    # A part that only read: the version its reads were checked at.
    versions = [e.manifest.version if v is None else v for (e, _), v in _per_part(parts, writing, prepared)]
    outcome = await decisions.decide(name, "committed", txn_id, participants)
    _resolve_in_background(parts)
    if outcome != "committed":
        raise ConflictError(
            "a cross-partition transaction was aborted by another writer (it stayed prepared longer "
            "than StoreOptions.intent_timeout); nothing was written: retry it (Store.transact does)"
        )
    return versions


async def _reads_hold(engine: Engine, request: CommitRequest, prepared_at: int | None) -> bool:
    """The second check of a part's reads: since its prepare (whose CAS checked them up
    to there), or since its read version for a part that only read.

    A prepared part's reads of keys it also writes need no second check, so a
    read-modify-write part costs no request here: from its prepare's CAS until its
    decision, its intent holds those keys against every other commit and prepare of the
    partition (`_commit._held_by_intent`; a write in the same batch is refused beside it),
    so nobody can have written them since, unless the intent was aborted after
    `intent_timeout`, and then our "committed" create loses to that "aborted" one. Its
    other reads (and every read range) are checked, as the write skew argument in
    `commit_across` needs."""
    keys = request.read_keys
    if prepared_at is not None:
        keys = {k for k in keys if k not in request.writes}
    if not keys and not request.read_ranges:
        return True
    since = prepared_at if prepared_at is not None else request.read_version
    if since is None:
        return True
    return await engine.reads_still_hold(since, keys, request.read_ranges, request.txn_id)


def _per_part(
    parts: Sequence[tuple[Engine, CommitRequest]],
    writing: list[tuple[Engine, CommitRequest]],
    prepared: list[int | BaseException],
) -> list[tuple[tuple[Engine, CommitRequest], int | None]]:
    """Each part with its prepare's version (None: it only read)."""
    at = {id(request): version for (_, request), version in zip(writing, prepared, strict=True)}
    return [((e, r), v if isinstance(v := at.get(id(r)), int) else None) for e, r in parts]


def _resolve_in_background(parts: Sequence[tuple[Engine, CommitRequest]]) -> None:
    for engine, _ in parts:
        engine.resolve_soon()
