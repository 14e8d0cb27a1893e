"""Priority 7: tokens, cross-site WebSocket origins, CSRF on every unsafe endpoint, oversized and
deeply nested JSON, and a slow client that never reads."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from datetime import timedelta
from typing import Any
from unittest import mock

import pytest
from asgiref.sync import sync_to_async
from channels.testing.websocket import WebsocketCommunicator
from django.contrib.auth import get_user_model
from django.core import signing
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from chat import tokens
from chat.models import ApiConnection, LoggedOutSession, Membership, Message, Room
from chatsite.asgi import application
from tests.conftest import Server
from tests.faults.conftest import Servers
from tests.faults.test_authz_matrix import lambda_connect, lambda_handler  # noqa: F401
from tests.test_realtime import Peer

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(90)]


def _bad_token(kind: str, alice: Any, bob: Any) -> str:
    if kind == "forged":  # signed with another key
        return signing.dumps({"u": alice.pk, "h": "x"}, key="not-our-key", salt=tokens.SALT)
    if kind == "expired":
        with mock.patch("django.core.signing.time.time", return_value=time.time() - 3600):
            return tokens.make_token(alice)
    if kind == "other-user":  # bob's signature with alice's id spliced in
        payload, rest = tokens.make_token(bob).split(":", 1)
        alice_payload = tokens.make_token(alice).split(":", 1)[0]
        return f"{alice_payload}:{rest}" if payload != alice_payload else "x"
    if kind == "password-changed":
        token = tokens.make_token(alice)
        alice.set_password("a-new-password-456")
        alice.save()
        return token
    if kind == "logged-out":  # made by a browser session that has logged out since
        browser = Client()
        browser.force_login(alice)
        token = browser.post("/api/ws-token").json()["token"]
        browser.post("/accounts/logout/")
        return token
    return "A" * 5000  # oversized


@pytest.mark.parametrize(
    "kind", ["forged", "expired", "other-user", "password-changed", "logged-out", "huge"]
)
def test_bad_tokens_are_refused_on_both_transports(chat_server: Server, kind: str) -> None:
    model = get_user_model()
    alice = model.objects.create_user("alice", password="pw-alice-123")
    bob = model.objects.create_user("bob", password="pw-bob-123")
    token = _bad_token(kind, alice, bob)

    async def scenario() -> int:
        with pytest.raises(InvalidStatus) as refused:
            await connect(f"{chat_server.ws_url}?token={token}", open_timeout=10)
        return refused.value.response.status_code

    assert asyncio.run(scenario()) in (401, 403)


def test_a_token_acts_only_as_its_user(chat_server: Server) -> None:
    model = get_user_model()
    alice = model.objects.create_user("alice", password="pw-alice-123")
    bob = model.objects.create_user("bob", password="pw-bob-123")
    secret = Room.objects.create(slug="secret", title="Secret", private=True, created_by=alice)
    Membership.objects.create(room=secret, user=alice)
    token = tokens.make_token(bob)

    async def scenario() -> None:
        peer = Peer(await connect(f"{chat_server.ws_url}?token={token}", open_timeout=10))
        await peer.send({"action": "subscribe", "room": "secret"})
        assert (await peer.next("error"))["code"] == "not_found"
        await peer.send({"action": "sendmessage", "room": "secret", "body": "let me in"})
        assert (await peer.next("error"))["code"] == "not_found"
        await peer.ws.close()

    asyncio.run(scenario())
    assert not Message.objects.exists()


# --- tokens die with the session that made them ---


def _device(user: Any) -> tuple[Client, str]:
    """A logged-in browser session of its own, and the WebSocket token it was given."""
    browser = Client()
    browser.force_login(user)
    response = browser.post("/api/ws-token")
    assert response.status_code == 200
    return browser, response.json()["token"]


def test_logging_out_kills_the_tokens_of_that_session_only(transactional_db: Any) -> None:
    alice = get_user_model().objects.create_user("alice", password="pw-alice-123")
    phone, phone_token = _device(alice)
    _laptop, laptop_token = _device(alice)
    sessionless = tokens.make_token(alice)  # benches and tests make them without a session
    key = phone.session.session_key
    # The token is readable by whoever holds it: it names a keyed hash, never the cookie's value.
    assert key not in phone_token
    assert key not in signing.loads(phone_token, salt=tokens.SALT).values()
    assert tokens.user_for_token(phone_token) == alice

    assert phone.post("/accounts/logout/").status_code == 302

    assert tokens.user_for_token(phone_token) is None
    assert tokens.user_for_token(laptop_token) == alice  # another device of the same user
    assert tokens.user_for_token(sessionless) == alice
    stored = list(LoggedOutSession.objects.values_list("key_hash", flat=True))
    assert stored == [tokens.session_hash(key)] and key not in stored[0]
    # Every WebSocket connect pays this check: it stays inside the one user query.
    with CaptureQueriesContext(connection) as queries:
        assert tokens.user_for_token(laptop_token) == alice
    assert len(queries) == 1


def test_logged_out_sessions_are_forgotten_once_their_tokens_expired(
    transactional_db: Any, settings: Any
) -> None:
    settings.CHAT_WS_TOKEN_MAX_AGE = 300
    alice = get_user_model().objects.create_user("alice", password="pw-alice-123")
    keys = []
    for _ in range(3):
        browser, _token = _device(alice)
        keys.append(browser.session.session_key)
        browser.post("/accounts/logout/")
        if len(keys) == 1:
            # Past the token lifetime: no token it could refuse is still valid.
            LoggedOutSession.objects.update(at=timezone.now() - timedelta(seconds=301))
    # The third logout cleared the first row on its way; the second is still needed.
    remaining = set(LoggedOutSession.objects.values_list("key_hash", flat=True))
    assert remaining == {tokens.session_hash(keys[1]), tokens.session_hash(keys[2])}
    # A logout without a saved session (nobody was logged in) stores nothing.
    assert Client().post("/accounts/logout/").status_code == 302
    assert LoggedOutSession.objects.count() == 2


async def test_channels_refuses_a_logged_out_token_with_4401(transactional_db: Any) -> None:
    alice = await sync_to_async(get_user_model().objects.create_user)("alice", password="pw-1234")
    phone, phone_token = await sync_to_async(_device)(alice)
    _laptop, laptop_token = await sync_to_async(_device)(alice)
    await sync_to_async(phone.post)("/accounts/logout/")

    refused = WebsocketCommunicator(application, f"/ws/?token={phone_token}")
    assert await refused.connect() == (False, 4401)
    other = WebsocketCommunicator(application, f"/ws/?token={laptop_token}")
    connected, _ = await other.connect()
    assert connected
    await other.send_json_to({"action": "ping"})
    assert await other.receive_json_from(5) == {"type": "pong"}
    await other.disconnect()


def test_serverless_connect_refuses_a_logged_out_token_with_401(
    transactional_db: Any,
    lambda_handler: Any,  # noqa: F811
) -> None:
    alice = get_user_model().objects.create_user("alice", password="pw-alice-123")
    phone, phone_token = _device(alice)
    _laptop, laptop_token = _device(alice)
    phone.post("/accounts/logout/")

    assert lambda_connect(lambda_handler, "Phone=", phone_token) == {
        "statusCode": 401,
        "body": "A valid ?token= is required.",
    }
    assert not ApiConnection.objects.exists()
    assert lambda_connect(lambda_handler, "Laptop=", laptop_token) == {"statusCode": 200}
    assert list(ApiConnection.objects.values_list("connection_id", "user")) == [
        ("Laptop=", alice.pk)
    ]


def _session_cookie(user: Any) -> str:
    client = Client()
    client.force_login(user)
    return f"sessionid={client.cookies['sessionid'].value}"


@pytest.mark.parametrize(
    ("origin", "accepted"),
    [
        ("http://evil.example", False),
        ("http://127.0.0.1.evil.example", False),
        ("null", False),
        ("http://127.0.0.1:8000", True),
        (None, False),  # a cookie without Origin is not a browser: it must use a token
    ],
)
def test_cross_site_origins_cannot_use_the_session(
    server: Server, origin: str | None, accepted: bool
) -> None:
    alice = get_user_model().objects.create_user("alice", password="pw-alice-123")
    headers = {"Cookie": _session_cookie(alice)}
    if origin is not None:
        headers["Origin"] = origin

    async def scenario() -> bool:
        try:
            ws = await connect(server.ws_url, additional_headers=headers, open_timeout=10)
        except InvalidStatus as refused:
            assert refused.response.status_code == 403
            return False
        peer = Peer(ws)
        await peer.send({"action": "ping"})
        await peer.next("pong")
        await ws.close()
        return True

    assert asyncio.run(scenario()) is accepted


def test_a_foreign_origin_is_refused_even_with_a_token(server: Server) -> None:
    alice = get_user_model().objects.create_user("alice", password="pw-alice-123")
    token = tokens.make_token(alice)

    async def scenario() -> None:
        with pytest.raises(InvalidStatus):
            await connect(
                f"{server.ws_url}?token={token}",
                additional_headers={"Origin": "http://evil.example"},
                open_timeout=10,
            )

    asyncio.run(scenario())


UNSAFE = [
    ("post", "/api/rooms/", {"slug": "new", "title": "New", "private": False}),
    ("post", "/api/rooms/general/messages", {"body": "csrf", "client_id": "x"}),
    ("patch", "/api/rooms/general/messages/{id}", {"body": "edited"}),
    ("delete", "/api/rooms/general/messages/{id}", None),
    ("post", "/api/rooms/general/read", {"seq": 1}),
    ("post", "/api/rooms/general/typing", None),
    ("post", "/api/ws-token", None),
    ("post", "/", {"slug": "new", "title": "New"}),
    ("post", "/rooms/general/", {"body": "csrf"}),
    ("post", "/accounts/logout/", None),
]


@pytest.mark.parametrize(("method", "path", "data"), UNSAFE)
def test_csrf_is_required_on_every_unsafe_endpoint(
    transactional_db: Any, method: str, path: str, data: dict[str, Any] | None
) -> None:
    alice = get_user_model().objects.create_user("alice", password="pw-alice-123")
    room = Room.objects.create(slug="general", title="General")
    from chat import writepath

    own = writepath.post_message(alice, room, "mine", "m-1").message
    path = path.format(id=own.pk)
    client = Client(enforce_csrf_checks=True)
    client.force_login(alice)
    before = (list(Message.objects.values_list("body", "deleted")), Room.objects.count())
    if path.startswith("/api/"):
        response = getattr(client, method)(path, json.dumps(data or {}), "application/json")
    else:
        response = getattr(client, method)(path, data or {})
    assert response.status_code == 403
    if path.startswith("/api/"):
        assert response.json()["error"] == "forbidden"
    after = (list(Message.objects.values_list("body", "deleted")), Room.objects.count())
    assert after == before
    assert Membership.objects.filter(user=alice, read_seq__gt=0).count() == 0
    # With the token the same request goes through: the 403 above was the CSRF check.
    client.get("/")
    csrf = client.cookies["csrftoken"].value
    if path.startswith("/api/"):
        ok = getattr(client, method)(
            path, json.dumps(data or {}), "application/json", HTTP_X_CSRFTOKEN=csrf
        )
    else:
        ok = getattr(client, method)(path, {**(data or {}), "csrfmiddlewaretoken": csrf})
    assert ok.status_code != 403


def test_oversized_and_deeply_nested_json(server: Server) -> None:
    alice = get_user_model().objects.create_user("alice", password="pw-alice-123")
    Room.objects.create(slug="general", title="General")
    client = Client()
    client.force_login(alice)
    url = "/api/rooms/general/messages"
    huge = json.dumps({"body": "x" * (3 * 1024 * 1024)})
    response = client.post(url, huge, "application/json")
    assert response.status_code == 413 and response.json()["error"] == "too_large"
    for nested in ("[" * 100_000 + "]" * 100_000, '{"body": ' + "[" * 50_000 + "]" * 50_000 + "}"):
        response = client.post(url, nested, "application/json")
        assert response.status_code == 400 and response.json()["error"] == "bad_request"
    token = tokens.make_token(alice)

    async def scenario() -> None:
        peer = Peer(await connect(f"{server.ws_url}?token={token}", open_timeout=10))
        await peer.ws.send('{"action": "ping", "x": ' + "[" * 15_000 + "]" * 15_000 + "}")
        assert (await peer.next("error"))["code"] == "bad_request"
        await peer.send({"action": "ping"})
        assert await peer.next("pong") == {"type": "pong"}
        await peer.ws.close()

    asyncio.run(scenario())
    assert not Message.objects.exists()


def _rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_slow_readers_do_not_grow_memory_or_slow_others(servers: Servers) -> None:
    Room.objects.create(slug="general", title="General")
    model = get_user_model()
    alice = model.objects.create_user("alice", password="pw-alice-123")
    slow_users = [model.objects.create_user(f"slow{i}", password="pw-slow-123") for i in range(8)]
    server = servers.start(
        {"CHAT_SEND_QUEUE": "20", "CHAT_FRAME_RATE": "100000", "CHAT_FRAME_BURST": "100000"}
    )
    assert server.proc is not None
    token = tokens.make_token(alice)
    slow_tokens = [tokens.make_token(u) for u in slow_users]
    body = "y" * 3900
    count = 800
    stats: dict[str, Any] = {}

    async def post_all(peer: Peer, prefix: str, n: int) -> list[float]:
        sent: dict[str, float] = {}
        latencies: list[float] = []
        for i in range(n):
            client_id = f"{prefix}-{i}"
            sent[client_id] = time.monotonic()
            await peer.send(
                {"action": "sendmessage", "room": "general", "body": body, "client_id": client_id}
            )
            if i % 20 == 19:  # keep a bounded number in flight
                while len(latencies) < i - 10:
                    event = await peer.next("message", timeout=10)
                    latencies.append(time.monotonic() - sent[event["client_id"]])
        while len(latencies) < n:
            event = await peer.next("message", timeout=10)
            latencies.append(time.monotonic() - sent[event["client_id"]])
        return latencies

    async def scenario() -> None:
        peer = Peer(await connect(f"{server.ws_url}?token={token}", open_timeout=10))
        await peer.subscribe("general")
        await post_all(peer, "warm", 200)  # thread pools, connections, caches
        baseline = _rss_kb(server.proc.pid)
        slow = []
        for t in slow_tokens:
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.connect(("127.0.0.1", server.port))
            ws = await connect(
                f"{server.ws_url}?token={t}", sock=sock, max_queue=1, open_timeout=10
            )
            await ws.send(json.dumps({"action": "subscribe", "room": "general", "after": 200}))
            slow.append(ws)  # and never read from it again
        started = time.monotonic()
        stats["latencies"] = sorted(await post_all(peer, "load", count))
        stats["elapsed"] = time.monotonic() - started
        stats["growth_mb"] = (_rss_kb(server.proc.pid) - baseline) / 1024
        for ws in slow:
            ws.transport.abort()
        await peer.ws.close()

    asyncio.run(scenario())
    # A loose bound: most of what the slow readers do not take sits in kernel socket buffers,
    # so this catches gross leaks only (measured: ~2.5 MB whatever CHAT_SEND_QUEUE is).
    assert stats["growth_mb"] < 12, stats["growth_mb"]
    p95 = stats["latencies"][int(len(stats["latencies"]) * 0.95)]
    assert p95 < 1.0, (p95, stats["elapsed"])
    assert Message.objects.count() == 200 + count
