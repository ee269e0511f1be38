"""Streaming large values both ways (issue 22, item 1): `put` of a binary file-like object
or an async iterable of bytes uploads it as it is read (memory bounded by a few parts),
`read_value` gives a value out in chunks, `get_range` reads a byte range with ranged GETs."""

from __future__ import annotations

import io
import os
import random
import time
import tracemalloc
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace

import pytest
import xxhash
from targets import Target, engine_of, fault_injecting
from zarr.abc.store import ByteRequest, OffsetByteRequest, RangeByteRequest, SuffixByteRequest
from zarr.core.buffer import cpu

import kvstore
from kvstore import _streamed_put, _value_store
from kvstore._objectstore import Blob
from kvstore._segment_store import PartUploads
from kvstore._value_refs import ValueRef
from kvstore.testing.faults import FaultInjectingStore
from kvstore.zarr import ZarrStore

pytestmark = pytest.mark.timeout(300)

MiB = 1024 * 1024
PART = 5 * MiB  # S3's smallest part (but the last): LocalStack refuses smaller ones


async def _value_objects(db: kvstore.Store) -> set[str]:
    engine = engine_of(db)
    return {info.name async for info in engine.objects.list(engine.layout.values_prefix)}


async def _chunks(data: bytes, size: int) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


async def test_file_and_async_iterator_puts_round_trip_as_multipart_uploads(
    durable_target: Target, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_value_store, "VALUE_PART_BYTES", PART)
    parts: list[int] = []
    real_send = PartUploads.send

    async def counting_send(self: PartUploads, data: bytes) -> None:
        parts.append(len(data))
        await real_send(self, data)

    monkeypatch.setattr(PartUploads, "send", counting_send)
    big = os.urandom(2 * PART + 12345)  # three parts, the last one short
    small = os.urandom(1000)  # under a part: one PUT, still out of line
    async with durable_target.open(values="bytes") as db:
        v1 = await db.put("file", io.BytesIO(big))
        assert parts == [PART, PART, 12345]
        v2 = await db.put("iter", _chunks(big, 777_777))  # chunks that straddle the parts
        assert parts == [PART, PART, 12345] * 2 and v2 > v1
        await db.put("small", io.BytesIO(small))
        await db.put("empty", _chunks(b"", 1))
        assert len(await _value_objects(db)) == 4
        assert await db.get("file") == big and await db.get("iter") == big
        assert await db.get("small") == small and await db.get("empty") == b""
        assert b"".join([c async for c in db.read_value("iter")]) == big
        assert (await db.verify()).ok


async def test_a_streamed_put_holds_a_few_parts_not_the_value(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Scaled down from 64 MiB in 8 MiB parts: 32 MiB in 256 KiB parts, on the local filesystem.
    part, size, chunk = 256 * 1024, 32 * MiB, 64 * 1024
    monkeypatch.setattr(_value_store, "VALUE_PART_BYTES", part)
    seed = 22

    async def generated() -> AsyncIterator[bytes]:
        rng = random.Random(seed)
        for _ in range(size // chunk):
            yield rng.randbytes(chunk)

    expected = xxhash.xxh3_64()
    rng = random.Random(seed)
    for _ in range(size // chunk):
        expected.update(rng.randbytes(chunk))
    async with kvstore.open(f"file://{tmp_path / 's'}", values="bytes") as db:
        await db.put("warm", b"x")
        tracemalloc.start()
        try:
            await db.put("k", generated())
            _, put_peak = tracemalloc.get_traced_memory()
            tracemalloc.reset_peak()
            got = xxhash.xxh3_64()
            count = 0
            async for piece in db.read_value("k"):
                assert len(piece) <= part
                got.update(piece)
                count += 1
            _, read_peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert got.intdigest() == expected.intdigest() and count == size // part
    # a few parts (4 in flight, one being filled, one kept back) and the backend's copies
    assert put_peak < 12 * part < size // 10, put_peak
    assert read_peak < 12 * part, read_peak


async def test_a_stream_over_the_limit_is_refused_and_commits_nothing(
    durable_target: Target, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_value_store, "VALUE_PART_BYTES", PART)
    limit = 2 * PART + 1
    async with durable_target.open(values="bytes", options=kvstore.StoreOptions(max_value_bytes=limit)) as db:
        await db.put("k", b"old")
        version = db.version
        with pytest.raises(kvstore.InvalidValueError, match=r"over the .*-byte limit \(StoreOptions.max_value_bytes\)"):
            await db.put("k", _chunks(os.urandom(limit + 1), MiB))
        assert await db.get("k") == b"old" and (await db.snapshot()).version == version
        assert await _value_objects(db) == set()  # the upload aborted: no value object
        await db.put("k", _chunks(b"a" * limit, MiB))  # at the limit: fine
        assert await db.get("k") == b"a" * limit


async def test_a_stream_is_refused_where_values_are_not_bytes(tmp_path: Path) -> None:
    async with kvstore.open(f"file://{tmp_path / 's'}", values="msgpack") as db:
        with pytest.raises(kvstore.InvalidValueError, match="only on a store with values='bytes'"):
            await db.put("k", io.BytesIO(b"abc"))
        assert await db.get("k") is None
    async with kvstore.open(f"file://{tmp_path / 'b'}", values="bytes") as db:
        with pytest.raises(kvstore.ValidationError, match="ttl .* cannot be streamed"):
            await db.put("k", io.BytesIO(b"abc"), ttl=10)
        with pytest.raises(kvstore.InvalidValueError, match="binary mode"):
            await db.put("k", io.StringIO("abc"))
        assert await _value_objects(db) == set()


async def test_read_value_streams_in_order_and_finds_a_damaged_object(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_value_store, "VALUE_PART_BYTES", 64 * 1024)
    url = f"file://{tmp_path / 'store'}"
    value = os.urandom(10 * 64 * 1024 + 5)
    async with kvstore.open(url, values="bytes") as db:
        await db.put("k", value)
        await db.put("inline", b"0123456789")
        chunks = [c async for c in db.read_value("k")]
        assert [len(c) for c in chunks] == [64 * 1024] * 10 + [5] and b"".join(chunks) == value
        assert b"".join([c async for c in db.read_value("k", start=100_000, end=200_000)]) == value[100_000:200_000]
        assert [c async for c in db.read_value("inline", start=3)] == [b"3456789"]
        assert [c async for c in db.read_value("missing")] == []
        (name,) = await _value_objects(db)
    path = tmp_path / "store" / name
    data = bytearray(path.read_bytes())
    data[-3] ^= 1  # in the last chunk: every chunk before it is given out first
    os.chmod(path, 0o644)
    path.write_bytes(bytes(data))
    async with kvstore.open(url) as db:
        got: list[bytes] = []
        with pytest.raises(
            kvstore.CorruptionError, match=r"is damaged: .*Discard what was read; run `Store.verify\(\)`"
        ):
            async for c in db.read_value("k"):
                got.append(c)
        assert b"".join(got) == value[: 10 * 64 * 1024]
        path.write_bytes(value[:-1])  # one byte short
        with pytest.raises(kvstore.CorruptionError, match="is damaged"):
            [c async for c in db.read_value("k")]
        with pytest.raises(kvstore.CorruptionError, match="is damaged"):
            await db.get_range("k", 0, len(value))
        path.unlink()
        with pytest.raises(kvstore.CorruptionError, match="which is missing"):
            [c async for c in db.read_value("k")]


async def test_get_range_returns_the_exact_bytes(durable_target: Target, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_value_store, "VALUE_PART_BYTES", PART)
    value = os.urandom(2 * PART + 999)
    inline = b"0123456789"
    async with durable_target.open(values="bytes") as db:
        await db.put("k", io.BytesIO(value))
        await db.put("inline", inline)
        n = len(value)
        spans = [(0, 1), (0, n), (n - 1, n), (n - 1, None), (PART - 3, PART + 3), (PART, 2 * PART), (5, n + 100)]
        spans += [(n, None), (n + 5, n + 10), (7, 7), (10, 3)]
        for start, end in spans:
            assert await db.get_range("k", start, end) == value[start:end], (start, end)
            assert await db.get_range("inline", start, end) == inline[start:end], (start, end)
        assert await db.get_range("missing", 0, 10) is None
        snap = await db.snapshot()
        await db.delete("k")
        assert await snap.get_range("k", PART - 1, PART + 1) == value[PART - 1 : PART + 1]
        assert b"".join([c async for c in snap.read_value("k", start=n - 10)]) == value[-10:]
        assert await db.get_range("k", 0, 1) is None
        with pytest.raises(kvstore.ValidationError, match="start >= 0"):
            await db.get_range("inline", -1, 3)


def test_the_blocking_faces_stream_too(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_value_store, "VALUE_PART_BYTES", 64 * 1024)
    value = os.urandom(3 * 64 * 1024 + 1)
    source = tmp_path / "value.bin"
    source.write_bytes(value)
    with kvstore.open_sync(f"file://{tmp_path / 's'}", values="bytes") as db:
        with source.open("rb") as f:
            db.put("k", f)
        chunks = list(db.read_value("k"))
        assert [len(c) for c in chunks] == [64 * 1024] * 3 + [1] and b"".join(chunks) == value
        assert db.get_range("k", 64 * 1024 - 1, 64 * 1024 + 1) == value[64 * 1024 - 1 : 64 * 1024 + 1]
        snap = db.snapshot()
        assert b"".join(snap.read_value("k", end=10)) == value[:10]
        assert snap.get_range("k", 1, 2) == value[1:2]


async def test_lost_answers_on_a_streamed_upload_are_resolved_as_our_own(
    durable_target: Target, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_value_store, "VALUE_PART_BYTES", PART)
    made, wrap = fault_injecting()
    small, big = os.urandom(1000), os.urandom(PART + 1)
    async with durable_target.open(values="bytes", wrap_object_store=wrap) as db:
        await db.put("warm", b"1")
        made[0].script("put_if_absent", "resent")  # the one-PUT value object: applied, resent, 412
        await db.put("small", io.BytesIO(small))
        made[0].script("complete_multipart_if_absent", "resent")  # the multipart completion
        await db.put("big", _chunks(big, MiB))
        assert made[0].injected["put_if_absent:resent"] == 1
        assert made[0].injected["complete_multipart_if_absent:resent"] == 1
        assert await db.get("small") == small and await db.get("big") == big
        assert len(await _value_objects(db)) == 2 and (await db.verify()).ok


async def test_a_split_between_upload_and_commit_commits_to_the_new_partition(
    durable_target: Target, monkeypatch: pytest.MonkeyPatch
) -> None:
    value = os.urandom(300_000)
    real_write_stream = _value_store.ValueStore.write_stream
    async with durable_target.open(values="bytes") as db:
        await db.put("a", b"1")

        async def split_after_upload(
            self: _value_store.ValueStore, source: _value_store.ValueSource, max_bytes: int, key: bytes
        ) -> tuple[ValueRef, float]:
            written = await real_write_stream(self, source, max_bytes, key)
            await db.split("m")  # the key's partition is sealed before the commit reaches it
            return written

        monkeypatch.setattr(_value_store.ValueStore, "write_stream", split_after_upload)
        await db.put("z", io.BytesIO(value))
        assert [p.start for p in await db.partitions()] == [b"", b"m"]
        assert await db.get("z") == value and await db.get_range("z", 5, 10) == value[5:10]
        snap = await db.snapshot()  # one view of both partitions
        assert await snap.get_range("z", 5, 10) == value[5:10] and await snap.get_range("a", 0, 1) == b"1"
        assert b"".join([c async for c in snap.read_value("z")]) == value
        assert (await db.verify()).ok


class _RangeRecording(FaultInjectingStore):
    """Records the byte range of every GET of a value object."""

    def __init__(self, inner: object) -> None:
        super().__init__(inner)  # type: ignore[arg-type]
        self.value_gets: list[tuple[int, int] | None] = []

    async def get(
        self, name: str, *, byte_range: tuple[int, int] | None = None, if_none_match: str | None = None
    ) -> Blob | None:
        if name.endswith(".val"):
            self.value_gets.append(byte_range)
        return await super().get(name, byte_range=byte_range, if_none_match=if_none_match)


async def test_zarr_partial_reads_of_a_large_chunk_fetch_only_their_bytes(durable_target: Target) -> None:
    made: list[_RangeRecording] = []

    def wrap(inner: object) -> _RangeRecording:
        made.append(_RangeRecording(inner))
        return made[-1]

    chunk = os.urandom(1 * MiB)
    async with durable_target.open(values="bytes", wrap_object_store=wrap) as db:
        store = ZarrStore(db=db)
        await store.set("a/c/0", cpu.Buffer.from_bytes(chunk))
        requests: list[tuple[str, ByteRequest | None]] = [
            ("a/c/0", RangeByteRequest(1000, 3000)),
            ("a/c/0", OffsetByteRequest(len(chunk) - 10)),
            ("a/c/0", SuffixByteRequest(7)),
            ("a/c/none", RangeByteRequest(0, 1)),
        ]
        made[0].value_gets.clear()
        got = await store.get_partial_values(cpu.buffer_prototype, requests)
        assert [None if b is None else b.to_bytes() for b in got] == [
            chunk[1000:3000],
            chunk[-10:],
            chunk[-7:],
            None,
        ]
        # the two placed ranges: one ranged GET of their bytes each; a suffix reads the whole value
        assert sorted(made[0].value_gets, key=lambda r: r or (0, 0)) == [
            (0, len(chunk) + 1),
            (1000, 3000),
            (len(chunk) - 10, len(chunk)),
        ]


async def test_an_upload_slower_than_half_the_grace_period_is_not_committed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = time.monotonic
    async with kvstore.open(f"file://{tmp_path / 's'}", values="bytes") as db:
        await db.put("k", b"old")
        # The upload ends an hour after it began, as seen by the put (GC's default period: 3600 s).
        monkeypatch.setattr(_streamed_put, "time", SimpleNamespace(monotonic=lambda: real() + 3600))
        with pytest.raises(kvstore.TransactionTooOldError, match=r"took 3600 s to upload, over half the GC grace"):
            await db.put("k", io.BytesIO(b"new"))
        assert await db.get("k") == b"old"
