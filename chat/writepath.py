"""The write path: the only code that creates or changes a room or a message.

Every transport (the JSON API, the pages, both WebSocket transports, long-poll) and moderation call
these functions, and none writes messages itself. Each change:

1. checks permission (chat/access.py: membership, bans, mutes, locks) and validates input, raising
   ChatError before anything is written;
2. takes the room's next `seq` under a row lock on the room, in the same transaction as the write, so
   `seq` order is commit order (an auto-increment id is allocated before commit and is not);
3. publishes the event only after commit (`transaction.on_commit`, through chat/fanout.py), so
   nobody is told about a message that could still roll back. In autocommit (every transport)
   that is as soon as the statement commits, before the transport sends its acknowledgement.

This module imports no transport: live clients are reached only through the fan-out.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from django.core.cache import cache
from django.core.serializers.json import DjangoJSONEncoder
from django.db import IntegrityError, connection, transaction
from django.utils import timezone
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy

from chat import attachments, cleaning, emoji, events, fanout, formatting, metrics, notify
from chat.access import blocked_in_dm, can_read, check_can_post, is_moderator, with_flags
from chat.conf import settings
from chat.errors import ChatError
from chat.models import (
    Attachment,
    Block,
    Membership,
    Message,
    Reaction,
    ReactionKey,
    Restriction,
    Room,
    username_lookup,
)

log = logging.getLogger(__name__)

# --- rooms ---


def create_room(user: Any, slug: Any, title: Any, private: Any) -> Room:
    slug = cleaning.clean_new_slug(slug, "slug")
    title = cleaning.clean_line(title, "title", max_length=100)
    private = cleaning.clean_bool(private, "private")
    try:
        with transaction.atomic():
            room = Room.objects.create(slug=slug, title=title, private=private, created_by=user)
            Membership.objects.create(room=room, user=user)
    except IntegrityError:
        raise ChatError(
            "bad_request", _("The room %(slug)r already exists.") % {"slug": slug}
        ) from None
    return room


def ensure_lobby() -> Room:
    room, _created = Room.objects.get_or_create(slug="lobby", defaults={"title": "Lobby"})
    return room


# --- messages ---


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
        metrics.RATE_LIMITED.labels("room").inc()
        raise ChatError(
            "rate_limited",
            _("This room allows %(limit)s messages a minute.") % {"limit": limit},
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
        -- So does a block by the other person of a 1:1 conversation.
        AND NOT (%(one_to_one)s AND EXISTS (
            SELECT 1 FROM {block} b JOIN {membership} bm ON bm.user_id = b.blocker_id
            WHERE b.blocked_id = %(author)s AND bm.room_id = %(room)s
        ))
    RETURNING seq
), joined AS (
    INSERT INTO {membership} (room_id, user_id, joined, read_seq)
    SELECT %(room)s, %(author)s, %(created)s, 0 FROM next WHERE %(join)s
    ON CONFLICT (room_id, user_id) DO NOTHING
)
INSERT INTO {message}
    (room_id, author_id, body, client_id, created, deleted, posted_seq, seq, attachment_id,
     mentions, html, reply_to_id, reactions)
SELECT %(room)s, %(author)s, %(body)s, %(client_id)s, %(created)s, false, next.seq, next.seq,
    %(attachment)s, %(mentions)s::jsonb, %(html)s, %(reply_to)s, '[]'::jsonb
FROM next
RETURNING id, seq
"""


def _insert_in_one_statement(
    message: Message, may_post_locked: bool, join: bool, one_to_one: bool
) -> None:
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
        block=Block._meta.db_table,
    )
    params = {
        "join": join,
        "one_to_one": one_to_one,
        "mentions": json.dumps(message.mentions),
        "room": message.room_id,
        "may_post_locked": may_post_locked,
        "author": message.author_id,
        "body": message.body,
        "client_id": message.client_id,
        "created": message.created,
        "attachment": message.attachment_id,
        "html": message.html,
        "reply_to": message.reply_to_id,
    }
    # Inside a caller's transaction, a savepoint keeps a duplicate client_id from breaking it;
    # in autocommit (every transport) the statement is its own transaction.
    with transaction.atomic() if connection.in_atomic_block else nullcontext():
        with connection.cursor() as cursor:
            cursor.execute(sql, params)
            row = cursor.fetchone()
    if row is None:
        # Locked, banned, muted or blocked since the checks: say which, as the checks would have.
        if Restriction.objects.applying_to(message.author, message.room_id).exists():
            raise ChatError("forbidden", _("You may not post in this room."))
        if one_to_one:
            raise ChatError("forbidden", _("You cannot message this person."))
        raise ChatError("forbidden", _("This room is locked."))
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


def _existing(user: Any, room: Room, client_id: str | None) -> Message | None:
    """The message this author already stored in this room under this client_id: the key is
    scoped to the room, so a bot numbering its messages per room never loses one."""
    if client_id is None:
        return None
    return Message.objects.with_author().filter(room=room, author=user, client_id=client_id).first()


def _same_post(existing: Message, body: str, attachment: Any) -> bool:
    """Whether a retry carries what was stored. A message changed since (edited, deleted,
    hidden) cannot be compared, and the retry is of a post that certainly happened."""
    if existing.seq != existing.posted_seq:
        return True
    return existing.body == body and str(existing.attachment_id or "") == str(attachment or "")


def _reply_target(room: Room, reply_to: Any) -> Message | None:
    """The message a new one answers: one in the same room that still shows its text. Any other
    id (unknown, in another room, one the reader cannot see) gets the same answer, so ids of other
    rooms' messages do not leak."""
    if reply_to is None:
        return None
    pk = cleaning.clean_id(reply_to, "reply_to")
    parent = (
        Message.objects.select_related("author")
        .only("id", "room_id", "posted_seq", "body", "deleted", "hidden", username_lookup("author"))
        .filter(room=room, pk=pk)
        .first()
    )
    if parent is None:
        raise ChatError("bad_request", _("`reply_to` names no message in this room."))
    if parent.deleted or parent.hidden:
        raise ChatError("bad_request", _("`reply_to` names a message that was removed."))
    return parent


@metrics.WRITE_SECONDS.time()
def post_message(
    user: Any,
    room: Room,
    body: Any,
    client_id: Any = None,
    attachment: Any = None,
    reply_to: Any = None,
) -> Posted:
    """Post a message, with the id of a ready upload as its attachment if given (the body may then
    be empty), and the id of the message it answers. A retry (same author, room and `client_id`)
    returns the original and changes nothing; the same key with a different body is a
    `conflict`, never a silent success."""
    client_id = cleaning.clean_client_id(client_id)
    try:
        body = cleaning.clean_body(
            body, max_length=settings.CHAT_MAX_BODY, attachment=attachment is not None
        )
        room = with_flags(user, room)
        check_can_post(user, room)
        if not can_read(user, room):
            raise ChatError("not_found", _("There is no room %(slug)r.") % {"slug": room.slug})
        _check_rate(user, room)
        parent = _reply_target(room, reply_to)
        mentions = notify.find_mentions(user, room, body)
        message = Message(room=room, author=user, body=body, client_id=client_id)
        message.mentions = mentions.names
        message.html = formatting.render(body, mentions.names)
        message.reply_to = parent
        if attachment is not None:
            # The one-to-one column makes a second message with the same file fail to insert.
            message.attachment = attachments.for_message(user, room, attachment)
        may_post_locked = is_moderator(user, room)
        # A mention or a DM is stored with the message, in its transaction: nothing acknowledged
        # is lost. Who to tell is decided before the room lock (chat/notify.py says why).
        post = _Post(
            message,
            may_post_locked=may_post_locked,
            limited=bool(room.rate_limit) and not may_post_locked,
            planned=notify.plan(room, user, mentions),
            # The statements of PostgreSQL check a 1:1 block themselves, told whether it is one.
            one_to_one=room.is_dm and connection.vendor == "postgresql" and _one_to_one(room),
        )
        if _groups_commits():
            told = _groups.write(post)
        else:
            told = _write(post)
    except (ChatError, IntegrityError) as error:
        # A retry of a message already stored gets the original, even if the room was locked
        # since, or if it raced the original (the unique (room, author, client_id) constraint
        # made our insert, seq included, roll back). Checked only on failure: the usual post
        # pays nothing.
        existing = _existing(user, room, client_id)
        if existing is not None:
            if not _same_post(existing, body if isinstance(body, str) else "", attachment):
                raise ChatError(
                    "conflict", _("This client_id was already used for another message here.")
                ) from None
            return Posted(existing, created=False)
        if attachment is not None and isinstance(error, IntegrityError):
            raise ChatError("bad_request", _("This attachment was already sent.")) from None
        raise
    transaction.on_commit(lambda: notify.after_post_soon(message, told))
    return Posted(message, created=True)


@dataclass
class _Post:
    """A checked message on its way to the database, and what its write needs."""

    message: Message
    may_post_locked: bool
    limited: bool
    planned: notify.Plan
    one_to_one: bool
    told: set[Any] = field(default_factory=set)  # whom a batch notified


def _write(post: _Post) -> set[Any]:
    """Write one post in its own transaction (or the caller's): take the room's next seq, check
    again under the room lock, insert, and register its publication. Returns whom it notified."""
    message, room = post.message, post.message.room
    if connection.vendor == "postgresql" and not post.limited:
        with transaction.atomic() if post.planned else nullcontext():
            _insert_in_one_statement(
                message, post.may_post_locked, join=not room.private, one_to_one=post.one_to_one
            )
            # Registered first: the room's event goes out before its notifications.
            _publish_on_commit(message)
            return notify.on_post(message, post.planned)
    with transaction.atomic():
        # From here every other post to this room waits for our commit (the room row is
        # locked), so the checks below see every post and restriction committed before.
        seq, locked = _take_seq(room)
        if locked and not post.may_post_locked:
            # Locked while we were checking: the rollback gives the seq back.
            raise ChatError("forbidden", _("This room is locked."))
        if Restriction.objects.applying_to(message.author, room).exists():
            raise ChatError("forbidden", _("You may not post in this room."))
        if blocked_in_dm(message.author, room):
            raise ChatError("forbidden", _("You cannot message this person."))
        if post.limited:
            # Exact under the lock: two posts racing at the limit cannot both pass.
            _check_rate(message.author, room)
        if not room.private:
            Membership.objects.get_or_create(room=room, user=message.author)
        message.posted_seq = message.seq = seq
        message.save(force_insert=True)
        _publish_on_commit(message)
        return notify.on_post(message, post.planned)


# --- group commit ---


def _groups_commits() -> bool:
    """Whether this post may be written with others (chat/writepath.py's _Groups). Not inside a
    caller's transaction: its rows would be invisible to, and its commit not ours to make for,
    the thread that writes the batch."""
    return (
        settings.CHAT_GROUP_COMMIT
        and connection.vendor == "postgresql"
        and not connection.in_atomic_block
    )


# The room row's lock, taken first in a statement of its own: the batch statement after it then
# has a snapshot with everything committed before, the room's seq and lock included. NO KEY, as
# the UPDATE of the one-post path takes it: FOR UPDATE would also block every insert whose
# foreign key names the room (a notification raised meanwhile, holding members' rows that
# this batch's notifications update, deadlocked with it).
LOCK_SQL = "SELECT 1 FROM {room} WHERE id = %(room)s FOR NO KEY UPDATE"

BATCH_SQL = """
WITH current AS (
    SELECT seq, locked FROM {room} WHERE id = %(room)s
), input AS (
    -- The posts as one JSON array: one parameter, encoded by the json module's C code (eleven
    -- arrays cost the client a Python loop per element).
    SELECT * FROM jsonb_to_recordset(%(posts)s::jsonb) AS i(
        ord int, author bigint, body text, client_id text, attachment uuid, mentions jsonb,
        html text, reply_to bigint, may_post_locked boolean, rate_limit int, one_to_one boolean
    )
), checked AS (
    -- The checks of INSERT_SQL, per row, and the exact rate limit of the locked path: the caller
    -- holds the room lock, so this statement's snapshot has every earlier post of the room.
    SELECT i.*, CASE
        WHEN i.client_id IS NOT NULL AND EXISTS (
            SELECT 1 FROM {message} m
            -- IS NOT NULL: the condition of the unique index that answers this.
            WHERE m.room_id = %(room)s AND m.author_id = i.author AND m.client_id = i.client_id
                AND m.client_id IS NOT NULL
        ) THEN 'duplicate'
        WHEN (SELECT locked FROM current) AND NOT i.may_post_locked THEN 'locked'
        WHEN EXISTS (
            SELECT 1 FROM {restriction} r
            WHERE r.user_id = i.author AND (r.room_id = %(room)s OR r.room_id IS NULL)
                AND (r.until IS NULL OR r.until > %(created)s)
        ) THEN 'restricted'
        WHEN i.one_to_one AND EXISTS (
            SELECT 1 FROM {block} b JOIN {membership} bm ON bm.user_id = b.blocker_id
            WHERE b.blocked_id = i.author AND bm.room_id = %(room)s
        ) THEN 'blocked'
        WHEN i.rate_limit > 0 AND (
            SELECT count(*) FROM {message} m
            WHERE m.author_id = i.author AND m.room_id = %(room)s AND m.created > %(since)s
        ) >= i.rate_limit THEN 'rate_limited'
    END AS refused
    FROM input i
), numbered AS (
    SELECT c.*, (SELECT seq FROM current) + row_number() OVER (ORDER BY c.ord) AS seq
    FROM checked c WHERE c.refused IS NULL
), bumped AS (
    UPDATE {room} SET seq = seq + (SELECT count(*) FROM numbered) WHERE id = %(room)s
), joined AS (
    INSERT INTO {membership} (room_id, user_id, joined, read_seq)
    SELECT DISTINCT %(room)s, n.author, %(created)s, 0 FROM numbered n WHERE %(join)s
    ON CONFLICT (room_id, user_id) DO NOTHING
), inserted AS (
    INSERT INTO {message}
        (room_id, author_id, body, client_id, created, deleted, posted_seq, seq, attachment_id,
         mentions, html, reply_to_id, reactions)
    SELECT %(room)s, n.author, n.body, n.client_id, %(created)s, false, n.seq, n.seq,
        n.attachment, n.mentions, n.html, n.reply_to, '[]'::jsonb
    FROM numbered n
    RETURNING id, seq
)
SELECT c.ord, c.refused, ins.id, ins.seq
FROM checked c LEFT JOIN numbered n ON n.ord = c.ord LEFT JOIN inserted ins ON ins.seq = n.seq
"""

# Why the batch statement left a post out, as the one-post path would have said it.
# Lazy: a batch is written in one thread for posts of several, each answered in its own language.
REFUSALS = {
    "locked": ("forbidden", gettext_lazy("This room is locked.")),
    "restricted": ("forbidden", gettext_lazy("You may not post in this room.")),
    "blocked": ("forbidden", gettext_lazy("You cannot message this person.")),
    "duplicate": (
        "conflict",
        gettext_lazy("This client_id was already used for another message here."),
    ),
}

# The most posts one statement writes; the rest wait for the next.
MAX_BATCH = 256
# Batches of one room under way at once in a process (see _Groups).
WRITERS = 2


def _write_batch(posts: list[_Post]) -> list[BaseException | None]:
    """Write posts to one room in one transaction: lock the room row, then one statement checks
    every post, takes a block of seq values for those that pass (in queue order), inserts them
    and moves the room's counter; publication and notifications follow in seq order. Returns,
    per post, None (written) or why it was refused.

    Without notifications to store, the two statements go in one round trip, as one implicit
    transaction (PostgreSQL runs a multi-statement query that way, each statement with its own
    snapshot): every round trip the leader makes holding the lock is one its whole queue waits
    for, and under load each costs milliseconds of waiting for the GIL as much as for the
    server."""
    room = posts[0].message.room
    created = timezone.now()
    tables = {
        "room": Room._meta.db_table,
        "membership": Membership._meta.db_table,
        "message": Message._meta.db_table,
        "restriction": Restriction._meta.db_table,
        "block": Block._meta.db_table,
    }
    data = [
        {
            "ord": i,
            "author": post.message.author_id,
            "body": post.message.body,
            "client_id": post.message.client_id,
            "attachment": str(post.message.attachment_id) if post.message.attachment_id else None,
            "mentions": post.message.mentions,
            "html": post.message.html,
            "reply_to": post.message.reply_to_id,
            "may_post_locked": post.may_post_locked,
            "rate_limit": room.rate_limit if post.limited else 0,
            "one_to_one": post.one_to_one,
        }
        for i, post in enumerate(posts)
    ]
    params = {
        "posts": json.dumps(data, cls=DjangoJSONEncoder),
        "room": room.pk,
        "join": not room.private,
        "created": created,
        "since": created - timedelta(seconds=RATE_WINDOW),
    }
    lock, batch = LOCK_SQL.format(**tables), BATCH_SQL.format(**tables)
    planned = any(post.planned for post in posts)
    # Several statements in one execute need client-side binding (Django's default).
    one_trip = not planned and not connection.settings_dict["OPTIONS"].get("server_side_binding")
    with nullcontext() if one_trip else transaction.atomic():
        with connection.cursor() as cursor:
            if one_trip:
                cursor.execute(f"{lock};\n{batch}", params)
                cursor.nextset()
            else:
                cursor.execute(lock, params)
                cursor.execute(batch, params)
            rows = sorted(cursor.fetchall())
        outcomes: list[BaseException | None] = []
        written: list[Message] = []
        for post, (_index, refused, pk, seq) in zip(posts, rows, strict=True):
            if refused is not None:
                outcomes.append(_refusal(post, refused))
                continue
            message = post.message
            message.pk, message.seq, message.posted_seq = pk, seq, seq
            message.created = created
            message._state.adding = False
            outcomes.append(None)
            written.append(message)
        # The room's events in seq order, each before its notifications (registered after).
        if written:
            published = [message.to_event() for message in written]
            transaction.on_commit(lambda: fanout.publish_many(room.pk, published))
        for post, outcome in zip(posts, outcomes, strict=True):
            if outcome is None and post.planned:
                post.told = notify.on_post(post.message, post.planned)
    return outcomes


def _refusal(post: _Post, refused: str) -> ChatError:
    if refused == "rate_limited":
        try:
            _check_rate(post.message.author, post.message.room)
        except ChatError as error:
            return error  # with its retry_after
        # The oldest counted post has left the window since: sending again now will pass.
        limit = post.message.room.rate_limit
        metrics.RATE_LIMITED.labels("room").inc()
        return ChatError(
            "rate_limited",
            _("This room allows %(limit)s messages a minute.") % {"limit": limit},
            retry_after=0.001,
        )
    return ChatError(*REFUSALS[refused])


class _Waiting:
    """A post in its room's queue, and how its thread learns the outcome."""

    def __init__(self, post: _Post) -> None:
        self.post = post
        self.woken = threading.Event()
        self.lead = False  # woken to write the next batch, not with an outcome
        self.done = False
        # Until a write says otherwise: a batch cut short by something no handler caught must
        # not look written to its senders.
        self.error: BaseException | None = RuntimeError("The post was not written.")
        self.told: set[Any] = set()


class _Groups:
    """Group commit: concurrent posts to one room from this process's threads are written
    together, one transaction for many (a block of seq values, one commit), then every sender is
    answered.

    Measured on this machine (bench/posting.py), every post its own transaction: 32 threads
    posting into one room managed 380 to 420 messages/s, each commit waiting for the room lock
    the one before held through its round trips and its commit (a commit's flush alone is 3 to
    5 ms here); grouped, 730 to 810 at the same load, with p99 from about 310 ms to 120-200,
    the process then bound by its CPU (the room lookup, waking threads). Here a
    poster that finds fewer than WRITERS batches of the room under way writes what is queued
    (it leads a batch); posts that arrive meanwhile queue. When a batch has committed and been
    published, its leader answers the batch and wakes the oldest queued post's thread, which
    writes everything queued by then. Two batches under way, not one: the second waits for the
    room lock in the database while the first commits, so the lock passes from one to the next
    without a round trip through this process (its GIL, the wake-up of a thread) in between. A
    lone post (one writer, Lambda) is written exactly as without grouping. Posts come from
    threads (sync views, database_sync_to_async, Lambda), so this is threads and Events.

    Invariants: seq order is still commit order (each batch is one transaction under the room
    lock, and reads its seq once it holds it); nobody is answered before the commit that holds
    their post; a post the checks refuse is refused alone, and anything unforeseen that fails a
    batch makes it write its posts one by one, each failing or not on its own. Two batches
    may publish out of order by a few milliseconds; readers order events by seq (the room hub
    waits a moment for a missing one, cursors fill real gaps from the database).
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.queues: dict[int, list[_Waiting]] = {}
        self.writers: dict[int, int] = {}  # batches under way, per room

    def write(self, post: _Post) -> set[Any]:
        me = _Waiting(post)
        room_id = post.message.room_id
        with self.lock:
            self.queues.setdefault(room_id, []).append(me)
            if self.writers.get(room_id, 0) < WRITERS:
                self.writers[room_id] = self.writers.get(room_id, 0) + 1
                me.lead = True
        while True:
            # Flags are set before `woken`, and read after clearing it: no wake-up is lost.
            if me.lead:
                with self.lock:
                    me.lead = False
                self._lead(room_id)
            if me.done:
                break
            me.woken.wait()
            me.woken.clear()
        if me.error is not None:
            raise me.error
        return me.told

    def _take(self, room_id: int) -> list[_Waiting]:
        """What is queued for the room, but for posts that must wait for this batch to commit:
        a second post with the same (author, client_id) (a retry: the next batch finds the first
        and answers with it) and a second rate-limited post by one author (the limit is exact
        when each counts every earlier post)."""
        batch: list[_Waiting] = []
        left: list[_Waiting] = []
        keys: set[tuple[Any, str]] = set()
        limited: set[Any] = set()
        with self.lock:
            for waiting in self.queues.get(room_id, []):
                message = waiting.post.message
                key = (message.author_id, message.client_id)
                if (
                    waiting.lead  # woken to lead a batch of its own
                    or len(batch) >= MAX_BATCH
                    or (message.client_id is not None and key in keys)
                    or (waiting.post.limited and message.author_id in limited)
                ):
                    left.append(waiting)
                    continue
                batch.append(waiting)
                if message.client_id is not None:
                    keys.add(key)
                if waiting.post.limited:
                    limited.add(message.author_id)
            self.queues[room_id] = left
        return batch

    def _lead(self, room_id: int) -> None:
        batch = self._take(room_id)
        try:
            if len(batch) == 1:
                self._one(batch[0])
            elif batch:
                self._many(batch)
        finally:
            with self.lock:
                writers = self.writers[room_id] - 1
                queued = [waiting for waiting in self.queues[room_id] if not waiting.lead]
                if queued and writers < WRITERS:
                    # The oldest queued post's thread writes the next batch.
                    queued[0].lead = True
                    queued[0].woken.set()
                    writers += 1
                if writers:
                    self.writers[room_id] = writers
                else:
                    del self.writers[room_id]
                    if not self.queues[room_id]:
                        del self.queues[room_id]
            for waiting in batch:
                waiting.done = True
                waiting.woken.set()

    @staticmethod
    def _one(waiting: _Waiting) -> None:
        try:
            waiting.told = _write(waiting.post)
        except Exception as error:
            waiting.error = error
        else:
            waiting.error = None

    def _many(self, batch: list[_Waiting]) -> None:
        posts = [waiting.post for waiting in batch]
        try:
            outcomes = _write_batch(posts)
        except Exception:
            # Whatever failed the batch (a unique attachment sent twice, a deadlock on the
            # notified users' rows) rolled all of it back: each post again on its own, so only
            # the post at fault fails.
            log.warning("a batch of %s posts failed; writing them one by one", len(batch))
            for waiting in batch:
                self._one(waiting)
            return
        for waiting, outcome in zip(batch, outcomes, strict=True):
            waiting.error = outcome
            waiting.told = waiting.post.told


_groups = _Groups()


def _one_to_one(room: Room) -> bool:
    return Membership.objects.filter(room=room).count() == 2


def _own_message(user: Any, room: Room, message_id: Any) -> Message:
    message = room_message(room, message_id)
    if message.author_id != user.pk:
        raise ChatError("forbidden", _("You can only change your own messages."))
    if message.deleted:
        raise ChatError("forbidden", _("This message was deleted."))
    return message


def room_message(room: Room, message_id: Any) -> Message:
    message_id = cleaning.clean_id(message_id, "id")
    message = Message.objects.with_author().filter(room=room, pk=message_id).first()
    if message is None:
        raise ChatError("not_found", _("There is no such message in this room."))
    return message


def change(
    message: Message, then: Callable[[Message], Any] | None = None, **fields: Any
) -> Message:
    """Apply a change to a message under the room lock; it takes the room's next seq. `then`
    runs with the changed message in the same transaction."""
    with transaction.atomic():
        seq, _locked = _take_seq(message.room)
        current = Message.objects.select_for_update().get(pk=message.pk)
        if current.deleted:
            raise ChatError("forbidden", _("This message was deleted."))
        if current.hidden and fields.get("hidden", True):
            # Hidden by a moderator: only a moderator's restore or erase changes it now.
            raise ChatError("forbidden", _("A moderator removed this message."))
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
        current.reply_to = message.reply_to
        _publish_on_commit(current)  # first: the room's event goes out before notifications
        if then is not None:
            then(current)
    return current


def _delete_attachment_on_commit(pk: Any) -> None:
    def delete() -> None:
        row = Attachment.objects.filter(pk=pk).first()
        if row is not None:
            attachments.discard(row)

    transaction.on_commit(delete)


def edit_message(user: Any, room: Room, message_id: Any, body: Any) -> Message:
    check_can_post(user, room)
    body = cleaning.clean_body(body, max_length=settings.CHAT_MAX_BODY)
    message = _own_message(user, room, message_id)
    window = timedelta(seconds=settings.CHAT_EDIT_WINDOW)
    if timezone.now() - message.created > window:
        raise ChatError("forbidden", _("The edit window for this message has passed."))
    if message.body == body:
        return message
    mentions = notify.find_mentions(user, room, body)
    # Only who is newly mentioned hears of it; the others were told when it was posted.
    before = set(message.mentions or ())
    new = notify.Mentions(
        user_ids=[
            pk
            for name, pk in zip(mentions.names, mentions.user_ids, strict=False)
            if name not in before
        ],
        room_wide=mentions.room_wide and notify.ROOM_WIDE not in before,
    )
    planned = notify.plan(room, user, new, dm=False)
    return change(
        message,
        then=(lambda current: notify.on_post(current, planned)) if planned else None,
        body=body,
        html=formatting.render(body, mentions.names),
        edited=timezone.now(),
        mentions=mentions.names,
    )


def delete_message(user: Any, room: Room, message_id: Any) -> Message:
    check_can_post(user, room)
    message = room_message(room, message_id)
    if message.author_id == user.pk and message.deleted:
        return message  # a retried delete (its ack was lost): done already
    message = _own_message(user, room, message_id)
    # The author's delete removes the text; only the tombstone stays, so resume shows it gone.
    return change(message, body="", html="", deleted=True, mentions=[])


# --- reactions ---

# How many names a reaction's summary carries; the count says how many reacted in all.
REACTION_USERS = 3


def _reaction_summary(message: Message) -> list[dict[str, Any]]:
    """Message.reactions from the rows: each emoji in the order it was first used."""
    rows = (
        Reaction.objects.filter(message=message)
        .order_by("created", "pk")
        .values_list("emoji", username_lookup("user"))
    )
    summary: dict[str, dict[str, Any]] = {}
    for glyph, username in rows:
        entry = summary.setdefault(glyph, {"emoji": glyph, "count": 0, "users": []})
        entry["count"] += 1
        if len(entry["users"]) < REACTION_USERS:
            entry["users"].append(username)
    return list(summary.values())


class _Unchanged(Exception):
    """Raised under the room lock when a reaction request changes nothing (a retry, or the state
    asked for already holds): the transaction rolls back, the seq it took included."""


def _known_request(
    user: Any, message: Message, glyph: str, client_id: str | None, on: bool | None
) -> bool:
    """Whether this request is a retry of the user's last one on this message's emoji (the same
    client_id and the same ask). The same client_id for another ask is a `conflict`, as for
    posts."""
    if client_id is None:
        return False
    key = (
        ReactionKey.objects.filter(message=message, user=user, client_id=client_id)
        .values_list("emoji", "on")
        .first()
    )
    if key is None:
        return False
    if key != (glyph, on):
        raise ChatError("conflict", _("This client_id was already used for another reaction here."))
    return True


def react(
    user: Any,
    room: Room,
    message_id: Any,
    glyph: Any,
    on: Any = None,
    client_id: Any = None,
) -> Message:
    """Set the user's reaction on a message: on or off as `on` says, or toggled when it is None.
    It is a change like an edit: it takes the room's next seq and goes out as the message's
    current state, so it resumes on every transport. A request that changes nothing (the state
    already holds, or a retry of the last request with this client_id) takes no seq, sends no
    event and answers with the message as it is."""
    glyph = emoji.clean_emoji(glyph)
    on = None if on is None else cleaning.clean_bool(on, "on")
    client_id = cleaning.clean_client_id(client_id)
    room = with_flags(user, room)
    check_can_post(user, room)
    message = room_message(room, message_id)
    if message.deleted or message.hidden:
        raise ChatError("forbidden", _("This message was deleted."))
    if _known_request(user, message, glyph, client_id, on):
        return message  # the retry of a change that committed: answered, not applied again
    may_react_locked = is_moderator(user, room)
    try:
        with transaction.atomic():
            seq, locked = _take_seq(room)
            # Under the room lock: a lock, ban, mute or block that committed since the checks
            # still holds.
            if locked and not may_react_locked:
                raise ChatError("forbidden", _("This room is locked."))
            if Restriction.objects.applying_to(user, room).exists():
                raise ChatError("forbidden", _("You may not react in this room."))
            if blocked_in_dm(user, room):
                raise ChatError("forbidden", _("You cannot message this person."))
            current = Message.objects.select_for_update().get(pk=message.pk)
            if current.deleted or current.hidden:
                raise ChatError("forbidden", _("This message was deleted."))
            # Again under the lock: the same request sent twice at once is applied once.
            if _known_request(user, current, glyph, client_id, on):
                raise _Unchanged
            mine = Reaction.objects.filter(message=current, user=user, emoji=glyph)
            had = mine.exists()
            want = not had if on is None else on
            if want == had:
                raise _Unchanged
            if want:
                if glyph not in {entry["emoji"] for entry in current.reactions or ()} and (
                    len(current.reactions or ()) >= emoji.MAX_DISTINCT
                ):
                    raise ChatError(
                        "bad_request",
                        _("A message takes at most %(most)s different reactions.")
                        % {"most": emoji.MAX_DISTINCT},
                    )
                Reaction.objects.create(message=current, user=user, emoji=glyph)
            else:
                mine.delete()
            if client_id is not None:
                ReactionKey.objects.update_or_create(
                    message=current,
                    user=user,
                    emoji=glyph,
                    defaults={"client_id": client_id, "on": on},
                )
            current.reactions = _reaction_summary(current)
            current.seq = seq
            current.save(update_fields=["reactions", "seq"])
            current.room = room
            current.author = message.author
            current.reply_to = message.reply_to
            _publish_on_commit(current)
    except _Unchanged:
        return room_message(room, message.pk)
    return current


def mark_read(user: Any, room: Room, seq: Any) -> int:
    """Move the user's read cursor forward (never back); returns the cursor. Reading a public
    room joins it, as posting does; reading never makes anyone a member of a private room (a
    moderator reading one stays out of it)."""
    seq = min(cleaning.clean_cursor(seq, "seq"), room.seq)
    if room.private:
        membership = Membership.objects.filter(room=room, user=user).first()
        if membership is None:
            return seq
    else:
        membership, _created = Membership.objects.get_or_create(room=room, user=user)
    moved = Membership.objects.filter(pk=membership.pk, read_seq__lt=seq).update(read_seq=seq)
    if moved:
        membership.room = room
        # Read past a notification: the user's other devices clear their badge.
        notify.after_read(membership, membership.read_seq, seq)
    return max(seq, membership.read_seq)


def send_typing(user: Any, room: Room) -> bool:
    """Tell the room the user is typing; False when coalesced (one was sent within
    CHAT_TYPING_INTERVAL seconds). Clients repeat it while typing, so nothing is lost, and a flood
    over HTTP or a socket costs the room one event per interval."""
    # Whoever may not post (muted, banned, a locked room) has nothing to be typing.
    check_can_post(user, with_flags(user, room))
    try:
        first = cache.add(f"typing:{room.pk}:{user.pk}", 1, timeout=settings.CHAT_TYPING_INTERVAL)
    except Exception:
        # The cache (Redis) is down: typing is best effort, like all live push.
        log.warning("typing throttle unavailable", exc_info=True)
        first = True
    if first:
        fanout.publish(room.pk, events.typing(room.slug, user.get_username()))
    return first
