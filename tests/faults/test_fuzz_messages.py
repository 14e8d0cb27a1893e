# ruff: noqa: F811 (the shared servers' fixtures are imported by name and taken as arguments)
"""Hostile input to replies, reactions and formatting, through the running servers on PostgreSQL:
the Channels server (uvicorn) and the local API Gateway in front of Zappa's handler, over the
WebSocket actions and the JSON API.

One field at a time of an otherwise valid request (`reply_to` on posts; `emoji`, `id`, `room`,
`client_id` and `on` on reactions) gets the shared alphabet of tests/faults/test_fuzz_unicode.py
(NUL, lone surrogates as raw JSON escapes, non-ASCII digits, every JSON type, huge numbers and
strings), the ids of messages the fuzzer may not touch (another room's, a private room's, a DM's
it is not in, a deleted and a hidden one), and every kind of emoji sequence. Each answer is
checked against what was stored:

- never a 5xx or a `server_error`, and every refusal a known code;
- a refusal changes no row: no message, no reaction, no reaction key, no change to a message's
  `reactions`, `html` or `seq`, the rooms' `seq` unchanged;
- a success stored exactly what the oracle says it should: the reply names the parent sent, the
  reaction is the emoji sent (or its variation-selector form) and it flipped, the room took one
  `seq`.

Markdown bodies with hostile structure are answered in bounded time, and their stored `html`
fits, with the body, in one event a serverless client can be sent.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from dataclasses import dataclass
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.test import Client
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.asyncio.client import connect

from chat import apigateway, cleaning, dms, emoji, formatting, moderation, tokens, writepath
from chat.errors import ChatError
from chat.fanout import encode
from chat.models import Block, Message, Reaction, ReactionKey, Room
from tests.conftest import Server
from tests.faults.conftest import REFUSALS
from tests.faults.test_fuzz_unicode import (  # noqa: F401 (fixtures)
    CRITICAL,
    TRICKY,
    Answer,
    Socket,
    fuzz_servers,
    json_values,
    raw_json,
    send_http,
    target,
)

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(120)]

FUZZ = settings(
    max_examples=5,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
# A frame over 32 KB is closed by API Gateway itself (tests/test_limits.py covers sizes): longer
# values go over HTTP only.
FRAME_LIMIT = 32 * 1024

EMOJI: list[Any] = [
    "👍",
    "❤",  # without its variation selector: the same reaction as "❤️"
    "❤️",
    "❤️\ufe0f",
    "❤\ufe0e",  # the text presentation selector
    "\ufe0f",
    "👍\ufe0f",
    "👍🏽",  # a skin-tone modifier
    "🏽",
    "👨\u200d👩\u200d👧",  # a ZWJ sequence
    "👍\u200d",
    "\u200d",
    "🇺🇸",  # a flag
    "🇺",
    "1️⃣",  # a keycap
    "#\ufe0f\u20e3",
    "\u200f👍",  # right-to-left marks
    "👍\u200f",
    "\u202e👍",
    "👍\u0301",  # a combining mark
    "e\u0301",
    "\u0301" * 50,
    "👍x",
    "x👍",
    "👍 ",
    " 👍",
    "👍\n",
    "👍\x00",
    "\x00👍",
    "👍👍",
    "👍❤️",
    "\ud83d",  # half of 👍's surrogate pair, alone
    "\udc4d",
    "\ud83d\udc4d\ud83d",
    "☺",
    "✌",
    "✌\ufe0f",
    "Ｘ",
    "<b>",
    "&#128077;",
    ":+1:",
    "+1",
    "x" * 10_000,
    "👍" * 10_000,
    "\x00" * 10_000,
    ["👍"],
    {"emoji": "👍"},
    128077,
    1.5,
    True,
    None,
]
FOR_EMOJI = CRITICAL + EMOJI
# Numbers sent where an id goes, besides the shared alphabet; the world's ids are added per test.
FOR_IDS: list[Any] = [
    *CRITICAL,
    0,
    -1,
    2**31,
    2**63 - 1,
    2**63,
    2**64,
    10**30,
    -(10**30),
    "0",
    "-1",
    "\u0661",
    "\u0661\u0662",
    "\uff11",
    "\u00b9",
    "1\x00",
    "0" * 19,
    "9" * 19,
    "9" * 5000,
    [1],
    {"id": 1},
]
FOR_ROOMS: list[Any] = [
    *CRITICAL,
    *TRICKY[:12],
    "general",
    "General",
    "general\x00",
    "general ",
    "ｇeneral",
    "other",
    "secret",
    "nowhere",
    "../general",
    "a" * 10_000,
]
FOR_CLIENT_IDS: list[Any] = [
    *CRITICAL,
    *TRICKY[:8],
    *TRICKY[-26:-20],
    "ok",
    "é" * 64,
    "é" * 65,
    "x\u200b",
]
FOR_ON: list[Any] = [*CRITICAL, "true", "false", 0, 1, "on", [True], {"on": True}]


@dataclass
class World:
    fuzzer: Any
    session: str
    token: str
    target: int  # bob's message in general: what valid requests react or reply to
    spare: int  # the fuzzer's own message in general, also valid
    elsewhere: dict[str, int]  # ids the fuzzer may not react or reply to, by why
    blocked: str  # the 1:1 where carol blocked the fuzzer

    def ids(self) -> list[Any]:
        return [
            *FOR_IDS,
            *self.elsewhere.values(),
            self.target,
            str(self.target),
            f"{self.target}\x00",
            f" {self.target}",
            f"{self.target}.0",
            float(self.target),
            "\u0661" * len(str(self.target)),
            [self.target],
            {"id": self.target},
            self.spare,
        ]


def build_world() -> World:
    model = get_user_model()
    fuzzer = model.objects.create_user("fuzzer", password="pw-fuzz-123")
    bob = model.objects.create_user("bob", password="pw-bob-123")
    carol = model.objects.create_user("carol", password="pw-carol-123")
    mod = model.objects.create_user("mod", password="pw-mod-123")
    general = Room.objects.create(slug="general", title="General")
    other = Room.objects.create(slug="other", title="Other")
    secret = Room.objects.create(slug="secret", title="Secret", private=True, created_by=bob)
    secret.memberships.create(user=bob)
    general.moderators.add(mod)
    dm, _ = dms.open_dm(bob, ["carol"])
    # The fuzzer is in a 1:1 with carol, who blocked them: it may read it and react nowhere.
    blocked, _ = dms.open_dm(carol, ["fuzzer"])
    target = writepath.post_message(bob, general, "target").message
    spare = writepath.post_message(fuzzer, general, "spare").message
    deleted = writepath.post_message(bob, general, "deleted").message
    writepath.delete_message(bob, general, deleted.pk)
    hidden = writepath.post_message(bob, general, "hidden").message
    moderation.hide_message(mod, general, hidden.pk)
    blocked_message = writepath.post_message(carol, blocked, "hi").message
    Block.objects.create(blocker=carol, blocked=fuzzer)
    elsewhere = {
        "other": writepath.post_message(bob, other, "other").message.pk,
        "secret": writepath.post_message(bob, secret, "secret").message.pk,
        "dm": writepath.post_message(carol, dm, "dm").message.pk,
        "blocked": blocked_message.pk,
        "deleted": deleted.pk,
        "hidden": hidden.pk,
        "unknown": max(Message.objects.values_list("pk", flat=True)) + 1000,
    }
    browser = Client()
    browser.force_login(fuzzer)
    return World(
        fuzzer=fuzzer,
        session=browser.cookies["sessionid"].value,
        token=tokens.make_token(fuzzer),
        target=target.pk,
        spare=spare.pk,
        elsewhere=elsewhere,
        blocked=blocked.slug,
    )


@pytest.fixture
def world(target: Server) -> World:
    return build_world()


@pytest.fixture
def sock(target: Server, world: World, loop: asyncio.AbstractEventLoop) -> Any:
    socket = Socket(loop, f"{target.ws_url}?token={world.token}")
    yield socket
    socket.close()


def snapshot() -> tuple[Any, ...]:
    """Every row a reply or a reaction could touch."""
    return (
        list(
            Message.objects.order_by("pk").values_list(
                "pk", "room_id", "body", "seq", "reactions", "html", "reply_to_id", "deleted"
            )
        ),
        list(Room.objects.order_by("pk").values_list("pk", "seq")),
        list(Reaction.objects.order_by("pk").values_list("pk", "message_id", "user_id", "emoji")),
        list(ReactionKey.objects.order_by("pk").values_list("message_id", "emoji", "client_id")),
    )


def reactions_of(world: World) -> set[tuple[int, str]]:
    return set(Reaction.objects.filter(user=world.fuzzer).values_list("message_id", "emoji"))


# --- what the server should have done, decided without it ---


def expected_emoji(value: Any) -> str | None:
    try:
        return emoji.clean_emoji(value)
    except ChatError:
        return None


def expected_id(world: World, value: Any) -> int | None:
    """The message a valid `id` or `reply_to` names: one of general's two live messages."""
    try:
        pk = cleaning.clean_id(value)
    except ChatError:
        return None
    return pk if pk in (world.target, world.spare) else None


def valid_client_id(value: Any) -> bool:
    try:
        cleaning.clean_client_id(value)
    except ChatError:
        return False
    return True


# --- one request, checked ---


@dataclass
class Reply:
    """What a request got: success or the error code, and the answer's message event."""

    ok: bool
    code: str
    event: dict[str, Any] | None


async def answer_of(sock: Socket) -> list[dict[str, Any]]:
    assert sock.ws is not None
    got: list[dict[str, Any]] = []
    while not any(e["type"] in ("ack", "error") for e in got):
        got.append(json.loads(await asyncio.wait_for(sock.ws.recv(), 10)))
    return got


def over_socket(sock: Socket, frame: dict[str, Any], what: str) -> Reply | None:
    text = raw_json(frame)
    if len(text.encode()) >= FRAME_LIMIT:
        return None
    events, closed = sock.exchange(text)
    assert not closed, f"{what} -> {closed}"
    if frame.get("client_id") not in (None, "") and not any(
        e["type"] in ("ack", "error") for e in events
    ):
        # Lambda runs frames concurrently: the answer may come after the probe's pong.
        events += sock.run(answer_of(sock))
    errors = [e for e in events if e["type"] == "error"]
    for error in errors:
        assert error["code"] in REFUSALS, f"{what} -> {error}"
    if errors:
        return Reply(False, errors[0]["code"], None)
    acks = [e for e in events if e["type"] == "ack"]
    assert acks or frame.get("client_id") in (None, ""), f"{what} -> no answer: {events}"
    return Reply(True, "", acks[0] if acks else None)


def over_http(target: Server, world: World, path: str, data: dict[str, Any], what: str) -> Reply:
    started = time.monotonic()
    answer: Answer = send_http(target, world, "POST", path, body=raw_json(data))
    assert time.monotonic() - started < 10, f"{what}: answered in more than 10 s"
    got = f"{what} -> HTTP {answer.status} {answer.body[:160]!r}"
    assert answer.status < 500, got
    assert answer.content_type.startswith("application/json"), got
    body = answer.json()
    if answer.status >= 400:
        assert {"error", "detail"} <= set(body) and body["error"] in REFUSALS, got
        return Reply(False, body["error"], None)
    return Reply(True, "", body)


def check_refusal_or_change(
    world: World,
    reply: Reply | None,
    before: tuple[Any, ...],
    mine_before: set[tuple[int, str]],
    expect: tuple[int, str] | None,
    what: str,
) -> None:
    """For a reaction: a refusal changed nothing; a success flipped exactly `expect` and the
    room took exactly one seq, which the message now carries."""
    if reply is None:
        return
    if not reply.ok:
        assert snapshot() == before, f"a refused request changed rows: {what} -> {reply.code}"
        return
    assert expect is not None, f"accepted what should be refused: {what}"
    assert reactions_of(world) == mine_before ^ {expect}, what
    message = Message.objects.select_related("room").get(pk=expect[0])
    assert message.room.seq == dict(before[1])[message.room_id] + 1, what
    assert message.seq == message.room.seq, what
    summary = {entry["emoji"]: entry["count"] for entry in message.reactions}
    rows = Reaction.objects.filter(message=message)
    assert summary == {g: rows.filter(emoji=g).count() for g in summary}, what
    assert sum(summary.values()) == rows.count(), what
    if reply.event is not None and "reactions" in reply.event:
        assert reply.event["reactions"] == message.reactions, what


def check_reply(
    world: World,
    reply: Reply | None,
    before: tuple[Any, ...],
    parent: int | None,
    client_id: str,
    what: str,
) -> None:
    """A refusal stored nothing; a success stored one message in general, answering `parent`
    (None: the request named no parent, and is no reply)."""
    allowed = parent is not None or value_was_none(what)
    if reply is None:
        return
    if not reply.ok:
        assert snapshot() == before, f"a refused reply changed rows: {what} -> {reply.code}"
        assert not Message.objects.filter(client_id=client_id).exists(), what
        return
    assert allowed, f"accepted a reply to what it may not name: {what}"
    row = Message.objects.select_related("room").get(client_id=client_id)
    assert (row.room.slug, row.reply_to_id, row.seq) == ("general", parent, row.room.seq), what
    assert row.room.seq == dict(before[1])[row.room_id] + 1, what


# --- reactions ---


def value_was_none(what: str) -> bool:
    return what.endswith("reply_to=None")


def react_frame(world: World, **fields: Any) -> dict[str, Any]:
    frame = {
        "action": "react",
        "room": "general",
        "id": world.target,
        "emoji": "👍",
        "client_id": uuid.uuid4().hex,
    }
    frame.update(fields)
    return frame


def probe_react(sock: Socket, world: World, field: str, value: Any) -> Reply | None:
    frame = react_frame(world, **{field: value})
    what = f"react {field}={value!r:.80}"
    before, mine = snapshot(), reactions_of(world)
    reply = over_socket(sock, frame, what)
    valid = {
        "emoji": expected_emoji(value) is not None,
        "id": expected_id(world, value) is not None,
        "room": value == "general",
        "client_id": valid_client_id(value),
        "on": value is None,  # `on` true or false is checked by test_explicit_state_*
    }[field]
    expect = None
    if valid:
        pk = expected_id(world, frame["id"])
        glyph = expected_emoji(frame["emoji"])
        assert pk is not None and glyph is not None
        expect = (pk, glyph)
    if field == "on" and isinstance(value, bool):
        expect = (world.target, "👍") if value != ((world.target, "👍") in mine) else None
        if expect is None:
            # Already in that state: accepted, and nothing changes at all.
            assert reply is not None and reply.ok and snapshot() == before, what
            return reply
    check_refusal_or_change(world, reply, before, mine, expect, what)
    return reply


@pytest.mark.parametrize("field", ["emoji", "id", "room", "client_id", "on"])
def test_react_frames_with_every_hostile_value(sock: Socket, world: World, field: str) -> None:
    values = {
        "emoji": FOR_EMOJI,
        "id": world.ids(),
        "room": FOR_ROOMS,
        "client_id": FOR_CLIENT_IDS,
        "on": FOR_ON,
    }[field]
    replies = [probe_react(sock, world, field, value) for value in values]
    # Both kinds of answer came, so both kinds of check ran.
    assert any(r is not None and r.ok for r in replies), field
    assert any(r is not None and not r.ok for r in replies), field


def test_the_reactions_endpoint_with_every_hostile_value(target: Server, world: World) -> None:
    path = f"/api/rooms/general/messages/{world.target}/reactions"
    cases = [("emoji", v) for v in FOR_EMOJI] + [("on", v) for v in FOR_ON]
    cases += [("client_id", v) for v in FOR_CLIENT_IDS[:12]]
    seen = set()
    for field, value in cases:
        data = {"emoji": "🎉", **{field: value}}
        before, mine = snapshot(), reactions_of(world)
        what = f"POST reactions {field}={value!r:.80}"
        reply = over_http(target, world, path, data, what)
        seen.add(reply.ok)
        if field == "on" and isinstance(value, bool):
            want = value != ((world.target, "🎉") in mine)
            if not want:
                assert reply.ok and snapshot() == before, what
                continue
        valid = {
            "emoji": expected_emoji(value) is not None,
            "on": value is None or isinstance(value, bool),
            "client_id": valid_client_id(value),
        }[field]
        glyph = expected_emoji(data["emoji"])
        expect = (world.target, glyph) if valid and glyph else None
        check_refusal_or_change(world, reply, before, mine, expect, what)
    assert seen == {True, False}


@pytest.mark.parametrize(
    "segment", ["0", "-1", "00", "9" * 19, "9" * 30, "%D9%A1", "1.0", "%00", "1%00", "+1"]
)
def test_the_reactions_endpoint_with_hostile_ids_in_the_path(
    target: Server, world: World, segment: str
) -> None:
    before = snapshot()
    path = f"/api/rooms/general/messages/{segment}/reactions"
    reply = over_http(target, world, path, {"emoji": "👍"}, path)
    assert not reply.ok and reply.code in ("bad_request", "not_found"), path
    assert snapshot() == before


def test_the_reactions_endpoint_refuses_ids_the_fuzzer_may_not_touch(
    target: Server, world: World
) -> None:
    for why, pk in world.elsewhere.items():
        for slug in ("general", "other", "secret", "nowhere", world.blocked):
            before = snapshot()
            what = f"{why} {pk} in {slug}"
            path = f"/api/rooms/{slug}/messages/{pk}/reactions"
            reply = over_http(target, world, path, {"emoji": "👍"}, what)
            if slug == "other" and why == "other":
                assert reply.ok, what  # a public room's message: anyone may react
                continue
            assert not reply.ok and snapshot() == before, what
            if slug in ("secret", "nowhere"):
                # An outsider learns nothing about a private room: the answer of no room at all.
                assert reply.code == "not_found", what
            elif slug == world.blocked:
                # As posting there is (the right to post is checked first): carol blocked them.
                assert reply.code == "forbidden", what
            elif why in ("deleted", "hidden") and slug == "general":
                assert reply.code == "forbidden", what
            else:
                # Another room's message, wherever it is: no such message here.
                assert reply.code == "not_found", what


@FUZZ
@given(field=st.sampled_from(["emoji", "id", "room", "client_id", "on"]), value=json_values)
def test_react_frames_with_generated_values(
    sock: Socket, world: World, field: str, value: Any
) -> None:
    probe_react(sock, world, field, value)


@FUZZ
@given(
    base=st.sampled_from(emoji.REACTIONS),
    extra=st.text(st.characters(exclude_categories=()), min_size=1, max_size=3),
    before=st.booleans(),
)
def test_an_allowed_emoji_with_anything_more_is_refused(
    sock: Socket, world: World, base: str, extra: str, before: bool
) -> None:
    value = extra + base if before else base + extra
    reply = probe_react(sock, world, "emoji", value)
    assert reply is not None
    # Only the variation selector completing a bare emoji is the same reaction.
    assert reply.ok == (expected_emoji(value) is not None), value


# --- replies ---


def test_reply_to_with_every_hostile_value(target: Server, sock: Socket, world: World) -> None:
    seen = set()
    for value in world.ids():
        parent = expected_id(world, value)
        for transport in ("socket", "http"):
            client_id = uuid.uuid4().hex
            data = {"body": "a reply", "client_id": client_id, "reply_to": value}
            what = f"{transport} reply_to={value!r:.80}"
            before = snapshot()
            if transport == "socket":
                frame = {"action": "sendmessage", "room": "general", **data}
                reply = over_socket(sock, frame, what)
            else:
                reply = over_http(target, world, "/api/rooms/general/messages", data, what)
                if reply.ok:
                    assert reply.event is not None
                    assert (reply.event["reply_to"] or {}).get("id") == parent, what
            if reply is not None:
                seen.add(reply.ok)
            check_reply(world, reply, before, parent, client_id, what)
    assert seen == {True, False}


def test_a_reply_never_names_a_message_elsewhere(target: Server, world: World) -> None:
    """From each room the fuzzer may post in, each id it may not name: one refusal, the same
    whatever the id's room, so no id of a private room or a DM is confirmed."""
    details = set()
    for why, pk in world.elsewhere.items():
        for slug in ("general", "other"):
            client_id = uuid.uuid4().hex
            before = snapshot()
            data = {"body": "x", "client_id": client_id, "reply_to": pk}
            path = f"/api/rooms/{slug}/messages"
            reply = over_http(target, world, path, data, f"{why} from {slug}")
            if why == "other" and slug == "other":
                assert reply.ok
                continue
            assert not reply.ok and reply.code == "bad_request", (why, slug)
            assert snapshot() == before
            if why not in ("deleted", "hidden"):
                details.add(reply.code)
    assert details == {"bad_request"}


@FUZZ
@given(value=json_values)
def test_reply_to_with_generated_values(sock: Socket, world: World, value: Any) -> None:
    client_id = uuid.uuid4().hex
    frame = {"action": "sendmessage", "room": "general", "body": "r", "client_id": client_id}
    before = snapshot()
    what = f"reply_to={value!r:.80}"
    reply = over_socket(sock, {**frame, "reply_to": value}, what)
    check_reply(world, reply, before, expected_id(world, value), client_id, what)


# --- formatting ---

LIMIT = 4000  # CHAT_MAX_BODY
HOSTILE_BODIES: list[str] = [
    ">" * 10_000,
    ">" * LIMIT,
    "> " * (LIMIT // 2),
    "> - " * (LIMIT // 4),
    "- " * (LIMIT // 2),
    "".join("  " * i + "- a\n" for i in range(60)),
    "1. " * (LIMIT // 3),
    "`" * 100_000,
    "`" * LIMIT,
    "`a` " * (LIMIT // 4),
    "".join("`" * i + "a" for i in range(1, 88)),
    "a.co " * (LIMIT // 5),
    "[a](http://a.co) " * (LIMIT // 17),
    "http://a.b/ " * (LIMIT // 12),
    "<http://a.b> " * (LIMIT // 13),
    "<mailto:a@b.c> " * (LIMIT // 15),
    "@bob " * (LIMIT // 5),
    "[" * LIMIT,
    "[a](" * (LIMIT // 4),
    "*a" * (LIMIT // 2),
    "~~a" * (LIMIT // 3),
    "&" * LIMIT,
    "<" * LIMIT,
    "```\n" * (LIMIT // 4),
    "😀" * LIMIT,
    "a\n" * (LIMIT // 2),
    "[x](javascript:alert(1)) " * 100,
    "a.co " * 100_000,
]


def check_formatted(world: World, body: str, reply: Reply, before: tuple[Any, ...]) -> None:
    what = f"body {body[:30]!r}… ({len(body)} characters)"
    if len(body) > LIMIT:
        assert not reply.ok and reply.code == "too_large", what
        assert snapshot() == before, what
        return
    assert reply.ok and reply.event is not None, what
    row = Message.objects.with_author().get(pk=reply.event["id"])
    assert row.body == body and row.html == reply.event["html"], what
    # The markup is bounded, or is the text itself; either way it fits beside the body in one
    # event a serverless client can be sent.
    size = len(row.html.encode())
    assert size <= max(formatting.MAX_HTML, len(formatting.plain(body).encode())), what
    assert len(encode(row.to_event()).encode()) <= apigateway.MAX_POST, (what, size)
    assert 'href="javascript' not in row.html, what


def test_hostile_markdown_is_answered_in_bounded_time_and_bounded_html(
    target: Server, world: World
) -> None:
    for body in HOSTILE_BODIES:
        before = snapshot()
        data = {"body": body, "client_id": uuid.uuid4().hex}
        reply = over_http(target, world, "/api/rooms/general/messages", data, body[:40])
        check_formatted(world, body, reply, before)


def test_a_message_with_much_markup_reaches_a_live_client(target: Server, world: World) -> None:
    """The serverless path drops an event over API Gateway's post limit: before html was
    bounded, a list of 800 bare domains was stored and never delivered, live or on resume."""
    body = "a.co " * (LIMIT // 5)

    async def run() -> dict[str, Any]:
        async with connect(f"{target.ws_url}?token={world.token}", open_timeout=10) as ws:
            await ws.send(json.dumps({"action": "subscribe", "room": "general"}))
            while json.loads(await asyncio.wait_for(ws.recv(), 10))["type"] != "subscribed":
                pass
            frame = {"action": "sendmessage", "room": "general", "body": body, "client_id": "m"}
            await ws.send(json.dumps(frame))
            while True:
                event = json.loads(await asyncio.wait_for(ws.recv(), 10))
                if event["type"] == "message" and event["client_id"] == "m":
                    return event

    event = asyncio.run(run())
    assert event["body"] == body and event["html"].count("<a ") == 0
    assert event["html"] == Message.objects.get(pk=event["id"]).html == formatting.plain(body)


# --- retries ---


def test_a_retried_toggle_is_applied_once_on_every_transport(
    target: Server, sock: Socket, world: World
) -> None:
    frame = react_frame(world, emoji="🚀", client_id="t-1")
    first = over_socket(sock, frame, "first")
    assert first is not None and first.event is not None
    state = snapshot()
    assert (world.target, "🚀") in reactions_of(world)
    for _ in range(3):
        again = over_socket(sock, frame, "retry")
        assert again is not None and again.event == first.event
        assert snapshot() == state
    # Over HTTP too, with the same key: the same message back, nothing changed.
    path = f"/api/rooms/general/messages/{world.target}/reactions"
    answer = over_http(target, world, path, {"emoji": "🚀", "client_id": "t-1"}, "http retry")
    assert answer.ok and answer.event is not None and answer.event["seq"] == first.event["seq"]
    assert snapshot() == state
    # The same key for another ask is a conflict; a new key toggles.
    conflict = over_socket(sock, {**frame, "on": False}, "conflict")
    assert conflict is not None and conflict.code == "conflict" and snapshot() == state
    off = over_socket(sock, {**frame, "client_id": "t-2"}, "off")
    assert off is not None and off.ok and (world.target, "🚀") not in reactions_of(world)


def test_the_same_toggle_sent_twice_at_once_is_applied_once(target: Server, world: World) -> None:
    frame = raw_json(react_frame(world, emoji="🔥", client_id="race"))

    async def one() -> dict[str, Any]:
        async with connect(f"{target.ws_url}?token={world.token}", open_timeout=10) as ws:
            await ws.send(frame)
            while True:
                event = json.loads(await asyncio.wait_for(ws.recv(), 10))
                if event["type"] in ("ack", "error"):
                    return event

    async def both() -> list[dict[str, Any]]:
        return list(await asyncio.gather(*(one() for _ in range(4))))

    seq = Room.objects.get(slug="general").seq
    answers = asyncio.run(both())
    assert [a["type"] for a in answers] == ["ack"] * 4, answers
    assert Reaction.objects.filter(emoji="🔥").count() == 1
    assert Room.objects.get(slug="general").seq == seq + 1
    assert {a["id"] for a in answers} == {world.target}


def test_explicit_state_never_flips(target: Server, sock: Socket, world: World) -> None:
    """`on` repeated (a retry without a key, on any transport) leaves the state it names."""
    path = f"/api/rooms/general/messages/{world.target}/reactions"
    for on in (True, True, False, False, True):
        frame = react_frame(world, emoji="💯", on=on)
        seq = Room.objects.get(slug="general").seq
        had = (world.target, "💯") in reactions_of(world)
        reply = over_socket(sock, frame, f"on={on}")
        assert reply is not None and reply.ok
        assert ((world.target, "💯") in reactions_of(world)) == on
        assert Room.objects.get(slug="general").seq == seq + (had != on)
        answer = over_http(target, world, path, {"emoji": "💯", "on": on}, f"http on={on}")
        assert answer.ok and answer.event is not None
        assert any(e["emoji"] == "💯" for e in answer.event["reactions"]) == on
        assert Room.objects.get(slug="general").seq == seq + (had != on)
