"""An ML dataset catalog: datasets, versions and shards, a secondary index, releases.

    python examples/ml_catalog.py                      # a catalog in ./ml-catalog-store
    python examples/ml_catalog.py s3://bucket/prefix   # the same on S3

Set KVSTORE_ENDPOINT_URL to use an S3-compatible endpoint (MinIO, R2, LocalStack, ...).

Key layout (values are msgpack-encoded dicts):

    datasets/NAME                       {"owner", "labels", "description"}
    versions/NAME/VERSION               {"rows", "shards", "created"}      VERSION zero-padded
    shards/NAME/VERSION/SHARD           {"uri", "rows", "sha256"}
    index/owner/OWNER/NAME              None   secondary indexes, written in the
    index/label/LABEL/NAME              None   same transactions as the dataset
    runs/RUN                            {"tag", "version", "inputs"}

A training run records which release (a kvstore tag) it read. Reading at
that tag later reproduces exactly the same inputs, whatever was registered,
relabelled or deleted since.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import sys
import uuid
from typing import Any

import kvstore

# ----------------------------------------------------------------- writes (one transaction each)


async def register_dataset(tx: kvstore.Transaction, name: str, owner: str, labels: list[str], description: str) -> None:
    """Create or update a dataset and keep both indexes in step, atomically."""
    old = await tx.get(f"datasets/{name}")
    if old is not None:  # drop index entries that no longer apply
        if old["owner"] != owner:
            tx.delete(f"index/owner/{old['owner']}/{name}")
        for label in set(old["labels"]) - set(labels):
            tx.delete(f"index/label/{label}/{name}")
    tx.put(f"datasets/{name}", {"owner": owner, "labels": sorted(labels), "description": description})
    tx.put(f"index/owner/{owner}/{name}", None)
    for label in labels:
        tx.put(f"index/label/{label}/{name}", None)


async def add_version(tx: kvstore.Transaction, name: str, shard_rows: list[int]) -> int:
    """Register the next version of `name` with its shards; returns the version number."""
    if await tx.get(f"datasets/{name}") is None:
        raise KeyError(f"no dataset {name!r}")
    latest = [key async for key, _ in tx.scan(f"versions/{name}/", reverse=True, limit=1)]
    number = int(latest[0].decode().rsplit("/", 1)[1]) + 1 if latest else 1
    tx.put(f"versions/{name}/{number:06d}", {"rows": sum(shard_rows), "shards": len(shard_rows)})
    for i, rows in enumerate(shard_rows):
        uri = f"s3://datasets/{name}/v{number}/part-{i:05d}.parquet"
        digest = hashlib.sha256(uri.encode()).hexdigest()[:16]
        tx.put(f"shards/{name}/{number:06d}/{i:05d}", {"uri": uri, "rows": rows, "sha256": digest})
    return number


async def retract_shard(tx: kvstore.Transaction, name: str, version: int, shard: int) -> None:
    """Remove a bad shard from a version (and fix the version's totals)."""
    key = f"shards/{name}/{version:06d}/{shard:05d}"
    removed = await tx.get(key)
    meta = await tx.get(f"versions/{name}/{version:06d}")
    tx.delete(key)
    tx.put(f"versions/{name}/{version:06d}", {"rows": meta["rows"] - removed["rows"], "shards": meta["shards"] - 1})


# ----------------------------------------------------------------- reads (at any version)


async def datasets_by(reader: kvstore.Reader, index: str, value: str) -> list[str]:
    """Dataset names through a secondary index: one prefix scan."""
    prefix = f"index/{index}/{value}/"
    return [key.decode()[len(prefix) :] async for key, _ in reader.scan(prefix)]


async def training_inputs(reader: kvstore.Reader, label: str = "train") -> list[dict[str, Any]]:
    """The shards a training run reads: the latest version of every dataset labelled `label`."""
    inputs = []
    for name in await datasets_by(reader, "label", label):
        latest = [key async for key, _ in reader.scan(f"versions/{name}/", reverse=True, limit=1)]
        if not latest:
            continue
        version = latest[0].decode().rsplit("/", 1)[1]
        shards = [v["uri"] async for _, v in reader.scan(f"shards/{name}/{version}/")]
        inputs.append({"dataset": name, "version": int(version), "shards": shards})
    return inputs


async def main(url: str) -> None:
    endpoint_url = os.environ.get("KVSTORE_ENDPOINT_URL")
    async with kvstore.open(url, values="msgpack", endpoint_url=endpoint_url) as db:
        suffix = uuid.uuid4().hex[:6]  # so the example can run again on the same store
        images, captions = f"images-{suffix}", f"captions-{suffix}"

        # 1. Register datasets and versions; each call is one serializable transaction.
        await db.transact(register_dataset, images, "alice", ["vision", "train"], "street photos")
        await db.transact(register_dataset, captions, "bob", ["text", "train"], "photo captions")
        await db.transact(add_version, images, [1000, 1000, 500])
        await db.transact(add_version, captions, [2500])
        print("alice owns:", [n for n in await datasets_by(db, "owner", "alice") if n.endswith(suffix)])

        # 2. Tag a release and record a training run against it.
        release = await db.tag(f"release-{suffix}")
        recorded = await training_inputs(await db.snapshot(version=release.version))
        recorded = [i for i in recorded if i["dataset"].endswith(suffix)]
        await db.put(f"runs/run-{suffix}", {"tag": release.name, "version": release.version, "inputs": recorded})
        print(f"tagged {release.name} at version {release.version}")
        print("recorded inputs:", json.dumps(recorded))

        # 3. Life goes on: a new version, a retracted shard, a relabelled dataset.
        await db.transact(add_version, images, [1200, 1200])
        await db.transact(retract_shard, images, 1, 2)
        await db.transact(register_dataset, captions, "carol", ["text", "deprecated"], "photo captions")
        latest = [i for i in await training_inputs(db) if i["dataset"].endswith(suffix)]
        print("latest inputs:", json.dumps(latest))
        print("carol owns:", [n for n in await datasets_by(db, "owner", "carol") if n.endswith(suffix)])

        # 4. Reproduce the run: read everything at the tag it recorded.
        run = await db.get(f"runs/run-{suffix}")
        at_release = await db.snapshot(tag=run["tag"])
        reproduced = [i for i in await training_inputs(at_release) if i["dataset"].endswith(suffix)]
        print(f"reproduced inputs (read at tag {run['tag']}, version {at_release.version}):", json.dumps(reproduced))
        print("reproduced == recorded:", reproduced == run["inputs"])


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1] if len(sys.argv) > 1 else "ml-catalog-store"))
