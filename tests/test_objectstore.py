"""The object-store protocol, the same on every backend (memory, local filesystem, S3)."""

from __future__ import annotations

import asyncio
import multiprocessing
import uuid
from collections.abc import AsyncIterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import workers

from kvstore import AccessDeniedError, StoreUnavailableError
from kvstore._objectstore import (
    LocalObjectStore,
    MemoryObjectStore,
    ObjectNotFound,
    ObjectStore,
    PreconditionFailed,
    RetryingObjectStore,
    S3Options,
    TransientError,
)
from kvstore._objectstore._s3 import S3ObjectStore
from kvstore.testing.faults import FaultInjectingStore


@pytest.fixture(params=["memory", "file", "s3"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> ObjectStore:
    if request.param == "memory":
        return MemoryObjectStore(uuid.uuid4().hex)
    if request.param == "file":
        return LocalObjectStore(tmp_path)
    endpoint_url, bucket = request.getfixturevalue("s3_bucket")
    return S3ObjectStore(bucket, S3Options(endpoint_url=endpoint_url))


@pytest.fixture
async def objects(backend: ObjectStore) -> AsyncIterator[ObjectStore]:
    yield backend
    await backend.close()


async def test_safe_create(objects: ObjectStore) -> None:
    etag = await objects.put_if_absent("a/b", b"first")
    assert etag.startswith('"') and etag.endswith('"')
    with pytest.raises(PreconditionFailed):
        await objects.put_if_absent("a/b", b"second")
    blob = await objects.get("a/b")
    assert blob is not None and blob.data == b"first" and blob.etag == etag


async def test_compare_and_swap(objects: ObjectStore) -> None:
    e1 = await objects.put_if_absent("m", b"v1")
    e2 = await objects.put_if_match("m", b"v2", e1)
    assert e2 != e1
    with pytest.raises(PreconditionFailed):
        await objects.put_if_match("m", b"v3", e1)  # stale ETag
    with pytest.raises(ObjectNotFound):
        await objects.put_if_match("missing", b"x", e1)
    blob = await objects.get("m")
    assert blob is not None and blob.data == b"v2"


async def test_conditional_and_ranged_get(objects: ObjectStore) -> None:
    etag = await objects.put_if_absent("r", b"0123456789")
    assert await objects.get("r", if_none_match=etag) is None  # 304
    blob = await objects.get("r", if_none_match='"0000"')
    assert blob is not None and blob.data == b"0123456789"
    part = await objects.get("r", byte_range=(2, 6))
    assert part is not None and part.data == b"2345"
    with pytest.raises(ObjectNotFound):
        await objects.get("nope")


async def test_head_list_delete(objects: ObjectStore) -> None:
    for name in ("p/2", "p/1", "q/1"):
        await objects.put_if_absent(name, name.encode())
    info = await objects.head("p/1")
    assert info.size == 3 and info.name == "p/1"
    assert [i.name async for i in objects.list("p/")] == ["p/1", "p/2"]
    await objects.delete("p/1")
    await objects.delete("p/1")  # deleting twice is fine
    assert [i.name async for i in objects.list("p/")] == ["p/2"]
    with pytest.raises(ObjectNotFound):
        await objects.head("p/1")


async def test_delete_many_deletes_present_and_absent_names(objects: ObjectStore) -> None:
    for name in ("d/1", "d/2", "d/3", "e/1"):
        await objects.put_if_absent(name, name.encode())
    await objects.delete_many(["d/1", "d/3", "d/never-was"])
    assert [i.name async for i in objects.list("")] == ["d/2", "e/1"]
    await objects.delete_many(["d/1", "d/3"])  # deleting twice is fine
    await objects.delete_many([])
    assert [i.name async for i in objects.list("")] == ["d/2", "e/1"]


async def test_a_lost_delete_many_answer_is_retried() -> None:
    faulty = FaultInjectingStore(MemoryObjectStore(uuid.uuid4().hex))
    objects = RetryingObjectStore(faulty, seed=1)
    for i in range(5):
        await objects.put_if_absent(f"x/{i}", b"x")
    faulty.script("delete_many", "lost_response", "error")
    await objects.delete_many([f"x/{i}" for i in range(4)])
    assert faulty.injected == {"delete_many:lost_response": 1, "delete_many:error": 1}
    assert objects.requests["DELETE"] == 3  # the whole batch, again, each time
    assert [i.name async for i in objects.list("")] == ["x/4"]


class _AnswersDeleteObjects:
    """A stand-in for the aiobotocore client that answers DeleteObjects with `errors`."""

    def __init__(self, errors: list[dict[str, str]]) -> None:
        self.errors = errors
        self.sent: list[dict[str, Any]] = []

    async def delete_objects(self, **request: Any) -> dict[str, Any]:
        self.sent.append(request)
        return {"Errors": self.errors} if self.errors else {}


@pytest.mark.parametrize(
    ("errors", "raised"),
    [
        ([], None),
        ([{"Key": "a", "Code": "NoSuchKey"}], None),  # absent: deleted, as DeleteObject says
        ([{"Key": "a", "Code": "InternalError"}], TransientError),
        ([{"Key": "a", "Code": "InternalError"}, {"Key": "b", "Code": "AccessDenied"}], AccessDeniedError),
        ([{"Key": "b", "Code": "WhoKnows"}], StoreUnavailableError),
    ],
)
async def test_s3_delete_many_raises_per_key_errors(errors: list[dict[str, str]], raised: type | None) -> None:
    store = S3ObjectStore("bucket", S3Options())
    client = _AnswersDeleteObjects(errors)
    store._client = client
    if raised is None:
        await store.delete_many(["a", "b"])
    else:
        with pytest.raises(raised):
            await store.delete_many(["a", "b"])
    assert client.sent == [{"Bucket": "bucket", "Delete": {"Objects": [{"Key": "a"}, {"Key": "b"}], "Quiet": True}}]


async def test_concurrent_creates_have_one_winner(objects: ObjectStore) -> None:
    results = await asyncio.gather(
        *(objects.put_if_absent("race", str(i).encode()) for i in range(16)), return_exceptions=True
    )
    assert sum(isinstance(r, str) for r in results) == 1
    assert sum(isinstance(r, PreconditionFailed) for r in results) == 15


async def test_local_cas_is_atomic_across_processes(tmp_path: Path) -> None:
    """Processes race read-modify-CAS increments on one file: none is lost."""
    store = LocalObjectStore(tmp_path)
    await store.put_if_absent("counter", b"0")
    loop = asyncio.get_running_loop()
    with ProcessPoolExecutor(4, mp_context=multiprocessing.get_context("spawn")) as pool:
        wins = await asyncio.gather(
            *(loop.run_in_executor(pool, workers.cas_increments, str(tmp_path), 40) for _ in range(4))
        )
    blob = await store.get("counter")
    assert blob is not None
    assert int(blob.data) == sum(wins) == 160


async def _record_http_requests(
    seen: list[tuple[str, dict[str, str]]],
) -> asyncio.Server:
    """A minimal HTTP/1.1 server on 127.0.0.1 that records each request line and its headers
    and answers 200 with an ETag. It grants `Expect: 100-continue` (so a client that asks does
    not stall) but records the ask."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
                fields = (line.split(":", 1) for line in head[1:] if line)
                headers = {k.strip().lower(): v.strip() for k, v in fields}
                seen.append((head[0], headers))
                if headers.get("expect", "").lower() == "100-continue":
                    writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                await reader.readexactly(int(headers.get("content-length", "0")))
                writer.write(b'HTTP/1.1 200 OK\r\nETag: "e1"\r\nContent-Length: 0\r\n\r\n')
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    return await asyncio.start_server(serve, "127.0.0.1", 0)


async def test_s3_writes_do_not_wait_for_100_continue() -> None:
    """botocore sends `Expect: 100-continue` with S3 PUTs by default, which costs a round
    trip per write; kvstore's PutObject and UploadPart requests must go out without it."""
    seen: list[tuple[str, dict[str, str]]] = []
    server = await _record_http_requests(seen)
    port = server.sockets[0].getsockname()[1]
    store = S3ObjectStore(
        "bucket",
        S3Options(
            endpoint_url=f"http://127.0.0.1:{port}",
            region_name="us-east-1",
            aws_access_key_id="AKIDEXAMPLE",
            aws_secret_access_key="secret-example-key",
        ),
    )
    try:
        assert await store.put_if_absent("obj", b"x" * 1000) == '"e1"'
        assert await store.upload_part("seg", "upload-1", 1, b"y" * 1000) == '"e1"'
    finally:
        await store.close()
        server.close()
        await server.wait_closed()
    assert [line.split(" ")[0] for line, _ in seen] == ["PUT", "PUT"]
    assert seen[0][1]["if-none-match"] == "*" and "partNumber=1" in seen[1][0]
    for line, headers in seen:
        assert "expect" not in headers, line
        assert headers["user-agent"].startswith("kvstore/")


def test_s3_timestamp_parser_agrees_with_botocore() -> None:
    from botocore.utils import parse_timestamp

    from kvstore._objectstore._s3 import _parse_timestamp

    for text in (
        "Tue, 24 Nov 2026 01:49:15 GMT",  # Last-Modified header
        "2026-11-24T01:49:15.000Z",  # ListObjectsV2, CopyObject
        "2026-11-24T01:49:15Z",
        "2026-11-24T01:49:15.123456+02:00",
        "Tue, 24 Nov 2026 01:49:15 -0000",  # no zone for the stdlib: botocore's parser
        "1795225755",  # epoch seconds
    ):
        ours, theirs = _parse_timestamp(text), parse_timestamp(text)
        assert ours == theirs and ours.tzinfo is not None, text
    with pytest.raises(ValueError):
        _parse_timestamp("not a date")


async def test_s3_sessions_are_shared_per_loop_and_profile() -> None:
    """Stores on one event loop share an aiobotocore session (its S3 model is parsed once);
    another loop gets its own session but the same loaded models."""
    from kvstore._objectstore._s3 import _session_for

    here = _session_for(None)
    assert _session_for(None) is here
    assert _session_for("other-profile") is not here

    async def elsewhere() -> Any:
        return _session_for(None)

    there = await asyncio.to_thread(asyncio.run, elsewhere())
    assert there is not here
    assert there.get_component("data_loader") is here.get_component("data_loader")


@pytest.mark.parametrize(
    ("code", "status"), [("TooManyRequests", 429), ("RequestLimitExceeded", 503), ("SlowDown", 503)]
)
def test_throttling_answers_are_retried(code: str, status: int) -> None:
    """GCS and R2 throttle with 429: like S3's SlowDown, a retry cures it."""
    from botocore.exceptions import ClientError

    store = S3ObjectStore("bucket", S3Options())
    answer = {"Error": {"Code": code}, "ResponseMetadata": {"HTTPStatusCode": status}}
    assert isinstance(store._translate(ClientError(answer, "GetObject"), "k"), TransientError)  # type: ignore[arg-type]
