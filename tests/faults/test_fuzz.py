"""Priority 6: hypothesis fuzzers for frames on both WebSocket transports and for every JSON
endpoint: never an unhandled exception or a 500, and only valid rows in the database after."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from channels.testing import WebsocketCommunicator
from django.conf import settings as django_settings
from django.contrib.auth import get_user_model
from django.test import Client
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chat import serverless, tokens
from chat.models import Membership, Message, Room, slug_validator
from tests.faults.conftest import REFUSALS
from tests.test_serverless import (  # noqa: F401
    connected,
    frame,
    keep_test_connection,
    posts,
    ws_event,
)

pytestmark = pytest.mark.timeout(120)
FUZZ = settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
ERROR_CODES = REFUSALS

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=12,
)
anything = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False),
    st.text(max_size=30),
    st.sampled_from(["general", "secret", "nowhere", "", " ", "x" * 4001, "0", "-1"]),
    json_values,
)
actions = st.sampled_from(
    [
        "subscribe",
        "unsubscribe",
        "sendmessage",
        "editmessage",
        "deletemessage",
        "read",
        "typing",
        "ping",
        "report",
        "dance",
        "",
    ]
)
structured = st.fixed_dictionaries(
    {"action": actions},
    optional={
        "room": anything | st.sampled_from(["general", "secret"]),
        "body": anything,
        "message": anything,
        "data": anything,
        "client_id": anything | st.text(min_size=60, max_size=70),
        "after": anything,
        "seq": anything,
        "id": anything | st.integers(min_value=1, max_value=5),
        "attachment": anything | st.uuids().map(str),
    },
).map(json.dumps)
# Frames that mostly pass validation, so the write path (posts, edits, deletes) runs too.
plausible = st.fixed_dictionaries(
    {
        "action": st.sampled_from(["sendmessage", "editmessage", "deletemessage", "read"]),
        "room": st.sampled_from(["general", "general", "secret"]),
    },
    optional={
        "body": st.text(min_size=1, max_size=30) | st.just("x" * 4000),
        "client_id": st.text(max_size=64),
        "id": st.integers(min_value=1, max_value=12),
        "seq": st.integers(min_value=-1, max_value=30),
    },
).map(json.dumps)
frames = st.lists(
    st.one_of(
        plausible,
        plausible,
        structured,
        structured,
        json_values.map(json.dumps),
        st.text(max_size=50),
        st.binary(max_size=20),
    ),
    min_size=1,
    max_size=8,
)


def assert_db_valid() -> None:
    rooms = {room.pk: room for room in Room.objects.all()}
    for room in rooms.values():
        slug_validator(room.slug)
        assert 1 <= len(room.title) <= 100 and room.title == room.title.strip()
    for m in Message.objects.all():
        room = rooms[m.room_id]
        if m.deleted:
            assert m.body == ""
        else:
            assert m.body.strip() and len(m.body) <= django_settings.CHAT_MAX_BODY
        assert m.client_id is None or (m.client_id and len(m.client_id) <= 64)
        assert 1 <= m.posted_seq <= m.seq <= room.seq
    for membership in Membership.objects.all():
        assert 0 <= membership.read_seq <= rooms[membership.room_id].seq


def _users_and_rooms() -> tuple[Any, Any]:
    model = get_user_model()
    alice = model.objects.create_user("alice", password="pw-alice-123")
    bob = model.objects.create_user("bob", password="pw-bob-123")
    general = Room.objects.create(slug="general", title="General")
    secret = Room.objects.create(slug="secret", title="Secret", private=True, created_by=bob)
    Membership.objects.create(room=secret, user=bob)
    Message.objects.create(room=general, author=bob, body="bob's", posted_seq=1, seq=1)
    Room.objects.filter(pk=general.pk).update(seq=1)
    return alice, bob


def test_channels_consumer_survives_any_frames(
    transactional_db: Any, settings: Any, loop: asyncio.AbstractEventLoop
) -> None:
    from chatsite.asgi import application

    settings.CHAT_FRAME_BURST = settings.CHAT_FRAME_RATE = 100_000
    alice, _ = _users_and_rooms()
    token = tokens.make_token(alice)

    async def run(sequence: list[str | bytes]) -> list[dict[str, Any]]:
        ws = WebsocketCommunicator(application, f"/ws/?token={token}")
        connected_, _ = await ws.connect(timeout=5)
        assert connected_
        try:
            for item in sequence:
                key = "bytes" if isinstance(item, bytes) else "text"
                await ws.send_input({"type": "websocket.receive", key: item})
            await ws.send_to(text_data='{"action": "ping"}')
            got = []
            while True:
                output = await ws.receive_output(timeout=10)
                assert output["type"] == "websocket.send", output  # not closed
                event = json.loads(output["text"])
                got.append(event)
                if event["type"] == "pong":
                    return got
        finally:
            await ws.disconnect()

    @FUZZ
    @given(frames)
    def check(sequence: list[str | bytes]) -> None:
        got = asyncio.run_coroutine_threadsafe(run(sequence), loop).result(30)
        for event in got:
            if event["type"] == "error":
                assert event["code"] in ERROR_CODES, event

    check()
    assert_db_valid()


def test_lambda_handler_survives_any_frames(db: Any, posts: Any, settings: Any) -> None:  # noqa: F811
    settings.CHAT_FRAME_BURST = settings.CHAT_FRAME_RATE = 100_000
    alice, _ = _users_and_rooms()
    connected(alice, "Fuzz=")

    @FUZZ
    @given(frames)
    def check(sequence: list[str | bytes]) -> None:
        posts.sent.clear()
        for item in sequence:
            if isinstance(item, bytes):
                import base64

                event = ws_event("$default", "Fuzz=", body=base64.b64encode(item).decode())
                event["isBase64Encoded"] = True
            else:
                event = ws_event("$default", "Fuzz=", body=item)
            assert serverless.message(event, None) == {"statusCode": 200}
        for event in posts.to("Fuzz="):
            if event["type"] == "error":
                assert event["code"] in ERROR_CODES, event

    check()
    assert_db_valid()


slugs = st.sampled_from(["general", "secret", "nowhere"]) | st.from_regex(
    r"\A[-a-zA-Z0-9_]{1,60}\Z"
)
ids = st.integers(min_value=0, max_value=10**25).map(str)
paths = st.one_of(
    st.just("/api/rooms/"),
    st.builds("/api/rooms/{}/messages".format, slugs),
    st.builds("/api/rooms/{}/messages/{}".format, slugs, ids | st.just("1")),
    st.builds("/api/rooms/{}/read".format, slugs),
    st.builds("/api/rooms/{}/typing".format, slugs),
    st.builds("/api/rooms/{}/poll".format, slugs),
    st.just("/api/ws-token"),
    st.builds("/api/rooms/{}/messages/{}/report".format, slugs, ids | st.just("1")),
    st.builds(
        "/api/rooms/{}/messages/{}/{}".format,
        slugs,
        ids | st.just("1"),
        st.sampled_from(["hide", "restore", "erase"]),
    ),
    st.builds("/api/rooms/{}/moderate".format, slugs),
    st.just("/api/moderation/restrictions"),
    st.builds("/api/moderation/restrictions/{}".format, ids | st.just("1")),
    st.builds("/api/rooms/{}/attachments".format, slugs),
    st.builds(
        "/api/attachments/{}{}".format,
        st.uuids(),
        st.sampled_from(["", "/thumbnail", "/upload", "/complete"]),
    ),
)
query_values = st.one_of(st.text(max_size=12), st.integers(min_value=-5, max_value=2**70).map(str))
queries = st.dictionaries(
    st.sampled_from(["after", "before", "limit", "timeout"]), query_values, max_size=3
)
bodies = st.one_of(
    json_values.map(json.dumps),
    st.fixed_dictionaries(
        {"body": st.text(min_size=1, max_size=30)},
        optional={"client_id": st.text(max_size=64), "seq": st.integers(-1, 30)},
    ).map(json.dumps),
    st.fixed_dictionaries(
        {},
        optional={
            "body": anything,
            "client_id": anything,
            "seq": anything,
            "slug": anything | slugs,
            "title": anything,
            "private": anything,
            "reason": anything,
            "attachment": anything,
            "name": anything,
            "size": anything,
            "content_type": anything | st.sampled_from(["text/plain", "image/png"]),
            "locked": anything,
            "rate_limit": anything,
            "user": anything,
            "kind": anything | st.sampled_from(["ban", "mute"]),
            "room": anything | slugs,
            "until": anything,
        },
    ).map(json.dumps),
    st.text(max_size=40),
)


def test_json_endpoints_never_500(db: Any) -> None:
    """Every endpoint of chatsite/urls.py under /api/, any method, query and body."""
    from urllib.parse import urlencode

    alice, _ = _users_and_rooms()
    client = Client()
    client.force_login(alice)

    @settings(parent=FUZZ, max_examples=200)
    @given(
        method=st.sampled_from(["get", "post", "patch", "delete", "put"]),
        path=paths,
        query=queries,
        body=bodies,
    )
    def check(method: str, path: str, query: dict[str, str], body: str) -> None:
        if path.endswith("/poll") and query.get("timeout", "").strip().isdigit():
            query["timeout"] = "0"  # a valid timeout would hold the request open
        if path.endswith("/poll"):
            query.setdefault("timeout", "0")
        url = f"{path}?{urlencode(query)}" if query else path
        if method == "get":
            response = client.get(url)
        else:
            response = getattr(client, method)(url, data=body, content_type="application/json")
        assert response.status_code < 500, (method, url, body, response.content[:300])
        if response.status_code != 204:
            data = json.loads(response.content)
            if response.status_code >= 400:
                assert set(data) >= {"error", "detail"}, data

    check()
    assert_db_valid()
