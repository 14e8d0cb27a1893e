"""Shared fixtures: the users every test talks about, and real servers started for real sockets."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.db import connection

from chat.models import ApiConnection, Membership, Room

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def alice(db: Any) -> Any:
    return get_user_model().objects.create_user("alice", password="pw-alice-123")


@pytest.fixture
def bob(db: Any) -> Any:
    return get_user_model().objects.create_user("bob", password="pw-bob-123")


@pytest.fixture
def outsider(db: Any) -> Any:
    return get_user_model().objects.create_user("mallory", password="pw-mallory-123")


@pytest.fixture
def moderator(db: Any) -> Any:
    """Site staff who may moderate every room (staff alone is not a moderator)."""
    from django.contrib.auth.models import Permission

    user = get_user_model().objects.create_user("mod", password="pw-mod-123", is_staff=True)
    user.user_permissions.add(Permission.objects.get(codename="moderate_room"))
    return user


@pytest.fixture
def room(db: Any) -> Room:
    return Room.objects.create(slug="general", title="General")


@pytest.fixture
def private_room(db: Any, alice: Any, bob: Any) -> Room:
    room = Room.objects.create(slug="secret", title="Secret", private=True, created_by=alice)
    Membership.objects.create(room=room, user=alice)
    Membership.objects.create(room=room, user=bob)
    return room


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def database_url() -> str:
    s = connection.settings_dict
    return f"postgres://{s['USER']}@{s['HOST']}:{s['PORT']}/{s['NAME']}"


class Server:
    """An ASGI server in its own process, on the test database."""

    # The ASGI application uvicorn serves (tests/test_hostsite.py serves another site's).
    app = "chatsite.asgi:application"

    def __init__(self, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "tests.settings",
            "DATABASE_URL": database_url(),
            **(env or {}),
        }
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws/"

    def start(self) -> Server:
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uvicorn",
                self.app,
                "--port",
                str(self.port),
                "--log-level",
                "warning",
                "--ws",
                "websockets",
            ],
            cwd=ROOT,
            env=self.env,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("server did not start")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture(scope="session", autouse=True)
def _close_stray_connections(django_db_setup: Any, django_db_blocker: Any) -> Iterator[None]:
    """Consumers' worker threads keep database connections; end them so the test database can be
    dropped at the end of the run."""
    yield
    # Only the test database of this run (a run whose tests touched no database may find the
    # connection pointing at the real one, which need not exist here).
    if connection.vendor != "postgresql" or not connection.settings_dict["NAME"].startswith(
        "test_"
    ):
        return
    with django_db_blocker.unblock(), connection.cursor() as cursor:
        cursor.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )


@pytest.fixture(scope="session")
def live_server_proc(django_db_setup: Any, django_db_blocker: Any) -> Iterator[Server]:
    with django_db_blocker.unblock():
        server = Server().start()
    yield server
    server.stop()


@pytest.fixture
def server(live_server_proc: Server, transactional_db: Any) -> Server:
    """A running ASGI server; the test's data is committed so the server sees it."""
    return live_server_proc


# --- the serverless deployment: the local gateway, in its own process ---


class Gateway(Server):
    """`python -m localgateway` on the test database, like conftest's Server, plus the
    @connections endpoint."""

    def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
        # Small batches, so that a room of a few hundred goes through Zappa's @task.
        super().__init__({"CHAT_APIGW_BATCH": "50", **(env or {})})
        self.args = args
        self.env.pop("DJANGO_SETTINGS_MODULE", None)  # the stage's django_settings decides

    @property
    def management_url(self) -> str:
        return f"{self.url}/dev"

    def start(self) -> Gateway:
        out = Path(f"/tmp/localgateway-{self.port}.out")
        with out.open("wb") as stdout:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "localgateway",
                    "--port",
                    str(self.port),
                    "--log-level",
                    "WARNING",
                    # Each running invocation holds a database connection. A run has the session's
                    # gateway, sometimes one of a module's, and a Channels server at once, within
                    # the 100 connections of a default PostgreSQL.
                    "--workers",
                    "16",
                    *self.args,
                ],
                cwd=ROOT,
                env=self.env,
                stdout=stdout,
            )
        deadline = time.monotonic() + 60
        try:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"local gateway exited with {self.proc.returncode}")
                if b"Quit with" in out.read_bytes():  # printed once the cold start is done
                    return self
                time.sleep(0.05)
        finally:
            out.unlink(missing_ok=True)
        raise RuntimeError("local gateway did not start")


@pytest.fixture(scope="session")
def serverless_proc(django_db_setup: Any, django_db_blocker: Any) -> Iterator[Gateway]:
    with django_db_blocker.unblock():
        gateway = Gateway().start()
    yield gateway
    gateway.stop()


@contextlib.contextmanager
def both_deployments(env: dict[str, str]) -> Iterator[dict[str, Server]]:
    """A Channels server and a local gateway of a module's own, both started with `env` (a setting
    is read when a process starts), stopped at the end."""
    started: dict[str, Server] = {"channels": Server(env=env).start()}
    try:
        started["serverless"] = Gateway(env=env).start()
        yield started
    finally:
        for server in started.values():
            server.stop()


def one_of(servers: dict[str, Server], name: str) -> Iterator[Server]:
    """For a fixture over `both_deployments`: the server named, and after the test, on the
    serverless one, the wait for its invocations (`quiesce`)."""
    server = servers[name]
    yield server
    if name == "serverless":
        quiesce(gateway=server)


def quiesce(timeout: float = 5.0, gateway: Server | None = None) -> None:
    """Wait for the $disconnect invocations of the test's closed sockets: the flush after a
    transactional test would otherwise race them (and deadlock on PostgreSQL)."""
    deadline = time.monotonic() + timeout
    while ApiConnection.objects.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    if gateway is not None:
        # Then for every invocation still under way there: the fan-outs, presence and batches
        # that those frames and disconnects started, before they touch the database again.
        with contextlib.suppress(OSError):
            url = f"{gateway.url}/_localgateway/drain?timeout={2 * timeout}"
            urllib.request.urlopen(url, timeout=2 * timeout + 5).close()
    # Then until no other session works on the test database: frames, fan-out batches and what
    # they publish can still be running after the last row went (the flush would deadlock on
    # them). Twice in a row, so that a gap between two statements of one invocation is not idle.
    quiet = 0
    deadline = time.monotonic() + 2 * timeout
    while quiet < 2 and time.monotonic() < deadline:
        quiet = quiet + 1 if not _others_busy() else 0
        time.sleep(0.05)


def _others_busy() -> bool:
    """Whether another session is running a statement or holding a transaction open on this
    database (PostgreSQL; elsewhere there is no one to wait for)."""
    if connection.vendor != "postgresql":
        return False
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE datname = current_database()"
            " AND backend_type = 'client backend' AND pid <> pg_backend_pid()"
            " AND state <> 'idle')"
        )
        return bool(cursor.fetchone()[0])


@pytest.fixture
def serverless_server(serverless_proc: Gateway, transactional_db: Any) -> Iterator[Gateway]:
    """The local gateway in front of Zappa's handler; the test's data is committed so it sees it."""
    yield serverless_proc
    quiesce(gateway=serverless_proc)


@pytest.fixture(params=["channels", "serverless"])
def chat_server(request: pytest.FixtureRequest) -> Server:
    """Every deployment that speaks the protocol, each test runs against all of them: the Channels
    server, and the Zappa handler behind the local API Gateway. (Defined here once: a session
    fixture imported into several modules would start one gateway per module.)"""
    return request.getfixturevalue("server" if request.param == "channels" else "serverless_server")
