"""Which transactions are running in the current task: refusing nested ones.

A transaction started inside a `transact` function (or an ``async with
db.transaction()`` block) on the same store commits on its own: on every
retry of the outer function, and each commit makes the outer transaction
conflict again. So starting one there raises NestedTransactionError.

The running transactions are kept in a context variable, which asyncio
copies into every task a task starts and which `SyncStore` carries onto its
loop thread with each call. A scope entered by a blocking caller (no task)
covers the loop tasks it waits on; a scope entered in a task covers only that
task. Transactions committed from tasks it started are not refused (they may
be deliberate concurrent work) but counted: if the outer transaction then
conflicts, a retry cannot cure it (`ConflictError.retryable` is False).
"""

from __future__ import annotations

import asyncio
from contextvars import ContextVar
from dataclasses import dataclass

from ._errors import ConflictError, NestedTransactionError


@dataclass(eq=False)
class Scope:
    """One running transaction, as its task (or blocking thread) sees it."""

    store_id: str
    owner: object  # the transaction whose scope this is; its own commit does not count
    task: asyncio.Task[object] | None  # None: entered by a blocking caller
    active: bool = True
    commits: int = 0  # other transactions on the store committed from this scope's context


_running: ContextVar[tuple[Scope, ...]] = ContextVar("kvstore_running_transactions", default=())


def _current_task() -> asyncio.Task[object] | None:
    try:
        return asyncio.current_task()
    except RuntimeError:  # no event loop in this thread: a blocking caller
        return None


def refuse_nested(store_id: str, url: str) -> None:
    """Raise NestedTransactionError if a transaction on this store runs in this task."""
    running = _running.get()
    if not running:
        return  # the common case, without asking asyncio for the task
    task = _current_task()
    for scope in running:
        if scope.active and scope.store_id == store_id and scope.task in (None, task):
            raise NestedTransactionError(
                f"a transaction on {url} was started inside another one on the same store "
                "(in a transact function or an `async with db.transaction()` block); it would commit "
                "separately, on every retry, and make the outer one conflict: read and write through "
                "the outer `tx` instead (pass it down), or start this one after the outer one ends"
            )


def enter(store_id: str, owner: object) -> Scope:
    """Mark a transaction on `store_id` as running in the current context."""
    scope = Scope(store_id, owner, _current_task())
    _running.set((*_running.get(), scope))
    return scope


def leave(scope: Scope) -> None:
    """End `scope` (also for tasks that copied the context while it was running)."""
    scope.active = False
    _running.set(tuple(s for s in _running.get() if s is not scope))


def note_commit(store_id: str, committed: object) -> None:
    """Count a commit of `committed` against the running scopes of the same store."""
    for scope in _running.get():
        if scope.active and scope.store_id == store_id and scope.owner is not committed:
            scope.commits += 1


def retryable(exc: ConflictError, scope: Scope, url: str) -> bool:
    """Whether a `transact` attempt that ended in `exc` may be retried. Raises a
    non-retryable ConflictError instead if the attempt committed other transactions
    on the store: a retry would commit them again and conflict again."""
    if scope.commits:
        raise ConflictError(
            f"the transaction conflicted after its own function committed {scope.commits} other "
            f"transaction(s) on {url} while it ran (e.g. from a task it started); every retry would do "
            "the same and conflict again, so it was not retried: make those writes through the `tx` "
            "the function is given",
            retryable=False,
        ) from exc
    return exc.retryable
