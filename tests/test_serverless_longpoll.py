"""Long-polls on Lambda (CHAT_POLL_WAIT=database) woken at once by PostgreSQL's NOTIFY
(chat.fanout.PostgresNotifyBackend), with the one-second re-read as the fallback."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import aiohttp
import pytest
from django.db import connection

from chat import events, fanout, longpoll, writepath
from chat.models import Room
from tests.test_serverless import make_user, session_cookies

pytestmark = [pytest.mark.timeout(60), pytest.mark.django_db(transaction=True)]


def post_later(delay: float, user: Any, room: Room, body: str) -> threading.Thread:
    def run() -> None:
        time.sleep(delay)
        try:
            writepath.post_message(user, room, body, None)
        finally:
            connection.close()

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def wait(room: Room) -> tuple[float, Any]:
    state = events.room_state(room.slug, room.locked, room.title)
    started = time.monotonic()
    stream = longpoll.room_stream(room.pk, state, "nobody")
    answer = asyncio.run(longpoll.wait_database(stream, room.seq, 10))
    return time.monotonic() - started, answer


@pytest.fixture
def backends(settings: Any) -> Any:
    def use(*paths: str) -> None:
        settings.CHAT_FANOUT_BACKENDS = list(paths)
        fanout.backends.cache_clear()

    yield use
    fanout.backends.cache_clear()


def test_a_notify_wakes_the_wait_at_once(backends: Any) -> None:
    backends("chat.fanout.PostgresNotifyBackend")
    alice = make_user("alice")
    room = Room.objects.create(slug="general", title="General")
    poster = post_later(0.3, alice, room, "now")
    took, answer = wait(room)
    poster.join()
    assert [e["body"] for e in answer["events"]] == ["now"]
    assert took < 0.3 + 0.25  # not the next second's re-read


def test_without_a_notify_the_re_read_still_answers(backends: Any) -> None:
    backends()  # nothing publishes: only the fallback can see it
    alice = make_user("alice")
    room = Room.objects.create(slug="general", title="General")
    poster = post_later(0.2, alice, room, "later")
    took, answer = wait(room)
    poster.join()
    assert [e["body"] for e in answer["events"]] == ["later"]
    assert 0.9 < took < 2.5
    # The wait's connection stops listening when it ends.
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pg_listening_channels()")
        assert cursor.fetchone() == (0,)


def test_the_notification_carries_the_event_and_nothing_for_typing_or_presence() -> None:
    backend = fanout.PostgresNotifyBackend()
    room_id = 7
    message = {"type": "message", "room": "r", "seq": 3, "body": "x"}
    with connection.cursor() as cursor:
        cursor.execute("LISTEN chat_room_7")
        backend.publish(room_id, {"type": "typing", "room": "r", "user": "u"}, "{}")
        backend.publish(room_id, {"type": "presence", "room": "r", "users": []}, "{}")
        backend.publish(room_id, message, fanout.encode(message))
        huge = {**message, "seq": 4, "body": "é" * 4000}  # over NOTIFY's 8,000 bytes
        backend.publish(room_id, huge, fanout.encode(huge))
        got = [(n.channel, n.payload) for n in connection.connection.notifies(timeout=1)]
        cursor.execute("UNLISTEN chat_room_7")
    assert got == [("chat_room_7", fanout.encode(message)), ("chat_room_7", "")]


def test_an_event_too_large_to_carry_is_read(backends: Any) -> None:
    backends("chat.fanout.PostgresNotifyBackend")
    alice = make_user("alice")
    room = Room.objects.create(slug="general", title="General")
    poster = post_later(0.3, alice, room, "é" * 3990)
    took, answer = wait(room)
    poster.join()
    assert [e["body"] for e in answer["events"]] == ["é" * 3990]
    assert took < 0.3 + 0.25


def test_on_the_local_gateway_an_http_post_wakes_a_long_poll_at_once(serverless_server) -> None:
    alice, bob = make_user("alice"), make_user("bob")
    Room.objects.create(slug="general", title="General")
    cookies, headers = session_cookies(alice)
    headers["Origin"] = serverless_server.url
    bob_cookies, _ = session_cookies(bob)

    async def run() -> float:
        async with (
            aiohttp.ClientSession(
                cookies=bob_cookies, cookie_jar=aiohttp.CookieJar(unsafe=True)
            ) as b,
            aiohttp.ClientSession(cookies=cookies, cookie_jar=aiohttp.CookieJar(unsafe=True)) as a,
        ):
            url = f"{serverless_server.url}/api/rooms/general/poll?after=0&timeout=10"
            poll = asyncio.ensure_future(b.get(url))
            await asyncio.sleep(1.5)  # parked, past its first re-read
            post = f"{serverless_server.url}/api/rooms/general/messages"
            async with a.post(post, json={"body": "hi", "client_id": "c1"}, headers=headers) as r:
                assert r.status == 201, await r.text()
            posted = time.monotonic()
            async with await poll as answer:
                assert [e["body"] for e in (await answer.json())["events"]] == ["hi"]
            return time.monotonic() - posted

    assert asyncio.run(run()) < 0.3
