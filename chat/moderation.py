"""Moderation: hide, restore and erase messages; lock, rename and make rooms private; ban and mute
(and lift them); reports; the audit log.

Every action checks permission (chat/access.py), writes its audit row in the same transaction as
the change, and reaches live clients only after commit and only through the fan-out
(chat/fanout.py): changes to messages go through the write path's `change`, so they take the room's
next seq and reach every subscriber live and on resume like any edit; removing people from a room
is `fanout.recheck` or `fanout.close_user`, which every backend carries out for its transport.
This module imports no transport.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.db import transaction
from django.db.models.signals import post_save, pre_save
from django.dispatch import receiver
from django.utils.translation import gettext as _

from chat import cleaning, events, fanout
from chat.access import can_manage, is_room_moderator, require, restriction
from chat.conf import settings
from chat.errors import ChatError
from chat.models import DESCRIPTION_MAX, Message, ModerationAction, Report, Restriction, Room
from chat.writepath import change, room_message


def _reason(value: Any) -> str:
    if value is None:
        return ""
    return cleaning.clean_text(value, "reason", max_length=500, required=False, strip=True)


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


# --- messages ---


def _act_on_message(
    actor: Any,
    room: Room,
    message_id: Any,
    reason: Any,
    *,
    perm: str,
    action: str,
    done: Callable[[Message], bool],
    **fields: Any,
) -> Message:
    """Check, change (the room's next seq), audit; doing it again when `done` changes nothing."""
    require(actor, room, perm)
    reason = _reason(reason)
    message = room_message(room, message_id)
    if done(message):
        return message  # safe to run twice
    with transaction.atomic():
        changed = change(message, **fields)
        audit(actor, action, room=room, target_user=message.author, message=changed, reason=reason)
    return changed


def hide_message(actor: Any, room: Room, message_id: Any, reason: Any = None) -> Message:
    """A moderator's delete: clients are told the message is removed; its text stays for the audit."""
    return _act_on_message(
        actor, room, message_id, reason, perm="hide_message", action="hide",
        done=lambda m: m.hidden, hidden=True,
    )  # fmt: skip


def restore_message(actor: Any, room: Room, message_id: Any, reason: Any = None) -> Message:
    return _act_on_message(
        actor, room, message_id, reason, perm="hide_message", action="restore",
        done=lambda m: not m.hidden, hidden=False,
    )  # fmt: skip


def erase_message(actor: Any, room: Room, message_id: Any, reason: Any = None) -> Message:
    """Delete for good: the text is gone from the database too; a tombstone keeps the seq, so
    every client (live or resuming) learns that it is gone. The audit row keeps who and why."""
    return _act_on_message(
        actor, room, message_id, reason, perm="delete_message", action="erase",
        done=lambda m: m.deleted, body="", deleted=True, hidden=False, mentions=[],
    )  # fmt: skip


# --- rooms ---

ROOM_FIELDS = {
    "locked": bool,
    "private": bool,
    "title": str,
    "rate_limit": int,
    "description": str,
}
# What the room's owner may change without moderating it (chat/access.py, can_manage).
OWNER_FIELDS = {"description"}


def moderate_room(actor: Any, room: Room, changes: dict[str, Any], reason: Any = None) -> Room:
    """Lock, unlock, rename, make private or public, tune the rate limit, describe; a `room`
    event goes to every subscriber after commit. Unknown or mistyped fields change nothing."""
    if not (changes and set(changes) <= OWNER_FIELDS and can_manage(actor, room)):
        require(actor, room, "change_room")
    reason = _reason(reason)
    fields: dict[str, Any] = {}
    for name, value in changes.items():
        kind = ROOM_FIELDS.get(name)
        if kind is None or type(value) is not kind:
            raise ChatError("bad_request", _("`%(name)s` cannot be set that way.") % {"name": name})
        fields[name] = value
    if "title" in fields:
        fields["title"] = cleaning.clean_line(fields["title"], "title", max_length=100)
    if "description" in fields:
        fields["description"] = cleaning.clean_text(
            fields["description"],
            "description",
            max_length=DESCRIPTION_MAX,
            required=False,
            strip=True,
        )
    if "rate_limit" in fields and not 0 <= fields["rate_limit"] <= 10_000:
        raise ChatError("bad_request", _("`rate_limit` is 0 (none) to 10,000 messages a minute."))
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
            # Readers who are not members stop receiving it, on every transport.
            transaction.on_commit(lambda: fanout.recheck(room_id))
    return room


def members_changed(room: Room) -> None:
    """The room's members or moderators changed (the admin): after commit, whoever may no
    longer read it stops receiving it."""
    room_id = room.pk
    transaction.on_commit(lambda: fanout.recheck(room_id))


# --- bans and mutes ---


def restrict(
    actor: Any,
    user: Any,
    kind: str,
    room: Room | None = None,
    until: Any = None,
    reason: Any = None,
) -> Restriction:
    """Ban or mute a user in a room, or site-wide with room=None (site staff only). A ban closes
    the user's open connections on every transport once committed."""
    if kind not in (Restriction.BAN, Restriction.MUTE):
        raise ChatError("bad_request", _("`kind` is ban or mute."))
    require(actor, room, "add_restriction")
    if user.pk == actor.pk:
        raise ChatError("bad_request", _("You cannot restrict yourself."))
    if user.is_superuser or (room is not None and is_room_moderator(user, room)):
        raise ChatError("forbidden", _("Moderators cannot be restricted in their own rooms."))
    reason, until = _reason(reason), cleaning.clean_until(until, "until")
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
            transaction.on_commit(lambda: fanout.close_user(user_id, room_id))
    return row


def lift(actor: Any, row: Restriction, reason: Any = None) -> None:
    require(actor, row.room, "delete_restriction")
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
    transaction.on_commit(lambda: fanout.close_user(user_id, None))


# Deactivating a Django user is a site ban: remember whether it was active before the save, act
# after it. Saves that name their fields (a login's last_login) are skipped unless they change
# is_active. Connected when the app is ready (chat/apps.py imports this module).


@receiver(pre_save, sender=settings.AUTH_USER_MODEL)
def _remember_active(sender: Any, instance: Any, update_fields: Any = None, **kwargs: Any) -> None:
    if instance.pk is None or (update_fields is not None and "is_active" not in update_fields):
        return
    instance._was_active = (
        sender.objects.filter(pk=instance.pk).values_list("is_active", flat=True).first()
    )


@receiver(post_save, sender=settings.AUTH_USER_MODEL)
def _on_deactivation(sender: Any, instance: Any, created: bool, **kwargs: Any) -> None:
    if not created and getattr(instance, "_was_active", False) and not instance.is_active:
        deactivated(instance)
    instance._was_active = instance.is_active


# --- reports ---


def report_message(user: Any, room: Room, message_id: Any, reason: Any) -> Report:
    """Report a message to the moderators; reporting it again changes nothing."""
    reason = _reason(reason)
    if not reason:
        raise ChatError("bad_request", _("Say why you report it (`reason`)."))
    if restriction(user, room) == Restriction.BAN:
        raise ChatError("forbidden", _("You are banned from this room."))
    message = room_message(room, message_id)
    report, _created = Report.objects.get_or_create(
        message=message, reporter=user, defaults={"reason": reason}
    )
    return report


def resolve_reports(actor: Any, reports: Any) -> int:
    done = 0
    for report in reports.select_related("message__room"):
        room = report.message.room
        require(actor, room, "change_report")
        with transaction.atomic():
            if Report.objects.filter(pk=report.pk, resolved=False).update(resolved=True):
                audit(actor, "resolve_report", room=room, message=report.message, report=report.pk)
                done += 1
    return done
