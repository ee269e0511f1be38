"""A lasting error (access denied, bucket gone) during a commit whose earlier attempt is
undecided.

An attempt of the manifest CAS whose answer never came (a 503, a timeout) may have been
applied, or may still be: a delayed request lands as long as the manifest keeps the
ETag it was sent with (I5). A lasting error on a later request refuses that request
only; it says nothing about the earlier one. So the commit is reported failed only
once the commit log has decided every attempt, and is `CommitOutcomeUnknownError`
while one is undecided. A caller told "failed" retries, and would apply the
transaction twice if the earlier attempt landed.

Faults come from `FaultInjectingStore` under the retry layer (a ``denied`` fault is
a 403 AccessDenied, not retried), on every backend, LocalStack included.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
from targets import Target, fault_injecting

import kvstore
from kvstore.testing.faults import FaultInjectingStore, FaultKind, FaultPlan

pytestmark = pytest.mark.timeout(120)


@asynccontextmanager
async def _at_version_1(target: Target, max_attempts: int) -> AsyncIterator[tuple[kvstore.Store, FaultInjectingStore]]:
    """The store open with k = 1 committed, and the fault injector under it; the retry
    layer makes at most `max_attempts` of each request."""
    made, wrap = fault_injecting(FaultPlan())
    retry = kvstore.RetryPolicy(max_attempts=max_attempts, base_delay=0.001, max_delay=0.001)
    options = kvstore.StoreOptions(retry=retry, auto_compact=False)
    async with target.open(options=options, wrap_object_store=wrap) as db:
        await db.put(b"k", b"1")
        yield db, made[0]


async def _version_and_value(target: Target) -> tuple[int, bytes | None]:
    """What the store holds, read by another instance with no faults."""
    async with target.open() as reader:
        return reader.version, await reader.get(b"k")


@pytest.mark.parametrize(
    ("max_attempts", "script"),
    [
        pytest.param(2, ("error", "denied"), id="503-then-denied-in-one-request"),
        pytest.param(2, ("timeout", "denied"), id="timeout-then-denied-in-one-request"),
        pytest.param(1, ("error", "denied"), id="cas-unavailable-then-the-next-cas-denied"),
    ],
)
async def test_a_lasting_error_after_an_unanswered_attempt_leaves_the_commit_undecided(
    target: Target, max_attempts: int, script: tuple[FaultKind, ...]
) -> None:
    async with _at_version_1(target, max_attempts) as (db, faults):
        faults.script("put_if_match", *script)
        with pytest.raises(kvstore.CommitOutcomeUnknownError, match="AccessDeniedError.*read the data"):
            await db.put(b"k", b"2")
        assert faults.injected[f"put_if_match:{script[0]}"] == 1
        assert faults.injected["put_if_match:denied"] == 1
    # The injected 503 or timeout did nothing, which the committer could not know. Here,
    # where no request is left in flight, the data says it: not applied, so retry it.
    assert await _version_and_value(target) == (1, b"1")


async def test_an_applied_attempt_is_found_committed_despite_a_lasting_error(target: Target) -> None:
    async with _at_version_1(target, 2) as (db, faults):
        faults.script("put_if_match", "lost_response", "denied")  # applied, answer lost; retry refused
        assert await db.put(b"k", b"2") == 2
        assert db.statistics()["ambiguous_commits_resolved"] == 1
    assert await _version_and_value(target) == (2, b"2")


async def test_an_applied_attempt_stays_undecided_when_the_log_cannot_be_read(target: Target) -> None:
    # Credentials that expire right after the applied attempt: the CAS retry and the
    # manifest GET that would find the commit are both refused.
    async with _at_version_1(target, 2) as (db, faults):
        faults.script("put_if_match", "lost_response", "denied")
        faults.script("get", "denied")
        with pytest.raises(kvstore.CommitOutcomeUnknownError, match="could not be read"):
            await db.put(b"k", b"2")
        assert faults.injected["get:denied"] == 1
    assert await _version_and_value(target) == (2, b"2")  # it was applied


@pytest.mark.parametrize(
    ("max_attempts", "first"),
    [
        pytest.param(2, "pass", id="lost-race-then-denied"),
        pytest.param(1, "error", id="cas-unavailable-decided-by-a-rival-commit-then-denied"),
    ],
)
async def test_a_lasting_error_is_a_definite_failure_once_the_log_decided_every_attempt(
    target: Target, max_attempts: int, first: FaultKind
) -> None:
    # Our first CAS is made on a stale manifest: a rival has committed version 2. Whether
    # it meets a 412 or no answer, the log of version 2 (not ours) decides it: not applied.
    # The next CAS, at version 3, is refused outright: nothing of ours can land, so the
    # commit failed, and the error says why.
    async with _at_version_1(target, max_attempts) as (db, faults):
        async with target.open() as rival:
            await rival.put(b"k", b"rival")
        faults.script("put_if_match", first, "denied")
        with pytest.raises(kvstore.AccessDeniedError):
            await db.put(b"other", b"2")  # a blind write: no conflict with the rival
        assert faults.injected["put_if_match:denied"] == 1
    assert await _version_and_value(target) == (2, b"rival")


async def test_a_refused_commit_with_no_attempt_in_doubt_reports_the_refusal(target: Target) -> None:
    # Expired credentials refuse every request. The CAS was refused before any other
    # attempt: nothing can land, so the error is AccessDeniedError (check the credentials),
    # not "outcome unknown" because the manifest could not be read either.
    async with _at_version_1(target, 2) as (db, faults):
        faults.script("put_if_match", "denied")
        faults.script("get", "denied")
        with pytest.raises(kvstore.AccessDeniedError, match="check the credentials"):
            await db.put(b"k", b"2")
    assert await _version_and_value(target) == (1, b"1")
