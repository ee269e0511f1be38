"""Zarr's own store conformance suite, `zarr.testing.store.StoreTests`, run on
`kvstore.zarr.ZarrStore` over the local filesystem and LocalStack (as Icechunk runs
it on its store). Every test of the suite runs; none may skip."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from targets import Target
from zarr.core.buffer import Buffer, cpu, default_buffer_prototype
from zarr.core.sync import sync
from zarr.testing.store import StoreTests

import kvstore
from kvstore.zarr import ZarrStore

PREFIX = "arrays/"


class TestZarrStore(StoreTests[ZarrStore, cpu.Buffer]):
    store_cls = ZarrStore
    buffer_cls = cpu.Buffer

    @pytest.fixture(autouse=True)
    async def close_handles(self, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[None]:
        """Close the kvstore handles the suite's stores opened (it never closes its stores):
        each in the loop it belongs to, the test's or zarr's own."""
        opened: list[tuple[asyncio.AbstractEventLoop, kvstore.Store]] = []
        real = ZarrStore._open_handle

        async def tracked(store: ZarrStore) -> Any:
            handle = await real(store)
            if handle.owned and handle.db is not None:
                opened.append((asyncio.get_running_loop(), handle.db))
            return handle

        monkeypatch.setattr(ZarrStore, "_open_handle", tracked)
        yield
        here = asyncio.get_running_loop()
        for loop, db in opened:
            if loop is here:
                await db.close()
            else:
                sync(db.close())  # zarr's loop thread

    @pytest.fixture
    def store_kwargs(self, durable_target: Target) -> dict[str, Any]:
        return {"url": durable_target.url, "prefix": PREFIX, **durable_target.kwargs}

    # The suite's own reads and writes go around the store under test: straight to kvstore.
    async def set(self, store: ZarrStore, key: str, value: Buffer) -> None:
        async with kvstore.open(store.url, s3_options=store._s3) as db:
            await db.put((PREFIX + key).encode(), value.to_bytes())

    async def get(self, store: ZarrStore, key: str) -> Buffer:
        async with kvstore.open(store.url, s3_options=store._s3) as db:
            value = await db.get((PREFIX + key).encode())
        assert value is not None, key
        return self.buffer_cls.from_bytes(value)

    def test_store_repr(self, store: ZarrStore) -> None:
        assert repr(store) == f"ZarrStore({store.url!r}, prefix={PREFIX!r})"

    def test_store_supports_writes(self, store: ZarrStore) -> None:
        assert store.supports_writes

    def test_store_supports_listing(self, store: ZarrStore) -> None:
        assert store.supports_listing

    def test_store_supports_deletes(self, store: ZarrStore) -> None:
        assert store.supports_deletes

    async def test_keys_are_the_prefixed_kvstore_keys(self, store: ZarrStore) -> None:
        """The contract's key mapping: zarr key k is kvstore key (prefix + k) in UTF-8, value as written."""
        await store.set("g/zarr.json", self.buffer_cls.from_bytes(b"{}"))
        await store.set("g/c/0/\u00e9", self.buffer_cls.from_bytes(b"\x00\xff"))
        async with kvstore.open(store.url, s3_options=store._s3) as db:
            assert [k async for k, _ in db.scan()] == [b"arrays/g/c/0/\xc3\xa9", b"arrays/g/zarr.json"]
            assert await db.get("arrays/g/c/0/\u00e9") == b"\x00\xff"
        got = await store.get("g/c/0/\u00e9", default_buffer_prototype())
        assert got is not None and got.to_bytes() == b"\x00\xff"
