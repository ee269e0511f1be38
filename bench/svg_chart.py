"""A small line chart written as SVG text, with no plotting library (the project's bench
environment has no matplotlib; docs/ keeps the result).

    svg = line_chart(series, title=..., x_label=..., y_label=...)

`series` is a list of (label, [(x, y), ...], dashed, color index). Axes start at 0; ticks are round
numbers; a legend sits at the top inside the plot, `legend_x` of its width from the left.
"""

from __future__ import annotations

import math
from html import escape

WIDTH, HEIGHT = 720, 440
LEFT, RIGHT, TOP, BOTTOM = 70, 20, 40, 55
COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b"]


def _nice_step(span: float, ticks: int = 5) -> float:
    """A round tick step (1, 2 or 5 times a power of ten) giving about `ticks` ticks."""
    raw = span / ticks if span > 0 else 1.0
    power = 10 ** math.floor(math.log10(raw))
    return next(m * power for m in (1, 2, 5, 10) if m * power >= raw)


def _fmt(v: float) -> str:
    return f"{v:g}" if abs(v) < 1e4 else f"{v:,.0f}"


def line_chart(
    series: list[tuple[str, list[tuple[float, float]], bool, int]],
    *,
    title: str,
    x_label: str,
    y_label: str,
    x_suffix: str = "",
    legend_x: float = 0.02,
) -> str:
    """The SVG document of a line chart of `series` (label, points, dashed, color index)."""
    xs = [x for _, pts, _, _ in series for x, _ in pts] or [1.0]
    ys = [y for _, pts, _, _ in series for _, y in pts] or [1.0]
    x_step, y_step = _nice_step(max(xs)), _nice_step(max(ys))
    x_max = math.ceil(max(xs) / x_step) * x_step or 1.0
    y_max = math.ceil(max(ys) * 1.08 / y_step) * y_step or 1.0
    pw, ph = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def px(x: float) -> float:
        return LEFT + pw * x / x_max

    def py(y: float) -> float:
        return TOP + ph * (1 - y / y_max)

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
        f'viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">',
        f'<rect width="{WIDTH}" height="{HEIGHT}" fill="white"/>',
        f'<text x="{WIDTH / 2}" y="22" text-anchor="middle" font-size="15">{escape(title)}</text>',
    ]
    y = 0.0
    while y <= y_max + 1e-9:
        out.append(f'<line x1="{LEFT}" x2="{LEFT + pw}" y1="{py(y):.1f}" y2="{py(y):.1f}" stroke="#e5e5e5"/>')
        out.append(f'<text x="{LEFT - 6}" y="{py(y) + 4:.1f}" text-anchor="end">{_fmt(y)}</text>')
        y += y_step
    x = 0.0
    while x <= x_max + 1e-9:
        out.append(f'<line x1="{px(x):.1f}" x2="{px(x):.1f}" y1="{TOP + ph}" y2="{TOP + ph + 4}" stroke="black"/>')
        out.append(f'<text x="{px(x):.1f}" y="{TOP + ph + 18}" text-anchor="middle">{_fmt(x)}{x_suffix}</text>')
        x += x_step
    out.append(f'<rect x="{LEFT}" y="{TOP}" width="{pw}" height="{ph}" fill="none" stroke="black"/>')
    out.append(f'<text x="{LEFT + pw / 2}" y="{HEIGHT - 12}" text-anchor="middle">{escape(x_label)}</text>')
    out.append(
        f'<text x="16" y="{TOP + ph / 2}" text-anchor="middle" transform="rotate(-90 16 {TOP + ph / 2})">'
        f"{escape(y_label)}</text>"
    )
    for n, (label, pts, dashed, c) in enumerate(series):
        color = COLORS[c % len(COLORS)]
        dash = ' stroke-dasharray="6 4"' if dashed else ""
        path = " ".join(f"{px(a):.1f},{py(b):.1f}" for a, b in sorted(pts))
        out.append(f'<polyline points="{path}" fill="none" stroke="{color}" stroke-width="2"{dash}/>')
        out.extend(f'<circle cx="{px(a):.1f}" cy="{py(b):.1f}" r="3" fill="{color}"/>' for a, b in pts)
        ly, lx = TOP + 16 + 17 * n, LEFT + pw * legend_x
        out.append(
            f'<line x1="{lx + 10:.1f}" x2="{lx + 36:.1f}" y1="{ly - 4}" y2="{ly - 4}" stroke="{color}" '
            f'stroke-width="2"{dash}/>'
        )
        out.append(f'<text x="{lx + 42:.1f}" y="{ly}">{escape(label)}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"
