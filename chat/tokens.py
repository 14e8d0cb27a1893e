"""Short-lived signed WebSocket tokens (`POST /api/ws-token`).

A token names the user and a fragment of the user's session auth hash, so it dies with a password
change as well as with its age. It is signed, not encrypted: it holds nothing secret.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core import signing

SALT = "chat.ws-token"


def make_token(user: Any, session_key: str | None = None) -> str:
    return signing.dumps({"u": user.pk, "h": user.get_session_auth_hash()[:20]}, salt=SALT)


def user_for_token(token: Any) -> Any | None:
    """The active user the token was made for, or None when it is missing, forged or expired."""
    if not isinstance(token, str) or not token or len(token) > 512:
        return None
    try:
        data = signing.loads(token, salt=SALT, max_age=settings.CHAT_WS_TOKEN_MAX_AGE)
    except signing.BadSignature:
        return None
    if not isinstance(data, dict):
        return None
    user = get_user_model().objects.filter(pk=data.get("u"), is_active=True).first()
    if user is None or user.get_session_auth_hash()[:20] != data.get("h"):
        return None
    return user
