"""Soak: steady mixed traffic for a long time (30 minutes by default) on every live transport.

`make soak` (not part of `make test` or `make bench`). Started on 127.0.0.1, on the bench
PostgreSQL database and Redis (bench/common.py):
  * the self-hosted deployment: one uvicorn process with chatsite.asgi (as bench/fanout.py starts
    it), with Channels WebSocket clients and long-poll clients;
  * the serverless deployment: `manage.py localgateway` (Zappa's real handler behind the API
    Gateway stand-in in localgateway/, the stage's environment from zappa_settings.json), with
    WebSocket clients through its WebSocket API and long-poll clients through its REST API.

Rooms belong to one deployment each. Both servers share the database, but each publishes only
through its own CHAT_FANOUT_BACKENDS (the channel layer on uvicorn; API Gateway's @connections in the
Zappa stage), so a message posted on one server reaches the other's sockets only if a client
fills the gap from the database. That is not how either deployment runs, so a room's clients all
talk to the same server, and its losses are that server's.

Every client sends at a steady rate with a client_id and waits for the acknowledgement (the
WebSocket `ack`, or the 201 of POST .../messages for long-poll clients), sending again with the
same client_id when it does not come. Every client records what it receives by (room, seq, id).
WebSocket clients also reconnect now and then (--reconnect-every) and resume from their cursor,
as a browser on a flaky network does; a resumed message counts as received.

Printed every minute: deliveries/s, latency from send to receipt (p50/p99 of live deliveries, and
p99 per transport), p99 of acknowledgements, acknowledged messages still missing after 15 s,
duplicates, out-of-order, reconnects, and each server's RSS and CPU. At the end: RSS at start and
end, totals per transport, and the verdict. Exit status 1 if any acknowledged message did not
reach every client of its room, a send was never acknowledged, or a transport that delivers in
seq order (all but API Gateway's fan-out; see ORDERED) sent one twice or out of order.

    .venv/bin/python bench/soak.py [--minutes 30] [--rooms 2] [--ws 5] [--pollers 2] [--rate 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import string
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common

CHANNELS, GATEWAY = "channels", "gateway"
TRANSPORTS = ("channels-ws", "gateway-ws", "channels-poll", "gateway-poll")
SHORT = {
    "channels-ws": "chWS",
    "gateway-ws": "gwWS",
    "channels-poll": "chLP",
    "gateway-poll": "gwLP",
}
# An acknowledged message a client has not received after this long is "missing so far"; the
# slowest path, a reconnect followed by a resume, takes a second or two.
GRACE = 15.0
ACK_TIMEOUT = 10.0
# Below the gateway stage's CHAT_POLL_MAX_TIMEOUT (20) and API Gateway's 29 s integration limit.
POLL_TIMEOUT = 20
# Transports whose server sends each room's events in seq order and once: the Channels consumer
# fills gaps itself, and a long-poll answer is a database read. API Gateway fan-out is not among
# them: concurrent invocations post to the same connection, so two close messages can arrive
# swapped, and the protocol leaves the reordering to the client (it fills a gap by seq and
# ignores what is at or below its cursor). Its duplicates and reordering are reported, not failed.
ORDERED = ("channels-ws", "channels-poll", "gateway-poll")


class Retry(Exception):
    """A send to try again with the same client_id (the server stores it at most once)."""


@dataclass
class Room:
    slug: str
    deployment: str
    acked: dict[int, tuple[int, float]] = field(default_factory=dict)  # seq -> (id, when)
    ids: dict[int, int] = field(default_factory=dict)  # seq -> message id, as first seen


@dataclass
class Window:
    """What happened in one reporting interval (or, for the totals, in the whole run)."""

    deliveries: int = 0
    acked: int = 0
    reconnects: int = 0
    latencies: dict[str, list[float]] = field(default_factory=lambda: {t: [] for t in TRANSPORTS})
    ack_ms: list[float] = field(default_factory=list)


class Receiver:
    """What one client received of its room, and how it arrived.

    `start` is the room's seq when the client first subscribed: it is owed every acknowledged
    message after that. `cursor` is the protocol's resume cursor (everything up to it received).
    `cutoff` is the seq up to which the current connection's subscribe reply resumes: events at or
    below it are the resume (no latency, and one already received is the documented overlap of a
    resume with live push, not a duplicate)."""

    def __init__(self, soak: Soak, room: Room, transport: str) -> None:
        self.soak = soak
        self.room = room
        self.transport = transport
        self.start: int | None = None
        self.seen: set[int] = set()
        self.high = 0
        self.cursor = 0
        self.cutoff = 0
        # Events that arrive before the `subscribed` reply wait for it: until then the client
        # cannot tell a resumed event from a live one. None when not waiting.
        self.buffer: list[tuple[dict[str, Any], float]] | None = None
        self.live = self.resumed = self.duplicates = self.out_of_order = self.overlap = 0
        self.mismatched = self.resyncs = 0

    def expect_subscribed(self) -> None:
        self.buffer = []

    def subscribed(self, seq: int, resync: bool = False) -> None:
        if self.start is None:
            self.start = self.high = self.cursor = seq
        elif resync:
            # The cursor was too old to resume: a page would reload history. Whatever was not
            # received stays missing, so it shows as loss.
            self.resyncs += 1
        self.cutoff = seq
        waiting, self.buffer = self.buffer or [], None
        for event, at in waiting:
            self.message(event, at)

    def message(self, event: dict[str, Any], at: float) -> None:
        if self.buffer is not None:
            self.buffer.append((event, at))
            return
        seq, mid = event["seq"], event["id"]
        if self.room.ids.setdefault(seq, mid) != mid:
            self.mismatched += 1
        if self.start is None or seq <= self.start:
            return  # from before this client joined the room
        if seq in self.seen:
            if seq <= self.cutoff:
                self.overlap += 1
            else:
                self.duplicates += 1
            return
        self.seen.add(seq)
        self.soak.window.deliveries += 1
        self.soak.total.deliveries += 1
        if seq <= self.cutoff:
            self.resumed += 1
        else:
            self.live += 1
            if seq < self.high:
                self.out_of_order += 1
            try:
                sent_at = float(event["body"].rsplit(":", 1)[1])
            except (IndexError, ValueError):
                sent_at = at
            ms = (at - sent_at) * 1000
            self.soak.window.latencies[self.transport].append(ms)
            self.soak.total.latencies[self.transport].append(ms)
        self.high = max(self.high, seq)
        while self.cursor + 1 in self.seen:
            self.cursor += 1

    def missing(self, before: float | None = None) -> int:
        """Acknowledged messages owed to this client and not received (acked before `before`)."""
        if self.start is None:
            return 0
        start, seen = self.start, self.seen
        return sum(
            1
            for seq, (_, when) in self.room.acked.items()
            if seq > start and seq not in seen and (before is None or when < before)
        )

    def unexpected(self) -> int:
        """Received, but never acknowledged to any sender of this run."""
        return sum(1 for seq in self.seen if seq not in self.room.acked)


class Client:
    transport = ""

    def __init__(self, soak: Soak, name: str, user: Any, room: Room, rate: float) -> None:
        self.soak = soak
        self.name = name
        self.user = user
        self.room = room
        self.rate = rate
        self.rx = Receiver(soak, room, self.transport)
        self.up = asyncio.Event()
        self.reconnects = self.drops = 0

    async def run(self) -> None:
        raise NotImplementedError

    async def post(self, client_id: str, body: str) -> tuple[int, int]:
        """Send one message; its (seq, id) once acknowledged, or Retry."""
        raise NotImplementedError

    async def send_loop(self) -> None:
        soak = self.soak
        await soak.go.wait()
        period = 1 / self.rate
        # A random phase per client, so sends are spread over time rather than in bursts.
        phase = random.uniform(0, period)
        n = 0
        while True:
            at = soak.t_start + phase + n * period
            if at >= soak.t_end:
                break
            delay = at - time.time()
            if delay > 0:
                await asyncio.sleep(delay)
            sent_at = time.time()
            client_id = f"soak-{soak.tag}-{self.name}-{n}"
            body = f"soak {self.name} {n}:{sent_at:.6f}"
            acked = await self.post_until_acked(client_id, body)
            if acked is not None:
                soak.acked(self.room, acked[0], acked[1], sent_at)
            n += 1

    async def post_until_acked(self, client_id: str, body: str) -> tuple[int, int] | None:
        soak = self.soak
        deadline = soak.t_end + soak.args.drain
        while time.time() < deadline:
            try:
                await asyncio.wait_for(self.up.wait(), max(0.1, deadline - time.time()))
                return await asyncio.wait_for(self.post(client_id, body), ACK_TIMEOUT)
            except (Retry, TimeoutError, OSError) as exc:
                soak.retries[f"{self.transport} {exc.__class__.__name__} {exc}".strip()] += 1
            except Exception as exc:  # aiohttp and websockets errors: retried the same way
                soak.retries[f"{self.transport} {exc.__class__.__name__}"] += 1
            await asyncio.sleep(0.5)
        soak.unacked += 1
        return None


class WsClient(Client):
    def __init__(
        self, soak: Soak, name: str, user: Any, room: Room, rate: float, url: str, transport: str
    ) -> None:
        self.transport = transport
        super().__init__(soak, name, user, room, rate)
        self.url = url
        self.ws: Any = None
        self.pending: dict[str, asyncio.Future[tuple[int, int]]] = {}
        self.closing = False

    async def run(self) -> None:
        from websockets.asyncio.client import connect

        from chat.tokens import make_token

        soak = self.soak
        while not soak.stopping:
            # A fresh token per connection, as a page asks POST /api/ws-token before each one:
            # tokens live minutes, the run far longer.
            url = f"{self.url}?token={make_token(self.user)}"
            self.closing = False
            try:
                async with connect(
                    url, open_timeout=30, proxy=None, max_size=2**20, max_queue=None
                ) as ws:
                    await self.session(ws)
            except Exception as exc:
                if soak.stopping:
                    break
                soak.errors[f"{self.transport} connection: {exc.__class__.__name__}"] += 1
            finally:
                self.down()
            if soak.stopping:
                break
            if not self.closing:
                self.drops += 1
            self.reconnects += 1
            soak.window.reconnects += 1
            soak.total.reconnects += 1
            await asyncio.sleep(random.uniform(0.2, 1.0))

    async def session(self, ws: Any) -> None:
        self.ws = ws
        rx = self.rx
        frame: dict[str, Any] = {"action": "subscribe", "room": self.room.slug}
        if rx.start is not None:
            frame["after"] = rx.cursor
        rx.expect_subscribed()
        await ws.send(json.dumps(frame))
        churn = asyncio.create_task(self.churn(ws)) if self.soak.args.reconnect_every else None
        try:
            async for text in ws:
                now = time.time()
                event = json.loads(text)
                kind = event.get("type")
                if kind == "message":
                    rx.message(event, now)
                elif kind == "ack":
                    future = self.pending.pop(event.get("client_id"), None)
                    if future is not None and not future.done():
                        future.set_result((event["seq"], event["id"]))
                elif kind == "subscribed":
                    rx.subscribed(event["seq"], resync=event.get("reason") == "resync")
                    self.up.set()
                elif kind == "error":
                    code = event.get("code", "?")
                    self.soak.errors[f"{self.transport} error event: {code}"] += 1
                    future = self.pending.pop(event.get("client_id"), None)
                    if future is not None and not future.done():
                        future.set_exception(Retry(code))
        finally:
            if churn is not None:
                churn.cancel()

    async def churn(self, ws: Any) -> None:
        await asyncio.sleep(random.expovariate(1 / self.soak.args.reconnect_every))
        if self.soak.stopping or time.time() > self.soak.t_end:
            return
        self.closing = True
        await ws.close()

    def down(self) -> None:
        self.ws = None
        self.up.clear()
        # An event that waited for a `subscribed` that never came is resumed on the next one.
        self.rx.buffer = None
        for future in self.pending.values():
            if not future.done():
                future.set_exception(Retry("reconnect"))
        self.pending.clear()

    async def post(self, client_id: str, body: str) -> tuple[int, int]:
        ws = self.ws
        if ws is None:
            raise Retry("not connected")
        future: asyncio.Future[tuple[int, int]] = asyncio.get_running_loop().create_future()
        self.pending[client_id] = future
        try:
            frame = {
                "action": "sendmessage",
                "room": self.room.slug,
                "body": body,
                "client_id": client_id,
            }
            await ws.send(json.dumps(frame))
            return await future
        finally:
            if self.pending.get(client_id) is future:
                del self.pending[client_id]


class PollClient(Client):
    def __init__(
        self,
        soak: Soak,
        name: str,
        user: Any,
        room: Room,
        rate: float,
        base: str,
        transport: str,
        session_key: str,
    ) -> None:
        self.transport = transport
        super().__init__(soak, name, user, room, rate)
        self.base = base
        # The CSRF cookie and header a page would send; any 32 alphanumerics are a valid secret.
        csrf = "".join(random.choices(string.ascii_letters + string.digits, k=32))
        # Origin and Referer too: Zappa marks requests from API Gateway as HTTPS, where Django
        # refuses an unsafe request without a Referer, as a page on that origin always sends.
        self.headers = {
            "Cookie": f"sessionid={session_key}; csrftoken={csrf}",
            "X-CSRFToken": csrf,
            "Origin": base,
            "Referer": f"{base}/rooms/{room.slug}/",
        }
        self.http: Any = None

    async def run(self) -> None:
        import aiohttp

        soak = self.soak
        timeout = aiohttp.ClientTimeout(total=POLL_TIMEOUT + 20)
        async with aiohttp.ClientSession(
            self.base,
            timeout=timeout,
            headers=self.headers,
            cookie_jar=aiohttp.DummyCookieJar(),
        ) as http:
            self.http = http
            # A page starts from the room's seq, as the rooms list gives it.
            while self.rx.start is None and not soak.stopping:
                try:
                    async with http.get("/api/rooms/") as r:
                        rooms = (await r.json())["rooms"]
                    seq = next(room["seq"] for room in rooms if room["slug"] == self.room.slug)
                    self.rx.subscribed(seq)
                except Exception as exc:
                    soak.errors[f"{self.transport} rooms list: {exc.__class__.__name__}"] += 1
                    await asyncio.sleep(1)
            self.up.set()
            after = self.rx.cursor
            url = f"/api/rooms/{self.room.slug}/poll"
            while not soak.stopping:
                try:
                    async with http.get(url, params={"after": after, "timeout": POLL_TIMEOUT}) as r:
                        status = r.status
                        data = await r.json(content_type=None)
                    now = time.time()
                except Exception as exc:
                    soak.errors[f"{self.transport} poll: {exc.__class__.__name__}"] += 1
                    await asyncio.sleep(1)
                    continue
                if status != 200:
                    soak.errors[f"{self.transport} poll: HTTP {status} {data.get('error')}"] += 1
                    await asyncio.sleep(1)
                    continue
                if data.get("resync"):
                    self.rx.resyncs += 1
                for event in data.get("events", []):
                    if event.get("type") == "message":
                        self.rx.message(event, now)
                # The server's cursor, as the browser client uses it: a change the answer
                # skipped would never be asked for again, and shows as loss.
                after = max(after, data["seq"])

    async def post(self, client_id: str, body: str) -> tuple[int, int]:
        if self.http is None:
            raise Retry("no session")
        async with self.http.post(
            f"/api/rooms/{self.room.slug}/messages", json={"body": body, "client_id": client_id}
        ) as r:
            data = await r.json(content_type=None)
            if r.status in (200, 201):
                return data["seq"], data["id"]
        self.soak.errors[f"{self.transport} post: HTTP {r.status} {data.get('error')}"] += 1
        raise Retry(f"HTTP {r.status}")


class Soak:
    def __init__(self, args: argparse.Namespace, servers: dict[str, common.LoggedServer]) -> None:
        self.args = args
        self.servers = servers
        self.tag = uuid.uuid4().hex[:8]
        self.window = Window()
        self.total = Window()
        self.go = asyncio.Event()
        self.t_start = self.t_end = 0.0
        self.stopping = False
        self.clients: list[Client] = []
        self.errors: Counter[str] = Counter()
        self.retries: Counter[str] = Counter()
        self.unacked = 0
        self.rows: list[dict[str, Any]] = []
        self.rss: dict[str, list[tuple[float, float]]] = {name: [] for name in servers}
        self.cpu_mark: dict[str, float] = {}
        self.window_start = 0.0
        self.server_died = ""
        self.rss_start: dict[str, float] = {}
        self.rss_end: dict[str, float] = {}
        self.drained_s = 0.0
        self.own_cpu = 0.0
        # Every process of each server (the local gateway runs containers for Zappa's @task
        # invocations as child processes): pid -> (server, label), and (RSS MB, CPU s) per pid
        # at the start and the end of the traffic.
        self.procs: dict[int, tuple[str, str]] = {}
        self.procs_start: dict[int, tuple[float, float]] = {}
        self.procs_end: dict[int, tuple[float, float]] = {}
        self.with_children: list[str] = []

    def acked(self, room: Room, seq: int, mid: int, sent_at: float) -> None:
        now = time.time()
        room.acked[seq] = (mid, now)
        if room.ids.setdefault(seq, mid) != mid:
            self.errors["ack id differs from the delivered message's id"] += 1
        for w in (self.window, self.total):
            w.acked += 1
            w.ack_ms.append((now - sent_at) * 1000)

    def rss_mb(self) -> dict[str, float]:
        return {name: s.status().get("VmRSS", 0) / 1024 for name, s in self.servers.items()}

    def children_mb(self, name: str) -> float:
        pids = common.descendants(self.servers[name].pid)
        return sum(common.proc_status(pid).get("VmRSS", 0) for pid in pids) / 1024

    def processes(self) -> dict[int, tuple[float, float]]:
        """RSS (MB) and CPU seconds of every server process, children included."""
        out = {}
        for name, server in self.servers.items():
            for pid in [server.pid, *common.descendants(server.pid)]:
                label = "main" if pid == server.pid else common.process_label(pid)
                self.procs.setdefault(pid, (name, label))
                out[pid] = (common.proc_status(pid).get("VmRSS", 0) / 1024, common.cpu_seconds(pid))
        return out

    def mark(self) -> None:
        """Start a reporting window: CPU counters and the clock."""
        self.window_start = time.time()
        self.cpu_mark = {name: s.cpu() for name, s in self.servers.items()}

    def sample(self, label: str) -> dict[str, Any]:
        now = time.time()
        w, self.window = self.window, Window()
        span = max(1e-9, now - self.window_start)
        lats = [ms for values in w.latencies.values() for ms in values]
        rx = [c.rx for c in self.clients]
        row: dict[str, Any] = {
            "minute": label,
            "acked": w.acked,
            "deliveries_per_s": w.deliveries / span,
            "p50": common.percentile(lats, 50),
            "p99": common.percentile(lats, 99),
            **{f"p99 {t}": common.percentile(w.latencies[t], 99) for t in TRANSPORTS},
            "ack_p99": common.percentile(w.ack_ms, 99),
            "missing": sum(r.missing(before=now - GRACE) for r in rx),
            "duplicates": sum(r.duplicates for r in rx),
            "out_of_order": sum(r.out_of_order for r in rx),
            "reconnects": w.reconnects,
        }
        for name, server in self.servers.items():
            mb = server.status().get("VmRSS", 0) / 1024
            self.rss[name].append((now - self.t_start, mb))
            row[f"rss {name}"] = mb
            row[f"cpu {name}"] = (server.cpu() - self.cpu_mark[name]) / span * 100
            if name in self.with_children:
                row[f"children {name}"] = self.children_mb(name)
        self.mark()
        self.rows.append(row)
        return row

    async def reporter(self) -> None:
        minute = 0
        print(stream_header(self), flush=True)
        while True:
            minute += 1
            at = min(self.t_start + 60 * minute, self.t_end)
            while time.time() < at:
                await asyncio.sleep(min(1.0, at - time.time()))
                for name, server in self.servers.items():
                    if server.proc is not None and server.proc.poll() is not None:
                        self.server_died = f"{name} exited with {server.proc.returncode}"
                        return
            if at - self.window_start > 5 or minute == 1:
                print(stream_row(self.sample(str(minute)), self), flush=True)
            if at >= self.t_end:
                return


# --- the table printed as it goes (fixed widths) and again at the end ---


def columns(s: Soak) -> list[tuple[str, str, int]]:
    cols = [
        ("min", "minute", 0),
        ("acked", "acked", 0),
        ("deliv/s", "deliveries_per_s", 1),
        ("p50 ms", "p50", 1),
        ("p99 ms", "p99", 1),
        *((f"p99 {SHORT[t]}", f"p99 {t}", 1) for t in TRANSPORTS),
        ("ack p99", "ack_p99", 1),
        ("missing", "missing", 0),
        ("dup", "duplicates", 0),
        ("ooo", "out_of_order", 0),
        ("reconn", "reconnects", 0),
    ]
    for name in s.servers:
        short = "uv" if name == CHANNELS else "gw"
        cols.append((f"RSS {short} MB", f"rss {name}", 1))
        if name in s.with_children:
            cols.append((f"{short} kids MB", f"children {name}", 1))
        cols.append((f"CPU {short} %", f"cpu {name}", 0))
    return cols


def cells(row: dict[str, Any], s: Soak) -> list[Any]:
    out: list[Any] = []
    for _, key, digits in columns(s):
        value = row[key]
        out.append(round(value, digits) if isinstance(value, float) and digits else value)
        if isinstance(value, float) and not digits and value == value:
            out[-1] = round(value)
    return out


def stream_header(s: Soak) -> str:
    return "  ".join(h.rjust(max(len(h), 7)) for h, _, _ in columns(s))


def stream_row(row: dict[str, Any], s: Soak) -> str:
    widths = [max(len(h), 7) for h, _, _ in columns(s)]
    return "  ".join(common.fmt(c, 1).rjust(w) for c, w in zip(cells(row, s), widths, strict=True))


# --- set-up ---


def prepare(args: argparse.Namespace) -> tuple[list[Room], dict[str, Any], dict[str, str]]:
    """Rooms and users (kept between runs in the bench database), and sessions for the pollers."""
    from django.contrib.auth import get_user_model

    from chat.models import ApiConnection
    from chat.models import Room as RoomModel

    User = get_user_model()
    rooms = []
    for deployment in (CHANNELS, GATEWAY):
        for r in range(args.rooms):
            slug = f"soak-{deployment}-{r}"
            RoomModel.objects.get_or_create(slug=slug, defaults={"title": f"Soak {deployment} {r}"})
            rooms.append(Room(slug, deployment))
    names = [f"{room.slug}-ws{i}" for room in rooms for i in range(args.ws)]
    pollers = [f"{room.slug}-lp{i}" for room in rooms for i in range(args.pollers)]
    have = {u.username for u in User.objects.filter(username__in=names + pollers)}
    User.objects.bulk_create(
        [User(username=n, password="!") for n in names + pollers if n not in have]
    )
    users = {u.username: u for u in User.objects.filter(username__in=names + pollers)}
    # Connection rows an interrupted run left behind would receive (and 410) every fan-out.
    ApiConnection.objects.filter(user__in=users.values()).delete()
    sessions = {name: common.session_cookie(users[name]) for name in pollers}
    return rooms, users, sessions


def leftover_connections(users: dict[str, Any]) -> int:
    from chat.models import ApiConnection

    return ApiConnection.objects.filter(user__in=users.values()).count()


async def soak(
    args: argparse.Namespace,
    servers: dict[str, common.LoggedServer],
    rooms: list[Room],
    users: dict[str, Any],
    sessions: dict[str, str],
) -> Soak:
    s = Soak(args, servers)
    per_room = args.ws + args.pollers
    rate = args.rate / per_room  # each client's share of its room's rate
    for room in rooms:
        server = servers[room.deployment]
        for i in range(args.ws):
            name = f"{room.slug}-ws{i}"
            s.clients.append(
                WsClient(s, name, users[name], room, rate, server.ws_url, f"{room.deployment}-ws")
            )
        for i in range(args.pollers):
            name = f"{room.slug}-lp{i}"
            s.clients.append(
                PollClient(
                    s,
                    name,
                    users[name],
                    room,
                    rate,
                    server.http_url,
                    f"{room.deployment}-poll",
                    sessions[name],
                )
            )
    tasks = []
    for c in s.clients:
        tasks.append(asyncio.create_task(c.run()))
        await asyncio.sleep(0.05)  # do not stampede the gateway's $connect invocations
    deadline = time.monotonic() + 120
    while not all(c.up.is_set() for c in s.clients):
        if time.monotonic() > deadline:
            raise RuntimeError("clients did not all subscribe within 120 s")
        await asyncio.sleep(0.2)
    await asyncio.sleep(2)  # let the join announcements (presence) settle
    s.rss_start = s.rss_mb()
    s.procs_start = s.processes()
    s.with_children = [n for n, server in servers.items() if common.descendants(server.pid)]
    s.t_start = time.time() + 0.2
    s.t_end = s.t_start + args.minutes * 60
    for name in servers:
        s.rss[name].append((0.0, s.rss_start[name]))
    s.mark()
    own_cpu = common.self_cpu_seconds()
    s.go.set()
    senders = [asyncio.create_task(c.send_loop()) for c in s.clients]
    await s.reporter()
    s.rss_end = s.rss_mb()
    s.procs_end = s.processes()
    s.own_cpu = (common.self_cpu_seconds() - own_cpu) / max(1.0, time.time() - s.t_start) * 100
    if s.server_died:
        s.stopping = True
    # Drain: senders finish their last sends, then every client catches up.
    await asyncio.wait(senders, timeout=args.drain)
    deadline = time.time() + args.drain
    while not s.stopping and time.time() < deadline:
        if all(c.rx.missing() == 0 for c in s.clients):
            break
        await asyncio.sleep(0.5)
    s.drained_s = time.time() - s.t_end
    await asyncio.sleep(1.0)  # late duplicates would arrive now
    s.stopping = True
    for c in s.clients:
        if isinstance(c, WsClient) and c.ws is not None:
            await c.ws.close()
    for t in senders + tasks:
        t.cancel()
    await asyncio.gather(*senders, *tasks, return_exceptions=True)
    await asyncio.sleep(2.0)  # the gateway's $disconnect invocations delete the rows
    return s


# --- the summary ---


def summarise(s: Soak, leftover: int) -> tuple[dict[str, Any], bool]:
    servers = s.servers
    print()
    print(
        f"Per minute ({len(s.rows)} rows): latency from send to receipt of live deliveries; "
        f"missing = acknowledged over {GRACE:g} s before and not yet received; dup and ooo "
        "are running totals"
    )
    print(common.table([h for h, _, _ in columns(s)], [cells(r, s) for r in s.rows], digits=1))

    by_transport = []
    summary: dict[str, Any] = {"transports": {}}
    for t in TRANSPORTS:
        cs = [c for c in s.clients if c.transport == t]
        lats = s.total.latencies[t]
        fig = {
            "clients": len(cs),
            "received": sum(len(c.rx.seen) for c in cs),
            "live": sum(c.rx.live for c in cs),
            "resumed": sum(c.rx.resumed for c in cs),
            "p50": common.percentile(lats, 50),
            "p99": common.percentile(lats, 99),
            "max": max(lats) if lats else float("nan"),
            "lost": sum(c.rx.missing() for c in cs),
            "duplicates": sum(c.rx.duplicates for c in cs),
            "out_of_order": sum(c.rx.out_of_order for c in cs),
            "overlap": sum(c.rx.overlap for c in cs),
            "resyncs": sum(c.rx.resyncs for c in cs),
            "mismatched": sum(c.rx.mismatched for c in cs),
            "unexpected": sum(c.rx.unexpected() for c in cs),
            "reconnects": sum(c.reconnects for c in cs),
            "drops": sum(c.drops for c in cs),
        }
        summary["transports"][t] = fig
        by_transport.append([t, *fig.values()])
    print()
    print("Per transport (the whole run; lost = acknowledged and never received, after the drain):")
    print(
        common.table(
            [
                "transport",
                "clients",
                "received",
                "live",
                "resumed",
                "p50 ms",
                "p99 ms",
                "max ms",
                "lost",
                "dup",
                "ooo",
                "overlap",
                "resync",
                "id diff",
                "unexpected",
                "reconn",
                "drops",
            ],
            by_transport,
        )
    )

    rss_rows = []
    for name, server in servers.items():
        start, end = s.rss_start[name], s.rss_end[name]
        peak = server.status().get("VmHWM", 0) / 1024
        # The first minute includes warm-up (caches, pools); the trend is from minute 2 on.
        trend = common.slope_per_hour([p for p in s.rss[name] if p[0] >= 60])
        cpus = [r[f"cpu {name}"] for r in s.rows]
        cpu = sum(cpus) / len(cpus) if cpus else float("nan")
        errors = len(server.error_lines())
        summary[f"server {name}"] = {
            "pid": server.pid,
            "rss_start_mb": start,
            "rss_end_mb": end,
            "peak_mb": peak,
            "trend_mb_per_h": trend,
            "cpu_percent": cpu,
            "log_error_lines": errors,
            "log": str(server.log),
        }
        rss_rows.append([name, start, end, end - start, peak, trend, cpu, errors])
        # Its other processes, each on its own line: a leak in a worker would hide in a sum.
        span = max(1.0, s.args.minutes * 60)
        for pid, (server_name, label) in s.procs.items():
            if server_name != name or pid == server.pid:
                continue
            rss0, cpu0 = s.procs_start.get(pid, (float("nan"), float("nan")))
            rss1, cpu1 = s.procs_end.get(pid, (float("nan"), float("nan")))
            peak = common.proc_status(pid).get("VmHWM", 0) / 1024 or float("nan")
            cpu_share = (cpu1 - cpu0) / span * 100
            summary[f"server {name}"].setdefault("children", {})[pid] = {
                "label": label,
                "rss_start_mb": rss0,
                "rss_end_mb": rss1,
                "cpu_percent": cpu_share,
            }
            rss_rows.append(
                [f"  {label} {pid}", rss0, rss1, rss1 - rss0, peak, float("nan"), cpu_share, ""]
            )
    # The clients' own share of the 2 cores, for reading the latencies.
    own = common.proc_status(os.getpid())
    nan = float("nan")
    own_rss, own_peak = own.get("VmRSS", 0) / 1024, own.get("VmHWM", 0) / 1024
    rss_rows.append(["(clients)", nan, own_rss, nan, own_peak, nan, s.own_cpu, nan])
    print()
    print(
        "Server processes (RSS at the start and the end of the traffic; trend from minute 2 on; "
        "a server's child processes below it):"
    )
    print(
        common.table(
            [
                "server",
                "RSS start MB",
                "RSS end MB",
                "growth MB",
                "peak MB",
                "trend MB/h",
                "CPU %",
                "log errors",
            ],
            rss_rows,
        )
    )

    t = summary["transports"]
    lost = sum(f["lost"] for f in t.values())
    dup = sum(f["duplicates"] for f in t.values())
    ooo = sum(f["out_of_order"] for f in t.values())
    lats = [ms for values in s.total.latencies.values() for ms in values]
    span = s.args.minutes * 60
    totals = {
        "acknowledged": s.total.acked,
        "unacknowledged": s.unacked,
        "received": s.total.deliveries,
        "deliveries_per_s": s.total.deliveries / span,
        "p50": common.percentile(lats, 50),
        "p99": common.percentile(lats, 99),
        "ack_p99": common.percentile(s.total.ack_ms, 99),
        "lost": lost,
        "duplicates": dup,
        "out_of_order": ooo,
        "reconnects": s.total.reconnects,
        "drain_s": s.drained_s,
        "leftover_connections": leftover,
    }
    summary["totals"] = totals
    summary["errors"] = dict(s.errors)
    summary["retries"] = dict(s.retries)
    print()
    print(
        f"Totals: {totals['acknowledged']:,} messages acknowledged ({s.unacked} never), "
        f"{totals['received']:,} received ({totals['deliveries_per_s']:.1f}/s), "
        f"p50 {totals['p50']:.1f} ms, p99 {totals['p99']:.1f} ms, ack p99 {totals['ack_p99']:.1f} ms"
    )
    print(
        f"  lost {lost}, duplicates {dup}, out-of-order {ooo} (gateway-ws: "
        f"{t['gateway-ws']['duplicates']} / {t['gateway-ws']['out_of_order']}, "
        "reordered by clients by seq), "
        f"reconnects {s.total.reconnects}, "
        f"caught up {s.drained_s:.1f} s after the last send, "
        f"API Gateway connection rows left {leftover}"
    )
    if s.errors:
        print(f"  errors seen by clients: {dict(s.errors)}")
    if s.retries:
        print(f"  sends retried (same client_id): {dict(s.retries)}")
    failures = []
    if s.server_died:
        failures.append(f"a server died: {s.server_died}")
    if lost:
        failures.append(f"{lost} acknowledged deliveries lost")
    mismatched = sum(f["mismatched"] for f in t.values())
    if mismatched:
        failures.append(f"{mismatched} deliveries whose id differs from the ack's for that seq")
    for name in ORDERED:
        if t[name]["duplicates"] or t[name]["out_of_order"]:
            failures.append(
                f"{name}: {t[name]['duplicates']} duplicates, "
                f"{t[name]['out_of_order']} out of order"
            )
    if s.unacked:
        failures.append(f"{s.unacked} sends never acknowledged")
    ok = not failures
    summary["ok"] = ok
    summary["failures"] = failures
    print()
    print(
        "PASS: every acknowledged message reached every client of its room"
        if ok
        else "FAIL: " + "; ".join(failures)
    )
    return summary, ok


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--minutes", type=float, default=30.0, help="length of the traffic")
    ap.add_argument("--rooms", type=int, default=2, help="rooms per deployment")
    ap.add_argument("--ws", type=int, default=5, help="WebSocket clients per room")
    ap.add_argument("--pollers", type=int, default=2, help="long-poll clients per room")
    ap.add_argument("--rate", type=float, default=3.0, help="messages/s per room, all senders")
    ap.add_argument(
        "--reconnect-every",
        type=float,
        default=300.0,
        metavar="S",
        help="mean seconds between a WebSocket client's reconnects (0: never)",
    )
    ap.add_argument("--drain", type=float, default=60.0, help="max seconds to catch up at the end")
    ap.add_argument(
        "--gateway-delay",
        type=float,
        default=0.0,
        metavar="S",
        help="seconds the gateway adds to each @connections call (API Gateway's own latency)",
    )
    ap.add_argument("--json", help="write the figures here")
    args = ap.parse_args()

    common.raise_nofile()
    common.ensure_database()
    common.setup_django()
    rooms, users, sessions = prepare(args)
    env = common.bench_env()
    uvicorn = common.LoggedServer.uvicorn(env)
    gateway = common.LoggedServer.localgateway(
        env, "--log-level", "WARNING", "--connections-delay", str(args.gateway_delay)
    )
    clients = len(rooms) * (args.ws + args.pollers)
    print(
        f"soak: {args.minutes:g} min; {len(rooms)} rooms ({args.rooms} on uvicorn/Channels, "
        f"{args.rooms} on the local gateway/Zappa), each {args.ws} WebSocket + {args.pollers} "
        f"long-poll clients ({clients} in all), {args.rate:g} messages/s per room; WebSocket "
        f"reconnects every {args.reconnect_every:g} s on average per client",
        flush=True,
    )
    with uvicorn, gateway:
        servers = {CHANNELS: uvicorn, GATEWAY: gateway}
        print(
            f"  uvicorn pid {uvicorn.pid} {uvicorn.http_url} (log {uvicorn.log}); "
            f"gateway pid {gateway.pid} {gateway.http_url} (log {gateway.log})",
            flush=True,
        )
        s = asyncio.run(soak(args, servers, rooms, users, sessions))
        leftover = leftover_connections(users)
        summary, ok = summarise(s, leftover)
    common.write_json(args.json, {"summary": summary, "minutes": s.rows})
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
