"""`Reader`: what a transaction and a snapshot both offer, for code that takes either."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from typing import Any, Protocol, runtime_checkable


@runtime_checkable
class Reader(Protocol):
    """Reads at one consistent version: a `Transaction` or a `Snapshot`.

    Write a helper against `Reader` and call it inside a transaction (its
    reads then join the transaction's conflict checks) or on a snapshot
    (e.g. one opened at a tag, to reproduce what was read then).
    """

    async def get(self, key: str | bytes, default: Any = None) -> Any:
        """The value of `key` at this version, or `default` if absent."""
        ...

    async def get_many(self, keys: Iterable[str | bytes], default: Any = None) -> list[Any]:
        """The values of `keys` at this version, in order; `default` for each absent one."""
        ...

    def scan(
        self,
        prefix: str | bytes | None = None,
        *,
        start: str | bytes | None = None,
        end: str | bytes | None = None,
        limit: int | None = None,
        reverse: bool = False,
    ) -> AsyncIterator[tuple[bytes, Any]]:
        """(key, value) pairs with keys starting with `prefix` and in [start, end), in key order."""
        ...
