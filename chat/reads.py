"""Reads: history pages, the rooms list, and the one catch-up read every caller resumes with.

History, resume, long-poll, gap fills and both WebSocket transports read the same tables through
the same queryset methods (chat/models.py), so what a client sees live and what it reads back
cannot differ.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from django.contrib.auth import get_user_model
from django.db.models import Count, IntegerField, OuterRef, Q, Subquery, Value
from django.db.models.functions import Coalesce
from django.utils.translation import gettext as _

from chat import events, metrics
from chat.conf import settings
from chat.errors import ChatError
from chat.events import Event
from chat.models import Inbox, Membership, Message, Restriction, Room, UserEvent


@dataclass
class CatchUp:
    """Every change after a cursor, in seq order, up to the room's `seq` as read; or a resync
    when the cursor is too old to replay (more than CHAT_RESUME_LIMIT changes behind)."""

    seq: int
    resync: bool = False
    changes: list[Event] = field(default_factory=list)

    def answer(self, key: str = "events", seq_key: str = "seq") -> dict[str, Any]:
        """The HTTP shape: `{key: [...], "seq": n}`, or `{"resync": true, "seq": n}` (the user
        stream says `user_seq`)."""
        if self.resync:
            return {"resync": True, seq_key: self.seq}
        return {key: self.changes, seq_key: self.seq}

    def frames(self, slug: str) -> list[Event]:
        """The WebSocket shape after a gap: the changes, or a `subscribed` event that says resync."""
        if self.resync:
            return [events.subscribed(slug, self.seq, resumed=False, reason="resync")]
        return self.changes


def catch_up(room: Room, after: int, room_seq: int | None = None) -> CatchUp:
    """What changed after the cursor. `room_seq` is the room's seq if the caller has just read
    it (get_room() does); else it is read here. A cursor ahead of the room is refused."""
    if room_seq is None:
        room_seq = Room.objects.values_list("seq", flat=True).get(pk=room.pk)
    if after > room_seq:
        raise ChatError(
            "bad_request",
            _("The cursor %(after)s is ahead of the room (%(seq)s).")
            % {"after": after, "seq": room_seq},
        )
    if room_seq - after > settings.CHAT_RESUME_LIMIT:
        metrics.RESYNCS.inc()
        return CatchUp(room_seq, resync=True)
    if after == room_seq:
        return CatchUp(room_seq)
    changes = Message.objects.for_room(room).after(after).filter(seq__lte=room_seq)
    return CatchUp(room_seq, changes=changes.events(room.slug))


def history(room: Room, before: int | None, limit: int) -> dict[str, Any]:
    page = Message.objects.for_room(room).before(before, limit + 1).events(room.slug)
    has_more = len(page) > limit
    page = page[:limit]
    page.reverse()
    return {"messages": page, "has_more": has_more}


def around(room: Room, seq: int, limit: int) -> dict[str, Any]:
    """The page of about `limit` messages around one, oldest first: a search hit or a quoted
    reply opens the room there. `seq` is any seq the message has held (its current `seq`, as
    events carry it, or the one it was posted at): each seq names at most one message. A seq
    that names none (an edit since superseded) centres the page on that position. Half the page
    is older than the anchor and half newer; near either end the other side fills it.

    `older` and `newer` are positions (posted seqs) to page on with `before=` and
    `newer_than=`: exact, so the pages neither overlap nor leave a hole."""
    if seq > room.seq:
        raise ChatError(
            "bad_request",
            _("`around` %(seq)s is ahead of the room (%(room_seq)s).")
            % {"seq": seq, "room_seq": room.seq},
        )
    found = (
        Message.objects.for_room(room)
        .filter(Q(seq=seq) | Q(posted_seq=seq))
        .values_list("pk", "posted_seq")
        .first()
    )
    anchor, position = found if found is not None else (None, seq)
    rows = Message.objects.for_room(room)
    older = list(
        rows.filter(posted_seq__lte=position)
        .order_by("-posted_seq")
        .values_list("posted_seq", flat=True)[: limit + 1]
    )
    newer = list(
        rows.filter(posted_seq__gt=position)
        .order_by("posted_seq")
        .values_list("posted_seq", flat=True)[: limit + 1]
    )
    take_new = min(len(newer), limit // 2)
    take_old = min(len(older), limit - take_new)
    take_new = min(len(newer), limit - take_old)
    shown = sorted(older[:take_old] + newer[:take_new])
    page = []
    if shown:
        span = rows.filter(posted_seq__gte=shown[0], posted_seq__lte=shown[-1])
        page = span.order_by("posted_seq").events(room.slug)
    return {
        "messages": page,
        "anchor": anchor,
        "has_older": len(older) > take_old,
        "has_newer": len(newer) > take_new,
        "has_more": len(older) > take_old,
        "older": shown[0] if shown else position + 1,
        "newer": shown[-1] if shown else position,
    }


def newer(room: Room, position: int, limit: int) -> dict[str, Any]:
    """The `limit` messages posted first after a position, oldest first (scrolling down from a
    page opened with `around`); `newer` is where the next such page starts."""
    rows = Message.objects.for_room(room)
    seqs = list(
        rows.filter(posted_seq__gt=position)
        .order_by("posted_seq")
        .values_list("posted_seq", flat=True)[: limit + 1]
    )
    shown = seqs[:limit]
    page = []
    if shown:
        span = rows.filter(posted_seq__gte=shown[0], posted_seq__lte=shown[-1])
        page = span.order_by("posted_seq").events(room.slug)
    return {
        "messages": page,
        "has_newer": len(seqs) > limit,
        "newer": shown[-1] if shown else position,
    }


def visible_rooms(user: Any) -> list[dict[str, Any]]:
    """The rooms list with unread and mention counts and the user's notification level; DMs
    titled by the other people's names. A handful of queries whatever the number of rooms."""
    rooms = list(Room.objects.visible_to(user))
    memberships = {m.room_id: m for m in Membership.objects.filter(user=user, room__in=rooms)}
    cursors = {room_id: m.read_seq for room_id, m in memberships.items()}
    mentions = dict(
        UserEvent.objects.filter(user=user, kind=UserEvent.MENTION, room__in=rooms)
        .filter(room_seq__gt=Coalesce(_read_seq_of(user), Value(0)))
        .values("room_id")
        .annotate(n=Count("id"))
        .values_list("room_id", "n")
    )
    people = dm_members([room for room in rooms if room.is_dm])
    # Unread = messages by others posted after the read cursor, neither deleted nor hidden by a
    # moderator; counted per room in one query.
    # Rooms the user never joined (public ones) count nothing: no notification ever comes for
    # them, so a count would only go stale; joining (reading, posting, being mentioned) starts it.
    unread_filter = Q()
    for room in rooms:
        if room.pk in cursors:
            unread_filter |= Q(room_id=room.pk, posted_seq__gt=cursors[room.pk])
    counts: dict[int, int] = {}
    if cursors:
        counts = dict(
            Message.objects.filter(unread_filter, deleted=False, hidden=False)
            .exclude(author=user)
            .values("room_id")
            .annotate(n=Count("id"))
            .values_list("room_id", "n")
        )
    listed = []
    for room in rooms:
        membership = memberships.get(room.pk) or Membership(notify_level="")
        extra: dict[str, Any] = {
            "mentions": mentions.get(room.pk, 0),
            "notifications": membership.level(room),
            # The sidebar shows the rooms the user is in; the others are in the directory.
            "joined": room.pk in memberships,
        }
        if room.is_dm:
            extra.update(dm_view(room, people.get(room.pk, []), user))
        listed.append(room.to_dict(unread=counts.get(room.pk, 0), **extra))
    return listed


def _read_seq_of(user: Any) -> Subquery:
    """The user's read cursor in the row's room (0 outside it), for counting per room."""
    return Subquery(
        Membership.objects.filter(room_id=OuterRef("room_id"), user=user).values("read_seq")[:1],
        output_field=IntegerField(),
    )


# --- direct messages ---


def dm_members(rooms: list[Room]) -> dict[int, list[str]]:
    """The usernames of each DM's members, in one query."""
    if not rooms:
        return {}
    name = f"user__{get_user_model().USERNAME_FIELD}"
    people: dict[int, list[str]] = {}
    rows = Membership.objects.filter(room__in=rooms).order_by(name).values_list("room_id", name)
    for room_id, username in rows:
        people.setdefault(room_id, []).append(username)
    return people


def dm_view(room: Room, members: list[str], user: Any) -> dict[str, Any]:
    """A DM as its reader sees it: titled by the other people's names (one's own, alone)."""
    others = [name for name in members if name != user.get_username()]
    return {"title": ", ".join(others) or user.get_username(), "members": members}


def title_for(room: Room, user: Any) -> str:
    """The room's title as this reader sees it (a DM: the other people's names)."""
    if not room.is_dm:
        return room.title
    return dm_view(room, dm_members([room]).get(room.pk, []), user)["title"]


def room_view(room: Room, user: Any) -> dict[str, Any]:
    """The room object of one room for its reader (the API's answers about one room)."""
    extra: dict[str, Any] = {}
    if room.is_dm:
        extra = dm_view(room, dm_members([room]).get(room.pk, []), user)
    return room.to_dict(**extra)


def find_users(prefix: str, limit: int) -> list[str]:
    """Active users whose username starts with `prefix`, for autocompletion."""
    users = get_user_model()
    name = users.USERNAME_FIELD
    rows = users.objects.filter(**{f"{name}__istartswith": prefix}, is_active=True)
    return list(rows.order_by(name).values_list(name, flat=True)[:limit])


def room_members(room: Room, limit: int = 500) -> list[str]:
    """Who may be mentioned in the room, for autocompletion: its members."""
    name = f"user__{get_user_model().USERNAME_FIELD}"
    rows = Membership.objects.filter(room=room, user__is_active=True).order_by(name)
    return list(rows.values_list(name, flat=True)[:limit])


# --- the user's stream (chat/notify.py writes it) ---


def user_seq(user: Any) -> int:
    """Where the user's stream is now (0 before its first event)."""
    return Inbox.objects.filter(user=user).values_list("seq", flat=True).first() or 0


def user_catch_up(user: Any, after: int) -> CatchUp:
    """Every event of the user's stream after the cursor, or a resync when it is too far
    behind (CHAT_RESUME_LIMIT events). A cursor ahead of the stream is refused."""
    seq = user_seq(user)
    if after > seq:
        raise ChatError(
            "bad_request",
            _("The cursor %(after)s is ahead of the stream (%(seq)s).")
            % {"after": after, "seq": seq},
        )
    if seq - after > settings.CHAT_RESUME_LIMIT:
        metrics.RESYNCS.inc()
        return CatchUp(seq, resync=True)
    if after == seq:
        return CatchUp(seq)
    rows = list(UserEvent.objects.filter(user=user, seq__gt=after, seq__lte=seq).order_by("seq"))
    return CatchUp(seq, changes=notify_events(rows, check_access=True))


def latest_user_events(user: Any, limit: int) -> dict[str, Any]:
    """The newest `limit` events of the user's stream, oldest first, and where it is."""
    seq = user_seq(user)
    rows = list(UserEvent.objects.filter(user=user, seq__lte=seq).order_by("-seq")[:limit])
    rows.reverse()
    return {"events": notify_events(rows, check_access=True), "user_seq": seq}


def counts(pairs: set[tuple[Any, int]]) -> dict[tuple[Any, int], tuple[int, int]]:
    """(unread, mentions) for each (user, room): messages by others after the user's read
    cursor, neither deleted nor hidden, and the mentions among them. One query per room."""
    by_room: dict[int, set[Any]] = {}
    for user_id, room_id in pairs:
        by_room.setdefault(room_id, set()).add(user_id)
    found: dict[tuple[Any, int], tuple[int, int]] = {}
    for room_id, user_ids in by_room.items():
        unread = (
            Message.objects.filter(
                room_id=room_id,
                posted_seq__gt=OuterRef("read_seq"),
                deleted=False,
                hidden=False,
            )
            .exclude(author_id=OuterRef("user_id"))
            .order_by()
            .values("room_id")
            .annotate(n=Count("id"))
            .values("n")
        )
        mentioned = (
            UserEvent.objects.filter(
                user_id=OuterRef("user_id"),
                room_id=room_id,
                kind=UserEvent.MENTION,
                room_seq__gt=OuterRef("read_seq"),
            )
            .order_by()
            .values("room_id")
            .annotate(n=Count("id"))
            .values("n")
        )
        rows = (
            Membership.objects.filter(room_id=room_id, user_id__in=user_ids)
            .annotate(
                u=Coalesce(Subquery(unread, output_field=IntegerField()), Value(0)),
                m=Coalesce(Subquery(mentioned, output_field=IntegerField()), Value(0)),
            )
            .values_list("user_id", "u", "m")
        )
        for user_id, u, m in rows:
            found[(user_id, room_id)] = (u, m)
    return found


def notify_events(
    rows: list[UserEvent], check_access: bool = False, known: dict[int, Event] | None = None
) -> list[Event]:
    """The wire form of stored user events: the message's current state, the counts as of now.
    With `check_access` (a replay), an event about a room its user may no longer read keeps its
    place and says nothing (its user_seq, `room` null). `known`: message events already built."""
    if not rows:
        return []
    room_ids = {row.room_id for row in rows if row.room_id is not None}
    rooms = {room.pk: room for room in Room.objects.filter(pk__in=room_ids)}
    readable: set[tuple[Any, int]] = {(row.user_id, row.room_id) for row in rows if row.room_id}
    if check_access:
        readable = set()
        for user_id in {row.user_id for row in rows}:
            readable |= {(user_id, pk) for pk in readable_rooms(user_id, room_ids)}
    by_message: dict[int, Event] = dict(known or {})
    for room_id in {row.room_id for row in rows if row.message_id not in by_message}:
        ids = [
            row.message_id
            for row in rows
            if row.room_id == room_id and row.message_id and row.message_id not in by_message
        ]
        if not ids:
            continue
        for event in Message.objects.filter(pk__in=ids).events(rooms[room_id].slug):
            by_message[event["id"]] = event
    numbers = counts({pair for pair in readable if pair[1] in rooms})
    built = []
    for row in rows:
        pair = (row.user_id, row.room_id)
        room = rooms.get(row.room_id) if row.room_id is not None else None
        if row.kind == UserEvent.LEFT and room is not None:
            # Said even once the room cannot be read: the user's devices must drop it, and the
            # user knew its name.
            built.append(events.notify(row.seq, row.kind, room.slug, 0, 0, removed=row.removed))
            continue
        if room is None or pair not in readable:
            built.append(events.notify(row.seq, row.kind, None, 0, 0))
            continue
        unread, mentions = numbers.get(pair, (0, 0))
        message = by_message.get(row.message_id) if row.message_id is not None else None
        built.append(events.notify(row.seq, row.kind, room.slug, unread, mentions, message or None))
    return built


def readable_rooms(user_id: Any, room_ids: Any) -> list[int]:
    """Which of these rooms the user may read now: a member of the private ones, not banned."""
    bans = Restriction.objects.active().filter(user_id=user_id, kind=Restriction.BAN)
    if bans.filter(room__isnull=True).exists():
        return []
    visible = Room.objects.visible_to(get_user_model()(pk=user_id)).filter(pk__in=room_ids)
    return list(
        visible.exclude(pk__in=bans.filter(room__isnull=False).values("room_id")).values_list(
            "pk", flat=True
        )
    )
