"""Retries with backoff, request counting, and ambiguous-write resolution.

Wraps any backend. Transient failures (409, 5xx, throttling, timeouts, resets)
are retried with exponential backoff and full jitter. A conditional write
whose earlier attempt may have been applied and whose retry gets 412 is
ambiguous: for a safe create the object is read back and compared with what
we wrote; for a compare-and-swap the 412 is passed up marked `maybe_ours`,
and the commit protocol resolves it through the manifest's commit log.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from .._errors import StoreUnavailableError
from ._protocol import Blob, ObjectInfo, ObjectStore, PreconditionFailed, TransientError

T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently to retry transient object-store failures."""

    max_attempts: int = 8
    base_delay: float = 0.01
    max_delay: float = 2.0

    def delay(self, attempt: int, rng: random.Random) -> float:
        """Full-jitter exponential backoff for the given 0-based retry number."""
        return rng.uniform(0.0, min(self.max_delay, self.base_delay * (2**attempt)))


class RetryingObjectStore:
    """An ObjectStore that retries, counts requests and resolves ambiguous creates."""

    def __init__(self, inner: ObjectStore, policy: RetryPolicy | None = None, *, seed: int | None = None) -> None:
        self.inner = inner
        self.policy = policy or RetryPolicy()
        self.requests: Counter[str] = Counter()
        self._rng = random.Random(seed)

    @property
    def description(self) -> str:
        return self.inner.description

    async def get(
        self,
        name: str,
        *,
        byte_range: tuple[int, int] | None = None,
        if_none_match: str | None = None,
    ) -> Blob | None:
        return await self._call("GET", lambda: self.inner.get(name, byte_range=byte_range, if_none_match=if_none_match))

    async def put_if_absent(self, name: str, data: bytes) -> str:
        try:
            return await self._call("PUT", lambda: self.inner.put_if_absent(name, data))
        except PreconditionFailed as exc:
            if not exc.maybe_ours:
                raise
            # An earlier attempt may have created it: it is ours only if the bytes are.
            blob = await self.get(name)
            if blob is not None and blob.data == data and blob.etag is not None:
                return blob.etag
            raise

    async def put_if_match(self, name: str, data: bytes, etag: str) -> str:
        return await self._call("PUT", lambda: self.inner.put_if_match(name, data, etag))

    async def copy_if_match(self, source: str, destination: str, etag: str) -> str:
        return await self._call("COPY", lambda: self.inner.copy_if_match(source, destination, etag))

    async def start_multipart(self, name: str) -> str:
        return await self._call("POST", lambda: self.inner.start_multipart(name))

    async def upload_part(self, name: str, upload_id: str, part_number: int, data: bytes) -> str:
        return await self._call("PUT", lambda: self.inner.upload_part(name, upload_id, part_number, data))

    async def complete_multipart_if_absent(self, name: str, upload_id: str, parts: Sequence[tuple[int, str]]) -> str:
        return await self._call("POST", lambda: self.inner.complete_multipart_if_absent(name, upload_id, parts))

    async def abort_multipart(self, name: str, upload_id: str) -> None:
        await self._call("DELETE", lambda: self.inner.abort_multipart(name, upload_id))

    async def head(self, name: str) -> ObjectInfo:
        return await self._call("HEAD", lambda: self.inner.head(name))

    async def list(self, prefix: str) -> AsyncIterator[ObjectInfo]:
        # A listing is retried as a whole only before it yields anything; a
        # failure halfway raises, since the caller has already consumed names.
        self.requests["LIST"] += 1
        async for info in self.inner.list(prefix):
            yield info

    async def delete(self, name: str) -> None:
        await self._call("DELETE", lambda: self.inner.delete(name))

    async def close(self) -> None:
        await self.inner.close()

    async def _call(self, kind: str, attempt_once: Callable[[], Awaitable[T]]) -> T:
        maybe_applied = False
        last: TransientError | None = None
        for attempt in range(self.policy.max_attempts):
            if attempt:
                await asyncio.sleep(self.policy.delay(attempt - 1, self._rng))
            self.requests[kind] += 1
            try:
                return await attempt_once()
            except TransientError as exc:
                maybe_applied = maybe_applied or exc.maybe_applied
                last = exc
            except PreconditionFailed as exc:
                if maybe_applied:
                    raise PreconditionFailed(str(exc), maybe_ours=True) from exc
                raise
        raise StoreUnavailableError(
            f"{self.description} kept failing after {self.policy.max_attempts} attempts "
            f"(last: {last}); check the endpoint and network, then retry"
        ) from last
