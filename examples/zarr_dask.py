"""A Dask array written to Zarr on kvstore by worker processes, published by one commit.

Needs the extras: ``pip install 'kvstore[zarr,dask]'``. Runs on the local filesystem with
no setup, on a LocalCluster of two worker processes:

    python examples/zarr_dask.py                     # a store in ./zarr-dask-store
    python examples/zarr_dask.py s3://bucket/prefix  # the same on S3 (AWS credentials from the environment)

Set KVSTORE_ENDPOINT_URL to use an S3-compatible endpoint (MinIO, R2, LocalStack, ...).
"""

from __future__ import annotations

import asyncio
import os
import sys

import dask.array
import numpy as np
import zarr.api.asynchronous as za
from distributed import Client, LocalCluster

import kvstore
from kvstore.zarr import ZarrStore, open_session


async def main(url: str, client: Client) -> None:
    endpoint_url = os.environ.get("KVSTORE_ENDPOINT_URL")
    x = dask.array.arange(64 * 64, dtype="int64").reshape(64, 64).rechunk((16, 16))  # 16 chunks
    async with kvstore.open(url, endpoint_url=endpoint_url) as db:
        session = await open_session(db, prefix="arrays/")
        # The driver writes the array's metadata through session.store; Dask pickles the store
        # to its workers, which stage the chunks. The copies never come back: no merge step.
        stored = await asyncio.to_thread(dask.array.to_zarr, x, session.store, component="x", compute=False)
        await asyncio.to_thread(client.compute(stored).result)
        print(f"before the commit, others see version {await db.refresh()}: chunks staged, none visible")
        version = await session.commit()  # the metadata and all 16 chunks, in one manifest CAS
        print(f"one commit published the array at version {version}")
        chunks = len([k async for k, _ in db.scan("arrays/x/c/")])
        arr = await za.open_array(store=ZarrStore(db=db, prefix="arrays/"), path="x")
        total = int((await arr.getitem(slice(None))).sum())
        print(f"{chunks} chunks, sum {total} (expected {int(np.arange(64 * 64).sum())})")


def run() -> None:
    url = sys.argv[1] if len(sys.argv) > 1 else "zarr-dask-store"
    with (
        LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster,
        Client(cluster) as client,
    ):
        asyncio.run(main(url, client))


if __name__ == "__main__":
    run()  # under `if __name__`: Dask's worker processes import this module
