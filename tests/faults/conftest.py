"""Fixtures for the fault-injection suite: a Redis of our own that can be stopped, servers that
use it, and the completeness check every scenario ends with."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from django.contrib.auth import get_user_model

from chat import tokens
from chat.errors import STATUS
from chat.models import Message, Room
from tests.conftest import Server, free_port
from tests.faults.client import ResilientClient

# Every code the server may refuse with (chat/errors.py): what a fuzzer may see, never a
# server_error.
REFUSALS = frozenset(STATUS) - {"server_error"}


class RedisServer:
    """A throw-away redis-server on a free port (never the shared one on 6379)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def start(self) -> RedisServer:
        self.proc = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--daemonize",
                "no",
            ],
            stdout=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while not self.ping():
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError("redis-server did not start")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        self.proc = None


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    redis = RedisServer().start()
    yield redis
    redis.stop()


class Servers:
    """Servers started by one test, all stopped at its end (killed ones included)."""

    def __init__(self) -> None:
        self.started: list[Server] = []

    def start(self, env: dict[str, str] | None = None) -> Server:
        server = Server(env=env).start()
        self.started.append(server)
        return server

    def stop(self) -> None:
        for server in self.started:
            server.stop()


@pytest.fixture
def servers(transactional_db: Any) -> Iterator[Servers]:
    started = Servers()
    yield started
    started.stop()


def users_and_tokens(prefix: str, n: int) -> list[tuple[Any, str]]:
    model = get_user_model()
    users = [model.objects.create_user(f"{prefix}{i}", password="pw-fault-123") for i in range(n)]
    return [(u, tokens.make_token(u)) for u in users]


def room_rows(slug: str) -> tuple[int, list[dict[str, Any]]]:
    room = Room.objects.get(slug=slug)
    rows = list(
        Message.objects.filter(room=room)
        .order_by("seq")
        .values("id", "seq", "body", "client_id", "author__username", "deleted")
    )
    return room.seq, rows


def assert_complete(slug: str, clients: list[ResilientClient]) -> list[dict[str, Any]]:
    """Nothing acknowledged lost, nothing stored twice, every client holding every message
    exactly once in seq order."""
    room_seq, rows = room_rows(slug)
    seqs = [r["seq"] for r in rows]
    assert seqs == list(range(1, room_seq + 1)), "the room's history has gaps"
    by_client_id = {r["client_id"]: r for r in rows}
    assert len(by_client_id) == len(rows), "a client_id was stored twice"
    for client in clients:
        assert not client.violations, (client.name, client.violations[:5])
        assert not client.pending, (client.name, "never acknowledged", list(client.pending)[:5])
        for client_id, seq in client.acked.items():
            assert client_id in by_client_id, f"acknowledged {client_id} is not stored"
            assert by_client_id[client_id]["seq"] == seq
        assert sorted(client.events) == seqs, (client.name, "misses messages")
        if client.strict:
            assert client.order == seqs, (client.name, "out of order")
        for row in rows:
            event = client.events[row["seq"]]
            assert (event["id"], event["body"], event["client_id"]) == (
                row["id"],
                row["body"],
                row["client_id"],
            )
    return rows


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    """One event loop for every example (the consumer's room hub lives as long as its loop)."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield loop
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)
