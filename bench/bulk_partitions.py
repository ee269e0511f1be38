"""bulk_load on a 4-partition store against a 1-partition store, on the local filesystem:
the same pairs (key order, ~200 MB by default), timed in one invocation; prints a table
and writes JSON (the ratio is partitioned / one partition).

    python bench/bulk_partitions.py [--mb 200] [--value-bytes 500] [--out bulk_partitions.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
import time
from collections.abc import Iterator

import kvstore


def pairs(count: int, value_bytes: int) -> Iterator[tuple[bytes, bytes]]:
    """Keys in order, values cut from random bytes (incompressible, as most loaded data is
    more than a repeated filler)."""
    noise = os.urandom(1 << 20)
    span = len(noise) - value_bytes
    for i in range(count):
        at = (i * 7919) % span
        yield f"{i:010d}".encode(), noise[at : at + value_bytes]


async def load(url: str, split_keys: list[bytes] | None, count: int, value_bytes: int) -> float:
    async with kvstore.open(url, split_keys=split_keys) as db:
        started = time.perf_counter()
        await db.bulk_load(pairs(count, value_bytes))
        seconds = time.perf_counter() - started
        assert await db.get(f"{count - 1:010d}") is not None
    return seconds


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--mb", type=float, default=200.0)
    parser.add_argument("--value-bytes", type=int, default=500)
    parser.add_argument("--out", default="bulk_partitions.json")
    args = parser.parse_args()
    count = int(args.mb * 1e6 / (10 + args.value_bytes))
    splits = [f"{count * q // 4:010d}".encode() for q in (1, 2, 3)]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, keys in (("1 partition", None), ("4 partitions", splits)):
            seconds = await load(f"file://{tmp}/{name.replace(' ', '-')}", keys, count, args.value_bytes)
            rows.append(
                {
                    "store": name,
                    "pairs": count,
                    "mb": args.mb,
                    "seconds": round(seconds, 2),
                    "mb_per_s": round(args.mb / seconds, 1),
                }
            )
    ratio = rows[1]["seconds"] / rows[0]["seconds"]
    print(f"{'store':<14} {'pairs':>9} {'MB':>6} {'seconds':>8} {'MB/s':>6}")
    for r in rows:
        print(f"{r['store']:<14} {r['pairs']:>9} {r['mb']:>6.0f} {r['seconds']:>8.2f} {r['mb_per_s']:>6.1f}")
    print(f"time ratio, 4 partitions / 1 partition: {ratio:.2f}x")
    with open(args.out, "w") as f:
        json.dump({"rows": rows, "ratio_4_over_1": round(ratio, 3)}, f, indent=2)


if __name__ == "__main__":
    asyncio.run(main())
