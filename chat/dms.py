"""Direct messages and blocks.

A direct-message conversation is a private room of kind `dm` whose members are fixed when it is
opened: the write path, the protocol, history, resume, long-poll, attachments, typing, presence
and the read cursor treat it as any private room. The same people always get the same room: its
`dm_key` (a hash of the sorted member ids) is unique, so two people opening it at the same moment
race on one insert, and the loser reads the winner's room.

A block stops the blocked user from opening or posting to a 1:1 conversation with the blocker
(chat/access.py, checked again inside the write path's insert) and from notifying them at all
(chat/notify.py). It is silent: the blocked user learns only that they cannot message that person.
"""

from __future__ import annotations

import hashlib
import secrets
from typing import Any

from django.db import IntegrityError, transaction
from django.utils.translation import gettext as _

from chat import access, cleaning
from chat.conf import settings
from chat.errors import ChatError
from chat.models import Block, Membership, Room


def _key(user_ids: list[Any]) -> str:
    return hashlib.sha256(",".join(sorted(str(pk) for pk in user_ids)).encode()).hexdigest()


def _people(user: Any, usernames: Any) -> list[Any]:
    limit = settings.CHAT_DM_MAX_OTHERS
    if not isinstance(usernames, list) or not usernames:
        raise ChatError("bad_request", _("`users` must be a list of usernames."))
    if len(usernames) > limit + 1:
        raise ChatError(
            "bad_request",
            _("A conversation has at most %(limit)s other people.") % {"limit": limit},
        )
    names = list(dict.fromkeys(cleaning.clean_username(name, "users") for name in usernames))
    me = user.get_username()
    others = [name for name in names if name != me]
    if len(others) > limit:
        raise ChatError(
            "bad_request",
            _("A conversation has at most %(limit)s other people.") % {"limit": limit},
        )
    # A conversation with oneself (notes to self) is allowed, as in most chats.
    return [access.find_user(name) for name in others]


def open_dm(user: Any, usernames: Any) -> tuple[Room, bool]:
    """The conversation of the user and these people, made if it did not exist: (room, created).
    Unknown or deactivated usernames are `not_found` (the same answer for both); a 1:1 with
    someone who blocked the user is `forbidden`."""
    if not user.is_authenticated:
        raise ChatError("unauthorized", _("Log in first."))
    others = _people(user, usernames)
    if any(not other.is_active for other in others):
        raise ChatError("not_found", _("There is no such user."))
    if len(others) == 1 and Block.objects.filter(blocker=others[0], blocked=user).exists():
        raise ChatError("forbidden", _("You cannot message this person."))
    members = [user, *others]
    key = _key([member.pk for member in members])
    existing = Room.objects.filter(dm_key=key).first()
    if existing is not None:
        return existing, False
    title = ", ".join(sorted(member.get_username() for member in members))[:100]
    try:
        with transaction.atomic():
            room = Room.objects.create(
                slug=f"dm-{secrets.token_hex(8)}",
                title=title,
                private=True,
                kind=Room.DM,
                dm_key=key,
                created_by=user,
            )
            Membership.objects.bulk_create([Membership(room=room, user=m) for m in members])
    except IntegrityError:
        # Opened by someone else at the same moment: theirs is the conversation.
        room = Room.objects.filter(dm_key=key).first()
        if room is None:
            raise
        return room, False
    return room, True


def block(user: Any, username: Any) -> bool:
    """Block someone; True if they were not blocked already. A deactivated account is
    `not_found`, as in open_dm: the answer must not tell it from a name nobody has."""
    other = access.find_user(username)
    if not other.is_active:
        raise ChatError("not_found", _("There is no such user."))
    if other.pk == user.pk:
        raise ChatError("bad_request", _("You cannot block yourself."))
    _row, created = Block.objects.get_or_create(blocker=user, blocked=other)
    return created


def unblock(user: Any, username: Any) -> None:
    """Lift a block. A deactivated account the user never blocked is `not_found` (as in block());
    one they did block can still be lifted, since they already know the name."""
    other = access.find_user(username)
    deleted, _count = Block.objects.filter(blocker=user, blocked=other).delete()
    if not deleted and not other.is_active:
        raise ChatError("not_found", _("There is no such user."))


def blocked(user: Any) -> list[str]:
    rows = Block.objects.filter(blocker=user).select_related("blocked").order_by("created")
    return [row.blocked.get_username() for row in rows]
