"""Constructors for the protocol's events (shared/protocol.md): the one wire format of every transport.

`message` events come from `Message.to_event()`; everything else is built here so that no transport
spells an event by hand.
"""

from typing import Any

from django.utils.translation import gettext_noop

Event = dict[str, Any]


def subscribed(room: str, seq: int, resumed: bool, reason: str | None = None) -> Event:
    event: Event = {"type": "subscribed", "room": room, "seq": seq, "resumed": resumed}
    if reason:
        event["reason"] = reason
    return event


def unsubscribed(room: str) -> Event:
    return {"type": "unsubscribed", "room": room}


def ack(client_id: str | None, room: str, seq: int, message_id: int) -> Event:
    return {
        "type": "ack",
        "client_id": client_id,
        "room": room,
        "seq": seq,
        "id": message_id,
    }


def typing(room: str, user: str) -> Event:
    return {"type": "typing", "room": room, "user": user}


def presence(room: str, users: list[str]) -> Event:
    return {"type": "presence", "room": room, "users": users}


def room_state(room: str, locked: bool, title: str) -> Event:
    return {"type": "room", "room": room, "locked": locked, "title": title}


def notify(
    user_seq: int,
    kind: str,
    room: str | None,
    unread: int,
    mentions: int,
    message: Event | None = None,
    removed: bool = False,
) -> Event:
    """An event of the user's stream (chat/notify.py). `room` is None when the user may no longer
    read the room it was about: the event keeps its place in the stream and says nothing more.
    `removed`: a `left` that the room's owner or a moderator decided."""
    event: Event = {"type": "notify", "user_seq": user_seq, "kind": kind, "room": room}
    if removed:
        event["removed"] = True
    if room is not None:
        event["unread"] = unread
        event["mentions"] = mentions
        if message is not None:
            event["message"] = message
    return event


def user_resumed(user_seq: int, resync: bool = False) -> Event:
    """The answer to `resume_user`: the stream is at `user_seq` (the replay came before it), or,
    with `resync`, too far behind to replay: read the rooms list again and go on from here."""
    event: Event = {"type": "user_resumed", "user_seq": user_seq, "resumed": not resync}
    if resync:
        event["reason"] = "resync"
    return event


def pong() -> Event:
    return {"type": "pong"}


def error(
    code: str,
    detail: str,
    *,
    client_id: str | None = None,
    room: str | None = None,
    retry_after: float | None = None,
    fatal: bool = False,
) -> Event:
    event: Event = {"type": "error", "code": code, "detail": detail}
    if client_id is not None:
        event["client_id"] = client_id
    if room is not None:
        event["room"] = room
    if retry_after is not None:
        event["retry_after"] = retry_after
    if fatal:
        event["fatal"] = True
    return event


# Told to connections that moderation removes, on every transport (the detail is what people read).
# Marked for the catalogs only: a fanned-out event is built once for every reader, so it stays in
# the default language; a refusal raised for one request translates it (protocol.py).
BANNED = gettext_noop("You are banned.")
NO_ACCESS = gettext_noop("You no longer have access to this room.")


def banned(room: str | None = None) -> Event:
    """A ban closed this connection: the last event it receives."""
    return error("forbidden", BANNED, room=room, fatal=True)


def no_access(room: str) -> Event:
    """The connection stopped receiving a room its user may no longer read; its other rooms go on."""
    return error("forbidden", NO_ACCESS, room=room)
