"""`kvstore doctor`: does an endpoint have every property kvstore relies on?

Each check writes scratch objects under `Layout.doctor_scratch(<run id>)`,
which is emptied at the end whatever happened (a check that fails, a
deadline, Ctrl-C). Checks go through the retry layer, as kvstore's own
requests do, so what they see is what a store would see; 409s, which that
layer retries, are counted on the way (`_Watched`).

Open-time probing (`_probe.check_conditional_writes`) proves the two
conditional writes with two or three PUTs; the doctor goes further: races,
multipart completion, copies, 304s, ranges, batch deletes, listing order
and the server's clock.
"""

from __future__ import annotations

import asyncio
import math
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from ._errors import AccessDeniedError, StoreNotFoundError, StoreUnavailableError, ValidationError
from ._layout import Layout, new_object_id
from ._objectstore import (
    MAX_DELETE_BATCH,
    Blob,
    LocalObjectStore,
    MemoryObjectStore,
    ObjectInfo,
    ObjectNotFound,
    ObjectStore,
    PreconditionFailed,
    RetryingObjectStore,
    RetryPolicy,
    S3Options,
    TransientError,
)
from ._options import DEFAULT_GRACE_PERIOD
from ._probe import NO_SUCH_ETAG, unique_body
from ._url import parse_url, s3_settings

Result = Literal["pass", "fail", "n/a"]

RACE_WRITERS = 8  # concurrent requests per race round
RACE_ROUNDS = 4  # rounds per race: a non-atomic endpoint shows itself in some, not all
CHECK_TIMEOUT = 60.0  # seconds one check may take, retries included
# `_Watched` recognises a 409 by the code the S3 backend (or a fault injector) names.
_CONFLICT_MARKS = ("ConditionalRequestConflict", "OperationAborted", " 409 ")
# Written in an order that is not theirs. In UTF-8 bytes '!' < '.' < '/' < '0' < 'A' < 'a' < '~'
# < 'é': "b.x" < "b/1" < "b0", which a listing that walks directories first or last gets wrong.
_LIST_NAMES = ("z", "é", "a~", "b0", "b/1", "b.x", "a0", "A", "a", "a!")


@dataclass(frozen=True)
class DoctorCheck:
    """One property of the endpoint: whether it held, what was seen, and why kvstore cares.

    `result` is "pass", "fail" or "n/a" (the property does not apply to this
    backend: `detail` says why).
    """

    name: str
    result: Result
    detail: str
    kvstore_does: str


@dataclass(frozen=True)
class DoctorReport:
    """What `kvstore.doctor` found at one endpoint.

    `ok` is True when no check failed. `leftovers` names scratch objects it
    could not delete (normally none).
    """

    url: str
    endpoint: str
    checks: tuple[DoctorCheck, ...]
    leftovers: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        """Whether every property kvstore relies on held."""
        return all(c.result != "fail" for c in self.checks)

    @property
    def failed(self) -> list[str]:
        """The names of the checks that failed."""
        return [c.name for c in self.checks if c.result == "fail"]

    def to_dict(self) -> dict[str, Any]:
        """The report as JSON-ready data (what ``kvstore doctor --json`` prints)."""
        return {
            "url": self.url,
            "endpoint": self.endpoint,
            "ok": self.ok,
            "failed": self.failed,
            "checks": [
                {"name": c.name, "result": c.result, "detail": c.detail, "kvstore_does": c.kvstore_does}
                for c in self.checks
            ],
            "leftovers": list(self.leftovers),
        }


# What kvstore does with each property: the third column of the report.
KVSTORE_DOES: dict[str, str] = {
    "if-none-match": "creates every segment, run, tag and snapshot with If-None-Match: *; "
    "refuses to open a store for writing where it is ignored (UnsafeEndpointError)",
    "create-race": "two writers creating one name must not both succeed: a tag or a segment would be lost",
    "if-match": "commits by replacing the manifest with If-Match (compare-and-swap); "
    "refuses to open a store for writing where it is ignored",
    "cas-race": "of concurrent commits from one manifest exactly one wins; the others rebase or "
    "raise ConflictError. Two winners would lose a commit",
    "multipart-if-none-match": "completes the multipart upload of a segment over 8 MiB with "
    "If-None-Match: *, so it never replaces an object",
    "copy-conditions": "tags copy the manifest with CopySourceIfMatch and If-None-Match: *, "
    "so a tag keeps exactly the version it names",
    "conditional-get": "asks 'has the manifest changed?' with If-None-Match: <etag>; a 304 costs no body",
    "ranged-get": "reads a segment's footer, index and blocks with byte ranges",
    "delete-objects": "garbage collection deletes up to 1000 objects per DeleteObjects request",
    "409-conflicts": "retries a 409 (ConditionalRequestConflict) with backoff, then resolves the "
    "outcome (a 412 on a retried create is checked against the bytes it wrote)",
    "listing": "garbage collection and tags list prefixes and must see every object; they read "
    "every name, so the order (byte order on S3, not on S3 Express directory buckets) does not matter",
    "clock-skew": "garbage collection compares this machine's clock with objects' LastModified: "
    "it needs the skew well under half of segment_grace_period",
}


async def doctor(
    url: str | os.PathLike[str],
    *,
    endpoint_url: str | None = None,
    region_name: str | None = None,
    profile: str | None = None,
    aws_access_key_id: str | None = None,
    aws_secret_access_key: str | None = None,
    aws_session_token: str | None = None,
    s3_options: S3Options | None = None,
    grace_period: float | None = None,
    retry: RetryPolicy | None = None,
    wrap_object_store: Callable[[ObjectStore], ObjectStore] | None = None,
) -> DoctorReport:
    """Check that the endpoint of `url` has every property kvstore relies on.

    The URL and the S3 settings are those of `kvstore.open`; no store needs
    to exist there (for S3, the bucket must). Scratch objects are written
    under ``<prefix>doctor/<id>/`` and deleted before it returns, whatever
    happens. `grace_period` is the `StoreOptions.segment_grace_period` the
    clock skew is judged against (default: 3600 s, a new store's). A property that
    does not hold is a check with result "fail" in the report (`ok` is then
    False), not an exception; what no check can judge raises as `open` does
    (StoreNotFoundError for a missing bucket, AccessDeniedError,
    StoreUnavailableError, InvalidURLError). `wrap_object_store` wraps the
    backend, as in `open` (tests inject faults with it).
    """
    s3 = s3_settings(
        s3_options,
        endpoint_url=endpoint_url,
        region_name=region_name,
        profile=profile,
        aws_access_key_id=aws_access_key_id,
        aws_secret_access_key=aws_secret_access_key,
        aws_session_token=aws_session_token,
    )
    location = parse_url(url, s3)
    grace = DEFAULT_GRACE_PERIOD if grace_period is None else grace_period
    if not (math.isfinite(grace) and grace > 0):
        raise ValidationError(f"grace_period must be a finite number of seconds above 0, not {grace_period!r}")
    backend = location.objects if wrap_object_store is None else wrap_object_store(location.objects)
    return await diagnose(
        location.url, location.objects, location.prefix, grace_period=grace, retry=retry, wrapped=backend
    )


def _kind(backend: ObjectStore) -> str | None:
    """What kind of backend, for checks that do not apply to it; None for S3."""
    if isinstance(backend, LocalObjectStore):
        return "local filesystem"
    if isinstance(backend, MemoryObjectStore):
        return "memory"
    return None


async def diagnose(
    url: str,
    location_objects: ObjectStore,
    prefix: str,
    *,
    grace_period: float,
    retry: RetryPolicy | None = None,
    check_timeout: float = CHECK_TIMEOUT,
    wrapped: ObjectStore | None = None,
) -> DoctorReport:
    """Run every check against `backend` with scratch objects under `prefix`; always cleans up.

    Requests go to `wrapped` (a wrapper of `location_objects`) when given.
    Raises the errors no check can judge (missing bucket, refused
    credentials, an endpoint that does not answer its first listing); a
    request the endpoint rejects later fails the check that sent it.
    """
    kind = _kind(location_objects)
    watched = _Watched(wrapped or location_objects)
    objects = RetryingObjectStore(watched, retry or RetryPolicy(total_timeout=min(60.0, check_timeout)))
    scratch = Layout(prefix).doctor_scratch(new_object_id())
    doctor = _Checks(objects, watched, scratch, kind, grace_period)
    checks: list[DoctorCheck] = []
    leftovers: tuple[str, ...] = ()
    try:
        # One listing first: an endpoint that cannot be reached, a missing bucket or refused
        # credentials are reported as such (raised), not as twelve failed properties.
        async for _ in objects.list(scratch):
            pass
        for name, run in doctor.all():
            checks.append(await _judged(name, run, check_timeout))
    finally:
        leftovers = await doctor.clean_up(check_timeout)
        if isinstance(location_objects, LocalObjectStore):
            await location_objects.prune(scratch)
        await objects.close()
    return DoctorReport(url, objects.description, tuple(checks), leftovers)


async def _judged(name: str, run: Callable[[], Awaitable[tuple[Result, str]]], timeout: float) -> DoctorCheck:
    """Run one check within `timeout`; a refusal the check did not expect is its failure."""
    try:
        result, detail = await asyncio.wait_for(run(), timeout)
    except (AccessDeniedError, StoreNotFoundError):
        raise  # about the endpoint as a whole, not this property
    except asyncio.TimeoutError:
        result, detail = "fail", f"no answer within {timeout:g} s"
    except StoreUnavailableError as exc:
        # The endpoint answered the listing before the checks: a request it rejects (400
        # InvalidRequest for a header it does not take) or keeps failing is this property's.
        result, detail = "fail", str(exc)
    except (PreconditionFailed, ObjectNotFound, TransientError) as exc:
        result, detail = "fail", f"unexpected {_status(exc)}: {exc}"
    except Exception as exc:  # noqa: BLE001 - UnsafeEndpointError (501) and what a server may invent
        result, detail = "fail", f"{type(exc).__name__}: {exc}"
    return DoctorCheck(name, result, detail, KVSTORE_DOES[name])


def _status(exc: Exception) -> str:
    if isinstance(exc, PreconditionFailed):
        return "412 Precondition Failed"
    if isinstance(exc, ObjectNotFound):
        return "404 Not Found"
    return "transient failure"


class _Watched:
    """The backend, counting the 409s that the retry layer above it hides."""

    def __init__(self, inner: ObjectStore) -> None:
        self.inner = inner
        self.conflicts = 0

    @property
    def description(self) -> str:
        return self.inner.description

    async def _seen(self, call: Awaitable[Any]) -> Any:
        try:
            return await call
        except TransientError as exc:
            if any(mark in f" {exc} " for mark in _CONFLICT_MARKS):
                self.conflicts += 1
            raise

    async def get(
        self, name: str, *, byte_range: tuple[int, int] | None = None, if_none_match: str | None = None
    ) -> Blob | None:
        result: Blob | None = await self._seen(self.inner.get(name, byte_range=byte_range, if_none_match=if_none_match))
        return result

    async def put_if_absent(self, name: str, data: bytes) -> str:
        return str(await self._seen(self.inner.put_if_absent(name, data)))

    async def put_if_match(self, name: str, data: bytes, etag: str) -> str:
        return str(await self._seen(self.inner.put_if_match(name, data, etag)))

    async def copy_if_match(self, source: str, destination: str, etag: str) -> str:
        return str(await self._seen(self.inner.copy_if_match(source, destination, etag)))

    async def start_multipart(self, name: str) -> str:
        return str(await self._seen(self.inner.start_multipart(name)))

    async def upload_part(self, name: str, upload_id: str, part_number: int, data: bytes) -> str:
        return str(await self._seen(self.inner.upload_part(name, upload_id, part_number, data)))

    async def complete_multipart_if_absent(self, name: str, upload_id: str, parts: Sequence[tuple[int, str]]) -> str:
        return str(await self._seen(self.inner.complete_multipart_if_absent(name, upload_id, parts)))

    async def abort_multipart(self, name: str, upload_id: str) -> None:
        await self._seen(self.inner.abort_multipart(name, upload_id))

    async def head(self, name: str) -> ObjectInfo:
        info: ObjectInfo = await self._seen(self.inner.head(name))
        return info

    def list(self, prefix: str) -> AsyncIterator[ObjectInfo]:
        return self.inner.list(prefix)

    async def delete(self, name: str) -> None:
        await self._seen(self.inner.delete(name))

    async def delete_many(self, names: Sequence[str]) -> None:
        await self._seen(self.inner.delete_many(names))

    async def close(self) -> None:
        await self.inner.close()


@dataclass
class _Checks:
    """The checks, in the order they run, over one scratch prefix."""

    objects: RetryingObjectStore
    watched: _Watched
    scratch: str
    kind: str | None  # "local filesystem" or "memory"; None for S3
    grace_period: float
    uploads: list[tuple[str, str]] = field(default_factory=list)  # (name, upload id) to abort
    race_writes: int = 0

    def all(self) -> list[tuple[str, Callable[[], Awaitable[tuple[Result, str]]]]]:
        return [
            ("if-none-match", self.if_none_match),
            ("create-race", self.create_race),
            ("if-match", self.if_match),
            ("cas-race", self.cas_race),
            ("multipart-if-none-match", self.multipart),
            ("copy-conditions", self.copy_conditions),
            ("conditional-get", self.conditional_get),
            ("ranged-get", self.ranged_get),
            ("delete-objects", self.delete_objects),
            ("409-conflicts", self.conflicts),
            ("listing", self.listing),
            ("clock-skew", self.clock_skew),
        ]

    def _name(self, *parts: str) -> str:
        return self.scratch + "/".join(parts)

    async def _body_is(self, name: str, data: bytes) -> bool:
        blob = await self.objects.get(name)
        return blob is not None and blob.data == data

    async def if_none_match(self) -> tuple[Result, str]:
        name = self._name("create")
        first = unique_body()
        await self.objects.put_if_absent(name, first)
        try:
            await self.objects.put_if_absent(name, unique_body())
        except PreconditionFailed:
            if not await self._body_is(name, first):
                return "fail", "a second create was refused (412), but the object changed"
            return "pass", "a create of an existing object was refused with 412"
        return "fail", "a second create of an existing object succeeded and replaced it"

    async def create_race(self) -> tuple[Result, str]:
        async def round_(n: int) -> str | None:
            name = self._name("create-race", str(n))
            bodies = [unique_body() for _ in range(RACE_WRITERS)]
            outcomes = await asyncio.gather(
                *(self.objects.put_if_absent(name, b) for b in bodies), return_exceptions=True
            )
            return await self._one_winner(name, bodies, outcomes, "creates")

        return await self._race(round_, "creates")

    async def if_match(self) -> tuple[Result, str]:
        name = self._name("cas")
        etag = await self.objects.put_if_absent(name, unique_body())
        second = unique_body()
        try:
            await self.objects.put_if_match(name, second, etag)
        except PreconditionFailed:
            return "fail", "a write with the current ETag was refused (412)"
        try:
            await self.objects.put_if_match(name, unique_body(), etag)
        except PreconditionFailed:
            pass
        else:
            return "fail", "a write with a stale ETag succeeded and replaced the object"
        if not await self._body_is(name, second):
            return "fail", "a write with a stale ETag was refused (412), but the object changed"
        try:
            await self.objects.put_if_match(self._name("cas-missing"), unique_body(), NO_SUCH_ETAG)
        except (PreconditionFailed, ObjectNotFound):
            pass
        else:
            return "fail", "a write with If-Match to a missing object created it"
        return "pass", "current ETag: written; stale ETag: 412; missing object: refused"

    async def cas_race(self) -> tuple[Result, str]:
        async def round_(n: int) -> str | None:
            name = self._name("cas-race", str(n))
            etag = await self.objects.put_if_absent(name, unique_body())
            bodies = [unique_body() for _ in range(RACE_WRITERS)]
            outcomes = await asyncio.gather(
                *(self.objects.put_if_match(name, b, etag) for b in bodies), return_exceptions=True
            )
            return await self._one_winner(name, bodies, outcomes, "compare-and-swaps from one ETag")

        return await self._race(round_, "compare-and-swaps from one ETag")

    async def _race(self, round_: Callable[[int], Awaitable[str | None]], what: str) -> tuple[Result, str]:
        for n in range(RACE_ROUNDS):
            self.race_writes += RACE_WRITERS
            wrong = await round_(n)
            if wrong is not None:
                return "fail", f"round {n + 1} of {RACE_ROUNDS}: {wrong}"
        return "pass", f"{RACE_ROUNDS} rounds of {RACE_WRITERS} concurrent {what}: exactly one won each"

    async def _one_winner(
        self, name: str, bodies: list[bytes], outcomes: Sequence[str | BaseException], what: str
    ) -> str | None:
        """What went wrong in one race round (None: exactly one writer won, and its bytes stayed)."""
        for outcome in outcomes:
            if isinstance(outcome, BaseException) and not isinstance(outcome, PreconditionFailed):
                raise outcome
        winners = [b for b, o in zip(bodies, outcomes, strict=True) if isinstance(o, str)]
        if len(winners) != 1:
            return f"{len(winners)} of {RACE_WRITERS} concurrent {what} succeeded"
        if not await self._body_is(name, winners[0]):
            return "the object does not hold the bytes of the one write that succeeded"
        return None

    async def multipart(self) -> tuple[Result, str]:
        name = self._name("multipart")
        first = unique_body()
        await self._upload(name, first)
        try:
            await self._upload(name, unique_body())
        except PreconditionFailed:
            if not await self._body_is(name, first):
                return "fail", "a second completion was refused (412), but the object changed"
            return "pass", "completing an upload onto an existing object was refused with 412"
        return "fail", "completing a second upload replaced the existing object (If-None-Match ignored)"

    async def _upload(self, name: str, data: bytes) -> None:
        """One single-part multipart upload of `data`, completed with If-None-Match: *."""
        upload_id = await self.objects.start_multipart(name)
        self.uploads.append((name, upload_id))
        etag = await self.objects.upload_part(name, upload_id, 1, data)
        await self.objects.complete_multipart_if_absent(name, upload_id, [(1, etag)])
        self.uploads.remove((name, upload_id))

    async def copy_conditions(self) -> tuple[Result, str]:
        source, copy = self._name("copy-source"), self._name("copy")
        etag = await self.objects.put_if_absent(source, unique_body())
        wrong: list[str] = []
        try:
            await self.objects.copy_if_match(source, self._name("copy-stale"), NO_SUCH_ETAG)
            wrong.append("a copy with a wrong CopySourceIfMatch succeeded")
        except PreconditionFailed:
            pass
        await self.objects.copy_if_match(source, copy, etag)
        try:
            await self.objects.copy_if_match(source, copy, etag)
            wrong.append("a copy onto an existing object succeeded (If-None-Match ignored)")
        except PreconditionFailed:
            pass
        if wrong:
            return "fail", "; ".join(wrong)
        return "pass", "wrong source ETag: 412; existing destination: 412"

    async def conditional_get(self) -> tuple[Result, str]:
        name = self._name("get")
        data = unique_body()
        etag = await self.objects.put_if_absent(name, data)
        if await self.objects.get(name, if_none_match=etag) is not None:
            return "fail", "a GET with If-None-Match: <current etag> answered 200 with the body, not 304"
        blob = await self.objects.get(name, if_none_match=NO_SUCH_ETAG)
        if blob is None or blob.data != data:
            return "fail", "a GET with If-None-Match: <another etag> did not return the body"
        return "pass", "unchanged: 304 without a body; changed: 200 with it"

    async def ranged_get(self) -> tuple[Result, str]:
        name = self._name("range")
        data = bytes(range(256)) * 4
        await self.objects.put_if_absent(name, data)
        blob = await self.objects.get(name, byte_range=(100, 612))
        if blob is None or blob.data != data[100:612]:
            got = "nothing" if blob is None else f"{len(blob.data)} bytes"
            return "fail", f"a GET of bytes 100-611 of 1024 returned {got}, not those 512 bytes"
        return "pass", "a GET of bytes 100-611 returned exactly those bytes"

    async def delete_objects(self) -> tuple[Result, str]:
        names = [self._name("delete", str(i)) for i in range(3)]
        for name in names:
            await self.objects.put_if_absent(name, unique_body())
        await self.objects.delete_many([*names, self._name("delete", "missing")])
        left = []
        for name in names:
            try:
                await self.objects.head(name)
                left.append(name)
            except ObjectNotFound:
                pass
        if left:
            return "fail", f"a batch delete left {len(left)} of {len(names)} objects"
        how = "one DeleteObjects request" if self.kind is None else "a batch delete"
        return "pass", f"{how} deleted 3 objects; a missing name was not an error"

    async def conflicts(self) -> tuple[Result, str]:
        if self.kind is not None:
            return "n/a", f"{self.kind}: no HTTP, no 409 (a busy compare-and-swap lock is retried the same way)"
        seen = self.watched.conflicts
        if not seen:
            return "pass", f"no 409 in {self.race_writes} racing writes (none to handle; AWS S3 may send them)"
        return "pass", f"{seen} 409s in {self.race_writes} racing writes, each retried; every race resolved"

    async def listing(self) -> tuple[Result, str]:
        base = self._name("list") + "/"
        for leaf in _LIST_NAMES:
            await self.objects.put_if_absent(base + leaf, unique_body())
        listed = [info.name[len(base) :] async for info in self.objects.list(base)]
        expected = sorted(_LIST_NAMES, key=lambda n: n.encode("utf-8"))
        if sorted(listed, key=lambda n: n.encode("utf-8")) != expected:
            return "fail", f"a listing of {len(expected)} objects returned {listed}"
        if listed != expected:
            return "pass", (
                f"all {len(expected)} objects listed once, not in byte order ({listed}); "
                "kvstore does not depend on the order"
            )
        return "pass", f"all {len(expected)} objects listed once, in byte order (ASCII, '/', UTF-8)"

    async def clock_skew(self) -> tuple[Result, str]:
        name = self._name("clock")
        before = time.time()
        await self.objects.put_if_absent(name, unique_body())
        after = time.time()
        stamped = (await self.objects.head(name)).last_modified
        # LastModified in whole seconds (HTTP dates) was cut: the server's time was in
        # [stamped, stamped + 1). A file's modification time is not cut.
        cut = 1.0 if stamped == int(stamped) else 0.0
        low, high = stamped - after, stamped + cut - before
        worst = max(abs(low), abs(high))
        limit = self.grace_period / 4
        estimate = (low + high) / 2
        seen = f"server clock {estimate:+.1f} s from this machine's (within {worst:.1f} s)"
        where = "" if self.kind is None else f" ({self.kind}: the file's modification time)"
        if worst >= limit:
            return "fail", (
                f"{seen}{where}; kvstore needs under {self.grace_period / 2:g} s (half of segment_grace_period "
                f"{self.grace_period:g} s) and the doctor asks for under {limit:g} s: synchronise the clocks (NTP)"
            )
        return "pass", f"{seen}{where}; limit {limit:g} s (a quarter of segment_grace_period)"

    async def clean_up(self, timeout: float) -> tuple[str, ...]:
        """Abort open uploads and delete every scratch object; returns the names left behind."""
        try:
            return await asyncio.wait_for(self._clean_up(), timeout)
        except asyncio.TimeoutError:
            return (self.scratch + "*",)

    async def _clean_up(self) -> tuple[str, ...]:
        for name, upload_id in self.uploads:
            try:
                await self.objects.abort_multipart(name, upload_id)
            except Exception:  # noqa: BLE001, S112 - an upload left open expires by lifecycle rule
                continue
        try:
            names = [info.name async for info in self.objects.list(self.scratch)]
        except Exception:  # noqa: BLE001 - cleanup reports what it could not do, never raises
            return (self.scratch + "*",)
        left: list[str] = []
        for start in range(0, len(names), MAX_DELETE_BATCH):
            batch = names[start : start + MAX_DELETE_BATCH]
            try:
                await self.objects.delete_many(batch)
            except Exception:  # noqa: BLE001 - no DeleteObjects here: one at a time
                for name in batch:
                    try:
                        await self.objects.delete(name)
                    except Exception:  # noqa: BLE001
                        left.append(name)
        return tuple(left)
