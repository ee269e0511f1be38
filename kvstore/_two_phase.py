"""Transactions across partitions: two phases, one commit point (docs/scaling.md).

A transaction whose writes fall in several partitions (one engine each):

1. **Prepare**: in every participant at once (every partition it wrote or
   read), its writes and the keys it read there go through that partition's
   committer as an *intent* (`_manifest.Intent`; read-only: no segment):
   conflict-checked like any commit (against commits since its read version and
   against live intents), riding the partition's next group-commit CAS. Its
   writes are invisible while undecided, and it holds what it read and wrote
   against every other write until decided.
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
from collections import OrderedDict
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
# Decided outcomes a handle remembers (~200 B each), the least recently learnt forgotten first.
KNOWN_OUTCOMES = 65_536


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
        self._known: OrderedDict[str, Outcome] = OrderedDict()  # the most recently learnt last

    def name(self, txn_id: bytes) -> str:
        """The decision object of transaction `txn_id`."""
        return self.root.decision(txn_id)

    def here(self, name: str) -> str:
        """Decision `name` under this store's root. An intent records its decision's full
        name, prefix included: in a store copied to another prefix or bucket, that is where
        it was made, and the decision was copied along under the new root."""
        return self.root.decision(bytes.fromhex(name.rsplit("txn/", 1)[-1]))

    def _learn(self, name: str, outcome: Outcome) -> None:
        # Bounded: a long-lived handle meets ever new transactions, and forgetting an old
        # outcome costs at most one GET if its intent is met again.
        self._known[name] = outcome
        if len(self._known) > KNOWN_OUTCOMES:
            self._known.popitem(last=False)

    def cached(self, name: str) -> Outcome | None:
        """The outcome of `name` if this process knows it is decided (no request)."""
        return self._known.get(self.here(name))

    async def outcome(self, name: str) -> Outcome | None:
        """The outcome recorded in decision object `name`, or None if undecided (absent).
        One GET, sent after this call began, unless cached as decided."""
        name = self.here(name)
        known = self._known.get(name)
        if known is not None:
            return known
        try:
            blob = await self._objects.get(name)
        except ObjectNotFound:
            return None
        assert blob is not None
        outcome = decode_decision(blob.data, self._objects.description + "/" + name)
        self._learn(name, outcome)
        return outcome

    async def decide(self, name: str, outcome: Outcome, txn_id: bytes, participants: Sequence[str]) -> Outcome:
        """Create decision `name` holding `outcome` unless one exists; returns THE decision:
        ours, or the one a rival created first (a coordinator's "committed", an aborter's
        "aborted").

        A 412 or a lost answer is decided by reading the object back (the retry layer
        recognises our own bytes after a lost answer). Raises CommitOutcomeUnknownError
        when the object can be neither created nor read.
        """
        name = self.here(name)
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
                self._learn(name, outcome)
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
    of its prepare (where its writes became visible). Raises ConflictError (nothing applied
    anywhere) or CommitOutcomeUnknownError (decided by evidence when at all possible; unknown
    only when the decision object itself cannot be read).

    Round trips on the critical path: 2. The participants' segment writes (none when their
    writes ride inline) and prepare CASes in parallel, one per part, including a part that
    only read (a read-only intent); then the decision create. The resolve CASes run in the
    background after the acknowledgement.

    Why no read check is needed between them (docs/design.md, "Cross-partition commits"):
    each prepare's CAS checks the part's reads against every commit since its read version
    and every live intent, and from that CAS until the decision its intent holds both what
    the part wrote and what it read (`_commit._held_by_intent`): no other commit or prepare
    of the partition may write them. So at the decision create, every read of the
    transaction is still current in every partition and no write it made is visible: the
    decision is its serialization point. An intent aborted after `intent_timeout` holds
    nothing any more, but then our "committed" create loses to that "aborted" one.
    """
    txn_ids = {request.txn_id for _, request in parts}
    if len(txn_ids) != 1:
        raise ValueError("every part of a cross-partition commit carries the same txn_id")
    txn_id = txn_ids.pop()
    name = decisions.name(txn_id)
    # Every part that wrote or read prepares an intent (one that only read: a read-only
    # intent, holding its reads). A part carrying segments written beforehand (a bulk
    # load's share) prepares them as they are.
    preparing = [(e, r) for e, r in parts if _holds_anything(r)]
    participants = [engine.layout.prefix for engine, _ in preparing]
    prepared: list[int | BaseException] = list(
        await asyncio.gather(*(engine.prepare(request, name) for engine, request in preparing), return_exceptions=True)
    )
    failures = [r for r in prepared if isinstance(r, BaseException)]
    if failures:
        # Abort at once (no intent lingers until the timeout). Only we decide "committed",
        # so nothing is applied whatever happens here: should the create fail, the
        # intents stay undecided, invisible, until a writer aborts them after the timeout.
        try:
            await decisions.decide(name, "aborted", txn_id, participants)
        except KvStoreError:
            pass
        else:
            _resolve_in_background(preparing)
        interrupted = next((f for f in failures if not isinstance(f, Exception)), None)
        if interrupted is not None:
            raise interrupted
        # A PartitionMovedError (a part's partition was split: sealed) is a ConflictError.
        conflict = next((f for f in failures if isinstance(f, ConflictError | JobAlreadyCommittedError)), None)
        if conflict is not None:
            raise conflict
        # Unknown or failed prepares: the aborted decision makes every intent that did
        # land invisible for good, so nothing was applied anywhere.
        raise ConflictError(
            f"a cross-partition transaction could not prepare in every partition ({type(failures[0]).__name__}: "
            f"{failures[0]}); it was aborted and nothing was written: retry it (Store.transact does)"
        ) from failures[0]
    at = {id(request): version for (_, request), version in zip(preparing, prepared, strict=True)}
    # A part that neither wrote nor read holds nothing: its version is the one it knows.
    versions = [v if isinstance(v := at.get(id(r)), int) else e.manifest.version for e, r in parts]
    outcome = await decisions.decide(name, "committed", txn_id, participants)
    _resolve_in_background(preparing)
    if outcome != "committed":
        raise ConflictError(
            "a cross-partition transaction was aborted by another writer (it stayed prepared longer "
            "than StoreOptions.intent_timeout); nothing was written: retry it (Store.transact does)"
        )
    return versions


def _holds_anything(request: CommitRequest) -> bool:
    """Whether a part prepares an intent: it writes, or it read something to hold."""
    wrote = bool(request.writes or request.range_deletes or request.segments)
    return wrote or (request.read_version is not None and bool(request.read_keys or request.read_ranges))


def _resolve_in_background(parts: Sequence[tuple[Engine, CommitRequest]]) -> None:
    for engine, _ in parts:
        engine.resolve_soon()
