"""An asyncio application: many concurrent tasks share one store.

80 customer tasks order from a small stock at the same time. Each order is a
transaction run by `Store.transact`, which retries it when another task's
commit changed what it read, so no item is ever sold twice. Concurrent
transactions of the process share commits (group commit). A watcher task
follows the new orders with `Store.watch`, as another service would.

    python examples/asyncio_app.py                      # a store in ./asyncio-store
    python examples/asyncio_app.py s3://bucket/prefix   # the same on S3

Set KVSTORE_ENDPOINT_URL to use an S3-compatible endpoint (MinIO, R2, LocalStack, ...).
"""

from __future__ import annotations

import asyncio
import os
import sys
import uuid

import kvstore

STOCK = {"widget": 30, "gadget": 20}
CUSTOMERS = 80  # each orders one item: 40 want a widget, 40 a gadget


async def order(tx: kvstore.Transaction, run: str, customer: int, item: str) -> bool:
    """Take one `item` from stock and record the order; False when it is sold out."""
    left = await tx.get(f"{run}/stock/{item}")
    if left == 0:
        return False
    tx.put(f"{run}/stock/{item}", left - 1)
    tx.put(f"{run}/orders/{customer:04d}", {"item": item})
    return True


async def watch_orders(db: kvstore.Store, run: str, since: int, expected: int) -> list[bytes]:
    """Collect the keys of new orders from the commit log until `expected` were seen."""
    seen: list[bytes] = []
    async for change in db.watch(f"{run}/orders/", since=since, interval=0.05):
        if change.keys is None:  # a commit too large to list its keys: rescan the range
            seen = [key async for key, _ in db.scan(f"{run}/orders/")]
        else:
            seen.extend(change.keys)
        if len(seen) >= expected:
            return seen
    raise AssertionError("unreachable: watch() runs until cancelled")


async def main(url: str) -> None:
    endpoint_url = os.environ.get("KVSTORE_ENDPOINT_URL")
    async with kvstore.open(url, values="msgpack", endpoint_url=endpoint_url) as db:
        run = f"run-{uuid.uuid4().hex[:8]}"  # so the example can run again on the same store
        async with db.transaction() as tx:
            for item, count in STOCK.items():
                tx.put(f"{run}/stock/{item}", count)
        start = db.version
        expected = sum(STOCK.values())
        watcher = asyncio.create_task(watch_orders(db, run, start, expected))

        items = list(STOCK)
        results = await asyncio.gather(*(db.transact(order, run, c, items[c % len(items)]) for c in range(CUSTOMERS)))
        sold = sum(results)
        print(f"{CUSTOMERS} customers, {sold} orders placed, {CUSTOMERS - sold} sold out")

        stock = {k.decode().rsplit("/", 1)[1]: v async for k, v in db.scan(f"{run}/stock/")}
        orders = [v["item"] async for _, v in db.scan(f"{run}/orders/")]
        print("stock left:", stock)
        consistent = all(stock[i] + orders.count(i) == STOCK[i] and stock[i] >= 0 for i in STOCK)
        print("stock + orders == initial stock:", consistent)

        seen = await asyncio.wait_for(watcher, timeout=60)
        print(f"watcher saw {len(seen)} orders, {len(set(seen))} distinct, from version {start} to {db.version}")

        stats = db.statistics()
        print(
            f"{stats['transactions_committed']} transactions in {stats['commits']} commits "
            f"(group commit); {stats['conflicts']} conflicts retried by transact()"
        )


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1] if len(sys.argv) > 1 else "asyncio-store"))
