"""Bad input gets a named kvstore error with a useful message, and loses nothing."""

from __future__ import annotations

import struct
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import xxhash
from targets import Target, engine_of, memory_target

import kvstore

SMALL = kvstore.StoreOptions(max_key_bytes=16, max_value_bytes=32, max_transaction_bytes=200, max_transaction_keys=4)


async def _put_many(db: kvstore.Store, n: int) -> None:
    async with db.transaction() as tx:
        for i in range(n):
            tx.put(f"k{i}", b"v")


async def _use_committed_tx(db: kvstore.Store) -> None:
    async with db.transaction() as tx:
        tx.put(b"a", b"1")
    tx.put(b"b", b"2")


async def _scan_negative_limit(db: kvstore.Store) -> None:
    async for _ in db.scan(limit=-1):
        pass


# (label, operation on an open store with SMALL limits, expected error, words the message must contain)
BAD_CALLS: list[tuple[str, Callable[[kvstore.Store], Awaitable[Any]], type[Exception], str]] = [
    ("int key", lambda db: db.put(1, b"v"), kvstore.InvalidKeyError, "bytes or str"),
    ("None key", lambda db: db.get(None), kvstore.InvalidKeyError, "not NoneType"),
    ("list key", lambda db: db.delete([b"a"]), kvstore.InvalidKeyError, "not list"),
    ("empty key", lambda db: db.put(b"", b"v"), kvstore.InvalidKeyError, "empty"),
    ("long key", lambda db: db.put(b"k" * 17, b"v"), kvstore.InvalidKeyError, "max_key_bytes"),
    ("long str key", lambda db: db.get("é" * 9), kvstore.InvalidKeyError, "18 bytes"),
    ("str value", lambda db: db.put(b"k", "text"), kvstore.InvalidValueError, "values='msgpack'"),
    ("int value", lambda db: db.put(b"k", 5), kvstore.InvalidValueError, "not int"),
    ("None value", lambda db: db.put(b"k", None), kvstore.InvalidValueError, "not NoneType"),
    ("large value", lambda db: db.put(b"k", b"v" * 33), kvstore.InvalidValueError, "max_value_bytes"),
    ("too many keys", lambda db: _put_many(db, 5), kvstore.TransactionTooLargeError, "max_transaction_keys"),
    ("used transaction", _use_committed_tx, kvstore.TransactionStateError, "new one"),
    ("negative limit", _scan_negative_limit, kvstore.ValidationError, "limit"),
    ("bad scan bound", lambda db: _scan_bound(db), kvstore.InvalidKeyError, "bytes or str"),
]


async def _scan_bound(db: kvstore.Store) -> None:
    async for _ in db.scan(start=3.5):
        pass


@pytest.mark.parametrize("label, call, error, words", BAD_CALLS, ids=[c[0] for c in BAD_CALLS])
async def test_bad_call_raises_named_error_and_loses_nothing(
    target: Target, label: str, call: Callable[[kvstore.Store], Awaitable[Any]], error: type[Exception], words: str
) -> None:
    async with target.open(options=SMALL) as db:
        await db.put(b"keep", b"safe")
        version = db.version
        with pytest.raises(error) as info:
            await call(db)
        assert words in str(info.value)
        assert isinstance(info.value, kvstore.KvStoreError)
        assert await db.get(b"keep") == b"safe"
        assert await db.refresh() == version + (1 if label == "used transaction" else 0)


async def test_msgpack_mode_rejects_unencodable_values() -> None:
    options = kvstore.StoreOptions(max_value_bytes=8 * 1024 * 1024)
    async with memory_target().open(values="msgpack", options=options) as db:
        with pytest.raises(kvstore.InvalidValueError, match="msgpack"):
            await db.put("k", object())
        with pytest.raises(kvstore.InvalidValueError, match="max_value_bytes"):
            await db.put("k", "x" * (9 * 1024 * 1024))


@pytest.mark.parametrize(
    "url, words",
    [
        ("ftp://host/path", "unknown store URL scheme"),
        ("s3://Bad_Bucket!/x", "not a valid bucket name"),
        ("s3:///prefix", "not a valid bucket name"),
        ("s3://bucket/a/../b", "'..'"),
        ("memory://", "need a name"),
        ("file://otherhost/path", "local path"),
        ("", "non-empty"),
    ],
)
def test_bad_url(url: str, words: str) -> None:
    with pytest.raises(kvstore.InvalidURLError, match=words.replace("(", r"\(")):
        kvstore.open(url)


def test_bad_values_mode() -> None:
    with pytest.raises(kvstore.ValidationError, match="values must be one of"):
        kvstore.open("memory://x", values="pickle")  # type: ignore[arg-type]


def test_file_url_that_is_a_file(tmp_path: Path) -> None:
    f = tmp_path / "f"
    f.write_text("not a store")
    with pytest.raises(kvstore.InvalidURLError, match="is a file"):
        kvstore.open(f)


async def test_open_missing_store_without_create(tmp_path: Path) -> None:
    with pytest.raises(kvstore.StoreNotFoundError, match="create=True"):
        await kvstore.open(tmp_path / "nothing", create=False)
    assert not (tmp_path / "nothing").exists()  # nothing was written


async def test_read_only_store_refuses_writes(target: Target) -> None:
    async with target.open() as db:
        await db.put(b"a", b"1")
    async with target.open(read_only=True) as db:
        assert await db.get(b"a") == b"1"
        with pytest.raises(kvstore.ReadOnlyError, match="read_only"):
            await db.put(b"a", b"2")
        assert await db.get(b"a") == b"1"


async def test_missing_bucket(localstack: str) -> None:
    with pytest.raises(kvstore.StoreNotFoundError, match="bucket 'no-such-bucket-kv' does not exist"):
        await kvstore.open("s3://no-such-bucket-kv/x", endpoint_url=localstack)


async def test_bad_credentials(moto_auth: str) -> None:
    with pytest.raises(kvstore.AccessDeniedError) as info:
        await kvstore.open(
            "s3://bucket/x",
            endpoint_url=moto_auth,
            aws_access_key_id="AKIAWRONGWRONGWRONG1",
            aws_secret_access_key="s3cr3t-never-shown",
        )
    assert "AWS_ACCESS_KEY_ID" in str(info.value)
    assert "s3cr3t-never-shown" not in str(info.value)


async def test_unreachable_endpoint() -> None:
    options = kvstore.StoreOptions(retry=kvstore.RetryPolicy(max_attempts=2, base_delay=0.001))
    with pytest.raises(kvstore.StoreUnavailableError, match="kept failing"):
        await kvstore.open("s3://bucket/x", endpoint_url="http://127.0.0.1:9", options=options)


def _rewrite_manifest_format(data: bytes, fmt: int) -> bytes:
    body = bytearray(data[:-8])
    struct.pack_into("<H", body, 4, fmt)
    return bytes(body) + struct.pack("<Q", xxhash.xxh3_64_intdigest(bytes(body)))


async def test_store_of_a_newer_format_is_refused(durable_target: Target) -> None:
    async with durable_target.open() as db:
        await db.put(b"a", b"1")
        objects = engine_of(db).objects  # white-box: rewrite the manifest as a future kvstore would
        manifest_name = engine_of(db).layout.manifest
        blob = await objects.get(manifest_name)
        assert blob is not None and blob.etag is not None
        await objects.put_if_match(manifest_name, _rewrite_manifest_format(blob.data, 99), blob.etag)
    with pytest.raises(kvstore.UnsupportedFormatError, match="format 99.*upgrade kvstore"):
        await durable_target.open()
    with pytest.raises(kvstore.UnsupportedFormatError):
        await durable_target.open(read_only=True)


async def test_cancelled_commit_is_all_or_nothing(target: Target) -> None:
    """Cancelling a caller mid-commit cancels its wait, not the commit: the
    manifest CAS either lands whole or not at all, and the store stays usable."""
    import asyncio

    cas_started, release = asyncio.Event(), asyncio.Event()

    class HoldsCAS:
        def __init__(self, inner: Any) -> None:
            self.inner = inner

        def __getattr__(self, name: str) -> Any:
            return getattr(self.inner, name)

        async def put_if_match(self, name: str, data: bytes, etag: str) -> str:
            if name.endswith("manifest"):  # not the open-time probe
                cas_started.set()
                await release.wait()
            return await self.inner.put_if_match(name, data, etag)

    async with target.open(wrap_object_store=HoldsCAS) as db:
        task = asyncio.create_task(db.put(b"a", b"2"))
        await cas_started.wait()  # the segment is written; the CAS is in flight
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        release.set()
        await db.close()  # waits for the in-flight commit to finish
    async with target.open() as db:
        assert await db.get(b"a") == b"2"
        assert db.version == 1
        await db.put(b"a", b"3")
        assert await db.get(b"a") == b"3"
