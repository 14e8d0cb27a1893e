"""Rooms people can find and join: the directory of public rooms, joining and leaving, and the
members of private rooms (invited and removed by the room's owner and moderators).

Who is in a room is its Membership rows. Every change here is written with its user-stream event
in one transaction (chat/notify.py's `store`), so each of the user's devices adds the room to its
rooms list (`joined`, `invite`) or drops it (`left`) without reloading, live or on resume. Losing
access (leaving or being removed from a private room) goes through the fan-out like a room made
private: `fanout.recheck` after commit, so that user's live connections stop receiving it on
every transport while their other rooms go on. This module imports no transport.
"""

from __future__ import annotations

from typing import Any

from django.db import transaction
from django.db.models import Count, Exists, F, OuterRef, Q, Subquery
from django.utils.translation import gettext as _

from chat import access, cleaning, fanout, notify
from chat.errors import ChatError
from chat.models import Membership, Message, Restriction, Room, UserEvent
from chat.moderation import audit

DIRECTORY_PAGE = 50


# --- the directory ---


def directory(user: Any, q: Any, limit: int = DIRECTORY_PAGE, offset: int = 0) -> dict[str, Any]:
    """Public rooms whose slug, title or description contains `q` (case-insensitive), latest
    activity first (rooms without any message last, newest first), `limit` from `offset`.

    One query whatever the page: the member count (active accounts only, as the people a room
    shows), the latest message's time (the message_room_posted_seq index: one row per room) and
    whether the reader is in it are annotations. Offsets are simple and a page may repeat a room
    whose activity moved it while paging; the directory is for browsing, not for syncing."""
    query = cleaning.clean_line(q if q is not None else "", "q", max_length=100, required=False)
    latest = (
        Message.objects.filter(room=OuterRef("pk")).order_by("-posted_seq").values("created")[:1]
    )
    rows = (
        Room.objects.filter(kind=Room.ROOM, private=False)
        .annotate(
            member_count=Count(
                "memberships", filter=Q(memberships__user__is_active=True), distinct=True
            ),
            latest_activity=Subquery(latest),
            joined=Exists(Membership.objects.filter(room=OuterRef("pk"), user=user)),
        )
        # Nulls last: PostgreSQL puts them first in a descending order.
        .order_by(F("latest_activity").desc(nulls_last=True), "-created", "slug")
    )
    if query:
        rows = rows.filter(
            Q(slug__icontains=query) | Q(title__icontains=query) | Q(description__icontains=query)
        )
    page = list(rows[offset : offset + limit + 1])
    listed = [
        {
            "slug": room.slug,
            "title": room.title,
            "description": room.description,
            "members": room.member_count,
            "latest_activity": room.latest_activity.isoformat() if room.latest_activity else None,
            "joined": room.joined,
        }
        for room in page[:limit]
    ]
    return {"rooms": listed, "has_more": len(page) > limit}


# --- joining and leaving ---


def _event(user_id: Any, kind: str, room: Room, removed: bool = False) -> None:
    notify.store([(user_id, kind, room, None, room.seq)], removed=removed)


def join(user: Any, room: Room) -> bool:
    """Join a public room (True: newly). A private room is by invitation only, even for those
    who may read it (its moderators, site staff): `forbidden`, nothing stored."""
    if room.is_dm or room.private:
        raise ChatError(
            "forbidden", _("This room is private: its owner or a moderator can invite you.")
        )
    with transaction.atomic():
        _row, created = Membership.objects.get_or_create(
            room=room, user=user, defaults={"read_seq": room.seq}
        )
        if created:
            _event(user.pk, UserEvent.JOINED, room)
    return created


def leave(user: Any, room: Room) -> bool:
    """Leave a room (True: was in it): it leaves the user's rooms list on every device and
    raises no more notifications. Leaving a private room loses access to it: the user's live
    connections stop receiving it, as on removal. A DM cannot be left (its members are fixed;
    its notifications can be turned off), nor a private room by its owner, who would leave it
    with nobody answerable for it."""
    if room.is_dm:
        raise ChatError(
            "bad_request",
            _("A direct-message conversation cannot be left; set its notifications to nothing."),
        )
    if room.private and access.is_owner(user, room):
        raise ChatError("bad_request", _("You own this private room, so you cannot leave it."))
    return _drop(None, user, room)


def _drop(actor: Any, user: Any, room: Room) -> bool:
    with transaction.atomic():
        gone, _count = Membership.objects.filter(room=room, user=user).delete()
        if not gone:
            return False
        _event(user.pk, UserEvent.LEFT, room, removed=actor is not None)
        if actor is not None:
            audit(actor, "remove_member", room=room, target_user=user)
        if room.private:
            room_id, user_id = room.pk, user.pk
            transaction.on_commit(lambda: fanout.recheck(room_id, user_id))
    return True


# --- the members of a private room ---


def _managed_private(actor: Any, room: Room, what: str) -> None:
    if room.is_dm:
        raise ChatError("bad_request", _("Nobody is added to or removed from a DM."))
    if not access.can_manage(actor, room):
        raise ChatError("forbidden", _("Only this room's owner and moderators may do that."))
    if not room.private:
        raise ChatError(
            "bad_request",
            _("Anyone can join or leave a public room: %(what)s is for private rooms.")
            % {"what": what},
        )


def _person(value: Any) -> Any:
    """An active user by username; a deactivated account is `not_found`, as nobody."""
    person = access.find_user(value)
    if not person.is_active:
        raise ChatError("not_found", _("There is no such user."))
    return person


def invite(actor: Any, room: Room, username: Any) -> tuple[Any, bool]:
    """Add someone to a private room (True: newly): an `invite` on their stream puts the room in
    their rooms list. Inviting a member again changes nothing; someone banned from the room is
    refused."""
    _managed_private(actor, room, _("inviting"))
    person = _person(username)
    banned = Restriction.objects.applying_to(person, room).filter(kind=Restriction.BAN)
    if banned.exists():
        raise ChatError("forbidden", _("This person is banned from this room."))
    with transaction.atomic():
        _row, created = Membership.objects.get_or_create(
            room=room, user=person, defaults={"read_seq": room.seq}
        )
        if created:
            _event(person.pk, UserEvent.INVITE, room)
            audit(actor, "invite", room=room, target_user=person)
    return person, created


def remove(actor: Any, room: Room, username: Any) -> bool:
    """Remove someone from a private room (True: was in it): it leaves their rooms list, their
    `left` event says `removed` (a page open on the room says why rather than moving on), and
    their live connections stop receiving it. The owner cannot be removed. Removing oneself is
    leaving (no `removed`)."""
    _managed_private(actor, room, _("removing"))
    person = _person(username)
    if access.is_owner(person, room):
        raise ChatError("forbidden", _("The room's owner cannot be removed."))
    return _drop(None if person.pk == actor.pk else actor, person, room)
