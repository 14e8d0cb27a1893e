"""Priority 4: PostgreSQL failing under a running server. The shared PostgreSQL keeps running: the
server under test logs in as a role of its own, and the outage is that role losing LOGIN with its
open connections terminated (pg_terminate_backend). Every query of that process then fails with
OperationalError, as when the database is unreachable; the test process (superuser) is unaffected."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest
from django.contrib.auth import get_user_model
from django.db import connection
from websockets.asyncio.client import connect

from chat import tokens
from chat.models import Message, Room
from tests.conftest import Gateway, Server, quiesce
from tests.faults.conftest import Servers
from tests.test_realtime import Peer
from tests.test_serverless import session_cookies

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(90)]

ROLE = f"chat_fault_{os.getpid()}"


class Database:
    def __init__(self) -> None:
        s = connection.settings_dict
        self.url = f"postgres://{ROLE}@{s['HOST']}:{s['PORT']}/{s['NAME']}"

    def _run(self, *statements: str) -> None:
        with connection.cursor() as cursor:
            for statement in statements:
                cursor.execute(statement)

    def down(self) -> None:
        self._run(
            f"ALTER ROLE {ROLE} NOLOGIN",
            f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{ROLE}'",
        )

    def up(self) -> None:
        self._run(f"ALTER ROLE {ROLE} LOGIN")


@pytest.fixture
def database(transactional_db: Any) -> Iterator[Database]:
    db = Database()
    db._run(
        f"DROP ROLE IF EXISTS {ROLE}",
        f"CREATE ROLE {ROLE} LOGIN",
        f"GRANT ALL ON ALL TABLES IN SCHEMA public TO {ROLE}",
        f"GRANT ALL ON ALL SEQUENCES IN SCHEMA public TO {ROLE}",
    )
    yield db
    db.down()
    db._run(f"DROP OWNED BY {ROLE}", f"DROP ROLE {ROLE}")


@pytest.fixture
def gateway(database: Database) -> Iterator[Gateway]:
    gw = Gateway(env={"DATABASE_URL": database.url}).start()
    yield gw
    database.up()
    quiesce(gateway=gw)
    gw.stop()


def _frame(body: str, client_id: str) -> dict[str, Any]:
    return {"action": "sendmessage", "room": "general", "body": body, "client_id": client_id}


async def _no_ack(peer: Peer, client_id: str, within: float) -> list[dict[str, Any]]:
    """Everything the peer receives for `within` seconds; fails on an ack for client_id."""
    got: list[dict[str, Any]] = []
    try:
        while True:
            event = await peer.next(timeout=within)
            assert not (event["type"] == "ack" and event["client_id"] == client_id), event
            got.append(event)
    except TimeoutError:
        return got


def test_channels_send_during_outage_gets_server_error_and_retry_stores_once(
    database: Database, servers: Servers
) -> None:
    Room.objects.create(slug="general", title="General")
    alice = get_user_model().objects.create_user("alice", password="pw-alice-123")
    server = servers.start({"DATABASE_URL": database.url})
    token = tokens.make_token(alice)

    async def scenario() -> None:
        peer = Peer(await connect(f"{server.ws_url}?token={token}", open_timeout=5))
        await peer.subscribe("general")
        await peer.send(_frame("before", "c-0"))
        assert (await peer.next("ack"))["seq"] == 1
        await asyncio.to_thread(database.down)
        await peer.send(_frame("during", "c-1"))
        error = await peer.next("error", timeout=10)
        assert (error["code"], error["client_id"]) == ("server_error", "c-1")
        await peer.send({"action": "ping"})
        assert await peer.next("pong") == {"type": "pong"}  # the socket stays open
        assert not await asyncio.to_thread(Message.objects.filter(client_id="c-1").exists)
        await asyncio.to_thread(database.up)
        # The retry, and a retry of the retry: two acks of seq 2 and one message, which may come
        # before its ack (the live event and the answer travel separately).
        messages: list[dict[str, Any]] = []
        for _ in range(2):
            await peer.send(_frame("during", "c-1"))
            while (event := await peer.next(timeout=10))["type"] != "ack":
                if event["type"] == "message":
                    messages.append(event)
            assert (event["client_id"], event["seq"]) == ("c-1", 2)
        while not any(m["seq"] == 2 for m in messages):
            event = await peer.next("message")
            messages.append(event)
        assert [(m["seq"], m["body"]) for m in messages if m["seq"] >= 2] == [(2, "during")]
        await peer.ws.close()

    asyncio.run(scenario())
    assert list(Message.objects.order_by("seq").values_list("client_id", "seq")) == [
        ("c-0", 1),
        ("c-1", 2),
    ]


def test_http_post_during_outage_is_a_json_server_error(
    database: Database, servers: Servers
) -> None:
    Room.objects.create(slug="general", title="General")
    alice = get_user_model().objects.create_user("alice", password="pw-alice-123")
    server = servers.start({"DATABASE_URL": database.url})
    cookies, headers = session_cookies(alice)
    url = f"{server.url}/api/rooms/general/messages"

    async def scenario() -> tuple[int, str]:
        async with aiohttp.ClientSession(cookies=cookies) as http:
            await asyncio.to_thread(database.down)
            body = {"body": "during", "client_id": "h-1"}
            async with http.post(url, json=body, headers=headers) as response:
                down = (response.status, await response.text())
            await asyncio.to_thread(database.up)
            for expected in (201, 200):
                async with http.post(url, json=body, headers=headers) as response:
                    assert response.status == expected
            return down

    status, text = asyncio.run(scenario())
    assert Message.objects.filter(client_id="h-1").count() == 1
    assert status == 500
    assert json.loads(text)["error"] == "server_error", text


def _gateway_peer(gateway: Server, token: str) -> Any:
    return connect(f"{gateway.ws_url}?token={token}", open_timeout=20)


def test_serverless_send_during_outage_is_not_acked_and_retry_stores_once(
    database: Database, gateway: Gateway
) -> None:
    Room.objects.create(slug="general", title="General")
    alice = get_user_model().objects.create_user("alice", password="pw-alice-123")
    token = tokens.make_token(alice)

    async def scenario() -> None:
        peer = Peer(await _gateway_peer(gateway, token))
        await peer.subscribe("general")
        await asyncio.to_thread(database.down)
        await peer.send(_frame("during", "s-1"))
        await _no_ack(peer, "s-1", within=2)
        assert not await asyncio.to_thread(Message.objects.exists)
        await asyncio.to_thread(database.up)
        for _ in range(2):
            await peer.send(_frame("during", "s-1"))
            ack = await peer.next("ack", timeout=10)
            assert (ack["client_id"], ack["seq"]) == ("s-1", 1)
        await peer.ws.close()

    asyncio.run(scenario())
    assert list(Message.objects.values_list("client_id", "seq")) == [("s-1", 1)]


def test_serverless_send_during_outage_gets_server_error(
    database: Database, gateway: Gateway
) -> None:
    Room.objects.create(slug="general", title="General")
    alice = get_user_model().objects.create_user("alice", password="pw-alice-123")
    token = tokens.make_token(alice)

    async def scenario() -> list[dict[str, Any]]:
        peer = Peer(await _gateway_peer(gateway, token))
        await peer.subscribe("general")
        await asyncio.to_thread(database.down)
        try:
            await peer.send(_frame("during", "s-1"))
            return await _no_ack(peer, "s-1", within=3)
        finally:
            await asyncio.to_thread(database.up)
            await peer.ws.close()

    got = asyncio.run(scenario())
    errors = [e for e in got if e["type"] == "error" and e.get("client_id") == "s-1"]
    assert [e["code"] for e in errors] == ["server_error"], got
