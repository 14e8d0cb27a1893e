"""Short-lived signed WebSocket tokens (`POST /api/ws-token`).

A token names the user and a fragment of the user's session auth hash, so it dies with a password
change as well as with its age. A token made in a browser session also names a keyed hash of that
session's key, so it dies when that session logs out: a token copied from a page (or a log) cannot
be replayed after the user has logged out. It is signed, not encrypted: it holds nothing secret,
which is why the session key itself is never put in it.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.contrib.auth import get_user_model
from django.core import signing
from django.db.models import Exists
from django.http import HttpRequest
from django.utils import timezone
from django.utils.crypto import salted_hmac

from chat.conf import settings
from chat.models import LoggedOutSession

SALT = "chat.ws-token"
SESSION_SALT = "chat.ws-token.session"
# 128 bits of the HMAC: collisions between sessions are out of reach, and tokens stay short.
SESSION_HASH_LENGTH = 32


def session_hash(session_key: str) -> str:
    """A keyed hash of a session key: what tokens and LoggedOutSession rows name. Keyed, so
    that a token (readable by anyone who holds it) reveals nothing that could be turned back
    into the session cookie."""
    digest = salted_hmac(SESSION_SALT, session_key, algorithm="sha256").hexdigest()
    return digest[:SESSION_HASH_LENGTH]


def make_token(user: Any, session_key: str | None = None) -> str:
    data: dict[str, Any] = {"u": user.pk, "h": user.get_session_auth_hash()[:20]}
    if session_key:
        data["s"] = session_hash(session_key)
    return signing.dumps(data, salt=SALT)


def user_for_token(token: Any) -> Any | None:
    """The active user the token was made for, or None when it is missing, forged, expired, or
    made in a session that has logged out since."""
    if not isinstance(token, str) or not token or len(token) > 512:
        return None
    try:
        data = signing.loads(token, salt=SALT, max_age=settings.CHAT_WS_TOKEN_MAX_AGE)
    except signing.BadSignature:
        return None
    if not isinstance(data, dict):
        return None
    users = get_user_model().objects.filter(pk=data.get("u"), is_active=True)
    session = data.get("s")
    if session is not None:
        # In the user's own query: every WebSocket connect runs this, so the logout check
        # costs no second round trip.
        users = users.annotate(
            _logged_out=Exists(LoggedOutSession.objects.filter(key_hash=str(session)))
        )
    user = users.first()
    if user is None or user.get_session_auth_hash()[:20] != data.get("h"):
        return None
    if getattr(user, "_logged_out", False):
        return None
    return user


def forget_session(sender: Any, request: HttpRequest | None, user: Any, **kwargs: Any) -> None:
    """`user_logged_out` receiver (connected in chat/apps.py): the tokens of this session stop
    working. Only this session's: the user's other devices keep theirs."""
    session = getattr(request, "session", None)
    key = getattr(session, "session_key", None)
    if not key:
        return  # a session that was never saved made no tokens
    now = timezone.now()
    # Logouts are rare and rows are worthless once every token they could stop has expired,
    # so the clean-up rides along here rather than needing a scheduled job.
    LoggedOutSession.objects.filter(
        at__lt=now - timedelta(seconds=settings.CHAT_WS_TOKEN_MAX_AGE)
    ).delete()
    LoggedOutSession.objects.bulk_create(
        [LoggedOutSession(key_hash=session_hash(key))], ignore_conflicts=True
    )
