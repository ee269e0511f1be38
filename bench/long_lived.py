"""How a long-lived store stays bounded: segments and manifest size after many
small commits, and bulk-load throughput and memory.

    .venv/bin/python bench/long_lived.py [--commits 100000] [--url memory://long] [--bulk 1000000]

Prints a table and writes bench/results/long_lived.json. The figures are
quoted in docs/operations.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import tempfile
import time
import tracemalloc
from pathlib import Path

import kvstore
from kvstore._manifest import encode_manifest


async def many_commits(url: str, commits: int) -> dict[str, float]:
    options = kvstore.StoreOptions(history_versions=0)
    peak_segments = peak_bytes = 0
    started = time.perf_counter()
    async with kvstore.open(url, options=options) as db:
        for i in range(commits):
            await db.put(b"key/%06d" % (i % 5000), b"value %d" % i)
            if i % 1000 == 999:
                manifest = db._engine.manifest
                peak_segments = max(peak_segments, len(manifest.segments))
                peak_bytes = max(peak_bytes, len(encode_manifest(manifest)))
        await db.compact()
        manifest = db._engine.manifest
        levels = max(s.level for s in manifest.segments) + 1
        return {
            "commits": commits,
            "seconds": time.perf_counter() - started,
            "segments_final": len(manifest.segments),
            "segments_peak": peak_segments,
            "levels": levels,
            "segment_bound": (options.compaction_fanout - 1) * math.ceil(math.log(commits, options.compaction_fanout)),
            "manifest_bytes_final": len(encode_manifest(manifest)),
            "manifest_bytes_peak": peak_bytes,
            "commit_log_length": options.commit_log_length,
        }


async def bulk(url: str, entries: int) -> dict[str, float]:
    value = os.urandom(100)
    async with kvstore.open(url) as db:
        tracemalloc.start()
        started = time.perf_counter()
        await db.bulk_load((b"bulk/%09d" % ((i * 7919) % entries), value) for i in range(entries))
        seconds = time.perf_counter() - started
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        raw_mb = entries * (14 + len(value)) / 1e6
        return {
            "entries": entries,
            "seconds": seconds,
            "raw_mb": raw_mb,
            "mb_per_s": raw_mb / seconds,
            "peak_mb": peak / 1e6,
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--commits", type=int, default=100_000)
    parser.add_argument("--url", default="memory://long-lived")
    parser.add_argument("--bulk", type=int, default=1_000_000)
    parser.add_argument("--out", default="bench/results")
    args = parser.parse_args()
    results = {"commits": asyncio.run(many_commits(args.url, args.commits))}
    with tempfile.TemporaryDirectory() as tmp:
        results["bulk_load_file"] = asyncio.run(bulk(tmp, args.bulk))  # tracemalloc slows it: a lower bound
    for name, figures in results.items():
        print(name)
        for key, value in figures.items():
            print(f"  {key:24} {value:,.2f}" if isinstance(value, float) else f"  {key:24} {value:,}")
    Path(args.out).mkdir(parents=True, exist_ok=True)
    Path(args.out, "long_lived.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
