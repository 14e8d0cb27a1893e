"""Hostile input to direct messages, blocks, mentions, notification levels, the user's stream and
the unsubscribe link, through the running servers on PostgreSQL: the Channels server (uvicorn) and
the local API Gateway in front of Zappa's handler.

One field at a time of an otherwise valid request gets every value of tests/faults/
test_fuzz_unicode.py's alphabet (NUL, lone surrogates as raw JSON escapes, non-ASCII digits,
zero-width and right-to-left characters, huge numbers and strings, every JSON type, nesting) and
what hypothesis makes of it. Each answer is checked for:

- no 5xx, and every API error JSON `{"error", "detail"}` with a known code;
- a refusal changes no row: rooms (no DM made), memberships (levels, cursors), messages, user
  events, blocks, inboxes;
- a success stored what it said: the DM's members are the names sent, the level is the one sent,
  the message has the body sent, the block names the user sent.

The WebSocket action `resume_user` gets every type of cursor on both transports: an `error` or a
`user_resumed`, never a `server_error`, the socket still open, nothing written.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from http.client import HTTPConnection
from typing import Any
from urllib.parse import quote

import pytest
from asgiref.sync import sync_to_async
from django.contrib.auth import get_user_model
from django.test import Client
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.asyncio.client import connect

from chat import digest, dms, tokens, writepath
from chat.models import Block, Inbox, Membership, Message, Room, UserEvent
from tests.conftest import Gateway, Server
from tests.faults.conftest import REFUSALS
from tests.faults.test_fuzz_unicode import (
    CRITICAL,
    CSRF,
    TRICKY,
    Answer,
    json_values,
    raw_json,
    send_http,
    texts,
)

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(180)]

FUZZ = settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
# Inputs aimed at names and mentions, on top of the shared alphabet.
NAMES: list[Any] = [
    "bob",
    "Bob",
    "b\u043eb",
    "\uff42\uff4f\uff42",
    "bob\u200b",
    "\u202ebob",
    "bob\x00",
    "bob\ud800",
    "ghost",  # deactivated
    "alice",  # oneself
    "room",
    "@bob",
    "b" * 151,
    ["bob"] * 10_000,
    [f"u{i}" for i in range(10_000)],
    ["bob", "bob", "carol"],
    ["bob", ["carol"]],
    ["bob", {"name": "carol"}],
    ["bob", None],
    ["bob", 1],
    [[[[[[[[[["bob"]]]]]]]]]],
]
BODIES: list[Any] = [
    "@bob\x00",
    "@\ud800bob",
    "@bob\u200b",
    "@\u202ebob",
    "@b\u043eb",
    "@room",
    "@room @carol",
    "@bob " * 10_000,
    " ".join(f"@u{i}" for i in range(900)),
    "@" * 4000,
]
NAME_TEXTS = [name for name in NAMES if isinstance(name, str)]
# What each kind of field gets on top of CRITICAL.
FOR_NAMES = CRITICAL + NAMES
FOR_BODIES = CRITICAL + BODIES
FOR_PATHS = [*CRITICAL, *NAME_TEXTS, "%00", "..", "a/b", "\u0661"]
FOR_NUMBERS = [*CRITICAL, "\u0661\u0662", "\uff11", "1\x00", "0" * 19, "0" * 20, "9" * 19]


@dataclass
class World:
    alice: Any
    session: str
    dm: str  # alice and bob
    own: int  # alice's message in it
    unsubscribe: str  # alice's valid link token

    def fill(self, template: str) -> str:
        return template.format(dm=self.dm, own=self.own)


def build_world() -> World:
    model = get_user_model()
    alice = model.objects.create_user("alice", password="pw-alice-123")
    bob = model.objects.create_user("bob", password="pw-bob-123")
    carol = model.objects.create_user("carol", password="pw-carol-123")
    model.objects.create_user("ghost", password="pw-ghost-123", is_active=False)
    Room.objects.create(slug="general", title="General")
    room, _ = dms.open_dm(alice, ["bob"])
    Block.objects.create(blocker=carol, blocked=alice)
    own = writepath.post_message(alice, room, "mine", "own").message
    # alice has an event, so a poll after 0 answers at once (no valid timeout holds the run up).
    writepath.post_message(bob, room, "@alice hi", "bobs")
    Inbox.objects.filter(user=alice).update(email_digests=True)
    browser = Client()
    browser.force_login(alice)
    return World(
        alice=alice,
        session=browser.cookies["sessionid"].value,
        dm=room.slug,
        own=own.pk,
        unsubscribe=digest.make_token(alice.pk),
    )


def snapshot() -> tuple[Any, ...]:
    return (
        list(Room.objects.order_by("pk").values_list("pk", "slug", "kind", "dm_key", "seq")),
        list(
            Membership.objects.order_by("pk").values_list(
                "pk", "room_id", "user_id", "read_seq", "notified_seq", "notify_level"
            )
        ),
        list(
            Message.objects.order_by("pk").values_list(
                "pk", "room_id", "body", "seq", "mentions", "edited", "deleted"
            )
        ),
        list(UserEvent.objects.order_by("pk").values_list("pk", "user_id", "seq", "kind")),
        list(Block.objects.order_by("pk").values_list("pk", "blocker_id", "blocked_id")),
        list(
            Inbox.objects.order_by("pk").values_list(
                "user_id", "seq", "emailed_seq", "email_digests"
            )
        ),
    )


# --- what a success must have stored ---


def stored_dm(world: World, value: Any, answer: Answer) -> None:
    names = {world.alice.username, *value}
    room = Room.objects.get(slug=answer.json()["slug"])
    members = set(Membership.objects.filter(room=room).values_list("user__username", flat=True))
    assert room.kind == Room.DM and members == names, (value, members)


def stored_level(world: World, value: Any, answer: Answer) -> None:
    level = Membership.objects.get(room__slug="general", user=world.alice).notify_level
    assert level == value == answer.json()["level"]


def stored_body(world: World, value: Any, answer: Answer) -> None:
    event = answer.json()
    row = Message.objects.get(pk=event["id"])
    assert row.room.slug == world.dm and row.body == event["body"] == value
    mentioned = set(event["mentions"]) - {"room"}
    assert mentioned <= {"alice", "bob"}, mentioned  # only members of the DM can be mentioned


def stored_block(world: World, value: Any, answer: Answer) -> None:
    assert Block.objects.filter(blocker=world.alice, blocked__username=value).exists()


def stored_unblock(world: World, value: Any, answer: Answer) -> None:
    assert not Block.objects.filter(blocker=world.alice, blocked__username=value).exists()


Check = Callable[[World, Any, Answer], None] | None


@dataclass(frozen=True)
class Case:
    method: str
    path: str
    field: str
    where: str  # "body" (JSON), "query", "path" (the value is the path's last segment)
    base: tuple[tuple[str, Any], ...] = ()
    check: Check = None
    api: bool = True
    wrap: Callable[[Any], Any] | None = None
    values: tuple[Any, ...] = tuple(CRITICAL)


CASES = [
    Case("POST", "/api/dms/", "users", "body", check=stored_dm, values=tuple(FOR_NAMES)),
    Case(
        "POST",
        "/api/dms/",
        "users",
        "body",
        check=stored_dm,
        wrap=lambda v: [v],
        values=tuple(FOR_NAMES),
    ),
    Case(
        "POST",
        "/api/dms/",
        "users",
        "body",
        check=stored_dm,
        wrap=lambda v: ["bob", v],
        values=tuple(FOR_NAMES),
    ),
    Case("POST", "/api/rooms/general/notifications", "level", "body", check=stored_level),
    Case("POST", "/api/rooms/{dm}/notifications", "level", "body"),
    Case(
        "POST",
        "/api/rooms/{dm}/messages",
        "body",
        "body",
        check=stored_body,
        values=tuple(FOR_BODIES),
    ),
    Case(
        "POST",
        "/api/rooms/{dm}/messages",
        "body",
        "body",
        check=stored_body,
        wrap=lambda v: f"@bob{v}" if isinstance(v, str) else v,
        values=tuple(FOR_BODIES),
    ),
    Case("PATCH", "/api/rooms/{dm}/messages/{own}", "body", "body", values=tuple(FOR_BODIES)),
    Case("POST", "/api/rooms/{dm}/read", "seq", "body", values=tuple(FOR_NUMBERS)),
    Case("GET", "/api/users", "q", "query"),
    Case("GET", "/api/users", "limit", "query", base=(("q", "b"),)),
    Case("GET", "/api/me/notifications", "after", "query", values=tuple(FOR_NUMBERS)),
    Case("GET", "/api/me/notifications", "limit", "query"),
    Case(
        "GET", "/api/me/poll", "after", "query", base=(("timeout", "0"),), values=tuple(FOR_NUMBERS)
    ),
    Case(
        "GET", "/api/me/poll", "timeout", "query", base=(("after", "0"),), values=tuple(FOR_NUMBERS)
    ),
    Case("POST", "/api/blocks/", "username", "path", check=stored_block, values=tuple(FOR_PATHS)),
    Case(
        "DELETE", "/api/blocks/", "username", "path", check=stored_unblock, values=tuple(FOR_PATHS)
    ),
    Case("GET", "/email/unsubscribe/", "token", "path", api=False, values=tuple(FOR_PATHS)),
    Case("POST", "/email/unsubscribe/", "token", "path", api=False, values=tuple(FOR_PATHS)),
]


def as_text(value: Any) -> str:
    """A query string or a path carries text: a JSON value goes as an attacker would type it."""
    return value if isinstance(value, str) else json.dumps(value)


def probe(server: Server, world: World, case: Case, value: Any) -> int:
    """Send one request with `value` in the case's field, check it; its status."""
    value = case.wrap(value) if case.wrap else value
    before = snapshot()
    path = world.fill(case.path)
    query: dict[str, str] | None = None
    body: str | None = None
    content_type = "application/json"
    if case.where == "body":
        data = dict(case.base)
        data[case.field] = value
        if case.field == "body" and case.method == "POST":
            data["client_id"] = uuid.uuid4().hex
        body = raw_json(data)
    elif case.where == "query":
        query = {**dict(case.base), case.field: as_text(value)[:500]}
    else:
        segment = as_text(value)
        if len(segment) > 3000:
            segment = segment[:3000]  # past this, the HTTP servers' own line limits answer
        path += quote(segment.encode("utf-8", "surrogatepass"), safe="")
        if case.path.startswith("/email/") and case.method == "POST":
            body, content_type = "List-Unsubscribe=One-Click", "application/x-www-form-urlencoded"
    answer = send_http(
        server, world, case.method, path, query=query, body=body, content_type=content_type
    )
    got = f"{case.method} {case.path} {case.field}={value!r:.80} -> {answer.status} {answer.body[:160]!r}"
    assert answer.status < 500, got
    if answer.status >= 400:
        # An empty segment is another path (Django's 404); one with a control character never
        # gets past the local API Gateway stand-in's router (its own text 404), as with a real
        # gateway, which refuses such paths itself.
        stand_in = isinstance(server, Gateway) and answer.body == b"404: Not Found"
        if case.api and not (case.where == "path" and answer.status == 404 and stand_in):
            assert answer.content_type.startswith("application/json"), got
            data = answer.json()
            assert isinstance(data, dict) and {"error", "detail"} <= set(data), got
            assert data["error"] in REFUSALS, got
        assert snapshot() == before, f"a refused request changed rows: {got}"
    elif case.check is not None and answer.status in (200, 201):
        case.check(world, value, answer)
    if not case.api:
        # No fuzzed token is alice's: her digests stay on whatever the answer.
        assert Inbox.objects.get(user=world.alice).email_digests is True, got
    return answer.status


@pytest.fixture
def world(chat_server: Server) -> World:
    return build_world()


def test_every_field_with_every_hostile_value(chat_server: Server, world: World) -> None:
    """Every case with each value of the shared alphabet and its own (names, bodies, digits)."""
    statuses = [probe(chat_server, world, case, value) for case in CASES for value in case.values]
    # Both kinds of answer came, so both kinds of check ran.
    assert any(s < 300 for s in statuses) and any(s >= 400 for s in statuses)
    for value in (["bob"], ["bob", "alice"], ["alice"], ["bob", "bob\u200b"], ["carol"]):
        probe(chat_server, world, CASES[0], value)
    made = {
        tuple(sorted(Membership.objects.filter(room=room).values_list("user__username", flat=True)))
        for room in Room.objects.filter(kind=Room.DM)
    }
    assert {("alice", "bob"), ("alice",)} <= made
    # carol blocked alice: a group with her goes on, a 1:1 is refused and not made.
    assert ("alice", "carol") not in made


@FUZZ
@given(case=st.sampled_from(CASES), value=json_values)
def test_every_field_with_generated_values(
    chat_server: Server, world: World, case: Case, value: Any
) -> None:
    probe(chat_server, world, case, value)


@FUZZ
@given(name=texts, other=st.sampled_from(["bob", "carol", "alice", "ghost"]))
def test_generated_names_open_only_the_conversations_they_name(
    chat_server: Server, world: World, name: str, other: str
) -> None:
    probe(chat_server, world, CASES[0], [other, name])
    probe(chat_server, world, CASES[-4], f"{other}{name}")  # block


def test_a_post_without_the_csrf_token_is_refused(chat_server: Server, world: World) -> None:
    """A logged-in browser's cross-site POST (the session cookie, no CSRF header) to each new
    endpoint, on the real deployment: 403 JSON and nothing changed."""
    cases = [
        ("POST", "/api/dms/", {"users": ["carol"]}),
        ("POST", "/api/blocks/bob", None),
        ("DELETE", "/api/blocks/bob", None),
        ("POST", "/api/rooms/general/notifications", {"level": "none"}),
        ("POST", f"/api/rooms/{world.dm}/read", {"seq": 2}),
        ("POST", f"/api/rooms/{world.dm}/messages", {"body": "@bob forged"}),
        ("PATCH", f"/api/rooms/{world.dm}/messages/{world.own}", {"body": "@bob forged"}),
    ]
    Block.objects.create(blocker=world.alice, blocked=get_user_model().objects.get(username="bob"))
    for method, path, data in cases:
        before = snapshot()
        for headers in ({}, {"X-CSRFToken": "wrong" + CSRF[5:]}):
            answer = forged(chat_server, world, method, path, data, headers)
            assert answer.status == 403, (method, path, answer.status, answer.body[:200])
            assert answer.json()["error"] == "forbidden"
            assert snapshot() == before, (method, path)
    # The unsubscribe page's button (not the mail client's exact one-click form): refused too.
    url = f"/email/unsubscribe/{world.unsubscribe}"
    answer = forged(chat_server, world, "POST", url, None, {}, "List-Unsubscribe=One-Click&x=1")
    assert answer.status == 403
    assert Inbox.objects.get(user=world.alice).email_digests is True
    answer = forged(chat_server, world, "POST", url, None, {}, "List-Unsubscribe=One-Click")
    assert answer.status == 200
    assert Inbox.objects.get(user=world.alice).email_digests is False


def forged(
    server: Server,
    world: World,
    method: str,
    path: str,
    data: Any,
    headers: dict[str, str],
    form: str | None = None,
) -> Answer:
    conn = HTTPConnection("127.0.0.1", server.port, timeout=30)
    sent = {
        "Host": f"127.0.0.1:{server.port}",
        "Cookie": f"sessionid={world.session}; csrftoken={CSRF}",
        "Origin": "https://evil.example",
        **headers,
    }
    body: str | None = None
    if form is not None:
        body, sent["Content-Type"] = form, "application/x-www-form-urlencoded"
    elif data is not None:
        body, sent["Content-Type"] = json.dumps(data), "application/json"
    try:
        conn.request(method, path, body=body, headers=sent)
        response = conn.getresponse()
        return Answer(response.status, response.getheader("Content-Type") or "", response.read())
    finally:
        conn.close()


# --- resume_user over both WebSocket transports ---


CURSORS: list[Any] = [*CRITICAL, *TRICKY[:30], 0, 1, 2, 3, 2**62, 2**63, "0", "2", [0], {"n": 0}]


async def resume_all(server: Server, user: Any, cursors: list[Any]) -> list[dict[str, Any]]:
    """One `resume_user` per cursor, each answered before the next is sent (the frame rate
    limit allows a burst of this size); the replies' first events."""
    token = await sync_to_async(tokens.make_token)(user)
    replies = []
    async with connect(f"{server.ws_url}?token={token}", open_timeout=10) as ws:
        for cursor in cursors:
            frame = raw_json({"action": "resume_user", "after": cursor})
            await ws.send(frame)
            while True:
                event = json.loads(await asyncio.wait_for(ws.recv(), 10))
                if event["type"] in ("error", "user_resumed"):
                    break
            replies.append(event)
            if event["type"] == "user_resumed" and event["resumed"]:
                for _ in range(event["user_seq"] - int(cursor)):
                    replay = json.loads(await asyncio.wait_for(ws.recv(), 10))
                    assert replay["type"] == "notify", replay
                    assert replay["user_seq"] > int(cursor), replay
        await ws.send(json.dumps({"action": "ping"}))  # still open, still answering
        while json.loads(await asyncio.wait_for(ws.recv(), 10))["type"] != "pong":
            pass
    return replies


def check_resumes(cursors: list[Any], replies: list[dict[str, Any]], seq: int) -> None:
    for cursor, event in zip(cursors, replies, strict=True):
        # A cursor is a JSON integer, or its ASCII digits as a query string carries it.
        number = cursor if type(cursor) is int else None
        if isinstance(cursor, str) and cursor.isascii() and cursor.isdigit() and len(cursor) < 20:
            number = int(cursor)
        valid = number is not None and 0 <= number <= seq
        if valid:
            assert event == {"type": "user_resumed", "user_seq": seq, "resumed": True}, event
        else:
            assert event["type"] == "error" and event["code"] == "bad_request", (cursor, event)


def test_resume_user_with_cursors_of_every_type(chat_server: Server, world: World) -> None:
    before = snapshot()
    seq = Inbox.objects.get(user=world.alice).seq
    for start in range(0, len(CURSORS), 40):
        batch = CURSORS[start : start + 40]
        check_resumes(batch, asyncio.run(resume_all(chat_server, world.alice, batch)), seq)
    assert seq >= 1 and snapshot() == before


@settings(max_examples=4, deadline=None, suppress_health_check=list(HealthCheck))
@given(cursors=st.lists(json_values, min_size=1, max_size=30))
def test_resume_user_with_generated_cursors(
    chat_server: Server, world: World, cursors: list[Any]
) -> None:
    before = snapshot()
    seq = Inbox.objects.get(user=world.alice).seq
    check_resumes(cursors, asyncio.run(resume_all(chat_server, world.alice, cursors)), seq)
    assert snapshot() == before
