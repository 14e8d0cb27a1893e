"""Idempotent posts: the key is (room, author, client_id).

A retry is the same author sending the same client_id to the same room: with the same body it gets
the original back (HTTP 200 with the stored message, WebSocket `ack` with its seq and id); with
another body it is a `conflict` (HTTP 409, a protocol `error` naming the client_id) and stores
nothing. The same client_id in another room is another message, acknowledged with its own room:
a bot that numbers its messages per room, or a client that starts counting again after a restart,
loses nothing.
"""

from __future__ import annotations

import asyncio
import json
import threading
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.db import connections
from django.test import Client

from chat.models import Message, Room
from tests.conftest import Server
from tests.faults.client import ResilientClient, traffic, wait_for_state
from tests.faults.conftest import assert_complete, users_and_tokens
from tests.test_realtime import Peer, peer

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(120)]


def two_rooms() -> tuple[Room, Room]:
    return Room.objects.create(slug="ra", title="Room A"), Room.objects.create(
        slug="rb", title="Room B"
    )


def stored(slug: str) -> list[tuple[str, str | None]]:
    return list(
        Message.objects.filter(room__slug=slug).order_by("seq").values_list("body", "client_id")
    )


def seqs() -> dict[str, int]:
    return dict(Room.objects.values_list("slug", "seq"))


# --- HTTP ---


def api_post(client: Client, slug: str, body: str, client_id: str) -> Any:
    return client.post(
        f"/api/rooms/{slug}/messages",
        {"body": body, "client_id": client_id},
        content_type="application/json",
    )


@pytest.fixture
def http(alice: Any) -> Client:
    client = Client()
    client.force_login(alice)
    return client


def test_http_the_same_client_id_in_two_rooms_is_two_messages(db: Any, http: Client) -> None:
    two_rooms()
    first = api_post(http, "ra", "meant for ra", "idem-1")
    second = api_post(http, "rb", "meant for rb", "idem-1")
    assert first.status_code == 201, first.content
    assert second.status_code == 201, second.content
    assert (first.json()["room"], first.json()["body"]) == ("ra", "meant for ra")
    assert (second.json()["room"], second.json()["body"]) == ("rb", "meant for rb")
    assert stored("ra") == [("meant for ra", "idem-1")]
    assert stored("rb") == [("meant for rb", "idem-1")]


def test_http_a_retry_in_the_same_room_returns_the_original(db: Any, http: Client) -> None:
    two_rooms()
    first = api_post(http, "ra", "hello", "idem-1")
    retry = api_post(http, "ra", "hello", "idem-1")
    assert first.status_code == 201 and retry.status_code == 200, retry.content
    assert retry.json() == first.json()
    assert stored("ra") == [("hello", "idem-1")] and seqs()["ra"] == 1


def test_http_a_retry_with_another_body_is_a_conflict(db: Any, http: Client) -> None:
    two_rooms()
    assert api_post(http, "ra", "hello", "idem-1").status_code == 201
    before = seqs()
    retry = api_post(http, "ra", "something else", "idem-1")
    assert retry.status_code == 409, retry.content
    assert retry.json()["error"] == "conflict" and retry.json()["detail"]
    assert stored("ra") == [("hello", "idem-1")] and seqs() == before


def test_http_another_author_may_use_the_same_client_id(db: Any, http: Client, bob: Any) -> None:
    two_rooms()
    other = Client()
    other.force_login(bob)
    assert api_post(http, "ra", "from alice", "idem-1").status_code == 201
    assert api_post(other, "ra", "from bob", "idem-1").status_code == 201
    assert stored("ra") == [("from alice", "idem-1"), ("from bob", "idem-1")]


def _race(users: list[Any], posts: list[tuple[str, str, str]]) -> list[Any]:
    """Each (slug, body, client_id) posted by its own thread and client at the same moment."""
    barrier = threading.Barrier(len(posts))
    answers: list[Any] = [None] * len(posts)

    def one(i: int) -> None:
        client = Client()
        client.force_login(users[i % len(users)])
        barrier.wait()
        try:
            answers[i] = api_post(client, *posts[i])
        finally:
            connections.close_all()

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(posts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return answers


def test_threads_racing_one_key_into_one_room_store_exactly_one(
    transactional_db: Any, alice: Any
) -> None:
    two_rooms()
    answers = _race([alice], [("ra", "raced", "race-1")] * 8)
    statuses = sorted(a.status_code for a in answers)
    assert statuses == [200] * 7 + [201], [a.content for a in answers]
    assert len({a.json()["id"] for a in answers}) == 1
    assert stored("ra") == [("raced", "race-1")] and seqs()["ra"] == 1


def test_threads_racing_one_key_into_two_rooms_store_both(
    transactional_db: Any, alice: Any
) -> None:
    two_rooms()
    posts = [("ra", "for ra", "race-1"), ("rb", "for rb", "race-1")] * 4
    answers = _race([alice], posts)
    for (slug, body, _), answer in zip(posts, answers, strict=True):
        assert answer.status_code in (200, 201), answer.content
        assert (answer.json()["room"], answer.json()["body"]) == (slug, body)
    assert stored("ra") == [("for ra", "race-1")]
    assert stored("rb") == [("for rb", "race-1")]


def test_threads_racing_one_key_with_different_bodies_store_one_and_conflict(
    transactional_db: Any, alice: Any
) -> None:
    two_rooms()
    answers = _race([alice], [("ra", f"body {i}", "race-1") for i in range(6)])
    statuses = sorted(a.status_code for a in answers)
    assert statuses == [201] + [409] * 5, [a.content for a in answers]
    [winner] = [a.json() for a in answers if a.status_code == 201]
    assert stored("ra") == [(winner["body"], "race-1")] and seqs()["ra"] == 1


# --- both WebSocket transports ---


async def reply(p: Peer, timeout: float = 5) -> dict[str, Any]:
    """The next ack or error (messages, presence and room state go by)."""
    while True:
        event = json.loads(await asyncio.wait_for(p.ws.recv(), timeout))
        if event["type"] in ("ack", "error"):
            return event


def send(slug: str, body: str, client_id: str) -> dict[str, Any]:
    return {"action": "sendmessage", "room": slug, "body": body, "client_id": client_id}


async def test_ws_the_same_client_id_in_two_rooms_is_two_messages(
    chat_server: Server, alice: Any
) -> None:
    await sync_to_async(two_rooms)()
    a = await peer(chat_server, alice)
    await a.send(send("ra", "meant for ra", "idem-1"))
    first = await reply(a)
    await a.send(send("rb", "meant for rb", "idem-1"))
    second = await reply(a)
    await a.ws.close()
    assert first["type"] == second["type"] == "ack", (first, second)
    assert (first["room"], second["room"]) == ("ra", "rb")
    assert first["id"] != second["id"]
    assert await sync_to_async(stored)("ra") == [("meant for ra", "idem-1")]
    assert await sync_to_async(stored)("rb") == [("meant for rb", "idem-1")]


async def test_ws_a_retry_in_the_same_room_is_acknowledged_as_the_original(
    chat_server: Server, alice: Any
) -> None:
    await sync_to_async(two_rooms)()
    a = await peer(chat_server, alice)
    await a.send(send("ra", "hello", "idem-1"))
    first = await reply(a)
    await a.send(send("ra", "hello", "idem-1"))
    retry = await reply(a)
    await a.ws.close()
    assert first["type"] == "ack" and retry == first
    assert await sync_to_async(stored)("ra") == [("hello", "idem-1")]


async def test_ws_a_retry_with_another_body_is_a_conflict(chat_server: Server, alice: Any) -> None:
    await sync_to_async(two_rooms)()
    a = await peer(chat_server, alice)
    await a.send(send("ra", "hello", "idem-1"))
    assert (await reply(a))["type"] == "ack"
    before = await sync_to_async(seqs)()
    await a.send(send("ra", "something else", "idem-1"))
    refused = await reply(a)
    # The socket stays open and usable.
    await a.send({"action": "ping"})
    assert await a.next("pong") == {"type": "pong"}
    await a.ws.close()
    assert refused["type"] == "error" and refused["code"] == "conflict", refused
    assert refused["client_id"] == "idem-1"
    assert await sync_to_async(stored)("ra") == [("hello", "idem-1")]
    assert await sync_to_async(seqs)() == before


async def test_ws_two_sockets_of_one_user_send_one_client_id_to_two_rooms_at_once(
    chat_server: Server, alice: Any
) -> None:
    await sync_to_async(two_rooms)()
    for attempt in range(5):  # several tries at making the two posts overlap
        a, b = await peer(chat_server, alice), await peer(chat_server, alice)
        client_id = f"both-{attempt}"
        await asyncio.gather(
            a.send(send("ra", f"ra {attempt}", client_id)),
            b.send(send("rb", f"rb {attempt}", client_id)),
        )
        got_a, got_b = await asyncio.gather(reply(a), reply(b))
        await a.ws.close()
        await b.ws.close()
        assert got_a["type"] == got_b["type"] == "ack", (got_a, got_b)
        assert (got_a["room"], got_b["room"]) == ("ra", "rb")
    assert await sync_to_async(stored)("ra") == [(f"ra {i}", f"both-{i}") for i in range(5)]
    assert await sync_to_async(stored)("rb") == [(f"rb {i}", f"both-{i}") for i in range(5)]


# --- the load generator, with a bot's per-room numbering ---


class RoomCheckingClient(ResilientClient):
    """The suite's resilient client, noting every ack that names another room than its own."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.foreign_acks: list[dict[str, Any]] = []

    def _on(self, event: dict[str, Any]) -> None:
        if event["type"] == "ack" and event.get("room") != self.room:
            self.foreign_acks.append(event)
        super()._on(event)


def test_load_with_client_ids_that_repeat_across_rooms_loses_nothing(
    chat_server: Server, request: pytest.FixtureRequest
) -> None:
    """Two bots, each in three rooms, numbering their messages per room (bot-0, bot-1, ... in
    every room), and a listener per room: every acknowledged message is stored in the room it
    was sent to and reaches everyone there."""
    strict = request.node.callspec.params["chat_server"] == "channels"
    slugs = ["r1", "r2", "r3"]
    for slug in slugs:
        Room.objects.create(slug=slug, title=slug)
    bots = users_and_tokens("bot", 2)
    listeners = users_and_tokens("ear", len(slugs))
    clients: dict[str, list[RoomCheckingClient]] = {slug: [] for slug in slugs}
    for slug, (_, token) in zip(slugs, listeners, strict=True):
        clients[slug].append(
            RoomCheckingClient(f"ear-{slug}", token, [chat_server.ws_url], slug, strict)
        )
    senders = []
    for user, token in bots:
        for slug in slugs:
            # One name per bot in every room: the client ids repeat across its rooms.
            sender = RoomCheckingClient(user.username, token, [chat_server.ws_url], slug, strict)
            clients[slug].append(sender)
            senders.append(sender)
    everyone = [c for room in clients.values() for c in room]

    async def scenario() -> int:
        for c in everyone:
            c.start()
        await wait_for_state(everyone, lambda c: c.subscribed.is_set(), 30, "subscribed")
        stop = asyncio.Event()
        sending = asyncio.create_task(traffic(senders, 0.25, stop))
        await asyncio.sleep(3)
        stop.set()
        sent = await sending
        await wait_for_state(senders, lambda c: not c.pending, 30, "every send acknowledged")
        final = await asyncio.to_thread(lambda: dict(Room.objects.values_list("slug", "seq")))
        await wait_for_state(everyone, lambda c: c.cursor >= final[c.room], 30, "every message")
        for c in everyone:
            await c.stop()
        return sent

    sent = asyncio.run(asyncio.wait_for(scenario(), 90))
    assert not [c.foreign_acks[:3] for c in everyone if c.foreign_acks]
    total = 0
    for slug in slugs:
        rows = assert_complete(slug, clients[slug])
        total += len(rows)
        for row in rows:
            # The load generator's body names its client id; the room is where it was sent.
            assert row["body"] == f"{row['client_id']} says hi"
        ids = [r["client_id"] for r in rows]
        assert len(ids) == len(set(ids))
    assert total == sent
    # The ids did repeat across rooms: "bot0-0" was stored once in every room.
    assert all(any(r["client_id"] == "bot0-0" for r in assert_complete(s, [])) for s in slugs)
