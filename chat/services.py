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

import logging
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.db import IntegrityError, connection, transaction
from django.db.models import Count, Q
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from chat import events, fanout
from chat.errors import STATUS, ChatError  # noqa: F401 (re-exported)
from chat.models import (
    ApiConnection,
    Attachment,
    Membership,
    Message,
    ModerationAction,
    Report,
    Restriction,
    Room,
    Subscription,
    slug_validator,
)

log = logging.getLogger(__name__)

# --- permissions and lookups ---


# get_room() reads these per-user facts in the room's own query (as annotations), so checking
# membership, moderators, bans and mutes costs no round trip on any transport; called with a room
# from elsewhere, each helper asks the database itself.


def _flag(room: Room, user: Any, name: str, query: Callable[[], bool]) -> bool:
    """A flag that get_room() read with the room, if it read it for this user; else the query.
    (A room fetched for the actor of a moderation action carries the actor's flags, not the
    target's.)"""
    value = getattr(room, name, None) if getattr(room, "_flags_for", None) == user.pk else None
    return query() if value is None else bool(value)


def is_room_moderator(user: Any, room: Room) -> bool:
    """One of the room's own moderators (they act in this room only)."""
    if not user.is_authenticated or not user.is_active:
        return False
    return _flag(room, user, "_room_moderator", lambda: room.moderators.filter(pk=user.pk).exists())


def is_site_moderator(user: Any) -> bool:
    """Site staff who may moderate every room (superusers, or staff with chat.moderate_room).
    Being staff alone is not enough: every room moderator is staff, to reach the admin."""
    if not user.is_authenticated or not user.is_active:
        return False
    return bool(user.is_superuser or (user.is_staff and user.has_perm("chat.moderate_room")))


def is_moderator(user: Any, room: Room) -> bool:
    """May post in a locked room, read it when private, and is not rate limited: site moderators
    and the room's own moderators. Moderation actions need more: see can_moderate."""
    if not user.is_authenticated or not user.is_active:
        return False
    return is_room_moderator(user, room) or is_site_moderator(user)


def can_moderate(user: Any, room: Room | None, perm: str) -> bool:
    """Site staff with the Django permission `chat.<perm>` (or superusers) anywhere; a room's own
    moderators in that room only (room=None is a site-wide action: staff only)."""
    if not user.is_authenticated or not user.is_active:
        return False
    if user.is_superuser or (user.is_staff and user.has_perm(f"chat.{perm}")):
        return True
    return room is not None and is_room_moderator(user, room)


def _require(user: Any, room: Room | None, perm: str) -> None:
    if not can_moderate(user, room, perm):
        raise ChatError("forbidden", "Only this room's moderators may do that.")


def is_member(user: Any, room: Room) -> bool:
    return _flag(
        room, user, "_member", lambda: Membership.objects.filter(room=room, user=user).exists()
    )


def restriction(user: Any, room: Room) -> str | None:
    """ "ban", "mute" or None: the user's strongest active restriction in the room or site-wide."""
    banned = _flag(
        room,
        user,
        "_banned",
        lambda: Restriction.objects.applying_to(user, room).filter(kind=Restriction.BAN).exists(),
    )
    if banned:
        return Restriction.BAN
    muted = _flag(
        room,
        user,
        "_muted",
        lambda: Restriction.objects.applying_to(user, room).filter(kind=Restriction.MUTE).exists(),
    )
    return Restriction.MUTE if muted else None


def site_banned(user: Any) -> bool:
    """Refused at connect on both transports (chat/consumers.py, chat/serverless.py)."""
    return Restriction.objects.applying_to(user, None).filter(kind=Restriction.BAN).exists()


def can_read(user: Any, room: Room) -> bool:
    if not user.is_authenticated or not user.is_active:
        return False
    return not room.private or is_member(user, room) or is_moderator(user, room)


ROOM_WITH_FLAGS_SQL = """
SELECT r.*,
  EXISTS (SELECT 1 FROM {membership} m WHERE m.room_id = r.id AND m.user_id = %(user)s) AS _member,
  EXISTS (SELECT 1 FROM {moderators} rm WHERE rm.room_id = r.id AND rm.user_id = %(user)s)
    AS _room_moderator,
  EXISTS (SELECT 1 FROM {restriction} x WHERE x.user_id = %(user)s AND x.kind = %(ban)s
          AND (x.room_id = r.id OR x.room_id IS NULL) AND (x.until IS NULL OR x.until > %(now)s))
    AS _banned,
  EXISTS (SELECT 1 FROM {restriction} x WHERE x.user_id = %(user)s AND x.kind = %(mute)s
          AND (x.room_id = r.id OR x.room_id IS NULL) AND (x.until IS NULL OR x.until > %(now)s))
    AS _muted
FROM {room} r WHERE r.slug = %(slug)s
"""


def _room_with_user_flags(slug: str, user: Any) -> Room | None:
    """The room and the user's membership, moderator role, ban and mute, in one query.

    Every frame of every transport starts here. Written as SQL because composing the same four
    EXISTS with the ORM cost more Python time per frame than the rest of a post together
    (measured: fan-out fell from about 3,000 to 1,750 deliveries/s)."""
    sql = ROOM_WITH_FLAGS_SQL.format(
        membership=Membership._meta.db_table,
        moderators=Room.moderators.through._meta.db_table,
        restriction=Restriction._meta.db_table,
        room=Room._meta.db_table,
    )
    params = {
        "user": user.pk,
        "slug": slug,
        "ban": Restriction.BAN,
        "mute": Restriction.MUTE,
        "now": timezone.now(),
    }
    rooms = list(Room.objects.raw(sql, params))
    if not rooms:
        return None
    rooms[0]._flags_for = user.pk
    return rooms[0]


def get_room(user: Any, slug: Any) -> Room:
    """The room the user may read. A private room of someone else is `not_found`, so slugs do not leak."""
    if not user.is_authenticated:
        raise ChatError("unauthorized", "Log in first.")
    if not isinstance(slug, str) or not slug:
        raise ChatError("bad_request", "`room` must be a room slug.")
    room = _room_with_user_flags(slug, user)
    if room is None or not can_read(user, room):
        raise ChatError("not_found", f"There is no room {slug!r}.")
    if restriction(user, room) == Restriction.BAN:
        raise ChatError("forbidden", "You are banned from this room.")
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


def clean_body(body: Any, may_be_empty: bool = False) -> str:
    if may_be_empty and body is None:
        return ""
    if not isinstance(body, str):
        raise ChatError("bad_request", "`body` must be a string.")
    if not body.strip() and not may_be_empty:
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


def with_flags(user: Any, room: Room) -> Room:
    """The room with the user's flags: as get_room() returned it, or read in one query (callers
    that hold a Room from elsewhere would otherwise pay a query per flag)."""
    if getattr(room, "_flags_for", None) == user.pk or not user.is_authenticated:
        return room
    flagged = _room_with_user_flags(room.slug, user)
    return flagged if flagged is not None else room


def check_can_post(user: Any, room: Room) -> None:
    if not user.is_authenticated or not user.is_active:
        raise ChatError("unauthorized", "Log in first.")
    kind = restriction(user, room)
    if kind == Restriction.BAN:
        raise ChatError("forbidden", "You are banned from this room.")
    if kind == Restriction.MUTE:
        raise ChatError("forbidden", "You are muted in this room.")
    if room.locked and not is_moderator(user, room):
        raise ChatError("forbidden", "This room is locked.")


RATE_WINDOW = 60.0


def _check_rate(user: Any, room: Room) -> None:
    """The room's messages-per-minute limit (0: none; moderators are exempt). post_message checks
    it once early (a refused post takes no lock) and again under the room lock, where it is exact."""
    limit = room.rate_limit
    if not limit or is_moderator(user, room):
        return
    since = timezone.now() - timedelta(seconds=RATE_WINDOW)
    recent = list(
        Message.objects.filter(author=user, room=room, created__gt=since)
        .order_by("-created")
        .values_list("created", flat=True)[:limit]
    )
    if len(recent) >= limit:
        # Allowed again once the oldest of the last `limit` posts leaves the window.
        wait = (recent[-1] - since).total_seconds()
        raise ChatError(
            "rate_limited",
            f"This room allows {limit} messages a minute.",
            retry_after=round(max(wait, 0.001), 3),
        )


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
    UPDATE {room} SET seq = seq + 1
    WHERE id = %(room)s AND (NOT locked OR %(may_post_locked)s)
        -- A ban or mute that committed after the checks still stops the post.
        AND NOT EXISTS (
            SELECT 1 FROM {restriction} r
            WHERE r.user_id = %(author)s AND (r.room_id = %(room)s OR r.room_id IS NULL)
                AND (r.until IS NULL OR r.until > %(created)s)
        )
    RETURNING seq
), joined AS (
    INSERT INTO {membership} (room_id, user_id, joined, read_seq)
    SELECT %(room)s, %(author)s, %(created)s, 0 FROM next WHERE %(join)s
    ON CONFLICT (room_id, user_id) DO NOTHING
)
INSERT INTO {message}
    (room_id, author_id, body, client_id, created, deleted, posted_seq, seq, attachment_id)
SELECT %(room)s, %(author)s, %(body)s, %(client_id)s, %(created)s, false, next.seq, next.seq,
    %(attachment)s
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
        restriction=Restriction._meta.db_table,
    )
    params = {
        "join": join,
        "room": message.room_id,
        "may_post_locked": may_post_locked,
        "author": message.author_id,
        "body": message.body,
        "client_id": message.client_id,
        "created": message.created,
        "attachment": message.attachment_id,
    }
    # Inside a caller's transaction, a savepoint keeps a duplicate client_id from breaking it;
    # in autocommit (every transport) the statement is its own transaction.
    with transaction.atomic() if connection.in_atomic_block else nullcontext():
        with connection.cursor() as cursor:
            cursor.execute(sql, params)
            row = cursor.fetchone()
    if row is None:
        # Locked, banned or muted since the checks: say which, as the checks would have.
        if Restriction.objects.applying_to(message.author, message.room_id).exists():
            raise ChatError("forbidden", "You may not post in this room.")
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


def post_message(
    user: Any, room: Room, body: Any, client_id: Any = None, attachment: Any = None
) -> Posted:
    """Post a message, with the id of a ready upload as its attachment if given (the body may then
    be empty); a retry with the same `client_id` returns the original and changes nothing."""
    client_id = clean_client_id(client_id)
    try:
        body = clean_body(body, may_be_empty=attachment is not None)
        room = with_flags(user, room)
        check_can_post(user, room)
        if not can_read(user, room):
            raise ChatError("not_found", f"There is no room {room.slug!r}.")
        _check_rate(user, room)
        message = Message(room=room, author=user, body=body, client_id=client_id)
        if attachment is not None:
            from chat import attachments

            # The one-to-one column makes a second message with the same file fail to insert.
            message.attachment = attachments.for_message(user, room, attachment)
        may_post_locked = is_moderator(user, room)
        limited = bool(room.rate_limit) and not may_post_locked
        if connection.vendor == "postgresql" and not limited:
            _insert_in_one_statement(message, may_post_locked, join=not room.private)
        else:
            with transaction.atomic():
                # From here every other post to this room waits for our commit (the room row is
                # locked), so the checks below see every post and restriction committed before.
                seq, locked = _take_seq(room)
                if locked and not may_post_locked:
                    # Locked while we were checking: the rollback gives the seq back.
                    raise ChatError("forbidden", "This room is locked.")
                if Restriction.objects.applying_to(user, room).exists():
                    raise ChatError("forbidden", "You may not post in this room.")
                if limited:
                    # Exact under the lock: two posts racing at the limit cannot both pass.
                    _check_rate(user, room)
                if not room.private:
                    Membership.objects.get_or_create(room=room, user=user)
                message.posted_seq = message.seq = seq
                message.save(force_insert=True)
    except (ChatError, IntegrityError) as error:
        # A retry of a message already stored gets the original, even if the room was locked
        # since, or if it raced the original (the unique (author, client_id) constraint made our
        # insert, seq included, roll back). Checked only on failure: the usual post pays nothing.
        existing = _existing(user, client_id)
        if existing is not None:
            return Posted(existing, created=False)
        if attachment is not None and isinstance(error, IntegrityError):
            raise ChatError("bad_request", "This attachment was already sent.") from None
        raise
    _publish_on_commit(message)
    return Posted(message, created=True)


def _own_message(user: Any, room: Room, message_id: Any) -> Message:
    message = _room_message(room, message_id)
    if message.author_id != user.pk:
        raise ChatError("forbidden", "You can only change your own messages.")
    if message.deleted:
        raise ChatError("forbidden", "This message was deleted.")
    return message


def _room_message(room: Room, message_id: Any) -> Message:
    if isinstance(message_id, bool) or not isinstance(message_id, int):
        raise ChatError("bad_request", "`id` must be a message id.")
    message = Message.objects.with_author().filter(room=room, pk=message_id).first()
    if message is None:
        raise ChatError("not_found", "There is no such message in this room.")
    return message


def _change(message: Message, **fields: Any) -> Message:
    """Apply a change to a message under the room lock; it takes the room's next seq."""
    with transaction.atomic():
        seq, _ = _take_seq(message.room)
        current = Message.objects.select_for_update().get(pk=message.pk)
        if current.deleted:
            raise ChatError("forbidden", "This message was deleted.")
        if current.hidden and fields.get("hidden", True):
            # Hidden by a moderator: only a moderator's restore or erase changes it now.
            raise ChatError("forbidden", "A moderator removed this message.")
        if fields.get("deleted") and current.attachment_id is not None:
            # A deleted message's file goes from storage too, once the delete has committed.
            fields["attachment"] = None
            _delete_attachment_on_commit(current.attachment_id)
        for name, value in fields.items():
            setattr(current, name, value)
        current.seq = seq
        current.save(update_fields=[*fields, "seq"])
        current.room = message.room
        current.author = message.author
        _publish_on_commit(current)
    return current


def _delete_attachment_on_commit(pk: Any) -> None:
    def delete() -> None:
        from chat import attachments

        row = Attachment.objects.filter(pk=pk).first()
        if row is not None:
            attachments.discard(row)

    transaction.on_commit(delete)


def edit_message(user: Any, room: Room, message_id: Any, body: Any) -> Message:
    check_can_post(user, room)
    body = clean_body(body)
    message = _own_message(user, room, message_id)
    window = timedelta(seconds=settings.CHAT_EDIT_WINDOW)
    if timezone.now() - message.created > window:
        raise ChatError("forbidden", "The edit window for this message has passed.")
    if message.body == body:
        return message
    return _change(message, body=body, edited=timezone.now())


def delete_message(user: Any, room: Room, message_id: Any) -> Message:
    check_can_post(user, room)
    message = _own_message(user, room, message_id)
    # The author's delete removes the text; only the tombstone stays, so resume shows it gone.
    return _change(message, body="", deleted=True)


def mark_read(user: Any, room: Room, seq: Any) -> int:
    """Move the user's read cursor forward (never back); returns the cursor. Reading a public
    room joins it, as posting does; reading never makes anyone a member of a private room (a
    moderator reading one stays out of it)."""
    seq = min(clean_seq(seq, "seq"), room.seq)
    if room.private:
        membership = Membership.objects.filter(room=room, user=user).first()
        if membership is None:
            return seq
    else:
        membership, _ = Membership.objects.get_or_create(room=room, user=user)
    Membership.objects.filter(pk=membership.pk, read_seq__lt=seq).update(read_seq=seq)
    return max(seq, membership.read_seq)


def send_typing(user: Any, room: Room) -> None:
    # Whoever may not post (muted, banned, a locked room) has nothing to be typing.
    check_can_post(user, with_flags(user, room))
    fanout.publish(room.pk, events.typing(room.slug, user.get_username()))


# --- the read path: history, resume, long-poll and both WebSocket transports read through here ---


def history(room: Room, before: int | None, limit: int) -> dict[str, Any]:
    page = Message.objects.for_room(room).before(before, limit + 1).events(room.slug)
    has_more = len(page) > limit
    page = page[:limit]
    page.reverse()
    return {"messages": page, "has_more": has_more}


def changes_after(
    room: Room, after: int, room_seq: int | None = None
) -> tuple[list[dict[str, Any]] | None, int]:
    """Every change after the cursor in seq order, or None when the cursor is too old (resync).
    `room_seq` is the room's seq if the caller has just read it; else it is read here."""
    if room_seq is None:
        room_seq = Room.objects.values_list("seq", flat=True).get(pk=room.pk)
    if after > room_seq:
        raise ChatError("bad_request", f"The cursor {after} is ahead of the room ({room_seq}).")
    if room_seq - after > settings.CHAT_RESUME_LIMIT:
        return None, room_seq
    if after == room_seq:
        return [], room_seq
    changes = Message.objects.for_room(room).after(after).filter(seq__lte=room_seq)
    return changes.events(room.slug), room_seq


# --- moderation: every action checks permission, writes its audit row in the same transaction,
# and publishes after commit. Changes to messages go through _change, so they take the room's
# next seq and reach every subscriber live and on resume like any edit.


def _reason(value: Any) -> str:
    if value is None:
        return ""
    if not isinstance(value, str) or len(value) > 500:
        raise ChatError("bad_request", "`reason` must be a string of at most 500 characters.")
    return value.strip()


def audit(
    actor: Any,
    action: str,
    *,
    room: Room | None = None,
    target_user: Any = None,
    message: Message | None = None,
    reason: str = "",
    **detail: Any,
) -> ModerationAction:
    return ModerationAction.objects.create(
        actor=actor if actor is not None and actor.is_authenticated else None,
        action=action,
        room=room,
        target_user=target_user,
        message=message,
        reason=reason,
        detail=detail,
    )


def hide_message(actor: Any, room: Room, message_id: Any, reason: Any = None) -> Message:
    """A moderator's delete: clients are told the message is removed; its text stays for the audit."""
    _require(actor, room, "hide_message")
    reason = _reason(reason)
    message = _room_message(room, message_id)
    if message.hidden:
        return message  # safe to run twice
    with transaction.atomic():
        changed = _change(message, hidden=True)
        audit(actor, "hide", room=room, target_user=message.author, message=changed, reason=reason)
    return changed


def restore_message(actor: Any, room: Room, message_id: Any, reason: Any = None) -> Message:
    _require(actor, room, "hide_message")
    reason = _reason(reason)
    message = _room_message(room, message_id)
    if not message.hidden:
        return message
    with transaction.atomic():
        changed = _change(message, hidden=False)
        audit(
            actor, "restore", room=room, target_user=message.author, message=changed, reason=reason
        )
    return changed


def erase_message(actor: Any, room: Room, message_id: Any, reason: Any = None) -> Message:
    """Delete for good: the text is gone from the database too; a tombstone keeps the seq, so
    every client (live or resuming) learns that it is gone. The audit row keeps who and why."""
    _require(actor, room, "delete_message")
    reason = _reason(reason)
    message = _room_message(room, message_id)
    if message.deleted:
        return message
    with transaction.atomic():
        changed = _change(message, body="", deleted=True, hidden=False)
        audit(actor, "erase", room=room, target_user=message.author, message=changed, reason=reason)
    return changed


def moderate_room(actor: Any, room: Room, changes: dict[str, Any], reason: Any = None) -> Room:
    """Lock, unlock, rename, make private or public, tune the rate limit; a `room` event goes to
    every subscriber after commit. Unknown or mistyped fields change nothing."""
    _require(actor, room, "change_room")
    reason = _reason(reason)
    types = {"locked": bool, "private": bool, "title": str, "rate_limit": int}
    fields: dict[str, Any] = {}
    for name, value in changes.items():
        kind = types.get(name)
        if kind is None or type(value) is not kind:
            raise ChatError("bad_request", f"`{name}` cannot be set that way.")
        fields[name] = value
    if "title" in fields:
        fields["title"] = fields["title"].strip()
        if not fields["title"] or len(fields["title"]) > 100:
            raise ChatError("bad_request", "A title is 1–100 characters.")
    if "rate_limit" in fields and not 0 <= fields["rate_limit"] <= 10_000:
        raise ChatError("bad_request", "`rate_limit` is 0 (none) to 10,000 messages a minute.")
    fields = {k: v for k, v in fields.items() if getattr(room, k) != v}
    if not fields:
        return room
    with transaction.atomic():
        Room.objects.filter(pk=room.pk).update(**fields)
        for name, value in fields.items():
            setattr(room, name, value)
        audit(actor, "room", room=room, reason=reason, **fields)
        event = events.room_state(room.slug, room.locked, room.title)
        room_id = room.pk
        transaction.on_commit(lambda: fanout.publish(room_id, event))
        if fields.get("private"):
            transaction.on_commit(lambda: drop_readers_without_access(room_id))
    return room


NO_ACCESS = "You no longer have access to this room."


def drop_readers_without_access(room_id: int) -> None:
    """A room turned private: connections of users who may no longer read it stop receiving it
    and are told so (an `error` with the room); their other rooms carry on.

    Channels: a `recheck` on the channel layer makes each subscribed consumer check its user
    (chat/consumers.py). Serverless: the subscription rows of those users are deleted here."""
    room = Room.objects.get(pk=room_id)
    _tell_consumers(room, recheck=True)
    subscriptions = Subscription.objects.filter(room_id=room_id).select_related("connection__user")
    lost = [s for s in subscriptions if not may_read(s.connection.user, room)]
    if not lost:
        return
    Subscription.objects.filter(pk__in=[s.pk for s in lost]).delete()
    from chat import serverless

    error = events.error("forbidden", NO_ACCESS, room=room.slug)
    for s in lost:
        target = (
            s.connection.connection_id,
            serverless.endpoint(s.connection.domain, s.connection.stage),
        )
        serverless.send(target, [error])


def may_read(user: Any, room: Room) -> bool:
    """What get_room() allows: read access and no ban (the user's flags in one query)."""
    room = with_flags(user, room)
    return can_read(user, room) and restriction(user, room) != Restriction.BAN


def _clean_until(until: Any) -> Any:
    if until is None or until == "":
        return None
    if isinstance(until, str):
        parsed = parse_datetime(until)
        if parsed is None:
            raise ChatError("bad_request", "`until` must be an ISO 8601 date and time.")
        until = parsed
    if timezone.is_naive(until):
        until = timezone.make_aware(until)
    if until <= timezone.now():
        raise ChatError("bad_request", "`until` must be in the future.")
    return until


def restrict(
    actor: Any,
    user: Any,
    kind: str,
    room: Room | None = None,
    until: Any = None,
    reason: Any = None,
) -> Restriction:
    """Ban or mute a user in a room, or site-wide with room=None (site staff only). A ban closes
    the user's open connections on both transports once committed."""
    if kind not in (Restriction.BAN, Restriction.MUTE):
        raise ChatError("bad_request", "`kind` is ban or mute.")
    _require(actor, room, "add_restriction")
    if user.pk == actor.pk:
        raise ChatError("bad_request", "You cannot restrict yourself.")
    if user.is_superuser or (room is not None and is_room_moderator(user, room)):
        raise ChatError("forbidden", "Moderators cannot be restricted in their own rooms.")
    reason, until = _reason(reason), _clean_until(until)
    with transaction.atomic():
        row = Restriction.objects.create(
            kind=kind, user=user, room=room, until=until, reason=reason, created_by=actor
        )
        audit(
            actor,
            kind,
            room=room,
            target_user=user,
            reason=reason,
            until=until.isoformat() if until else None,
        )
        if kind == Restriction.BAN:
            user_id, room_id = user.pk, room.pk if room else None
            transaction.on_commit(lambda: close_connections(user_id, room_id))
    return row


def lift(actor: Any, row: Restriction, reason: Any = None) -> None:
    _require(actor, row.room, "delete_restriction")
    reason = _reason(reason)
    with transaction.atomic():
        audit(
            actor,
            f"lift_{row.kind}",
            room=row.room,
            target_user=row.user,
            reason=reason,
            restriction=row.pk,
        )
        row.delete()


def deactivated(user: Any) -> None:
    """A Django user made inactive (admin, shell): the same effect as a site ban."""
    audit(None, "deactivate", target_user=user)
    user_id = user.pk
    transaction.on_commit(lambda: close_connections(user_id, None))


def close_connections(user_id: int, room_id: int | None) -> None:
    """Close a banned user's open sockets, in one room or everywhere (room_id None).

    Channels: a `room` event (the room's unchanged state, harmless to everyone else) carrying
    `kick` on the channel layer; the user's consumers close on it (chat/consumers.py). Serverless:
    the user's API Gateway connections are deleted through @connections (chat/serverless.py).
    New connections are refused at connect (site bans) or at subscribe (room bans)."""
    rooms = Room.objects.all() if room_id is None else Room.objects.filter(pk=room_id)
    if fanout.uses_channel_layer():
        for room in rooms.only("pk", "slug", "locked", "title"):
            _tell_consumers(room, kick=user_id)
    rows = ApiConnection.objects.filter(user_id=user_id)
    if room_id is not None:
        rows = rows.filter(subscriptions__room_id=room_id)
    if rows.exists():
        # Imported here: only a serverless deployment has rows, and this pulls in boto3 and Zappa.
        from chat import serverless

        serverless.close_connections(rows)


def _tell_consumers(room: Room, **control: Any) -> None:
    """A control message to the Channels consumers of a room (chat/consumers.py acts on `kick`
    and `recheck`): the room's unchanged state, harmless to anyone it does not concern."""
    if not fanout.uses_channel_layer():
        return
    event = events.room_state(room.slug, room.locked, room.title)
    message = {**fanout.layer_message(room.pk, event, fanout.encode(event)), **control}
    try:
        fanout.layer_send(room.pk, message)
    except Exception:
        log.exception("telling the consumers of room %s %s failed", room.pk, control)


def report_message(user: Any, room: Room, message_id: Any, reason: Any) -> Report:
    """Report a message to the moderators; reporting it again changes nothing."""
    reason = _reason(reason)
    if not reason:
        raise ChatError("bad_request", "Say why you report it (`reason`).")
    if restriction(user, room) == Restriction.BAN:
        raise ChatError("forbidden", "You are banned from this room.")
    message = _room_message(room, message_id)
    report, _ = Report.objects.get_or_create(
        message=message, reporter=user, defaults={"reason": reason}
    )
    return report


def resolve_reports(actor: Any, reports: Any) -> int:
    done = 0
    for report in reports.select_related("message__room"):
        room = report.message.room
        _require(actor, room, "change_report")
        with transaction.atomic():
            if Report.objects.filter(pk=report.pk, resolved=False).update(resolved=True):
                audit(actor, "resolve_report", room=room, message=report.message, report=report.pk)
                done += 1
    return done


def find_user(value: Any) -> Any:
    if not isinstance(value, str) or not value:
        raise ChatError("bad_request", "`user` must be a username.")
    user = get_user_model().objects.filter(username=value).first()
    if user is None:
        raise ChatError("not_found", f"There is no user {value!r}.")
    return user
