"""Peak memory while scanning a store larger than the cache, in a process of its own.

    .venv/bin/python bench/memory.py '<json spec>'

Opens the store read-only with ``StoreOptions(cache_bytes=C)``, takes a snapshot, then
resets the kernel's peak-RSS mark (VmHWM) and scans every entry. Prints one JSON line:
RSS before the scan, peak RSS during it, their difference, and the cache's own byte count.
"""

from __future__ import annotations

import asyncio
import gc
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import Target, open_store, peak_rss_bytes, reset_peak_rss, rss_bytes  # noqa: E402
from kv import options  # noqa: E402


async def main(spec: dict[str, Any]) -> dict[str, Any]:
    target = Target.from_json(spec["target"])
    cache = spec["cache_bytes"]
    async with open_store(target, spec["store"], 0.0, read_only=True, options=options(cache_bytes=cache)) as db:
        snap = await db.snapshot()
        async for _ in snap.scan(limit=1):  # clients, connections, imports: the fixed part
            pass
        gc.collect()
        base = rss_bytes()
        reset_ok = reset_peak_rss()
        t0 = time.perf_counter()
        n = 0
        nbytes = 0
        async for k, v in snap.scan():
            n += 1
            nbytes += len(k) + len(v)
        elapsed = time.perf_counter() - t0
        peak = peak_rss_bytes()
        stats = db.statistics()
    return {
        "cache_bytes": cache,
        "entries": n,
        "store_bytes": nbytes,
        "seconds": elapsed,
        "rss_before": base,
        "rss_peak": peak,
        "growth": peak - base,
        "peak_reset": reset_ok,
        "cache_accounted_bytes": stats["cache"]["bytes"],
        "requests": stats["requests"],
    }


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(json.loads(sys.argv[1])))), flush=True)
