"""A least-recently-used cache bounded by bytes, with single-flight loading.

Segments and their blocks never change once written, so a cached entry is
valid forever; only memory pressure evicts it.

The bound: callers must pass each value's in-memory size, Python object
headers included (a decoded block of n entries holds 2n or 3n objects of
33+ bytes each; charging only their data under-counts by 1.25x for
100-byte values and by 2.3x for 8-byte ones), and the cache adds
`ENTRY_OVERHEAD` per entry for its own bookkeeping. `size` is then the
memory the cached values and the cache hold, to within the allocator's
rounding and fragmentation.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable
from typing import Any, TypeVar

V = TypeVar("V")

ENTRY_OVERHEAD = 320
"""Bytes the cache itself holds per entry: the OrderedDict slot and node, the key
tuple, the (value, size) tuple and its int. Measured with tracemalloc (CPython
3.11, 64-bit, ("block", segment id, n) keys, a full cache under churn): 190 to
330 bytes, depending on how full the hash table is."""


class ByteLRU:
    """Maps keys to immutable values; evicts least recently used past `capacity` bytes."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.size = 0
        self.hits = 0
        self.misses = 0
        self._items: OrderedDict[Hashable, tuple[Any, int]] = OrderedDict()
        self._loading: dict[Hashable, asyncio.Future[Any]] = {}

    def get(self, key: Hashable) -> Any | None:
        item = self._items.get(key)
        if item is None:
            return None
        self._items.move_to_end(key)
        return item[0]

    def peek(self, key: Hashable) -> Any | None:
        """The cached value, left where it is in the LRU order."""
        item = self._items.get(key)
        return None if item is None else item[0]

    def put(self, key: Hashable, value: Any, size: int) -> None:
        """Cache `value`, whose in-memory size (object headers included) is `size` bytes."""
        size += ENTRY_OVERHEAD
        if size > self.capacity:
            return  # would evict everything else for one entry
        old = self._items.pop(key, None)
        if old is not None:
            self.size -= old[1]
        self._items[key] = (value, size)
        self.size += size
        while self.size > self.capacity:
            _, (_, evicted) = self._items.popitem(last=False)
            self.size -= evicted

    async def get_or_load(self, key: Hashable, load: Callable[[], Awaitable[tuple[V, int]]]) -> V:
        """The cached value, or the result of `load()` (value, size), loaded once for all waiters.

        The first caller runs the load in its own task (a task per miss would cost
        more than the load itself when the bytes are at hand: an inline segment).
        If that caller is cancelled (or times out), its cancellation is not the
        waiters': they stop waiting and one of them loads the value again.
        """
        while True:
            item = self._items.get(key)
            if item is not None:
                self.hits += 1
                self._items.move_to_end(key)
                return item[0]  # type: ignore[no-any-return]
            pending = self._loading.get(key)
            if pending is None:
                break
            self.hits += 1
            await asyncio.wait([pending])  # unlike awaiting it, cancelling this caller leaves it alone
            if not pending.cancelled():
                return pending.result()  # type: ignore[no-any-return]
            # Its loader was cancelled: look again (cached by now, or load it, or join who does).
        self.misses += 1
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._loading[key] = future
        try:
            value, size = await load()
        except asyncio.CancelledError:
            future.cancel()  # the loader's cancellation, not a result: the waiters try again
            raise
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: waiters re-raise it, nobody else must
            raise
        finally:
            del self._loading[key]
        future.set_result(value)
        self.put(key, value, size)
        return value
