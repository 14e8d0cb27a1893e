"""The refusal every layer raises and every transport turns into its own shape: a protocol `error`
event (WebSocket), a JSON error with the status below (HTTP).

A detail is written in the active language (`gettext` where it is raised); its `code` never is. The
HTTP views get the language from Django's LocaleMiddleware; the ASGI transports activate the one
`language_from_headers` picks around their work, which carries on into their worker threads."""

from __future__ import annotations

from collections.abc import Iterable

from django.conf import settings
from django.utils import translation
from django.utils.translation import trans_real

STATUS = {
    "bad_request": 400,
    "unknown_action": 400,
    "unauthorized": 401,
    "forbidden": 403,
    "not_found": 404,
    "method_not_allowed": 405,
    "conflict": 409,
    "too_large": 413,
    "rate_limited": 429,
    "server_error": 500,
}


class ChatError(Exception):
    """A refusal every transport turns into its own error shape (an `error` event or JSON)."""

    def __init__(self, code: str, detail: str, retry_after: float | None = None) -> None:
        super().__init__(detail)
        self.code = code
        # A lazy translation stays lazy until read: a batch of posts is refused in one thread and
        # each sender reads its refusal in its own, in its own language.
        self._detail = detail
        self.retry_after = retry_after

    @property
    def detail(self) -> str:
        return str(self._detail)

    @property
    def status(self) -> int:
        return STATUS.get(self.code, 400)


def language_from_headers(headers: Iterable[tuple[bytes, bytes]]) -> str:
    """The language for the details of a connection that Django's LocaleMiddleware never sees (a
    WebSocket, a long-poll waiter routed in ASGI): the first of its Accept-Language that
    settings.LANGUAGES has, else LANGUAGE_CODE, as the middleware chooses for a page."""
    for name, value in headers:
        if name.lower() != b"accept-language":
            continue
        for code, _quality in trans_real.parse_accept_lang_header(value.decode("latin1")):
            if code == "*":
                break
            try:
                return translation.get_supported_language_variant(code)
            except LookupError:
                continue
    return settings.LANGUAGE_CODE
