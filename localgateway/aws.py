"""What the gateway's APIs share: API Gateway's quotas, the shapes of its ids, times and
repeated keys, and errors in the form botocore reads."""

from __future__ import annotations

import random
import time
from typing import Any

from aiohttp import web

# API Gateway quotas (developerguide/limits.html).
FRAME_LIMIT = 32 * 1024
MESSAGE_LIMIT = 128 * 1024
IDLE_TIMEOUT = 10 * 60.0
MAX_DURATION = 2 * 60 * 60.0
INTEGRATION_TIMEOUT = 29.0
REST_PAYLOAD_LIMIT = 10 * 1024 * 1024

# The bodies API Gateway answers with when the integration fails.
TIMED_OUT = {"message": "Endpoint request timed out"}
INTERNAL_ERROR = {"message": "Internal server error"}

_MONTHS = "Jan Feb Mar Apr May Jun Jul Aug Sep Oct Nov Dec".split()
_ALNUM = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"


def aws_id() -> str:
    """16 characters shaped like API Gateway's ids (``L0SM9cOFvHcCIhw=``); AWS's may
    hold ``+`` and ``/``, these stay alphanumeric so URLs and logs need no escaping."""
    return "".join(random.choices(_ALNUM, k=15)) + "="


def api_id() -> str:
    """10 lower-case letters and digits, like the id in an API's execute-api host name."""
    return "".join(random.choices(_ALNUM[26:], k=10)).lower()


def request_time(now: float) -> str:
    t = time.gmtime(now)  # not strftime("%b"), which follows the locale
    month = _MONTHS[t.tm_mon - 1]
    return f"{t.tm_mday:02d}/{month}/{t.tm_year}:{time.strftime('%H:%M:%S', t)} +0000"


def client(request: web.Request) -> tuple[str, str, str]:
    """Domain, source IP and user agent, as API Gateway reports them."""
    ip = request.remote or "127.0.0.1"
    return request.host, ip, request.headers.get("User-Agent", "")


def multi(pairs: Any) -> tuple[dict[str, str], dict[str, list[str]]]:
    """API Gateway's two views of repeated keys: the last value, and all of them."""
    single: dict[str, str] = {}
    every: dict[str, list[str]] = {}
    for key, value in pairs:
        single[key] = value
        every.setdefault(key, []).append(value)
    return single, every


def aws_error(status: int, error_type: str, message: str | None) -> web.Response:
    # botocore's rest-json parser picks the exception class from x-amzn-ErrorType.
    headers = {"x-amzn-ErrorType": error_type}
    return web.json_response({"message": message}, status=status, headers=headers)
