"""The five-minute tour of kvstore.

Runs on the local filesystem with no setup:

    python examples/quickstart.py                     # a store in ./quickstart-store
    python examples/quickstart.py s3://bucket/prefix  # the same on S3 (AWS credentials from the environment)

Set KVSTORE_ENDPOINT_URL to use an S3-compatible endpoint (MinIO, R2, LocalStack, ...).
"""

from __future__ import annotations

import asyncio
import os
import sys

import kvstore


async def transfer(tx: kvstore.Transaction, src: str, dst: str, amount: int) -> None:
    """Move `amount` between two accounts: all or nothing, serializable."""
    balance = await tx.get(src, 0)
    if balance < amount:
        raise ValueError(f"{src} has only {balance}")
    tx.put(src, balance - amount)
    tx.put(dst, await tx.get(dst, 0) + amount)


async def main(url: str) -> None:
    endpoint_url = os.environ.get("KVSTORE_ENDPOINT_URL")
    async with kvstore.open(url, values="msgpack", endpoint_url=endpoint_url) as db:
        print(f"opened {db.url} at version {db.version}")

        # Single keys: each write is a small transaction (one segment PUT + one manifest CAS).
        await db.put("users/ada", {"name": "Ada", "langs": ["en", "fr"]})
        await db.put("users/alan", {"name": "Alan"})
        print("users/ada =", await db.get("users/ada"))

        # Ordered scans by prefix or range, forwards or backwards.
        async for key, user in db.scan(prefix="users/"):
            print("  scan:", key.decode(), user["name"])

        # A transaction: reads see one snapshot, writes commit together or not at all.
        async with db.transaction() as tx:
            tx.put("accounts/ada", 100)
            tx.put("accounts/alan", 50)

        # transact() reruns the function if another writer changed what it read.
        await db.transact(transfer, "accounts/ada", "accounts/alan", 30)
        balances = {k.decode(): v async for k, v in db.scan(prefix="accounts/")}
        print("balances after transfer:", balances)

        # A snapshot is a consistent, repeatable view while others keep writing.
        snap = await db.snapshot()
        await db.put("accounts/ada", 0)
        print(f"snapshot v{snap.version} still sees ada =", await snap.get("accounts/ada"))
        print("latest sees ada =", await db.get("accounts/ada"))

        stats = db.statistics()
        print(f"store version {stats['version']}; requests so far: {stats['requests']}")


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1] if len(sys.argv) > 1 else "quickstart-store"))
