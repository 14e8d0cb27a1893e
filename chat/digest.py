"""The email digest: mentions and direct messages nobody read, by email.

A `mention` or `dm` event of a user's stream (chat/notify.py) that is still unread
CHAT_EMAIL_DELAY minutes after it was raised goes out in one email per user, with every such
message since the user's last digest, grouped by room. `Inbox.emailed_seq` says how far the user's
stream has been considered: each run moves it forward over what it looked at, so nothing is
emailed twice, and events younger than the delay wait for a later run.

What is left out is what the user would not see on opening the room now: messages read in the
meantime (the membership's `read_seq` reached the event), deleted or hidden ones, rooms the user
may no longer read (left, banned), rooms the user silenced since (level `none`), and authors the
user blocks. Bodies are the messages' current text (an edit shows as edited).

Self-hosted, `manage.py send_digests` runs it (cron, every minute); on Lambda, `scheduled` below
(zappa_settings.json "events").
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.contrib.auth import get_user_model
from django.core import signing
from django.core.mail import EmailMultiAlternatives, get_connection
from django.core.mail.backends.base import BaseEmailBackend
from django.db import connection, transaction
from django.db.models import Exists, F, OuterRef
from django.template.loader import render_to_string
from django.urls import reverse
from django.utils import timezone

from chat import invocation, reads
from chat.conf import settings
from chat.models import Block, Inbox, Membership, Room, UserEvent

log = logging.getLogger(__name__)

KINDS = (UserEvent.MENTION, UserEvent.DM)
# The most messages one email lists (the rest are counted): a long absence is a summary, not a
# transcript.
MAX_LISTED = 50
# The most events one run considers for a user; a longer backlog goes out in the next run's email.
MAX_SCAN = 1000
SALT = "chat.digest.unsubscribe"
ONE_CLICK = {"List-Unsubscribe": ["One-Click"]}


# --- the unsubscribe link: a signed user id, valid until the secret key changes ---


def make_token(user_id: Any) -> str:
    """A token naming the user, for the link in every digest. It does not expire: RFC 8058 asks
    that an unsubscribe link keep working, and all it can do is stop emails."""
    return signing.dumps(str(user_id), salt=SALT)


def user_for_token(token: str) -> Any | None:
    """The active user a token names, or None when it is bad, tampered with or names nobody."""
    try:
        user_id = signing.loads(token, salt=SALT)
    except signing.BadSignature:
        return None
    if not isinstance(user_id, str):
        return None
    try:
        return get_user_model().objects.filter(pk=user_id, is_active=True).first()
    except (ValueError, TypeError):  # a pk the user model cannot parse
        return None


def unsubscribe_url(user_id: Any) -> str:
    return settings.CHAT_SITE_URL + reverse("chat:email-unsubscribe", args=[make_token(user_id)])


def is_one_click(request: Any) -> bool:
    """Whether a POST is a mail client's RFC 8058 one-click unsubscribe: a form holding exactly
    `List-Unsubscribe=One-Click` (urlencoded or multipart, as the RFC's example), nothing else."""
    return not request.FILES and dict(request.POST.lists()) == ONE_CLICK


def unsubscribe(user: Any) -> None:
    """No more digests for the user (idempotent). A user who never had an event has no Inbox
    yet: it is made now, so the first event does not find digests on (notify keeps the flag)."""
    if Inbox.objects.filter(user=user).update(email_digests=False):
        return
    Inbox.objects.bulk_create([Inbox(user=user, email_digests=False)], ignore_conflicts=True)
    Inbox.objects.filter(user=user).update(email_digests=False)


# --- the digest ---


@dataclass
class Item:
    author: str
    body: str
    created: datetime
    mention: bool
    attachment: bool

    @property
    def indented(self) -> str:
        """The body for the plain-text part, its later lines indented like its first."""
        return self.body.replace("\n", "\n  ")


@dataclass
class Section:
    """One room of a digest: its title as the user sees it, a link to it, its messages."""

    title: str
    url: str
    dm: bool
    items: list[Item] = field(default_factory=list)


class _SendFailed(Exception):
    """The mail backend refused a digest: the user's transaction rolls back."""


def send_digests(now: datetime | None = None) -> dict[str, int]:
    """One run: a digest for each user with mentions or DMs older than CHAT_EMAIL_DELAY minutes
    not considered yet. Returns counts: `sent`; `nothing` (considered, nothing left to send, or
    no email address); `failed` (the mail backend raised, retried next run); `busy` (another run
    has the user); `left` (not reached before the invocation's deadline, next run)."""
    now = now or timezone.now()
    cutoff = now - timedelta(minutes=settings.CHAT_EMAIL_DELAY)
    result = {"sent": 0, "nothing": 0, "failed": 0, "busy": 0, "left": 0}
    user_ids = _due_users(cutoff)
    # One SMTP connection for the run, opened at the first send.
    mail = get_connection()
    # Starting a user needs time for one send at most (EMAIL_TIMEOUT) and a commit.
    margin = (settings.EMAIL_TIMEOUT or 10) + 2
    try:
        for done, user_id in enumerate(user_ids):
            if invocation.remaining() < margin:
                result["left"] = len(user_ids) - done
                break
            result[_digest_for(user_id, cutoff, mail)] += 1
    finally:
        _close(mail)
    if any(result.values()):
        log.info("email digests: %s", result)
    return result


def scheduled(event: Any = None, context: Any = None) -> dict[str, int]:
    """The Lambda schedule's entry point (zappa_settings.json "events"): stops starting users
    before the invocation's deadline, from its context; the next minute's run goes on."""
    with invocation.running(context):
        return send_digests()


def _due_users(cutoff: datetime) -> list[Any]:
    """Users with digests on and a mention or DM past the delay beyond their emailed_seq."""
    pending = UserEvent.objects.filter(
        user_id=OuterRef("user_id"),
        kind__in=KINDS,
        seq__gt=OuterRef("emailed_seq"),
        created__lte=cutoff,
    )
    # `seq > emailed_seq` is a column comparison on the Inbox row: it skips users with nothing
    # new without probing their events.
    inboxes = Inbox.objects.filter(email_digests=True, seq__gt=F("emailed_seq"))
    return list(
        inboxes.filter(Exists(pending)).order_by("user_id").values_list("user_id", flat=True)
    )


def _try_lock(user_id: Any) -> bool:
    """This run's hold on the user until its transaction ends; False if another run has it.

    An advisory lock, not a lock on the Inbox row: every mention or DM to the user takes that row
    (notify._take_seqs) while holding its room's lock, and a row lock held across an SMTP call
    would make posts to the room wait for the mail server. Elsewhere than PostgreSQL (SQLite
    serialises writers anyway) the conditional UPDATE in _digest_for, made before sending, keeps
    a second run from sending."""
    if connection.vendor != "postgresql":
        return True
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pg_try_advisory_xact_lock(hashtextextended(%s, 0))", [f"chat.digest:{user_id}"]
        )
        return bool(cursor.fetchone()[0])


def _digest_for(user_id: Any, cutoff: datetime, mail: BaseEmailBackend) -> str:
    """Decide, advance and send in one transaction: if the send fails, the advance rolls back and
    the next run tries again (a mail server that accepted the message but failed to answer can
    mean a second copy then; an advance committed before sending would lose the digest instead).
    A run that dies between sending and committing likewise sends again next time."""
    try:
        with transaction.atomic():
            if not _try_lock(user_id):
                return "busy"
            inbox = Inbox.objects.filter(user_id=user_id, email_digests=True).first()
            if inbox is None:  # unsubscribed since the run listed its users
                return "nothing"
            considered = list(
                UserEvent.objects.filter(user_id=user_id, kind__in=KINDS, seq__gt=inbox.emailed_seq)
                .order_by("seq")
                .values_list("seq", "created")[:MAX_SCAN]
            )
            # Only the oldest events up to the first one younger than the delay: user_seq order
            # is commit order, `created` is each writer's clock, and an event skipped over here
            # would never be considered again.
            horizon = inbox.emailed_seq
            for seq, created in considered:
                if created > cutoff:
                    break
                horizon = seq
            if horizon == inbox.emailed_seq:
                return "nothing"
            # On PostgreSQL the advance comes after the send, so the Inbox row is locked for a
            # moment at the end, not across the SMTP call; elsewhere it comes first, and a
            # second run that finds emailed_seq moved sends nothing.
            locked = connection.vendor == "postgresql"
            if not locked and not _advance(user_id, inbox.emailed_seq, horizon):
                return "busy"
            message = _build(user_id, inbox.emailed_seq, horizon, mail)
            if message is not None:
                try:
                    mail.open()
                    message.send()
                except Exception as exc:
                    raise _SendFailed from exc
            if locked and not _advance(user_id, inbox.emailed_seq, horizon):
                raise RuntimeError(f"emailed_seq of user {user_id} moved under the digest's lock")
            if message is None:
                return "nothing"
    except _SendFailed:
        # No body in the log: message text stays out of logs.
        log.exception("email digest for user %s failed; the next run retries", user_id)
        _close(mail)  # a broken connection is reopened by the next send
        return "failed"
    return "sent"


def _advance(user_id: Any, old: int, new: int) -> bool:
    return bool(Inbox.objects.filter(user_id=user_id, emailed_seq=old).update(emailed_seq=new))


def _close(mail: BaseEmailBackend) -> None:
    try:
        mail.close()
    except Exception:
        log.warning("closing the mail connection failed", exc_info=True)


def _build(
    user_id: Any, after: int, upto: int, mail: BaseEmailBackend
) -> EmailMultiAlternatives | None:
    """The digest of the user's events in (after, upto], or None when nothing is left to say or
    nowhere to say it."""
    user = get_user_model().objects.filter(pk=user_id, is_active=True).first()
    address = getattr(user, user.get_email_field_name(), "") if user is not None else ""
    if not address:
        return None
    rows = list(
        UserEvent.objects.filter(
            user_id=user_id,
            kind__in=KINDS,
            seq__gt=after,
            seq__lte=upto,
            message__isnull=False,
            message__deleted=False,
            message__hidden=False,
        )
        .exclude(
            message__author_id__in=Block.objects.filter(blocker_id=user_id).values("blocked_id")
        )
        .select_related("room", "message__author", "message__attachment")
        .order_by("seq")
    )
    if not rows:
        return None
    room_ids = {row.room_id for row in rows}
    readable = set(reads.readable_rooms(user_id, room_ids))
    memberships = {
        m.room_id: m for m in Membership.objects.filter(user_id=user_id, room_id__in=room_ids)
    }
    sections: dict[int, Section] = {}
    seen: set[int] = set()
    count = 0
    dms = [row.room for row in rows if row.room.is_dm]
    people = reads.dm_members(list({room.pk: room for room in dms}.values()))
    for row in rows:
        room: Room = row.room
        membership = memberships.get(room.pk)
        if room.pk not in readable or row.message_id in seen:
            continue
        if membership is not None and (
            membership.read_seq >= row.room_seq or membership.level(room) == Membership.NONE
        ):
            continue
        seen.add(row.message_id)
        count += 1
        if count > MAX_LISTED:
            continue
        section = sections.get(room.pk)
        if section is None:
            title = (
                reads.dm_view(room, people.get(room.pk, []), user)["title"]
                if room.is_dm
                else room.title
            )
            url = settings.CHAT_SITE_URL + reverse("chat:room", args=[room.slug])
            section = sections[room.pk] = Section(title, url, room.is_dm)
        message = row.message
        section.items.append(
            Item(
                author=message.author.get_username(),
                body=message.body,
                created=message.created,
                mention=row.kind == UserEvent.MENTION,
                attachment=message.attachment_id is not None,
            )
        )
    if not count:
        return None
    link = unsubscribe_url(user_id)
    context = {
        "user": user,
        "sections": list(sections.values()),
        "count": count,
        "more": max(0, count - MAX_LISTED),
        "site_url": settings.CHAT_SITE_URL,
        "unsubscribe_url": link,
        "delay": settings.CHAT_EMAIL_DELAY,
    }
    subject = " ".join(render_to_string("chat/email/digest_subject.txt", context).split())
    context["subject"] = subject
    message = EmailMultiAlternatives(
        subject,
        render_to_string("chat/email/digest.txt", context),
        to=[address],
        connection=mail,
        headers={
            # RFC 2369 and RFC 8058: mail clients offer "unsubscribe" and POST to it themselves.
            "List-Unsubscribe": f"<{link}>",
            "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
        },
    )
    message.attach_alternative(render_to_string("chat/email/digest.html", context), "text/html")
    return message
