"""Run the benchmarks in sequence and print a budget summary (`make bench`).

    .venv/bin/python bench/run.py                      # every benchmark below; 3 runs each
    .venv/bin/python bench/run.py --quick              # 1 run each, shorter, fewer requests
    .venv/bin/python bench/run.py --only fanout,longpoll
    .venv/bin/python bench/run.py --runs 5

Each script runs in its own process and also works alone (see its --help). Traffic goes only to
127.0.0.1 (PostgreSQL, Redis, and servers the scripts start and stop). Exit status 1 if a budget fails.

At the end, failed budgets or not, the medians per scenario and load go to bench/results.json and
bench/charts.py draws them as bench/chart.png (--results and --chart to write elsewhere).
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import charts
import common

HERE = Path(__file__).resolve().parent
SCRIPTS = (
    "history",
    "posting",
    "search",
    "fanout",
    "fanout_notify",
    "processes",
    "longpoll",
    "longpoll_serverless",
    "serverless_fanout",
    "cold_start",
    "sockets",
)
# Benchmarks that are another script with other arguments.
SOURCES = {"longpoll_serverless": "longpoll", "fanout_notify": "fanout"}
# These print their own figures and budgets (no --json file of budgets).
PLAIN = ("serverless_fanout", "cold_start")


def scenarios(name: str, data: dict[str, Any]) -> list[dict[str, Any]]:
    """The chart's figures (bench/charts.py) from one script's --json file: per load, the
    project's latency percentiles and deliveries/s, and the baseline's when the script has one."""
    keys = ("p50", "p95", "p99", "deliveries_per_s")
    if name == "fanout":
        out = []
        for key, by_target in data.get("summary", {}).items():
            chat, base = by_target.get("chat"), by_target.get("baseline")
            if chat is None:
                continue
            # Keys are ROOMSxCLIENTSxRATE (bench/fanout.py's loads).
            rooms, clients, rate = key.split("x")
            out.append(
                {
                    "name": name,
                    "load": f"{rooms}×{clients}×{rate}/s",
                    **{k: chat.get(k) for k in keys},
                    "baseline": {k: base.get(k) for k in keys} if base else None,
                }
            )
        return out
    if name == "fanout_notify":
        medians = data.get("summary", {}).get("medians", {})
        return [
            {
                "name": name,
                "load": f"notify {mode}",
                "p50": m.get("room_p50"),
                "p99": m.get("room_p99"),
                "deliveries_per_s": m.get("room_per_s"),
                "baseline": None,
            }
            for mode, m in medians.items()
        ]
    if name == "processes":
        summary = data.get("summary", {})
        med = summary.get("median")
        if not med:
            return []
        n = summary.get("processes")
        count = {1: "one process", 2: "two processes"}.get(n, f"{n} processes")
        shape = f"{summary.get('rooms')}×{summary.get('clients')}×{summary.get('rate'):g}/s"
        return [
            {
                "name": name,
                "load": f"{shape}, {count}",
                **{k: med.get(k) for k in keys},
                "baseline": None,
            }
        ]
    if name == "sockets":
        # The fan-out load with thousands of idle sockets open on the same process.
        summary = data.get("summary", {})
        if not summary:
            return []
        return [
            {
                "name": name,
                "load": summary.get("load", "?"),
                **{k: summary.get(k) for k in keys},
                "baseline": None,
            }
        ]
    if name == "search":
        # The view's time per request (what a client waits for, less the network), per band of
        # two-word queries; the label stays short enough to sit under its bars.
        total = data.get("messages")
        over = ""
        if isinstance(total, int):
            over = f", {total / 1e6:g}M msgs" if total >= 1e6 else f", {total / 1e3:g}k msgs"
        out = []
        for band, runs in data.get("search", {}).items():
            if not runs:
                continue
            out.append(
                {
                    "name": name,
                    "load": f"{band} queries{over}",
                    **{
                        p: common.median(r.get(f"view_{p}", math.nan) for r in runs)
                        for p in ("p50", "p95", "p99")
                    },
                    "baseline": None,
                }
            )
        return out
    if name in ("longpoll", "longpoll_serverless"):
        med, runs = data.get("median", {}), data.get("runs") or [{}]
        return [
            {
                "name": name,
                "load": f"{runs[0].get('waiters', '?')} waiters",
                **{k: med.get(k) for k in ("p50", "p95", "p99")},
                "baseline": None,
            }
        ]
    return []


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--only", default=",".join(SCRIPTS), help="comma-separated subset of " + ", ".join(SCRIPTS)
    )
    ap.add_argument("--quick", action="store_true", help="1 run each, shorter durations")
    ap.add_argument("--runs", type=int, help="runs per measurement (default 3, quick 1)")
    ap.add_argument("--results", type=Path, default=HERE / "results.json")
    ap.add_argument("--chart", type=Path, default=HERE / "chart.png")
    args = ap.parse_args()
    runs = args.runs or (1 if args.quick else 3)
    extra = {
        "history": ["--runs", str(runs)] + (["--seconds", "3"] if args.quick else []),
        # 32 writer threads into one room through post_message: ≥ 3,000 messages/s, gap-free.
        "posting": ["--runs", str(runs)] + (["--seconds", "3"] if args.quick else []),
        "fanout": ["--runs", str(runs)] + (["--seconds", "5"] if args.quick else []),
        # Two-word searches over 1,000,000 messages: p99 ≤ 50 ms (bench/search.py).
        "search": ["--runs", str(runs)] + (["--requests", "100"] if args.quick else []),
        # The user's stream: 200 members, 10 with the room open, rounds of notifications on/off.
        "fanout_notify": ["--notify", "--runs", str(runs)]
        + (["--seconds", "5"] if args.quick else []),
        # Two server processes on one database and Redis, 4 rooms x 10 clients x 10 msg/s, the
        # clients of each room split between them: nothing lost, each message once, in order.
        "processes": ["--runs", str(runs)] + (["--seconds", "5"] if args.quick else []),
        "longpoll": ["--runs", str(runs)],
        # The same script on the local gateway (Lambda's LISTEN/NOTIFY wait), 100 waiters.
        "longpoll_serverless": ["--serverless", "--waiters", "100", "--runs", str(runs)],
        "serverless_fanout": ["--runs", str(runs)],
        "cold_start": ["--runs", str(runs)],
        # 10,000 idle sockets on one process (RSS ≤ 1 GB), then 4x10x10 with them open: one
        # server, `runs` rounds of the fan-out.
        "sockets": ["--rounds", str(runs)]
        + (["--seconds", "5", "--idle", "10"] if args.quick else []),
    }
    chosen = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = set(chosen) - set(SCRIPTS)
    if unknown:
        ap.error(f"unknown benchmark(s): {', '.join(sorted(unknown))}")

    budgets: list[dict] = []
    figures: list[dict[str, Any]] = []
    failed_scripts = []
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        for name in chosen:
            out = Path(tmp) / f"{name}.json"
            script = SOURCES.get(name, name)
            cmd = [sys.executable, str(HERE / f"{script}.py"), *extra[name]]
            if name not in PLAIN:
                cmd += ["--json", str(out)]
            print(f"\n=== {name}: {' '.join(cmd[1:])}", flush=True)
            t0 = time.monotonic()
            proc = subprocess.run(cmd, cwd=common.ROOT, check=False)
            print(
                f"=== {name} took {time.monotonic() - t0:.0f} s (exit {proc.returncode})",
                flush=True,
            )
            if out.exists():
                data = json.loads(out.read_text())
                budgets.extend(data["budgets"])
                figures.extend(scenarios(name, data))
            if proc.returncode not in (0, 1) or (name not in PLAIN and not out.exists()):
                failed_scripts.append(name)

    print("\n=== Summary (medians of runs; loss counts are the worst run)")
    common.print_budgets(budgets)
    if failed_scripts:
        print(f"benchmarks that did not finish: {', '.join(failed_scripts)}")
    ok = all(b["ok"] for b in budgets) and not failed_scripts
    print(f"\n{sum(b['ok'] for b in budgets)}/{len(budgets)} budgets pass")

    results = {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "quick": args.quick,
        "runs": runs,
        "machine": {
            "cpus": os.cpu_count(),
            "load_before": load_before,
            "load_after": os.getloadavg(),
        },
        "scenarios": figures,
        "budgets": budgets,
    }
    common.write_json(str(args.results), results)
    try:
        charts.draw(results, args.chart)
    # Whatever breaks the chart, the figures are written and the run says it failed.
    except Exception as exc:
        print(f"the chart was not drawn: {exc!r}")
        return 1
    print(f"figures: {args.results}, chart: {args.chart}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
