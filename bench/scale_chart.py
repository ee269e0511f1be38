"""Charts of a `bench/scale.py` run, one panel per question, store size on the x axis.
Runs in bench/.venv-peers (matplotlib):

    bench/.venv-peers/bin/python bench/scale_chart.py bench/results/scale-<date>.json docs/bench-scale.png
"""

from __future__ import annotations

import json
import sys
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

MiB = 1024 * 1024


def main() -> None:
    src, dst = sys.argv[1], sys.argv[2]
    doc = json.load(open(src))
    sizes = [s for s in doc["sizes"] if "compact" in s and s["compact"].get("results")]
    gb = [s["gb"] for s in sizes]
    fig, axes = plt.subplots(1, 4, figsize=(22, 4.8))
    memory(axes[0], gb, sizes)
    rates(axes[1], gb, sizes)
    ratios(axes[2], gb, sizes)
    gets(axes[3], gb, sizes)
    backend = doc["meta"]["settings"].get("backend", "file")
    fig.suptitle(f"kvstore at scale ({backend} backend, 2 vCPU): each figure against its baseline of the same run")
    fig.tight_layout()
    fig.savefig(dst, dpi=110)


def _axis(ax: Any, title: str, ylabel: str) -> None:
    ax.set_title(title)
    ax.set_xlabel("logical data (GB)")
    ax.set_ylabel(ylabel)
    ax.set_xscale("log")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)


def memory(ax: Any, gb: list[float], sizes: list[dict[str, Any]]) -> None:
    for phase, style in (("load", "o-"), ("compact", "s-"), ("reads", "^-")):
        ax.plot(gb, [s[phase]["peak_rss"] / MiB for s in sizes], style, label=f"{phase} peak RSS")
    ax.axhline(1024, color="red", linestyle="--", label="target: compaction <= 1 GiB")
    _axis(ax, "Peak RSS per phase (own process)", "MiB")


def rates(ax: Any, gb: list[float], sizes: list[dict[str, Any]]) -> None:
    ax.plot(gb, [s["load"]["mb_per_s"] for s in sizes], "o-", label="bulk load")
    ax.plot(gb, [s["logical_bytes"] / s["compact"]["seconds"] / 1e6 for s in sizes], "s-", label="full compaction")
    ax.plot(gb, [s["raw"]["best_mb_per_s"] for s in sizes], "k:", label="raw write bandwidth (baseline)")
    ax.set_yscale("log")
    _axis(ax, "Throughput (logical MB/s)", "MB/s")


def ratios(ax: Any, gb: list[float], sizes: list[dict[str, Any]]) -> None:
    ax.plot(
        gb,
        [s["compact"]["seconds"] / s["load"]["seconds"] for s in sizes],
        "s-",
        label="compaction time / bulk-load time (target <= 1.5)",
    )
    ax.plot(
        gb,
        [s["reads"]["commits"]["p50_ms"] / s["reads"]["commits_empty_store"]["p50_ms"] for s in sizes],
        "o-",
        label="commit latency / empty store's (target <= 1.2)",
    )
    ax.plot(
        gb,
        [s["reads"]["cold_p50_ms"] / s["reads"]["small_store"]["cold_p50_ms"] for s in sizes],
        "^-",
        label="cold get / small store's (target <= 1.2)",
    )
    ax.axhline(1.0, color="grey", linewidth=0.8)
    _axis(ax, "Ratios to the baselines", "x")


def gets(ax: Any, gb: list[float], sizes: list[dict[str, Any]]) -> None:
    ax.plot(gb, [s["reads"]["cold_p50_ms"] for s in sizes], "^-", label="cold get p50")
    floor = [(s["reads"]["cold_segment_gets_max"] + 1) * s["raw"]["get"]["p50_ms"] for s in sizes]
    ax.plot(gb, floor, "k:", label="raw GET floor (GETs made x raw 64 KiB GET)")
    ax.plot(gb, [s["reads"]["warm_p50_ms"] for s in sizes], "o-", label="warm get p50")
    ax.set_yscale("log")
    _axis(ax, "Point reads on the compacted store", "ms")


if __name__ == "__main__":
    main()
