"""End to end over real sockets: WebSocket clients and long-pollers against running ASGI servers on
the real PostgreSQL and Redis."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import pytest
from asgiref.sync import sync_to_async
from django.test import Client
from websockets.asyncio.client import ClientConnection, connect

from chat import writepath
from chat.models import Message, Room
from chat.tokens import make_token
from tests.conftest import Gateway, Server

pytestmark = pytest.mark.django_db(transaction=True)

# The state every long-poll answer carries (a lock or rename is not a message, so no cursor has it).
GENERAL = {"type": "room", "room": "general", "locked": False, "title": "General"}
# ...and who is online: the poller itself (alice) in these tests.
ONLINE = {"type": "presence", "room": "general", "users": ["alice"]}


class Peer:
    """A protocol client on a real socket."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws

    async def send(self, frame: dict[str, Any]) -> None:
        await self.ws.send(json.dumps(frame))

    async def next(self, kind: str | None = None, timeout: float = 5) -> dict[str, Any]:
        while True:
            event = json.loads(await asyncio.wait_for(self.ws.recv(), timeout))
            if (kind is None and event["type"] != "presence") or event["type"] == kind:
                return event

    async def messages(self, n: int) -> list[dict[str, Any]]:
        return [await self.next("message") for _ in range(n)]

    async def subscribe(self, room: str, after: int | None = None) -> dict[str, Any]:
        frame: dict[str, Any] = {"action": "subscribe", "room": room}
        if after is not None:
            frame["after"] = after
        await self.send(frame)
        return await self.next("subscribed")

    async def nothing_more(self, kind: str = "message", within: float = 0.3) -> None:
        try:
            event = await self.next(kind, within)
        except TimeoutError:
            return
        raise AssertionError(f"unexpected {event}")


async def peer(server: Server, user: Any, query: str = "") -> Peer:
    token = await sync_to_async(make_token)(user)
    ws = await connect(f"{server.ws_url}?token={token}{query}", open_timeout=5)
    return Peer(ws)


async def test_two_users_chat(chat_server: Server, alice: Any, bob: Any, room: Room) -> None:
    a, b = await peer(chat_server, alice), await peer(chat_server, bob)
    await a.subscribe("general")
    await b.subscribe("general")
    await a.send({"action": "sendmessage", "room": "general", "body": "hi bob", "client_id": "a1"})
    await b.send(
        {"action": "sendmessage", "room": "general", "body": "hi alice", "client_id": "b1"}
    )
    for p in (a, b):
        got = await p.messages(2)
        assert sorted((m["author"], m["body"]) for m in got) == [
            ("alice", "hi bob"),
            ("bob", "hi alice"),
        ]
        seqs = [m["seq"] for m in got]
        # The Channels consumer sends a room's messages in seq order; API Gateway's fan-out
        # comes from two concurrent invocations, and clients order it by seq (docs/protocol.md).
        assert (sorted(seqs) if isinstance(chat_server, Gateway) else seqs) == [1, 2]
    await a.ws.close()
    await b.ws.close()


async def test_reconnect_with_after_gets_exactly_the_missed(
    chat_server: Server, alice: Any, bob: Any, room: Room
) -> None:
    a, b = await peer(chat_server, alice), await peer(chat_server, bob)
    await a.subscribe("general")
    await b.subscribe("general")
    await a.send({"action": "sendmessage", "room": "general", "body": "before"})
    cursor = (await b.next("message"))["seq"]
    await b.ws.close()
    for i in range(3):
        await a.send({"action": "sendmessage", "room": "general", "body": f"missed {i}"})
    await a.messages(4)
    b = await peer(chat_server, bob)
    subscribed = await b.subscribe("general", after=cursor)
    assert subscribed["resumed"] is True and subscribed["seq"] == 4
    got = await b.messages(3)
    # Exactly the missed ones, in seq order. (Which of a's three quick frames is stored first is
    # the server's choice: API Gateway invokes Lambda for each frame concurrently.)
    assert [m["seq"] for m in got] == [2, 3, 4]
    assert sorted(m["body"] for m in got) == ["missed 0", "missed 1", "missed 2"]
    await b.nothing_more()
    await a.ws.close()
    await b.ws.close()


async def test_a_file_sent_over_the_socket_reaches_everyone(
    chat_server: Server, alice: Any, bob: Any, room: Room
) -> None:
    """The bytes go to storage over HTTP; the frame carries only the attachment's id, so it stays
    far below API Gateway's 32 KB whatever the file's size."""
    from chat import attachments
    from chat.models import Attachment

    def ready_upload() -> str:
        row = attachments.start_upload(alice, room, "notes.txt", 5, "text/plain")
        Attachment.objects.filter(pk=row.pk).update(status=Attachment.READY)
        return str(row.pk)

    pk = await sync_to_async(ready_upload)()
    a, b = await peer(chat_server, alice), await peer(chat_server, bob)
    await a.subscribe("general")
    await b.subscribe("general")
    await a.send({"action": "sendmessage", "room": "general", "attachment": pk, "client_id": "f1"})
    # The sender gets its ack and the message, in either order (on Lambda the fan-out may win).
    got: dict[str, dict[str, Any]] = {}
    while len(got) < 2:
        event = await a.next()
        if event["type"] in ("ack", "message"):
            got[event["type"]] = event
    assert got["ack"]["client_id"] == "f1"
    for event in (got["message"], await b.next("message")):
        assert event["body"] == ""
        assert event["attachment"]["id"] == pk
        assert event["attachment"]["name"] == "notes.txt"
        assert event["attachment"]["url"] == f"/api/attachments/{pk}"
    # Another user cannot send it; it stays in the one message.
    await b.send({"action": "sendmessage", "room": "general", "attachment": pk, "client_id": "f2"})
    error = await b.next("error")
    assert (error["code"], error["client_id"]) == ("bad_request", "f2")
    await a.ws.close()
    await b.ws.close()


async def test_the_aws_tutorial_way(chat_server: Server, alice: Any, bob: Any) -> None:
    await sync_to_async(writepath.ensure_lobby)()
    a = await peer(chat_server, alice, "&room=lobby")
    b = await peer(chat_server, bob, "&room=lobby")
    await a.next("subscribed")
    await b.next("subscribed")
    await a.send({"action": "sendmessage", "message": "hello, everyone!"})
    for p in (a, b):
        assert (await p.next("message"))["body"] == "hello, everyone!"


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        ("hello", "bad_request"),
        ('"just a string"', "bad_request"),
        ('{"action": "dance"}', "unknown_action"),
        ('{"action": "sendmessage", "room": "general", "body": "' + "x" * 5000 + '"}', "too_large"),
        # Over 32 KB, sent in fragments (API Gateway closes on a single frame that large).
        (['{"action": "ping", "pad": "', "y" * 30000, "y" * 10000 + '"}'], "too_large"),
        (b"\x00binary", "bad_request"),
    ],
)
async def test_bad_input_over_a_real_socket(
    chat_server: Server, alice: Any, room: Room, frame: str | bytes | list[str], code: str
) -> None:
    a = await peer(chat_server, alice)
    await a.ws.send(frame)
    assert (await a.next("error"))["code"] == code
    await a.send({"action": "ping"})
    assert await a.next("pong") == {"type": "pong"}
    assert await sync_to_async(Message.objects.count)() == 0


async def test_forged_tokens_are_refused_at_the_handshake(chat_server: Server) -> None:
    with pytest.raises(Exception) as info:
        await connect(f"{chat_server.ws_url}?token=forged", open_timeout=5)
    assert "403" in str(info.value) or "401" in str(info.value)


async def test_a_flood_is_limited_and_others_are_served(
    chat_server: Server, alice: Any, bob: Any, room: Room
) -> None:
    a, b = await peer(chat_server, alice), await peer(chat_server, bob)
    await b.subscribe("general")
    for _ in range(200):
        await a.send({"action": "ping"})
    codes = [await a.next() for _ in range(200)]
    limited = [e for e in codes if e["type"] == "error"]
    assert limited and all(e["code"] == "rate_limited" and e["retry_after"] > 0 for e in limited)
    started = time.monotonic()
    await b.send({"action": "sendmessage", "room": "general", "body": "still served"})
    assert (await b.next("message"))["body"] == "still served"
    assert time.monotonic() - started < 2


@pytest.fixture
def second_server(live_server_proc: Server, transactional_db: Any) -> Iterator[Server]:
    other = Server().start()
    yield other
    other.stop()


async def test_two_processes_behave_as_one(
    server: Server, second_server: Server, alice: Any, bob: Any, room: Room
) -> None:
    a, b = await peer(server, alice), await peer(second_server, bob)
    await a.subscribe("general")
    await b.subscribe("general")
    await b.send({"action": "sendmessage", "room": "general", "body": "from process two"})
    assert (await a.next("message"))["body"] == "from process two"
    await a.send({"action": "sendmessage", "room": "general", "body": "from process one"})
    got = [m["body"] for m in await b.messages(2)]
    assert got == ["from process two", "from process one"]
    await b.send({"action": "typing", "room": "general"})
    assert await a.next("typing") == {"type": "typing", "room": "general", "user": "bob"}


# --- long-poll ---


@pytest.fixture
async def http(server: Server, alice: Any) -> AsyncIterator[aiohttp.ClientSession]:
    client = Client()
    await sync_to_async(client.force_login)(alice)
    cookies = {"sessionid": client.cookies["sessionid"].value}
    async with aiohttp.ClientSession(server.url, cookies=cookies) as session:
        yield session


async def test_long_poll_answers_at_once_when_behind(
    http: aiohttp.ClientSession, bob: Any, room: Room
) -> None:
    await sync_to_async(writepath.post_message)(bob, room, "already there")
    started = time.monotonic()
    async with http.get("/api/rooms/general/poll?after=0&timeout=10") as response:
        data = await response.json()
    assert response.status == 200
    assert [e["body"] for e in data["events"]] == ["already there"] and data["seq"] == 1
    assert time.monotonic() - started < 5


async def test_long_poll_is_woken_by_a_post(
    http: aiohttp.ClientSession, bob: Any, room: Room
) -> None:
    poll = asyncio.create_task(http.get("/api/rooms/general/poll?after=0&timeout=20"))
    # Wait until the poller is present in the room, i.e. it is waiting, then post.
    deadline = time.monotonic() + 10
    while not await sync_to_async(_online, thread_sensitive=False)(room):
        assert time.monotonic() < deadline, "the poller never showed up in the room"
        await asyncio.sleep(0.02)
    await sync_to_async(writepath.post_message)(bob, room, "wake up")
    started = time.monotonic()
    response = await asyncio.wait_for(poll, 10)
    data = await response.json()
    assert [e["body"] for e in data["events"]] == ["wake up"]
    assert time.monotonic() - started < 5


def _online(room: Room) -> bool:
    from chat import presence

    return "alice" in presence.store().users(room.pk)


async def test_long_poll_times_out_empty(http: aiohttp.ClientSession, room: Room) -> None:
    async with http.get("/api/rooms/general/poll?after=0&timeout=1") as response:
        assert await response.json() == {
            "events": [],
            "seq": 0,
            "room": GENERAL,
            "presence": ONLINE,
        }


async def test_long_poll_errors(http: aiohttp.ClientSession, server: Server, room: Room) -> None:
    async with http.get("/api/rooms/general/poll?timeout=1") as response:
        assert response.status == 400 and (await response.json())["error"] == "bad_request"
    async with http.get("/api/rooms/nowhere/poll?after=0") as response:
        assert response.status == 404
    async with http.post("/api/rooms/general/poll?after=0") as response:
        assert response.status == 405
    async with aiohttp.ClientSession(server.url) as anonymous:
        async with anonymous.get("/api/rooms/general/poll?after=0") as response:
            assert response.status == 401


async def test_long_poll_receives_typing(
    http: aiohttp.ClientSession, server: Server, bob: Any, room: Room
) -> None:
    # A first poll marks alice present, so the long poll below is not woken by her own arrival.
    async with http.get("/api/rooms/general/poll?after=0&timeout=0") as response:
        assert await response.json() == {
            "events": [],
            "seq": 0,
            "room": GENERAL,
            "presence": ONLINE,
        }
    poll = asyncio.create_task(http.get("/api/rooms/general/poll?after=0&timeout=20"))
    b = await peer(server, bob)
    # Typing is ephemeral: keep typing until the waiting poll has picked one up.
    while not poll.done():
        await b.send({"action": "typing", "room": "general"})
        await asyncio.wait([poll], timeout=0.1)
    data = await poll.result().json()
    typing = {"type": "typing", "room": "general", "user": "bob"}
    assert data == {"events": [typing], "seq": 0, "room": GENERAL, "presence": ONLINE}


@pytest.fixture
def short_presence_servers(
    live_server_proc: Server, transactional_db: Any
) -> Iterator[list[Server]]:
    servers = [Server(env={"CHAT_PRESENCE_TTL": "5"}).start() for _ in range(2)]
    yield servers
    for s in servers:
        s.stop()


async def test_presence_forgets_a_dead_process(
    short_presence_servers: list[Server], alice: Any, bob: Any, room: Room
) -> None:
    survivor, doomed = short_presence_servers
    a = await peer(survivor, alice, "&room=general")
    await a.next("subscribed")
    b = await peer(doomed, bob, "&room=general")
    await b.next("subscribed")
    while (await a.next("presence"))["users"] != ["alice", "bob"]:
        pass
    assert doomed.proc is not None
    doomed.proc.kill()  # no disconnect handler runs: the entry has to expire
    started = time.monotonic()
    while (await a.next("presence", timeout=15))["users"] != ["alice"]:
        pass
    assert time.monotonic() - started < 15


async def test_a_refused_subscribe_leaves_the_connection_unsubscribed(
    chat_server: Server, alice: Any, bob: Any, room: Room
) -> None:
    """The cursor is checked after joining (so nothing slips between join and read); a refusal
    there must undo the join on every transport."""
    from chat.models import Subscription

    a, b = await peer(chat_server, alice), await peer(chat_server, bob)
    await a.send({"action": "subscribe", "room": "general", "after": 99})
    error = await a.next("error")
    assert (error["code"], error["room"]) == ("bad_request", "general")
    assert not await sync_to_async(Subscription.objects.filter(connection__user=alice).exists)()
    await b.subscribe("general")
    await b.send({"action": "sendmessage", "room": "general", "body": "not for alice"})
    assert (await b.next("message"))["body"] == "not for alice"
    await a.nothing_more()
    await a.ws.close()
    await b.ws.close()


async def test_a_flood_of_typing_reaches_the_room_once_per_interval(
    chat_server: Server, alice: Any, bob: Any, room: Room
) -> None:
    """300 typing requests over HTTP (and frames) in a burst: the room hears one typing event,
    then the next only once CHAT_TYPING_INTERVAL (2 s) has passed."""
    from tests.test_moderation import _http

    b = await peer(chat_server, bob)
    await b.subscribe("general")
    loop = asyncio.get_running_loop()
    arrivals: list[float] = []

    async def first_typing() -> dict[str, Any]:
        event = await b.next("typing")
        arrivals.append(loop.time())
        return event

    first = asyncio.create_task(first_typing())
    async with await _http(chat_server, alice) as http:
        for _ in range(30):
            async with http.post("/api/rooms/general/typing") as answer:
                assert answer.status == 204
        assert (await first) == {"type": "typing", "room": "general", "user": "alice"}
        # From the first event's arrival: however long the burst took, the next comes only
        # once the interval has passed since the first was let through.
        started = arrivals[0]
        await b.nothing_more("typing", within=1.0)

        async def keep_typing() -> None:
            while True:
                async with http.post("/api/rooms/general/typing") as answer:
                    assert answer.status == 204
                await asyncio.sleep(0.05)  # a client's own pace, not a wait for the server

        typist = asyncio.create_task(keep_typing())
        try:
            await b.next("typing", timeout=10)
        finally:
            typist.cancel()
        assert asyncio.get_running_loop().time() - started > 1.5
    await b.ws.close()
