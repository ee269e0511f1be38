"""The wire-level fault proxy (`kvstore.testing.netproxy`) against real LocalStack.

Each test talks to LocalStack through a `FaultProxy` with an aiobotocore client whose own
retries are off (``total_max_attempts=1``) and whose read timeout is short, and checks both
what the client saw and what really happened upstream (through a clean client that bypasses
the proxy).  HTTP framing that LocalStack never produces (chunked answers, interim 1xx,
answers delimited by the close) is checked against a canned upstream at the end.

Note that aiohttp itself retries an idempotent request (GET, HEAD, PUT, DELETE) *once* when
the connection dies before an answer arrives (ServerDisconnectedError / ClientOSError), even
with botocore's retries off: a single ``lose_answer`` on a PUT is invisible to the client
(or, on a conditional create, turns into a 412 for its own write).  Tests that want the
client to see a connection error therefore script the fault twice.
"""

from __future__ import annotations

import asyncio
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import aiohttp
import pytest
from botocore.exceptions import ClientError, HTTPClientError, ReadTimeoutError
from botocore.exceptions import ConnectionError as BotoConnectionError
from servers import s3_client
from targets import s3_target

import kvstore
from kvstore.testing.netproxy import Exchange, FaultProxy, NetRule

# What a dropped connection surfaces as through aiobotocore: EndpointConnectionError (an RST,
# even on an established connection), ConnectionClosedError (an early FIN), or raw aiohttp
# errors while a body is being read.
CONNECTION_ERRORS = (BotoConnectionError, HTTPClientError, aiohttp.ClientError)
READ_TIMEOUT = 0.5
STOP_BOUND = 3.0  # stop() must return well within this, whatever the connections do


@pytest.fixture
def proxy(localstack: str) -> Iterator[FaultProxy]:
    p = FaultProxy(upstream=localstack, seed=7)
    p.start()
    try:
        yield p
    finally:
        started = time.monotonic()
        p.stop()
        assert time.monotonic() - started < STOP_BOUND


def _client(endpoint: str, **config: Any) -> Any:
    """A client like kvstore's: no botocore retries, a short read timeout."""
    config.setdefault("retries", {"total_max_attempts": 1})
    config.setdefault("read_timeout", READ_TIMEOUT)
    config.setdefault("connect_timeout", 2)
    return s3_client(endpoint, **config)


@pytest.fixture
async def bucket(s3_bucket: tuple[str, str]) -> str:
    return s3_bucket[1]


@pytest.fixture
async def direct(s3_bucket: tuple[str, str]) -> AsyncIterator[Any]:
    """A clean client straight to LocalStack: the truth about what was applied."""
    async with _client(s3_bucket[0]) as s3:
        yield s3


@pytest.fixture
async def via(proxy: FaultProxy) -> AsyncIterator[Any]:
    """A client through the proxy."""
    async with _client(proxy.endpoint_url) as s3:
        yield s3


async def _exists(s3: Any, bucket: str, key: str) -> bool:
    try:
        await s3.head_object(Bucket=bucket, Key=key)
    except ClientError as exc:
        if exc.response["Error"]["Code"] in ("404", "NoSuchKey"):
            return False
        raise
    return True


async def _get(s3: Any, bucket: str, key: str, **kwargs: Any) -> bytes:
    """GET a whole body, releasing the connection even when reading it fails."""
    got = await s3.get_object(Bucket=bucket, Key=key, **kwargs)
    async with got["Body"] as body:
        return bytes(await body.read())


def _faults(proxy: FaultProxy) -> list[str]:
    return [e.fault for e in proxy.history]


async def _wait_for(condition: Callable[[], bool], timeout: float = 30.0) -> None:
    """Poll a condition the proxy thread makes true (not a sleep: it fails if it never does)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


# --------------------------------------------------------------------------- clean path


async def test_clean_pass_through_keeps_one_connection(proxy: FaultProxy, via: Any, bucket: str) -> None:
    big = bytes(range(256)) * 4096  # 1 MiB
    put = await via.put_object(Bucket=bucket, Key="a", Body=b"hello")
    await via.put_object(Bucket=bucket, Key="big", Body=big)
    assert await _get(via, bucket, "a") == b"hello"
    assert await _get(via, bucket, "big") == big
    head = await via.head_object(Bucket=bucket, Key="big")
    assert head["ContentLength"] == len(big)
    with pytest.raises(ClientError) as not_modified:  # 304: an answer without a body
        await via.get_object(Bucket=bucket, Key="a", IfNoneMatch=put["ETag"])
    assert not_modified.value.response["Error"]["Code"] == "304"
    listed = await via.list_objects_v2(Bucket=bucket)
    assert sorted(o["Key"] for o in listed["Contents"]) == ["a", "big"]
    await via.delete_object(Bucket=bucket, Key="a")  # 204: no body either
    assert not await _exists(via, bucket, "a")  # HEAD 404

    stats = proxy.stats
    assert stats.requests == stats.forwarded == {"PUT": 2, "GET": 4, "HEAD": 2, "DELETE": 1}
    assert not stats.faults
    assert stats.connections == 1  # every exchange reused the one keep-alive connection
    assert set(_faults(proxy)) == {"pass"}


async def test_expect_100_continue_does_not_deadlock(proxy: FaultProxy, direct: Any, bucket: str) -> None:
    # botocore's default client asks for `Expect: 100-continue` on PUTs with a body, and
    # aiohttp then waits for the interim answer: the proxy gives it.
    async with s3_client(proxy.endpoint_url, read_timeout=2, retries={"total_max_attempts": 1}) as s3:
        await s3.put_object(Bucket=bucket, Key="e", Body=b"x" * 100_000)
    assert await _get(direct, bucket, "e") == b"x" * 100_000


# --------------------------------------------------------------------------- applied or not


async def test_lose_answer_applies_the_write_but_the_client_sees_a_connection_error(
    proxy: FaultProxy, via: Any, direct: Any, bucket: str
) -> None:
    proxy.script("lose_answer", "lose_answer", methods={"PUT"})  # twice: aiohttp retries once
    with pytest.raises(CONNECTION_ERRORS):
        await via.put_object(Bucket=bucket, Key="lost", Body=b"applied")
    assert proxy.stats.forwarded["PUT"] == 2 and proxy.stats.faults["lose_answer"] == 2
    assert await _get(direct, bucket, "lost") == b"applied"


async def test_one_lost_answer_on_a_conditional_create_comes_back_as_412(
    proxy: FaultProxy, via: Any, direct: Any, bucket: str
) -> None:
    # The bug this proxy was built to reproduce: aiohttp silently re-sends the PUT, and the
    # retry fails its own precondition.
    proxy.script("lose_answer", methods={"PUT"})
    with pytest.raises(ClientError) as failed:
        await via.put_object(Bucket=bucket, Key="mine", Body=b"mine", IfNoneMatch="*")
    assert failed.value.response["Error"]["Code"] == "PreconditionFailed"
    assert _faults(proxy) == ["lose_answer", "pass"]
    assert await _exists(direct, bucket, "mine")


async def test_reset_is_not_applied(proxy: FaultProxy, via: Any, direct: Any, bucket: str) -> None:
    proxy.script("reset", "reset")
    with pytest.raises(CONNECTION_ERRORS):
        await via.put_object(Bucket=bucket, Key="never", Body=b"x")
    assert proxy.stats.forwarded["PUT"] == 0 and proxy.stats.faults["reset"] == 2
    assert not await _exists(direct, bucket, "never")
    await via.put_object(Bucket=bucket, Key="later", Body=b"y")  # the proxy still serves
    assert await _exists(direct, bucket, "later")


# --------------------------------------------------------------------------- stalls


@pytest.mark.parametrize("fault", ["swallow", "stop_after_headers", "stop_mid_body"])
@pytest.mark.parametrize("operation", ["put", "get"])
async def test_stalled_answers_time_out_and_stop_does_not_hang(
    localstack: str, direct: Any, bucket: str, fault: str, operation: str
) -> None:
    await direct.put_object(Bucket=bucket, Key="k", Body=b"v" * 5000)
    proxy = FaultProxy(localstack).start()
    try:
        async with _client(proxy.endpoint_url) as s3:
            proxy.script(fault)  # type: ignore[arg-type]
            started = time.monotonic()
            with pytest.raises(ReadTimeoutError):
                if operation == "put":
                    await s3.put_object(Bucket=bucket, Key="p", Body=b"put through a stall")
                else:
                    await _get(s3, bucket, "k")
            assert time.monotonic() - started >= READ_TIMEOUT * 0.9
            assert proxy.stats.faults == {fault: 1}
            assert proxy.stats.forwarded == {operation.upper(): 1}
            if operation == "put":  # the stalled write was applied all the same
                assert await _exists(direct, bucket, "p")
            # The stalled connection is still open on the proxy's side when we stop it.
            started = time.monotonic()
            proxy.stop()
            assert time.monotonic() - started < STOP_BOUND
    finally:
        proxy.stop()


async def test_stop_closes_a_stalled_raw_connection(proxy: FaultProxy, direct: Any, bucket: str) -> None:
    await direct.put_object(Bucket=bucket, Key="k", Body=b"v")
    proxy.script("swallow")
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=STOP_BOUND) as sock:
        sock.sendall(f"GET /{bucket}/k HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        await _wait_for(lambda: proxy.stats.faults["swallow"] == 1)
        started = time.monotonic()
        proxy.stop()
        assert time.monotonic() - started < STOP_BOUND
        try:
            assert sock.recv(100) == b""  # closed without a byte of the answer
        except ConnectionResetError:
            pass


# --------------------------------------------------------------------------- partial answers


async def test_truncate_is_an_error_and_trickle_is_slow_but_whole(
    proxy: FaultProxy, via: Any, direct: Any, bucket: str
) -> None:
    body = bytes(range(256)) * 8  # 2 KiB
    await direct.put_object(Bucket=bucket, Key="t", Body=body)

    proxy.script("truncate")
    with pytest.raises(aiohttp.ClientPayloadError):  # raw aiohttp: botocore does not wrap it
        await _get(via, bucket, "t")  # the headers arrive whole: the body read fails

    proxy.set_rule(NetRule(trickle=1.0, trickle_bytes_per_s=4000, methods=frozenset({"GET"})))
    started = time.monotonic()
    assert await _get(via, bucket, "t") == body
    # ~2.5 KB with the headers at 4000 B/s; the client's 0.5 s read timeout never fires
    # because bytes keep coming.
    assert time.monotonic() - started >= 0.5
    assert proxy.stats.faults == {"truncate": 1, "trickle": 1}


# --------------------------------------------------------------------------- scripts, rules


async def test_script_order_and_filters(proxy: FaultProxy, via: Any, direct: Any, bucket: str) -> None:
    proxy.script("pass", "reset", "reset", methods={"PUT"}, path_contains="manifest")
    proxy.script("truncate", methods={"GET"})
    await via.put_object(Bucket=bucket, Key="data/1", Body=b"d")  # PUT, not a manifest: no fault
    await via.put_object(Bucket=bucket, Key="manifest", Body=b"m1")  # "pass"
    with pytest.raises(aiohttp.ClientPayloadError):
        await _get(via, bucket, "manifest")  # the GET script: truncate
    await via.head_object(Bucket=bucket, Key="manifest")  # HEAD matches neither script
    with pytest.raises(CONNECTION_ERRORS):
        await via.put_object(Bucket=bucket, Key="manifest", Body=b"m2")  # reset + aiohttp's reset
    assert proxy.scripted_pending == 0
    assert [(e.method, e.fault) for e in proxy.history] == [
        ("PUT", "pass"),
        ("PUT", "pass"),
        ("GET", "truncate"),
        ("HEAD", "pass"),
        ("PUT", "reset"),
        ("PUT", "reset"),
    ]
    assert await _get(direct, bucket, "manifest") == b"m1"  # the reset PUTs were never applied


async def test_rule_filters_and_seeded_reproducibility(localstack: str, direct: Any, bucket: str) -> None:
    for i in range(4):
        await direct.put_object(Bucket=bucket, Key=f"r/{i}", Body=b"x" * 100)
    rule = NetRule(truncate=0.4, lose_answer=0.3, methods=frozenset({"GET"}), path_contains="r/")

    async def run(seed: int) -> tuple[list[Exchange], list[str]]:
        with FaultProxy(localstack, seed=seed, rule=rule) as proxy:
            outcomes = []
            async with _client(proxy.endpoint_url) as s3:
                for i in range(16):
                    try:
                        outcomes.append(str(len(await _get(s3, bucket, f"r/{i % 4}"))))
                    except CONNECTION_ERRORS as exc:
                        outcomes.append(type(exc).__name__)
                    await s3.head_object(Bucket=bucket, Key="r/0")  # filtered out: never faulted
            return proxy.history, outcomes

    first, again, other = await run(11), await run(11), await run(12)
    assert first == again
    assert first[0] != other[0]
    assert {e.fault for e in first[0] if e.method == "HEAD"} == {"pass"}
    faults = [e.fault for e in first[0] if e.method == "GET"]
    assert "truncate" in faults and "lose_answer" in faults and "pass" in faults


async def test_latency_delays_only_matching_requests(proxy: FaultProxy, bucket: str) -> None:
    proxy.set_rule(NetRule(latency=0.6, methods=frozenset({"PUT"})))
    # The delay comes before forwarding, i.e. inside the client's read timeout: lengthen it.
    async with _client(proxy.endpoint_url, read_timeout=5) as s3:
        started = time.monotonic()
        await s3.list_objects_v2(Bucket=bucket)
        assert time.monotonic() - started < 0.6
        started = time.monotonic()
        await s3.put_object(Bucket=bucket, Key="slow", Body=b"x")
        assert time.monotonic() - started >= 0.6


def test_netrule_validates() -> None:
    with pytest.raises(ValueError):
        NetRule(lose_answer=0.7, reset=0.5)
    with pytest.raises(ValueError):
        NetRule(swallow=-0.1)
    assert NetRule(methods={"put"}).methods == frozenset({"PUT"})  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        FaultProxy("http://127.0.0.1:1").script("explode")  # type: ignore[arg-type]


async def test_kvstore_commit_whose_cas_answer_is_lost_on_the_wire(
    proxy: FaultProxy, s3_bucket: tuple[str, str]
) -> None:
    endpoint, bucket = s3_bucket
    target = s3_target(proxy.endpoint_url, bucket)
    async with target.open() as db:
        await db.put(b"k", b"before")
        version = db.version
        proxy.reset_stats()
        proxy.script("lose_answer", methods={"PUT"}, path_contains="manifest")
        tx = db.transaction()
        assert await tx.get(b"k") == b"before"
        tx.put(b"k", b"after")
        try:
            committed = await tx.commit()
        finally:
            # The CAS was applied once; the one resend (kvstore's retry layer's, not
            # aiohttp's) got 412, which the commit log resolves as our own commit.
            cas = [e.fault for e in proxy.history if e.method == "PUT" and "manifest" in e.target]
            assert cas == ["lose_answer", "pass"]
            async with kvstore.open(target.url, endpoint_url=endpoint) as truth:
                assert truth.version == version + 1
                assert await truth.get(b"k") == b"after"
        assert committed == version + 1


# --------------------------------------------------------------------------- shielding


async def test_a_client_that_vanishes_does_not_break_upstream(
    proxy: FaultProxy, via: Any, direct: Any, bucket: str
) -> None:
    big = b"z" * (2 * 1024 * 1024)
    await direct.put_object(Bucket=bucket, Key="big", Body=big)
    for _ in range(3):  # GET a large answer, and die at once (RST) before reading a byte
        with socket.create_connection(("127.0.0.1", proxy.port)) as sock:
            sock.sendall(f"GET /{bucket}/big HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    # A PUT that dies half-way through its body is never forwarded.
    with socket.create_connection(("127.0.0.1", proxy.port)) as sock:
        sock.sendall(f"PUT /{bucket}/half HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n0123".encode())
    await _wait_for(lambda: proxy.stats.incomplete_requests == 1 and proxy.stats.forwarded["GET"] == 3)
    assert proxy.stats.forwarded == {"GET": 3}
    assert not await _exists(direct, bucket, "half")
    # Upstream answers were drained whole: the same key still serves, through and around.
    for s3 in (via, direct, via):
        await s3.put_object(Bucket=bucket, Key="big", Body=big)
        assert await _get(s3, bucket, "big") == big


async def test_concurrent_clients_under_random_faults_leave_proxy_and_upstream_healthy(
    proxy: FaultProxy, via: Any, direct: Any, bucket: str
) -> None:
    proxy.set_rule(
        NetRule(
            lose_answer=0.1,
            reset=0.1,
            truncate=0.1,
            swallow=0.03,
            stop_mid_body=0.03,
            trickle=0.1,
            trickle_bytes_per_s=200_000,
            latency=0.002,
            jitter=0.01,
        )
    )
    body = b"b" * 20_000
    outcomes: list[str] = []

    async def worker(n: int) -> None:
        async with _client(proxy.endpoint_url) as s3:
            for i in range(12):
                key = f"w/{n}/{i % 3}"
                try:
                    if i % 2:
                        assert await _get(s3, bucket, key) == body
                    else:
                        await s3.put_object(Bucket=bucket, Key=key, Body=body)
                    outcomes.append("ok")
                except ClientError as exc:  # 412s aside, a 404 for a PUT whose answers were lost
                    outcomes.append(exc.response["Error"]["Code"])
                except (*CONNECTION_ERRORS, ReadTimeoutError) as exc:
                    outcomes.append(type(exc).__name__)

    await asyncio.gather(*(worker(n) for n in range(4)))
    stats, history = proxy.stats, proxy.history
    assert len(outcomes) == 48 and "ok" in outcomes
    assert sum(stats.requests.values()) == len(history) >= 48
    assert sum(stats.faults.values()) == sum(e.fault != "pass" for e in history) > 0
    assert sum(stats.forwarded.values()) == len(history) - stats.faults["reset"]
    # Nothing is stuck, through the proxy or around it.
    proxy.set_rule(NetRule())
    for s3 in (via, direct):
        await s3.put_object(Bucket=bucket, Key="w/0/0", Body=b"after")
        assert await _get(s3, bucket, "w/0/0") == b"after"


# --------------------------------------------------------------------------- lifecycle, CLI


def test_lifecycle_is_idempotent() -> None:
    proxy = FaultProxy(("127.0.0.1", 1))
    with pytest.raises(RuntimeError):
        _ = proxy.endpoint_url
    proxy.stop()  # never started: nothing to do
    with FaultProxy(("127.0.0.1", 1)) as proxy:
        url = proxy.endpoint_url
        proxy.start()
        assert proxy.endpoint_url == url
    proxy.stop()
    with pytest.raises(RuntimeError):
        proxy.start()


async def test_an_unreachable_upstream_resets_the_client() -> None:
    with socket.socket() as placeholder:  # a port nobody listens on
        placeholder.bind(("127.0.0.1", 0))
        port = placeholder.getsockname()[1]
        with FaultProxy(("127.0.0.1", port), connect_timeout=1) as proxy:
            async with _client(proxy.endpoint_url) as s3:
                with pytest.raises(CONNECTION_ERRORS):
                    await s3.list_objects_v2(Bucket="b")
            assert proxy.stats.requests["GET"] >= 1


def test_cli_prints_endpoint_and_stops_on_sigterm(localstack: str) -> None:
    argv = [
        sys.executable,
        "-m",
        "kvstore.testing.netproxy",
        "--upstream",
        localstack,
        "--lose-answer",
        "0.5",
        "--methods",
        "PUT",
    ]
    with subprocess.Popen(argv, stdout=subprocess.PIPE, text=True) as proc:
        try:
            assert proc.stdout is not None
            url = proc.stdout.readline().strip()
            assert url.startswith("http://127.0.0.1:")
            with socket.create_connection(("127.0.0.1", int(url.rsplit(":", 1)[1])), timeout=5) as sock:
                sock.sendall(b"GET /_localstack/health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                assert sock.recv(12) == b"HTTP/1.1 200"
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(10) == 0
        finally:
            if proc.poll() is None:
                proc.kill()


# --------------------------------------------------------------------------- HTTP framing
# LocalStack never sends some of what the proxy must frame (chunked answers, interim 1xx,
# an answer delimited by the close of the connection), so a canned upstream on the test's
# own loop answers these; the proxy runs on its own thread, and is stopped from another one
# (stop() waits for exchanges in flight, which need this loop to finish).


class CannedUpstream:
    """An HTTP server that answers each request with the next canned bytes, records the
    requests it got (head, body) and how each connection ended."""

    def __init__(self, answers: list[bytes], delay: float = 0.0, close_after_last: bool = False) -> None:
        self.answers = list(answers)
        self.delay = delay
        self.close_after_last = close_after_last
        self.requests: list[tuple[bytes, bytes]] = []
        self.connections = 0
        self.answered = 0
        self.ends: list[str] = []  # per connection: "eof" (orderly close) or an error's name
        self.server: asyncio.AbstractServer | None = None

    async def __aenter__(self) -> tuple[str, int]:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return "127.0.0.1", self.server.sockets[0].getsockname()[1]

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except asyncio.IncompleteReadError as exc:
                    self.ends.append("eof" if not exc.partial else "partial-request")
                    return
                lower = head.lower()
                if b"transfer-encoding: chunked" in lower:
                    body = await reader.readuntil(b"0\r\n\r\n")  # enough for these tests
                elif b"content-length:" in lower:
                    length = int(lower.split(b"content-length:")[1].split(b"\r\n")[0])
                    body = await reader.readexactly(length)
                else:
                    body = b""
                self.requests.append((head, body))
                if self.delay:
                    await asyncio.sleep(self.delay)
                writer.write(self.answers.pop(0))
                await writer.drain()
                self.answered += 1
                if not self.answers and self.close_after_last:
                    writer.close()
                    self.ends.append("closed-by-upstream")
                    return
        except (ConnectionError, OSError) as exc:
            self.ends.append(type(exc).__name__)
        finally:
            writer.close()


async def _read_to_end(reader: asyncio.StreamReader) -> bytes:
    """Everything until the proxy closes the connection (a reset counts as a close)."""
    try:
        return await asyncio.wait_for(reader.read(), 5)
    except ConnectionResetError:
        return b""


async def _read_exactly(reader: asyncio.StreamReader, expected: bytes) -> None:
    got = await asyncio.wait_for(reader.readexactly(len(expected)), 5)
    assert got == expected


async def test_framing_is_relayed_verbatim_on_one_connection() -> None:
    continue_then_ok = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;x=y\r\nhello\r\n0\r\nX-Trailer: 1\r\n\r\n"
    head_answer = b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n"  # HEAD: no body follows
    not_modified = b'HTTP/1.1 304 Not Modified\r\nETag: "e"\r\nContent-Length: 7\r\n\r\n'
    no_content = b"HTTP/1.1 204 No Content\r\n\r\n"
    until_eof = b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nbody until the close"
    upstream = CannedUpstream(
        [continue_then_ok, chunked, chunked, head_answer, not_modified, no_content, until_eof], close_after_last=True
    )
    async with upstream as address:
        proxy = FaultProxy(address).start()
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
            # Expect: 100-continue is answered by the proxy, which then wants the body.
            writer.write(b"PUT /a HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n")
            await _read_exactly(reader, b"HTTP/1.1 100 Continue\r\n\r\n")
            writer.write(b"12345")
            # The upstream's own interim 100 is dropped: only the final answer follows.
            await _read_exactly(reader, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            writer.write(b"GET /b HTTP/1.1\r\nHost: x\r\n\r\n")
            await _read_exactly(reader, chunked)
            chunked_request = b"POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
            writer.write(chunked_request)
            await _read_exactly(reader, chunked)
            for request, answer in ((b"HEAD /d", head_answer), (b"GET /e", not_modified), (b"DELETE /f", no_content)):
                writer.write(request + b" HTTP/1.1\r\nHost: x\r\n\r\n")
                await _read_exactly(reader, answer)
            writer.write(b"GET /g HTTP/1.1\r\nHost: x\r\n\r\n")
            assert await asyncio.wait_for(reader.read(), 5) == until_eof  # then EOF: closed
            writer.close()
        finally:
            await asyncio.to_thread(proxy.stop)
    assert upstream.connections == 1
    assert [head.split(b" ", 1)[0] for head, _ in upstream.requests] == [
        b"PUT",
        b"GET",
        b"POST",
        b"HEAD",
        b"GET",
        b"DELETE",
        b"GET",
    ]
    put_head, put_body = upstream.requests[0]
    assert b"expect" not in put_head.lower() and put_body == b"12345"
    assert upstream.requests[2] == (
        chunked_request[: -len(b"3\r\nabc\r\n0\r\n\r\n")],
        b"3\r\nabc\r\n0\r\n\r\n",
    )  # forwarded verbatim
    assert proxy.stats.forwarded == {"PUT": 1, "GET": 3, "POST": 1, "HEAD": 1, "DELETE": 1}


@pytest.mark.parametrize("fault", ["stop_after_headers", "stop_mid_body", "truncate"])
async def test_answers_without_body_are_still_cut(fault: str) -> None:
    # A 204 is complete after its head: the proxy withholds the head's final blank line.
    answer = b"HTTP/1.1 204 No Content\r\nX-A: b\r\n\r\n"
    async with CannedUpstream([answer]) as address:
        proxy = FaultProxy(address).start()
        try:
            proxy.script(fault)  # type: ignore[arg-type]
            reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
            writer.write(b"DELETE /x HTTP/1.1\r\nHost: x\r\n\r\n")
            await _read_exactly(reader, answer[:-2])
            if fault == "truncate":
                assert await asyncio.wait_for(reader.read(), 5) == b""  # FIN
            else:
                with pytest.raises(asyncio.TimeoutError):  # stalled: nothing more comes
                    await asyncio.wait_for(reader.read(1), 0.3)
            writer.close()
        finally:
            await asyncio.to_thread(proxy.stop)


async def test_stop_lets_an_answer_in_flight_finish_reading() -> None:
    """Shielding on stop: a request already forwarded has its answer read whole (within the
    grace period) before the proxy closes the upstream connection in order."""
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + b"a" * 100_000
    upstream = CannedUpstream([answer], delay=0.3)
    async with upstream as address:
        proxy = FaultProxy(address, stop_grace=2.0).start()
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        writer.write(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
        await _wait_for(lambda: len(upstream.requests) == 1)
        started = time.monotonic()
        await asyncio.to_thread(proxy.stop)
        assert 0.2 <= time.monotonic() - started < 2.0
        await _wait_for(lambda: upstream.ends == ["eof"])  # answered in full, then an orderly close
        assert upstream.answered == 1
        assert await _read_to_end(reader) == b""  # the client got nothing
        writer.close()
