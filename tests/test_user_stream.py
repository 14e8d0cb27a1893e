"""The user's own stream over real sockets: DMs and mentions reach every connection of a user on
both WebSocket transports and the long-poll, on PostgreSQL and Redis, and resume with nothing lost
or repeated."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import pytest
import redis
from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import connection, transaction
from django.test import Client

from chat import dms, fanout, notify, writepath
from chat.models import Room, UserEvent
from tests.conftest import Gateway, Server, both_deployments, one_of
from tests.test_realtime import Peer, peer

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(90)]


async def post(author: Peer, room: str, body: str) -> dict[str, Any]:
    """Post over the author's socket and wait for the ack: stored, notifications included."""
    await author.send({"action": "sendmessage", "room": room, "body": body, "client_id": body})
    return await author.next("ack")


async def notified(p: Peer, timeout: float = 10) -> dict[str, Any]:
    return await p.next("notify", timeout)


@pytest.fixture
def dm(alice: Any, bob: Any) -> Room:
    room, _ = dms.open_dm(alice, ["bob"])
    return room


async def test_a_dm_reaches_every_connection_of_the_recipient(
    chat_server: Server, alice: Any, bob: Any, dm: Room
) -> None:
    a = await peer(chat_server, alice)
    phone, laptop = await peer(chat_server, bob), await peer(chat_server, bob)
    await a.subscribe(dm.slug)
    ack = await post(a, dm.slug, "psst")
    for device in (phone, laptop):
        event = await notified(device)
        assert event["kind"] == "dm" and event["room"] == dm.slug and event["user_seq"] == 1
        assert event["message"]["body"] == "psst" and event["message"]["id"] == ack["id"]
        assert event["unread"] == 1
    await a.nothing_more("notify")  # nobody hears of their own message


async def test_the_user_stream_resumes_after_a_disconnect(
    chat_server: Server, alice: Any, bob: Any, room: Room
) -> None:
    a, b = await peer(chat_server, alice), await peer(chat_server, bob)
    await a.subscribe("general")
    await post(a, "general", "@bob one")
    assert (await notified(b))["user_seq"] == 1
    await b.ws.close()
    await post(a, "general", "@bob two")
    await post(a, "general", "@bob three")
    b = await peer(chat_server, bob)
    await b.send({"action": "resume_user", "after": 1})
    assert await b.next("user_resumed") == {"type": "user_resumed", "user_seq": 3, "resumed": True}
    replay = [await notified(b), await notified(b)]
    assert [e["user_seq"] for e in replay] == [2, 3]
    assert [e["message"]["body"] for e in replay] == ["@bob two", "@bob three"]
    await b.nothing_more("notify")
    # From the start: all of it, in order, once.
    await b.send({"action": "resume_user", "after": 0})
    assert (await b.next("user_resumed"))["user_seq"] == 3
    assert [(await notified(b))["user_seq"] for _ in range(3)] == [1, 2, 3]
    await b.nothing_more("notify")


async def test_resume_user_refuses_bad_cursors_and_keeps_the_connection(
    chat_server: Server, bob: Any
) -> None:
    b = await peer(chat_server, bob)
    for frame in (
        {"action": "resume_user"},
        {"action": "resume_user", "after": -1},
        {"action": "resume_user", "after": "x"},
        {"action": "resume_user", "after": True},
        {"action": "resume_user", "after": 1.5},
        {"action": "resume_user", "after": "١"},
        {"action": "resume_user", "after": 7},  # ahead of the stream
        {"action": "resume_user", "after": None},
    ):
        await b.send(frame)
        error = await b.next("error")
        assert error["code"] == "bad_request", frame
    await b.send({"action": "ping"})
    assert (await b.next("pong")) == {"type": "pong"}


# Servers of their own with a resume limit of 2: the limit is read when a process starts.
LIMITED = {"CHAT_RESUME_LIMIT": "2"}


@pytest.fixture(scope="module")
def limited_servers(django_db_setup: Any, django_db_blocker: Any) -> Iterator[dict[str, Server]]:
    with django_db_blocker.unblock(), both_deployments(LIMITED) as started:
        yield started


@pytest.fixture(params=["channels", "serverless"])
def limited_server(
    request: pytest.FixtureRequest, limited_servers: dict[str, Server], transactional_db: Any
) -> Iterator[Server]:
    yield from one_of(limited_servers, request.param)


async def test_resume_user_too_far_behind_says_resync(
    limited_server: Server, alice: Any, bob: Any, room: Room
) -> None:
    def mention_bob() -> None:
        for i in range(3):
            writepath.post_message(alice, room, f"@bob {i}")

    await sync_to_async(mention_bob)()
    b = await peer(limited_server, bob)
    # Three events behind, past the limit of two: no replay, start again from the rooms list.
    await b.send({"action": "resume_user", "after": 0})
    assert await b.next("user_resumed") == {
        "type": "user_resumed",
        "user_seq": 3,
        "resumed": False,
        "reason": "resync",
    }
    # Two behind, at the limit: replayed. (Had the resync replayed anything, its first event, 1,
    # would come first here.)
    await b.send({"action": "resume_user", "after": 1})
    assert await b.next("user_resumed") == {"type": "user_resumed", "user_seq": 3, "resumed": True}
    replay = [await notified(b), await notified(b)]
    assert [e["user_seq"] for e in replay] == [2, 3]
    assert [e["message"]["body"] for e in replay] == ["@bob 1", "@bob 2"]


async def test_reading_on_one_device_clears_the_badge_on_the_others(
    chat_server: Server, alice: Any, bob: Any, dm: Room
) -> None:
    a = await peer(chat_server, alice)
    phone, laptop = await peer(chat_server, bob), await peer(chat_server, bob)
    await a.subscribe(dm.slug)
    ack = await post(a, dm.slug, "hello")
    assert (await notified(phone))["kind"] == (await notified(laptop))["kind"] == "dm"
    await phone.send({"action": "read", "room": dm.slug, "seq": ack["seq"]})
    cleared = await notified(laptop)
    assert cleared["kind"] == "unread" and cleared["room"] == dm.slug
    assert cleared["unread"] == 0 and cleared["mentions"] == 0 and cleared["user_seq"] == 2


async def test_a_lost_event_of_the_stream_is_filled_from_the_database(
    server: Server, alice: Any, bob: Any, room: Room
) -> None:
    b = await peer(server, bob)
    a = await peer(server, alice)
    await a.subscribe("general")
    await b.send({"action": "ping"})
    await b.next("pong")  # connected, its stream cursor read

    def stored_unpublished() -> None:
        # An event whose live push was lost (the channel layer is at most once).
        with transaction.atomic():
            seqs = notify._take_seqs([bob.pk])
            UserEvent.objects.create(user=bob, seq=seqs[bob.pk], kind="unread", room=room)

    await sync_to_async(stored_unpublished)()
    await post(a, "general", "@bob after the gap")
    first, second = await notified(b), await notified(b)
    assert (first["user_seq"], first["kind"]) == (1, "unread")
    assert (second["user_seq"], second["kind"]) == (2, "mention")
    await b.nothing_more("notify")


@pytest.fixture
def second_server(live_server_proc: Server, transactional_db: Any) -> Iterator[Server]:
    other = Server().start()
    yield other
    other.stop()


async def test_two_processes_share_the_stream(
    server: Server, second_server: Server, alice: Any, bob: Any, room: Room
) -> None:
    a = await peer(server, alice)
    b = await peer(second_server, bob)
    await a.subscribe("general")
    await post(a, "general", "@bob across processes")
    event = await notified(b)
    assert event["kind"] == "mention" and event["message"]["body"] == "@bob across processes"


# --- long-poll: GET /api/me/poll ---


def cookies_of(user: Any) -> dict[str, str]:
    client = Client()
    client.force_login(user)
    return {"sessionid": client.cookies["sessionid"].value}


@pytest.fixture
async def bob_http(chat_server: Server, bob: Any) -> AsyncIterator[aiohttp.ClientSession]:
    cookies = await sync_to_async(cookies_of)(bob)
    async with aiohttp.ClientSession(
        chat_server.url, cookies=cookies, cookie_jar=aiohttp.CookieJar(unsafe=True)
    ) as session:
        yield session


def parked(chat_server: Server, bob: Any) -> bool:
    """Whether bob's long-poll waits: on Lambda's database wait, a session that has LISTENed and
    then read his stream's position (its last statement, while it waits for a NOTIFY); on the hub,
    the server's subscription to his stream on Redis."""
    if isinstance(chat_server, Gateway):
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                " AND state = 'idle' AND query LIKE %s",
                [f'SELECT %FROM "chat_inbox" WHERE "chat_inbox"."user_id" = {bob.pk} %'],
            )
            return cursor.fetchone()[0] > 0
    client = redis.Redis.from_url(settings.REDIS_URL)
    channel = f"{settings.CHAT_REDIS_PREFIX}__group__{fanout.user_group(bob.pk)}"
    return client.pubsub_numsub(channel)[0][1] > 0


async def waiting(chat_server: Server, bob: Any) -> None:
    deadline = time.monotonic() + 10
    while not await sync_to_async(parked, thread_sensitive=False)(chat_server, bob):
        assert time.monotonic() < deadline, "the long-poll never parked"
        await asyncio.sleep(0.02)


async def test_the_user_long_poll_is_woken_by_a_mention(
    chat_server: Server, bob_http: aiohttp.ClientSession, alice: Any, bob: Any, room: Room
) -> None:
    poll = asyncio.ensure_future(bob_http.get("/api/me/poll?after=0&timeout=20"))
    a = await peer(chat_server, alice)
    await a.subscribe("general")
    await waiting(chat_server, bob)
    await post(a, "general", "@bob wake up")
    posted = time.monotonic()
    async with await asyncio.wait_for(poll, 15) as response:
        data = await response.json()
    assert response.status == 200
    assert data["user_seq"] == 1 and [e["kind"] for e in data["events"]] == ["mention"]
    assert data["events"][0]["message"]["body"] == "@bob wake up"
    assert time.monotonic() - posted < 5
    # Behind: answered at once; at the head: empty after the timeout.
    async with bob_http.get("/api/me/poll?after=0&timeout=10") as response:
        assert [e["user_seq"] for e in (await response.json())["events"]] == [1]
    async with bob_http.get("/api/me/poll?after=1&timeout=1") as response:
        assert await response.json() == {"events": [], "user_seq": 1}


async def test_the_user_long_poll_refuses_bad_input(
    chat_server: Server, bob_http: aiohttp.ClientSession
) -> None:
    for query in ("", "?after=x", "?after=-1", "?after=5", "?after=0&timeout=nan", "?after=%00"):
        async with bob_http.get(f"/api/me/poll{query}") as response:
            body = await response.json()
            assert response.status == 400 and body["error"] == "bad_request", query
    async with bob_http.post("/api/me/poll?after=0") as response:
        assert response.status in (403, 405)  # CSRF first on Django's view, 405 on the consumer
    async with aiohttp.ClientSession(chat_server.url) as anonymous:
        async with anonymous.get("/api/me/poll?after=0") as response:
            assert response.status == 401 and (await response.json())["error"] == "unauthorized"
