"""How long this invocation may still run: the deadline that fan-out and replies respect.

Lambda ends an invocation at its timeout, whatever it is doing. Each entry point starts the clock
from its Lambda context (`get_remaining_time_in_millis()`): the WebSocket handlers
(chat/serverless.py), HTTP requests (`middleware` below, from the `lambda.context` that Zappa's
WSGI handler puts in the request's environ) and fan-out batches (chat/apigateway.py, from the
context Zappa's handler passes to a command). Code far from the handler, such as a fan-out run
after commit, reads `deadline()` here; nothing has to carry the context down.

Without a context (outside Lambda, or a caller that has none) the deadline is
CHAT_INVOCATION_TIMEOUT seconds after the clock was started, or after the first call that asks
when nobody started it: a fan-out after commit is then assumed to run near the invocation's start.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction

from chat import metrics
from chat.conf import settings

_deadline: ContextVar[float | None] = ContextVar("chat_invocation_deadline", default=None)


def deadline_of(context: Any = None, now: float | None = None) -> float:
    """The monotonic time at which an invocation with this context ends."""
    now = time.monotonic() if now is None else now
    remaining = getattr(context, "get_remaining_time_in_millis", None)
    if callable(remaining):
        return now + max(0, remaining()) / 1000
    return now + settings.CHAT_INVOCATION_TIMEOUT


@contextlib.contextmanager
def running(context: Any = None) -> Iterator[float]:
    """The clock of one invocation, for code inside the block (the same thread and its
    contexts); yields the deadline."""
    token = _deadline.set(deadline_of(context))
    try:
        yield _deadline.get()  # type: ignore[misc]
    finally:
        _deadline.reset(token)


@contextlib.contextmanager
def reserving(seconds: float) -> Iterator[float]:
    """Code inside the block sees a deadline `seconds` earlier: time kept for what the
    invocation still has to do after it (a frame's replies after its fan-out)."""
    token = _deadline.set(deadline() - seconds)
    try:
        yield _deadline.get()  # type: ignore[misc]
    finally:
        _deadline.reset(token)


def deadline() -> float:
    """When the current invocation ends (monotonic clock)."""
    value = _deadline.get()
    return deadline_of() if value is None else value


def remaining() -> float:
    """Seconds the current invocation may still run."""
    return deadline() - time.monotonic()


def middleware(get_response: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """Starts the clock of a request that came through Zappa's handler (its environ carries the
    Lambda context); does nothing elsewhere. Sync and async, so it adds no thread hop under
    ASGI."""
    if iscoroutinefunction(get_response):

        async def async_middleware(request: Any) -> Any:
            context = request.META.get("lambda.context")
            if context is None:
                return await get_response(request)
            with running(context), metrics.emitting("http"):
                return await get_response(request)

        return markcoroutinefunction(async_middleware)

    def sync_middleware(request: Any) -> Any:
        context = request.META.get("lambda.context")
        if context is None:
            return get_response(request)
        with running(context), metrics.emitting("http"):
            return get_response(request)

    return sync_middleware


middleware.sync_capable = True  # type: ignore[attr-defined]
middleware.async_capable = True  # type: ignore[attr-defined]
