"""Retries with backoff, request counting, and ambiguous-write resolution.

Wraps any backend. This is the only layer that retries a request: botocore's
retries and aiohttp's transparent resend on a dropped keep-alive connection
are switched off in the S3 backend. Transient failures (409, 5xx, throttling,
timeouts, resets) are retried with exponential backoff and full jitter.

A 412 on a conditional write never proves the write was not ours: an answer
can be lost after the store applied it, and an attempt can happen that this
layer never saw. So for a safe create every 412 is checked by reading the
object back and comparing it with what we wrote; for a compare-and-swap the
412 is passed up as it is, and the caller looks for its own id in what it finds (the commit
protocol in the manifest's commit log, design I5).

A lasting error (access denied, no such bucket) is not retried. When it ends an
operation an earlier attempt of which failed transiently, that attempt may have been
applied, or may still be (a request delayed in the network): the error is marked so
(`follows_uncertain_attempt`), and a conditional write's caller must not read it as
"not applied".
"""

from __future__ import annotations

import asyncio
import os
import random
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from .._errors import ClosedError, StoreUnavailableError, UsedAfterForkError, ValidationError
from ._protocol import (
    LIST_PAGE,
    Blob,
    ObjectInfo,
    ObjectNotFound,
    ObjectStore,
    PreconditionFailed,
    TransientError,
)

T = TypeVar("T")

_AFTER_UNCERTAIN_ATTEMPT = "_kvstore_follows_uncertain_attempt"


def follows_uncertain_attempt(exc: BaseException) -> bool:
    """Whether `exc` ended an operation after an earlier attempt of it failed transiently
    (no answer, a timeout, a 5xx): for a write, that attempt's outcome is unknown."""
    return getattr(exc, _AFTER_UNCERTAIN_ATTEMPT, False) is True


def _mark(exc: BaseException, last: TransientError | None) -> None:
    """Mark `exc` as following an uncertain attempt, if there was one (`last`)."""
    if last is not None:
        setattr(exc, _AFTER_UNCERTAIN_ATTEMPT, True)


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently to retry transient object-store failures.

    Every request has a deadline, and so has every operation made of retries:

    * `attempt_timeout`: one request, from sending it to the last byte of its
      answer. An answer that stalls (a server that stops sending, a lost
      connection nobody noticed) is abandoned, its connection closed, and the
      request retried on a fresh one. Large enough for an 8 MiB part on a
      slow link.
    * `total_timeout`: the whole operation, retries and backoff included.
      When it passes, the operation raises `StoreUnavailableError`: an
      endpoint that stops answering is reported within this many seconds,
      never waited on for ever.

    The S3 backend adds per-socket limits of its own (`S3Options.connect_timeout`,
    `S3Options.read_timeout`), which usually notice a dead connection sooner.
    """

    max_attempts: int = 8
    base_delay: float = 0.01
    max_delay: float = 2.0
    attempt_timeout: float = 30.0
    total_timeout: float = 60.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1 or self.attempt_timeout <= 0 or self.total_timeout <= 0:
            raise ValidationError("RetryPolicy needs max_attempts >= 1 and positive timeouts")

    def delay(self, attempt: int, rng: random.Random) -> float:
        """Full-jitter exponential backoff for the given 0-based retry number."""
        return rng.uniform(0.0, min(self.max_delay, self.base_delay * (2**attempt)))


class RetryingObjectStore:
    """An ObjectStore that retries, counts requests and resolves ambiguous creates."""

    def __init__(self, inner: ObjectStore, policy: RetryPolicy | None = None, *, seed: int | None = None) -> None:
        self.inner = inner
        self.policy = policy or RetryPolicy()
        self.requests: Counter[str] = Counter()
        # Safe creates answered 412 whose object held our bytes: an unseen earlier
        # attempt of ours had been applied.
        self.own_creates_found = 0
        self._in_flight = 0
        self._closed = False
        self._idle = asyncio.Event()
        self._idle.set()
        self._rng = random.Random(seed)
        self._pid = os.getpid()

    @property
    def description(self) -> str:
        return self.inner.description

    def _check_process(self) -> None:
        """Refuse to send from a forked child: the backend's connections are the parent's,
        and a request or a close on them from here would corrupt the parent's."""
        if os.getpid() != self._pid:
            raise UsedAfterForkError(
                f"{self.description} was opened in process {self._pid}, and this process ({os.getpid()}) is "
                "a fork of it: its connections belong to the parent. Open the store again in this process"
            )

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
        except PreconditionFailed:
            # Never conclude "not ours" from a 412 alone: an attempt we never saw (the HTTP
            # client's own retry, or an answer lost after the write was applied) may have
            # created it. It is ours exactly when its bytes are: names are fresh and
            # random, and every body kvstore creates is unique (ids, times, checksums).
            try:
                blob = await self.get(name)
            except ObjectNotFound:
                blob = None  # deleted since: whoever made it, the 412 stands
            if blob is not None and blob.data == data and blob.etag is not None:
                self.own_creates_found += 1
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
        try:
            await self._call("DELETE", lambda: self.inner.abort_multipart(name, upload_id))
        except ObjectNotFound:
            pass  # gone already: an earlier attempt whose answer was lost aborted it

    async def head(self, name: str) -> ObjectInfo:
        return await self._call("HEAD", lambda: self.inner.head(name))

    async def list(self, prefix: str) -> AsyncIterator[ObjectInfo]:
        # Each page has the attempt deadline: one `wait_for` (a task, before Python 3.12)
        # per LIST_PAGE names, not per name. A listing is retried as a whole only before
        # it yields anything; a failure halfway raises, since the caller has already
        # consumed names.
        policy = self.policy
        loop = asyncio.get_running_loop()
        deadline = loop.time() + policy.total_timeout
        attempt = 0
        while True:
            self._check_process()
            self.requests["LIST"] += 1
            listing = self.inner.list(prefix)
            yielded = False
            try:
                while True:
                    try:
                        page = await asyncio.wait_for(_take(listing, LIST_PAGE), policy.attempt_timeout)
                    except asyncio.TimeoutError:
                        raise TransientError(f"no page within {policy.attempt_timeout:.3g} s") from None
                    for info in page:
                        yield info
                        yielded = True
                    if len(page) < LIST_PAGE:
                        return
            except TransientError as exc:
                attempt += 1
                if yielded or attempt >= policy.max_attempts or loop.time() >= deadline:
                    raise self._unavailable(f"listing {prefix!r}", attempt, exc) from exc
                await asyncio.sleep(min(policy.delay(attempt - 1, self._rng), max(0.0, deadline - loop.time())))
            finally:
                await listing.aclose()  # type: ignore[attr-defined]

    async def delete(self, name: str) -> None:
        await self._call("DELETE", lambda: self.inner.delete(name))

    async def delete_many(self, names: Sequence[str]) -> None:
        # Retried as a whole: deleting is idempotent, and a missing name is not an error.
        await self._call("DELETE", lambda: self.inner.delete_many(names))

    async def close(self) -> None:
        """Wait for operations in flight (prefetches, shared refreshes), at most one
        attempt's deadline, then release the backend's connections. A request
        abandoned mid-answer is what some servers handle worst. Later attempts
        (of an operation still retrying) raise ClosedError instead of reaching
        the closed backend. In a forked child it does nothing: the connections
        are the parent's."""
        if os.getpid() != self._pid:
            return
        try:
            await asyncio.wait_for(self._idle.wait(), self.policy.attempt_timeout)
        except asyncio.TimeoutError:
            pass  # each request has its own deadline; closing now ends the stragglers
        self._closed = True
        await self.inner.close()

    async def _call(self, kind: str, attempt_once: Callable[[], Awaitable[T]]) -> T:
        # In flight from the first attempt to the last, backoff included, so that
        # close() does not release the backend between two attempts.
        self._in_flight += 1
        self._idle.clear()
        try:
            return await self._attempts(kind, attempt_once)
        finally:
            self._in_flight -= 1
            if not self._in_flight:
                self._idle.set()

    async def _attempts(self, kind: str, attempt_once: Callable[[], Awaitable[T]]) -> T:
        policy = self.policy
        loop = asyncio.get_running_loop()
        deadline = loop.time() + policy.total_timeout
        last: TransientError | None = None
        attempt = 0
        while attempt < policy.max_attempts:
            if attempt:
                await asyncio.sleep(min(policy.delay(attempt - 1, self._rng), max(0.0, deadline - loop.time())))
            left = deadline - loop.time()
            if left <= 0:
                break
            if self._closed:
                closed = ClosedError(f"{self.description}: the store was closed during a {kind}; open it again")
                _mark(closed, last)
                raise closed
            self._check_process()
            attempt += 1
            self.requests[kind] += 1
            limit = min(policy.attempt_timeout, left)
            try:
                # Cancelling a stalled request closes its connection: the retry gets a fresh one.
                return await asyncio.wait_for(attempt_once(), limit)
            except TransientError as exc:
                last = exc
            except asyncio.TimeoutError:
                last = TransientError(f"no answer within {limit:.3g} s")
            except Exception as exc:  # a lasting answer: not retried
                _mark(exc, last)
                raise
        raise self._unavailable(kind, attempt, last) from last

    def _unavailable(self, what: str, attempts: int, last: TransientError | None) -> StoreUnavailableError:
        cause = "no time left for an attempt" if last is None else str(last)
        tries = f"{attempts} attempt" + ("s" if attempts != 1 else "")
        return StoreUnavailableError(
            f"{self.description} kept failing a {what}: {tries} within the {self.policy.total_timeout:g} s "
            f"deadline (last: {cause}); check the endpoint and network, then retry "
            "(kvstore.RetryPolicy sets the deadlines)"
        )


async def _take(items: AsyncIterator[T], n: int) -> list[T]:
    """The next `n` items of `items`, or fewer at its end."""
    taken: list[T] = []
    async for item in items:
        taken.append(item)
        if len(taken) == n:
            break
    return taken
