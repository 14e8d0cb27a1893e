"""The serverless transport: Zappa's real handler behind the local gateway, on the test database.

Most tests drive real sockets through `python -m localgateway` (a process of its own, as a
Lambda container is), so $connect, $default, @connections, @task invocations and HTTP all take
the deployed path. A few call the handlers in this process where a clock or a stub has to be
controlled. `serverless_server` is the gateway counterpart of conftest's `server`.
"""

from __future__ import annotations

import asyncio
import http.server
import io
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
import zipfile
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any
from unittest import mock

import aiohttp
import pytest
import websockets
from botocore.exceptions import ClientError
from django.contrib.auth import get_user_model
from django.middleware.csrf import _get_new_csrf_string
from django.utils import timezone
from elftools.elf.elffile import ELFFile
from elftools.elf.gnuversions import GNUVerNeedSection
from websockets.exceptions import InvalidStatus

from chat import apigateway, fanout, presence, reads, serverless, tokens, writepath
from chat.models import ApiConnection, Message, Room, Subscription
from chatsite import deployment
from tests.conftest import ROOT, Gateway, database_url, quiesce

pytestmark = [pytest.mark.timeout(120)]


# --- the gateway: conftest's Gateway, serverless_proc and serverless_server ---


@pytest.fixture(scope="module")
def throttled_proc(django_db_setup: Any, django_db_blocker: Any) -> Iterator[Gateway]:
    """A gateway that answers a fifth of all @connections calls with 429."""
    with django_db_blocker.unblock():
        # boto3's own post_to_connection here; every other gateway test posts the fast way.
        env = {"CHAT_APIGW_RETRIES": "8", "CHAT_APIGW_FAST_POST": "false"}
        gateway = Gateway("--fault", "429=0.2", env=env).start()
    yield gateway
    gateway.stop()


# --- helpers ---


def make_user(name: str) -> Any:
    return get_user_model().objects.create_user(name, password=f"pw-{name}-123")


def ws_connect(gateway: Gateway, query: str) -> Any:
    return websockets.connect(f"{gateway.ws_url}?{query}", proxy=None, open_timeout=20)


async def recv_until(ws: Any, predicate: Any, timeout: float = 10.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("no matching event")
        event = json.loads(await asyncio.wait_for(ws.recv(), left))
        if predicate(event):
            return event


def of_type(kind: str, **fields: Any) -> Any:
    return lambda e: e["type"] == kind and all(e.get(k) == v for k, v in fields.items())


async def db(fn: Any, *args: Any) -> Any:
    return await asyncio.to_thread(fn, *args)


def session_cookies(user: Any) -> tuple[dict[str, str], dict[str, str]]:
    """A logged-in session and a CSRF pair, as the browser would hold them."""
    from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY
    from django.contrib.sessions.backends.db import SessionStore

    session = SessionStore()
    session[SESSION_KEY] = str(user.pk)
    session[BACKEND_SESSION_KEY] = "django.contrib.auth.backends.ModelBackend"
    session[HASH_SESSION_KEY] = user.get_session_auth_hash()
    session.save()
    csrf = _get_new_csrf_string()
    return {"sessionid": session.session_key, "csrftoken": csrf}, {"X-CSRFToken": csrf}


# --- $connect ---


@pytest.mark.parametrize("kind", ["missing", "forged", "expired", "inactive"])
def test_connect_refuses_bad_tokens_with_401_and_stores_nothing(serverless_server, kind):
    alice = make_user("alice")
    writepath.ensure_lobby()
    if kind == "missing":
        query = "room=lobby"
    elif kind == "forged":
        query = "room=lobby&token=" + tokens.make_token(alice)[:-3] + "abc"
    elif kind == "expired":
        with mock.patch("django.core.signing.time.time", return_value=time.time() - 3600):
            query = "room=lobby&token=" + tokens.make_token(alice)
    else:
        query = "room=lobby&token=" + tokens.make_token(alice)
        alice.is_active = False
        alice.save()

    async def scenario() -> int:
        with pytest.raises(InvalidStatus) as refused:
            await ws_connect(serverless_server, query)
        return refused.value.response.status_code

    assert asyncio.run(scenario()) == 401
    assert not ApiConnection.objects.exists()
    assert not Subscription.objects.exists()


def test_connect_with_room_subscribes_and_disconnect_removes_the_row(serverless_server):
    alice = make_user("alice")
    lobby = writepath.ensure_lobby()
    writepath.post_message(alice, lobby, "before", "c-1")

    async def run() -> None:
        ws = await ws_connect(serverless_server, f"room=lobby&token={tokens.make_token(alice)}")
        subscribed = await recv_until(ws, of_type("subscribed"))
        assert subscribed == {"type": "subscribed", "room": "lobby", "seq": 1, "resumed": False}
        presence = await recv_until(ws, of_type("presence"))
        assert presence["users"] == ["alice"]
        row = await db(lambda: ApiConnection.objects.get())
        assert (row.user_id, row.default_room, row.stage) == (alice.pk, "lobby", "dev")
        assert await db(lambda: list(Subscription.objects.values_list("room__slug", flat=True)))
        await ws.close()
        for _ in range(100):
            if not await db(lambda: ApiConnection.objects.exists()):
                break
            await asyncio.sleep(0.05)
        assert not await db(lambda: ApiConnection.objects.exists())
        assert not await db(lambda: Subscription.objects.exists())

    asyncio.run(run())


# --- the AWS tutorial, with wscat's frames ---


def test_wscat_tutorial_every_connection_in_the_room_receives_it(serverless_server):
    users = [make_user(name) for name in ("alice", "bob", "carol")]
    writepath.ensure_lobby()
    queries = [f"room=lobby&token={tokens.make_token(u)}" for u in users]

    async def run() -> list[dict[str, Any]]:
        sockets = [await ws_connect(serverless_server, q) for q in queries]
        for ws in sockets:
            await recv_until(ws, of_type("subscribed"))
        await sockets[0].send(json.dumps({"action": "sendmessage", "message": "hello, everyone!"}))
        got = [await recv_until(ws, of_type("message")) for ws in sockets]
        ack = await recv_until(sockets[0], of_type("ack"))
        assert ack["seq"] == got[0]["seq"]
        for ws in sockets:
            await ws.close()
        return got

    received = asyncio.run(run())
    assert {(e["body"], e["author"], e["room"]) for e in received} == {
        ("hello, everyone!", "alice", "lobby")
    }
    assert Message.objects.get().body == "hello, everyone!"


def test_the_protocol_runs_as_on_channels(serverless_server):
    alice = make_user("alice")
    room = Room.objects.create(slug="general", title="General")
    for n in range(3):
        writepath.post_message(alice, room, f"m{n}", f"c{n}")

    async def run() -> None:
        async with ws_connect(serverless_server, f"token={tokens.make_token(alice)}") as ws:
            await ws.send(json.dumps({"action": "ping"}))
            assert await recv_until(ws, lambda e: True) == {"type": "pong"}
            await ws.send(json.dumps({"action": "subscribe", "room": "general", "after": 1}))
            not_presence = of_type("subscribed")  # presence is announced to the room as well
            assert await recv_until(ws, not_presence) == {
                "type": "subscribed",
                "room": "general",
                "seq": 3,
                "resumed": True,
            }
            replay = [await recv_until(ws, of_type("message")) for _ in range(2)]
            assert [e["seq"] for e in replay] == [2, 3]
            await ws.send(json.dumps({"action": "dance"}))
            error = await recv_until(ws, of_type("error"))
            assert error["code"] == "unknown_action"
            await ws.send("not json")
            assert (await recv_until(ws, of_type("error")))["code"] == "bad_request"
            await ws.send(b"\x00binary")
            assert (await recv_until(ws, of_type("error")))["code"] == "bad_request"
            await ws.send(json.dumps({"action": "sendmessage", "room": "general", "body": ""}))
            assert (await recv_until(ws, of_type("error")))["code"] == "bad_request"
            frame = {"action": "sendmessage", "room": "general", "body": "m0", "client_id": "c0"}
            await ws.send(json.dumps(frame))  # a retry of an old client_id: the same message
            ack = await recv_until(ws, of_type("ack"))
            assert ack["seq"] == 1
            # The same key with another body is not that message: refused, nothing stored.
            await ws.send(json.dumps({**frame, "body": "x"}))
            refused = await recv_until(ws, of_type("error"))
            assert (refused["code"], refused["client_id"]) == ("conflict", "c0")

    asyncio.run(run())
    assert Message.objects.count() == 3


# --- fan-out ---


def test_a_gone_connection_deletes_exactly_its_row(serverless_server):
    alice, bob = make_user("alice"), make_user("bob")
    room = Room.objects.create(slug="general", title="General")
    other = Room.objects.create(slug="other", title="Other")
    long_ago = timezone.now() - timedelta(minutes=5)

    def stale(connection_id: str, in_room: Room) -> None:
        row = ApiConnection.objects.create(
            connection_id=connection_id,
            user=bob,
            domain=f"127.0.0.1:{serverless_server.port}",
            stage="dev",
            connected_at=long_ago,
            last_seen=long_ago,
        )
        Subscription.objects.create(connection=row, room=in_room)

    stale("StaleInRoom000=", room)  # its $disconnect never came
    stale("StaleElsewher=", other)

    async def run() -> None:
        sockets = [
            await ws_connect(serverless_server, f"room=general&token={tokens.make_token(u)}")
            for u in (alice, bob)
        ]
        for ws in sockets:
            await recv_until(ws, of_type("subscribed"))
        await sockets[0].send(json.dumps({"action": "sendmessage", "body": "still here?"}))
        for ws in sockets:
            assert (await recv_until(ws, of_type("message")))["body"] == "still here?"
        await recv_until(sockets[0], of_type("ack"))
        remaining = await db(
            lambda: set(ApiConnection.objects.values_list("connection_id", flat=True))
        )
        assert "StaleInRoom000=" not in remaining
        assert "StaleElsewher=" in remaining
        assert len(remaining) == 3  # the two live ones and the stale one in the other room
        for ws in sockets:
            await ws.close()

    asyncio.run(run())


@pytest.fixture
def throttled_server(throttled_proc: Gateway, transactional_db: Any) -> Iterator[Gateway]:
    yield throttled_proc
    quiesce(gateway=throttled_proc)


def test_throttled_posts_are_retried_until_delivered(throttled_server):
    throttled_proc = throttled_server
    users = [make_user(f"user{n}") for n in range(4)]
    Room.objects.create(slug="general", title="General")

    async def run() -> None:
        sockets = [
            await ws_connect(throttled_proc, f"room=general&token={tokens.make_token(u)}")
            for u in users
        ]
        for ws in sockets:
            await recv_until(ws, of_type("subscribed"))
        for n in range(5):
            frame = {"action": "sendmessage", "body": f"m{n}", "client_id": f"c{n}"}
            await sockets[n % 4].send(json.dumps(frame))
        for ws in sockets:
            seqs = set()
            while len(seqs) < 5:
                seqs.add((await recv_until(ws, of_type("message")))["seq"])
            assert seqs == {1, 2, 3, 4, 5}
        for ws in sockets:
            await ws.close()

    asyncio.run(run())


def test_a_message_posted_over_http_reaches_websocket_and_long_poll_clients(serverless_server):
    alice, bob = make_user("alice"), make_user("bob")
    Room.objects.create(slug="general", title="General")
    cookies, headers = session_cookies(alice)
    headers["Origin"] = serverless_server.url

    async def run() -> None:
        jar = aiohttp.CookieJar(unsafe=True)
        async with (
            ws_connect(serverless_server, f"room=general&token={tokens.make_token(bob)}") as ws,
            aiohttp.ClientSession(cookie_jar=jar, cookies=cookies) as http,
        ):
            await recv_until(ws, of_type("subscribed"))
            poll_url = f"{serverless_server.url}/api/rooms/general/poll?after=0&timeout=10"
            poll = asyncio.ensure_future(http.get(poll_url))
            await asyncio.sleep(0.5)  # the poll is waiting, re-reading the database
            url = f"{serverless_server.url}/api/rooms/general/messages"
            body = {"body": "over HTTP", "client_id": "h1"}
            async with http.post(url, json=body, headers=headers) as response:
                assert response.status == 201, await response.text()
                posted = await response.json()
            event = await recv_until(ws, of_type("message"))
            assert event == posted
            async with await poll as answer:
                assert answer.status == 200
                assert (await answer.json())["events"] == [posted]

    asyncio.run(run())


def test_a_room_of_several_hundred_connections_is_fanned_out_completely(serverless_server):
    # One user, so presence announces once instead of once per connection.
    alice = make_user("alice")
    Room.objects.create(slug="big", title="Big")
    token = tokens.make_token(alice)
    count = 300

    async def run() -> None:
        async def open_one() -> Any:
            ws = await ws_connect(serverless_server, f"room=big&token={token}")
            await recv_until(ws, of_type("subscribed"), timeout=30)
            return ws

        sockets = []
        for _ in range(0, count, 50):  # API Gateway admits 500 new connections a second
            sockets += await asyncio.gather(*(open_one() for _n in range(50)))
        assert await db(lambda: Subscription.objects.count()) == count
        await sockets[0].send(json.dumps({"action": "sendmessage", "body": "to all"}))
        got = await asyncio.gather(
            *(recv_until(ws, of_type("message"), timeout=30) for ws in sockets)
        )
        assert [e["body"] for e in got] == ["to all"] * count
        await asyncio.gather(*(ws.close() for ws in sockets))

    asyncio.run(run())


# --- in this process: the handlers with a controlled clock and stubbed @connections ---


class Posts:
    """Records what the handlers post instead of calling @connections."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, dict[str, Any]]] = []

    def __call__(self, target: tuple[str, str], data: bytes, until: float | None = None) -> str:
        self.sent.append((target[0], json.loads(data)))
        return apigateway.OK

    def to(self, connection_id: str) -> list[dict[str, Any]]:
        return [event for cid, event in self.sent if cid == connection_id]


@pytest.fixture(autouse=True)
def keep_test_connection(monkeypatch: Any) -> None:
    # Django's test client does the same: closing "obsolete" connections would close the test's
    # own (it is inside a transaction). The gateway process closes them as on Lambda.
    monkeypatch.setattr(serverless, "close_old_connections", lambda: None)
    monkeypatch.setattr(apigateway, "close_old_connections", lambda: None)


@pytest.fixture
def posts(monkeypatch: Any, settings: Any) -> Iterator[Posts]:
    """Publication through the API Gateway publisher alone, its posts recorded."""
    recorder = Posts()
    monkeypatch.setattr(apigateway, "post", recorder)
    settings.CHAT_FANOUT_BACKENDS = ["chat.apigateway.ApiGatewayBackend"]
    fanout.backends.cache_clear()
    yield recorder
    fanout.backends.cache_clear()


def ws_event(route: str, connection_id: str, **extra: Any) -> dict[str, Any]:
    kind = {"$connect": "CONNECT", "$disconnect": "DISCONNECT", "$default": "MESSAGE"}[route]
    return {
        "requestContext": {
            "routeKey": route,
            "eventType": kind,
            "connectionId": connection_id,
            "domainName": "abc.execute-api.us-east-1.amazonaws.com",
            "stage": "dev",
        },
        "isBase64Encoded": False,
        **extra,
    }


def frame(connection_id: str, data: Any) -> dict[str, Any]:
    return ws_event("$default", connection_id, body=json.dumps(data))


def connected(user: Any, connection_id: str, room: Room | None = None) -> ApiConnection:
    event = ws_event("$connect", connection_id)
    event["queryStringParameters"] = {"token": tokens.make_token(user)}
    assert serverless.connect(event, None) == {"statusCode": 200}
    row = ApiConnection.objects.get(connection_id=connection_id)
    if room is not None:
        Subscription.objects.create(connection=row, room=room)
    return row


def test_the_endpoint_is_the_connections_domain_and_stage_or_the_setting(settings):
    settings.CHAT_APIGW_ENDPOINT = ""
    assert apigateway.endpoint("abc.execute-api.eu-west-1.amazonaws.com", "prod") == (
        "https://abc.execute-api.eu-west-1.amazonaws.com/prod"
    )
    settings.CHAT_APIGW_ENDPOINT = "http://127.0.0.1:9/dev"
    assert apigateway.endpoint("chat.example.com", "prod") == "http://127.0.0.1:9/dev"


def test_two_messages_in_the_same_millisecond_are_both_kept_and_ordered(db, alice, room, posts):
    connected(alice, "Conn1=", room)
    instant = timezone.now()
    with mock.patch("django.utils.timezone.now", return_value=instant):
        for n in (1, 2):
            data = {"action": "sendmessage", "room": "general", "body": f"same ms {n}"}
            serverless.message(frame("Conn1=", data), None)
    messages = list(Message.objects.order_by("seq"))
    assert [(m.body, m.seq, m.created) for m in messages] == [
        ("same ms 1", 1, instant),
        ("same ms 2", 2, instant),
    ]
    acks = [e for e in posts.to("Conn1=") if e["type"] == "ack"]
    assert [a["seq"] for a in acks] == [1, 2]
    history = reads.history(room, None, 10)["messages"]
    assert [m["body"] for m in history] == ["same ms 1", "same ms 2"]


def test_the_rate_limit_holds_across_invocations(db, alice, posts, settings):
    settings.CHAT_FRAME_BURST = 5
    settings.CHAT_FRAME_RATE = 1
    connected(alice, "Conn1=")
    for _ in range(6):  # every frame is a new invocation, with a new Connection object
        serverless.message(frame("Conn1=", {"action": "ping"}), None)
    replies = posts.to("Conn1=")
    assert [e["type"] for e in replies] == ["pong"] * 5 + ["error"]
    assert replies[-1]["code"] == "rate_limited"


def test_subscribe_stores_the_row_before_reading_history(db, alice, room, posts):
    row = connected(alice, "Conn1=")
    seen: list[bool] = []
    real = reads.catch_up

    def spy(*args: Any) -> Any:
        seen.append(Subscription.objects.filter(connection=row, room=room).exists())
        return real(*args)

    with mock.patch.object(reads, "catch_up", spy):
        serverless.message(frame("Conn1=", {"action": "subscribe", "room": "general"}), None)
        serverless.message(
            frame("Conn1=", {"action": "subscribe", "room": "general", "after": 0}), None
        )
    assert seen == [True]
    replies = [e for e in posts.to("Conn1=") if e["type"] == "subscribed"]
    assert [e["resumed"] for e in replies] == [False, True]
    assert Subscription.objects.count() == 1  # subscribing twice is safe


def test_typing_goes_to_the_others_only(db, alice, bob, room, posts):
    connected(alice, "Alice=", room)
    connected(bob, "Bob=", room)
    serverless.message(frame("Alice=", {"action": "typing", "room": "general"}), None)
    assert posts.to("Alice=") == []
    assert posts.to("Bob=") == [{"type": "typing", "room": "general", "user": "alice"}]


def test_a_frame_from_an_unknown_connection_gets_a_fatal_error(db, posts, monkeypatch):
    deleted: list[str] = []

    class Client:
        def delete_connection(self, ConnectionId: str) -> None:
            deleted.append(ConnectionId)

    monkeypatch.setattr(apigateway, "client", lambda url: Client())
    assert serverless.message(frame("Ghost=", {"action": "ping"}), None) == {"statusCode": 200}
    [error] = posts.to("Ghost=")
    assert (error["code"], error["fatal"]) == ("unauthorized", True)
    assert deleted == ["Ghost="]


def test_a_handler_error_is_a_500_not_a_retry(db, monkeypatch):
    calls = []

    def broken(*args: Any) -> None:
        calls.append(args)
        raise TypeError("a bug")

    monkeypatch.setattr(tokens, "user_for_token", broken)
    event = ws_event("$connect", "Conn1=")
    event["queryStringParameters"] = {"token": "t"}
    assert serverless.connect(event, None)["statusCode"] == 500
    assert len(calls) == 1  # Zappa would call it again with fewer arguments on a TypeError


# --- the @connections client ---


def client_error(code: str, status: int) -> ClientError:
    return ClientError(
        {"Error": {"Code": code, "Message": code}, "ResponseMetadata": {"HTTPStatusCode": status}},
        "PostToConnection",
    )


class FlakyClient:
    def __init__(self, failures: list[str | None]) -> None:
        self.failures = failures
        self.calls = 0

    def post_to_connection(self, ConnectionId: str, Data: bytes) -> None:
        self.calls += 1
        failure = self.failures.pop(0) if self.failures else None
        if failure == "429":
            raise client_error("LimitExceededException", 429)
        if failure == "410":
            raise client_error("GoneException", 410)


def test_limit_exceeded_is_retried_with_backoff(monkeypatch, settings):
    settings.CHAT_APIGW_RETRIES = 3
    settings.CHAT_APIGW_FAST_POST = False  # boto3's post_to_connection (the gateway tests use both)
    flaky = FlakyClient(["429", "429"])
    sleeps: list[float] = []
    monkeypatch.setattr(apigateway, "client", lambda url: flaky)
    monkeypatch.setattr(apigateway.time, "sleep", sleeps.append)
    assert apigateway.post(("Conn=", "https://x/dev"), b"{}") == apigateway.OK
    assert flaky.calls == 3
    assert len(sleeps) == 2 and sleeps[1] > sleeps[0] * 1.1 / 1.5  # growing, jittered

    flaky = FlakyClient(["429"] * 10)
    monkeypatch.setattr(apigateway, "client", lambda url: flaky)
    assert apigateway.post(("Conn=", "https://x/dev"), b"{}") == apigateway.FAILED
    assert flaky.calls == 4

    flaky = FlakyClient(["410"])
    monkeypatch.setattr(apigateway, "client", lambda url: flaky)
    assert apigateway.post(("Conn=", "https://x/dev"), b"{}") == apigateway.GONE
    assert flaky.calls == 1  # gone is not retried


class Management(http.server.BaseHTTPRequestHandler):
    """@connections as a keep-alive HTTP/1.1 server: 200, 410 for ids starting "Gone", 429 for
    ids starting "Busy"; with `close_after` requests on one connection it closes it, silently,
    as a server with an idle timeout does."""

    protocol_version = "HTTP/1.1"
    seen: list[tuple[int, str, str]] = []  # (client port, path, Authorization)
    close_after = 0

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        type(self).seen.append((self.client_address[1], self.path, self.headers["Authorization"]))
        connection_id = self.path.rsplit("/", 1)[1]
        status, kind = {
            "Gone": (410, "GoneException"),
            "Busy": (429, "LimitExceededException"),
        }.get(connection_id[:4], (200, ""))
        self.send_response(status)
        if kind:
            self.send_header("x-amzn-ErrorType", f"{kind}:http://internal.amazon.com/")
        self.send_header("Content-Length", "0")
        self.end_headers()
        on_this_connection = [port for port, _, _ in self.seen if port == self.client_address[1]]
        if len(on_this_connection) == self.close_after:
            self.close_connection = True

    def log_message(self, *args: Any) -> None:
        pass


def test_the_poster_signs_keeps_its_connection_and_reopens_a_closed_one(monkeypatch, settings):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDPOSTER")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    Management.seen, Management.close_after = [], 2
    closed = threading.Event()

    class Server(http.server.ThreadingHTTPServer):
        def shutdown_request(self, request: Any) -> None:
            super().shutdown_request(request)
            closed.set()  # the socket is closed on the server's side

    server = Server(("127.0.0.1", 0), Management)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/dev"
        poster = apigateway.Poster()
        assert poster(url, "One=", b"1") == ""
        assert poster(url, "Gone/x=", b"2") == "GoneException"  # and the id is escaped
        assert closed.wait(10)
        # The server closed that connection after two answers: the next call opens another
        # instead of failing on the dead one.
        assert poster(url, "Busy=", b"3") == "LimitExceededException"
        assert poster(url, "Two=", b"4") == ""
    finally:
        server.shutdown()
        server.server_close()
    ports = [port for port, _, _ in Management.seen]
    assert ports[0] == ports[1] != ports[2] == ports[3]
    assert [path for _, path, _ in Management.seen] == [
        "/dev/@connections/One%3D",
        "/dev/@connections/Gone%2Fx%3D",
        "/dev/@connections/Busy%3D",
        "/dev/@connections/Two%3D",
    ]
    authorization = Management.seen[0][2]
    assert authorization.startswith("AWS4-HMAC-SHA256 Credential=AKIDPOSTER/")
    assert f"/{settings.CHAT_APIGW_REGION}/execute-api/aws4_request" in authorization


def test_a_410_spares_a_connection_whose_connect_may_still_run(db, alice, room, monkeypatch):
    young = connected(alice, "Young=", room)
    old = connected(alice, "Old=", room)
    ApiConnection.objects.filter(pk=old.pk).update(
        connected_at=timezone.now() - timedelta(minutes=1)
    )
    monkeypatch.setattr(apigateway, "post", lambda target, data, until=None: apigateway.GONE)
    result = apigateway.deliver([("Young=", "u"), ("Old=", "u")], b"{}").counts
    assert result == {"ok": 0, "gone": 2, "failed": 0, "deferred": 0}
    remaining = list(ApiConnection.objects.values_list("connection_id", flat=True))
    assert remaining == [young.connection_id]


def test_a_large_room_is_split_into_task_batches(db, alice, room, monkeypatch, settings):
    settings.CHAT_APIGW_BATCH = 40
    for n in range(100):
        connected(alice, f"Conn{n:03}=", room)
    batches: list[int] = []
    monkeypatch.setattr(apigateway, "post", lambda target, data, until=None: apigateway.OK)
    real = apigateway.deliver

    def counting(targets: Any, data: bytes, *args: Any, **kwargs: Any) -> apigateway.Outcome:
        batches.append(len(targets))
        return real(targets, data, *args, **kwargs)

    monkeypatch.setattr(apigateway, "deliver", counting)
    # Outside Lambda (no AWS_LAMBDA_FUNCTION_NAME) a batch runs inline, as Zappa's @task does.
    assert not os.environ.get("AWS_LAMBDA_FUNCTION_NAME")
    apigateway.ApiGatewayBackend().publish(room.pk, {"type": "message"}, '{"type":"message"}')
    assert sorted(batches) == [20, 40, 40]
    assert batches[-1] == 40  # the invocation's own batch goes last, after handing off the rest


def test_posts_never_exceed_api_gateways_frame_limit():
    users = [f"user-with-a-long-name-{n:05}" for n in range(5000)]
    event = {"type": "presence", "room": "big", "users": users}
    data = apigateway.fit(event, json.dumps(event))
    assert data is not None and len(data) <= 32 * 1024
    trimmed = json.loads(data)
    assert trimmed["truncated"] is True and trimmed["users"] == users[: len(trimmed["users"])]
    huge = {"type": "message", "body": "x" * 40_000}
    assert apigateway.fit(huge, json.dumps(huge)) is None
    small = {"type": "pong"}
    assert apigateway.fit(small, '{"type":"pong"}') == b'{"type":"pong"}'


def test_the_sweep_removes_expired_and_gone_rows(db, alice, room, monkeypatch, settings):
    now = timezone.now()
    for cid, connected_at, last_seen in [
        ("Ancient=", now - timedelta(hours=3), now - timedelta(hours=3)),
        ("IdleGone=", now - timedelta(minutes=30), now - timedelta(minutes=20)),
        ("IdleAlive=", now - timedelta(minutes=30), now - timedelta(minutes=20)),
        ("Fresh=", now - timedelta(minutes=1), now),
    ]:
        row = ApiConnection.objects.create(
            connection_id=cid,
            user=alice,
            domain="d",
            stage="dev",
            connected_at=connected_at,
            last_seen=last_seen,
        )
        Subscription.objects.create(connection=row, room=room)
    asked: list[str] = []

    class Client:
        def get_connection(self, ConnectionId: str) -> dict[str, Any]:
            asked.append(ConnectionId)
            if ConnectionId == "IdleGone=":
                raise client_error("GoneException", 410)
            return {}

    monkeypatch.setattr(apigateway, "client", lambda url: Client())
    assert apigateway.sweep() == {"expired": 1, "gone": 1, "claims": 0}
    assert sorted(asked) == ["IdleAlive=", "IdleGone="]
    remaining = set(ApiConnection.objects.values_list("connection_id", flat=True))
    assert remaining == {"IdleAlive=", "Fresh="}
    assert Subscription.objects.count() == 2


def test_presence_from_subscription_rows(db, alice, bob, room):
    store = presence.SubscriptionStore()
    a1 = connected(alice, "A1=", room)
    assert store.touch(room.pk, "A1=", "alice", 60) is True  # alice's first connection
    connected(alice, "A2=", room)
    assert store.touch(room.pk, "A2=", "alice", 60) is False
    connected(bob, "B1=", room)
    assert store.users(room.pk) == ["alice", "bob"]
    a1.delete()
    assert store.leave(room.pk, "A1=", "alice") is False  # still there on A2


# --- the package ---


class Package:
    """`zappa package dev` of a clean copy of the checkout, built once for this module."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.project = base / "checkout"
        self.zip = base / "chat-dev.zip"
        self.env: dict[str, str] = {}

    def copy_checkout(self) -> None:
        # What a clean checkout holds: the tracked files and the new ones git would not ignore.
        listed = subprocess.run(
            ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
            cwd=ROOT,
            capture_output=True,
            check=True,
        ).stdout.decode()
        for name in filter(None, listed.split("\0")):
            source, target = ROOT / name, self.project / name
            if source.is_dir():  # a symlink to a folder, such as a linked virtualenv
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                shutil.copy2(source, target)
            except FileNotFoundError:  # deleted in the working tree, or a passing temporary file
                pass

    def zappa(self, *args: str, virtual_env: Path | None) -> subprocess.CompletedProcess[str]:
        """Zappa from this checkout's virtualenv, with no AWS credentials and no pyenv."""
        venv = Path(sys.prefix)
        env = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith(("AWS_", "PYENV")) and key not in ("DJANGO_SETTINGS_MODULE",)
        }
        env.pop("VIRTUAL_ENV", None)
        if virtual_env is not None:
            env["VIRTUAL_ENV"] = str(virtual_env)
        env.update(
            PATH=f"{venv / 'bin'}:{env.get('PATH', '')}",
            AWS_EC2_METADATA_DISABLED="true",  # nothing may reach for credentials
            AWS_SHARED_CREDENTIALS_FILE=str(self.base / "none"),
            AWS_CONFIG_FILE=str(self.base / "none"),
        )
        self.env = env
        return subprocess.run(
            [str(venv / "bin" / "zappa"), *args],
            cwd=self.project,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )


@pytest.fixture(scope="module")
def lambda_package(tmp_path_factory: pytest.TempPathFactory) -> Package:
    """The zip, from the Lambda environment (chatsite/deployment.py: built from PyPI once, then
    reused while requirements.txt is unchanged); Zappa's own packaging is offline."""
    package = Package(tmp_path_factory.mktemp("package"))
    package.copy_checkout()
    lambda_env = deployment.build_environment(ROOT)
    result = package.zappa("package", "dev", "-o", str(package.zip), virtual_env=lambda_env)
    assert result.returncode == 0, result.stdout + result.stderr
    return package


def test_zappa_refuses_to_package_any_other_environment(lambda_package: Package) -> None:
    """Without VIRTUAL_ENV Zappa would take pyenv's global Python; with the development
    virtualenv, a package built for this machine. The prebuild refuses both, saying why."""
    for virtual_env in (None, Path(sys.prefix)):
        out = lambda_package.base / "refused.zip"
        result = lambda_package.zappa("package", "dev", "-o", str(out), virtual_env=virtual_env)
        assert result.returncode != 0
        assert "make package STAGE=dev" in result.stdout + result.stderr
        assert not out.exists()


def test_zappa_package_builds_offline_under_50_mb_and_its_handler_runs(
    lambda_package: Package, tmp_path: Path, transactional_db: Any
) -> None:
    """`zappa package dev` in a clean copy, with no AWS credentials; then the zip's own
    handler answers a $connect in an interpreter that sees nothing but the zip."""
    package, env = lambda_package.zip, lambda_package.env
    assert package.stat().st_size < 50 * 1024 * 1024
    names = set(zipfile.ZipFile(package).namelist())
    assert {"zappa_settings.py", "chat/serverless.py", "django/__init__.py"} <= names
    assert not any(n.startswith(("tests/", "bench/", "playwright/")) for n in names)
    # The development tools stay out of the zip (the prebuild script is part of chatsite).
    assert not any(n.startswith("localgateway/") for n in names)
    assert "chat/management/commands/localgateway.py" not in names
    assert "chatsite/deployment.py" in names
    assert not any(n.startswith(".lambda-env") for n in names)

    unpacked = tmp_path / "task"
    zipfile.ZipFile(package).extractall(unpacked)
    alice = make_user("alice")
    writepath.ensure_lobby()
    script = f"""
import json, sys
sys.path.insert(0, {str(unpacked)!r})
from zappa.handler import lambda_handler
def event(token):
    return {{"requestContext": {{"routeKey": "$connect", "eventType": "CONNECT",
        "connectionId": "Pkg=", "domainName": "x.execute-api.us-east-1.amazonaws.com",
        "stage": "dev"}}, "queryStringParameters": {{"token": token}}, "isBase64Encoded": False}}
http = {{"httpMethod": "GET", "path": "/accounts/login/", "resource": "/{{proxy+}}",
    "headers": {{"Host": "localhost"}}, "multiValueHeaders": {{"Host": ["localhost"]}},
    "queryStringParameters": None, "multiValueQueryStringParameters": None,
    "pathParameters": {{"proxy": "accounts/login/"}}, "requestContext": {{"stage": "dev",
    "identity": {{"sourceIp": "127.0.0.1"}}, "path": "/accounts/login/"}}, "body": None,
    "isBase64Encoded": False}}
print(json.dumps([lambda_handler(event("forged"), None)["statusCode"],
                  lambda_handler(event({tokens.make_token(alice)!r}), None)["statusCode"],
                  lambda_handler(http, None)["statusCode"]]))
"""
    run = subprocess.run(
        [sys.executable, "-S", "-c", script],  # -S: no site-packages, only the zip
        cwd=unpacked,
        env={**env, "DATABASE_URL": database_url(), "AWS_REGION": "us-east-1"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert json.loads(run.stdout.strip().splitlines()[-1]) == [401, 200, 200]
    assert ApiConnection.objects.get().connection_id == "Pkg="


def glibc_needed(elf: ELFFile) -> tuple[int, int]:
    """The newest GLIBC_x.y symbol version an ELF file needs ((0, 0) for none)."""
    newest = (0, 0)
    for section in elf.iter_sections():
        if isinstance(section, GNUVerNeedSection):
            for _, needs in section.iter_versions():
                for need in needs:
                    if match := re.fullmatch(r"GLIBC_(\d+)\.(\d+)(?:\.\d+)?", need.name):
                        newest = max(newest, (int(match[1]), int(match[2])))
    return newest


def test_every_elf_file_in_the_zip_runs_on_the_lambda_runtime(lambda_package: Package) -> None:
    """python3.11 on Lambda is Amazon Linux 2 on x86_64, with glibc 2.26: nothing in the zip may
    need a newer GLIBC symbol version or be built for another machine."""
    assert json.loads((ROOT / "zappa_settings.json").read_text())["dev"]["runtime"] == (
        deployment.RUNTIME
    )
    found: dict[str, tuple[str, tuple[int, int]]] = {}
    with zipfile.ZipFile(lambda_package.zip) as archive:
        for info in archive.infolist():
            with archive.open(info) as handle:
                if handle.read(4) != b"\x7fELF":
                    continue
            elf = ELFFile(io.BytesIO(archive.read(info)))
            found[info.filename] = (elf["e_machine"], glibc_needed(elf))
    assert any(name.startswith("PIL/_imaging") for name in found)  # Pillow's, psycopg's, ...
    assert any(name.startswith("psycopg_binary") for name in found)
    wrong = {
        name: (machine, glibc)
        for name, (machine, glibc) in found.items()
        if machine != "EM_X86_64" or glibc > deployment.RUNTIME_GLIBC
    }
    assert not wrong, wrong


def test_the_elf_check_sees_a_wheel_built_for_a_newer_glibc() -> None:
    """The check above is not vacuous: this machine's own Pillow, from a manylinux_2_28 wheel
    (what pip picks on a newer Linux, and what failed on Lambda), is seen to need more."""
    import PIL

    wheel = next(Path(PIL.__file__).parent.parent.glob("pillow-*.dist-info")) / "WHEEL"
    if "manylinux_2_28" not in wheel.read_text():
        pytest.skip("this machine's Pillow is not a manylinux_2_28 wheel")
    needs = {}
    for path in Path(PIL.__file__).parent.glob("*.so"):
        with path.open("rb") as handle:
            needs[path.name] = glibc_needed(ELFFile(handle))
    assert max(needs.values()) > deployment.RUNTIME_GLIBC, needs
