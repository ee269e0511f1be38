"""Every value `put` accepts reads back equal; the store records its value codec."""

from __future__ import annotations

import asyncio
import enum
from collections import OrderedDict
from dataclasses import replace
from typing import Any, NamedTuple

import pytest
from targets import Target, engine_of, memory_target

import kvstore
from kvstore._manifest import encode_manifest


class Color(enum.IntEnum):
    RED = 1


class Label(str, enum.Enum):
    HOT = "hot"


class Point(NamedTuple):
    x: int
    y: int


ROUND_TRIPS: list[Any] = [
    {1: "a", 2: "b"},  # int map keys: unreadable with msgpack's default strict_map_key
    {None: 1, 1.5: 2, True: 3, b"k": 4, "s": 5},
    {"nested": [{7: [b"\x00", None]}]},
    OrderedDict(a=1),  # a dict subclass reads back as an equal dict
    [Color.RED, Label.HOT],  # int and str subclasses read back as equal plain values
    bytearray(b"ba"),
    2**64 - 1,
    -(2**63),
]


@pytest.mark.parametrize("value", ROUND_TRIPS, ids=repr)
async def test_what_put_accepts_reads_back_equal(target: Target, value: Any) -> None:
    async with target.open(values="msgpack") as db:
        await db.put("k", value)
        assert await db.get("k") == value
        assert [v async for _, v in db.scan()] == [value]
        async with db.transaction() as tx:
            assert await tx.get("k") == value
    async with target.open(values="msgpack") as db:  # and from a fresh process view
        assert await db.get("k") == value


REFUSED: list[tuple[Any, str]] = [
    ((1, 2), "tuple"),
    ([1, (2, 3)], "tuple"),
    ({(1, 2): "a"}, "tuple"),
    (Point(1, 2), "Point"),
    ({"s": {1, 2}}, "set"),
    (2**64, "out of range"),
]


@pytest.mark.parametrize("value, words", REFUSED, ids=repr)
async def test_what_would_not_read_back_equal_is_refused_everywhere(value: Any, words: str) -> None:
    async with memory_target().open(values="msgpack") as db:
        with pytest.raises(kvstore.InvalidValueError, match=words):
            await db.put("k", value)
        with pytest.raises(kvstore.InvalidValueError, match=words):
            async with db.transaction() as tx:
                tx.put("k", value)
        with pytest.raises(kvstore.InvalidValueError, match=words):
            await db.bulk_load([(b"a", 1), (b"k", value)])
        assert [k async for k, _ in db.scan()] == []
        assert db.version == 0


async def test_a_new_store_records_its_codec_and_refuses_another(target: Target) -> None:
    async with target.open(values="msgpack") as db:
        await db.put("k", {"a": 1})
        assert engine_of(db).manifest.settings == {"values": "msgpack", "segment_grace_period": 3600}
    with pytest.raises(kvstore.CodecMismatchError, match="values='msgpack'.*values='raw'") as raised:
        await target.open(values="bytes")
    assert raised.value.recorded == "msgpack"
    assert isinstance(raised.value, kvstore.ValidationError)
    async with target.open(values="raw") as db:  # the stored bytes, as tools read them
        assert await db.get("k") == b"\x81\xa1a\x01"


async def test_a_store_opened_without_values_uses_the_codec_it_records(target: Target) -> None:
    """Without values=, a msgpack store stays msgpack: bytes are a msgpack value like any other,
    so nothing put without values= can make a key unreadable for the other openers."""
    async with target.open(values="msgpack") as db:
        await db.put("user1", {"name": "Ada"})
    async with target.open() as db:
        assert await db.get("user1") == {"name": "Ada"}
        await db.put("user2", b"hello")
        await db.put("user3", {"name": "Alan"})  # was: "values are bytes in this store, not dict"
        assert [k async for k, _ in db.scan()] == [b"user1", b"user2", b"user3"]
    async with target.open(values="msgpack") as db:
        assert [v async for _, v in db.scan()] == [{"name": "Ada"}, b"hello", {"name": "Alan"}]
    await asyncio.to_thread(_sync_uses_the_recorded_codec, target)  # the blocking face too
    async with target.open(values="raw") as db:  # raw bytes only when asked for
        assert await db.get("user2") == b"\xc4\x05hello"


def _sync_uses_the_recorded_codec(target: Target) -> None:
    with target.open_sync() as db:
        db["user4"] = [1, 2]
        assert db["user2"] == b"hello" and db["user4"] == [1, 2]


async def test_raw_writes_into_a_msgpack_store_must_be_msgpack(target: Target) -> None:
    """values="raw" reads the stored bytes; it writes only bytes that decode, naming the codec."""
    async with target.open(values="msgpack") as db:
        await db.put("k", {"a": 1})
        version = db.version
    async with target.open(values="raw") as db:
        for refused in (b"hello", b"\x01\x02"):  # not msgpack; two objects (ExtraData)
            with pytest.raises(kvstore.InvalidValueError, match="records values='msgpack'"):
                await db.put("bad", refused)
            with pytest.raises(kvstore.InvalidValueError, match="records values='msgpack'"):
                async with db.transaction() as tx:
                    tx.put("bad", refused)
            with pytest.raises(kvstore.InvalidValueError, match="records values='msgpack'"):
                await db.bulk_load([(b"bad", refused)])
        with pytest.raises(kvstore.InvalidValueError, match="records values='msgpack'.*not dict"):
            await db.put("bad", {"a": 1})
        await db.put("copy", await db.get("k"))  # bytes that are msgpack: stored as they are
        assert db.recorded_values == "msgpack"
    async with target.open() as db:
        assert await db.get("copy") == {"a": 1} and await db.get("bad") is None
        assert db.version == version + 1


async def test_raw_opens_a_bytes_store_as_bytes_and_records_no_codec(target: Target) -> None:
    async with target.open(values="raw") as db:  # a new store: raw chooses no codec
        await db.put("k", b"\x01\x02")
        assert db.recorded_values == "bytes"
        with pytest.raises(
            kvstore.InvalidValueError, match="records values='bytes', so its values are bytes, not dict"
        ):
            await db.put("k", {"a": 1})
    with pytest.raises(kvstore.CodecMismatchError, match="open it with values='bytes' or without values=$"):
        await target.open(values="msgpack")
    async with target.open() as db:
        assert await db.get("k") == b"\x01\x02"


async def test_a_bytes_store_opened_as_msgpack_is_refused_at_open(target: Target) -> None:
    async with target.open() as db:
        await db.put("k", b"\x01\x02")
        assert engine_of(db).manifest.settings == {"values": "bytes", "segment_grace_period": 3600}
    with pytest.raises(kvstore.CodecMismatchError, match="open it with values='bytes'"):
        await target.open(values="msgpack")
    with pytest.raises(kvstore.CodecMismatchError, match="values='bytes'"):
        await asyncio.to_thread(target.open_sync, values="msgpack")  # the blocking face too


async def test_a_store_that_never_committed_takes_the_first_explicit_codec(target: Target) -> None:
    async with target.open():  # created as bytes, but holds nothing yet
        pass
    async with target.open(values="msgpack") as db:
        await db.put("k", [1])
        assert [c.kind for c in await db.history()] == ["commit", "settings"]
    with pytest.raises(kvstore.CodecMismatchError, match="values='msgpack'"):
        await target.open(values="bytes")


async def _rewrite_settings(db: kvstore.Store, settings: dict[str, Any]) -> None:
    """Make `db` look like a store written by an older (or newer) kvstore."""
    engine = engine_of(db)
    manifest = await engine.refresh()
    current = await engine.objects.get(engine.layout.manifest)
    assert current is not None and current.etag is not None
    await engine.objects.put_if_match(
        engine.layout.manifest, encode_manifest(replace(manifest, settings=settings)), current.etag
    )


async def test_a_store_without_a_recorded_codec_opens_as_before(target: Target) -> None:
    async with target.open() as db:
        await db.put("raw", b"\x01\x02")  # not one msgpack object: ExtraData
        await db.put("ok", b"\x01")
        await _rewrite_settings(db, {})
    async with target.open(values="msgpack") as db:
        assert await db.get("ok") == 1
        with pytest.raises(kvstore.ValueDecodeError, match="'raw'.*values=") as raised:
            await db.get("raw")
        assert raised.value.key == b"raw" and raised.value.store == db.url
        assert db.url in str(raised.value)
        with pytest.raises(kvstore.ValueDecodeError):
            [v async for _, v in db.scan()]
    await asyncio.to_thread(_len_raises_value_decode_error, target)
    async with target.open(values="bytes") as db:
        assert await db.get("raw") == b"\x01\x02"


def _len_raises_value_decode_error(target: Target) -> None:
    with target.open_sync(values="msgpack") as db, pytest.raises(kvstore.ValueDecodeError, match="b'raw'"):
        len(db)


async def test_a_codec_from_a_newer_kvstore_is_refused() -> None:
    target = memory_target()
    async with target.open() as db:
        await db.put("k", b"{}")
        await _rewrite_settings(db, {"values": "json"})
    with pytest.raises(kvstore.UnsupportedFormatError, match="upgrade kvstore"):
        await target.open(values="bytes")
