"""The chart of a benchmark run: latency percentiles per load, and deliveries/s against the baseline.

    .venv/bin/python bench/charts.py bench/results.json [-o bench/chart.png]

`bench/run.py` writes bench/results.json and calls this at the end of every run (a failed budget
included); run it alone to redraw the chart from a results file. It also prints the figures as a
Markdown table, the one in the README.

The results file (see `scenarios()` in bench/run.py):

    {"machine": {"cpus": 2, "load_before": [..], "load_after": [..]}, "quick": true, "runs": 1,
     "scenarios": [{"name": "fanout", "load": "4×10×8/s",
                    "p50": 3.1, "p95": 9.0, "p99": 15.2, "deliveries_per_s": 3180.0,
                    "baseline": {"p50": .., "p95": .., "p99": .., "deliveries_per_s": ..}}, ...]}

Any figure may be missing or null (a scenario with no baseline, a script without p95, a benchmark
that did not finish): it is left out of the chart and shown as "-" in the table.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
PERCENTILES = ("p50", "p95", "p99")
# 1200 x 560 pixels: wide enough for a dozen loads, small enough to sit beside the README table.
SIZE_IN = (12.0, 5.6)
DPI = 100


def figure(value: Any) -> float | None:
    """A number to draw, or None for a missing, null or NaN one (json.dumps writes NaN as NaN)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return None if math.isnan(value) or math.isinf(value) else float(value)


def label(s: dict[str, Any]) -> str:
    return f"{s.get('name', '?')}\n{s.get('load', '')}".strip()


def draw(results: dict[str, Any], out: Path) -> Path:
    # Agg before pyplot: benchmarks run on machines without a display.
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scenarios = results.get("scenarios") or []
    fig, (lat_ax, del_ax) = plt.subplots(1, 2, figsize=SIZE_IN, dpi=DPI)

    labels = [label(s) for s in scenarios]
    width = 0.8 / len(PERCENTILES)
    drawn = False
    for i, p in enumerate(PERCENTILES):
        xs, ys = [], []
        for x, s in enumerate(scenarios):
            v = figure(s.get(p))
            if v is not None and v > 0:
                xs.append(x + (i - 1) * width)
                ys.append(v)
        if xs:
            lat_ax.bar(xs, ys, width, label=p)
            drawn = True
    lat_ax.set_title("Latency percentiles per load (the project)")
    lat_ax.set_ylabel("ms")
    lat_ax.set_xticks(range(len(labels)), labels, fontsize=8)
    if drawn:
        # Wake-ups of hundreds of waiters and single deliveries differ by orders of magnitude.
        lat_ax.set_yscale("log")
        lat_ax.legend(fontsize=8)
    else:
        _empty(lat_ax, "no latency figures")

    rated = [s for s in scenarios if figure(s.get("deliveries_per_s")) is not None]
    del_labels = [label(s) for s in rated]
    for x, s in enumerate(rated):
        ours = figure(s["deliveries_per_s"])
        base = figure((s.get("baseline") or {}).get("deliveries_per_s"))
        del_ax.bar(x - 0.2, ours, 0.4, color="C0", label="project" if x == 0 else None)
        if base is None:
            del_ax.text(
                x + 0.2, 0, "no baseline", rotation=90, ha="center", va="bottom", fontsize=8
            )
        else:
            del_ax.bar(x + 0.2, base, 0.4, color="C7", label="baseline (no Django)")
    del_ax.set_title("Deliveries/s against the no-Django baseline")
    del_ax.set_ylabel("deliveries/s")
    del_ax.set_xticks(range(len(del_labels)), del_labels, fontsize=8)
    if rated:
        # One legend entry per series, whichever bar drew it first.
        handles, names = del_ax.get_legend_handles_labels()
        unique = dict(zip(names, handles, strict=True))
        del_ax.legend(unique.values(), unique.keys(), fontsize=8)
    else:
        _empty(del_ax, "no delivery figures")

    fig.suptitle(subtitle(results), fontsize=9)
    # A fixed layout, not bbox_inches="tight": the file's size stays the same from run to run.
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png")
    plt.close(fig)
    return out


def _empty(ax: Any, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes)
    ax.set_xticks([])
    ax.set_yticks([])


def subtitle(results: dict[str, Any]) -> str:
    machine = results.get("machine") or {}
    parts = [results.get("date", "")]
    if machine.get("cpus"):
        parts.append(f"{machine['cpus']} CPUs")
    loads = [machine.get("load_before"), machine.get("load_after")]
    if all(loads):
        parts.append(f"load average {loads[0][0]:.2f} before, {loads[1][0]:.2f} after")
    if results.get("runs"):
        parts.append(
            f"medians of {results['runs']} run(s)" + (", quick" if results.get("quick") else "")
        )
    return "; ".join(p for p in parts if p)


def markdown_table(results: dict[str, Any]) -> str:
    def cell(v: Any, digits: int) -> str:
        v = figure(v)
        return "-" if v is None else f"{v:,.{digits}f}"

    lines = [
        "| scenario | load | p50 ms | p95 ms | p99 ms | deliveries/s | baseline deliveries/s |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for s in results.get("scenarios") or []:
        base = s.get("baseline") or {}
        lines.append(
            f"| {s.get('name', '?')} | {s.get('load', '')} | {cell(s.get('p50'), 1)} "
            f"| {cell(s.get('p95'), 1)} | {cell(s.get('p99'), 1)} "
            f"| {cell(s.get('deliveries_per_s'), 0)} | {cell(base.get('deliveries_per_s'), 0)} |"
        )
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("results", type=Path, help="the results file (bench/run.py writes one)")
    ap.add_argument("-o", "--output", type=Path, default=HERE / "chart.png")
    args = ap.parse_args()
    results = json.loads(args.results.read_text())
    print(f"chart: {draw(results, args.output)}")
    print(subtitle(results))
    print(markdown_table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
