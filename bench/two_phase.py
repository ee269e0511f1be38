"""Cross-partition commit latency against single-partition commits (issue 18's target: a
cross-partition commit in at most 3.5 round trips).

Two partition engines on sub-prefixes of one local store root, every request delayed by
`--latency` seconds (``FaultInjectingStore``, as bench/floor.py does), one writer
committing in sequence:

* ``single``: a one-key read-modify-write in one partition (`Engine.commit`);
* ``across``: the same in each of two partitions as one transaction (`commit_across`),
  timed from the commit call (the reads before it are the same in both rows).

Round trips = median latency / injected latency. The requests column counts the object
store requests made during the timed call (the background resolve of the previous
transaction included when it overlaps). Prints a table and writes JSON (``--out``).

    .venv/bin/python bench/two_phase.py --latency 0.02 --n 40
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import two_phase_workers as w  # noqa: E402

from kvstore import StoreOptions  # noqa: E402
from kvstore._two_phase import commit_across  # noqa: E402
from kvstore.testing.faults import FaultInjectingStore, FaultPlan, FaultRule  # noqa: E402


def _requests(parts: w.Parts) -> int:
    return sum(sum(e.objects.requests.values()) for e in parts.engines) + sum(parts.root_objects.requests.values())


async def run(latency: float, n: int) -> dict[str, Any]:
    plan = FaultPlan(default=FaultRule(latency=latency))
    root = tempfile.mkdtemp(prefix="kvstore-2pc-bench-")
    parts = await w.open_parts(
        f"file://{root}/store",
        {},
        2,
        options=StoreOptions(auto_compact=False),
        wrap=lambda inner: FaultInjectingStore(inner, plan),
        wrap_root=lambda inner: FaultInjectingStore(inner, plan),
    )
    a, b = parts.engines
    rows: dict[str, dict[str, float]] = {}
    try:
        await w.open_bank(parts, 2)
        for kind in ("single", "across"):
            seconds: list[float] = []
            requests: list[int] = []
            for _ in range(n):
                for engine in parts.engines:
                    await engine.background_idle()
                va, vb = await a.latest_view(), await b.latest_view()
                x, y = w.account(0), w.account(1)
                txn = a.new_txn_id()
                before = _requests(parts)
                started = time.perf_counter()
                if kind == "single":
                    await a.commit(w.request(a, va, {x}, {x: await va.get(x) or b"0"}))
                else:
                    await commit_across(
                        [
                            (a, w.request(a, va, {x}, {x: await va.get(x) or b"0"}, txn)),
                            (b, w.request(b, vb, {y}, {y: await vb.get(y) or b"0"}, txn)),
                        ],
                        parts.decisions,
                    )
                seconds.append(time.perf_counter() - started)
                requests.append(_requests(parts) - before)
            median = statistics.median(seconds)
            rows[kind] = {
                "median_ms": median * 1000,
                "p90_ms": sorted(seconds)[int(0.9 * (len(seconds) - 1))] * 1000,
                "round_trips": median / latency if latency else float("nan"),
                "requests": statistics.median(requests),
            }
    finally:
        await parts.close()
    return {
        "latency_s": latency,
        "n": n,
        "rows": rows,
        "ratio_across_to_single": rows["across"]["median_ms"] / rows["single"]["median_ms"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--latency", type=float, default=0.02)
    parser.add_argument("--n", type=int, default=40)
    parser.add_argument("--out", default="bench/results/two_phase.json")
    args = parser.parse_args()
    result = asyncio.run(run(args.latency, args.n))
    print(f"latency per request {args.latency * 1000:.0f} ms, {args.n} commits each")
    print(f"{'commit':<8} {'median ms':>10} {'p90 ms':>8} {'round trips':>12} {'requests':>9}")
    for kind, row in result["rows"].items():
        print(
            f"{kind:<8} {row['median_ms']:>10.1f} {row['p90_ms']:>8.1f} {row['round_trips']:>12.2f} {row['requests']:>9.0f}"
        )
    print(f"across / single: {result['ratio_across_to_single']:.2f}x")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
