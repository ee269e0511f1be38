"""An empty store may take up another value codec while a handle is open: that handle's
writes must then be refused (nothing written), never stored in a codec nobody reads.
And an empty store stays empty for that purpose while only settings were committed."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Awaitable, Callable

import pytest
from targets import Target, engine_of

import kvstore

DEADLINE = 60.0  # seconds for the other process to open the store
NOT_MSGPACK = b"\xc1 not msgpack"  # 0xc1 is never used by msgpack

# Another process opens the store with values="msgpack", which an empty store takes up.
_ADOPT_MSGPACK = """
import asyncio, sys
import kvstore

async def main(url, endpoint):
    kwargs = {"endpoint_url": endpoint} if endpoint else {}
    async with kvstore.open(url, values="msgpack", **kwargs) as db:
        print(db.recorded_values)

asyncio.run(main(*sys.argv[1:]))
"""


def _adopt_msgpack_in_another_process(target: Target) -> None:
    done = subprocess.run(
        [sys.executable, "-c", _ADOPT_MSGPACK, target.url, target.kwargs.get("endpoint_url", "")],
        capture_output=True,
        text=True,
        timeout=DEADLINE,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "msgpack"


async def _nothing_written(target: Target, versions_before: int) -> None:
    async with target.open() as db:
        assert db.recorded_values == "msgpack"
        assert await db.get(b"k") is None
        assert [c.kind for c in await db.history()] == ["settings"] * versions_before


@pytest.mark.parametrize("mode", [None, "raw"])
async def test_a_handle_opened_before_another_process_changed_the_codec_cannot_write(
    durable_target: Target, mode: str | None
) -> None:
    async with durable_target.open():  # created: records bytes, holds nothing
        pass
    async with durable_target.open(values=mode) as a:  # a bytes handle ("raw" of a bytes store is bytes)
        assert a.recorded_values == "bytes"
        await asyncio.to_thread(_adopt_msgpack_in_another_process, durable_target)
        # A's manifest is the old one: its CAS loses, and the rebase onto the new codec refuses it.
        with pytest.raises(kvstore.CodecMismatchError, match="took values='msgpack' after this handle was opened"):
            await a.put(b"k", NOT_MSGPACK)
        assert a.statistics()["cas_retries"] == 1
        # Once A has read the new manifest, the first attempt refuses it too.
        with pytest.raises(kvstore.CodecMismatchError, match="Open the store again") as raised:
            await a.put(b"k", NOT_MSGPACK)
        assert raised.value.recorded == "msgpack"
    await _nothing_written(durable_target, 1)


async def _put(db: kvstore.Store) -> object:
    return await db.put(b"k", NOT_MSGPACK)


async def _bulk_load(db: kvstore.Store) -> object:
    return await db.bulk_load([(b"k", NOT_MSGPACK)])


async def _distributed_write(db: kvstore.Store) -> object:
    job = await db.distributed_write()
    part = await job.write_async([(b"k", NOT_MSGPACK)], index=0)
    return await job.commit([part])


@pytest.mark.parametrize("write", [_put, _bulk_load, _distributed_write], ids=lambda w: w.__name__.strip("_"))
async def test_every_kind_of_write_of_a_stale_handle_is_refused(
    durable_target: Target, write: Callable[[kvstore.Store], Awaitable[object]]
) -> None:
    async with durable_target.open() as a:  # two engines, each with its own manifest
        async with durable_target.open(values="msgpack") as b:
            assert b.recorded_values == "msgpack"
        assert engine_of(a).manifest.settings["values"] == "bytes"  # A has not seen it
        with pytest.raises(kvstore.CodecMismatchError, match="took values='msgpack'"):
            await write(a)
    await _nothing_written(durable_target, 1)


async def test_a_raw_handle_of_a_msgpack_store_still_writes_msgpack(durable_target: Target) -> None:
    async with durable_target.open(values="msgpack") as db:
        await db.put(b"first", 1)
    async with durable_target.open(values="raw") as raw:
        await raw.put(b"k", b"\x92\x01\x02")  # one msgpack object: a list
    async with durable_target.open() as db:
        assert await db.get(b"k") == [1, 2]


async def test_a_store_with_only_settings_commits_still_takes_up_a_codec(durable_target: Target) -> None:
    async with durable_target.open():  # records bytes and the default grace period
        pass
    longer = kvstore.StoreOptions(segment_grace_period=7200)
    async with durable_target.open(options=longer) as db:  # records a longer one: a settings commit
        assert db.version == 1
    async with durable_target.open(values="msgpack") as db:
        assert db.recorded_values == "msgpack"
        await db.put(b"k", {"a": 1})
        assert [c.kind for c in await db.history()] == ["commit", "settings", "settings"]
    async with durable_target.open() as db:
        assert await db.get(b"k") == {"a": 1}


async def test_a_store_that_stored_data_keeps_its_codec_even_once_emptied(durable_target: Target) -> None:
    async with durable_target.open(options=kvstore.StoreOptions(history_versions=0)) as db:
        await db.put(b"k", b"v")
        await db.delete(b"k")
        await db.compact(full=True)  # no segment left: only the log says data was written
        assert not engine_of(db).manifest.segments
    with pytest.raises(kvstore.CodecMismatchError, match="values='bytes'"):
        await durable_target.open(values="msgpack")
