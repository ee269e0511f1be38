"""Write and space amplification of compaction policies, simulated on key sets (issue 12).

    .venv/bin/python bench/policy_model.py [--commits 3000] [--keys 200000] [--batch 500] [--out FILE.json]

A model, not a run of kvstore: every commit writes `--batch` keys drawn at random from a
key space of `--keys` (updates of existing keys become frequent as the store fills), and
each policy keeps its sources as sets of keys. It counts the entries each policy writes
(commit segments included) per entry committed (write amplification, WA) and the entries
it stores per distinct live key (space amplification, SA), at the end and at worst.

* tiered F: kvstore's policy. Commits are level-0 sources; a level of F sources is merged
  into one source of the next level (a merge of the fullest due level first).
* leveled T: the RocksDB/SlateDB-style alternative. Level 0 holds up to 4 commit
  segments, merged with all of level 1 (random keys overlap all of it); level i >= 1
  holds at most 4 * batch * T**i entries; past that, a key range holding the excess
  moves down and rewrites the overlapping part of level i + 1.

Prints a table and writes JSON. The real kvstore figures for the chosen policy (tiered 8)
are in bench/scale.py and bench/long_lived.py.
"""

from __future__ import annotations

import argparse
import json
import random
from bisect import bisect_left
from pathlib import Path
from typing import Any


def tiered(commits: list[list[int]], fanout: int) -> dict[str, float]:
    levels: list[list[set[int]]] = []
    return _run(commits, lambda batch, stats: _tiered_step(levels, batch, fanout, stats), lambda: levels_size(levels))


def levels_size(levels: list[list[set[int]]]) -> int:
    return sum(len(s) for level in levels for s in level)


def _tiered_step(levels: list[list[set[int]]], batch: set[int], fanout: int, stats: dict[str, int]) -> None:
    if not levels:
        levels.append([])
    levels[0].append(batch)
    while True:
        due = [(len(level), -i) for i, level in enumerate(levels) if len(level) >= fanout]
        if not due:
            return
        i = -max(due)[1]
        merged = set().union(*levels[i])
        stats["written"] += len(merged)
        levels[i] = []
        if i + 1 == len(levels):
            levels.append([])
        levels[i + 1].append(merged)


def leveled(commits: list[list[int]], ratio: int, batch_size: int) -> dict[str, float]:
    l0: list[set[int]] = []
    levels: list[list[int]] = []  # sorted keys of levels 1..n

    def step(batch: set[int], stats: dict[str, int]) -> None:
        l0.append(batch)
        if len(l0) < 4:
            return
        if not levels:
            levels.append([])
        merged = sorted(set().union(*l0, levels[0]))
        stats["written"] += len(merged)
        levels[0] = merged
        l0.clear()
        for i, keys in enumerate(levels):
            cap = 4 * batch_size * ratio ** (i + 1)
            if len(keys) <= cap:
                break
            excess = len(keys) - cap
            start = random.Random(i * 7919 + len(keys)).randrange(0, len(keys) - excess + 1)
            moved = keys[start : start + excess]  # a key range holding the excess
            if i + 1 == len(levels):
                levels.append([])
            below = levels[i + 1]
            lo, hi = bisect_left(below, moved[0]), bisect_left(below, moved[-1] + 1)
            rewritten = sorted(set(moved).union(below[lo:hi]))
            stats["written"] += len(rewritten)
            levels[i + 1] = below[:lo] + rewritten + below[hi:]
            levels[i] = keys[:start] + keys[start + excess :]

    return _run(commits, step, lambda: sum(map(len, l0)) + sum(map(len, levels)))


def _run(commits: list[list[int]], step: Any, stored: Any) -> dict[str, float]:
    stats = {"written": 0}
    live: set[int] = set()
    committed = 0
    worst_sa = 0.0
    for keys in commits:
        batch = set(keys)
        committed += len(batch)
        stats["written"] += len(batch)  # the commit's own segment
        live |= batch
        step(batch, stats)
        worst_sa = max(worst_sa, stored() / len(live))
    return {
        "write_amplification": stats["written"] / committed,
        "space_amplification_end": stored() / len(live),
        "space_amplification_worst": worst_sa,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--commits", type=int, default=3000)
    ap.add_argument("--keys", type=int, default=200_000)
    ap.add_argument("--batch", type=int, default=500)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    rnd = random.Random(args.seed)
    commits = [[rnd.randrange(args.keys) for _ in range(args.batch)] for _ in range(args.commits)]
    rows = {f"tiered {f}": tiered(commits, f) for f in (4, 8)}
    rows.update({f"leveled {t}": leveled(commits, t, args.batch) for t in (4, 10)})
    print(
        f"{args.commits} commits of {args.batch} random keys out of {args.keys:,} "
        f"({args.commits * args.batch / args.keys:.1f} writes per key)"
    )
    print("| policy | write amplification | space amplification (end) | space amplification (worst) |")
    print("|---|---:|---:|---:|")
    for name, r in rows.items():
        print(
            f"| {name} | {r['write_amplification']:.2f} | {r['space_amplification_end']:.2f} "
            f"| {r['space_amplification_worst']:.2f} |"
        )
    if args.out:
        Path(args.out).write_text(json.dumps({"settings": vars(args), "policies": rows}, indent=2))


if __name__ == "__main__":
    main()
