"""Long-polling, the fallback for networks that block WebSockets (docs/protocol.md, "Long-polling").

The client sends its cursor; the answer comes at once when anything is newer, otherwise the request
waits for the room's next publication, up to a timeout below any gateway's limit, and answers empty.
How it waits is one function chosen by settings: woken by the room hub (self-hosted, with a channel
layer) or by the database (Lambda, where nothing stays running between requests): PostgreSQL's
LISTEN/NOTIFY on the room's channel, with a re-read every second as the fallback. A waiting
invocation holds one database connection, the one its reads use, LISTENing while it waits.

Two thin transports share `poll()`: a Django view (WSGI, Lambda) and, in the ASGI server, a Channels
HTTP consumer. The consumer exists because Django runs each sync middleware's response step through
one thread: measured here, 1,000 waiters woken at once behind the default middleware answered with a
p99 near 2 s, and with async-native handling in a few hundred milliseconds.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

from channels.db import database_sync_to_async
from channels.generic.http import AsyncHttpConsumer
from django.db import connection as db_connection
from django.utils import translation
from django.utils.translation import gettext as _

from chat import access, cleaning, events, metrics, presence, reads
from chat.conf import settings
from chat.cursor import Cursors, Verdict
from chat.errors import ChatError, language_from_headers
from chat.fanout import notify_channel, user_channel
from chat.hub import get_hub
from chat.models import Room

log = logging.getLogger(__name__)
Answer = dict[str, Any]
Event = dict[str, Any]
DB_POLL_INTERVAL = 1.0


def _open(user: Any, slug: str, after: int) -> tuple[int, Answer | None, int, Event, Event]:
    """Check access, mark the poller present, and answer at once if anything is newer."""
    room = access.get_room(user, slug)
    presence.join(room.pk, room.slug, f"poll-{user.pk}", user.get_username())
    state = events.room_state(room.slug, room.locked, reads.title_for(room, user))
    # Who is online goes with every answer too: a poller woken by nothing else would otherwise
    # learn the list only when someone arrives or leaves.
    online = events.presence(room.slug, presence.users(room.pk))
    caught = reads.catch_up(room, after, room.seq)
    answer = caught.answer() if caught.resync or caught.changes else None
    return room.pk, answer, caught.seq, state, online


def _reread(room_id: int, after: int, state: Event | None = None) -> Answer | None:
    """What changed after the cursor; with `state`, a changed room state (lock, rename) too,
    which the database wait would otherwise never see."""
    room = Room.objects.get(pk=room_id)
    caught = reads.catch_up(room, after, room.seq)
    if caught.resync:
        return caught.answer()
    # A DM's title is its reader's (the other people's names), and nothing renames a DM.
    title = state["title"] if state is not None and room.is_dm else room.title
    now = events.room_state(room.slug, room.locked, title)
    if state is not None and now != state:
        caught.changes.append(now)
    return caught.answer() if caught.changes else None


@dataclass
class Stream:
    """What a long-poll waits on: a room's stream or a user's. `reread(after)` is the database
    read (None when nothing is newer); `key` is the stream's cursor key in hub messages (a room
    id, or "user"); `channel` the PostgreSQL channel its NOTIFY comes on."""

    key: Any
    seq_key: str  # what the answer calls the cursor: "seq" or "user_seq"
    channel: str
    reread: Callable[[int], Answer | None]
    join: Callable[[Callable[[dict[str, Any]], None]], Awaitable[None]]
    leave: Callable[[Callable[[dict[str, Any]], None]], Awaitable[None]]
    username: str = ""  # the poller's own typing never wakes it

    def live(self, event: Event, text: str) -> dict[str, Any]:
        """A notification's event as a hub message (chat/cursor.py reads these)."""
        return {
            "room": self.key,
            "kind": event["type"],
            "seq": event.get(self.seq_key),
            "text": text,
        }


def room_stream(room_id: int, state: Event, username: str) -> Stream:
    return Stream(
        key=room_id,
        seq_key="seq",
        channel=notify_channel(room_id),
        reread=lambda after: _reread(room_id, after, state),
        join=lambda listener: get_hub().join(room_id, listener),
        leave=lambda listener: get_hub().leave(room_id, listener),
        username=username,
    )


def user_stream(user: Any) -> Stream:
    def reread(after: int) -> Answer | None:
        caught = reads.user_catch_up(user, after)
        return caught.answer(seq_key="user_seq") if caught.resync or caught.changes else None

    return Stream(
        key="user",
        seq_key="user_seq",
        channel=user_channel(user.pk),
        reread=reread,
        join=lambda listener: get_hub().join_user(user.pk, listener),
        leave=lambda listener: get_hub().leave_user(user.pk, listener),
    )


def _in_thread(func: Callable[..., Any]) -> Callable[..., Awaitable[Any]]:
    return database_sync_to_async(func, thread_sensitive=False)


@metrics.tracking(metrics.LONG_POLL_WAITERS)
async def wait_hub(stream: Stream, after: int, timeout: float) -> Answer | None:
    loop = asyncio.get_running_loop()
    woken: asyncio.Future[tuple[Verdict, dict[str, Any]]] = loop.create_future()
    cursors = Cursors()
    cursors.start(stream.key, after)

    def listener(message: dict[str, Any]) -> None:
        own_typing = message["kind"] == "typing" and message.get("user") == stream.username
        if woken.done() or own_typing:
            return
        verdict = cursors.offer(message)
        if verdict is not Verdict.DROP:
            woken.set_result((verdict, message))

    await stream.join(listener)
    try:
        # Anything committed (or a room change) between the first read and joining the hub.
        answer = await _in_thread(stream.reread)(after)
        if answer is not None:
            return answer
        try:
            verdict, message = await asyncio.wait_for(woken, timeout)
        except TimeoutError:
            return None
    finally:
        await stream.leave(listener)
    if verdict is Verdict.FILL:
        metrics.GAP_FILLS.labels(metrics.LONG_POLL).inc()
        return await _in_thread(stream.reread)(after)
    # The usual case needs no database read: the event is the committed state.
    return {"events": [json.loads(message["text"])], stream.seq_key: cursors.get(stream.key)}


def _listen(stream: Stream, after: int, timeout: float) -> Answer | None:
    """The database wait on PostgreSQL, in one thread and on its one connection (the one the
    re-reads use): LISTEN on the stream's channel, re-read, then wait for a NOTIFY
    (chat.fanout.PostgresNotifyBackend). The next change's event, carried by the notification,
    is the answer with no read, as on the hub; an older one is ignored, a later one (something
    was missed) or one too large to carry is read from the database. Without any notification
    for DB_POLL_INTERVAL it re-reads anyway (a publisher that does not notify, a notification
    lost with a dropped connection)."""
    db_connection.ensure_connection()
    raw = db_connection.connection  # psycopg 3: notifications between waits are kept for notifies()
    name = stream.channel
    channel = db_connection.ops.quote_name(name)
    with db_connection.cursor() as cursor:
        cursor.execute(f"LISTEN {channel}")
    try:
        cursors = Cursors()
        cursors.start(stream.key, after)
        deadline = time.monotonic() + timeout
        answer = stream.reread(after)  # what committed before LISTEN took effect
        while answer is None and (remaining := deadline - time.monotonic()) > 0:
            read = True  # after the fallback's interval, or a notification that needs one
            for notification in raw.notifies(
                timeout=min(DB_POLL_INTERVAL, remaining), stop_after=1
            ):
                if notification.channel != name:
                    # Left on a reused connection by an earlier wait on another stream:
                    # psycopg keeps notifications between waits, and UNLISTEN does not drop them.
                    read = False
                    continue
                verdict, event = _offer(cursors, stream, notification.payload)
                if verdict is Verdict.SEND:
                    return {"events": [event], stream.seq_key: cursors.get(stream.key)}
                read = verdict is not Verdict.DROP
            if read:
                answer = stream.reread(after)
        return answer
    finally:
        with db_connection.cursor() as cursor:
            cursor.execute(f"UNLISTEN {channel}")


def _offer(cursors: Cursors, stream: Stream, payload: str) -> tuple[Verdict, Event | None]:
    """What a notification's payload (the event's text, or empty when it did not fit) means."""
    if not payload:
        return Verdict.FILL, None
    event = json.loads(payload)
    return cursors.offer(stream.live(event, payload)), event


@metrics.tracking(metrics.LONG_POLL_WAITERS)
async def wait_database(stream: Stream, after: int, timeout: float) -> Answer | None:
    """Lambda's wait, where nothing runs between requests: woken by PostgreSQL's NOTIFY, with a
    re-read every DB_POLL_INTERVAL as the fallback (the only way on other databases)."""
    if db_connection.vendor == "postgresql":
        return await _in_thread(_listen)(stream, after, timeout)
    deadline = asyncio.get_running_loop().time() + timeout
    while (remaining := deadline - asyncio.get_running_loop().time()) > 0:
        await asyncio.sleep(min(DB_POLL_INTERVAL, remaining))
        answer = await _in_thread(stream.reread)(after)
        if answer is not None:
            return answer
    return None


WAITS = {"hub": wait_hub, "database": wait_database}


def _poll_args(user: Any, after_raw: Any, timeout_raw: Any) -> tuple[int, float]:
    if not user.is_authenticated:
        raise ChatError("unauthorized", _("Log in first."))
    if after_raw is None:
        raise ChatError("bad_request", _("Send `after`, the last seq you have."))
    after = cleaning.clean_cursor(after_raw, "after")
    cap = float(settings.CHAT_POLL_MAX_TIMEOUT)
    return after, cleaning.clean_seconds(timeout_raw, "timeout", cap=cap, default=cap)


async def poll_user(user: Any, after_raw: Any, timeout_raw: Any) -> Answer:
    """`GET /api/me/poll`: the user's stream after `after` (its user_seq), as soon as there is
    anything, else after up to `timeout` seconds an empty answer."""
    after, timeout = _poll_args(user, after_raw, timeout_raw)
    stream = user_stream(user)
    answer = await _in_thread(stream.reread)(after)
    if answer is None:
        answer = await WAITS[settings.CHAT_POLL_WAIT](stream, after, timeout)
    return answer if answer is not None else {"events": [], "user_seq": after}


async def poll(user: Any, slug: str, after_raw: Any, timeout_raw: Any) -> Answer:
    after, timeout = _poll_args(user, after_raw, timeout_raw)
    room_id, answer, seq, state, online = await database_sync_to_async(
        _open, thread_sensitive=False
    )(user, slug, after)
    if answer is None:
        wait = WAITS[settings.CHAT_POLL_WAIT]
        answer = await wait(room_stream(room_id, state, user.get_username()), after, timeout)
    if answer is None:
        answer = {"events": [], "seq": seq}
    # The room's state with every answer: a lock or rename while the client was away is not a
    # message, so no cursor replays it. A room event in the answer is newer than the one read.
    changed = [e for e in answer.get("events", ()) if e.get("type") == "room"]
    answer["room"] = changed[-1] if changed else state
    arrivals = [e for e in answer.get("events", ()) if e.get("type") == "presence"]
    answer["presence"] = arrivals[-1] if arrivals else online
    return answer


class PollConsumer(AsyncHttpConsumer):
    """`GET /api/rooms/<slug>/poll` and `GET /api/me/poll` in the ASGI server, with no sync
    middleware on the way."""

    channel_layer_alias = "__no_layer_per_request__"

    @metrics.tracking(metrics.OPEN_CONNECTIONS.labels(metrics.LONG_POLL))
    async def handle(self, body: bytes) -> None:
        status, data = await self._answer()
        await self.send_response(
            status,
            json.dumps(data).encode(),
            headers=[
                (b"Content-Type", b"application/json"),
                (b"Cache-Control", b"no-store"),
            ],
        )

    async def _answer(self) -> tuple[int, dict[str, Any]]:
        # No LocaleMiddleware on this route: the details follow Accept-Language all the same.
        with translation.override(language_from_headers(self.scope.get("headers", []))):
            return await self._answer_in_language()

    async def _answer_in_language(self) -> tuple[int, dict[str, Any]]:
        if self.scope["method"] != "GET":
            return 405, {"error": "method_not_allowed", "detail": _("Use GET.")}
        # Undecodable bytes become U+FFFD, which no cursor or number accepts.
        raw = self.scope["query_string"].decode("utf-8", "replace")
        query = {k: v[-1] for k, v in parse_qs(raw).items()}
        slug = self.scope["url_route"]["kwargs"].get("slug")
        user = self.scope["user"]
        try:
            if slug is None:  # /api/me/poll: the user's own stream
                return 200, await poll_user(user, query.get("after"), query.get("timeout"))
            return 200, await poll(user, slug, query.get("after"), query.get("timeout"))
        except ChatError as exc:
            return exc.status, {"error": exc.code, "detail": exc.detail}
        except Exception:
            # Never Channels' plain-text 500: the client reads JSON and retries with its cursor.
            log.exception("long-poll failed")
            return 500, {"error": "server_error", "detail": _("Something went wrong on our side.")}
