"""The byte-bounded LRU: what it charges, what it evicts, what it really holds."""

from __future__ import annotations

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
