"""Commit throughput vs writers, from a results JSON (runs in bench/.venv-peers: matplotlib).

bench/.venv-peers/bin/python bench/chart.py bench/results/results.json out.png
"""

from __future__ import annotations

import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def series(lat: dict, key: str) -> dict[int, float]:
    return {int(w): v for w, v in lat.get("throughput", {}).get(key, {}).items() if v}


def main() -> None:
    src, dst = sys.argv[1], sys.argv[2]
    doc = json.load(open(src))
    latencies = doc["latency"]
    fig, axes = plt.subplots(1, len(latencies), figsize=(6.2 * len(latencies), 4.6), squeeze=False)
    styles = {
        "kvstore": ("kvstore (1 process)", "o-", "#1f77b4"),
        "naive": ("naive: 1 object per key, no transactions", "s--", "#7f7f7f"),
        "slatedb_default": ("SlateDB durable put, defaults", "^-", "#d62728"),
        "slatedb_tuned": ("SlateDB durable put, flush_interval 1 ms", "v-", "#ff7f0e"),
        "icechunk": ("Icechunk commit (rebase)", "D-", "#2ca02c"),
    }
    for ax, (lat_ms, lat) in zip(axes[0], latencies.items(), strict=False):
        for key, (label, fmt, color) in styles.items():
            s = series(lat, key)
            if s:
                xs = sorted(s)
                ax.plot(xs, [s[x] for x in xs], fmt, label=label, color=color)
        multi = lat.get("throughput", {}).get("multi", {})
        if multi.get("kvstore_4x16"):
            ax.plot([64], [multi["kvstore_4x16"]], "*", ms=14, color="#1f77b4", label="kvstore 4 processes x 16")
        if multi.get("icechunk_4x16"):
            ax.plot([64], [multi["icechunk_4x16"]], "P", ms=11, color="#2ca02c", label="Icechunk 4 processes x 16")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks([1, 8, 64])
        ax.set_xticklabels(["1", "8", "64"])
        ax.set_xlabel("concurrent writers")
        ax.set_ylabel("durable commits / s")
        ax.set_title(f"LocalStack S3, +{lat_ms} ms per request")
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].legend(fontsize=7.5, loc="upper left")
    meta = doc.get("meta", {})
    fig.suptitle(
        f"Commit throughput vs writers ({meta.get('mode', '')} run, {meta.get('date', '')}, "
        f"{meta.get('machine', {}).get('nproc', '?')} cores)",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(dst, dpi=110)


if __name__ == "__main__":
    main()
