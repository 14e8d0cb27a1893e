"""Hostile input through the running servers, over the whole of Unicode and every JSON type.

Every HTTP endpoint (through the Channels server, and through the local API Gateway in front of
Zappa's handler) and every WebSocket action (on both transports), one field at a time from an
otherwise valid request, with values that include NUL, lone surrogates sent as raw JSON escapes
(`"\\ud800"` on the wire), non-ASCII digits, Unicode whitespace, very long strings, and every JSON
type. Each request is checked for:

- no HTTP 5xx, and every API error is JSON `{"error", "detail"}` (never an HTML page);
- no `server_error` event, and the socket never closed by the server;
- a refused request changes no row (messages, rooms, memberships, restrictions, reports,
  attachments, moderation actions are compared before and after);
- every 2xx answer or `ack` for a post names a stored row in the room the request named, with
  the body it sent.

The servers run with the frame rate limit lifted (each probe is two frames) and a one-second
long-poll cap, so a valid poll never holds the run up.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.client import HTTPConnection
from typing import Any
from urllib.parse import quote

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.db.models import F
from django.test import Client
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidMessage, InvalidStatus

from chat import tokens
from chat.models import (
    Attachment,
    Membership,
    Message,
    ModerationAction,
    Report,
    Restriction,
    Room,
)
from tests.conftest import Server, both_deployments, one_of
from tests.faults.conftest import REFUSALS

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(300)]

FUZZ = settings(
    max_examples=20,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
ENV = {
    "CHAT_FRAME_RATE": "100000",
    "CHAT_FRAME_BURST": "100000",
    "CHAT_POLL_MAX_TIMEOUT": "1",
    # Few connections kept open: the PostgreSQL server is shared with other test runs.
    "DB_CONN_MAX_AGE": "0",
}
ERROR_CODES = REFUSALS
# Below this many characters, a URL must reach the application (larger ones may be refused first).
URL_LIMIT = 8000
CSRF = "fuzzcsrfsecret0123456789abcdefgh"  # any 32 allowed characters make a CSRF secret

# --- values ---

any_char = st.characters(exclude_categories=())  # every code point, surrogates included
TRICKY = [
    "\x00",
    "a\x00b",
    "general\x00",
    "\ud800",
    "\udfff",
    "x\udc00y",
    "\ud83d",  # the first half of an emoji's surrogate pair, alone
    "²",
    "١٢",
    "٣",
    "０",
    "¹²³",
    "+1",
    "-1",
    " 1",
    "1 ",
    "1.0",
    "1e3",
    "0x1f",
    "1_000",
    "\u00a0",
    "\u2003",
    "\u3000",
    "\u200b",
    "\ufeff",
    "\u2028",
    "\x1b[2J",
    "\t\n\r",
    "",
    " ",
    "9" * 19,
    "9" * 30,
    "1" * 5000,
    "x" * 4001,
    "é" * 4001,
    "\x00" * 1000,
    "a" * 65,
    "a" * 51,
    "2030-13-45T99:00",
    "2030-01-01T00:00+99:00",
    "2030-01-01T00:00\x00",
    "２０３０-01-01T00:00",
    "1700000000",
    "2000-01-01T00:00",
    "2099-01-01T00:00:00Z",
    "general",
    "secret",
    "nowhere",
    "General",
    "bob",
    "ban",
    "mute",
    "true",
    "null",
    "0",
    "1",
]
texts = st.one_of(
    st.text(any_char, max_size=30),
    st.sampled_from(TRICKY),
    st.builds(
        lambda a, b, c: a + b + c,
        st.sampled_from(["", "general", "1", "hello "]),
        st.sampled_from(TRICKY[:30]),
        st.text(any_char, max_size=5),
    ),
)
numbers = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([0, 1, -1, 2**62, 2**62 + 1, 2**63, 2**64, 10**30]),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([0.0, 1.0, 1.5, -0.0, 1e300]),
)
scalars = st.one_of(st.none(), st.booleans(), numbers, texts)
json_values = st.one_of(
    scalars,
    scalars,
    st.recursive(
        scalars,
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(texts, inner, max_size=3),
        max_leaves=5,
    ),
)
_SURROGATE = re.compile("[\ud800-\udfff]")
# Tried first, on every field, whatever hypothesis then generates: one of each kind of input
# that has broken a server before (the values of issue 18).
CRITICAL: list[Any] = [
    "\x00",
    "a\x00b",
    "\ud800",
    "x\udfff",
    "²",
    "١٢",
    "+1",
    " 1",
    "1.0",
    "1e3",
    "9" * 30,
    "\u3000",
    "x" * 4001,
    "2030-13-45T99:00",
    "2030-01-01T00:00+99:00",
    "1700000000",
    False,
    True,
    1.5,
    2**64,
    -1,
    [],
    {},
    None,
]


def critical(name: str, strings_only: bool = False) -> Any:
    """A decorator that adds every CRITICAL value as an explicit example of argument `name`."""

    def decorate(test: Any) -> Any:
        for value in reversed(CRITICAL):
            if isinstance(value, str) or not strings_only:
                test = example(**{name: value})(test)
        return test

    return decorate


def raw_json(value: Any) -> str:
    """JSON text with lone surrogates as `\\udXXX` escapes, as an attacker's client sends them
    (plain ASCII on the wire, so no client library refuses to send it)."""
    text = json.dumps(value, ensure_ascii=True)
    if has_surrogate(value):
        assert re.search(r"\\u[dD][89a-fA-F][0-9a-fA-F]{2}", text), text[:200]
    return text


def has_surrogate(value: Any) -> bool:
    return bool(_SURROGATE.search(json.dumps(value, ensure_ascii=False)))


# --- the world every test starts from ---


@dataclass
class World:
    fuzzer: Any
    bob: Any
    session: str
    token: str
    own: int  # a message of the fuzzer's in general
    bobs: int  # a message of bob's in general
    mute: int  # a mute of bob's in general
    counter: Iterator[int] = field(default_factory=itertools.count)

    def unique(self, prefix: str) -> str:
        return f"{prefix}{next(self.counter)}-{uuid.uuid4().hex[:6]}"


def build_world() -> World:
    model = get_user_model()
    # A moderator, so that moderation fields are validated rather than refused unread.
    fuzzer = model.objects.create_user("fuzzer", password="pw-fuzz-123", is_staff=True)
    fuzzer.user_permissions.set(Permission.objects.filter(content_type__app_label="chat"))
    bob = model.objects.create_user("bob", password="pw-bob-123")
    general = Room.objects.create(slug="general", title="General")
    secret = Room.objects.create(slug="secret", title="Secret", private=True, created_by=fuzzer)
    Room.objects.create(slug="other", title="Other")
    for room, user in ((general, fuzzer), (general, bob), (secret, fuzzer)):
        Membership.objects.create(room=room, user=user)
    bobs = Message.objects.create(room=general, author=bob, body="bob's", posted_seq=1, seq=1)
    own = Message.objects.create(room=general, author=fuzzer, body="mine", posted_seq=2, seq=2)
    Room.objects.filter(pk=general.pk).update(seq=2)
    mute = Restriction.objects.create(kind=Restriction.MUTE, user=bob, room=general)
    browser = Client()
    browser.force_login(fuzzer)
    return World(
        fuzzer=fuzzer,
        bob=bob,
        session=browser.cookies["sessionid"].value,
        token=tokens.make_token(fuzzer),
        own=own.pk,
        bobs=bobs.pk,
        mute=mute.pk,
    )


def fresh_message(world: World) -> int:
    """A new message of bob's in general, for a request that acts once per message (a report
    of a message already reported changes nothing, and reads nothing)."""
    Room.objects.filter(slug="general").update(seq=F("seq") + 1)
    room = Room.objects.get(slug="general")
    message = Message.objects.create(
        room=room, author=world.bob, body="b", posted_seq=room.seq, seq=room.seq
    )
    return message.pk


def snapshot() -> tuple[Any, ...]:
    """Every row a write could touch (connections and subscriptions aside: subscribing writes
    them on Lambda, and presence is not the database's)."""
    return (
        list(
            Message.objects.order_by("pk").values_list(
                "pk", "room_id", "body", "client_id", "seq", "deleted", "hidden", "edited"
            )
        ),
        list(
            Room.objects.order_by("pk").values_list(
                "pk", "slug", "title", "seq", "locked", "private", "rate_limit"
            )
        ),
        list(Membership.objects.order_by("pk").values_list("pk", "read_seq")),
        list(Restriction.objects.order_by("pk").values_list("pk", "kind", "room_id", "until")),
        list(Report.objects.order_by("pk").values_list("pk", "reason", "resolved")),
        list(Attachment.objects.order_by("pk").values_list("pk", "status", "name", "size")),
        ModerationAction.objects.count(),
    )


# --- servers of our own (the rate limit lifted), shared by the module ---


@pytest.fixture(scope="module")
def fuzz_servers(django_db_setup: Any, django_db_blocker: Any) -> Iterator[dict[str, Server]]:
    with django_db_blocker.unblock(), both_deployments(ENV) as started:
        yield started


@pytest.fixture(params=["channels", "serverless"])
def target(
    request: pytest.FixtureRequest, fuzz_servers: dict[str, Server], transactional_db: Any
) -> Iterator[Server]:
    yield from one_of(fuzz_servers, request.param)


@pytest.fixture
def world(target: Server) -> World:
    return build_world()


# --- HTTP ---


@dataclass
class Answer:
    status: int
    content_type: str
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def encode_query(query: dict[str, str]) -> str:
    """Percent-encoded UTF-8; a lone surrogate goes as the bytes Python would give it."""
    return "&".join(
        f"{quote(k)}={quote(v.encode('utf-8', 'surrogatepass'), safe='')}" for k, v in query.items()
    )


def send_http(
    server: Server,
    world: World,
    method: str,
    path: str,
    *,
    query: dict[str, str] | None = None,
    body: str | bytes | None = None,
    content_type: str = "application/json",
) -> Answer:
    url = path + (f"?{encode_query(query)}" if query else "")
    data = body.encode("utf-8", "surrogatepass") if isinstance(body, str) else body
    headers = {
        "Host": f"127.0.0.1:{server.port}",
        "Cookie": f"sessionid={world.session}; csrftoken={CSRF}",
        "X-CSRFToken": CSRF,
        # Behind API Gateway the request is https, where Django's CSRF check wants a referer.
        "Referer": f"https://127.0.0.1:{server.port}/",
    }
    if data is not None:
        headers["Content-Type"] = content_type
    conn = HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        conn.request(method, url, body=data, headers=headers)
        response = conn.getresponse()
        return Answer(response.status, response.getheader("Content-Type") or "", response.read())
    finally:
        conn.close()


def check_http(
    answer: Answer,
    what: str,
    before: tuple[Any, ...],
    *,
    api: bool = True,
    posted: tuple[str, Any] | None = None,
    query_length: int = 0,
) -> None:
    got = f"{what} -> HTTP {answer.status} {answer.content_type}: {answer.body[:120]!r}"
    assert answer.status < 500, got
    if answer.status >= 400:
        # A request line past the HTTP server's own limit is refused before the application.
        beyond = query_length > URL_LIMIT and answer.status in (400, 414)
        if api and not beyond:
            assert answer.content_type.startswith("application/json"), f"not JSON: {got}"
            data = answer.json()
            assert isinstance(data, dict) and {"error", "detail"} <= set(data), got
            assert data["error"] in ERROR_CODES, got
        assert snapshot() == before, f"a refused request changed rows: {got}"
    elif posted is not None and answer.status in (200, 201):
        slug, body = posted
        event = answer.json()
        row = Message.objects.select_related("room").filter(pk=event.get("id")).first()
        assert row is not None, f"acknowledged but not stored: {got}"
        assert (event["room"], row.room.slug) == (slug, slug), f"stored elsewhere: {got}"
        if isinstance(body, str) and body:
            assert (event["body"], row.body) == (body, body), f"another body: {got}"


# Each case: method, path (with {own}, {bobs}, {mute} filled in), the valid JSON body or query,
# the fuzzed field, and where it goes ("body" or "query"). "slug" and "client_id" values of
# the valid request are made unique per request.
HTTP_CASES: dict[str, tuple[str, str, dict[str, Any], str, str]] = {
    "rooms: create slug": ("POST", "/api/rooms/", {"slug": "", "title": "T"}, "slug", "body"),
    "rooms: create title": ("POST", "/api/rooms/", {"slug": "", "title": ""}, "title", "body"),
    "rooms: create private": ("POST", "/api/rooms/", {"slug": "", "title": "T"}, "private", "body"),
    "messages: post body": (
        "POST",
        "/api/rooms/general/messages",
        {"client_id": ""},
        "body",
        "body",
    ),
    "messages: post client_id": (
        "POST",
        "/api/rooms/general/messages",
        {"body": "hi"},
        "client_id",
        "body",
    ),
    "messages: post attachment": (
        "POST",
        "/api/rooms/general/messages",
        {"body": "hi", "client_id": ""},
        "attachment",
        "body",
    ),
    "messages: history after": ("GET", "/api/rooms/general/messages", {}, "after", "query"),
    "messages: history before": ("GET", "/api/rooms/general/messages", {}, "before", "query"),
    "messages: history limit": ("GET", "/api/rooms/general/messages", {}, "limit", "query"),
    "message: edit body": ("PATCH", "/api/rooms/general/messages/{own}", {}, "body", "body"),
    "report: reason": ("POST", "/api/rooms/general/messages/{fresh}/report", {}, "reason", "body"),
    "hide: reason": ("POST", "/api/rooms/general/messages/{bobs}/hide", {}, "reason", "body"),
    "restore: reason": (
        "POST",
        "/api/rooms/general/messages/{bobs}/restore",
        {},
        "reason",
        "body",
    ),
    "moderate: title": ("POST", "/api/rooms/other/moderate", {}, "title", "body"),
    "moderate: locked": ("POST", "/api/rooms/other/moderate", {}, "locked", "body"),
    "moderate: rate_limit": ("POST", "/api/rooms/other/moderate", {}, "rate_limit", "body"),
    "moderate: reason": (
        "POST",
        "/api/rooms/other/moderate",
        {"locked": False},
        "reason",
        "body",
    ),
    "restrictions: user": (
        "POST",
        "/api/moderation/restrictions",
        {"kind": "mute", "room": "general"},
        "user",
        "body",
    ),
    "restrictions: kind": (
        "POST",
        "/api/moderation/restrictions",
        {"user": "bob", "room": "general"},
        "kind",
        "body",
    ),
    "restrictions: room": (
        "POST",
        "/api/moderation/restrictions",
        {"user": "bob", "kind": "mute"},
        "room",
        "body",
    ),
    "restrictions: until": (
        "POST",
        "/api/moderation/restrictions",
        {"user": "bob", "kind": "mute", "room": "general"},
        "until",
        "body",
    ),
    "restrictions: reason": (
        "POST",
        "/api/moderation/restrictions",
        {"user": "bob", "kind": "mute", "room": "general"},
        "reason",
        "body",
    ),
    "restriction: lift reason": (
        "DELETE",
        "/api/moderation/restrictions/{mute}",
        {},
        "reason",
        "body",
    ),
    "read: seq": ("POST", "/api/rooms/general/read", {}, "seq", "body"),
    "poll: after": ("GET", "/api/rooms/general/poll", {"timeout": "0"}, "after", "query"),
    "poll: timeout": ("GET", "/api/rooms/general/poll", {"after": "0"}, "timeout", "query"),
    "attachments: name": (
        "POST",
        "/api/rooms/general/attachments",
        {"size": 5, "content_type": "text/plain"},
        "name",
        "body",
    ),
    "attachments: size": (
        "POST",
        "/api/rooms/general/attachments",
        {"name": "a.txt", "content_type": "text/plain"},
        "size",
        "body",
    ),
    "attachments: content_type": (
        "POST",
        "/api/rooms/general/attachments",
        {"name": "a.txt", "size": 5},
        "content_type",
        "body",
    ),
    "ws-token: any body": ("POST", "/api/ws-token", {}, "anything", "body"),
}


def _fill(world: World, path: str, base: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    fresh = fresh_message(world) if "{fresh}" in path else None
    path = path.format(own=world.own, bobs=world.bobs, mute=world.mute, fresh=fresh)
    data = dict(base)
    if data.get("slug") == "":
        data["slug"] = world.unique("r")
    if data.get("client_id") == "":
        data["client_id"] = world.unique("c")
    return path, data


@pytest.mark.parametrize("case", sorted(HTTP_CASES))
def test_every_http_field_takes_any_value(target: Server, world: World, case: str) -> None:
    method, path_template, base, name, where = HTTP_CASES[case]
    values = json_values if where == "body" else texts

    @FUZZ
    @given(value=values)
    @critical("value", strings_only=where == "query")
    def check(value: Any) -> None:
        path, data = _fill(world, path_template, base)
        before = snapshot()
        if where == "query":
            answer = send_http(target, world, method, path, query={**data, name: value})
            shown: Any = {**data, name: value}
        else:
            shown = {**data, name: value}
            answer = send_http(target, world, method, path, body=raw_json(shown))
        posted = None
        if method == "POST" and path.endswith("/messages"):
            posted = (path.split("/")[3], shown.get("body"))
        length = len(quote(str(value).encode("utf-8", "surrogatepass"))) if where == "query" else 0
        what = f"{case}: {method} {path} {shown!r}"[:600]
        check_http(answer, what, before, posted=posted, query_length=length)

    check()


def test_every_http_body_type_and_encoding(target: Server, world: World) -> None:
    """Bodies that are not a JSON object, or not JSON, or not UTF-8, on every JSON endpoint."""
    endpoints = [(m, p, _) for m, p, _, _, w in HTTP_CASES.values() if w == "body"]
    bodies = st.one_of(
        json_values.map(raw_json),
        st.text(any_char, max_size=40),
        st.binary(max_size=40),
        st.sampled_from(['{"body": "\\u0000"}', '{"body": "\\ud800"}', "{", "[]", "\x00", ""]),
    )

    @FUZZ
    @given(endpoint=st.sampled_from(endpoints), body=bodies)
    def check(endpoint: tuple[str, str, Any], body: str | bytes) -> None:
        method, template, _ = endpoint
        path, _ = _fill(world, template, {})
        before = snapshot()
        answer = send_http(target, world, method, path, body=body)
        check_http(answer, f"{method} {path} {body!r}"[:600], before)

    check()


def test_a_reused_client_id_over_http_is_stored_in_the_room_it_names(
    target: Server, world: World
) -> None:
    @FUZZ
    @given(
        slug=st.sampled_from(["general", "secret", "other"]),
        client_id=st.sampled_from(["c1", "c2", "c3"]),
        body=st.text(st.characters(codec="utf-8", exclude_characters="\x00"), min_size=1),
    )
    def check(slug: str, client_id: str, body: str) -> None:
        if not body.strip():
            body = f"{body}x"
        before = snapshot()
        answer = send_http(
            target,
            world,
            "POST",
            f"/api/rooms/{slug}/messages",
            body=raw_json({"body": body, "client_id": client_id}),
        )
        if answer.status == 409:  # a retry of this room's client_id with another body
            check_http(answer, f"{slug} {client_id}", before)
            return
        check_http(answer, f"{slug} {client_id} {body!r}", before, posted=(slug, body))

    check()


def test_the_pages_never_answer_5xx(target: Server, world: World) -> None:
    @FUZZ
    @given(value=texts, post=st.booleans())
    @example(value="\x00", post=False)
    @example(value="²", post=False)
    @example(value="\x00", post=True)
    def check(value: str, post: bool) -> None:
        before = snapshot()
        if post:
            form = f"body={quote(value.encode('utf-8', 'surrogatepass'), safe='')}"
            form += f"&client_id={world.unique('p')}&csrfmiddlewaretoken={CSRF}"
            answer = send_http(
                target,
                world,
                "POST",
                "/rooms/general/",
                body=form,
                content_type="application/x-www-form-urlencoded",
            )
        else:
            answer = send_http(target, world, "GET", "/rooms/general/", query={"before": value})
        got = f"{'POST body' if post else 'GET ?before'}={value!r} -> HTTP {answer.status}"
        assert answer.status < 500, f"{got}: {answer.body[:120]!r}"
        if answer.status >= 400:
            assert snapshot() == before

    check()


@pytest.mark.parametrize(
    "path",
    [
        "/api/rooms/%C2%B2/messages",
        "/api/rooms/general/messages/%D9%A1",
        "/api/rooms/general/messages/1.0",
        "/api/rooms/a%00b/messages",
        "/api/nowhere",
        "/api/attachments/not-a-uuid",
    ],
)
def test_api_paths_that_match_no_route_answer_json(target: Server, world: World, path: str) -> None:
    answer = send_http(target, world, "GET", path)
    assert answer.status == 404
    assert answer.content_type.startswith("application/json"), answer.body[:200]
    assert answer.json()["error"] == "not_found"


# --- WebSocket ---


class Socket:
    """One protocol connection, driven from the test's thread through a loop of its own."""

    def __init__(self, loop: asyncio.AbstractEventLoop, url: str) -> None:
        self.loop = loop
        self.url = url
        self.ws: ClientConnection | None = None

    def run(self, coro: Any, timeout: float = 60) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def open(self) -> None:
        if self.ws is None:
            self.ws = self.run(self._connect())

    async def _connect(self) -> ClientConnection:
        return await connect(self.url, open_timeout=10, ping_interval=None, max_size=2**22)

    def close(self) -> None:
        if self.ws is not None:
            ws, self.ws = self.ws, None
            self.run(ws.close())

    def exchange(self, text: str, expect_pong: bool = False) -> tuple[list[dict[str, Any]], str]:
        """Send one frame and then a ping; return the events up to the frame's reply and the
        probe's pong (a frame that succeeds silently, like `read`, has only the pong), and
        "" or how the server closed the socket."""
        self.open()
        assert self.ws is not None
        try:
            return self.run(self._exchange(self.ws, text, 2 if expect_pong else 1)), ""
        except ConnectionClosed as closed:
            self.ws = None
            code = closed.rcvd.code if closed.rcvd else None
            return [], f"closed by the server with {code}"
        except TimeoutError:
            self.ws = None
            return [], "no answer within 10 s"

    async def _exchange(
        self, ws: ClientConnection, text: str, pongs_wanted: int
    ) -> list[dict[str, Any]]:
        await ws.send(text)
        await ws.send('{"action": "ping"}')
        got: list[dict[str, Any]] = []
        pongs = 0
        replied = False
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10
        grace_end: float | None = None
        while True:
            now = loop.time()
            if pongs >= pongs_wanted and (replied or (grace_end is not None and now >= grace_end)):
                return got
            wait = deadline - now if grace_end is None else min(deadline, grace_end) - now
            if wait <= 0:
                if pongs >= pongs_wanted:
                    return got
                raise TimeoutError
            try:
                raw = await asyncio.wait_for(ws.recv(), wait)
            except TimeoutError:
                continue
            event = json.loads(raw)
            got.append(event)
            if event["type"] == "pong":
                pongs += 1
                if pongs >= pongs_wanted and grace_end is None:
                    # Lambda runs frames concurrently: a reply may come after the probe's pong.
                    grace_end = loop.time() + 0.3
            elif event["type"] in ("ack", "error", "subscribed", "unsubscribed"):
                replied = True


@pytest.fixture
def socket_(target: Server, world: World, loop: asyncio.AbstractEventLoop) -> Iterator[Socket]:
    sock = Socket(loop, f"{target.ws_url}?token={world.token}")
    yield sock
    sock.close()


def _body_of(frame: dict[str, Any]) -> Any:
    for name in ("body", "message", "data"):
        if name in frame:
            return frame[name]
    return None


def check_frame(
    sock: Socket, frame: Any, what: str, *, text: str | None = None
) -> list[dict[str, Any]]:
    """Send one frame (a dict, or any JSON value) and check what came back and what changed."""
    text = raw_json(frame) if text is None else text
    # API Gateway closes a socket on a frame over 32 KB, as it should (tests/test_limits.py and
    # the frame tests cover sizes): keep every frame below it, for both transports alike.
    assume(len(text.encode()) < 32 * 1024)
    is_ping = isinstance(frame, dict) and frame.get("action") == "ping"
    before = snapshot()
    events, closed = sock.exchange(text, expect_pong=is_ping)
    assert not closed, f"{what} -> {closed}"
    errors = [e for e in events if e["type"] == "error"]
    for error in errors:
        assert error["code"] in ERROR_CODES, f"{what} -> {error}"
    if errors:
        assert snapshot() == before, f"a refused frame changed rows: {what} -> {errors}"
    for ack in (e for e in events if e["type"] == "ack"):
        if not isinstance(frame, dict) or frame.get("action") != "sendmessage":
            continue
        row = Message.objects.select_related("room").filter(pk=ack["id"]).first()
        assert row is not None, f"acknowledged but not stored: {what} -> {ack}"
        slug = frame.get("room")
        assert (ack["room"], row.room.slug) == (slug, slug), f"stored elsewhere: {what} -> {ack}"
        body = _body_of(frame)
        if isinstance(body, str):
            assert row.body == body, f"stored another body: {what} -> {ack}, {row.body[:80]!r}"
    return events


# Each case: the valid frame and the fuzzed field ({own}, {bobs} and unique client ids filled in).
WS_CASES: dict[str, tuple[dict[str, Any], str]] = {
    "subscribe: room": ({"action": "subscribe"}, "room"),
    "subscribe: after": ({"action": "subscribe", "room": "general"}, "after"),
    "unsubscribe: room": ({"action": "unsubscribe"}, "room"),
    "sendmessage: room": ({"action": "sendmessage", "body": "hi", "client_id": ""}, "room"),
    "sendmessage: body": ({"action": "sendmessage", "room": "general", "client_id": ""}, "body"),
    "sendmessage: message": (
        {"action": "sendmessage", "room": "general", "client_id": ""},
        "message",
    ),
    "sendmessage: client_id": (
        {"action": "sendmessage", "room": "general", "body": "hi"},
        "client_id",
    ),
    "sendmessage: attachment": (
        {"action": "sendmessage", "room": "general", "body": "hi", "client_id": ""},
        "attachment",
    ),
    "editmessage: id": (
        {"action": "editmessage", "room": "general", "body": "edited", "client_id": ""},
        "id",
    ),
    "editmessage: body": (
        {"action": "editmessage", "room": "general", "id": "{own}", "client_id": ""},
        "body",
    ),
    "editmessage: client_id": (
        {"action": "editmessage", "room": "general", "id": "{own}", "body": "again"},
        "client_id",
    ),
    "deletemessage: id": (
        {"action": "deletemessage", "room": "general", "client_id": ""},
        "id",
    ),
    "report: id": ({"action": "report", "room": "general", "reason": "spam"}, "id"),
    "report: reason": ({"action": "report", "room": "general", "id": "{fresh}"}, "reason"),
    "report: client_id": (
        {"action": "report", "room": "general", "id": "{bobs}", "reason": "spam"},
        "client_id",
    ),
    "read: seq": ({"action": "read", "room": "general"}, "seq"),
    "read: room": ({"action": "read", "seq": 0}, "room"),
    "typing: room": ({"action": "typing"}, "room"),
    "ping: extra field": ({"action": "ping"}, "room"),
    "any action": ({"room": "general", "body": "hi"}, "action"),
}


def _frame(world: World, base: dict[str, Any]) -> dict[str, Any]:
    frame = {}
    for key, value in base.items():
        if value == "{own}":
            value = world.own
        elif value == "{bobs}":
            value = world.bobs
        elif value == "{fresh}":
            value = fresh_message(world)
        elif key == "client_id" and value == "":
            value = world.unique("w")
        frame[key] = value
    return frame


@pytest.mark.parametrize("case", sorted(WS_CASES))
def test_every_websocket_field_takes_any_value(
    target: Server, world: World, socket_: Socket, case: str
) -> None:
    base, name = WS_CASES[case]

    @FUZZ
    @given(value=json_values)
    @critical("value")
    def check(value: Any) -> None:
        frame = {**_frame(world, base), name: value}
        check_frame(socket_, frame, f"{case}: {frame!r}"[:600])

    check()


def test_any_frame_of_any_fields(target: Server, world: World, socket_: Socket) -> None:
    frames = st.one_of(
        st.fixed_dictionaries(
            {
                "action": st.sampled_from(
                    [*(b["action"] for b, _ in WS_CASES.values() if b.get("action")), "ping"]
                )
            },
            optional={
                name: json_values
                for name in (
                    "room",
                    "body",
                    "message",
                    "data",
                    "client_id",
                    "after",
                    "seq",
                    "id",
                    "reason",
                    "attachment",
                )
            },
        ),
        json_values,
    )

    @FUZZ
    @given(frame=frames)
    def check(frame: Any) -> None:
        check_frame(socket_, frame, repr(frame)[:600])

    check()


def test_a_reused_client_id_over_websocket_is_stored_in_the_room_it_names(
    target: Server, world: World, socket_: Socket
) -> None:
    @FUZZ
    @given(
        slug=st.sampled_from(["general", "secret", "other"]),
        client_id=st.sampled_from(["c1", "c2", "c3"]),
        body=st.sampled_from(["one", "two", "three", "four"]),
    )
    def check(slug: str, client_id: str, body: str) -> None:
        frame = {"action": "sendmessage", "room": slug, "body": body, "client_id": client_id}
        events = check_frame(socket_, frame, repr(frame))
        conflicts = [e for e in events if e["type"] == "error" and e["code"] == "conflict"]
        assert conflicts or any(e["type"] == "ack" for e in events), f"{frame} -> {events}"

    check()


def test_the_connect_room_takes_any_value(
    target: Server, world: World, loop: asyncio.AbstractEventLoop
) -> None:
    """`?room=` names the room a connection subscribes to at once (shared/protocol.md)."""

    @FUZZ
    @given(room=texts)
    @critical("room", strings_only=True)
    def check(room: str) -> None:
        encoded = quote(room.encode("utf-8", "surrogatepass"), safe="")
        sock = Socket(loop, f"{target.ws_url}?token={world.token}&room={encoded}")
        try:
            sock.open()
        except InvalidStatus as refused:
            status = refused.response.status_code
            # A request line beyond the HTTP server's own limit (uvicorn's is 16 KB, proxies'
            # and API Gateway's less) is refused before the application, with a 4xx: fine.
            if len(encoded) > URL_LIMIT and status in (400, 414):
                return
            raise AssertionError(f"?room={room!r} -> handshake refused with {status}") from None
        except InvalidMessage:
            # The same refusal from a server that answers it as HTTP/1.0 (no WebSocket reply).
            if len(encoded) > URL_LIMIT:
                return
            raise
        try:
            before = snapshot()
            events, closed = sock.exchange('{"action": "ping"}', expect_pong=True)
            assert not closed, f"?room={room!r} -> {closed}"
            for error in (e for e in events if e["type"] == "error"):
                assert error["code"] in ERROR_CODES, f"?room={room!r} -> {error}"
            assert snapshot() == before
        finally:
            sock.close()

    check()


def test_wire_carries_lone_surrogates_as_escapes() -> None:
    """What the fuzzers send: ASCII JSON with the surrogate escaped, not the code point."""
    text = raw_json({"body": "a\ud800b"})
    assert text == '{"body": "a\\ud800b"}' and text.isascii()
    assert has_surrogate(json.loads(text))


def test_valid_requests_of_the_fuzzers_are_accepted(
    target: Server, world: World, socket_: Socket
) -> None:
    """The fuzzers' session, CSRF token, token and probes work: what they refuse is the
    value's doing, not theirs."""
    answer = send_http(
        target,
        world,
        "POST",
        "/api/rooms/general/messages",
        body=raw_json({"body": "over http", "client_id": "valid-1"}),
    )
    assert answer.status == 201, answer.body[:300]
    frame = {"action": "sendmessage", "room": "general", "body": "over ws", "client_id": "valid-2"}
    events = check_frame(socket_, frame, "valid")
    assert [e["type"] for e in events if e["type"] in ("ack", "error")] == ["ack"], events
    events = check_frame(socket_, {"action": "read", "room": "general", "seq": 1}, "read")
    assert not [e for e in events if e["type"] == "error"], events
    assert [m.body for m in Message.objects.order_by("pk")][-2:] == ["over http", "over ws"]
