"""The console format of server errors: which request failed (its path, never its query string),
for which user (an id, never a name or a cookie), with the traceback, and with secrets taken out.

Django's `django.request` records carry the request; uvicorn's "Exception in ASGI application"
carries nothing, so the ASGI scope is found in the traceback (the frame that ran the application
holds it). Nothing here reads the database or a session store: a log line must not fail, block or
query from inside an event loop, so a user that was never loaded is logged as "?".
"""

from __future__ import annotations

import logging
import re
from types import TracebackType
from typing import Any

from django.utils.functional import LazyObject, empty

# Credentials that may ride in a query string or a request line: uvicorn logs
# `"WebSocket /ws/?token=..."` and the access line with the query string; runserver logs the
# request line. Cookies and bodies are never logged at all.
_SECRET = re.compile(
    r"(?i)\b(token|access_token|ticket|password|sessionid|csrftoken|csrfmiddlewaretoken|"
    r"signature|x-amz-signature|x-amz-security-token)=[^&\s\"']*"
)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def redact(text: str) -> str:
    return _SECRET.sub(lambda m: f"{m.group(1)}=[redacted]", text)


def _one_line(text: str) -> str:
    """A path decoded from %0A could otherwise write a line of its own into the log."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def _loaded(value: Any) -> Any:
    """The object behind a lazy one if it was already evaluated, else None."""
    if isinstance(value, LazyObject):
        wrapped = value._wrapped
        return None if wrapped is empty else wrapped
    return value


def user_id(user: Any, session: Any = None) -> str:
    """The user's id, "anonymous", or "?" when it was never loaded (loading it here could query
    the database, which may be what failed)."""
    user = _loaded(user)
    if user is not None:
        pk = getattr(user, "pk", None)
        return str(pk) if pk is not None else "anonymous"
    cache = getattr(session, "_session_cache", None)
    if isinstance(cache, dict):
        return str(cache.get("_auth_user_id", "anonymous"))
    return "?"


def _scope_in(tb: TracebackType | None) -> dict[str, Any] | None:
    """The ASGI scope of the application call that raised, from the traceback's frames."""
    while tb is not None:
        local = tb.tb_frame.f_locals
        for candidate in (local.get("scope"), getattr(local.get("self"), "scope", None)):
            if isinstance(candidate, dict) and candidate.get("type") in ("http", "websocket"):
                return candidate
        tb = tb.tb_next
    return None


def request_context(record: logging.LogRecord) -> tuple[str, str]:
    """(path, user id) of the request a record is about, "-" for what it cannot tell."""
    request = getattr(record, "request", None)
    if request is not None and isinstance(getattr(request, "path", None), str):
        return request.path, user_id(
            getattr(request, "user", None), getattr(request, "session", None)
        )
    scope = _scope_in(record.exc_info[2]) if record.exc_info else None
    if scope is not None:
        return str(scope.get("path", "-")), user_id(scope.get("user"), scope.get("session"))
    return "-", "-"


class ContextFormatter(logging.Formatter):
    """`time level logger: message [path=... user=...]` and the traceback, secrets redacted."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s%(context)s")

    def format(self, record: logging.LogRecord) -> str:
        path, user = request_context(record)
        record.context = "" if path == user == "-" else f" [path={_one_line(path)} user={user}]"
        return redact(super().format(record))
