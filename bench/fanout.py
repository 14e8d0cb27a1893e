"""WebSocket fan-out: R rooms x C clients, each client sending r messages/s for a fixed time.

Targets, started by this script on 127.0.0.1, run alternately:
  * "chat": ONE uvicorn process with chatsite.asgi on PostgreSQL (the bench database) + Redis
    (channels_redis pub/sub layer, per-process room hub), clients authenticated by ?token=;
  * "baseline": bench/baseline_server.py, a plain `websockets` broadcast server with no Django.
Clients are real WebSocket clients (websockets library) in this one asyncio process. Each body carries
the sender's time.time(); each client checks that it receives every message of its room exactly once,
in seq order, from its subscribe cursor to the room's last acknowledged seq.

    .venv/bin/python bench/fanout.py [--loads 4x10x8,4x10x1,4x10x40,1x200x1] [--seconds 10] [--runs 3]

A load is ROOMSxCLIENTSxRATE: ROOMS rooms of CLIENTS clients, each sending RATE messages/s. Budgets:
  * 4x10x8 (3,200 deliveries/s): ≥ 97% of the demanded deliveries/s, p99 ≤ 250 ms, zero loss;
  * 4x10x1: p99 ≤ 30 ms, zero loss;
  * 4x10x40 (1,600 posts/s, 16,000 deliveries/s): ≥ 0.8x the baseline's deliveries/s in the same
    run, p99 ≤ 250 ms, zero loss;
  * 1x200x1 (a 200-member room, 40,000 deliveries/s): ≥ 0.9x the baseline, p99 ≤ 250 ms, zero loss.
The load generator shares the machine's cores with the server: the ratio to the baseline, measured
in the same run, is the figure that counts; the machine's load average is printed with each run.

With --notify, the per-user stream (chat/notify.py) instead, on the chat target only: one room of
--members members (default 200), of whom --open (default 10) have it open (subscribed) and each send
--rate messages/s (default 1); every other member is connected (one WebSocket each, subscribed to
nothing) and hears only its own stream. Rounds alternate "on" (each message mentions the next closed
member, round-robin, and the first message raises one `unread` per closed member) and "off" (the
same bodies with `~` for `@`, closed members at level `none`: no notify event at all), each on a
fresh server. Checked: every room event once and in order at every subscriber; every closed member's
stream from its Inbox position before the run to the one after, gap-free and without duplicates; and
every acknowledged mention at its member. Budget: room-event deliveries/s "on" ≥ 80% of "off" in the
same round (median of the rounds), and zero loss in both.

    .venv/bin/python bench/fanout.py --notify [--members 200] [--open 10] [--rate 1] [--seconds 15] [--runs 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import sys
import time
import uuid
from collections.abc import Sequence
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
    pid: int | Sequence[int],
    profile: str | None = None,
) -> dict[str, Any]:
    # Several server processes (bench/processes.py): their CPU and memory are summed, and the
    # profile, if any, is of the first.
    pids = [pid] if isinstance(pid, int) else list(pid)
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
    cpu0, scpu0 = common.self_cpu_seconds(), sum(common.cpu_seconds(p) for p in pids)
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
            str(pids[0]),
            "--duration",
            str(int(seconds)),
            "--format",
            "raw" if profile.endswith(".txt") else "flamegraph",
            "--output",
            profile,
            "--threads",
            # "gil" in the name: samples holding the GIL; "cpu": running threads; else every
            # thread, waiting ones too.
            *(
                ["--gil"]
                if "gil" in Path(profile).name
                else []
                if "cpu" in Path(profile).name
                else ["--idle"]
            ),
            stdout=asyncio.subprocess.DEVNULL,
        )
    for _ in clients:
        await done_sending.get()
    send_end = time.time()
    status_at_end = [common.proc_status(p) for p in pids]
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
    cpu1, scpu1 = common.self_cpu_seconds(), sum(common.cpu_seconds(p) for p in pids)
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
        "p95": common.percentile(lats, 95),
        "p99": common.percentile(lats, 99),
        "max": max(lats) if lats else float("nan"),
        "lost": lost,
        "duplicated": dup,
        "out_of_order": ooo,
        "errors": errors,
        "rss_mb": sum(s.get("VmRSS", 0) for s in status_at_end) / 1024,
        "hwm_mb": sum(s.get("VmHWM", 0) for s in status_at_end) / 1024,
        "server_cpu": (scpu1 - scpu0) / wall,
        # What one delivery costs the server: comparable between runs on a machine whose load
        # varies, where deliveries/s and latency are not.
        "cpu_us_per_delivery": 1e6 * (scpu1 - scpu0) / max(1, delivered),
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


@dataclass(frozen=True)
class Load:
    """ROOMS rooms x CLIENTS clients per room, each client sending RATE messages/s."""

    rooms: int
    clients: int
    rate: float

    @classmethod
    def parse(cls, text: str) -> Load:
        rooms, clients, rate = text.lower().split("x")
        return cls(int(rooms), int(clients), float(rate))

    @property
    def key(self) -> str:
        return f"{self.rooms}x{self.clients}x{self.rate:g}"

    @property
    def demanded(self) -> float:
        """Deliveries/s asked for: every message to every client of its room, the sender too."""
        return self.rooms * self.clients * self.rate * self.clients


# Per load: the budgets it is held to (see the module's docstring). min_ratio is of the baseline's
# deliveries/s in the same run; min_share of the demanded deliveries/s.
BUDGETS: dict[str, dict[str, float]] = {
    "4x10x8": {"min_share": 0.97, "p99": 250},
    "4x10x1": {"p99": 30},
    "4x10x40": {"min_ratio": 0.8, "p99": 250},
    "1x200x1": {"min_ratio": 0.9, "p99": 250},
}


def one_run(target: str, args: argparse.Namespace, load_: Load) -> dict[str, Any]:
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
        urls = (chat_urls if target == "chat" else baseline_urls)(
            server, load_.rooms, load_.clients
        )
        compression = None if args.no_compression else "deflate"
        profile = args.profile if target == "chat" else None
        load_before = os.getloadavg()[0]
        result = asyncio.run(
            load(urls, load_.rate, args.seconds, args.drain, compression, server.pid, profile)
        )
        result["load_before"], result["load_after"] = load_before, os.getloadavg()[0]
        return result


COLUMNS = [
    ("deliv/s", "deliveries_per_s", 0),
    ("p50 ms", "p50", 1),
    ("p95 ms", "p95", 1),
    ("p99 ms", "p99", 1),
    ("max ms", "max", 1),
    ("lost", "lost", 0),
    ("dup", "duplicated", 0),
    ("ooo", "out_of_order", 0),
    ("unacked", "unacked", 0),
    ("RSS MB", "rss_mb", 1),
    ("srv CPU", "server_cpu", 2),
    ("µs/deliv", "cpu_us_per_delivery", 1),
    ("gen CPU", "gen_cpu", 2),
]


def row(label: str, r: dict[str, Any]) -> list[Any]:
    return common.table_row(label, r, COLUMNS)


# --- the user's stream: one large room, most of its members with it closed (--notify) ---

NOTIFY_ROOM = "bench-nfy"
NOTIFY_USER = "bench-nfy{}"


@dataclass
class Member:
    """One member's connection: a sender has the room open; the others hear only their stream."""

    idx: int
    name: str
    url: str
    sender: bool
    stream_start: int = 0
    sub_seq: int | None = None
    sent: int = 0
    first_send: float = 0.0
    acks: dict[str, int] = field(default_factory=dict)
    seqs: list[int] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    last_receipt: float = 0.0
    # What this sender's messages mention: client_id -> the mentioned member's index.
    mentions_sent: dict[str, int] = field(default_factory=dict)
    # The user's stream as received.
    user_seqs: list[int] = field(default_factory=list)
    kinds: dict[str, int] = field(default_factory=dict)
    mentioned_in: set[str] = field(default_factory=set)
    notify_latencies: list[float] = field(default_factory=list)
    unread_at: list[float] = field(default_factory=list)
    last_notify: float = 0.0
    errors: list[str] = field(default_factory=list)

    @property
    def max_seq(self) -> int:
        return max(self.seqs) if self.seqs else (self.sub_seq or 0)

    @property
    def max_user_seq(self) -> int:
        return max(self.user_seqs) if self.user_seqs else self.stream_start


def sent_at(body: str, default: float) -> float:
    try:
        return float(body.rsplit(":", 1)[1])
    except (IndexError, ValueError):
        return default


async def member_reader(m: Member, ws: Any, ready: asyncio.Event) -> None:
    loads = json.loads
    async for text in ws:
        now = time.time()
        event = loads(text)
        kind = event.get("type")
        if kind == "message":
            m.seqs.append(event["seq"])
            m.latencies.append((now - sent_at(event["body"], now)) * 1000)
            m.last_receipt = now
        elif kind == "notify":
            m.user_seqs.append(event["user_seq"])
            what = event.get("kind", "?")
            m.kinds[what] = m.kinds.get(what, 0) + 1
            m.last_notify = now
            message = event.get("message")
            if what == "mention" and message:
                m.mentioned_in.add(message.get("client_id"))
                m.notify_latencies.append((now - sent_at(message.get("body", ""), now)) * 1000)
            elif what == "unread":
                m.unread_at.append(now)
        elif kind == "ack":
            m.acks[event["client_id"]] = event["seq"]
        elif kind == "subscribed":
            m.sub_seq = event["seq"]
            ready.set()
        elif kind == "pong":
            ready.set()
        elif kind == "error":
            m.errors.append(event.get("code", "?"))


async def run_member(
    m: Member,
    closed: list[Member],
    senders: int,
    on: bool,
    rate: float,
    tag: str,
    ready_q: asyncio.Queue[int],
    go: asyncio.Event,
    times: dict[str, float],
    done_q: asyncio.Queue[int],
    finish: asyncio.Event,
    compression: str | None,
) -> None:
    from websockets.asyncio.client import connect

    async with connect(
        m.url, open_timeout=60, ping_interval=None, max_size=2**20, compression=compression
    ) as ws:
        ready = asyncio.Event()
        read_task = asyncio.create_task(member_reader(m, ws, ready))
        if not m.sender:
            # A socket's frames run after its connect handler, which joins the user's stream:
            # the pong says the stream is live.
            await ws.send(json.dumps({"action": "ping"}))
        await asyncio.wait_for(ready.wait(), 60)
        await ready_q.put(m.idx)
        await go.wait()
        if m.sender:
            t_start, t_end = times["start"], times["end"]
            phase = random.uniform(0.001, 1 / rate)
            mark = "@" if on else "~"  # the same length: "off" mentions nobody
            n = 0
            while True:
                at = t_start + phase + n / rate
                if at >= t_end:
                    break
                delay = at - time.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                target = closed[(m.idx + n * senders) % len(closed)]
                client_id = f"{tag}-{m.idx}-{n}"
                if on:
                    m.mentions_sent[client_id] = target.idx
                now = time.time()
                m.first_send = m.first_send or now
                body = f"{mark}{target.name} bench {m.idx}/{n}:{now:.6f}"
                await ws.send(
                    json.dumps({"action": "sendmessage", "body": body, "client_id": client_id})
                )
                m.sent += 1
                n += 1
            await done_q.put(m.idx)
        await finish.wait()
        read_task.cancel()


def stream_positions(user_ids: dict[str, Any]) -> dict[str, int]:
    """Each user's stream position (Inbox.seq; 0 before their first event), by username."""
    from django.db import connection

    from chat.models import Inbox

    try:
        seqs = dict(Inbox.objects.filter(user_id__in=user_ids.values()).values_list("user", "seq"))
        return {name: seqs.get(pk, 0) for name, pk in user_ids.items()}
    finally:
        connection.close()  # called from a worker thread of the load's event loop


async def notify_load(
    members: list[Member],
    user_ids: dict[str, Any],
    on: bool,
    rate: float,
    seconds: float,
    drain: float,
    compression: str | None,
    pid: int,
) -> dict[str, Any]:
    senders = [m for m in members if m.sender]
    closed = [m for m in members if not m.sender]
    ready_q: asyncio.Queue[int] = asyncio.Queue()
    done_q: asyncio.Queue[int] = asyncio.Queue()
    go, finish = asyncio.Event(), asyncio.Event()
    times: dict[str, float] = {}
    tag = uuid.uuid4().hex[:10]
    tasks = []
    for m in members:
        tasks.append(
            asyncio.create_task(
                run_member(
                    m,
                    closed,
                    len(senders),
                    on,
                    rate,
                    tag,
                    ready_q,
                    go,
                    times,
                    done_q,
                    finish,
                    compression,
                )
            )
        )
        await asyncio.sleep(0.005)  # do not stampede the accept path
    for _ in members:
        await asyncio.wait_for(ready_q.get(), 120)
    await asyncio.sleep(0.5)  # let presence announcements settle
    cpu0, scpu0 = common.self_cpu_seconds(), common.cpu_seconds(pid)
    times["start"] = time.time() + 0.2
    times["end"] = times["start"] + seconds
    go.set()
    for _ in senders:
        await done_q.get()
    send_end = time.time()
    # Drain: every send acknowledged, every subscriber at the room's last seq, every stream at
    # its stored position (read once the acks are in: a message's notify events are stored
    # before its ack goes out).
    final_stream: dict[str, int] = {}
    deadline = time.time() + drain
    while time.time() < deadline:
        if all(len(m.acks) >= m.sent for m in senders):
            final_room = max((s for m in senders for s in m.acks.values()), default=0)
            if all(m.max_seq >= final_room for m in senders):
                final_stream = await asyncio.to_thread(stream_positions, user_ids)
                if all(m.max_user_seq >= final_stream[m.name] for m in members):
                    break
        await asyncio.sleep(0.1)
    await asyncio.sleep(0.3)  # late duplicates would arrive now
    wall = time.time() - times["start"]
    cpu1, scpu1 = common.self_cpu_seconds(), common.cpu_seconds(pid)
    final_stream = await asyncio.to_thread(stream_positions, user_ids)
    load1 = os.getloadavg()[0]
    finish.set()
    await asyncio.gather(*tasks, return_exceptions=True)

    # The room's events, at its subscribers.
    final_room = max((s for m in senders for s in m.acks.values()), default=0)
    lost = dup = ooo = delivered = unacked = 0
    lats: list[float] = []
    last_room = 0.0
    for m in senders:
        expected = set(range((m.sub_seq or 0) + 1, final_room + 1))
        got = set(m.seqs)
        delivered += len(m.seqs)
        lost += len(expected - got)
        dup += len(m.seqs) - len(got)
        ooo += out_of_order(m.seqs)
        unacked += m.sent - len(m.acks)
        lats.extend(m.latencies)
        last_room = max(last_room, m.last_receipt)
    # The users' streams, at every member (a sender looks at the room: it should hear nothing).
    s_lost = s_dup = s_ooo = notified = 0
    kinds: dict[str, int] = {}
    for m in members:
        expected = set(range(m.stream_start + 1, final_stream.get(m.name, 0) + 1))
        got = set(m.user_seqs)
        notified += len(m.user_seqs)
        s_lost += len(expected - got)
        s_dup += len(m.user_seqs) - len(got)
        s_ooo += out_of_order(m.user_seqs)
        for what, count in m.kinds.items():
            kinds[what] = kinds.get(what, 0) + count
    by_idx = {m.idx: m for m in members}
    mentions_acked = mentions_missing = 0
    for m in senders:
        for client_id, target in m.mentions_sent.items():
            if client_id in m.acks:
                mentions_acked += 1
                mentions_missing += client_id not in by_idx[target].mentioned_in
    first_send = min((m.first_send for m in senders if m.first_send), default=times["start"])
    n_lats = [x for m in members for x in m.notify_latencies]
    u_lats = [(t - first_send) * 1000 for m in members for t in m.unread_at]
    last_any = max([last_room, *(m.last_notify for m in members)])
    span_room = max(1e-9, last_room - times["start"])
    span_all = max(1e-9, last_any - times["start"])
    errors: dict[str, int] = {}
    for m in members:
        for code in m.errors:
            errors[code] = errors.get(code, 0) + 1
    sent = sum(m.sent for m in senders)
    return {
        "notify": "on" if on else "off",
        "sent": sent,
        "room_delivered": delivered,
        "room_demanded": sent * len(senders),
        "room_per_s": delivered / span_room,
        "notify_delivered": notified,
        "notify_per_s": notified / span_all,
        "total_per_s": (delivered + notified) / span_all,
        "room_p50": common.percentile(lats, 50),
        "room_p99": common.percentile(lats, 99),
        "notify_p50": common.percentile(n_lats, 50),
        "notify_p99": common.percentile(n_lats, 99),
        "unread_p99": common.percentile(u_lats, 99),
        "kinds": kinds,
        "mentions": kinds.get("mention", 0),
        "unread": kinds.get("unread", 0),
        "sender_notify": sum(len(m.user_seqs) for m in senders),
        "mentions_acked": mentions_acked,
        "mentions_missing": mentions_missing,
        "lost": lost,
        "duplicated": dup,
        "out_of_order": ooo,
        "unacked": unacked,
        "stream_lost": s_lost,
        "stream_duplicated": s_dup,
        "stream_out_of_order": s_ooo,
        # "off" must raise nothing: a notify event there means the reference is not one.
        "unexpected_notify": 0 if on else notified,
        "drain_s": max(0.0, last_any - send_end),
        "errors": errors,
        "server_cpu": (scpu1 - scpu0) / wall,
        # What one delivery costs the server: comparable between runs on a machine whose load
        # varies, where deliveries/s and latency are not.
        "cpu_us_per_delivery": 1e6 * (scpu1 - scpu0) / max(1, delivered),
        "gen_cpu": (cpu1 - cpu0) / wall,
        "load1": load1,
    }


def out_of_order(seqs: list[int]) -> int:
    count, high = 0, -1
    for s in seqs:
        if s < high:
            count += 1
        high = max(high, s)
    return count


def notify_members(count: int) -> tuple[int, dict[str, Any]]:
    """The bench users and their room, every one of them a member (made once, kept)."""
    from django.contrib.auth import get_user_model

    from chat.models import Membership, Room

    User = get_user_model()
    names = [NOTIFY_USER.format(i) for i in range(count)]
    have = set(User.objects.filter(username__in=names).values_list("username", flat=True))
    User.objects.bulk_create([User(username=n, password="!") for n in names if n not in have])
    ids = dict(User.objects.filter(username__in=names).values_list("username", "pk"))
    room, _ = Room.objects.get_or_create(slug=NOTIFY_ROOM, defaults={"title": "Bench notify"})
    Membership.objects.bulk_create(
        [Membership(room=room, user_id=ids[n], read_seq=room.seq) for n in names],
        ignore_conflicts=True,
    )
    return room.pk, {n: ids[n] for n in names}


def notify_reset(room_id: int, user_ids: dict[str, Any], senders: int, on: bool) -> None:
    """Before a run: every member has read the room (so the run's first message raises one
    `unread` per closed member), at the level of the mode (closed members `none` when off)."""
    from chat.models import Membership, Room

    room = Room.objects.get(pk=room_id)
    names = list(user_ids)
    memberships = Membership.objects.filter(room=room)
    memberships.update(read_seq=room.seq, notify_level="")
    if not on:
        closed = [user_ids[n] for n in names[senders:]]
        memberships.filter(user_id__in=closed).update(notify_level=Membership.NONE)


def one_notify_run(on: bool, args: argparse.Namespace) -> dict[str, Any]:
    from django.contrib.auth import get_user_model

    from chat.tokens import make_token

    env = common.bench_env(**dict(kv.split("=", 1) for kv in args.server_env))
    if args.server_root:
        env["BENCH_SERVER_ROOT"] = args.server_root
    room_id, user_ids = notify_members(args.members)
    notify_reset(room_id, user_ids, args.open, on)
    starts = stream_positions(user_ids)
    users = get_user_model().objects.in_bulk(list(user_ids.values()))
    with common.Server.uvicorn(env) as server:
        members = []
        for i, (name, pk) in enumerate(user_ids.items()):
            sender = i < args.open
            url = f"{server.ws_url}?token={make_token(users[pk])}"
            if sender:
                url += f"&room={NOTIFY_ROOM}"
            members.append(Member(i, name, url, sender, stream_start=starts[name]))
        compression = None if args.no_compression else "deflate"
        return asyncio.run(
            notify_load(
                members,
                user_ids,
                on,
                args.rate,
                args.seconds,
                args.drain,
                compression,
                server.pid,
            )
        )


NOTIFY_COLUMNS = [
    ("room/s", "room_per_s", 0),
    ("notify/s", "notify_per_s", 1),
    ("total/s", "total_per_s", 0),
    ("room p50", "room_p50", 1),
    ("room p99", "room_p99", 1),
    ("ntfy p50", "notify_p50", 1),
    ("ntfy p99", "notify_p99", 1),
    ("unread p99", "unread_p99", 1),
    ("mention", "mentions", 0),
    ("unread", "unread", 0),
    ("lost", "lost", 0),
    ("dup+ooo", "room_dup_ooo", 0),
    ("unacked", "unacked", 0),
    ("s.lost", "stream_lost", 0),
    ("s.dup+ooo", "stream_dup_ooo", 0),
    ("m.miss", "mentions_missing", 0),
    ("srv CPU", "server_cpu", 2),
    ("µs/deliv", "cpu_us_per_delivery", 1),
    ("gen CPU", "gen_cpu", 2),
    ("load1", "load1", 2),
]
# Counts of what went wrong: the worst run, not the median.
NOTIFY_FAULTS = (
    "lost",
    "duplicated",
    "out_of_order",
    "unacked",
    "stream_lost",
    "stream_duplicated",
    "stream_out_of_order",
    "mentions_missing",
    "unexpected_notify",
)


def notify_row(label: str, r: dict[str, Any]) -> list[Any]:
    r = {
        **r,
        "room_dup_ooo": r["duplicated"] + r["out_of_order"],
        "stream_dup_ooo": r["stream_duplicated"] + r["stream_out_of_order"],
    }
    out: list[Any] = [label]
    for _, key, digits in NOTIFY_COLUMNS:
        v = r[key]
        if isinstance(v, float):
            v = "-" if v != v else f"{v:,.{digits}f}"
        out.append(v)
    return out


def notify_main(args: argparse.Namespace) -> int:
    seconds = args.seconds
    closed = args.members - args.open
    demanded = args.open * args.rate * args.open
    print(
        f"notify: 1 room of {args.members} members, {args.open} with it open sending "
        f"{args.rate:g} msg/s each ({demanded:,.0f} room deliveries/s demanded), {closed} with "
        f"only their stream; {seconds:g} s per run, {args.runs} rounds of on/off, "
        f"compression {'off' if args.no_compression else 'deflate'}, "
        f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}",
        flush=True,
    )
    t0 = time.monotonic()
    results: dict[str, list[dict[str, Any]]] = {"on": [], "off": []}
    for rnd in range(args.runs):
        # Alternate which goes first, so that neither always runs on a warmer machine.
        for mode in ("on", "off") if rnd % 2 == 0 else ("off", "on"):
            r = one_notify_run(mode == "on", args)
            results[mode].append(r)
            print(
                f"  round {rnd + 1} {mode}: room {r['room_per_s']:,.0f}/s p99 "
                f"{r['room_p99']:.1f} ms; notify {r['notify_delivered']} "
                f"({r['kinds']}) p99 {r['notify_p99']:.1f} ms; mentions "
                f"{r['mentions_acked'] - r['mentions_missing']}/{r['mentions_acked']}; "
                f"faults {sum(r[k] for k in NOTIFY_FAULTS)}, errors {r['errors']}; "
                f"load {r['load1']:.2f}",
                flush=True,
            )
    med: dict[str, dict[str, float]] = {}
    rows = []
    for mode, runs in results.items():
        for i, r in enumerate(runs):
            rows.append(notify_row(f"{mode} run {i + 1}", r))
        med[mode] = {key: common.median(r[key] for r in runs) for key in runs[0] if key in KEYS}
        for key in NOTIFY_FAULTS:
            med[mode][key] = max(r[key] for r in runs)
        rows.append(notify_row(f"{mode} MEDIAN (faults: max)", med[mode]))
    print()
    print(
        f"{args.members} members, {args.open} open x {args.rate:g} msg/s, {closed} closed; "
        "latencies in ms (notify: mentions, from the body's send time; unread: from the run's "
        "first send, an upper bound)"
    )
    print(common.table(["run", *(c[0] for c in NOTIFY_COLUMNS)], rows))
    paired = [
        on["room_per_s"] / off["room_per_s"]
        for on, off in zip(results["on"], results["off"], strict=True)
    ]
    paired_p99 = [
        on["room_p99"] / off["room_p99"]
        for on, off in zip(results["on"], results["off"], strict=True)
    ]
    ratio = common.median(paired)
    ratio_p99 = common.median(paired_p99)
    faults = {mode: sum(med[mode][k] for k in NOTIFY_FAULTS) for mode in med}
    print(
        f"on/off, median of the rounds' ratios: room deliveries/s {ratio:.3f} "
        f"({', '.join(f'{x:.3f}' for x in paired)}), room p99 {ratio_p99:.2f} "
        f"({', '.join(f'{x:.2f}' for x in paired_p99)})"
    )
    print(
        f"p99 ms: room on {med['on']['room_p99']:.1f}, off {med['off']['room_p99']:.1f}; "
        f"notify (mentions) on {med['on']['notify_p99']:.1f}; unread on "
        f"{med['on']['unread_p99']:.1f} (upper bound); faults (worst run) on {faults['on']:g}, "
        f"off {faults['off']:g}; took {time.monotonic() - t0:.0f} s"
    )
    budgets = [
        common.budget(
            "fanout notify: room deliveries/s, on as % of off (same round)",
            100 * ratio,
            80,
            "min",
            "%",
        ),
        common.budget(
            "fanout notify: room+stream lost/dup/ooo/unacked/missed, on and off (worst)",
            faults["on"] + faults["off"],
            0,
            "max",
            "",
        ),
    ]
    print()
    common.print_budgets(budgets)
    summary = {
        "medians": med,
        "ratio_room_per_s": ratio,
        "ratio_room_p99": ratio_p99,
        "paired_room_per_s": paired,
        "paired_room_p99": paired_p99,
    }
    common.write_json(args.json, {"budgets": budgets, "summary": summary, "runs": results})
    return 0 if all(b["ok"] for b in budgets) else 1


KEYS = {key for _, key, _ in NOTIFY_COLUMNS} | {
    "sent",
    "room_delivered",
    "room_demanded",
    "notify_delivered",
    "mentions_acked",
    "sender_notify",
    "drain_s",
}


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--loads",
        default=",".join(BUDGETS),
        help="ROOMSxCLIENTSxRATE, comma-separated (default: every load with a budget)",
    )
    ap.add_argument("--seconds", type=float, help="seconds of sending per run (10; --notify: 15)")
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
    ap.add_argument("--notify", action="store_true", help="the user-stream scenario (see above)")
    ap.add_argument("--members", type=int, default=200, help="--notify: the room's members")
    ap.add_argument("--open", type=int, default=10, help="--notify: members with it open")
    ap.add_argument("--rate", type=float, default=1.0, help="--notify: msg/s per open member")
    ap.add_argument("--json")
    args = ap.parse_args()
    if args.seconds is None:
        args.seconds = 15.0 if args.notify else 10.0

    nofile = common.raise_nofile()
    common.ensure_database()
    common.setup_django()
    if args.notify:
        return notify_main(args)
    loads = [Load.parse(x) for x in args.loads.split(",")]
    targets = args.targets.split(",")
    print(
        f"fan-out: loads {', '.join(x.key for x in loads)}, {args.seconds:g} s per run, "
        f"{args.runs} runs, ulimit -n {nofile}, compression {'off' if args.no_compression else 'deflate'}"
        + (f", server env {args.server_env}" if args.server_env else ""),
        flush=True,
    )
    results: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for load_ in loads:
        key = load_.key
        results[key] = {t: [] for t in targets}
        for run in range(args.runs):
            # Alternated, so that both targets see the same drift of the machine's load.
            for target in targets:
                r = one_run(target, args, load_)
                results[key][target].append(r)
                print(
                    f"  {key} run {run + 1} {target}: {r['deliveries_per_s']:,.0f} deliveries/s, "
                    f"p99 {r['p99']:.1f} ms, lost {r['lost']}, dup {r['duplicated']}, "
                    f"errors {r['errors']}, load {r['load_before']:.2f}-{r['load_after']:.2f}",
                    flush=True,
                )

    budgets = []
    summary: dict[str, Any] = {}
    for load_ in loads:
        key, by_target = load_.key, results[load_.key]
        print()
        print(
            f"{load_.rooms} rooms x {load_.clients} clients at {load_.rate:g} msg/s per client: "
            f"{load_.demanded:,.0f} deliveries/s demanded"
        )
        rows = []
        med: dict[str, dict[str, float]] = {}
        for target, runs in by_target.items():
            for i, r in enumerate(runs):
                rows.append(row(f"{target} run {i + 1}", r))
            med[target] = {k: common.median(r[k] for r in runs) for _, k, _ in COLUMNS}
            for fault in FAULTS:
                med[target][fault] = max(r[fault] for r in runs)
            rows.append(row(f"{target} MEDIAN (loss: max)", med[target]))
        print(common.table(["target", *(c[0] for c in COLUMNS)], rows))
        ratio = None
        if "chat" in by_target and "baseline" in by_target:
            # Run by run (each pair measured back to back), then the median of the ratios.
            ratio = common.median(
                c["deliveries_per_s"] / b["deliveries_per_s"]
                for c, b in zip(by_target["chat"], by_target["baseline"], strict=True)
            )
            print(f"chat deliveries/s as a ratio of the baseline (median of the runs): {ratio:.2f}")
            med["chat"]["ratio_to_baseline"] = ratio
        loadavg = [
            r[k] for runs in by_target.values() for r in runs for k in ("load_before", "load_after")
        ]
        print(
            f"machine load average (1 min) during the runs: {min(loadavg):.2f}-{max(loadavg):.2f}"
        )
        summary[key] = med
        budgets.extend(load_budgets(load_, med.get("chat"), ratio))
    print()
    common.print_budgets(budgets)
    common.write_json(args.json, {"budgets": budgets, "summary": summary, "runs": results})
    return 0 if all(b["ok"] for b in budgets) else 1


FAULTS = ("lost", "duplicated", "out_of_order", "unacked")


def load_budgets(
    load_: Load, chat: dict[str, float] | None, ratio: float | None
) -> list[dict[str, Any]]:
    """The budgets of one load (BUDGETS) from the chat target's medians; none for other loads."""
    limits = BUDGETS.get(load_.key)
    if chat is None or limits is None:
        return []
    name = f"fanout {load_.key}"
    out = []
    if "min_share" in limits:
        share = limits["min_share"]
        out.append(
            common.budget(
                f"{name} deliveries/s (≥{share:.0%} of {load_.demanded:,.0f})",
                chat["deliveries_per_s"],
                share * load_.demanded,
                "min",
                "/s",
            )
        )
    if "min_ratio" in limits:
        # Without the baseline in the run there is nothing to compare with: the budget fails.
        out.append(
            common.budget(
                f"{name} deliveries/s as % of the baseline's (same run)",
                math.nan if ratio is None else 100 * ratio,
                100 * limits["min_ratio"],
                "min",
                "%",
            )
        )
    out.append(
        common.budget(
            f"{name} lost+dup+ooo+unacked (worst)", sum(chat[f] for f in FAULTS), 0, "max", ""
        )
    )
    out.append(common.budget(f"{name} p99 latency", chat["p99"], limits["p99"], "max", "ms"))
    return out


if __name__ == "__main__":
    sys.exit(main())
