"""A fault-injecting object store, for tests, campaigns and benchmarks.

Wrap any backend and pass it to `kvstore.open(..., wrap_object_store=...)`::

    plan = FaultPlan(seed=7, rules={"put_if_match": FaultRule(lost_response=0.1)})
    db = await kvstore.open(url, wrap_object_store=lambda inner: FaultInjectingStore(inner, plan))

Fault kinds, per operation (`get`, `put_if_absent`, `put_if_match`, `head`,
`list`, `delete`, `delete_many`):

* ``error``: the store answers 503 and does nothing;
* ``conflict``: the store answers 409 ConditionalRequestConflict (writes only) and does nothing;
* ``timeout``: the request never reaches the store, the client times out;
* ``lost_response``: the request is applied, then its response is lost (the
  client sees a timeout) — the case that makes conditional writes ambiguous;
* ``resent``: the request is applied, its response lost, and the HTTP client
  sends it again by itself, unseen by kvstore (aiohttp does that for a PUT on
  a dropped keep-alive connection): the caller gets the second attempt's
  answer, a 412 for a conditional write whose first attempt won;
* ``latency`` + ``jitter``: seconds added before each request;
* ``pass`` (scripted only): no fault for this call, to aim the next scripted
  fault at a later call;
* ``denied`` (scripted only): the store answers 403 AccessDenied and does
  nothing, a lasting error (credentials expired, a policy changed) that the
  retry layer does not retry;
* ``crash`` / ``crash_after_apply`` (scripted only): the writer stops right
  before / right after the request reaches the store. `SimulatedCrash` is
  raised and every later call raises it too, so the store sees nothing more
  from this client, exactly as if its process had been killed there.

`FaultPlan.outage` adds bursts: with that probability per request the store
becomes unreachable for the next `outage_length` requests (writes time out
before reaching it, reads get 503), long enough to exhaust the retries and
make commit outcomes unknown.

Rates are probabilities per request, drawn from a seeded generator, so a run
is reproducible from its seed (given the same order of requests).
`FaultInjectingStore.script` queues exact faults for the next calls of an
operation, for tests that need one precise failure.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter, defaultdict, deque
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal, TypeVar

from kvstore._errors import AccessDeniedError
from kvstore._objectstore import Blob, ObjectInfo, ObjectStore, PreconditionFailed, TransientError

T = TypeVar("T")
Operation = Literal[
    "get",
    "put_if_absent",
    "put_if_match",
    "copy_if_match",
    "start_multipart",
    "upload_part",
    "complete_multipart_if_absent",
    "abort_multipart",
    "head",
    "list",
    "delete",
    "delete_many",
]
FaultKind = Literal[
    "error", "conflict", "timeout", "lost_response", "resent", "crash", "crash_after_apply", "pass", "denied"
]
_WRITES = frozenset(
    {
        "put_if_absent",
        "put_if_match",
        "copy_if_match",
        "upload_part",
        "complete_multipart_if_absent",
        "delete",
        "delete_many",
    }
)


class SimulatedCrash(BaseException):
    """The client "died" at a scripted point: nothing it does reaches the store any more.

    A BaseException, like the KeyboardInterrupt a real interruption raises,
    so code that handles ordinary errors cannot mistake it for one.
    """


@dataclass(frozen=True)
class FaultRule:
    """Probabilities (0..1) of each fault for one operation, and added latency in seconds."""

    error: float = 0.0
    conflict: float = 0.0
    timeout: float = 0.0
    lost_response: float = 0.0
    resent: float = 0.0
    latency: float = 0.0
    jitter: float = 0.0


@dataclass(frozen=True)
class FaultPlan:
    """Which faults to inject where. `default` applies to operations without a rule."""

    seed: int = 0
    rules: dict[str, FaultRule] = field(default_factory=dict)
    default: FaultRule = FaultRule()
    # Behave like an endpoint that ignores If-None-Match / If-Match (writes always win).
    ignore_conditions: bool = False
    # Probability per request that an outage starts, and how many requests it then fails.
    outage: float = 0.0
    outage_length: int = 12


class FaultInjectingStore:
    """An ObjectStore that injects the faults of a FaultPlan into another one."""

    def __init__(self, inner: ObjectStore, plan: FaultPlan | None = None) -> None:
        self.inner = inner
        self.plan = plan or FaultPlan()
        self.injected: Counter[str] = Counter()  # "operation:kind" -> count
        self._rng = random.Random(self.plan.seed)
        self._scripted: defaultdict[str, deque[FaultKind]] = defaultdict(deque)
        self._outage_left = 0  # requests the current outage still fails
        self.crashed = False  # set by a scripted crash; every later call raises SimulatedCrash

    @property
    def description(self) -> str:
        return self.inner.description

    def script(self, operation: Operation, *faults: FaultKind) -> None:
        """Inject exactly these faults into the next calls of `operation`, in order."""
        self._scripted[operation].extend(faults)

    async def get(
        self,
        name: str,
        *,
        byte_range: tuple[int, int] | None = None,
        if_none_match: str | None = None,
    ) -> Blob | None:
        return await self._run("get", lambda: self.inner.get(name, byte_range=byte_range, if_none_match=if_none_match))

    async def put_if_absent(self, name: str, data: bytes) -> str:
        async def attempt() -> str:
            try:
                return await self.inner.put_if_absent(name, data)
            except PreconditionFailed:
                if not self.plan.ignore_conditions:
                    raise
                await self.inner.delete(name)
                return await self.inner.put_if_absent(name, data)

        return await self._run("put_if_absent", attempt)

    async def put_if_match(self, name: str, data: bytes, etag: str) -> str:
        async def attempt() -> str:
            if self.plan.ignore_conditions:
                await self.inner.delete(name)
                return await self.inner.put_if_absent(name, data)
            return await self.inner.put_if_match(name, data, etag)

        return await self._run("put_if_match", attempt)

    async def copy_if_match(self, source: str, destination: str, etag: str) -> str:
        return await self._run("copy_if_match", lambda: self.inner.copy_if_match(source, destination, etag))

    async def start_multipart(self, name: str) -> str:
        return await self._run("start_multipart", lambda: self.inner.start_multipart(name))

    async def upload_part(self, name: str, upload_id: str, part_number: int, data: bytes) -> str:
        return await self._run("upload_part", lambda: self.inner.upload_part(name, upload_id, part_number, data))

    async def complete_multipart_if_absent(self, name: str, upload_id: str, parts: Sequence[tuple[int, str]]) -> str:
        return await self._run(
            "complete_multipart_if_absent", lambda: self.inner.complete_multipart_if_absent(name, upload_id, parts)
        )

    async def abort_multipart(self, name: str, upload_id: str) -> None:
        await self._run("abort_multipart", lambda: self.inner.abort_multipart(name, upload_id))

    async def head(self, name: str) -> ObjectInfo:
        return await self._run("head", lambda: self.inner.head(name))

    async def list(self, prefix: str) -> AsyncIterator[ObjectInfo]:
        fault = self._draw("list")
        await self._delay("list")
        if fault in ("crash", "crash_after_apply"):
            self._crash("list")
        if fault == "denied":
            raise _denied("list")
        if fault is not None:
            raise TransientError(f"injected {fault} on list")
        async for info in self.inner.list(prefix):
            yield info

    async def delete(self, name: str) -> None:
        await self._run("delete", lambda: self.inner.delete(name))

    async def delete_many(self, names: Sequence[str]) -> None:
        await self._run("delete_many", lambda: self.inner.delete_many(names))

    async def close(self) -> None:
        await self.inner.close()

    async def _run(self, operation: str, call: Callable[[], Awaitable[T]]) -> T:
        fault = self._draw(operation)
        await self._delay(operation)
        write = operation in _WRITES
        if fault == "crash":
            self._crash(operation)
        if fault == "denied":
            raise _denied(operation)
        if fault == "error":
            raise TransientError(f"injected 503 on {operation}")
        if fault == "conflict" and write:
            raise TransientError(f"injected 409 on {operation}")
        if fault == "timeout":
            raise TransientError(f"injected timeout on {operation}")
        result = await call()
        if fault == "resent":
            result = await call()
        if fault == "crash_after_apply":
            self._crash(operation)
        if fault == "lost_response":
            raise TransientError(f"injected lost response on {operation} (it was applied)")
        return result

    def _crash(self, operation: str) -> None:
        self.crashed = True
        raise SimulatedCrash(f"simulated crash at {operation}")

    def _draw(self, operation: str) -> FaultKind | None:
        if self.crashed:
            raise SimulatedCrash(f"{operation} after a simulated crash")
        scripted = self._scripted.get(operation)
        fault: FaultKind | None = None
        if scripted:
            fault = scripted.popleft()
        elif self._in_outage():
            fault = "timeout" if operation in _WRITES else "error"
        else:
            rule = self.plan.rules.get(operation, self.plan.default)
            roll = self._rng.random()
            for kind, rate in (
                ("error", rule.error),
                ("conflict", rule.conflict),
                ("timeout", rule.timeout),
                ("lost_response", rule.lost_response),
                ("resent", rule.resent),
            ):
                if roll < rate:
                    fault = kind  # type: ignore[assignment]
                    break
                roll -= rate
        if fault == "pass":
            return None
        if fault is not None:
            self.injected[f"{operation}:{fault}"] += 1
        return fault

    def _in_outage(self) -> bool:
        """Whether this request falls in an outage (starting one with `plan.outage` odds)."""
        if self._outage_left == 0 and self.plan.outage and self._rng.random() < self.plan.outage:
            self._outage_left = self.plan.outage_length
            self.injected["outage"] += 1
        if self._outage_left:
            self._outage_left -= 1
            return True
        return False

    async def _delay(self, operation: str) -> None:
        rule = self.plan.rules.get(operation, self.plan.default)
        if rule.latency or rule.jitter:
            await asyncio.sleep(rule.latency + self._rng.uniform(0, rule.jitter))


def _denied(operation: str) -> AccessDeniedError:
    return AccessDeniedError(f"injected 403 AccessDenied on {operation}: check the credentials and the bucket policy")
