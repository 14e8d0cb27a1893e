"""Several server processes on one PostgreSQL and Redis: R rooms x C clients, r messages/s each.

Each run starts --processes uvicorn processes (default 2) of chatsite.asgi with one environment:
the same bench database, the same Redis and the same channel-layer prefix, as servers behind one
load balancer would have. Each room's clients alternate between the processes (client 0 on the
first, client 1 on the second, ...), so every room has senders and readers on each of them: with
two, half the deliveries are of a message the other process wrote, which reaches the reader's
process only through Redis, in whatever order the two writers' publications arrive there.

The clients and their checks are bench/fanout.py's: every client must get every message of its
room, from its subscribe cursor to the room's last acknowledged seq, exactly once and in seq order,
and every send must be acknowledged. The budget is exactly that, in the worst run. Deliveries/s
(against the R x C x r x C demanded), latency percentiles, server CPU and RSS (summed over the
processes) and the machine's load average at the start and end of each run are printed alongside,
with each process's live events written to its sockets (the messages, and presence as clients come
and go) and gap fills (reads from the database because an event came too far ahead of a socket's
cursor), from its own /metrics.

    .venv/bin/python bench/processes.py [--processes 2] [--rooms 4] [--clients 10] [--rate 10]
                                        [--seconds 10] [--runs 3] [--json FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import secrets
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common
from fanout import COLUMNS, chat_urls, load

# What each run adds to fanout.py's columns.
EXTRA = [
    ("fills", "gap_fills", 0),
    ("load start", "load1_start", 2),
    ("load end", "load1_end", 2),
]
# Counts of what went wrong: the worst run, not the median.
FAULTS = ("lost", "duplicated", "out_of_order", "unacked")


def scrape(server: common.Server, token: str) -> dict[str, float]:
    """The process's own counters from /metrics: live events written to its sockets, and gap
    fills on its WebSockets."""
    from prometheus_client.parser import text_string_to_metric_families

    request = urllib.request.Request(
        f"{server.http_url}/metrics", headers={"Authorization": f"Bearer {token}"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        text = response.read().decode()
    out = {"live_events": 0.0, "gap_fills": 0.0}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "chat_deliveries_total":
                out["live_events"] = sample.value
            elif (
                sample.name == "chat_gap_fills_total"
                and sample.labels.get("transport") == "websocket"
            ):
                out["gap_fills"] = sample.value
    return out


def spread(per_server: list[list[list[str]]]) -> list[list[str]]:
    """Each room's clients, alternating between the servers: client i of every room on server
    i mod n, so that each room has senders and readers on every process."""
    n = len(per_server)
    rooms = per_server[0]
    return [[per_server[i % n][r][i] for i in range(len(rooms[r]))] for r in range(len(rooms))]


def one_run(args: argparse.Namespace) -> dict[str, Any]:
    token = secrets.token_hex(16)
    # One environment for every process: bench_env's channel-layer prefix is this bench process's,
    # so the servers share their groups (and presence) with one another and with nobody else.
    env = common.bench_env(
        CHAT_METRICS_TOKEN=token, **dict(kv.split("=", 1) for kv in args.server_env)
    )
    load_start = os.getloadavg()
    with contextlib.ExitStack() as stack:
        servers = [stack.enter_context(common.Server.uvicorn(env)) for _ in range(args.processes)]
        urls = spread([chat_urls(s, args.rooms, args.clients) for s in servers])
        before = [scrape(s, token) for s in servers]
        compression = None if args.no_compression else "deflate"
        result = asyncio.run(
            load(
                urls,
                args.rate,
                args.seconds,
                args.drain,
                compression,
                [s.pid for s in servers],
            )
        )
        # A process that died mid-run shows as loss; say which, rather than leave it to guess
        # (and do not ask it for its figures).
        exited = [i + 1 for i, s in enumerate(servers) if s.proc and s.proc.poll() is not None]
        after = [None if i + 1 in exited else scrape(s, token) for i, s in enumerate(servers)]
    load_end = os.getloadavg()
    per_process = [
        {key: a[key] - b[key] if a else math.nan for key in ("live_events", "gap_fills")}
        for a, b in zip(after, before, strict=True)
    ]
    return {
        **result,
        "processes": per_process,
        "gap_fills": sum(p["gap_fills"] for p in per_process),
        "exited": exited,
        "load_start": list(load_start),
        "load_end": list(load_end),
        "load1_start": load_start[0],
        "load1_end": load_end[0],
    }


def table_row(label: str, r: dict[str, Any]) -> list[Any]:
    # NaN (no figures from a process that exited) stays NaN: the table prints it as "-".
    return common.table_row(label, r, [*COLUMNS, *EXTRA])


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--processes", type=int, default=2, help="server processes")
    ap.add_argument("--rooms", type=int, default=4)
    ap.add_argument("--clients", type=int, default=10, help="clients per room")
    ap.add_argument("--rate", type=float, default=10.0, help="messages/s per client")
    ap.add_argument("--seconds", type=float, default=10.0, help="seconds of sending per run")
    ap.add_argument("--drain", type=float, default=15.0, help="max seconds to wait for stragglers")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument(
        "--no-compression", action="store_true", help="clients refuse permessage-deflate"
    )
    ap.add_argument(
        "--server-env", action="append", default=[], metavar="K=V", help="extra server env"
    )
    ap.add_argument("--json", help="write the results here (used by bench/run.py)")
    args = ap.parse_args()
    if args.processes < 1 or args.clients < args.processes:
        ap.error("need at least one process, and at least as many clients per room as processes")

    nofile = common.raise_nofile()
    common.ensure_database()
    common.setup_django()
    demanded = args.rooms * args.clients * args.rate * args.clients
    shape = f"{args.rooms}x{args.clients}x{args.rate:g}"
    print(
        f"processes: {args.processes} server processes, {args.rooms} rooms x {args.clients} "
        f"clients (alternating between them) x {args.rate:g} msg/s = {demanded:,.0f} "
        f"deliveries/s demanded; {args.seconds:g} s per run, {args.runs} runs, ulimit -n "
        f"{nofile}, compression {'off' if args.no_compression else 'deflate'}"
        + (f", server env {args.server_env}" if args.server_env else ""),
        flush=True,
    )
    t0 = time.monotonic()
    runs: list[dict[str, Any]] = []
    for i in range(args.runs):
        r = one_run(args)
        runs.append(r)
        each = "; ".join(
            f"process {n + 1}: {p['live_events']:,.0f} live events, {p['gap_fills']:,.0f} gap fills"
            for n, p in enumerate(r["processes"])
        )
        print(
            f"  run {i + 1}: {r['deliveries_per_s']:,.0f} deliveries/s, p99 {r['p99']:.1f} ms, "
            f"lost {r['lost']}, dup {r['duplicated']}, ooo {r['out_of_order']}, unacked "
            f"{r['unacked']}, errors {r['errors']}; {each}; load average "
            f"{' '.join(f'{x:.2f}' for x in r['load_start'])} -> "
            f"{' '.join(f'{x:.2f}' for x in r['load_end'])}"
            + (f"; processes that exited: {r['exited']}" if r["exited"] else ""),
            flush=True,
        )

    med: dict[str, float] = {
        key: common.median(r[key] for r in runs)
        for key in {k for _, k, _ in COLUMNS} | {k for _, k, _ in EXTRA} | {"delivered", "sent"}
    }
    for key in FAULTS:
        med[key] = max(r[key] for r in runs)
    rows = [table_row(f"run {i + 1}", r) for i, r in enumerate(runs)]
    rows.append(table_row("MEDIAN (faults: max)", med))
    print()
    print(
        f"{args.processes} processes, {shape} ({demanded:,.0f} deliveries/s demanded); latencies "
        "in ms; srv CPU and RSS summed over the processes; fills: gap fills from the database; "
        "load: 1-minute load average"
    )
    print(common.table(["run", *(c[0] for c in COLUMNS), *(c[0] for c in EXTRA)], rows))
    faults = sum(med[key] for key in FAULTS)
    print(
        f"deliveries/s {med['deliveries_per_s']:,.0f} ({100 * med['deliveries_per_s'] / demanded:.1f}% "
        f"of demanded), p99 {med['p99']:.1f} ms; lost+dup+ooo+unacked (worst run) {faults:g}; "
        f"took {time.monotonic() - t0:.0f} s"
    )
    budgets = [
        common.budget(
            f"processes {shape} on {args.processes}: lost+dup+ooo+unacked (worst)",
            faults,
            0,
            "max",
            "",
        )
    ]
    print()
    common.print_budgets(budgets)
    summary = {
        "processes": args.processes,
        "rooms": args.rooms,
        "clients": args.clients,
        "rate": args.rate,
        "demanded": demanded,
        "median": med,
    }
    common.write_json(args.json, {"budgets": budgets, "summary": summary, "runs": runs})
    return 0 if all(b["ok"] for b in budgets) else 1


if __name__ == "__main__":
    sys.exit(main())
