"""The refusal every layer raises and every transport turns into its own shape: a protocol `error`
event (WebSocket), a JSON error with the status below (HTTP)."""

from __future__ import annotations

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
        self.detail = detail
        self.retry_after = retry_after

    @property
    def status(self) -> int:
        return STATUS.get(self.code, 400)
