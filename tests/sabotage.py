"""Deliberately broken stores, to prove the campaign's checks catch real bugs (test-only).

Each function here patches kvstore's committer in the process that calls it.
The campaign calls one in each spawned worker before it runs, through the
generic hook ``CampaignConfig.worker_setup = "sabotage:<function>"`` (spawned
workers inherit the coordinator's ``sys.path``, on which ``tests/conftest.py``
puts this directory). Nothing of this ships in the package.
"""

from __future__ import annotations

from typing import Any

from kvstore import _commit, _two_phase


def no_conflict_check() -> None:
    """Commit every transaction without checking what it read (lost updates).

    `Committer._admit` accepts every request of a batch: no conflict with the
    commits since the read version, nor within the batch, no age limit.
    """

    def admit_everything(self: Any, requests: list[Any], base: Any, *args: Any, check_age: bool) -> list[Any]:
        return list(requests)

    _commit.Committer._admit = admit_everything  # type: ignore[method-assign]


def no_ambiguity_resolution() -> None:
    """Drop I5: after an uncertain CAS, never look for our own commit in the commit log.

    `Committer._find_own_commit` always answers "not committed", so a CAS
    whose answer was lost is retried blindly (applied twice) or, when the
    retry then conflicts, reported failed although it committed.
    """

    def never_found(self: Any, base: Any, accepted: Any, pending: Any, maybe_applied: Any) -> None:
        return None

    _commit.Committer._find_own_commit = never_found  # type: ignore[method-assign]


def every_intent_committed() -> None:
    """Read every cross-partition intent as committed, whatever its decision object says
    (or whether there is one): aborted and undecided transfers show, and resolve, in the
    partitions where they prepared."""

    async def committed(self: Any, name: str) -> str:
        return "committed"

    _two_phase.Decisions.outcome = committed  # type: ignore[method-assign,assignment]
