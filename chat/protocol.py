"""The WebSocket protocol (docs/protocol.md), shared by the Channels consumer and the Zappa handlers.

A transport owns the socket and a `Connection` (who is connected, which rooms it receives); this
module owns everything else: the connection's life (authenticate, open, what moderation's control
messages mean for it, close), frame limits, parsing, validation, rate limiting, the action table,
and turning every failure into an `error` event. Handlers are synchronous (they call the write path,
which talks to the database) and safe to run twice, because API Gateway and clients retry.
"""

from __future__ import annotations

import json
import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any
from urllib.parse import urlparse

from channels.security.websocket import OriginValidator
from django.db import DatabaseError
from django.utils.translation import gettext as _

from chat import (
    access,
    cleaning,
    events,
    metrics,
    moderation,
    presence,
    reads,
    tokens,
    writepath,
)
from chat.conf import settings
from chat.errors import ChatError
from chat.events import Event
from chat.models import Room

log = logging.getLogger(__name__)

Frame = dict[str, Any]


class TokenBucket:
    """`rate` frames a second with bursts of `burst`: a flood is refused, not queued."""

    def __init__(self, rate: float, burst: float, tokens: float | None = None) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = burst if tokens is None else tokens
        self.stamp = time.monotonic()

    def take(self) -> float:
        """Take one token; returns 0 when allowed, else the seconds until one is available."""
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1:
            self.tokens -= 1
            return 0.0
        return round((1 - self.tokens) / self.rate, 3)


class Connection(ABC):
    """One client connection, as a transport keeps it."""

    def __init__(self, user: Any, conn_id: str, default_room: str | None = None) -> None:
        self.user = user
        self.conn_id = conn_id
        self.default_room = default_room or None
        self.bucket = TokenBucket(settings.CHAT_FRAME_RATE, settings.CHAT_FRAME_BURST)

    @abstractmethod
    def join(self, room: Room) -> None:
        """Start receiving the room's live events (before the history read, so nothing slips)."""

    @abstractmethod
    def leave(self, room: Room) -> bool:
        """Stop receiving the room's live events; False if the connection was not subscribed."""


# --- the connection's life ---


def allowed_origins() -> list[str]:
    """The origins a browser's WebSocket may come from, on both transports: ALLOWED_HOSTS (a host
    without a scheme matches any port: "http://127.0.0.1" alone would mean port 80 only and
    refuse a browser on http://127.0.0.1:8000) and CSRF_TRUSTED_ORIGINS."""
    origins = [h for h in settings.ALLOWED_HOSTS if h != "*"]
    return (
        [*origins, *settings.CSRF_TRUSTED_ORIGINS] if "*" not in settings.ALLOWED_HOSTS else ["*"]
    )


def origin_allowed(origin: str | None) -> bool:
    """Browsers always send Origin, and only a foreign page could abuse a user's session, so a
    present Origin must be ours; a missing one (wscat, load generators) is no browser and may
    only use a token. The same matching as Channels' OriginValidator (scheme, host, port;
    ".example.com" for subdomains)."""
    if origin is None:
        return True
    try:
        parsed = urlparse(origin)
    except ValueError:
        return False
    return OriginValidator(None, allowed_origins()).validate_origin(parsed)


def authenticate(token: str | None, session_user: Any = None) -> Any:
    """The user behind a new connection: a WebSocket token, else (Channels only, with a
    same-origin browser) the session's user. Refused: `unauthorized`; site-banned: `forbidden`."""
    user = None
    if token is not None:
        user = tokens.user_for_token(token)
    elif session_user is not None and session_user.is_authenticated and session_user.is_active:
        user = session_user
    if user is None:
        raise ChatError("unauthorized", _("A valid ?token= is required."))
    if access.site_banned(user):  # moderation: a banned user cannot reconnect
        raise ChatError("forbidden", _(events.BANNED))
    return user


def open_connection(conn: Connection) -> list[Event]:
    """The replies of a new connection: its `?room=` subscribed, if it named one."""
    if not conn.default_room:
        return []
    return execute(conn, {"action": "subscribe", "room": conn.default_room})


def close_connection(conn: Connection, rooms: list[tuple[int, str]]) -> None:
    """The connection is gone: it leaves the presence of every room it received."""
    for room_id, slug in rooms:
        presence.leave(room_id, slug, conn.conn_id, conn.user.get_username())


def control_applies(conn: Connection, message: dict[str, Any], receiving: list[int]) -> bool:
    """Whether a control message of the fan-out (chat/fanout.py) concerns this connection,
    which receives the rooms `receiving`."""
    room_id, user_id = message.get("room"), message.get("user")
    if user_id is not None and user_id != conn.user.pk:
        return False
    return room_id is None or room_id in receiving


def banned(conn: Connection, rooms: list[tuple[int, str]], room_id: int | None) -> Event:
    """A ban closes the connection: it leaves every room, and this is the last thing it hears."""
    close_connection(conn, rooms)
    slug = dict(rooms).get(room_id) if room_id is not None else None
    return events.banned(slug)


def recheck(conn: Connection, room_id: int) -> list[Event]:
    """The room turned private or lost members: a user who may no longer read it stops
    receiving it (and leaves its presence); told so, the connection's other rooms go on."""
    room = Room.objects.filter(pk=room_id).first()
    if room is not None and access.may_read(conn.user, room):
        return []
    slug = room.slug if room is not None else ""
    if room is None or not conn.leave(room):
        return []
    presence.leave(room_id, slug, conn.conn_id, conn.user.get_username())
    return [events.no_access(slug)]


# --- parsing ---


def parse(text: str | None, binary: bytes | None = None) -> Frame:
    if text is None:
        size = len(binary or b"")
        if size > settings.CHAT_MAX_FRAME:
            raise ChatError(
                "too_large",
                _("Frames are at most %(limit)s bytes.") % {"limit": settings.CHAT_MAX_FRAME},
            )
        raise ChatError("bad_request", _("Send JSON text frames; binary frames are not accepted."))
    if len(text) > settings.CHAT_MAX_FRAME or len(text.encode()) > settings.CHAT_MAX_FRAME:
        raise ChatError(
            "too_large",
            _("Frames are at most %(limit)s bytes.") % {"limit": settings.CHAT_MAX_FRAME},
        )
    try:
        frame = json.loads(text)
    except (ValueError, RecursionError):
        raise ChatError("bad_request", _("A frame must be a JSON object.")) from None
    if not isinstance(frame, dict):
        raise ChatError("bad_request", _("A frame must be a JSON object."))
    action = frame.get("action")
    if not isinstance(action, str) or not action:
        raise ChatError("bad_request", _("A frame needs an `action`."))
    if action not in ACTIONS:
        raise ChatError("unknown_action", _("Unknown action %(action)r.") % {"action": action[:40]})
    return frame


def _room(conn: Connection, frame: Frame, *, default: bool = False) -> Room:
    slug = frame.get("room")
    if slug is None and default:
        slug = conn.default_room
    if slug is None:
        raise ChatError("bad_request", _("Name the `room`."))
    return access.get_room(conn.user, slug)


def _body(frame: Frame, optional: bool = False) -> Any:
    for name in ("body", "message", "data"):
        if name in frame:
            return frame[name]
    if optional:
        return None
    raise ChatError("bad_request", _("A message needs a `body`."))


# --- actions ---


def subscribe(conn: Connection, frame: Frame) -> list[Event]:
    room = _room(conn, frame)
    after = frame.get("after")
    if after is not None:
        after = cleaning.clean_cursor(after, "after")
    conn.join(room)
    replies: list[Event]
    try:
        if after is None:
            seq = Room.objects.values_list("seq", flat=True).get(pk=room.pk)
            replies = [events.subscribed(room.slug, seq, resumed=False)]
        else:
            caught = reads.catch_up(room, after)
            if caught.resync:
                replies = caught.frames(room.slug)
            else:
                replies = [events.subscribed(room.slug, caught.seq, resumed=True), *caught.changes]
    except Exception:
        # Refused (a cursor ahead of the room) or failed after joining: not subscribed after
        # all, on every transport (a Lambda subscription row is already committed).
        conn.leave(room)
        raise
    # The room's state as of now: a lock, unlock or rename missed while away is not a message, so
    # no cursor replays it; the current state replaces whatever the client had.
    replies.append(events.room_state(room.slug, room.locked, reads.title_for(room, conn.user)))
    # A join that changes the list is announced to everyone, this connection included; otherwise
    # the subscriber still needs the current list once.
    if not presence.join(room.pk, room.slug, conn.conn_id, conn.user.get_username()):
        replies.append(events.presence(room.slug, presence.users(room.pk)))
    return replies


def unsubscribe(conn: Connection, frame: Frame) -> list[Event]:
    slug = cleaning.clean_slug(frame.get("room"), "room")
    room = Room.objects.filter(slug=slug).first()
    if room is not None and conn.leave(room):
        # Receiving it: leaving needs no read access (a user banned or removed since may leave).
        presence.leave(room.pk, room.slug, conn.conn_id, conn.user.get_username())
        return [events.unsubscribed(room.slug)]
    # Not receiving it: the same answers as any other action, so private slugs do not leak.
    return [events.unsubscribed(_room(conn, frame).slug)]


def sendmessage(conn: Connection, frame: Frame) -> list[Event]:
    room = _room(conn, frame, default=True)
    attachment = frame.get("attachment")
    body = _body(frame, optional=attachment is not None)
    posted = writepath.post_message(
        conn.user, room, body, frame.get("client_id"), attachment, frame.get("reply_to")
    )
    return [posted.ack()]


def _change_ack(client_id: str | None, room: Room, changed: Any) -> list[Event]:
    """An `ack` of an edit or delete to a sender that named it with a client_id, so the client
    settles that request exactly (the changed `message` goes to every subscriber anyway)."""
    if client_id is None:
        return []
    return [events.ack(client_id, room.slug, changed.seq, changed.pk)]


def editmessage(conn: Connection, frame: Frame) -> list[Event]:
    # Every field is checked before anything changes: a bad client_id must not follow a stored edit.
    client_id = cleaning.clean_client_id(frame.get("client_id"))
    room = _room(conn, frame)
    changed = writepath.edit_message(conn.user, room, frame.get("id"), _body(frame))
    return _change_ack(client_id, room, changed)


def deletemessage(conn: Connection, frame: Frame) -> list[Event]:
    client_id = cleaning.clean_client_id(frame.get("client_id"))
    room = _room(conn, frame)
    changed = writepath.delete_message(conn.user, room, frame.get("id"))
    return _change_ack(client_id, room, changed)


def report(conn: Connection, frame: Frame) -> list[Event]:
    room = _room(conn, frame)
    client_id = cleaning.clean_client_id(frame.get("client_id"))
    report = moderation.report_message(conn.user, room, frame.get("id"), frame.get("reason"))
    return [events.ack(client_id, room.slug, room.seq, report.message_id)]


def react(conn: Connection, frame: Frame) -> list[Event]:
    # The changed message goes to every subscriber; a client_id asks for an ack as edits do, and
    # makes a retry of the same request a no-op answered the same (chat/writepath.py).
    client_id = cleaning.clean_client_id(frame.get("client_id"))
    room = _room(conn, frame)
    changed = writepath.react(
        conn.user, room, frame.get("id"), frame.get("emoji"), frame.get("on"), client_id
    )
    return _change_ack(client_id, room, changed)


def read(conn: Connection, frame: Frame) -> list[Event]:
    room = _room(conn, frame)
    writepath.mark_read(conn.user, room, frame.get("seq"))
    return []


def typing(conn: Connection, frame: Frame) -> list[Event]:
    room = _room(conn, frame, default=True)
    writepath.send_typing(conn.user, room)
    return []


def ping(conn: Connection, frame: Frame) -> list[Event]:
    return [events.pong()]


def resume_user(conn: Connection, frame: Frame) -> list[Event]:
    """Replay the user's own stream after `after` (a user_seq): `user_resumed`, then every event
    after the cursor in order; or `user_resumed` with reason `resync` when it is too far behind.
    Live events of the stream reach every connection of the user without this; it fills what a
    connection missed while it was away."""
    if "after" not in frame:
        raise ChatError("bad_request", _("Send `after`, the last user_seq you have."))
    after = cleaning.clean_cursor(frame["after"], "after")
    caught = reads.user_catch_up(conn.user, after)
    if caught.resync:
        return [events.user_resumed(caught.seq, resync=True)]
    return [events.user_resumed(caught.seq), *caught.changes]


ACTIONS: dict[str, Callable[[Connection, Frame], list[Event]]] = {
    "subscribe": subscribe,
    "unsubscribe": unsubscribe,
    "sendmessage": sendmessage,
    "editmessage": editmessage,
    "deletemessage": deletemessage,
    "report": report,
    "react": react,
    "read": read,
    "typing": typing,
    "ping": ping,
    "resume_user": resume_user,
}


# --- running a frame ---


def _error(exc: ChatError, frame: Frame | None) -> Event:
    frame = frame or {}
    client_id = frame.get("client_id")
    room = frame.get("room")
    return events.error(
        exc.code,
        exc.detail,
        client_id=cleaning.echo(client_id),
        room=cleaning.echo(room),
        retry_after=exc.retry_after,
    )


def admit(
    conn: Connection, text: str | None, binary: bytes | None = None
) -> tuple[Frame | None, Event | None]:
    """Rate limit and parse a frame without touching the database: (frame, None) or (None, error).

    Parsed first (bounded by the frame limit), so a refusal names the frame's client_id and room
    and the client can match it to what it sent; malformed frames count against the limit too."""
    frame: Frame | None = None
    refused: Event | None = None
    try:
        frame = parse(text, binary)
    except ChatError as exc:
        refused = _error(exc, None)
    wait = conn.bucket.take()
    if wait:
        metrics.RATE_LIMITED.labels("frames").inc()
        return None, _error(
            ChatError("rate_limited", _("Too many frames; slow down."), wait), frame
        )
    return frame, refused


def execute(conn: Connection, frame: Frame) -> list[Event]:
    """Run one parsed frame; every failure becomes an `error` event and nothing half-written stays."""
    try:
        return ACTIONS[frame["action"]](conn, frame)
    except ChatError as exc:
        return [_error(exc, frame)]
    except DatabaseError:
        log.exception("database error in %s", frame["action"])
        return [database_error(frame)]
    except Exception:
        log.exception("unexpected error in %s", frame["action"])
        return [_error(ChatError("server_error", _("Something went wrong on our side.")), frame)]


def database_error(frame: Frame | None) -> Event:
    """Nothing was stored or acknowledged: the client retries, with the same client_id."""
    return _error(ChatError("server_error", _("Try again: the server could not store it.")), frame)


def frame_of(text: Any) -> Frame | None:
    """A frame read with the shared parser for labelling an error reply; None if unreadable."""
    try:
        return parse(text if isinstance(text, str) else None)
    except ChatError:
        return None


def handle(conn: Connection, text: str | None, binary: bytes | None = None) -> list[Event]:
    """admit() then execute(), for transports that run frames synchronously (Lambda)."""
    frame, error = admit(conn, text, binary)
    if frame is None:
        return [error] if error else []
    return execute(conn, frame)
