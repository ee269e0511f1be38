"""Build an ML file catalog with Dask, release it under a tag, read the release back later.

    python examples/ml_catalog_dask.py                       # 1M records into ./ml-catalog-dask-store
    python examples/ml_catalog_dask.py s3://bucket/prefix    # the same on S3
    python examples/ml_catalog_dask.py --records 20000       # a smaller catalog

Needs ``pip install 'kvstore[dask]'``. Set KVSTORE_ENDPOINT_URL to use an
S3-compatible endpoint (MinIO, R2, LocalStack, ...). The example starts a local
Dask cluster of two worker processes; pass a `distributed.Client` of a real
cluster to `kvstore.dask.store` the same way.

Key layout (values are msgpack-encoded dicts):

    files/SHARD/NNNNNNNN.jpg    {"size", "label", "sha1"}
    labels/LABEL                {"files"}   a summary, written in an ordinary transaction

The workers write the file records (one part per Dask partition); the driver
publishes them all with one commit, so readers see the whole catalog or none of
it. The release is tagged; relabelling, deleting and adding files afterwards
does not change what the tag reads.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import time
import uuid
from collections.abc import Iterable, Iterator
from typing import Any

import dask.bag
from distributed import Client, LocalCluster

import kvstore
import kvstore.dask

LABELS = ["cat", "dog", "bird", "fish"]
SHARDS = 64


def file_records(numbers: Iterable[int], batch: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """The catalog records of files `numbers`: runs on the Dask workers."""
    for n in numbers:
        digest = hashlib.sha1(f"{batch}/{n}".encode()).hexdigest()
        yield f"files/{n % SHARDS:02d}/{n:08d}.jpg", {"size": 1000 + n % 5000, "label": LABELS[n % 4], "sha1": digest}


def catalog(records: int, start: int = 0, batch: str = "v1") -> dask.bag.Bag:
    """A Bag of `records` file records, in partitions of about 100,000."""
    partitions = max(1, records // 100_000)
    numbers = dask.bag.range(records, npartitions=partitions).map(lambda n: n + start)
    return numbers.map_partitions(file_records, batch)


async def main(url: str, records: int, client: Client) -> None:
    endpoint_url = os.environ.get("KVSTORE_ENDPOINT_URL")
    async with kvstore.open(url, values="msgpack", endpoint_url=endpoint_url) as db:
        print(f"opened {db.url}")
        release = f"catalog-{uuid.uuid4().hex[:6]}"  # so the example can run again on the same store

        # 1. The workers write the records; one commit publishes every partition.
        started = time.perf_counter()
        version = await kvstore.dask.store(db, catalog(records), client=client, meta={"release": release})
        seconds = time.perf_counter() - started
        print(f"wrote {records:,} file records with Dask in {seconds:.1f} s ({records / seconds:,.0f} records/s)")
        print(f"  committed as version {version}, one commit: {(await db.history())[-1].meta}")

        # 2. A summary in an ordinary transaction, then release the version under a tag.
        async with db.transaction() as tx:
            for i, label in enumerate(LABELS):
                tx.put(f"labels/{label}", {"files": len(range(i, records, 4))})
        tag = await db.tag(release)
        print(f"tagged version {tag.version} as {tag.name!r}")

        # 3. More commits: relabel a file, delete one, add a second batch with Dask.
        first = f"files/{1 % SHARDS:02d}/{1:08d}.jpg"
        second = f"files/{2 % SHARDS:02d}/{2:08d}.jpg"
        async with db.transaction() as tx:
            record = await tx.get(first)
            tx.put(first, {**record, "label": "wolf"})
            tx.delete(second)
        extra = max(1, records // 10)
        await kvstore.dask.store(db, catalog(extra, start=records, batch="v2"), client=client)
        print(f"then relabelled {first}, deleted {second} and added {extra:,} files: now version {db.version}")

        # 4. The release reads exactly as it was tagged.
        snapshot = await db.snapshot(tag=release)
        latest = await db.snapshot()
        print(
            f"at {release!r}: {first} is a {(await snapshot.get(first))['label']}, {second} exists: "
            f"{await snapshot.get(second) is not None}"
        )
        print(
            f"latest:  {first} is a {(await latest.get(first))['label']}, {second} exists: "
            f"{await latest.get(second) is not None}"
        )
        shard = "files/07/"
        tagged_count = len([k async for k, _ in snapshot.scan(shard)])
        latest_count = len([k async for k, _ in latest.scan(shard)])
        print(f"files in shard {shard}: {tagged_count:,} at the release, {latest_count:,} now")


def run() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("url", nargs="?", default="ml-catalog-dask-store")
    parser.add_argument("--records", type=int, default=int(os.environ.get("KVSTORE_EXAMPLE_RECORDS", 1_000_000)))
    args = parser.parse_args()
    with (
        LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster,
        Client(cluster) as client,
    ):
        asyncio.run(main(args.url, args.records, client))


if __name__ == "__main__":
    run()  # under `if __name__`: Dask's worker processes import this module
