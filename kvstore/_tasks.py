"""Running awaitables concurrently, a bounded number at a time."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


async def run_bounded(fn: Callable[[T], Awaitable[R]], items: Sequence[T], concurrency: int) -> list[R]:
    """``fn(item)`` for every item, at most `concurrency` at once; results in the order of `items`.

    The first failure cancels the others (and is raised once they have stopped), so no
    work outlives the call: each wait inside `fn` carries its own deadline.
    """
    limit = asyncio.Semaphore(concurrency)

    async def one(item: T) -> R:
        async with limit:
            return await fn(item)

    tasks = [asyncio.ensure_future(one(item)) for item in items]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        for task in done:
            if not task.cancelled() and task.exception() is not None:
                raise task.exception()  # type: ignore[misc]
        return [task.result() for task in tasks]
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
