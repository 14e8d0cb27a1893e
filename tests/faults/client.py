"""A protocol client that behaves as the design asks a real one to: it keeps a cursor per room,
resumes with `subscribe` + `after` on every reconnect, dedupes by `seq`, and retries unacknowledged
sends with the same `client_id` until they are acknowledged."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import time
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

RETRY_AFTER = 1.5  # seconds before an unacknowledged send is sent again on the same socket


class ResilientClient:
    def __init__(self, name: str, token: str, urls: list[str], room: str, strict: bool) -> None:
        self.name = name
        self.token = token
        self.urls = urls
        self.url_index = 0
        self.room = room
        # strict: every new event must be cursor + 1 (the Channels consumer orders and fills
        # gaps itself); otherwise events may come out of order and gaps are filled by resuming.
        self.strict = strict
        self.cursor = 0
        self.events: dict[int, dict[str, Any]] = {}
        self.order: list[int] = []
        self.duplicates = 0
        self.violations: list[str] = []
        self.pending: dict[str, tuple[str, float]] = {}  # client_id -> (body, last sent)
        self.acked: dict[str, int] = {}
        self.errors: list[dict[str, Any]] = []
        self.connects = 0
        self.failed_connects = 0
        self.ws: ClientConnection | None = None
        self.subscribed = asyncio.Event()
        self.stopping = False
        self.counter = itertools.count()
        self.task: asyncio.Task[None] | None = None
        self.retrier: asyncio.Task[None] | None = None
        self.background: set[asyncio.Task[None]] = set()
        # Set (and replaced) after every event handled, so waits wake on change, not on a timer.
        self.changed = asyncio.Event()

    # --- lifecycle ---

    def start(self) -> None:
        self.task = asyncio.create_task(self._run(), name=f"client-{self.name}")
        self.retrier = asyncio.create_task(self._retry_loop(), name=f"retry-{self.name}")

    async def stop(self) -> None:
        self.stopping = True
        ws = self.ws
        for task in (self.task, self.retrier):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        if ws is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(ws.close(), 2)

    async def drop(self, abrupt: bool = False) -> None:
        """Lose the connection; the run loop reconnects and resumes."""
        ws = self.ws
        if ws is None:
            return
        if abrupt:
            ws.transport.abort()
        else:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(ws.close(), 2)

    async def _run(self) -> None:
        while not self.stopping:
            url = f"{self.urls[self.url_index % len(self.urls)]}?token={self.token}"
            try:
                ws = await connect(url, open_timeout=5, close_timeout=1, ping_interval=None)
            except (OSError, InvalidStatus, TimeoutError):
                self.failed_connects += 1
                self.url_index += 1  # the next server, if there is one
                await asyncio.sleep(0.1)
                continue
            self.connects += 1
            self.ws = ws
            try:
                await self._subscribe()
                async for raw in ws:
                    self._on(json.loads(raw))
                    self._notify()
            except ConnectionClosed:
                pass
            finally:
                self.ws = None
                self.subscribed.clear()

    async def _subscribe(self) -> None:
        if self.ws is not None:
            frame = {"action": "subscribe", "room": self.room, "after": self.cursor}
            with contextlib.suppress(ConnectionClosed):
                await self.ws.send(json.dumps(frame))

    async def _retry_loop(self) -> None:
        while True:
            await asyncio.sleep(0.5)
            if not self.subscribed.is_set():
                continue
            now = time.monotonic()
            for client_id, (body, sent) in list(self.pending.items()):
                if now - sent > RETRY_AFTER:
                    await self._send(client_id, body)

    # --- sending ---

    async def send(self, body: str | None = None) -> str:
        client_id = f"{self.name}-{next(self.counter)}"
        await self._send(client_id, body or f"{client_id} says hi")
        return client_id

    async def _send(self, client_id: str, body: str) -> None:
        self.pending[client_id] = (body, time.monotonic())
        ws = self.ws
        if ws is None:
            return  # sent again after the next subscribe
        frame = {"action": "sendmessage", "room": self.room, "body": body, "client_id": client_id}
        with contextlib.suppress(ConnectionClosed):
            await ws.send(json.dumps(frame))

    async def _resend_all(self) -> None:
        for client_id, (body, _) in list(self.pending.items()):
            await self._send(client_id, body)

    # --- receiving ---

    def _on(self, event: dict[str, Any]) -> None:
        kind = event["type"]
        if kind == "subscribed":
            if event.get("reason") == "resync":
                self.violations.append(f"resync at cursor {self.cursor}")
            self.subscribed.set()
            self._spawn(self._resend_all())
        elif kind == "message":
            self._message(event)
        elif kind == "ack":
            if event["client_id"] in self.pending:
                del self.pending[event["client_id"]]
            previous = self.acked.setdefault(event["client_id"], event["seq"])
            if previous != event["seq"]:
                self.violations.append(f"{event['client_id']} acked as {previous} and {event}")
        elif kind == "error":
            self.errors.append(event)
            if event.get("room") == self.room and event.get("client_id") is None:
                # A subscribe that failed: try again in a moment.
                self.subscribed.clear()
                asyncio.get_running_loop().call_later(0.3, lambda: self._spawn(self._subscribe()))

    def _notify(self) -> None:
        changed, self.changed = self.changed, asyncio.Event()
        changed.set()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self.background.add(task)
        task.add_done_callback(self.background.discard)

    def _message(self, event: dict[str, Any]) -> None:
        seq = event["seq"]
        if seq <= self.cursor or seq in self.events:
            self.duplicates += 1
            return
        if self.strict and seq != self.cursor + 1:
            self.violations.append(f"got seq {seq} at cursor {self.cursor}")
        self.events[seq] = event
        self.order.append(seq)
        while self.cursor + 1 in self.events:
            self.cursor += 1

    # --- waiting ---

    async def until(self, predicate: Any, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.name}: timed out waiting for {what}")
            await asyncio.sleep(0.05)


async def wait_all(
    clients: list[ResilientClient], predicate: Any, timeout: float, what: str
) -> None:
    await asyncio.gather(*(c.until(lambda c=c: predicate(c), timeout, what) for c in clients))


async def traffic(clients: list[ResilientClient], period: float, stop: asyncio.Event) -> int:
    """Every client sends one message each `period` (phases spread) until `stop` is set."""

    async def one(client: ResilientClient, phase: float) -> int:
        sent = 0
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stop.wait(), phase)
        while not stop.is_set():
            await client.send()
            sent += 1
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), period)
        return sent

    n = len(clients)
    counts = await asyncio.gather(*(one(c, period * i / n) for i, c in enumerate(clients)))
    return sum(counts)


async def wait_for_state(
    clients: list[ResilientClient], predicate: Any, timeout: float, what: str
) -> None:
    """Like `wait_all`, but each client is checked when it has handled an event, not polled.
    Only for predicates that an incoming event can make true."""

    async def one(client: ResilientClient) -> None:
        while not predicate(client):
            await client.changed.wait()

    try:
        await asyncio.wait_for(asyncio.gather(*(one(c) for c in clients)), timeout)
    except TimeoutError:
        late = [c.name for c in clients if not predicate(c)]
        raise AssertionError(
            f"timed out after {timeout} s waiting for {what}: {late[:10]}"
        ) from None
