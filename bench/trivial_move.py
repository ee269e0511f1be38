"""Compaction that moves what it need not rewrite (issue 21, item 2), against the same
compaction with moves turned off, in the same invocation.

    .venv/bin/python bench/trivial_move.py [--pairs 2400000] [--commits 20] [--out bench/results/trivial-move.json]

The issue's case scaled to this machine: `--pairs` pairs (16-byte keys, 100-byte random
values) bulk-loaded in key order on the local filesystem (one segment per 64 MiB chunk),
then `--commits` small commits of one key each, then `compact(full=True)`. Two placements
of the small commits: "append" (new keys after the loaded ones: a log, a time series) and
"inside" (keys drawn at random from the loaded range: they overlap most segments, so most
must still be rewritten). Each with moves on ("move") and off ("rewrite", the baseline:
`kvstore._compact.movable` patched to refuse everything, which is the code before moves).
Prints a table (compaction time, its ratio to the load time, segments moved, bytes written,
write amplification) and writes JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import kvstore  # noqa: E402
from kvstore import _compact  # noqa: E402

KEY_BYTES, VALUE_BYTES = 16, 100


def sorted_pairs(count: int, seed: int) -> Iterator[tuple[bytes, bytes]]:
    """`count` pairs in ascending key order (keys 0..count-1, zero-padded), random values."""
    rng = random.Random(seed)
    batch = 10_000
    for start in range(0, count, batch):
        n = min(batch, count - start)
        values = rng.randbytes(VALUE_BYTES * n)
        for i in range(n):
            yield b"%016d" % (start + i), values[i * VALUE_BYTES : (i + 1) * VALUE_BYTES]


async def one_run(root: Path, pairs: int, commits: int, placement: str, moves: bool) -> dict[str, Any]:
    real = _compact.movable
    if not moves:
        _compact.movable = lambda *args, **kwargs: False
    try:
        options = kvstore.StoreOptions(auto_compact=False)
        async with kvstore.open(str(root / f"{placement}-{moves}"), options=options) as db:
            t0 = time.perf_counter()
            await db.bulk_load(sorted_pairs(pairs, seed=1))
            load = time.perf_counter() - t0
            loaded = (await db.describe()).segments
            rng = random.Random(2)
            for i in range(commits):
                key = b"%016d" % (pairs + i if placement == "append" else rng.randrange(pairs))
                await db.put(key, b"small commit %d" % i)
            t0 = time.perf_counter()
            [result] = await db.compact(full=True)
            compact = time.perf_counter() - t0
            info = await db.describe()
            assert await db.get(b"%016d" % (pairs // 2)) is not None  # reads back
    finally:
        _compact.movable = real
    return {
        "placement": placement,
        "moves": moves,
        "pairs": pairs,
        "load_seconds": load,
        "segments_loaded": loaded,
        "compact_seconds": compact,
        "compact_to_load": compact / load,
        "inputs": result.inputs,
        "moved": result.moved,
        "outputs": result.outputs,
        "bytes_in": result.bytes_in,
        "bytes_written": result.bytes_written,
        "bytes_out": result.bytes_out,
        "write_amplification": result.write_amplification,
        "described_write_amplification": info.last_compaction_write_amplification,
    }


def render(runs: list[dict[str, Any]]) -> str:
    head = (
        "| commits | compaction | load s | compact s | compact / load | vs rewrite "
        "| moved / inputs | MB written | write amp. |\n|---|---|---|---|---|---|---|---|---|"
    )
    lines = [head]
    base = {r["placement"]: r["compact_seconds"] for r in runs if not r["moves"]}
    for r in runs:
        lines.append(
            f"| {r['placement']} | {'move' if r['moves'] else 'rewrite (baseline)'} | {r['load_seconds']:.1f} "
            f"| {r['compact_seconds']:.2f} | {r['compact_to_load']:.2f}x "
            f"| {r['compact_seconds'] / base[r['placement']]:.2f}x | {r['moved']} / {r['inputs']} "
            f"| {r['bytes_written'] / 1e6:.1f} | {r['write_amplification']:.3f} |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", type=int, default=2_400_000)
    ap.add_argument("--commits", type=int, default=20)
    ap.add_argument("--out", type=Path, default=HERE / "results" / "trivial-move.json")
    args = ap.parse_args()
    runs = []
    with tempfile.TemporaryDirectory(prefix="kvstore-trivial-move-") as tmp:
        for placement in ("append", "inside"):
            for moves in (False, True):  # the baseline first, in the same invocation
                runs.append(asyncio.run(one_run(Path(tmp), args.pairs, args.commits, placement, moves)))
                print(
                    f"  {placement} {'move' if moves else 'rewrite'}: {runs[-1]['compact_seconds']:.2f} s", flush=True
                )
    table = render(runs)
    print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"runs": runs, "table": table}, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
