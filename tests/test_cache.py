"""The byte-bounded LRU: what it charges, what it evicts, what it really holds."""

from __future__ import annotations

import asyncio
import gc
import sys
import tracemalloc

from kvstore._cache import ENTRY_OVERHEAD, ByteLRU


def test_entries_are_charged_their_size_plus_the_cache_overhead() -> None:
    cache = ByteLRU(10 * (1000 + ENTRY_OVERHEAD))
    for i in range(10):
        cache.put(i, object(), 1000)
    assert cache.size == 10 * (1000 + ENTRY_OVERHEAD)
    cache.get(0)  # now the most recent: 1 is evicted next
    cache.put(10, object(), 1000)
    assert cache.get(1) is None and cache.get(0) is not None
    assert cache.size == 10 * (1000 + ENTRY_OVERHEAD)
    cache.put("huge", object(), cache.capacity)  # cannot fit with its overhead: not cached
    assert cache.get("huge") is None and cache.get(0) is not None


def test_memory_held_stays_within_the_capacity() -> None:
    """Values charged their real size (sys.getsizeof): what a full cache holds, its own
    bookkeeping included, stays within the capacity."""
    capacity = 4 * 1024 * 1024
    gc.collect()
    tracemalloc.start()
    try:
        cache = ByteLRU(capacity)
        before = tracemalloc.get_traced_memory()[0]
        for i in range(100_000):
            value = bytes(100 + i % 200)
            cache.put(("block", "segment-id", i), value, sys.getsizeof(value))
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert cache.size <= capacity
    assert held <= capacity * 1.03, held / capacity  # the hash table's slack varies


# Single-flight loading: the first caller loads, the others wait for it.

DEADLINE = 10.0  # seconds any one wait below may take


class _HeldLoad:
    """A load that waits for `release`, counting its runs and those cancelled."""

    def __init__(self) -> None:
        self.started = asyncio.Event()
        self.release = asyncio.Event()
        self.runs = 0
        self.cancelled = 0

    async def __call__(self) -> tuple[str, int]:
        self.runs += 1
        self.started.set()
        try:
            await self.release.wait()
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        return f"value of run {self.runs}", 100


async def _turns(n: int = 20) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


async def test_a_cancelled_loader_leaves_the_load_to_the_callers_waiting_for_it() -> None:
    cache, load = ByteLRU(1 << 20), _HeldLoad()
    loader = asyncio.create_task(cache.get_or_load("k", load))
    await asyncio.wait_for(load.started.wait(), DEADLINE)
    waiters = [asyncio.create_task(cache.get_or_load("k", load)) for _ in range(2)]
    await _turns()
    loader.cancel()
    await _turns()
    assert loader.cancelled()
    assert not any(w.done() for w in waiters)  # not cancelled, so they do not end with CancelledError
    assert (load.runs, load.cancelled) == (2, 1)  # one of them loads again, the other joins it
    load.release.set()
    assert await asyncio.wait_for(asyncio.gather(*waiters), DEADLINE) == ["value of run 2"] * 2
    assert cache.get("k") == "value of run 2"
