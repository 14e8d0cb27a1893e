"""Many sockets: N authenticated WebSockets held open on ONE server process, then a fan-out load.

The server is the production command (`python -m chatsite.serve`: uvicorn with the chat's limits,
pings every 20 s) on PostgreSQL (the bench database) + Redis. The script makes N users (default
10,000) and R public rooms (default 100; nobody needs a membership to read a public room) once and
keeps them, and opens one socket per user (`?token=...&room=<slug>`, room i % R), at most
--concurrency connection attempts in flight at a time, so that it measures the rate the server
accepts at rather than a stampede. Each socket counts as connected when its `subscribed` frame
arrives. The idle sockets keep reading everything they are sent (presence lists, pings), as clients
do: a client that stops reading would fill its bounded send queue on the server and be dropped.

Measured, per run (each on a fresh server):
  * RSS of the server after one socket came and went (the code is loaded), and with all N open,
    once the presence announcements of the connects have settled: MB, and KB per socket;
  * the connect rate (sockets/s from the first attempt to the last `subscribed`) and the p50/p99
    of one socket's connect + `subscribed` time;
  * --idle seconds with all N open and nothing sent (the server's presence heartbeats and pings
    running): the server's CPU and the frames the idle sockets received;
  * with all N still open, bench/fanout.py's load in 4 other rooms (--rooms x --clients x --rate,
    default 4 x 10 x 10 msg/s per client) for --seconds, --rounds times: deliveries/s, p99, loss;
  * the load average of the machine during each phase (the generator shares it).

Budgets: RSS with N open ≤ 1 GB; with them open, the fan-out load loses, duplicates, reorders and
leaves unacknowledged nothing, with a p99 ≤ 100 ms; no idle socket is refused or dropped.

    .venv/bin/python bench/sockets.py [--sockets 10000] [--idle-rooms 100] [--concurrency 50]
        [--idle-compression deflate|none] [--seconds 10] [--rounds 3] [--runs 1]
        [--profile-connect out.txt] [--profile-idle out.txt] [--profile-load out.txt]
        [--py-spy PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common
import fanout

IDLE_USER = "bench-sock{}"
IDLE_ROOM = "bench-sock-{}"
BATCH = 2000


@dataclass
class Idle:
    """The client side of the idle sockets, all together (one object per socket would cost the
    generator memory that the server's figures do not need)."""

    connect_ms: list[float] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    frames: int = 0
    frame_bytes: int = 0
    closed: int = 0
    first_attempt: float = 0.0
    last_subscribed: float = 0.0
    sockets: list[Any] = field(default_factory=list)


def idle_fixtures(sockets: int, rooms: int) -> tuple[list[Any], list[str]]:
    """The idle users and their public rooms (made once, kept): bulk inserts, so that 10,000
    users take seconds."""
    from django.contrib.auth import get_user_model

    from chat.models import Room

    User = get_user_model()
    names = [IDLE_USER.format(i) for i in range(sockets)]
    have: set[str] = set()
    for start in range(0, sockets, BATCH):
        chunk = names[start : start + BATCH]
        have.update(User.objects.filter(username__in=chunk).values_list("username", flat=True))
    User.objects.bulk_create(
        [User(username=n, password="!") for n in names if n not in have], batch_size=BATCH
    )
    slugs = [IDLE_ROOM.format(r) for r in range(rooms)]
    Room.objects.bulk_create(
        [Room(slug=s, title=f"Bench sockets {r}") for r, s in enumerate(slugs)],
        ignore_conflicts=True,
    )
    users: list[Any] = []
    for start in range(0, sockets, BATCH):
        chunk = names[start : start + BATCH]
        found = {u.username: u for u in User.objects.filter(username__in=chunk)}
        users.extend(found[n] for n in chunk)
    return users, slugs


def idle_url(server: common.Server, user: Any, slug: str) -> str:
    # Made at the attempt: a token lives CHAT_WS_TOKEN_MAX_AGE (300 s), and a slow server may
    # take longer than that to accept them all.
    from chat.tokens import make_token

    return f"{server.ws_url}?token={make_token(user)}&room={slug}"


async def hold(
    url: Callable[[], str],
    idle: Idle,
    gate: asyncio.Semaphore,
    compression: str | None,
    done: asyncio.Queue[bool],
) -> None:
    """One idle socket: connect (within the gate), wait for `subscribed`, then read until closed."""
    from websockets.asyncio.client import connect

    ws = None
    try:
        async with gate:
            t0 = time.monotonic()
            # Small read buffers: the generator holds thousands of these, and idle frames are small.
            ws = await connect(
                url(),
                open_timeout=120,
                ping_interval=None,
                compression=compression,
                max_size=2**20,
                max_queue=64,
            )
            while True:
                event = json.loads(await asyncio.wait_for(ws.recv(), 120))
                if event.get("type") == "subscribed":
                    break
                if event.get("type") == "error":
                    raise RuntimeError(event.get("code"))
            now = time.monotonic()
            idle.connect_ms.append((now - t0) * 1000)
            idle.last_subscribed = max(idle.last_subscribed, now)
            idle.sockets.append(ws)
    except Exception as exc:
        idle.refused.append(repr(exc)[:120])
        await done.put(False)
        if ws is not None:
            ws.transport.abort()
        return
    await done.put(True)
    try:
        async for text in ws:
            idle.frames += 1
            idle.frame_bytes += len(text)
    except Exception:
        pass
    idle.closed += 1


async def settle(idle: Idle, quiet: float = 2.0, limit: float = 60.0) -> float:
    """Wait until the idle sockets have heard nothing for `quiet` seconds (the connects' presence
    announcements are out), at most `limit`; returns the seconds waited."""
    t0 = time.monotonic()
    seen, since = idle.frames, time.monotonic()
    while time.monotonic() - t0 < limit:
        await asyncio.sleep(0.25)
        if idle.frames != seen:
            seen, since = idle.frames, time.monotonic()
        elif time.monotonic() - since >= quiet:
            break
    return time.monotonic() - t0


def spy(pid: int, out: str | None, py_spy: str) -> Any:
    """py-spy (not a project requirement) sampling the server until stopped; raw output for a
    .txt path (collapsed stacks), else a flamegraph."""
    if not out:
        return None
    import subprocess

    return subprocess.Popen(
        [
            py_spy,
            "record",
            "--pid",
            str(pid),
            "--format",
            "raw" if out.endswith(".txt") else "flamegraph",
            "--output",
            out,
            "--threads",
            "--idle",
            "--nonblocking",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def unspy(proc: Any) -> None:
    if proc is not None:
        proc.send_signal(signal.SIGINT)  # py-spy writes its output on ^C
        proc.wait(60)


def load_avg() -> float:
    return os.getloadavg()[0]


async def session(
    server: common.Server,
    users: list[Any],
    slugs: list[str],
    args: argparse.Namespace,
) -> dict[str, Any]:
    from websockets.asyncio.client import connect

    compression = None if args.idle_compression == "none" else "deflate"
    pid = server.pid
    # One socket comes and goes first: the code every socket runs is loaded before the baseline.
    async with connect(
        idle_url(server, users[0], slugs[0]), ping_interval=None, compression=compression
    ) as ws:
        while json.loads(await ws.recv()).get("type") != "subscribed":
            pass
    await asyncio.sleep(1.0)
    before = common.proc_status(pid)

    idle = Idle()
    gate = asyncio.Semaphore(args.concurrency)
    done: asyncio.Queue[bool] = asyncio.Queue()
    profiler = spy(pid, args.profile_connect, args.py_spy)
    load0, cpu0, gcpu0 = load_avg(), server.cpu(), common.self_cpu_seconds()
    idle.first_attempt = time.monotonic()
    tasks = [
        asyncio.create_task(
            hold(
                functools.partial(idle_url, server, u, slugs[i % len(slugs)]),
                idle,
                gate,
                compression,
                done,
            )
        )
        for i, u in enumerate(users)
    ]
    for i in range(len(users)):
        await done.get()
        if args.verbose and (i + 1) % 1000 == 0:
            print(f"    {i + 1} sockets, {len(idle.refused)} refused", flush=True)
    connect_s = max(1e-9, idle.last_subscribed - idle.first_attempt)
    connect_cpu = (server.cpu() - cpu0) / connect_s
    connect_gen_cpu = (common.self_cpu_seconds() - gcpu0) / connect_s
    connect_load = load_avg()
    frames_at_connect = idle.frames
    settled = await settle(idle)
    unspy(profiler)
    after = common.proc_status(pid)
    frames_settled = idle.frames

    # Idle: nothing sent by anyone; the server's heartbeats, sweeps and pings go on.
    profiler = spy(pid, args.profile_idle, args.py_spy)
    cpu0, frames0, t0 = server.cpu(), idle.frames, time.monotonic()
    await asyncio.sleep(args.idle)
    idle_s = time.monotonic() - t0
    idle_cpu = (server.cpu() - cpu0) / idle_s
    idle_frames = (idle.frames - frames0) / idle_s
    idle_load = load_avg()
    unspy(profiler)

    rounds = []
    for k in range(args.rounds):
        # Tokens made now: the connects may have taken longer than a token lives.
        load_urls = await asyncio.to_thread(fanout.chat_urls, server, args.rooms, args.clients)
        profiler = spy(pid, args.profile_load if k == 0 else None, args.py_spy)
        r = await fanout.load(load_urls, args.rate, args.seconds, args.drain, "deflate", pid)
        unspy(profiler)
        r["load1"] = load_avg()
        rounds.append(r)
        print(
            f"    round {k + 1}: {r['deliveries_per_s']:,.0f} deliveries/s, p50 {r['p50']:.1f} "
            f"p99 {r['p99']:.1f} ms, lost {r['lost']}, dup {r['duplicated']}, ooo "
            f"{r['out_of_order']}, unacked {r['unacked']}, server CPU {r['server_cpu']:.2f}, "
            f"load {r['load1']:.2f}",
            flush=True,
        )
    end = common.proc_status(pid)
    dropped = idle.closed
    for ws in idle.sockets:
        ws.transport.abort()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)

    n = len(idle.connect_ms)
    rss0, rss1 = before.get("VmRSS", 0) / 1024, after.get("VmRSS", 0) / 1024
    return {
        "sockets": n,
        "refused": len(idle.refused),
        "refusals": sorted(set(idle.refused))[:5],
        "dropped": dropped,
        "rss_before_mb": rss0,
        "rss_after_mb": rss1,
        "rss_end_mb": end.get("VmRSS", 0) / 1024,
        "hwm_mb": end.get("VmHWM", 0) / 1024,
        "kb_per_socket": (rss1 - rss0) * 1024 / max(1, n),
        "threads": after.get("Threads", 0),
        "connect_s": connect_s,
        "connect_per_s": n / connect_s,
        "connect_p50": common.percentile(idle.connect_ms, 50),
        "connect_p99": common.percentile(idle.connect_ms, 99),
        "connect_server_cpu": connect_cpu,
        "connect_gen_cpu": connect_gen_cpu,
        "connect_load1": connect_load,
        "connect_frames": frames_at_connect,
        "settle_s": settled,
        "settle_frames": frames_settled - frames_at_connect,
        "idle_server_cpu": idle_cpu,
        "idle_frames_per_s": idle_frames,
        "idle_load1": idle_load,
        "gen_rss_mb": common.proc_status(os.getpid()).get("VmRSS", 0) / 1024,
        "rounds": rounds,
        "deliveries_per_s": common.median(r["deliveries_per_s"] for r in rounds),
        "p50": common.median(r["p50"] for r in rounds),
        "p95": common.median(r["p95"] for r in rounds),
        "p99": common.median(r["p99"] for r in rounds),
        "load_server_cpu": common.median(r["server_cpu"] for r in rounds),
        "load_load1": common.median(r["load1"] for r in rounds),
        "faults": max(
            (r["lost"] + r["duplicated"] + r["out_of_order"] + r["unacked"] for r in rounds),
            default=0,
        ),
        "load_before": load0,
    }


def one_run(args: argparse.Namespace, users: list[Any], slugs: list[str]) -> dict[str, Any]:
    env = common.bench_env(**dict(kv.split("=", 1) for kv in args.server_env))
    with common.Server.uvicorn(env) as server:
        return asyncio.run(session(server, users, slugs, args))


COLUMNS = [
    ("sockets", "sockets", 0),
    ("RSS0 MB", "rss_before_mb", 1),
    ("RSS MB", "rss_after_mb", 1),
    ("KB/sock", "kb_per_socket", 1),
    ("conn/s", "connect_per_s", 0),
    ("conn p50", "connect_p50", 1),
    ("conn p99", "connect_p99", 1),
    ("conn CPU", "connect_server_cpu", 2),
    ("idle CPU", "idle_server_cpu", 2),
    ("idle fr/s", "idle_frames_per_s", 1),
    ("deliv/s", "deliveries_per_s", 0),
    ("p50 ms", "p50", 1),
    ("p99 ms", "p99", 1),
    ("faults", "faults", 0),
    ("load1", "load_load1", 2),
]


def row(label: str, r: dict[str, Any]) -> list[Any]:
    return common.table_row(label, r, COLUMNS)


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--sockets", type=int, default=10000, help="idle sockets held open")
    ap.add_argument("--idle-rooms", type=int, default=100, help="rooms the idle sockets are in")
    ap.add_argument(
        "--concurrency", type=int, default=50, help="connection attempts in flight at a time"
    )
    ap.add_argument(
        "--idle-compression",
        choices=("deflate", "none"),
        default="deflate",
        help="whether the idle clients offer permessage-deflate (browsers do)",
    )
    ap.add_argument("--idle", type=float, default=25.0, help="idle seconds (heartbeats: TTL/3)")
    ap.add_argument("--rooms", type=int, default=4, help="rooms of the fan-out load")
    ap.add_argument("--clients", type=int, default=10, help="fan-out clients per room")
    ap.add_argument("--rate", type=float, default=10.0, help="fan-out msg/s per client")
    ap.add_argument("--seconds", type=float, default=10.0, help="seconds of each fan-out round")
    ap.add_argument("--drain", type=float, default=15.0, help="max seconds for stragglers")
    ap.add_argument("--rounds", type=int, default=3, help="fan-out rounds per run")
    ap.add_argument("--runs", type=int, default=1, help="runs, each on a fresh server")
    ap.add_argument(
        "--server-env", action="append", default=[], metavar="K=V", help="extra server env"
    )
    ap.add_argument("--profile-connect", help="py-spy output while connecting (.txt raw, .svg)")
    ap.add_argument("--profile-idle", help="py-spy output while idle (.txt raw, .svg)")
    ap.add_argument("--profile-load", help="py-spy output during the first fan-out round")
    ap.add_argument(
        "--py-spy", default=str(Path(sys.executable).parent / "py-spy"), help="py-spy binary"
    )
    ap.add_argument("-v", "--verbose", action="store_true", help="progress while connecting")
    ap.add_argument("--json")
    args = ap.parse_args()

    nofile = common.raise_nofile(2 * args.sockets + 1000)
    if nofile < args.sockets + 200:
        ap.error(f"ulimit -n is {nofile}: too low for {args.sockets} sockets")
    common.ensure_database()
    common.setup_django()
    t0 = time.monotonic()
    users, slugs = idle_fixtures(args.sockets, args.idle_rooms)
    demanded = args.rooms * args.clients * args.rate * args.clients
    print(
        f"sockets: {args.sockets:,} idle in {args.idle_rooms} rooms (made in "
        f"{time.monotonic() - t0:.1f} s), {args.concurrency} connects in flight, compression "
        f"{args.idle_compression}; then {args.rooms}x{args.clients} clients at {args.rate:g} "
        f"msg/s ({demanded:,.0f} deliveries/s demanded), {args.rounds} x {args.seconds:g} s; "
        f"{args.runs} run(s), ulimit -n {nofile}, {os.cpu_count()} CPUs, load average "
        f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}"
        + (f", server env {args.server_env}" if args.server_env else ""),
        flush=True,
    )
    runs = []
    for k in range(args.runs):
        r = one_run(args, users, slugs)
        runs.append(r)
        print(
            f"  run {k + 1}: {r['sockets']:,} sockets ({r['refused']} refused, {r['dropped']} "
            f"dropped) at {r['connect_per_s']:,.0f}/s (p50 {r['connect_p50']:.0f} ms, p99 "
            f"{r['connect_p99']:.0f} ms, server CPU {r['connect_server_cpu']:.2f}, load "
            f"{r['connect_load1']:.2f}); RSS {r['rss_before_mb']:.0f} -> {r['rss_after_mb']:.0f} "
            f"MB ({r['kb_per_socket']:.1f} KB/socket, {r['threads']} threads; settled in "
            f"{r['settle_s']:.1f} s, {r['connect_frames'] + r['settle_frames']:,} frames to idle "
            f"sockets); idle: server CPU {r['idle_server_cpu']:.2f}, "
            f"{r['idle_frames_per_s']:.1f} frames/s, load {r['idle_load1']:.2f}; generator RSS "
            f"{r['gen_rss_mb']:.0f} MB" + (f"; refusals {r['refusals']}" if r["refusals"] else ""),
            flush=True,
        )
    keys = [k for _, k, _ in COLUMNS] + [
        "rss_end_mb",
        "hwm_mb",
        "p95",
        "connect_gen_cpu",
        "connect_load1",
        "idle_load1",
        "load_server_cpu",
        "settle_frames",
        "connect_frames",
    ]
    med: dict[str, float] = {k: common.median(r[k] for r in runs) for k in keys}
    for k in ("faults", "refused", "dropped"):
        med[k] = max(r[k] for r in runs)
    print()
    print(
        f"{args.sockets:,} idle sockets, then {args.rooms}x{args.clients}x{args.rate:g} with them "
        "open (fan-out figures: median of the rounds; faults: lost+dup+ooo+unacked, worst round)"
    )
    rows = [row(f"run {i + 1}", r) for i, r in enumerate(runs)]
    rows.append(row("MEDIAN", med))
    print(common.table(["run", *(c[0] for c in COLUMNS)], rows))
    print()
    label = f"{args.rooms}x{args.clients}x{args.rate:g} with {args.sockets:,} sockets open"
    budgets = [
        common.budget(
            f"sockets: server RSS with {args.sockets:,} open",
            med["rss_after_mb"],
            1024,
            "max",
            "MB",
        ),
        common.budget(
            f"sockets: {args.sockets:,} idle refused or dropped (worst)",
            med["refused"] + med["dropped"],
            0,
            "max",
            "",
        ),
        common.budget(f"sockets: {label}, p99 latency", med["p99"], 100, "max", "ms"),
        common.budget(
            f"sockets: {label}, lost+dup+ooo+unacked (worst)", med["faults"], 0, "max", ""
        ),
    ]
    common.print_budgets(budgets)
    summary = {
        **med,
        "sockets_wanted": args.sockets,
        # Short enough to sit under the chart's bars.
        "load": f"{args.rooms}×{args.clients}×{args.rate:g}/s, {args.sockets / 1000:g}k idle",
    }
    common.write_json(args.json, {"budgets": budgets, "summary": summary, "runs": runs})
    return 0 if all(b["ok"] for b in budgets) else 1


if __name__ == "__main__":
    sys.exit(main())
