"""Rooms, memberships and messages.

`Room.seq` is the room's change counter: every change to one of its messages takes the next value
under a lock on the room row (see chat/writepath.py), so `seq` order is commit order and a reader
asking for `seq > n` never skips a change that commits later.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from django.contrib.auth import get_user_model
from django.core.validators import RegexValidator
from django.db import models
from django.db.models import Q
from django.utils import timezone

from chat.conf import settings

slug_validator = RegexValidator(
    r"^[a-z0-9](?:[a-z0-9-]{0,48}[a-z0-9])?$",
    "Use 1–50 lowercase letters, digits and dashes, not starting or ending with a dash.",
)


# A room's description: a few lines, as Slack's channel purpose (chat/moderation.py cleans it).
DESCRIPTION_MAX = 500


class RoomQuerySet(models.QuerySet["Room"]):
    def visible_to(self, user: Any) -> RoomQuerySet:
        """Public rooms and the private rooms the user is a member of."""
        if not user.is_authenticated:
            return self.none()
        return self.filter(Q(private=False) | Q(memberships__user=user)).distinct()


class Room(models.Model):
    ROOM = "room"
    DM = "dm"
    KINDS = [(ROOM, "room"), (DM, "direct messages")]

    slug = models.SlugField(max_length=50, unique=True, validators=[slug_validator])
    # A direct-message conversation is a private room whose members are fixed at creation.
    kind = models.CharField(
        max_length=4, choices=KINDS, default=ROOM, db_default=ROOM, editable=False
    )
    # The conversation's member set (a hash of the sorted user ids, chat/dms.py): unique, so
    # two people opening "the same" conversation at the same moment get one room.
    dm_key = models.CharField(max_length=64, null=True, blank=True, unique=True, editable=False)
    title = models.CharField(max_length=100)
    # What the room is for: shown in its header and in the directory (chat/rooms.py).
    description = models.CharField(
        max_length=DESCRIPTION_MAX, blank=True, default="", db_default=""
    )
    private = models.BooleanField(default=False)
    locked = models.BooleanField(default=False)
    seq = models.BigIntegerField(default=0, editable=False)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
    )
    created = models.DateTimeField(auto_now_add=True)
    # Per-room moderators act only in their rooms; site staff act everywhere (chat/access.py).
    moderators = models.ManyToManyField(
        settings.AUTH_USER_MODEL, blank=True, related_name="moderated_rooms"
    )
    # Messages per minute per user; 0 is no limit. Tuned per room by its moderators.
    rate_limit = models.PositiveIntegerField(default=0)

    objects = RoomQuerySet.as_manager()

    class Meta:
        ordering = ["slug"]
        permissions = [("moderate_room", "Can moderate every room")]

    def __str__(self) -> str:
        return self.slug

    @property
    def group(self) -> str:
        # Built from the id, never from user text: group names have a restricted alphabet.
        return f"room.{self.pk}"

    @property
    def is_dm(self) -> bool:
        return self.kind == Room.DM

    def to_dict(self, unread: int | None = None, **extra: Any) -> dict[str, Any]:
        """The room object of the API; `extra` adds what depends on the reader (a DM's title and
        members, mention counts, the notification level)."""
        data: dict[str, Any] = {
            "slug": self.slug,
            "title": self.title,
            "description": self.description,
            "kind": self.kind,
            "private": self.private,
            "locked": self.locked,
            "seq": self.seq,
        }
        if unread is not None:
            data["unread"] = unread
        data.update(extra)
        return data


class Membership(models.Model):
    room = models.ForeignKey(Room, on_delete=models.CASCADE, related_name="memberships")
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="memberships"
    )
    joined = models.DateTimeField(auto_now_add=True)
    # The user's read cursor: only ever moves forward, so every device agrees on `unread`.
    read_seq = models.BigIntegerField(default=0)
    # Which messages raise notify events (chat/notify.py); empty: the room kind's default.
    ALL = "all"
    MENTIONS = "mentions"
    NONE = "none"
    LEVELS = [(ALL, "every message"), (MENTIONS, "mentions only"), (NONE, "nothing")]
    notify_level = models.CharField(
        max_length=8, choices=LEVELS, blank=True, default="", db_default=""
    )
    # The room seq of the last notify event about this room on the user's stream: while it is
    # past read_seq the user has been told, and further messages raise nothing (chat/notify.py).
    notified_seq = models.BigIntegerField(default=0, db_default=0, editable=False)

    class Meta:
        constraints = [
            # Serves the membership check on every read and write (room, user).
            models.UniqueConstraint(fields=["room", "user"], name="membership_room_user"),
        ]

    def __str__(self) -> str:
        return f"{self.user} in {self.room}"

    def level(self, room: Room) -> str:
        return self.notify_level or (Membership.ALL if room.is_dm else Membership.MENTIONS)


EVENT_FIELDS = (
    "id",
    "room_id",
    "author_id",
    "body",
    "client_id",
    "created",
    "edited",
    "deleted",
    "hidden",
    "posted_seq",
    "seq",
    "attachment_id",
    "mentions",
    "html",
    "reactions",
    "reply_to_id",
)


class MessageQuerySet(models.QuerySet["Message"]):
    def for_room(self, room: Room | int) -> MessageQuerySet:
        return self.filter(room=room)

    def after(self, seq: int) -> MessageQuerySet:
        """Every change after the cursor, in commit order (the resume read)."""
        return self.filter(seq__gt=seq).order_by("seq")

    def before(self, seq: int | None, limit: int) -> MessageQuerySet:
        """A history page: up to `limit` messages posted before `seq`, newest first."""
        qs = self if seq is None else self.filter(posted_seq__lt=seq)
        return qs.order_by("-posted_seq")[:limit]

    def events(self, room_slug: str) -> list[dict[str, Any]]:
        """The `message` events of these rows, read as tuples: history pages and resume reads
        serialise hundreds of messages, and building model instances was most of their time."""
        rows = self.values_list(username_lookup("author"), *event_columns())
        return [message_event(room_slug, *row) for row in rows]

    def with_author(self) -> MessageQuerySet:
        # Only what to_event() reads: building whole users and rooms was most of a page's time.
        return self.select_related("author", "room", "attachment", "reply_to__author").only(
            *EVENT_FIELDS,
            "room__slug",
            username_lookup("author"),
            "reply_to__body",
            "reply_to__posted_seq",
            "reply_to__deleted",
            "reply_to__hidden",
            username_lookup("reply_to__author"),
            *(f"attachment__{name}" for name in ATTACHMENT_COLUMNS),
        )


class Attachment(models.Model):
    """One uploaded file, stored through STORAGES["default"] (the file system, or S3).

    An upload is `pending` until its content has been checked (chat/attachments.py), then `ready`;
    only a ready attachment of the same uploader and room can go into a message, and only once.
    The id is random, but it is not what protects the file: every download checks the room."""

    PENDING = "pending"
    READY = "ready"
    STATES = [(PENDING, "pending"), (READY, "ready")]

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    room = models.ForeignKey(Room, on_delete=models.CASCADE, related_name="attachments")
    uploader = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="attachments"
    )
    name = models.CharField(max_length=255)
    size = models.PositiveBigIntegerField()
    content_type = models.CharField(max_length=100)
    # The storage key, fixed before the upload (S3 presigned POSTs need it up front).
    file = models.FileField(max_length=300)
    thumbnail = models.FileField(max_length=300, blank=True)
    width = models.PositiveIntegerField(null=True, blank=True)
    height = models.PositiveIntegerField(null=True, blank=True)
    status = models.CharField(max_length=8, choices=STATES, default=PENDING)
    created = models.DateTimeField(auto_now_add=True)

    class Meta:
        indexes = [
            # Serves the daily quota: this uploader's attachments since a time.
            models.Index(fields=["uploader", "created"], name="attachment_uploader_created"),
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.size} bytes) in {self.room_id}"

    def columns(self) -> list[Any]:
        """ATTACHMENT_COLUMNS of this row, as values_list reads them for events."""
        return [getattr(self, name) for name in ATTACHMENT_COLUMNS]

    def to_event(self) -> dict[str, Any]:
        """What `message` events carry as `attachment` (the upload API answers it too)."""
        return attachment_event(self.pk, *self.columns())


class Message(models.Model):
    room = models.ForeignKey(Room, on_delete=models.CASCADE, related_name="messages")
    author = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="messages"
    )
    body = models.TextField()
    client_id = models.CharField(max_length=64, null=True, blank=True)
    created = models.DateTimeField(auto_now_add=True)
    edited = models.DateTimeField(null=True, blank=True)
    deleted = models.BooleanField(default=False)
    # Hidden by a moderator: clients are told it is removed (as `deleted`), the text stays for the
    # audit and comes back on restore.
    hidden = models.BooleanField(default=False, db_default=False)
    # The room seq at which the message was posted (fixed: history pages are ordered by it) and the
    # room seq of its latest change (moves on every edit or delete: resume reads follow it).
    posted_seq = models.BigIntegerField()
    seq = models.BigIntegerField()
    attachment = models.OneToOneField(
        Attachment, null=True, blank=True, on_delete=models.SET_NULL, related_name="message"
    )
    # The usernames the body mentions who may read the room, and "room" for @room
    # (chat/mentions.py); kept with the message so history shows them as the live event did.
    mentions = models.JSONField(default=list, blank=True)
    # The body drawn as sanitized HTML (chat/formatting.py), rendered when the body is written:
    # events are serialised far more often than bodies change.
    html = models.TextField(blank=True, default="", db_default="")
    # The message this one answers, in the same room; its excerpt is read with the event, so a
    # parent deleted or hidden since shows as such.
    reply_to = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="replies"
    )
    # The summary of the Reaction rows, `[{"emoji", "count", "users"}]` in first-reacted order,
    # rewritten under the room lock with every toggle: events read it without a join or a count.
    reactions = models.JSONField(default=list, blank=True)

    objects = MessageQuerySet.as_manager()

    class Meta:
        constraints = [
            # Serves `after(seq)`: the resume read, long-poll and gap fills (room, seq > n).
            models.UniqueConstraint(fields=["room", "seq"], name="message_room_seq"),
            # Serves `before(seq, limit)`: history pages and the latest page (room, posted_seq < n).
            models.UniqueConstraint(fields=["room", "posted_seq"], name="message_room_posted_seq"),
            # Serves idempotent retries: the same room, author and client_id is the same message
            # (scoped to the room: a client that numbers its messages per room loses none).
            models.UniqueConstraint(
                fields=["room", "author", "client_id"],
                condition=Q(client_id__isnull=False),
                name="message_room_author_client_id",
            ),
        ]
        indexes = [
            # Serves the per-room rate limit: this author's posts in this room in the last minute.
            models.Index(fields=["author", "room", "created"], name="message_author_room_created"),
        ]
        permissions = [("hide_message", "Can hide and restore messages")]

    def __str__(self) -> str:
        return f"{self.room}#{self.posted_seq} by {self.author_id}"

    def to_event(self) -> dict[str, Any]:
        """The `message` event: the full current state of this message, the one wire format."""
        values = [getattr(self, name) for name in MESSAGE_COLUMNS]
        parent = self.reply_to if self.reply_to_id else None
        reply = (
            (
                parent.pk,
                parent.posted_seq,
                parent.author.get_username(),
                parent.body,
                parent.deleted,
                parent.hidden,
            )
            if parent is not None
            else (None,) * len(REPLY_COLUMNS)
        )
        files = self.attachment.columns() if self.attachment_id else ()
        return message_event(self.room.slug, self.author.get_username(), *values, *reply, *files)


class Reaction(models.Model):
    """One user's reaction to one message: the source of truth behind Message.reactions."""

    message = models.ForeignKey(Message, on_delete=models.CASCADE, related_name="reaction_rows")
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="reactions"
    )
    emoji = models.CharField(max_length=32)
    created = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            # Serves the toggle (does this user have this reaction?) and makes a double add fail.
            models.UniqueConstraint(fields=["message", "user", "emoji"], name="reaction_once"),
        ]

    def __str__(self) -> str:
        return f"{self.emoji} by {self.user_id} on {self.message_id}"


class ReactionKey(models.Model):
    """The client_id of a user's last `react` request for one emoji of one message, so that a
    retry after a lost answer is recognised and changes nothing.

    In the database, written in the toggle's own transaction: the key exists exactly when the
    change committed, on every process and Lambda container (a cache entry written after the
    commit could be lost, one written before could outlive a rollback, and without Redis the
    cache is per process). One row per (message, user, emoji), so it stays as small as the
    reactions themselves; a toggle of another emoji never forgets this one's key."""

    message = models.ForeignKey(Message, on_delete=models.CASCADE, related_name="reaction_keys")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    emoji = models.CharField(max_length=32)
    client_id = models.CharField(max_length=64)
    # What was asked: true or false for an explicit state, null for a toggle.
    on = models.BooleanField(null=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["message", "user", "emoji"], name="reaction_key_once"),
        ]

    def __str__(self) -> str:
        return f"{self.client_id} by {self.user_id} on {self.message_id}"


MESSAGE_COLUMNS = (
    "id",
    "seq",
    "body",
    "created",
    "client_id",
    "edited",
    "deleted",
    "hidden",
    "mentions",
    "html",
    "reactions",
    "attachment_id",
)
# "reply_to__author" stands for its name, as event_columns() reads it.
REPLY_COLUMNS = (
    "reply_to_id",
    "reply_to__posted_seq",
    "reply_to__author",
    "reply_to__body",
    "reply_to__deleted",
    "reply_to__hidden",
)
ATTACHMENT_COLUMNS = ("name", "size", "content_type", "thumbnail", "width", "height")


def username_lookup(relation: str) -> str:
    """The lookup of a related user's name: `relation__<USERNAME_FIELD>` of the site's user model
    (an email, say, rather than Django's `username`). Built when a query is, since the user model
    is not loaded yet when this module is."""
    return f"{relation}__{get_user_model().USERNAME_FIELD}"


def event_columns() -> tuple[str, ...]:
    """A message event's columns in one row, after its author's name: MessageQuerySet.events
    reads them with values_list."""
    return (
        *MESSAGE_COLUMNS,
        *(username_lookup(c) if c == "reply_to__author" else c for c in REPLY_COLUMNS),
        *(f"attachment__{name}" for name in ATTACHMENT_COLUMNS),
    )


EXCERPT_LENGTH = 100
# What a reply shows of a parent whose text is gone: the two are told apart, never the text.
DELETED_EXCERPT = "message deleted"
HIDDEN_EXCERPT = "removed by a moderator"


def reply_event(
    pk: int | None,
    seq: int | None,
    author: str | None,
    body: str | None,
    deleted: bool,
    hidden: bool,
) -> dict[str, Any] | None:
    """A reply's `reply_to`: the parent's id, the seq it was posted at (fixed: a client opens the
    room `?around=` it when the parent is not loaded), author and excerpt."""
    if pk is None:
        return None
    if hidden:
        excerpt = HIDDEN_EXCERPT
    elif deleted:
        excerpt = DELETED_EXCERPT
    else:
        text = " ".join((body or "").split())
        excerpt = text if len(text) <= EXCERPT_LENGTH else text[: EXCERPT_LENGTH - 1] + "…"
    return {
        "id": pk,
        "seq": seq,
        "author": author,
        "excerpt": excerpt,
        "deleted": bool(deleted or hidden),
    }


def attachment_url(pk: Any, thumbnail: bool = False) -> str:
    """The permission-checked address of an attachment (or its thumbnail), relative to the site.
    Events carry it; the download view checks the room and then serves the file or redirects to a
    short-lived signed S3 URL, so an event read days later still holds a working address."""
    from django.urls import reverse

    return reverse(
        "chat:api-attachment-thumbnail" if thumbnail else "chat:api-attachment", args=[pk]
    )


def attachment_event(
    pk: Any,
    name: str,
    size: int,
    content_type: str,
    thumbnail: Any,  # its storage key (a name or a FieldFile): empty when there is none
    width: int | None,
    height: int | None,
) -> dict[str, Any]:
    return {
        "id": str(pk),
        "name": name,
        "size": size,
        "content_type": content_type,
        "url": attachment_url(pk),
        "thumbnail": attachment_url(pk, thumbnail=True) if thumbnail else None,
        "width": width,
        "height": height,
    }


def message_event(
    room: str,
    author: str,
    pk: int,
    seq: int,
    body: str,
    created: datetime,
    client_id: str | None,
    edited: datetime | None,
    deleted: bool,
    hidden: bool,
    mentions: list[str] | None,
    html: str,
    reactions: list[dict[str, Any]] | None,
    attachment_id: Any,
    reply_id: int | None,
    reply_seq: int | None,
    reply_author: str | None,
    reply_body: str | None,
    reply_deleted: bool,
    reply_hidden: bool,
    *attachment: Any,
) -> dict[str, Any]:
    """The one serializer of `message` events (Message.to_event and MessageQuerySet.events).

    A message hidden by a moderator goes out as a deleted one, with `hidden` to say who removed
    it: neither its text, its file nor its reactions leave the server."""
    deleted = deleted or hidden
    if not deleted and body and not html:
        # Written before bodies were rendered on write (migration 0009 adds the column empty).
        from chat.formatting import render

        html = render(body, mentions or ())
    return {
        "type": "message",
        "room": room,
        "seq": seq,
        "id": pk,
        "author": author,
        "body": "" if deleted else body,
        "created": created.isoformat(),
        "client_id": client_id,
        "attachment": (
            attachment_event(attachment_id, *attachment)
            if attachment_id is not None and not deleted
            else None
        ),
        "edited": edited is not None,
        "deleted": deleted,
        "hidden": hidden,
        "mentions": [] if deleted else list(mentions or ()),
        "html": "" if deleted else html,
        "reply_to": reply_event(
            reply_id, reply_seq, reply_author, reply_body, reply_deleted, reply_hidden
        ),
        "reactions": [] if deleted else list(reactions or ()),
    }


# --- The serverless transport (chat/serverless.py): API Gateway holds the sockets, these rows say
# who is behind each one and which rooms it receives. Rows can outlive their socket ($disconnect is
# not guaranteed): a 410 from @connections deletes one, and expiry sweeps the rest.


class ApiConnection(models.Model):
    # API Gateway's connectionId (e.g. "L0SM9cOFvHcCIhw="), unique per API.
    connection_id = models.CharField(max_length=128, unique=True)
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_connections"
    )
    # Where its @connections endpoint is: https://{domain}/{stage} unless a setting says otherwise.
    domain = models.CharField(max_length=255)
    stage = models.CharField(max_length=128)
    default_room = models.CharField(max_length=50, blank=True)
    connected_at = models.DateTimeField()
    last_seen = models.DateTimeField()
    # The frame rate limiter's state, kept between invocations (protocol.TokenBucket).
    bucket_tokens = models.FloatField(null=True, blank=True)
    bucket_at = models.FloatField(null=True, blank=True)

    class Meta:
        indexes = [
            # Serves the expiry sweep (last_seen older than the idle timeout).
            models.Index(fields=["last_seen"], name="apiconnection_last_seen"),
        ]

    def __str__(self) -> str:
        return f"{self.connection_id} ({self.user_id})"


class Subscription(models.Model):
    connection = models.ForeignKey(
        ApiConnection, on_delete=models.CASCADE, related_name="subscriptions"
    )
    room = models.ForeignKey(Room, on_delete=models.CASCADE, related_name="api_subscriptions")
    created = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            # Serves subscribe's idempotency (connection, room); the fan-out read uses the
            # index below.
            models.UniqueConstraint(fields=["connection", "room"], name="subscription_conn_room"),
        ]
        indexes = [
            # Serves the fan-out read: every connection subscribed to a room.
            models.Index(fields=["room", "connection"], name="subscription_room_conn"),
        ]

    def __str__(self) -> str:
        return f"{self.connection_id} in {self.room_id}"


class DeliveryClaim(models.Model):
    """One publication's post to one connection, claimed by the asynchronous fan-out batch about
    to make it (chat/apigateway.py). Lambda retries a failed asynchronous invocation up to twice:
    the retry claims again, and a connection already claimed is not posted to a second time. The
    sweep deletes claims older than any connection they could name."""

    # One per publication, shared by all its batches and their retries.
    delivery = models.CharField(max_length=36)
    connection_id = models.CharField(max_length=128)
    claimed_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["delivery", "connection_id"], name="deliveryclaim_once"
            ),
        ]
        indexes = [models.Index(fields=["claimed_at"], name="deliveryclaim_claimed_at")]

    def __str__(self) -> str:
        return f"{self.delivery} to {self.connection_id}"


# --- moderation: restrictions, reports and the audit log ---


class RestrictionQuerySet(models.QuerySet["Restriction"]):
    def active(self) -> RestrictionQuerySet:
        return self.filter(Q(until__isnull=True) | Q(until__gt=timezone.now()))

    def applying_to(self, user: Any, room: Room | int | None) -> RestrictionQuerySet:
        """The user's active restrictions in this room and site-wide."""
        where = Q(room__isnull=True) if room is None else Q(room=room) | Q(room__isnull=True)
        return self.active().filter(where, user=user)


class Restriction(models.Model):
    """A ban (may not connect, read or post) or a mute (may read, may not post), in one room or,
    without a room, on the whole site; until a time, or until lifted (the row is deleted)."""

    BAN = "ban"
    MUTE = "mute"
    KINDS = [(BAN, "ban"), (MUTE, "mute")]

    kind = models.CharField(max_length=8, choices=KINDS)
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="restrictions"
    )
    room = models.ForeignKey(
        Room,
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="restrictions",
        help_text="Empty for the whole site.",
    )
    until = models.DateTimeField(null=True, blank=True, help_text="Empty for no end.")
    reason = models.CharField(max_length=500, blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+"
    )
    created = models.DateTimeField(auto_now_add=True)

    objects = RestrictionQuerySet.as_manager()

    class Meta:
        indexes = [
            # Serves the ban/mute check on every room lookup and post (user, room or site).
            models.Index(fields=["user", "room"], name="restriction_user_room"),
        ]

    def __str__(self) -> str:
        return f"{self.kind} of {self.user} in {self.room or 'the site'}"


class Report(models.Model):
    message = models.ForeignKey(Message, on_delete=models.CASCADE, related_name="reports")
    reporter = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="reports"
    )
    reason = models.CharField(max_length=500)
    created = models.DateTimeField(auto_now_add=True)
    resolved = models.BooleanField(default=False)

    class Meta:
        constraints = [
            # One report per reporter and message: a retried report changes nothing.
            models.UniqueConstraint(fields=["message", "reporter"], name="report_message_reporter"),
        ]

    def __str__(self) -> str:
        return f"report of {self.message_id} by {self.reporter_id}"


class ModerationAction(models.Model):
    """The audit log: one row per moderation action, written by chat/moderation.py in the same
    transaction as the action, never changed afterwards."""

    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+"
    )
    action = models.CharField(max_length=32)
    room = models.ForeignKey(
        Room, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    target_user = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
    )
    message = models.ForeignKey(
        Message, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    reason = models.CharField(max_length=500, blank=True)
    detail = models.JSONField(default=dict, blank=True)
    created = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created", "-id"]
        indexes = [
            # Serves the dashboard's latest actions.
            models.Index(fields=["-created"], name="moderationaction_created"),
        ]

    def __str__(self) -> str:
        return f"{self.action} by {self.actor_id} at {self.created:%Y-%m-%d %H:%M}"


class LoggedOutSession(models.Model):
    """A session that logged out: WebSocket tokens made in it are refused from then on (they name a
    hash of their session). Rows older than the token lifetime can go: such tokens expired anyway."""

    key_hash = models.CharField(max_length=64, primary_key=True)
    at = models.DateTimeField(auto_now_add=True, db_index=True)

    def __str__(self) -> str:
        return f"session logged out at {self.at:%Y-%m-%d %H:%M}"


# --- the user's own stream (chat/notify.py): direct messages, mentions, invitations, unread counts


class Inbox(models.Model):
    """A user's stream counter: every notify event takes the next `seq` under a lock on this row,
    in the transaction that stores it, so `user_seq` order is commit order, as in a room."""

    user = models.OneToOneField(
        settings.AUTH_USER_MODEL, primary_key=True, on_delete=models.CASCADE, related_name="+"
    )
    seq = models.BigIntegerField(default=0)
    # The email digest (chat/digest.py): every event up to here has been considered for email.
    emailed_seq = models.BigIntegerField(default=0)
    email_digests = models.BooleanField(default=True)

    def __str__(self) -> str:
        return f"inbox of {self.user_id} at {self.seq}"


class UserEvent(models.Model):
    """One event of a user's stream. What it says is read again when it is sent (the message's
    current state, the room's current counts), so a replay is never staler than the live event."""

    MENTION = "mention"
    DM = "dm"
    INVITE = "invite"
    UNREAD = "unread"
    # The user joined a room (on another device) or left it, or was removed from it: every
    # device adds it to or drops it from the rooms list (chat/rooms.py).
    JOINED = "joined"
    LEFT = "left"
    KINDS = [
        (MENTION, "mention"),
        (DM, "direct message"),
        (INVITE, "invitation"),
        (UNREAD, "unread"),
        (JOINED, "joined"),
        (LEFT, "left"),
    ]

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="chat_events"
    )
    seq = models.BigIntegerField()
    kind = models.CharField(max_length=8, choices=KINDS)
    room = models.ForeignKey(Room, null=True, on_delete=models.CASCADE, related_name="+")
    message = models.ForeignKey(Message, null=True, on_delete=models.SET_NULL, related_name="+")
    # The room seq the event is about (a message's posted_seq): read past it, it is read.
    room_seq = models.BigIntegerField(default=0)
    # A `left` that someone else decided (removed from a private room): the open room tells its
    # reader why instead of moving on as after leaving by choice.
    removed = models.BooleanField(default=False, db_default=False)
    created = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            # Serves the resume read: one user's events after a cursor, in order.
            models.UniqueConstraint(fields=["user", "seq"], name="userevent_user_seq"),
        ]
        indexes = [
            # Serves the mention count of a room (user, room, kind, room_seq > read_seq).
            models.Index(fields=["user", "room", "kind", "room_seq"], name="userevent_counts"),
        ]

    def __str__(self) -> str:
        return f"{self.kind} #{self.seq} for {self.user_id}"


class Block(models.Model):
    """`blocker` no longer hears from `blocked`: no 1:1 conversation, no notifications."""

    blocker = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="chat_blocks"
    )
    blocked = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="chat_blocked_by"
    )
    created = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["blocker", "blocked"], name="block_once"),
        ]

    def __str__(self) -> str:
        return f"{self.blocker_id} blocks {self.blocked_id}"
