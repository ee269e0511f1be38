"""A loopback TCP/HTTP proxy that injects faults *on the wire*, for tests and campaigns.

`kvstore.testing.faults` injects faults above the HTTP client; this proxy sits between
the HTTP client (aiohttp under aiobotocore) and the S3 endpoint, so the client's own
connection handling (keep-alive reuse, aiohttp's silent retry of idempotent requests on
a dropped connection, read timeouts) is exercised too::

    with FaultProxy(upstream="http://127.0.0.1:4566", seed=7) as proxy:
        proxy.script("lose_answer", methods={"PUT"}, path_contains="manifest")
        ...  # point the S3 client at proxy.endpoint_url

Fault kinds, per HTTP request/answer exchange (a keep-alive connection carries many):

* ``lose_answer``: forward the request, read the whole answer, then reset the client
  connection (RST, ``SO_LINGER`` 0) without sending a byte: the request was applied,
  its answer is lost.
* ``reset``: reset the client connection without forwarding: not applied.
* ``swallow``: forward, read the answer, send nothing, keep the client connection open
  until the client closes it (or the proxy stops).
* ``stop_after_headers``: forward, send the status line and headers, then stall.
* ``stop_mid_body``: forward, send the headers and about half the body, then stall.
* ``truncate``: forward, send the headers and part of the body, then close (FIN).
* ``trickle``: forward, send the whole answer at `NetRule.trickle_bytes_per_s`.
* ``pass`` (scripted only): no fault for this exchange, to aim the next scripted fault
  at a later one.
* ``latency`` + ``jitter`` (rule only): seconds waited before forwarding.

An answer without body bytes (HEAD, 204, 304, a PUT's empty 200) would be *complete*
after its headers, so for it ``stop_after_headers``, ``stop_mid_body`` and ``truncate``
withhold the blank line that ends the head instead: the client never sees a whole answer.

The proxy is **store-and-forward**: a request goes upstream only once it has been received
whole from the client, and the upstream answer is always read whole before it is relayed
(or not).  The server therefore never sees a client die mid-request or mid-answer, even when
a test SIGKILLs the client process (LocalStack leaks an object lock when its client vanishes
while it writes an answer, which then hangs later requests on that key).  On `stop`, exchanges
in flight upstream get a short grace period to finish before their connections are closed.

Faults are drawn from ``random.Random(seed)``, one draw per matching exchange (plus one for
jitter), so a run is reproducible given the order of requests.  Exchanges that do not match
the rule's filters pass untouched and draw nothing.  `FaultProxy.stats` counts requests,
forwarded requests and faults; `FaultProxy.history` lists each exchange with its fault.

Scope: HTTP/1.1 without TLS, one upstream connection per client connection (opened lazily),
bodies framed by ``Content-Length`` or ``chunked`` (forwarded verbatim), answers to HEAD and
1xx/204/304 answers without body.  ``Expect: 100-continue`` is answered by the proxy itself
(it needs the whole body before forwarding anyway) and stripped from the forwarded request;
interim 1xx answers from upstream are dropped.  When the upstream ends its side after an
answer (``Connection: close``, or an answer delimited by the close), the client connection
is closed after the answer is relayed; an upstream connection the server closed while idle
(LocalStack does after 60 s) is reopened for the client's next request.

Note for test writers: a plain aiohttp client re-sends an idempotent request (GET, HEAD,
PUT, DELETE) once when the connection dies before an answer starts, even with botocore's
retries off, so one ``lose_answer`` or ``reset`` is invisible to it (or, on a conditional
PUT, becomes a 412 for its own write).  kvstore's S3 backend turns that resend off, so its
retry layer sees every fault; a bare aiobotocore client in a test needs the fault twice.

Command line, for campaigns with worker processes (prints the endpoint, runs until killed)::

    python -m kvstore.testing.netproxy --upstream http://127.0.0.1:4566 --lose-answer 0.05
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import copy
import logging
import random
import signal
import socket
import struct
import sys
import threading
from collections import Counter, deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Literal, get_args
from urllib.parse import urlsplit

__all__ = ["Exchange", "FaultKind", "FaultProxy", "NetRule", "ProxyStats", "main"]

log = logging.getLogger(__name__)

FaultKind = Literal[
    "lose_answer",
    "swallow",
    "stop_after_headers",
    "stop_mid_body",
    "truncate",
    "reset",
    "trickle",
    "pass",
]
_FAULT_KINDS: frozenset[str] = frozenset(get_args(FaultKind))
# The order in which a rule's probabilities partition one uniform draw.
_RULE_KINDS: tuple[FaultKind, ...] = (
    "lose_answer",
    "swallow",
    "stop_after_headers",
    "stop_mid_body",
    "truncate",
    "reset",
    "trickle",
)

_HISTORY_LIMIT = 10_000  # exchanges remembered by FaultProxy.history
_HEAD_LIMIT = 256 * 1024  # request/status line + headers; S3 heads are a few KiB
_CRLF = b"\r\n"


@dataclass(frozen=True)
class NetRule:
    """Per-exchange fault probabilities (0..1, summing to at most 1), latency, and filters.

    Only exchanges whose method is in `methods` (None: any) and whose request target
    (path and query string, as sent, i.e. percent-encoded) contains `path_contains`
    (None: any) are affected; the others pass untouched.
    """

    lose_answer: float = 0.0
    swallow: float = 0.0
    stop_after_headers: float = 0.0
    stop_mid_body: float = 0.0
    truncate: float = 0.0
    reset: float = 0.0
    trickle: float = 0.0
    latency: float = 0.0
    jitter: float = 0.0
    trickle_bytes_per_s: int = 2000
    methods: frozenset[str] | None = None
    path_contains: str | None = None

    def __post_init__(self) -> None:
        total = 0.0
        for kind in _RULE_KINDS:
            rate = float(getattr(self, kind))
            if not 0.0 <= rate <= 1.0:
                raise ValueError(f"NetRule.{kind} must be within 0..1, got {rate}")
            total += rate
        if total > 1.0 + 1e-9:
            raise ValueError(f"NetRule fault probabilities sum to {total} > 1")
        if self.latency < 0 or self.jitter < 0:
            raise ValueError("NetRule.latency and jitter must be >= 0")
        if self.trickle_bytes_per_s <= 0:
            raise ValueError("NetRule.trickle_bytes_per_s must be > 0")
        if self.methods is not None:
            # Accept any iterable of names (a set literal is the natural spelling).
            object.__setattr__(self, "methods", frozenset(m.upper() for m in self.methods))

    def matches(self, method: str, target: str) -> bool:
        """Whether this rule applies to a request with this method and request target."""
        return _matches(self.methods, self.path_contains, method, target)


def _matches(methods: frozenset[str] | None, path_contains: str | None, method: str, target: str) -> bool:
    if methods is not None and method.upper() not in methods:
        return False
    return path_contains is None or path_contains in target


@dataclass
class ProxyStats:
    """Counters since the start (or the last `FaultProxy.reset_stats`).

    `requests`: complete requests received from clients, by method; `forwarded`: requests
    sent upstream, by method; `faults`: injected faults, by kind (``pass`` is not counted);
    `connections`: client connections accepted; `incomplete_requests`: client connections
    that ended in the middle of a request (never forwarded).
    """

    requests: Counter[str] = field(default_factory=Counter)
    forwarded: Counter[str] = field(default_factory=Counter)
    faults: Counter[str] = field(default_factory=Counter)
    connections: int = 0
    incomplete_requests: int = 0


@dataclass(frozen=True)
class Exchange:
    """One request as the proxy decided it: method, request target, and the fault applied
    (``"pass"`` for none).  `FaultProxy.history` lists them in arrival order."""

    method: str
    target: str
    fault: str


@dataclass
class _Script:
    """Scripted faults for the exchanges matching one filter, consumed in order."""

    methods: frozenset[str] | None
    path_contains: str | None
    faults: deque[FaultKind]


class _ProtocolError(Exception):
    """The peer sent something this minimal HTTP/1.1 parser cannot frame."""


class _PeerClosed(Exception):
    """The peer closed the connection cleanly between two messages."""


@dataclass
class _Message:
    """One HTTP message as read from the wire: the head verbatim, the body verbatim
    (chunked framing included), and the parsed bits the proxy needs."""

    start_line: str
    header_lines: list[bytes]  # raw "Name: value" lines, without CRLF
    headers: list[tuple[str, str]]  # (lower-cased name, stripped value), latin-1
    head: bytes = b""  # start line + headers + blank line, exactly as received
    body: bytes = b""

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key == name:
                return value
        return None

    def tokens(self, name: str) -> set[str]:
        """Lower-cased comma-separated tokens of every occurrence of a header."""
        out: set[str] = set()
        for key, value in self.headers:
            if key == name:
                out.update(t.strip().lower() for t in value.split(",") if t.strip())
        return out


async def _read_head(reader: asyncio.StreamReader) -> _Message:
    """Read a start line and headers.  `_PeerClosed` if the peer closed before any byte."""
    while True:
        try:
            head = await reader.readuntil(_CRLF + _CRLF)
        except asyncio.IncompleteReadError as exc:
            if not exc.partial.strip(_CRLF):
                raise _PeerClosed() from None
            raise _ProtocolError(f"connection closed inside a message head ({len(exc.partial)} bytes)") from None
        except asyncio.LimitOverrunError:
            raise _ProtocolError(f"message head longer than {_HEAD_LIMIT} bytes") from None
        # Tolerate stray CRLFs between messages (RFC 9112 section 2.2).
        stripped = head.lstrip(_CRLF)
        if stripped:
            break
    lines = stripped[:-4].split(_CRLF)
    headers: list[tuple[str, str]] = []
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if not sep or not name or name != name.strip():
            raise _ProtocolError(f"malformed header line {line[:80]!r}")
        headers.append((name.decode("latin-1").lower(), value.decode("latin-1").strip()))
    return _Message(lines[0].decode("latin-1"), lines[1:], headers, stripped)


async def _read_body(
    reader: asyncio.StreamReader, msg: _Message, *, has_body: bool, until_eof: bool, limit: int
) -> bytes:
    """Read a body verbatim, framed by chunked or Content-Length; for an answer with
    neither, until the upstream closes (`until_eof`)."""
    if not has_body:
        return b""
    if "chunked" in msg.tokens("transfer-encoding"):
        return await _read_chunked(reader, limit)
    lengths = {v for k, v in msg.headers if k == "content-length"}
    if lengths:
        if len(lengths) != 1:
            raise _ProtocolError(f"conflicting Content-Length headers {sorted(lengths)}")
        try:
            size = int(lengths.pop())
        except ValueError:
            raise _ProtocolError("bad Content-Length") from None
        if size < 0 or size > limit:
            raise _ProtocolError(f"Content-Length {size} outside 0..{limit}")
        try:
            return await reader.readexactly(size)
        except asyncio.IncompleteReadError as exc:
            raise _ProtocolError(f"connection closed after {len(exc.partial)} of {size} body bytes") from None
    if not until_eof:
        return b""
    parts: list[bytes] = []
    total = 0
    while chunk := await reader.read(65536):
        total += len(chunk)
        if total > limit:
            raise _ProtocolError(f"body longer than {limit} bytes")
        parts.append(chunk)
    return b"".join(parts)


async def _read_chunked(reader: asyncio.StreamReader, limit: int) -> bytes:
    parts: list[bytes] = []
    total = 0
    try:
        while True:
            line = await reader.readuntil(_CRLF)
            parts.append(line)
            try:
                size = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise _ProtocolError(f"bad chunk size line {line[:40]!r}") from None
            if size == 0:
                while True:  # trailers, up to the blank line
                    trailer = await reader.readuntil(_CRLF)
                    parts.append(trailer)
                    if trailer == _CRLF:
                        return b"".join(parts)
            total += size
            if total > limit:
                raise _ProtocolError(f"chunked body longer than {limit} bytes")
            data = await reader.readexactly(size + 2)
            if not data.endswith(_CRLF):
                raise _ProtocolError("chunk not followed by CRLF")
            parts.append(data)
    except asyncio.IncompleteReadError:
        raise _ProtocolError("connection closed inside a chunked body") from None
    except asyncio.LimitOverrunError:
        raise _ProtocolError("chunk line too long") from None


def _abort_with_rst(writer: asyncio.StreamWriter) -> None:
    """Close a connection with a TCP RST: SO_LINGER 0 makes close() discard unsent data
    and reset, which the peer sees as ECONNRESET, not as an orderly end of the answer."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class _Upstream:
    """The upstream side of one client connection, opened lazily."""

    def __init__(self) -> None:
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        # The exchange using this connection, if any: closing the connection must wait for it.
        self.in_flight: asyncio.Task[_Message] | None = None

    def usable(self) -> bool:
        return (
            self.reader is not None
            and self.writer is not None
            and not self.reader.at_eof()
            and not self.writer.transport.is_closing()
        )

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None

    def abort(self) -> None:
        if self.writer is not None:
            self.writer.transport.abort()
        self.reader = self.writer = None


class FaultProxy:
    """A store-and-forward HTTP/1.1 proxy on 127.0.0.1 that injects faults per exchange.

    It runs its own asyncio loop in a daemon thread, so it serves synchronous tests, tests
    on another loop, and (through the CLI) other processes alike.  All public methods are
    thread-safe.  Usable as a context manager (`start` on enter, `stop` on exit).

    When the upstream cannot be reached, closes without answering, sends something this
    parser cannot frame, or takes longer than `upstream_timeout`, the client connection is
    reset: the proxy has no answer to give, and inventing one (a 502) would hide that.
    `stats` and `history` say what happened to each exchange.
    """

    def __init__(
        self,
        upstream: str | tuple[str, int],
        *,
        seed: int = 0,
        rule: NetRule | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        upstream_timeout: float = 60.0,
        connect_timeout: float = 10.0,
        stop_grace: float = 2.0,
        max_message_bytes: int = 64 * 1024 * 1024,
        strip_headers: Iterable[str] = (),
    ) -> None:
        """`upstream`: ``http://host:port`` or ``(host, port)``.  `upstream_timeout` bounds
        one forwarded exchange (send the request, read the whole answer); `stop_grace` is how
        long `stop` lets exchanges in flight upstream finish, to shield the server.
        `strip_headers`: request headers (any case) removed from every forwarded request,
        e.g. ``{"If-None-Match", "If-Match"}`` to play an endpoint that ignores
        conditional requests (the server never sees them, as one that drops them)."""
        if isinstance(upstream, str):
            parts = urlsplit(upstream)
            if parts.scheme != "http" or not parts.hostname:
                raise ValueError(f"upstream must be an http:// URL or (host, port), got {upstream!r}")
            self._upstream: tuple[str, int] = (parts.hostname, parts.port or 80)
        else:
            self._upstream = (upstream[0], int(upstream[1]))
        self._host = host
        self._port = port
        self._upstream_timeout = upstream_timeout
        self._connect_timeout = connect_timeout
        self._stop_grace = stop_grace
        self._max_message = max_message_bytes
        self._strip = frozenset(h.strip().lower().encode("latin-1") for h in strip_headers)

        self._lock = threading.Lock()  # guards rule, scripts, rng, stats, lifecycle
        self._rule = rule or NetRule()
        self._rng = random.Random(seed)
        self._scripts: list[_Script] = []
        self._stats = ProxyStats()
        self._history: deque[Exchange] = deque(maxlen=_HISTORY_LIMIT)

        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.AbstractServer | None = None
        self._bound_port: int | None = None
        self._stopped = False
        # Owned by the loop thread:
        self._handlers: set[asyncio.Task[None]] = set()
        self._exchanges: set[asyncio.Task[_Message]] = set()
        self._client_writers: set[asyncio.StreamWriter] = set()
        self._upstreams: set[_Upstream] = set()

    # ------------------------------------------------------------------ public API

    @property
    def upstream(self) -> tuple[str, int]:
        return self._upstream

    @property
    def endpoint_url(self) -> str:
        """``http://127.0.0.1:<port>`` once started."""
        if self._bound_port is None:
            raise RuntimeError("FaultProxy not started")
        return f"http://{self._host}:{self._bound_port}"

    @property
    def port(self) -> int:
        if self._bound_port is None:
            raise RuntimeError("FaultProxy not started")
        return self._bound_port

    @property
    def rule(self) -> NetRule:
        with self._lock:
            return self._rule

    def set_rule(self, rule: NetRule) -> None:
        """Replace the random-fault rule (scripted faults queued so far stay queued)."""
        with self._lock:
            self._rule = rule

    def script(
        self, *faults: FaultKind, methods: Iterable[str] | None = None, path_contains: str | None = None
    ) -> None:
        """Inject exactly these faults into the next exchanges matching the filters, in order.

        Scripted faults take precedence over the rule (a scripted exchange draws nothing
        and gets no rule latency).  Several calls queue several scripts; an exchange takes
        the next fault of the first script (in call order) that matches it and has faults
        left.
        """
        for kind in faults:
            if kind not in _FAULT_KINDS:
                raise ValueError(f"unknown fault kind {kind!r}; expected one of {sorted(_FAULT_KINDS)}")
        wanted = None if methods is None else frozenset(m.upper() for m in methods)
        with self._lock:
            self._scripts.append(_Script(wanted, path_contains, deque(faults)))

    @property
    def scripted_pending(self) -> int:
        """Scripted faults not consumed yet (a test can assert its script was used up)."""
        with self._lock:
            return sum(len(s.faults) for s in self._scripts)

    def clear_script(self) -> None:
        with self._lock:
            self._scripts.clear()

    @property
    def stats(self) -> ProxyStats:
        """A snapshot (a copy: later traffic does not change it)."""
        with self._lock:
            return copy.deepcopy(self._stats)

    def reset_stats(self) -> None:
        """Zero the counters and forget the history."""
        with self._lock:
            self._stats = ProxyStats()
            self._history.clear()

    @property
    def history(self) -> list[Exchange]:
        """The last exchanges (up to 10 000) in the order their requests were complete, with
        the fault each got: what a test compares to check a script or a seed's sequence."""
        with self._lock:
            return list(self._history)

    def start(self) -> FaultProxy:
        """Start listening in a daemon thread; returns once the port is bound.  Idempotent;
        a stopped proxy cannot be restarted (make a new one)."""
        with self._lock:
            if self._stopped:
                raise RuntimeError("FaultProxy was stopped; create a new one")
            if self._thread is not None:
                return self
            ready = threading.Event()
            errors: list[BaseException] = []
            thread = threading.Thread(
                target=self._run,
                args=(ready, errors),
                daemon=True,
                name=f"FaultProxy->{self._upstream[0]}:{self._upstream[1]}",
            )
            self._thread = thread
            thread.start()
        if not ready.wait(30.0):
            raise RuntimeError("FaultProxy did not start listening within 30 s")
        if errors:
            with self._lock:
                self._thread = None
            thread.join(5.0)
            raise errors[0]
        log.debug("FaultProxy listening on %s, upstream %s:%d", self.endpoint_url, *self._upstream)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Close the listener and every connection, join the thread.  Idempotent.

        Exchanges in flight upstream get `stop_grace` seconds to finish (shielding the
        server); stalled client connections are closed at once.
        """
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
            thread, loop = self._thread, self._loop
        if thread is None or loop is None:
            return
        if threading.current_thread() is thread:
            raise RuntimeError("FaultProxy.stop() called from the proxy's own thread")
        future = asyncio.run_coroutine_threadsafe(self._shutdown(), loop)
        try:
            future.result(timeout)
        except Exception:  # a timeout or a bug in shutdown: still stop the loop
            log.warning("FaultProxy shutdown did not complete cleanly", exc_info=True)
        with contextlib.suppress(RuntimeError):  # loop already closed
            loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout)
        if thread.is_alive():
            log.warning("FaultProxy thread still alive after %.1f s", timeout)

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # ------------------------------------------------------------------ loop thread

    def _run(self, ready: threading.Event, errors: list[BaseException]) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        try:
            try:
                server = loop.run_until_complete(
                    asyncio.start_server(self._handle, self._host, self._port, limit=_HEAD_LIMIT)
                )
            except BaseException as exc:  # noqa: BLE001 - handed to start()
                errors.append(exc)
                ready.set()
                return
            self._server = server
            self._bound_port = int(server.sockets[0].getsockname()[1])
            self._loop = loop
            ready.set()
            loop.run_forever()
        finally:
            # Anything still pending (shutdown timed out): cancel and let it unwind briefly.
            pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
            for task in pending:
                task.cancel()
            if pending:
                loop.run_until_complete(asyncio.wait(pending, timeout=1.0))
            for writer in list(self._client_writers):
                writer.transport.abort()
            for up in list(self._upstreams):
                up.abort()
            with contextlib.suppress(Exception):
                loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._handlers):
            task.cancel()
        if self._exchanges:  # let answers in flight be read whole: shields the server
            await asyncio.wait(list(self._exchanges), timeout=self._stop_grace)
        for ex in list(self._exchanges):
            ex.cancel()
        waiting = [*self._handlers, *self._exchanges]
        if waiting:
            await asyncio.wait(waiting, timeout=1.0)
        for writer in list(self._client_writers):
            writer.transport.abort()
        for up in list(self._upstreams):
            up.close()
        if self._server is not None:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), 1.0)

    def _choose(self, method: str, target: str) -> tuple[FaultKind | None, float, int]:
        """Count the request and pick its fault (scripted first, else a draw from the rule),
        its delay and its trickle rate."""
        with self._lock:
            self._stats.requests[method] += 1
            rule = self._rule
            fault: FaultKind | None = None
            delay = 0.0
            for entry in self._scripts:
                if entry.faults and _matches(entry.methods, entry.path_contains, method, target):
                    fault = entry.faults.popleft()
                    break
            else:
                if rule.matches(method, target):
                    roll = self._rng.random()
                    for kind in _RULE_KINDS:
                        rate = float(getattr(rule, kind))
                        if roll < rate:
                            fault = kind
                            break
                        roll -= rate
                    delay = rule.latency + (self._rng.uniform(0.0, rule.jitter) if rule.jitter else 0.0)
            self._scripts = [s for s in self._scripts if s.faults]
            self._history.append(Exchange(method, target, fault or "pass"))
            if fault == "pass":
                fault = None
            if fault is not None:
                self._stats.faults[fault] += 1
            return fault, delay, rule.trickle_bytes_per_s

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Serve one client connection: exchange after exchange until either side closes."""
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        self._client_writers.add(writer)
        with self._lock:
            self._stats.connections += 1
        upstream = _Upstream()
        self._upstreams.add(upstream)
        try:
            while await self._serve_one(reader, writer, upstream):
                pass
        except asyncio.CancelledError:
            pass  # stop(): fall through to the cleanup; the task ends here anyway
        except ConnectionError as exc:  # a peer went away (reset, broken pipe): ordinary here
            log.debug("FaultProxy: connection lost: %s", exc)
            _abort_with_rst(writer)
        except Exception:  # one bad connection must not take the proxy down
            log.exception("FaultProxy: connection handler failed")
            _abort_with_rst(writer)
        finally:
            if writer.transport.get_write_buffer_size():
                writer.transport.abort()  # a client that does not read: do not linger
            else:
                writer.close()
            self._client_writers.discard(writer)
            self._handlers.discard(task)
            in_flight = upstream.in_flight
            if in_flight is not None and not in_flight.done():
                # Cancelled while an answer was in flight: close upstream only once it has
                # been read whole (or the exchange gave up), never mid-answer.
                def _close_later(_: object, up: _Upstream = upstream) -> None:
                    up.close()
                    self._upstreams.discard(up)

                in_flight.add_done_callback(_close_later)
            else:
                upstream.close()
                self._upstreams.discard(upstream)

    async def _serve_one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, upstream: _Upstream) -> bool:
        """Serve one exchange; returns whether to keep the client connection open."""
        try:
            request = await _read_head(reader)
        except _PeerClosed:
            return False
        except _ProtocolError as exc:
            with self._lock:
                self._stats.incomplete_requests += 1
            log.debug("FaultProxy: bad or incomplete request head: %s", exc)
            return False
        parts = request.start_line.split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            log.warning("FaultProxy: unsupported request line %r", request.start_line[:100])
            _abort_with_rst(writer)
            return False
        method, target, version = parts
        if "100-continue" in request.tokens("expect"):
            # We need the whole body before forwarding, so the client must not wait for the
            # server's go-ahead: give it ourselves, and strip Expect from what we forward.
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        try:
            request.body = await _read_body(reader, request, has_body=True, until_eof=False, limit=self._max_message)
        except _ProtocolError as exc:
            with self._lock:
                self._stats.incomplete_requests += 1
            log.debug("FaultProxy: incomplete %s %s, not forwarded: %s", method, target[:100], exc)
            return False

        fault, delay, trickle_rate = self._choose(method, target)
        if delay > 0:
            await asyncio.sleep(delay)
        if fault == "reset":
            _abort_with_rst(writer)
            return False

        forward_head = _forward_head(request, self._strip)
        # A task of its own, shielded: if this handler is cancelled (stop), the answer is
        # still read whole within the grace period, and only then is upstream closed.
        exchange = asyncio.get_running_loop().create_task(
            asyncio.wait_for(self._exchange(upstream, method, forward_head + request.body), self._upstream_timeout)
        )
        self._exchanges.add(exchange)
        exchange.add_done_callback(self._exchanges.discard)
        upstream.in_flight = exchange
        try:
            answer = await asyncio.shield(exchange)
        except (OSError, _ProtocolError, asyncio.TimeoutError) as exc:
            log.warning("FaultProxy: upstream failed on %s %s: %s: %s", method, target[:100], type(exc).__name__, exc)
            upstream.abort()
            _abort_with_rst(writer)  # we have no answer to give: make that visible
            return False

        upstream_done = "close" in answer.tokens("connection") or upstream.reader is None or upstream.reader.at_eof()
        client_done = "close" in request.tokens("connection") or (
            version == "HTTP/1.0" and "keep-alive" not in request.tokens("connection")
        )
        wire = answer.head + answer.body
        if answer.body:
            head_len = len(answer.head)
        else:  # an answer complete after its head: withhold the blank line instead
            head_len = len(answer.head) - 2
        try:
            if fault is None:
                writer.write(wire)
                await writer.drain()
            elif fault == "lose_answer":
                _abort_with_rst(writer)
                return False
            elif fault == "trickle":
                await _trickle(writer, wire, trickle_rate)
            elif fault == "truncate":
                cut = head_len + len(answer.body) // 2
                writer.write(wire[:cut])
                await writer.drain()
                writer.close()
                return False
            else:  # swallow, stop_after_headers, stop_mid_body: send a part, then stall
                cut = {"swallow": 0, "stop_after_headers": head_len, "stop_mid_body": head_len + len(answer.body) // 2}[
                    fault
                ]
                if cut:
                    writer.write(wire[:cut])
                    await writer.drain()
                await _until_eof(reader)
                return False
        except (ConnectionError, OSError):
            return False  # the client went away; the answer was read whole anyway
        return not (upstream_done or client_done)

    async def _exchange(self, upstream: _Upstream, method: str, data: bytes) -> _Message:
        """Send one request upstream and read its whole answer (interim 1xx answers dropped)."""
        if not upstream.usable():
            upstream.close()
            upstream.reader, upstream.writer = await asyncio.wait_for(
                asyncio.open_connection(*self._upstream, limit=_HEAD_LIMIT), self._connect_timeout
            )
        assert upstream.reader is not None and upstream.writer is not None
        reader, writer = upstream.reader, upstream.writer
        writer.write(data)
        with self._lock:
            self._stats.forwarded[method] += 1
        await writer.drain()
        while True:
            try:
                answer = await _read_head(reader)
            except _PeerClosed:
                raise _ProtocolError("upstream closed the connection without answering") from None
            status_parts = answer.start_line.split(" ", 2)
            try:
                status = int(status_parts[1])
            except (IndexError, ValueError):
                raise _ProtocolError(f"bad status line {answer.start_line[:100]!r}") from None
            if 100 <= status < 200 and status != 101:
                continue  # interim answer: the client never asked for it (Expect stripped)
            break
        has_body = not (method == "HEAD" or 100 <= status < 200 or status in (204, 304))
        answer.body = await _read_body(reader, answer, has_body=has_body, until_eof=True, limit=self._max_message)
        return answer


def _forward_head(request: _Message, strip: frozenset[bytes] = frozenset()) -> bytes:
    """The request head as forwarded: verbatim but for any Expect header (answered here)
    and the headers in `strip`."""
    dropped = strip | {b"expect"}
    kept = [line for line in request.header_lines if line.partition(b":")[0].strip().lower() not in dropped]
    return _CRLF.join([request.start_line.encode("latin-1"), *kept]) + _CRLF + _CRLF


async def _trickle(writer: asyncio.StreamWriter, data: bytes, rate: int) -> None:
    """Send `data` at about `rate` bytes/s, in slices of 1/20 s."""
    step = max(1, rate // 20)
    for start in range(0, len(data), step):
        piece = data[start : start + step]
        writer.write(piece)
        await writer.drain()
        if start + step < len(data):
            await asyncio.sleep(len(piece) / rate)


async def _until_eof(reader: asyncio.StreamReader) -> None:
    """Discard whatever the client sends until it closes: a stalled answer keeps the
    connection open for as long as the client is willing to wait (or until `stop`)."""
    with contextlib.suppress(ConnectionError, OSError):
        while await reader.read(65536):
            pass


# ---------------------------------------------------------------------- command line


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m kvstore.testing.netproxy",
        description="Fault-injecting store-and-forward HTTP proxy in front of an S3 endpoint. "
        "Prints its endpoint URL, then runs until interrupted.",
    )
    parser.add_argument("--upstream", required=True, help="upstream URL, e.g. http://127.0.0.1:4566")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="listening port (default: any free one)")
    parser.add_argument("--seed", type=int, default=0)
    for kind in _RULE_KINDS:
        parser.add_argument(
            f"--{kind.replace('_', '-')}",
            type=float,
            default=0.0,
            metavar="P",
            help=f"probability of {kind} per matching exchange",
        )
    parser.add_argument("--latency", type=float, default=0.0, help="seconds before forwarding")
    parser.add_argument("--jitter", type=float, default=0.0, help="up to this many extra seconds")
    parser.add_argument("--trickle-bytes-per-s", type=int, default=2000)
    parser.add_argument("--methods", default=None, help="comma-separated methods the faults apply to")
    parser.add_argument("--path-contains", default=None, help="faults only for targets containing this")
    parser.add_argument("--log-level", default="WARNING")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point: start a proxy, print its endpoint (one line on stdout), serve until
    SIGINT/SIGTERM."""
    args = _parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    rule = NetRule(
        **{kind: getattr(args, kind) for kind in _RULE_KINDS},
        latency=args.latency,
        jitter=args.jitter,
        trickle_bytes_per_s=args.trickle_bytes_per_s,
        methods=None if args.methods is None else frozenset(m.strip() for m in args.methods.split(",") if m.strip()),
        path_contains=args.path_contains,
    )
    done = threading.Event()

    def _on_signal(signum: int, frame: object) -> None:
        done.set()

    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)
    with FaultProxy(args.upstream, seed=args.seed, rule=rule, host=args.host, port=args.port) as proxy:
        sys.stdout.write(proxy.endpoint_url + "\n")
        sys.stdout.flush()
        while not done.wait(1.0):
            pass
        stats = proxy.stats
        log.info(
            "FaultProxy stopping: requests %s, forwarded %s, faults %s",
            dict(stats.requests),
            dict(stats.forwarded),
            dict(stats.faults),
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
