"""Running awaitables concurrently, a bounded number at a time."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


async def run_bounded(fn: Callable[[T], Awaitable[R]], items: Sequence[T], concurrency: int) -> list[R]:
    """``fn(item)`` for every item, at most `concurrency` at once; results in the order of `items`.

    `concurrency` workers take the items in turn, so a long sequence (a batch of 100,000
    keys) costs that many tasks, not one per item. The first failure cancels the others
    (and is raised once they have stopped), so no work outlives the call: each wait
    inside `fn` carries its own deadline.
    """
    results: dict[int, R] = {}
    pending = iter(range(len(items)))

    async def worker() -> None:
        for i in pending:  # shared: each index goes to one worker
            results[i] = await fn(items[i])

    tasks = [asyncio.ensure_future(worker()) for _ in range(min(concurrency, len(items)))]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION) if tasks else (set(), set())
        for task in done:
            if not task.cancelled() and task.exception() is not None:
                raise task.exception()  # type: ignore[misc]
        return [results[i] for i in range(len(items))]
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def gather_all(awaitables: Iterable[Awaitable[R]]) -> list[R]:
    """Await all concurrently (one alone is simply awaited); results in order. The first
    failure cancels the others, as in `run_bounded`."""
    items = list(awaitables)
    if len(items) == 1:
        return [await items[0]]
    return await run_bounded(_identity, items, len(items))


async def _identity(awaitable: Awaitable[R]) -> R:
    return await awaitable
