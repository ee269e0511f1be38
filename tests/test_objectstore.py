"""The object-store protocol, the same on every backend (memory, local filesystem, S3)."""

from __future__ import annotations

import asyncio
import multiprocessing
import uuid
from collections.abc import AsyncIterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pytest

import workers
from kvstore._objectstore._s3 import S3ObjectStore
from kvstore._objectstore import (
    LocalObjectStore,
    MemoryObjectStore,
    ObjectNotFound,
    ObjectStore,
    PreconditionFailed,
    S3Options,
)


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
