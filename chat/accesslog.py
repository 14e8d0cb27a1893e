"""The console format of server errors: which request failed (its path, never its query string),
for which user (an id, never a name or a cookie), with the traceback, and with secrets taken out.

Django's `django.request` records carry the request; uvicorn's "Exception in ASGI application"
carries nothing, so the ASGI scope is found in the traceback (the frame that ran the application
holds it). Nothing here reads the database or a session store: a log line must not fail, block or
query from inside an event loop, so a user that was never loaded is logged as "?".
"""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from collections.abc import Callable
from contextvars import ContextVar, Token
from types import TracebackType
from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.http import HttpRequest, HttpResponse
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
    """`time level logger: message [path=... user=...] [id=...]` and the traceback, secrets
    redacted."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s%(context)s")

    def format(self, record: logging.LogRecord) -> str:
        path, user = request_context(record)
        context = "" if path == user == "-" else f" [path={_one_line(path)} user={user}]"
        request_id = _request_id.get()
        record.context = f"{context} [id={request_id}]" if request_id else context
        return redact(super().format(record))


# --- Request ids and access lines ---

# The id of the request or WebSocket connection being served, in every line logged for it. Set by
# `middleware`, `asgi_access`, the Channels consumer and the Lambda handlers; copied into the
# worker threads that sync_to_async starts, so lines logged there carry it too.
_request_id: ContextVar[str | None] = ContextVar("chat_request_id", default=None)
_SANE_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
# Access lines: one per HTTP request, one per WebSocket connection when it closes.
access_log = logging.getLogger("chat.access")
# Wherever the site mounts the chat (chat.urls): the path ends the same.
_POLL = re.compile(r"/(?:rooms/[^/]+|me)/poll$")


def current_request_id() -> str | None:
    return _request_id.get()


def pick_request_id(*candidates: str | None) -> str:
    """The first candidate that is a sane token (a client's X-Request-ID, API Gateway's request
    id), else a new one: anything else could forge a log line or smuggle text into it."""
    for candidate in candidates:
        if candidate and _SANE_ID.fullmatch(candidate):
            return candidate
    return uuid.uuid4().hex


def set_request_id(value: str) -> Token[str | None]:
    return _request_id.set(value)


def reset_request_id(token: Token[str | None]) -> None:
    _request_id.reset(token)


def _shown(user: str) -> str:
    return "-" if user in ("?", "anonymous") else user


def log_request(method: str, path: str, status: int, started: float, user: str) -> None:
    """The access line of one HTTP request: the path only, never its query string (`?token=`)."""
    transport = "long-poll" if _POLL.search(path) else "http"
    duration = round((time.monotonic() - started) * 1000, 1)
    fields = {
        "event": "request",
        "transport": transport,
        "method": method,
        "path": _one_line(path),
        "status": status,
        "duration_ms": duration,
        "user": _shown(user),
    }
    access_log.info(
        "%s %s %s %s %sms user=%s",
        transport,
        method,
        fields["path"],
        status,
        duration,
        fields["user"],
        extra={"access": fields},
    )


class ConnectionLine:
    """What the access line of one WebSocket connection says when it closes; the transports count
    frames into it (a transport that cannot count cheaply leaves the counts at None)."""

    OUTCOMES = {1000: "closed", 1001: "went away", 1011: "error", 4401: "unauthorized"}

    def __init__(self, transport: str, counted: bool = True) -> None:
        self.transport = transport
        self.counted = counted
        self.started = time.monotonic()
        self.frames_in = 0
        self.frames_out = 0
        self.code: int | None = None  # the server's own close code, when it closed

    def closed(
        self, user: str, connection_id: str, code: int | None, duration: float | None = None
    ) -> None:
        code = self.code if self.code is not None else code
        outcome = self.OUTCOMES.get(code or 0, "forbidden" if code == 4403 else "closed")
        elapsed = time.monotonic() - self.started if duration is None else duration
        fields = {
            "event": "connection",
            "transport": self.transport,
            "connection": connection_id,
            "user": _shown(user),
            "duration_ms": round(elapsed * 1000, 1),
            "frames_in": self.frames_in if self.counted else None,
            "frames_out": self.frames_out if self.counted else None,
            "code": code,
            "outcome": outcome,
        }
        access_log.info(
            "%s %s closed %s (%s) after %sms frames=%s/%s user=%s",
            self.transport,
            connection_id,
            code,
            outcome,
            fields["duration_ms"],
            fields["frames_in"],
            fields["frames_out"],
            fields["user"],
            extra={"access": fields},
        )


def middleware(get_response: Callable[[HttpRequest], Any]) -> Callable[[HttpRequest], Any]:
    """The request id and access line of every request Django serves (the long-poll under ASGI
    skips Django: `asgi_access`). The id comes from X-Request-ID, else API Gateway's request id
    on Lambda, else a new one; it goes back in the X-Request-ID response header."""

    def begin(request: HttpRequest) -> Token[str | None]:
        event = request.META.get("lambda.event") or {}
        gateway = (event.get("requestContext") or {}).get("requestId")
        return set_request_id(pick_request_id(request.headers.get("X-Request-ID"), gateway))

    def end(request: HttpRequest, response: HttpResponse, started: float) -> None:
        response["X-Request-ID"] = current_request_id() or ""
        user = user_id(getattr(request, "user", None), getattr(request, "session", None))
        log_request(request.method or "-", request.path, response.status_code, started, user)

    if iscoroutinefunction(get_response):

        async def async_middleware(request: HttpRequest) -> Any:
            started, token = time.monotonic(), begin(request)
            try:
                response = await get_response(request)
                end(request, response, started)
                return response
            finally:
                reset_request_id(token)

        return markcoroutinefunction(async_middleware)

    def sync_middleware(request: HttpRequest) -> Any:
        started, token = time.monotonic(), begin(request)
        try:
            response = get_response(request)
            end(request, response, started)
            return response
        finally:
            reset_request_id(token)

    return sync_middleware


def header(scope: dict[str, Any], name: bytes) -> str | None:
    for key, value in scope.get("headers") or []:
        if key.lower() == name:
            return value.decode("latin1")
    return None


def asgi_access(app: Any) -> Any:
    """`middleware` for an ASGI application that Django's middleware does not reach."""

    async def wrapped(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        started = time.monotonic()
        request_id = pick_request_id(header(scope, b"x-request-id"))
        status = 500  # what the server answers if the application raises before it starts

        async def sending(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = [*message.get("headers", []), (b"x-request-id", request_id.encode())]
                message = {**message, "headers": headers}
            await send(message)

        token = set_request_id(request_id)
        try:
            await app(scope, receive, sending)
        finally:
            user = user_id(scope.get("user"), scope.get("session"))
            log_request(scope.get("method", "-"), scope.get("path", "-"), status, started, user)
            reset_request_id(token)

    return wrapped


# --- JSON ---


class JsonFormatter(ContextFormatter):
    """One JSON object per line (CHAT_LOG_FORMAT=json), with the same keys on every line: time,
    level, logger, message, request_id, path, user; an access line adds its fields, a failure
    its traceback as `exc`. Secrets are redacted as in the text format."""

    def format(self, record: logging.LogRecord) -> str:
        path, user = request_context(record)
        data: dict[str, Any] = {
            "time": self.formatTime(record),
            "level": record.levelname,
            "logger": record.name,
            "message": redact(record.getMessage()),
            "request_id": current_request_id(),
            "path": None if path == "-" else _one_line(path),
            "user": None if user == "-" else user,
        }
        data.update(getattr(record, "access", None) or {})
        if record.exc_info:
            data["exc"] = redact(self.formatException(record.exc_info))
        return json.dumps(data, default=str)
