"""The wire-level fault proxy (`kvstore.testing.netproxy`) against real LocalStack.

Each test talks to LocalStack through a `FaultProxy` with an aiobotocore client whose own
retries are off (``total_max_attempts=1``) and whose read timeout is short, and checks both
what the client saw and what really happened upstream (through a clean client that bypasses
the proxy).

Note that aiohttp itself retries an idempotent request (GET, HEAD, PUT, DELETE) *once* when
the connection dies before an answer arrives (ServerDisconnectedError / ClientOSError), even
with botocore's retries off: a single ``lose_answer`` on a PUT is invisible to the client
(or, on a conditional create, turns into a 412 for its own write).  Tests that want the
client to see a connection error therefore script the fault twice.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import aiohttp
import pytest
from botocore.exceptions import ClientError, HTTPClientError, ReadTimeoutError
from botocore.exceptions import ConnectionError as BotoConnectionError

from kvstore.testing.netproxy import Exchange, FaultProxy, NetRule, main
from servers import s3_client

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


def _faults(proxy: FaultProxy) -> list[str]:
    return [e.fault for e in proxy.history]


async def _wait_for(condition: Callable[[], bool], timeout: float = 5.0) -> None:
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
    got = await via.get_object(Bucket=bucket, Key="a")
    assert await got["Body"].read() == b"hello"
    got = await via.get_object(Bucket=bucket, Key="big")
    assert await got["Body"].read() == big
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
    got = await direct.get_object(Bucket=bucket, Key="e")
    assert await got["Body"].read() == b"x" * 100_000


# --------------------------------------------------------------------------- applied or not


async def test_lose_answer_applies_the_write_but_the_client_sees_a_connection_error(
        proxy: FaultProxy, via: Any, direct: Any, bucket: str) -> None:
    proxy.script("lose_answer", "lose_answer", methods={"PUT"})  # twice: aiohttp retries once
    with pytest.raises(CONNECTION_ERRORS):
        await via.put_object(Bucket=bucket, Key="lost", Body=b"applied")
    assert proxy.stats.forwarded["PUT"] == 2 and proxy.stats.faults["lose_answer"] == 2
    got = await direct.get_object(Bucket=bucket, Key="lost")
    assert await got["Body"].read() == b"applied"


async def test_one_lost_answer_on_a_conditional_create_comes_back_as_412(
        proxy: FaultProxy, via: Any, direct: Any, bucket: str) -> None:
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
        localstack: str, direct: Any, bucket: str, fault: str, operation: str) -> None:
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
                    got = await s3.get_object(Bucket=bucket, Key="k")
                    await got["Body"].read()
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
        proxy: FaultProxy, via: Any, direct: Any, bucket: str) -> None:
    body = bytes(range(256)) * 8  # 2 KiB
    await direct.put_object(Bucket=bucket, Key="t", Body=body)

    proxy.script("truncate")
    got = await via.get_object(Bucket=bucket, Key="t")  # the headers arrive whole
    with pytest.raises(aiohttp.ClientPayloadError):  # raw aiohttp: botocore does not wrap it
        await got["Body"].read()

    proxy.set_rule(NetRule(trickle=1.0, trickle_bytes_per_s=4000, methods=frozenset({"GET"})))
    started = time.monotonic()
    got = await via.get_object(Bucket=bucket, Key="t")
    assert await got["Body"].read() == body
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
    got = await via.get_object(Bucket=bucket, Key="manifest")  # the GET script: truncate
    with pytest.raises(aiohttp.ClientPayloadError):
        await got["Body"].read()
    await via.head_object(Bucket=bucket, Key="manifest")  # HEAD matches neither script
    with pytest.raises(CONNECTION_ERRORS):
        await via.put_object(Bucket=bucket, Key="manifest", Body=b"m2")  # reset + aiohttp's reset
    assert proxy.scripted_pending == 0
    assert [(e.method, e.fault) for e in proxy.history] == [
        ("PUT", "pass"), ("PUT", "pass"), ("GET", "truncate"), ("HEAD", "pass"),
        ("PUT", "reset"), ("PUT", "reset"),
    ]
    got = await direct.get_object(Bucket=bucket, Key="manifest")
    assert await got["Body"].read() == b"m1"  # the reset PUTs were never applied


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
                        got = await s3.get_object(Bucket=bucket, Key=f"r/{i % 4}")
                        outcomes.append(str(len(await got["Body"].read())))
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


async def test_latency_delays_only_matching_requests(proxy: FaultProxy, via: Any, bucket: str) -> None:
    proxy.set_rule(NetRule(latency=0.3, methods=frozenset({"PUT"})))
    started = time.monotonic()
    await via.list_objects_v2(Bucket=bucket)
    assert time.monotonic() - started < 0.3
    started = time.monotonic()
    await via.put_object(Bucket=bucket, Key="slow", Body=b"x")
    assert time.monotonic() - started >= 0.3


def test_netrule_validates() -> None:
    with pytest.raises(ValueError):
        NetRule(lose_answer=0.7, reset=0.5)
    with pytest.raises(ValueError):
        NetRule(swallow=-0.1)
    assert NetRule(methods={"put"}).methods == frozenset({"PUT"})  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        FaultProxy("http://127.0.0.1:1").script("explode")  # type: ignore[arg-type]


# --------------------------------------------------------------------------- shielding


async def test_a_client_that_vanishes_does_not_break_upstream(
        proxy: FaultProxy, via: Any, direct: Any, bucket: str) -> None:
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
        got = await s3.get_object(Bucket=bucket, Key="big")
        assert await got["Body"].read() == big


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
    import os
    import signal
    import subprocess
    import sys

    proc = subprocess.Popen(
        [sys.executable, "-m", "kvstore.testing.netproxy", "--upstream", localstack,
         "--lose-answer", "0.5", "--methods", "PUT"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:")
        with socket.create_connection(("127.0.0.1", int(url.rsplit(":", 1)[1])), timeout=5) as sock:
            sock.sendall(b"GET /_localstack/health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            assert sock.recv(12).startswith(b"HTTP/1.1 200")
        os.kill(proc.pid, signal.SIGTERM)
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert callable(main)
