"""The one read-modify-CAS loop, for every writer of a shared object but the committer.

Compaction (the manifest), tags (a copy of the manifest taken only if it did
not move), garbage collection (its marks) and the resolve CAS of an idle
partition's cross-partition intents (`Committer.resolve`) all read an object,
derive a conditional write from it, and start again when that write's
condition no longer holds. The committer has its own loop (`_commit.py`): it batches,
re-checks conflicts and must tell lost answers from lost races.

A 412 may answer our own earlier attempt whose answer was lost, so every
`write` must first recognise its own write in the state it is given (I5):
`read_modify_cas` only decides when to stop trying.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

from ._errors import ContentionError
from ._objectstore import PreconditionFailed

S = TypeVar("S")
R = TypeVar("R")

# Races lost in a row before giving up. Each loss means another writer
# succeeded, so the store as a whole made progress meanwhile.
MAX_ATTEMPTS = 20


async def read_modify_cas(
    what: str,
    load: Callable[[bool], Awaitable[S]],
    write: Callable[[S], Awaitable[R]],
    *,
    attempts: int = MAX_ATTEMPTS,
) -> R:
    """`await write(await load(fresh))` until it does not raise PreconditionFailed.

    `load(fresh)` returns the state to build on: `fresh` is False on the
    first attempt (a copy already in hand may do) and True after a lost
    race. Raises ContentionError, naming `what`, after `attempts` lost races.
    """
    fresh = False
    for _ in range(attempts):
        state = await load(fresh)
        try:
            return await write(state)
        except PreconditionFailed:
            fresh = True
    raise ContentionError(
        f"{what} lost {attempts} compare-and-swap races in a row to other writers of the store "
        "(the last may have been its own write, its answer lost): retry it later, or when fewer "
        "processes write; retrying is safe"
    )
