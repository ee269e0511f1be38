"""Zarr arrays on kvstore: two arrays in one session, a tag, a partial overwrite, time travel.

Needs the extra: ``pip install 'kvstore[zarr]'``. Runs on the local filesystem with no setup:

    python examples/zarr_arrays.py                     # a store in ./zarr-store
    python examples/zarr_arrays.py s3://bucket/prefix  # the same on S3 (AWS credentials from the environment)

Set KVSTORE_ENDPOINT_URL to use an S3-compatible endpoint (MinIO, R2, LocalStack, ...).
"""

from __future__ import annotations

import asyncio
import os
import sys

import numpy as np
import zarr.api.asynchronous as za

import kvstore
from kvstore.zarr import ZarrStore, open_session


async def main(url: str) -> None:
    endpoint_url = os.environ.get("KVSTORE_ENDPOINT_URL")
    async with kvstore.open(url, endpoint_url=endpoint_url) as db:
        # A session stages every write as segments of the store, invisible to everyone else;
        # one commit publishes both arrays and their metadata together, or nothing.
        session = await open_session(db, prefix="arrays/")
        temperature = await za.create_array(
            session.store, name="temperature", shape=(4, 6), chunks=(2, 3), dtype="float32", overwrite=True
        )
        labels = await za.create_array(
            session.store, name="labels", shape=(4,), chunks=(4,), dtype="int32", overwrite=True
        )
        await temperature.setitem(slice(None), np.arange(24, dtype="float32").reshape(4, 6))
        await labels.setitem(slice(None), np.array([10, 20, 30, 40], dtype="int32"))
        version = await session.commit()
        print(f"session committed both arrays at version {version}")

        # Tag that version (a tag keeps it readable whatever is written later).
        try:
            await db.delete_tag("v1")  # from an earlier run of this example
        except kvstore.TagNotFoundError:
            pass
        await db.tag("v1")

        # Overwrite part of one array: each write through ZarrStore(db=db) commits.
        store = ZarrStore(db=db, prefix="arrays/")
        latest_temperature = await za.open_array(store=store, path="temperature")
        await latest_temperature.setitem((slice(0, 2), slice(0, 3)), np.full((2, 3), -1, dtype="float32"))

        # Read both arrays at the tag and at the latest version.
        at_tag = await ZarrStore.open(url=db.url, prefix="arrays/", tag="v1", endpoint_url=endpoint_url)
        for name, where in (("at tag v1", at_tag), ("latest", store)):
            t = await (await za.open_array(store=where, path="temperature")).getitem((0, slice(None)))
            lab = await (await za.open_array(store=where, path="labels")).getitem(slice(None))
            print(f"{name}: temperature[0] = {t.tolist()}, labels = {lab.tolist()}")
        at_tag.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1] if len(sys.argv) > 1 else "zarr-store"))
