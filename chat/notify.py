"""The user's stream: what a user must hear about rooms they do not have open.

Each user has a stream of `notify` events with its own gap-free cursor, `user_seq` (chat/models.py,
Inbox and UserEvent): every event takes the next value under a lock on the user's Inbox row, in the
transaction that stores it, so `user_seq` order is commit order, as `seq` is in a room. Events are
published after commit to every connection of the user on every transport (fanout.notify_user) and
replayed from the database on resume (chat/reads.py, user_catch_up). Kinds:

- `mention`: a message mentions the user (`@name`, or `@room` by one of the room's moderators);
- `dm`: a message in one of the user's direct-message conversations;
- `unread`: the user has unread messages in a room, or read some (every device's badge follows);
- `invite`: the user was added to a private room;
- `joined`, `left`: the user joined a room, or left it or was removed from it (chat/rooms.py):
  every device adds it to, or drops it from, its rooms list.

What it costs, and why: a message to a 200-member room must not write 200 rows or send 200 events
to members who are not looking. So:

- a mention, or a message in a DM (at most 10 people), is stored in the message's own transaction:
  nothing acknowledged is lost;
- every other room message raises an `unread` event only for members who had nothing unread in
  the room (Membership.notified_seq at or below read_seq), who are not in the room's presence (they
  see it live) and whose level is not `none`; the first message after a member has read raises
  one, the next hundred raise nothing until they read again. Members who chose the level `all` get
  one per message (their choice). This runs after the message has committed, outside the room
  lock; a crash in between loses nothing: notified_seq did not move, so the next message raises it;
- reading past notified_seq raises one `unread` event (the new counts), so the badge clears on
  every device. A reader who is looking never had one raised, and raises none.

Counts in an event are read when it is sent: a replayed event says what is true now.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from django.contrib.auth import get_user_model
from django.db import close_old_connections, connection, transaction
from django.db.models import F, Q
from django.db.models.functions import Greatest
from django.utils.translation import gettext as _

from chat import access, fanout, presence, reads
from chat.conf import settings
from chat.errors import ChatError
from chat.events import Event
from chat.models import Block, Inbox, Membership, Message, Restriction, Room, UserEvent

log = logging.getLogger(__name__)

# `@name`: Django's usernames (letters, digits and @.+-_), not preceded by a word character (an
# email address mentions nobody). A name ending in punctuation ("@bob.") also tries without it.
MENTION = re.compile(r"(?<![\w@.+-])@([\w.@+-]{1,150})")
ROOM_WIDE = "room"
MAX_MENTIONS = 50


@dataclass
class Mentions:
    """Who a body mentions: `names` as the message event carries them, the users to notify."""

    names: list[str] = field(default_factory=list)
    user_ids: list[Any] = field(default_factory=list)
    room_wide: bool = False

    def __bool__(self) -> bool:
        return bool(self.user_ids) or self.room_wide


def _candidates(body: str) -> list[str]:
    seen: dict[str, None] = {}
    for match in MENTION.finditer(body):
        name = match.group(1)
        for option in (name, name.rstrip(".-+@")):
            if option:
                seen.setdefault(option, None)
        if len(seen) >= 2 * MAX_MENTIONS:
            break
    return list(seen)


def find_mentions(author: Any, room: Room, body: str) -> Mentions:
    """The users `body` mentions who may read the room (a name that does not resolve is plain
    text), and whether it says `@room`, which only the room's moderators may (in a DM, anyone)."""
    candidates = _candidates(body)
    if not candidates:
        return Mentions()
    found = Mentions()
    if ROOM_WIDE in candidates:
        if not room.is_dm and not access.is_moderator(author, room):
            raise ChatError(
                "forbidden", _("Only this room's moderators may notify everyone (@room).")
            )
        found.room_wide = True
    users = get_user_model()
    name_field = users.USERNAME_FIELD
    rows = users.objects.filter(**{f"{name_field}__in": candidates}, is_active=True)
    if room.private:
        rows = rows.filter(memberships__room=room)
    banned = Restriction.objects.active().filter(
        Q(room=room) | Q(room__isnull=True), kind=Restriction.BAN
    )
    rows = rows.exclude(pk__in=banned.values("user_id"))
    by_name = dict(rows.values_list(name_field, "pk")[: 2 * MAX_MENTIONS])
    for name in candidates:
        if name in by_name and name not in found.names:
            found.names.append(name)
            found.user_ids.append(by_name[name])
            if len(found.names) >= MAX_MENTIONS:
                break
    if found.room_wide:
        found.names.append(ROOM_WIDE)
    return found


# --- storing events ---


def _take_seqs(user_ids: Iterable[Any]) -> dict[Any, int]:
    """The next user_seq of each user, in one statement that also locks their Inbox rows until
    commit. Rows are locked in id order, so two transactions telling the same people cannot
    deadlock."""
    ids = sorted(set(user_ids))
    if not ids:
        return {}
    table = connection.ops.quote_name(Inbox._meta.db_table)
    values = ", ".join(["(%s, 1, 0, %s)"] * len(ids))
    params: list[Any] = []
    for user_id in ids:
        params += [user_id, True]
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {table} (user_id, seq, emailed_seq, email_digests) VALUES {values}"
            f" ON CONFLICT (user_id) DO UPDATE SET seq = {table}.seq + 1 RETURNING user_id, seq",
            params,
        )
        rows = cursor.fetchall()
    field_ = Inbox._meta.get_field("user")
    return {field_.to_python(user_id): seq for user_id, seq in rows}


def store(
    entries: list[tuple[Any, str, Room | None, Message | None, int]],
    known: dict[int, Event] | None = None,
    removed: bool = False,
) -> list[UserEvent]:
    """Store notify events (user id, kind, room, message, room seq) in the caller's transaction,
    each with its user's next user_seq, and publish them once it commits (`known`: message
    events the caller has built already, so that publishing need not read them back; `removed`:
    `left` events of a removal by someone else)."""
    if not entries:
        return []
    seqs = _take_seqs(user_id for user_id, *_ in entries)
    rows = []
    for user_id, kind, room, message, room_seq in entries:
        rows.append(
            UserEvent(
                user_id=user_id,
                seq=seqs[user_id],
                kind=kind,
                room=room,
                message=message,
                room_seq=room_seq,
                removed=removed,
            )
        )
        seqs[user_id] += 1  # a second event for the same user in this call (never today)
    UserEvent.objects.bulk_create(rows)
    transaction.on_commit(lambda: publish(rows, known))
    return rows


def publish(rows: list[UserEvent], known: dict[int, Event] | None = None) -> None:
    """Committed events to every connection of their users, with counts as of now."""
    try:
        for row, event in zip(rows, reads.notify_events(rows, known=known), strict=True):
            fanout.notify_user(row.user_id, event)
    except Exception:
        # Live push is best effort: the events are stored, and clients resume from their cursor.
        log.exception("publishing %s notify events failed", len(rows))


def _blockers(user: Any) -> Any:
    return Block.objects.filter(blocked=user).values("blocker_id")


@dataclass
class Plan:
    """Who a message will notify, decided before the room lock is taken (chat.writepath holds
    it for as few round trips as it can): kind per user id, and who is not yet a member."""

    targets: dict[Any, str] = field(default_factory=dict)
    joining: list[Any] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.targets)


def plan(room: Room, author: Any, mentions: Mentions, dm: bool = True) -> Plan:
    """A `mention` for each user the message mentions (everyone in the room for `@room`), a `dm`
    for each other member of a DM whose level there is `all` (the default); nobody whose level
    in the room is `none` or who blocked the author."""
    if not (mentions or (room.is_dm and dm)):
        return Plan()
    members = Membership.objects.filter(room=room).exclude(user_id=author.pk)
    targets: dict[Any, str] = {}
    if room.is_dm and dm:
        hearing = members.filter(notify_level__in=["", Membership.ALL])
        targets.update(dict.fromkeys(hearing.values_list("user_id", flat=True), UserEvent.DM))
    if mentions.room_wide:
        targets.update(dict.fromkeys(members.values_list("user_id", flat=True), UserEvent.MENTION))
    for user_id in mentions.user_ids:
        if user_id != author.pk:
            targets[user_id] = UserEvent.MENTION
    if not targets:
        return Plan()
    quiet = set(
        _blockers(author).filter(blocker_id__in=targets).values_list("blocker_id", flat=True)
    )
    rows = members.filter(user_id__in=targets).values_list("user_id", "notify_level")
    levels = dict(rows)
    quiet |= {user_id for user_id, level in levels.items() if level == Membership.NONE}
    for user_id in quiet:
        targets.pop(user_id, None)
    # A mentioned reader of a public room becomes a member (as reading it would), unless they
    # left it: leaving stops the room's notifications (chat/rooms.py).
    joining = [] if room.private else [user_id for user_id in targets if user_id not in levels]
    if joining:
        left = UserEvent.objects.filter(user_id__in=joining, room=room, kind=UserEvent.LEFT)
        for user_id in set(left.values_list("user_id", flat=True)):
            targets.pop(user_id, None)
            joining.remove(user_id)
        if not targets:
            return Plan()
    return Plan(targets, joining)


def on_post(message: Message, planned: Plan) -> set[Any]:
    """In the message's transaction (its seq known): store what `plan()` decided. Returns whom
    it told (after_post leaves them out)."""
    if not planned:
        return set()
    room, seq = message.room, message.posted_seq
    if planned.joining:
        Membership.objects.bulk_create(
            [
                Membership(room=room, user_id=user_id, read_seq=seq - 1)
                for user_id in planned.joining
            ],
            ignore_conflicts=True,
        )
    Membership.objects.filter(room=room, user_id__in=planned.targets).update(
        notified_seq=Greatest(F("notified_seq"), seq)
    )
    entries = [
        (user_id, kind, room, message, seq)
        for user_id, kind in sorted(planned.targets.items(), key=lambda item: str(item[0]))
    ]
    store(entries, known={message.pk: message.to_event()})
    return set(planned.targets)


def after_post(message: Message, told: set[Any]) -> None:
    """After the message committed: an `unread` event for each member who had nothing unread in
    the room and is not looking, and for each member whose level is `all` (see the module's
    docstring for why only these). In a DM, those at level `all` were told already (`told`)."""
    room = message.room
    try:
        looking = presence.users(room.pk)
    except Exception:
        log.warning("presence unavailable; telling every member", exc_info=True)
        looking = []
    name_field = get_user_model().USERNAME_FIELD
    due = (
        Membership.objects.filter(room=room, read_seq__lt=message.posted_seq)
        .exclude(user_id=message.author_id)
        .exclude(user_id__in=told)
        .exclude(notify_level=Membership.NONE)
        .exclude(user_id__in=_blockers(message.author))
        .filter(Q(notified_seq__lte=F("read_seq")) | Q(notify_level=Membership.ALL))
    )
    if looking:
        due = due.exclude(**{f"user__{name_field}__in": looking})
    if not due.exists():
        return  # the usual case, after the first message: one read, nothing written
    with transaction.atomic():
        # Locked in user order (a concurrent post waits here, then sees notified_seq moved).
        user_ids = list(
            due.select_for_update().order_by("user_id").values_list("user_id", flat=True)
        )
        if not user_ids:
            return
        Membership.objects.filter(room=room, user_id__in=user_ids).update(
            notified_seq=Greatest(F("notified_seq"), message.posted_seq)
        )
        store([(user_id, UserEvent.UNREAD, room, None, message.posted_seq) for user_id in user_ids])


def _after_post_safely(message: Message, told: set[Any]) -> None:
    try:
        after_post(message, told)
    except Exception:
        # The message is committed and its ack has gone or will: an `unread` not raised now is
        # raised by the room's next message (notified_seq did not move).
        log.exception("unread notifications for message %s failed", message.pk)


# How long the worker lets posts gather between two looks at who is due an `unread`: a
# notification raised up to this much later than its message.
COALESCE_SECONDS = 0.25


class _Later:
    """after_post off the writers' threads, in one worker thread per process, coalesced per
    room: under load only a room's newest message is looked at, which raises what every message
    before it would have (the first unread per member and reading; level `all` then gets one
    event for the burst, with its counts). Measured: run inline, the two round trips it costs
    (presence, then who is due) took the process from 3,200 to 2,630 deliveries/s at 320 posts/s
    (bench/fanout.py --rates 8); on this thread the writers keep their pace. Lambda keeps
    nothing running between invocations, so there (and with CHAT_UNREAD_INLINE) it runs inline."""

    def __init__(self) -> None:
        self.pending: dict[int, tuple[Message, set[Any]]] = {}
        self.lock = threading.Lock()
        self.wake = threading.Event()
        self.idle = threading.Event()
        self.idle.set()
        self.thread: threading.Thread | None = None

    def submit(self, message: Message, told: set[Any]) -> None:
        with self.lock:
            queued = self.pending.get(message.room_id)
            if queued is None or queued[0].posted_seq < message.posted_seq:
                self.pending[message.room_id] = (message, told)
            self.idle.clear()
            if self.thread is None or not self.thread.is_alive():
                self.thread = threading.Thread(target=self._run, name="chat-unread", daemon=True)
                self.thread.start()
        self.wake.set()

    def _run(self) -> None:
        while True:
            self.wake.wait()
            while True:  # until nothing is pending: a wake-up during a batch is not lost
                with self.lock:
                    self.wake.clear()
                    batch, self.pending = self.pending, {}
                    if not batch:
                        self.idle.set()
                        break
                close_old_connections()
                for message, told in batch.values():
                    _after_post_safely(message, told)
                # One look per room per interval: what a burst posts meanwhile gathers into the
                # room's newest message. Looking after every message kept this thread busy (its
                # queries' Python is a third of the server's GIL at 320 posts/s, by py-spy) and
                # the sockets' writes waited for it.
                time.sleep(COALESCE_SECONDS)

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until everything submitted has run (tests)."""
        self.wake.set()
        return self.idle.wait(timeout)


later = _Later()


def after_post_soon(message: Message, told: set[Any]) -> None:
    """after_post for a committed message: in the worker thread, or inline on Lambda."""
    if settings.CHAT_UNREAD_INLINE or os.environ.get("AWS_LAMBDA_FUNCTION_NAME"):
        _after_post_safely(message, told)
    else:
        later.submit(message, told)


def after_read(membership: Membership, old_read: int, new_read: int) -> None:
    """The read cursor moved past a notification: one `unread` event with the new counts, so the
    user's other devices clear their badge."""
    if new_read <= old_read or membership.notified_seq <= old_read:
        return
    with transaction.atomic():
        store([(membership.user_id, UserEvent.UNREAD, membership.room, None, new_read)])


def set_level(user: Any, room: Room, level: Any) -> str:
    """The user's notification level in the room: `all`, `mentions` or `none`."""
    choices = {value for value, _label in Membership.LEVELS}
    if not isinstance(level, str) or level not in choices:
        raise ChatError("bad_request", _("`level` must be one of: all, mentions, none."))
    if room.private:
        membership = Membership.objects.filter(room=room, user=user).first()
        if membership is None:  # a moderator reading a private room is not in it
            raise ChatError("forbidden", _("Only members choose what this room notifies."))
    else:
        membership, _created = Membership.objects.get_or_create(
            room=room, user=user, defaults={"read_seq": room.seq}
        )
    Membership.objects.filter(pk=membership.pk).update(notify_level=level)
    return level
