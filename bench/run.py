"""Run the benchmarks in sequence and print a budget summary (`make bench`).

    .venv/bin/python bench/run.py                      # every benchmark below; 3 runs each
    .venv/bin/python bench/run.py --quick              # 1 run each, shorter, fewer requests
    .venv/bin/python bench/run.py --only fanout,longpoll
    .venv/bin/python bench/run.py --runs 5

Each script runs in its own process and also works alone (see its --help). Traffic goes only to
127.0.0.1 (PostgreSQL, Redis, and servers the scripts start and stop). Exit status 1 if a budget fails.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common

HERE = Path(__file__).resolve().parent
SCRIPTS = (
    "history",
    "search",
    "fanout",
    "fanout_notify",
    "longpoll",
    "longpoll_serverless",
    "serverless_fanout",
    "cold_start",
)
# Benchmarks that are another script with other arguments.
SOURCES = {"longpoll_serverless": "longpoll", "fanout_notify": "fanout"}
# These print their own figures and budgets (no --json file of budgets).
PLAIN = ("serverless_fanout", "cold_start")


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--only", default=",".join(SCRIPTS), help="comma-separated subset of " + ", ".join(SCRIPTS)
    )
    ap.add_argument("--quick", action="store_true", help="1 run each, shorter durations")
    ap.add_argument("--runs", type=int, help="runs per measurement (default 3, quick 1)")
    args = ap.parse_args()
    runs = args.runs or (1 if args.quick else 3)
    extra = {
        "history": ["--runs", str(runs)] + (["--seconds", "3"] if args.quick else []),
        "fanout": ["--runs", str(runs)] + (["--seconds", "5"] if args.quick else []),
        # Two-word searches over 1,000,000 messages: p99 ≤ 50 ms (bench/search.py).
        "search": ["--runs", str(runs)] + (["--requests", "100"] if args.quick else []),
        # The user's stream: 200 members, 10 with the room open, rounds of notifications on/off.
        "fanout_notify": ["--notify", "--runs", str(runs)]
        + (["--seconds", "5"] if args.quick else []),
        "longpoll": ["--runs", str(runs)],
        # The same script on the local gateway (Lambda's LISTEN/NOTIFY wait), 100 waiters.
        "longpoll_serverless": ["--serverless", "--waiters", "100", "--runs", str(runs)],
        "serverless_fanout": ["--runs", str(runs)],
        "cold_start": ["--runs", str(runs)],
    }
    chosen = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = set(chosen) - set(SCRIPTS)
    if unknown:
        ap.error(f"unknown benchmark(s): {', '.join(sorted(unknown))}")

    budgets: list[dict] = []
    failed_scripts = []
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
                budgets.extend(json.loads(out.read_text())["budgets"])
            if proc.returncode not in (0, 1) or (name not in PLAIN and not out.exists()):
                failed_scripts.append(name)

    print("\n=== Summary (medians of runs; loss counts are the worst run)")
    common.print_budgets(budgets)
    if failed_scripts:
        print(f"benchmarks that did not finish: {', '.join(failed_scripts)}")
    ok = all(b["ok"] for b in budgets) and not failed_scripts
    print(f"\n{sum(b['ok'] for b in budgets)}/{len(budgets)} budgets pass")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
