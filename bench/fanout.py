"""WebSocket fan-out: R rooms x C clients, each client sending r messages/s for a fixed time.

Targets, started by this script on 127.0.0.1, run alternately:
  * "chat": ONE uvicorn process with chatsite.asgi on PostgreSQL (the bench database) + Redis
    (channels_redis pub/sub layer, per-process room hub), clients authenticated by ?token=;
  * "baseline": bench/baseline_server.py, a plain `websockets` broadcast server with no Django.
Clients are real WebSocket clients (websockets library) in this one asyncio process. Each body carries
the sender's time.time(); each client checks that it receives every message of its room exactly once,
in seq order, from its subscribe cursor to the room's last acknowledged seq.

    .venv/bin/python bench/fanout.py [--rooms 4] [--clients 10] [--rates 8,1] [--seconds 10] [--runs 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common

HERE = Path(__file__).resolve().parent


@dataclass
class Client:
    room: int
    idx: int
    url: str
    sub_seq: int | None = None
    sent: int = 0
    acks: dict[str, int] = field(default_factory=dict)
    seqs: list[int] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    last_receipt: float = 0.0
    errors: list[str] = field(default_factory=list)
    other_frames: int = 0

    @property
    def max_seq(self) -> int:
        return max(self.seqs) if self.seqs else (self.sub_seq or 0)


async def reader(c: Client, ws: Any, subscribed: asyncio.Event) -> None:
    loads = json.loads
    async for text in ws:
        now = time.time()
        event = loads(text)
        kind = event.get("type")
        if kind == "message":
            c.seqs.append(event["seq"])
            try:
                sent_at = float(event["body"].rsplit(":", 1)[1])
            except (IndexError, ValueError):
                sent_at = now
            c.latencies.append((now - sent_at) * 1000)
            c.last_receipt = now
        elif kind == "ack":
            c.acks[event["client_id"]] = event["seq"]
        elif kind == "subscribed":
            c.sub_seq = event["seq"]
            subscribed.set()
        elif kind == "error":
            c.errors.append(event.get("code", "?"))
        else:
            c.other_frames += 1


async def run_client(
    c: Client,
    rate: float,
    tag: str,
    ready: asyncio.Queue[int],
    go: asyncio.Event,
    times: dict[str, float],
    done_sending: asyncio.Queue[int],
    finish: asyncio.Event,
    compression: str | None,
) -> None:
    from websockets.asyncio.client import connect

    async with connect(
        c.url, open_timeout=60, ping_interval=None, max_size=2**20, compression=compression
    ) as ws:
        subscribed = asyncio.Event()
        read_task = asyncio.create_task(reader(c, ws, subscribed))
        await asyncio.wait_for(subscribed.wait(), 60)
        await ready.put(c.idx)
        await go.wait()
        t_start, t_end = times["start"], times["end"]
        phase = random.uniform(0.001, 1 / rate)
        n = 0
        while True:
            at = t_start + phase + n / rate
            if at >= t_end:
                break
            delay = at - time.time()
            if delay > 0:
                await asyncio.sleep(delay)
            body = f"bench {c.room}/{c.idx}/{n}:{time.time():.6f}"
            await ws.send(
                json.dumps(
                    {
                        "action": "sendmessage",
                        "body": body,
                        "client_id": f"{tag}-{c.room}-{c.idx}-{n}",
                    }
                )
            )
            c.sent += 1
            n += 1
        await done_sending.put(c.idx)
        await finish.wait()
        read_task.cancel()


async def load(
    urls: list[list[str]],
    rate: float,
    seconds: float,
    drain: float,
    compression: str | None,
    pid: int,
    profile: str | None = None,
) -> dict[str, Any]:
    clients = [Client(r, i, url) for r, row in enumerate(urls) for i, url in enumerate(row)]
    ready: asyncio.Queue[int] = asyncio.Queue()
    done_sending: asyncio.Queue[int] = asyncio.Queue()
    go, finish = asyncio.Event(), asyncio.Event()
    times: dict[str, float] = {}
    tag = uuid.uuid4().hex[:10]
    tasks = []
    for c in clients:
        tasks.append(
            asyncio.create_task(
                run_client(c, rate, tag, ready, go, times, done_sending, finish, compression)
            )
        )
        await asyncio.sleep(0.005)  # do not stampede the accept path
    for _ in clients:
        await asyncio.wait_for(ready.get(), 120)
    await asyncio.sleep(0.5)  # let presence announcements settle
    cpu0, scpu0 = common.self_cpu_seconds(), common.cpu_seconds(pid)
    times["start"] = time.time() + 0.2
    times["end"] = times["start"] + seconds
    go.set()
    spy = None
    if profile:
        # py-spy (pip install py-spy; not a project requirement) samples the server during the window.
        spy = await asyncio.create_subprocess_exec(
            str(Path(sys.executable).parent / "py-spy"),
            "record",
            "--pid",
            str(pid),
            "--duration",
            str(int(seconds)),
            "--format",
            "raw" if profile.endswith(".txt") else "flamegraph",
            "--output",
            profile,
            "--threads",
            "--gil" if "gil" in Path(profile).name else "--idle",
            stdout=asyncio.subprocess.DEVNULL,
        )
    for _ in clients:
        await done_sending.get()
    send_end = time.time()
    status_at_end = common.proc_status(pid)
    # Drain: every send acknowledged and every client caught up with its room's last seq.
    deadline = time.time() + drain
    while time.time() < deadline:
        acked = all(len(c.acks) >= c.sent for c in clients)
        if acked:
            final = {}
            for c in clients:
                final[c.room] = max(final.get(c.room, 0), *c.acks.values(), 0)
            if all(c.max_seq >= final[c.room] for c in clients):
                break
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.3)  # late duplicates would arrive now
    wall = time.time() - times["start"]
    cpu1, scpu1 = common.self_cpu_seconds(), common.cpu_seconds(pid)
    finish.set()
    await asyncio.gather(*tasks, return_exceptions=True)
    if spy is not None:
        await spy.wait()

    final: dict[int, int] = {}
    first: dict[int, int] = {}
    for c in clients:
        if c.acks:
            final[c.room] = max(final.get(c.room, 0), *c.acks.values())
        first[c.room] = min(first.get(c.room, 1 << 62), c.sub_seq or 0)
    lost = dup = ooo = delivered = unacked = 0
    lats: list[float] = []
    last_receipt = 0.0
    for c in clients:
        expected = set(range((c.sub_seq or 0) + 1, final.get(c.room, 0) + 1))
        got = set(c.seqs)
        delivered += len(c.seqs)
        lost += len(expected - got)
        dup += len(c.seqs) - len(got)
        high = -1
        for s in c.seqs:
            if s < high:
                ooo += 1
            high = max(high, s)
        unacked += c.sent - len(c.acks)
        lats.extend(c.latencies)
        last_receipt = max(last_receipt, c.last_receipt)
    sent = sum(c.sent for c in clients)
    span = max(1e-9, last_receipt - times["start"])
    errors: dict[str, int] = {}
    for c in clients:
        for code in c.errors:
            errors[code] = errors.get(code, 0) + 1
    return {
        "sent": sent,
        "unacked": unacked,
        "delivered": delivered,
        "demanded": sent * len(urls[0]),
        "deliveries_per_s": delivered / span,
        "drain_s": max(0.0, last_receipt - send_end),
        "p50": common.percentile(lats, 50),
        "p99": common.percentile(lats, 99),
        "max": max(lats) if lats else float("nan"),
        "lost": lost,
        "duplicated": dup,
        "out_of_order": ooo,
        "errors": errors,
        "rss_mb": status_at_end.get("VmRSS", 0) / 1024,
        "hwm_mb": status_at_end.get("VmHWM", 0) / 1024,
        "server_cpu": (scpu1 - scpu0) / wall,
        "gen_cpu": (cpu1 - cpu0) / wall,
    }


def chat_urls(server: common.Server, rooms: int, clients: int) -> list[list[str]]:
    from django.contrib.auth import get_user_model

    from chat.models import Room
    from chat.tokens import make_token

    User = get_user_model()
    names = [f"bench-fan{i}" for i in range(rooms * clients)]
    have = {u.username for u in User.objects.filter(username__in=names)}
    User.objects.bulk_create([User(username=n, password="!") for n in names if n not in have])
    users = {u.username: u for u in User.objects.filter(username__in=names)}
    urls = []
    for r in range(rooms):
        room, _ = Room.objects.get_or_create(
            slug=f"bench-fan-{r}", defaults={"title": f"Bench fan {r}"}
        )
        row = []
        for i in range(clients):
            token = make_token(users[f"bench-fan{r * clients + i}"])
            row.append(f"{server.ws_url}?token={token}&room={room.slug}")
        urls.append(row)
    return urls


def baseline_urls(server: common.Server, rooms: int, clients: int) -> list[list[str]]:
    return [
        [
            f"{server.ws_url}?room=bench-fan-{r}&user=bench-fan{r * clients + i}"
            for i in range(clients)
        ]
        for r in range(rooms)
    ]


def one_run(target: str, args: argparse.Namespace, rate: float) -> dict[str, Any]:
    env = common.bench_env(**dict(kv.split("=", 1) for kv in args.server_env))
    if args.server_root and target == "chat":
        env["BENCH_SERVER_ROOT"] = args.server_root
    if target == "chat":
        server = common.Server.uvicorn(env)
    else:
        server = common.Server(
            [sys.executable, str(HERE / "baseline_server.py"), "--port", "{port}"],
            env,
            name="baseline",
        )
    with server:
        urls = (chat_urls if target == "chat" else baseline_urls)(server, args.rooms, args.clients)
        compression = None if args.no_compression else "deflate"
        profile = args.profile if target == "chat" else None
        return asyncio.run(
            load(urls, rate, args.seconds, args.drain, compression, server.pid, profile)
        )


COLUMNS = [
    ("deliv/s", "deliveries_per_s", 0),
    ("p50 ms", "p50", 1),
    ("p99 ms", "p99", 1),
    ("max ms", "max", 1),
    ("lost", "lost", 0),
    ("dup", "duplicated", 0),
    ("ooo", "out_of_order", 0),
    ("unacked", "unacked", 0),
    ("RSS MB", "rss_mb", 1),
    ("srv CPU", "server_cpu", 2),
    ("gen CPU", "gen_cpu", 2),
]


def row(label: str, r: dict[str, Any]) -> list[Any]:
    out: list[Any] = [label]
    for _, key, digits in COLUMNS:
        v = r[key]
        out.append(
            round(v, digits)
            if isinstance(v, float) and digits
            else (round(v) if isinstance(v, float) else v)
        )
    return out


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--rooms", type=int, default=4)
    ap.add_argument("--clients", type=int, default=10, help="clients per room")
    ap.add_argument("--rates", default="8,1", help="messages/s per client, comma-separated")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--drain", type=float, default=15.0, help="max seconds to wait for stragglers")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--targets", default="chat,baseline")
    ap.add_argument(
        "--no-compression", action="store_true", help="clients refuse permessage-deflate"
    )
    ap.add_argument(
        "--server-env", action="append", default=[], metavar="K=V", help="extra server env"
    )
    ap.add_argument("--server-root", help="serve this copy of the project instead (prototypes)")
    ap.add_argument(
        "--profile", help="py-spy output for the chat server (.svg flamegraph or .txt raw)"
    )
    ap.add_argument("--json")
    args = ap.parse_args()

    nofile = common.raise_nofile()
    common.ensure_database()
    common.setup_django()
    rates = [float(x) for x in args.rates.split(",")]
    targets = args.targets.split(",")
    print(
        f"fan-out: {args.rooms} rooms x {args.clients} clients, {args.seconds:g} s per run, "
        f"{args.runs} runs, ulimit -n {nofile}, compression {'off' if args.no_compression else 'deflate'}"
        + (f", server env {args.server_env}" if args.server_env else ""),
        flush=True,
    )
    results: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for rate in rates:
        key = f"{rate:g}"
        results[key] = {t: [] for t in targets}
        for run in range(args.runs):
            for target in targets:
                r = one_run(target, args, rate)
                results[key][target].append(r)
                print(
                    f"  rate {key}/s run {run + 1} {target}: {r['deliveries_per_s']:,.0f} deliveries/s, "
                    f"p99 {r['p99']:.1f} ms, lost {r['lost']}, dup {r['duplicated']}, errors {r['errors']}",
                    flush=True,
                )

    budgets = []
    summary: dict[str, Any] = {}
    for key, by_target in results.items():
        rate = float(key)
        demanded = args.rooms * args.clients * rate * args.clients
        print()
        print(
            f"{args.rooms}x{args.clients} at {key} msg/s per client: {demanded:,.0f} deliveries/s demanded"
        )
        rows = []
        med: dict[str, dict[str, float]] = {}
        for target, runs in by_target.items():
            for i, r in enumerate(runs):
                rows.append(row(f"{target} run {i + 1}", r))
            med[target] = {k: common.median(r[k] for r in runs) for _, k, _ in COLUMNS}
            med[target]["lost"] = max(r["lost"] for r in runs)
            med[target]["duplicated"] = max(r["duplicated"] for r in runs)
            med[target]["out_of_order"] = max(r["out_of_order"] for r in runs)
            med[target]["unacked"] = max(r["unacked"] for r in runs)
            rows.append(row(f"{target} MEDIAN (loss: max)", med[target]))
        print(common.table(["target", *(c[0] for c in COLUMNS)], rows))
        if "chat" in med and "baseline" in med:
            ratio = med["chat"]["deliveries_per_s"] / med["baseline"]["deliveries_per_s"]
            print(f"chat deliveries/s as a ratio of the baseline: {ratio:.2f}")
            med["chat"]["ratio_to_baseline"] = ratio
        summary[key] = med
        if "chat" in med:
            c = med["chat"]
            if rate >= 8:
                budgets.append(
                    common.budget(
                        f"fanout {key}/s deliveries/s (≥97% of {demanded:,.0f})",
                        c["deliveries_per_s"],
                        0.97 * demanded,
                        "min",
                        "/s",
                    )
                )
                budgets.append(
                    common.budget(
                        f"fanout {key}/s lost+dup+ooo+unacked (worst)",
                        c["lost"] + c["duplicated"] + c["out_of_order"] + c["unacked"],
                        0,
                        "max",
                        "",
                    )
                )
                budgets.append(
                    common.budget(f"fanout {key}/s p99 latency", c["p99"], 250, "max", "ms")
                )
            elif rate <= 1:
                budgets.append(
                    common.budget(f"fanout {key}/s p99 latency", c["p99"], 30, "max", "ms")
                )
                budgets.append(
                    common.budget(
                        f"fanout {key}/s lost+dup+ooo+unacked (worst)",
                        c["lost"] + c["duplicated"] + c["out_of_order"] + c["unacked"],
                        0,
                        "max",
                        "",
                    )
                )
    print()
    common.print_budgets(budgets)
    common.write_json(args.json, {"budgets": budgets, "summary": summary, "runs": results})
    return 0 if all(b["ok"] for b in budgets) else 1


if __name__ == "__main__":
    sys.exit(main())
