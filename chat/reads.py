"""Reads: history pages, the rooms list, and the one catch-up read every caller resumes with.

History, resume, long-poll, gap fills and both WebSocket transports read the same tables through
the same queryset methods (chat/models.py), so what a client sees live and what it reads back
cannot differ.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.db.models import Count, Q

from chat import events
from chat.errors import ChatError
from chat.events import Event
from chat.models import Membership, Message, Room


@dataclass
class CatchUp:
    """Every change after a cursor, in seq order, up to the room's `seq` as read; or a resync
    when the cursor is too old to replay (more than CHAT_RESUME_LIMIT changes behind)."""

    seq: int
    resync: bool = False
    changes: list[Event] = field(default_factory=list)

    def answer(self, key: str = "events") -> dict[str, Any]:
        """The HTTP shape: `{key: [...], "seq": n}`, or `{"resync": true, "seq": n}`."""
        if self.resync:
            return {"resync": True, "seq": self.seq}
        return {key: self.changes, "seq": self.seq}

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
        raise ChatError("bad_request", f"The cursor {after} is ahead of the room ({room_seq}).")
    if room_seq - after > settings.CHAT_RESUME_LIMIT:
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


def visible_rooms(user: Any) -> list[dict[str, Any]]:
    """The rooms list with unread counts, in two queries whatever the number of rooms."""
    rooms = list(Room.objects.visible_to(user))
    cursors = dict(
        Membership.objects.filter(user=user, room__in=rooms).values_list("room_id", "read_seq")
    )
    # Unread = messages by others posted after the read cursor, neither deleted nor hidden by a
    # moderator; counted per room in one query.
    unread_filter = Q()
    for room in rooms:
        unread_filter |= Q(room_id=room.pk, posted_seq__gt=cursors.get(room.pk, 0))
    counts: dict[int, int] = {}
    if rooms:
        counts = dict(
            Message.objects.filter(unread_filter, deleted=False, hidden=False)
            .exclude(author=user)
            .values("room_id")
            .annotate(n=Count("id"))
            .values_list("room_id", "n")
        )
    return [room.to_dict(unread=counts.get(room.pk, 0)) for room in rooms]
