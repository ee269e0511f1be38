"""Issue 21's two charts of `bench/scale.py` runs against the issue-12 figures, as SVG (no
plotting library: `svg_chart.line_chart`):

    .venv/bin/python bench/scale_svg.py OUT_DIR RUN.json [RUN.json ...]

* time to a compacted store (bulk load of pairs in random order, then `compact(full=True)`)
  against the store size;
* a cold get right after the bulk load, before any compaction.

Each RUN.json is a `bench/scale.py` result (local filesystem or LocalStack, by its
settings). The issue-12 baseline (2026-12-02, before compaction in steps and loads as
sorted runs) comes from `docs/img/scale-2026-12-02-summary.json`, transcribed from
the tables of docs/benchmarks.md, whose JSON was not kept.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from svg_chart import line_chart  # noqa: E402

BASELINE = HERE.parent / "docs" / "img" / "scale-2026-12-02-summary.json"


def points(runs: list[dict[str, Any]], backend: str) -> list[dict[str, float]]:
    """Per size of the runs on `backend`: GB, seconds to a compacted store, cold get (ms)."""
    rows = []
    for run in runs:
        if run["meta"]["settings"].get("backend", "file") != backend:
            continue
        for size in run["sizes"]:
            rows.append(
                {
                    "gb": size["gb"],
                    "seconds": size["load"]["seconds"] + size["compact"]["seconds"],
                    "cold_ms": size["gets_before_compaction"]["cold_p50_ms"],
                }
            )
    return sorted(rows, key=lambda r: r["gb"])


def main() -> None:
    out, paths = Path(sys.argv[1]), sys.argv[2:]
    runs = [json.loads(Path(p).read_text()) for p in paths]
    before = json.loads(BASELINE.read_text())
    dates = ", ".join(sorted({run["meta"]["date"][:10] for run in runs}))
    charts = {
        "scale-time-to-compacted.svg": ("seconds", "time to a compacted store (s): bulk load + full compaction"),
        "scale-cold-get-after-load.svg": ("cold_ms", "cold get right after the bulk load (ms, p50)"),
    }
    for name, (field, y_label) in charts.items():
        series = []
        for n, backend in enumerate(("file", "s3")):
            where = "local filesystem" if backend == "file" else "LocalStack"
            old = [(r["gb"], r[field]) for r in before[backend]]
            new = [(r["gb"], r[field]) for r in points(runs, backend)]
            series.append((f"{where}, issue 12 (2026-12-02)", old, True, n))
            series.append((f"{where}, now ({dates})", new, False, n))
        svg = line_chart(
            [s for s in series if s[1]],
            title=y_label.split(" (")[0] + ", before and after issue 21",
            x_label="logical data (GB)",
            y_label=y_label,
        )
        out.mkdir(parents=True, exist_ok=True)
        (out / name).write_text(svg)
        print(f"wrote {out / name}")


if __name__ == "__main__":
    main()
