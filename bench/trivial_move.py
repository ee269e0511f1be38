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
For "inside" with moves, a last row estimates block copy (copying a rewritten segment's
blocks that hold no commit key as compressed bytes, item 2's second half, not built) from
parts measured on the same store (`block_copy_estimate`).
Prints a table (compaction time, its ratio to the load time, segments moved, bytes written,
write amplification) and writes JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
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
            keys = [b"%016d" % (pairs + i if placement == "append" else rng.randrange(pairs)) for i in range(commits)]
            for i, key in enumerate(keys):
                await db.put(key, b"small commit %d" % i)
            copy = block_copy_estimate(root / f"{placement}-{moves}", keys) if moves and placement == "inside" else None
            t0 = time.perf_counter()
            [result] = await db.compact(full=True)
            compact = time.perf_counter() - t0
            info = await db.describe()
            assert await db.get(b"%016d" % (pairs // 2)) is not None  # reads back
    finally:
        _compact.movable = real
    if copy is not None:
        # Blocks holding a commit key are merged as now (a share of this compaction's time,
        # which is all rewriting: moves cost nothing); the rest is read, checked and copied.
        copy["estimate_seconds"] = (
            copy["decode_seconds"] + copy["copy_seconds"] + compact * copy["blocks_merged"] / copy["blocks"]
        )
    return {
        "block_copy_estimate": copy,
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


def block_copy_estimate(store: Path, commit_keys: list[bytes]) -> dict[str, Any]:
    """What copying blocks as compressed bytes (issue 21, item 2; not built) would leave of
    the compaction's rewrite, from measured parts. A loaded segment that a commit key falls
    into cannot be moved, so it is rewritten now; of its blocks, those holding no commit key
    could be copied as they are. Measured here: decoding every such block and checking it
    needs no retention work (no tombstone, one version per key: what a copy would still
    have to establish), and copying the segments' bytes to new files (the I/O of a copy)."""
    from kvstore._segment import FOOTER, decode_block, parse_footer, parse_index, parse_partition

    keys = sorted(commit_keys)
    out = {"segments": 0, "blocks": 0, "blocks_merged": 0, "decode_seconds": 0.0, "copy_seconds": 0.0, "bytes": 0}
    for path in sorted(p for p in (store / "segments").rglob("*") if p.is_file() and p.stat().st_size > 1 << 20):
        data = path.read_bytes()
        name = path.name
        footer = parse_footer(data[-FOOTER.size :], name)
        top, _ = parse_index(data[footer.index_offset : footer.index_offset + footer.index_length], footer, name)
        if not any(top.first_keys[0] <= k <= top.last_keys[-1] for k in keys):
            continue  # a segment compaction moves
        out["segments"] += 1
        for p in range(len(top.offsets)):
            start, end = top.span(p)
            part = parse_partition(data[start:end], top, p, name)
            for i, (first, last) in enumerate(zip(part.first_keys, part.last_keys, strict=True)):
                out["blocks"] += 1
                if any(first <= k <= last for k in keys):
                    out["blocks_merged"] += 1
                    continue
                t0 = time.perf_counter()
                block = decode_block(data[part.offsets[i] : part.offsets[i] + part.lengths[i]], name, i)
                if None in block.values or (block.versions is not None and len(set(block.keys)) < len(block.keys)):
                    raise AssertionError("a loaded block needs retention work")
                out["decode_seconds"] += time.perf_counter() - t0
        t0 = time.perf_counter()
        copy = path.with_name(name + ".copy")
        with open(copy, "wb") as f:
            f.write(path.read_bytes())
            os.fsync(f.fileno())  # as the local backend's PUT does
        out["copy_seconds"] += time.perf_counter() - t0
        out["bytes"] += len(data)
        copy.unlink()
    return out


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
    for r in runs:
        est = r["block_copy_estimate"]
        if est is not None:
            lines.append(
                f"| {r['placement']} | block copy (estimate, not built) | {r['load_seconds']:.1f} "
                f"| {est['estimate_seconds']:.2f} | {est['estimate_seconds'] / r['load_seconds']:.2f}x "
                f"| {est['estimate_seconds'] / base[r['placement']]:.2f}x | {r['moved']} / {r['inputs']} "
                f"| {est['bytes'] / 1e6:.1f} | - |"
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
