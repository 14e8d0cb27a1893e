"""The write path: the only code that creates or changes a message, and the shared read path.

Every transport (the JSON API, the pages, both WebSocket transports, long-poll) calls these functions
and none writes messages itself. Each change:

1. checks permission (membership, lock) and validates input, raising ChatError before anything is
   written;
2. takes the room's next `seq` under a row lock on the room, in the same transaction as the write, so
   `seq` order is commit order (an auto-increment id is allocated before commit and is not);
3. publishes the event only after commit (`transaction.on_commit`), so nobody is told about a message
   that could still roll back.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import IntegrityError, connection, transaction
from django.db.models import Count, Q
from django.utils import timezone

from chat import events, fanout
from chat.models import Membership, Message, Room, slug_validator

STATUS = {
    "bad_request": 400,
    "unknown_action": 400,
    "unauthorized": 401,
    "forbidden": 403,
    "not_found": 404,
    "method_not_allowed": 405,
    "too_large": 413,
    "rate_limited": 429,
    "server_error": 500,
}


class ChatError(Exception):
    """A refusal every transport turns into its own error shape (an `error` event or JSON)."""

    def __init__(self, code: str, detail: str, retry_after: float | None = None) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail
        self.retry_after = retry_after

    @property
    def status(self) -> int:
        return STATUS.get(self.code, 400)


# --- permissions and lookups ---


def is_moderator(user: Any, room: Room) -> bool:
    return bool(user.is_active and user.is_staff)


def is_member(user: Any, room: Room) -> bool:
    return Membership.objects.filter(room=room, user=user).exists()


def can_read(user: Any, room: Room) -> bool:
    if not user.is_authenticated or not user.is_active:
        return False
    return not room.private or is_member(user, room) or is_moderator(user, room)


def get_room(user: Any, slug: Any) -> Room:
    """The room the user may read. A private room of someone else is `not_found`, so slugs do not leak."""
    if not user.is_authenticated:
        raise ChatError("unauthorized", "Log in first.")
    if not isinstance(slug, str) or not slug:
        raise ChatError("bad_request", "`room` must be a room slug.")
    room = Room.objects.filter(slug=slug).first()
    if room is None or not can_read(user, room):
        raise ChatError("not_found", f"There is no room {slug!r}.")
    return room


def visible_rooms(user: Any) -> list[dict[str, Any]]:
    """The rooms list with unread counts, in two queries whatever the number of rooms."""
    rooms = list(Room.objects.visible_to(user))
    cursors = dict(
        Membership.objects.filter(user=user, room__in=rooms).values_list("room_id", "read_seq")
    )
    # Unread = messages by others posted after the read cursor; counted per room in one query.
    unread_filter = Q()
    for room in rooms:
        unread_filter |= Q(room_id=room.pk, posted_seq__gt=cursors.get(room.pk, 0))
    counts: dict[int, int] = {}
    if rooms:
        counts = dict(
            Message.objects.filter(unread_filter, deleted=False)
            .exclude(author=user)
            .values("room_id")
            .annotate(n=Count("id"))
            .values_list("room_id", "n")
        )
    return [room.to_dict(unread=counts.get(room.pk, 0)) for room in rooms]


# --- validation ---


def clean_body(body: Any) -> str:
    if not isinstance(body, str):
        raise ChatError("bad_request", "`body` must be a string.")
    if not body.strip():
        raise ChatError("bad_request", "A message cannot be empty.")
    if len(body) > settings.CHAT_MAX_BODY:
        raise ChatError("too_large", f"A message is at most {settings.CHAT_MAX_BODY} characters.")
    return body


def clean_client_id(client_id: Any) -> str | None:
    if client_id is None or client_id == "":
        return None
    if not isinstance(client_id, str) or len(client_id) > 64:
        raise ChatError("bad_request", "`client_id` must be a string of at most 64 characters.")
    return client_id


def clean_seq(value: Any, name: str) -> int:
    """A cursor from a frame or a query string: a non-negative integer."""
    if isinstance(value, bool):
        raise ChatError("bad_request", f"`{name}` must be a non-negative integer.")
    if isinstance(value, str) and value.isdigit():
        value = int(value)
    if not isinstance(value, int) or value < 0 or value > 2**62:
        raise ChatError("bad_request", f"`{name}` must be a non-negative integer.")
    return value


# --- rooms ---


def create_room(user: Any, slug: Any, title: Any, private: Any) -> Room:
    if not isinstance(slug, str) or not isinstance(title, str) or not isinstance(private, bool):
        raise ChatError(
            "bad_request",
            "Send `slug` and `title` as strings and `private` as a boolean.",
        )
    title = title.strip()
    try:
        slug_validator(slug)
    except ValidationError as exc:
        raise ChatError("bad_request", exc.messages[0]) from None
    if not title or len(title) > 100:
        raise ChatError("bad_request", "A title is 1–100 characters.")
    try:
        with transaction.atomic():
            room = Room.objects.create(slug=slug, title=title, private=private, created_by=user)
            Membership.objects.create(room=room, user=user)
    except IntegrityError:
        raise ChatError("bad_request", f"The room {slug!r} already exists.") from None
    return room


def ensure_lobby() -> Room:
    room, _ = Room.objects.get_or_create(slug="lobby", defaults={"title": "Lobby"})
    return room


# --- messages: the write path ---


def _check_can_post(user: Any, room: Room) -> None:
    if not user.is_authenticated or not user.is_active:
        raise ChatError("unauthorized", "Log in first.")
    if room.locked and not is_moderator(user, room):
        raise ChatError("forbidden", "This room is locked.")


def _take_seq(room: Room) -> tuple[int, bool]:
    """Take the room's next seq: one UPDATE that also locks the room row until commit, so the
    change that takes seq n commits before any change can take n + 1. Returns (seq, locked)."""
    with connection.cursor() as cursor:
        cursor.execute(
            f"UPDATE {Room._meta.db_table} SET seq = seq + 1 WHERE id = %s RETURNING seq, locked",
            [room.pk],
        )
        seq, locked = cursor.fetchone()
    room.seq = seq
    return seq, bool(locked)


INSERT_SQL = """
WITH next AS (
    UPDATE {room} SET seq = seq + 1 WHERE id = %(room)s AND (NOT locked OR %(may_post_locked)s)
    RETURNING seq
), joined AS (
    INSERT INTO {membership} (room_id, user_id, joined, read_seq)
    SELECT %(room)s, %(author)s, %(created)s, 0 FROM next WHERE %(join)s
    ON CONFLICT (room_id, user_id) DO NOTHING
)
INSERT INTO {message} (room_id, author_id, body, client_id, created, deleted, posted_seq, seq)
SELECT %(room)s, %(author)s, %(body)s, %(client_id)s, %(created)s, false, next.seq, next.seq
FROM next
RETURNING id, seq
"""


def _insert_in_one_statement(message: Message, may_post_locked: bool, join: bool) -> None:
    """Take the seq, join a public room, and insert the message in one statement (PostgreSQL).

    The UPDATE locks the room row until the statement's transaction commits, so seq order is
    still commit order; but the lock is held for one round trip instead of four. With several
    threads sharing the GIL, each round trip inside a transaction could wait milliseconds for its
    thread to run again, and every writer of the room queued behind that lock.
    """
    message.created = timezone.now()
    sql = INSERT_SQL.format(
        room=Room._meta.db_table,
        membership=Membership._meta.db_table,
        message=Message._meta.db_table,
    )
    params = {
        "join": join,
        "room": message.room_id,
        "may_post_locked": may_post_locked,
        "author": message.author_id,
        "body": message.body,
        "client_id": message.client_id,
        "created": message.created,
    }
    # Inside a caller's transaction, a savepoint keeps a duplicate client_id from breaking it;
    # in autocommit (every transport) the statement is its own transaction.
    with transaction.atomic() if connection.in_atomic_block else nullcontext():
        with connection.cursor() as cursor:
            cursor.execute(sql, params)
            row = cursor.fetchone()
    if row is None:
        raise ChatError("forbidden", "This room is locked.")
    message.pk, message.seq = row
    message.posted_seq = message.seq
    message._state.adding = False


def _publish_on_commit(message: Message) -> None:
    event = message.to_event()
    room_id = message.room_id
    transaction.on_commit(lambda: fanout.publish(room_id, event))


@dataclass
class Posted:
    message: Message
    created: bool

    def ack(self) -> dict[str, Any]:
        m = self.message
        return events.ack(m.client_id, m.room.slug, m.seq, m.pk)


def _existing(user: Any, client_id: str | None) -> Message | None:
    """The message this author already stored under this client_id."""
    if client_id is None:
        return None
    return Message.objects.with_author().filter(author=user, client_id=client_id).first()


def post_message(user: Any, room: Room, body: Any, client_id: Any = None) -> Posted:
    """Post a message; a retry with the same `client_id` returns the original and changes nothing."""
    client_id = clean_client_id(client_id)
    try:
        body = clean_body(body)
        _check_can_post(user, room)
        if room.private and not is_member(user, room) and not is_moderator(user, room):
            raise ChatError("not_found", f"There is no room {room.slug!r}.")
        message = Message(room=room, author=user, body=body, client_id=client_id)
        may_post_locked = is_moderator(user, room)
        if connection.vendor == "postgresql":
            _insert_in_one_statement(message, may_post_locked, join=not room.private)
        else:
            with transaction.atomic():
                seq, locked = _take_seq(room)
                if locked and not may_post_locked:
                    # Locked while we were checking: the rollback gives the seq back.
                    raise ChatError("forbidden", "This room is locked.")
                if not room.private:
                    Membership.objects.get_or_create(room=room, user=user)
                message.posted_seq = message.seq = seq
                message.save(force_insert=True)
    except (ChatError, IntegrityError):
        # A retry of a message already stored gets the original, even if the room was locked
        # since, or if it raced the original (the unique (author, client_id) constraint made our
        # insert, seq included, roll back). Checked only on failure: the usual post pays nothing.
        existing = _existing(user, client_id)
        if existing is None:
            raise
        return Posted(existing, created=False)
    _publish_on_commit(message)
    return Posted(message, created=True)


def _own_message(user: Any, room: Room, message_id: Any) -> Message:
    if isinstance(message_id, bool) or not isinstance(message_id, int):
        raise ChatError("bad_request", "`id` must be a message id.")
    message = Message.objects.with_author().filter(room=room, pk=message_id).first()
    if message is None:
        raise ChatError("not_found", "There is no such message in this room.")
    if message.author_id != user.pk:
        raise ChatError("forbidden", "You can only change your own messages.")
    if message.deleted:
        raise ChatError("forbidden", "This message was deleted.")
    return message


def _change(message: Message, **fields: Any) -> Message:
    """Apply a change to a message under the room lock; it takes the room's next seq."""
    with transaction.atomic():
        seq, _ = _take_seq(message.room)
        current = Message.objects.select_for_update().get(pk=message.pk)
        if current.deleted:
            raise ChatError("forbidden", "This message was deleted.")
        for name, value in fields.items():
            setattr(current, name, value)
        current.seq = seq
        current.save(update_fields=[*fields, "seq"])
        current.room = message.room
        current.author = message.author
        _publish_on_commit(current)
    return current


def edit_message(user: Any, room: Room, message_id: Any, body: Any) -> Message:
    _check_can_post(user, room)
    body = clean_body(body)
    message = _own_message(user, room, message_id)
    window = timedelta(seconds=settings.CHAT_EDIT_WINDOW)
    if timezone.now() - message.created > window:
        raise ChatError("forbidden", "The edit window for this message has passed.")
    if message.body == body:
        return message
    return _change(message, body=body, edited=timezone.now())


def delete_message(user: Any, room: Room, message_id: Any) -> Message:
    _check_can_post(user, room)
    message = _own_message(user, room, message_id)
    # The author's delete removes the text; only the tombstone stays, so resume shows it gone.
    return _change(message, body="", deleted=True)


def mark_read(user: Any, room: Room, seq: Any) -> int:
    """Move the user's read cursor forward (never back); returns the cursor."""
    seq = min(clean_seq(seq, "seq"), room.seq)
    membership, _ = Membership.objects.get_or_create(room=room, user=user)
    Membership.objects.filter(pk=membership.pk, read_seq__lt=seq).update(read_seq=seq)
    return max(seq, membership.read_seq)


def send_typing(user: Any, room: Room) -> None:
    if room.locked and not is_moderator(user, room):
        raise ChatError("forbidden", "This room is locked.")
    fanout.publish(room.pk, events.typing(room.slug, user.get_username()))


# --- the read path: history, resume, long-poll and both WebSocket transports read through here ---


def history(room: Room, before: int | None, limit: int) -> dict[str, Any]:
    page = Message.objects.for_room(room).before(before, limit + 1).events(room.slug)
    has_more = len(page) > limit
    page = page[:limit]
    page.reverse()
    return {"messages": page, "has_more": has_more}


def changes_after(room: Room, after: int) -> tuple[list[dict[str, Any]] | None, int]:
    """Every change after the cursor in seq order, or None when the cursor is too old (resync)."""
    room_seq = Room.objects.values_list("seq", flat=True).get(pk=room.pk)
    if after > room_seq:
        raise ChatError("bad_request", f"The cursor {after} is ahead of the room ({room_seq}).")
    if room_seq - after > settings.CHAT_RESUME_LIMIT:
        return None, room_seq
    if after == room_seq:
        return [], room_seq
    changes = Message.objects.for_room(room).after(after).filter(seq__lte=room_seq)
    return changes.events(room.slug), room_seq
