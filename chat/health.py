"""Health checks for load balancers and orchestrators: `/healthz` and `/readyz`.

Both are answered by `middleware`, first in MIDDLEWARE, before anything that reads the Host header,
the session, the CSRF token or the user: a load balancer probes by IP address (not a name in
ALLOWED_HOSTS), carries no cookie, and must get an answer that says nothing but "up" or "down".
They are answered the same way under uvicorn (Django's ASGI handler), Zappa's WSGI handler and
`make run`, and write no access line (a probe every few seconds would drown the requests).

- `/healthz`: liveness. The process answers; nothing else is touched, so a database outage does
  not make an orchestrator restart every healthy process.
- `/readyz`: readiness. `SELECT 1` on the default database on a connection of its own, and a PING
  to Redis when REDIS_URL is set, concurrently, each bounded by CHAT_READY_TIMEOUT seconds. 200
  with what was checked, else 503 with which part failed. Never a URL, host or password.
- `/metrics`: Prometheus' text format (chat/metrics.py), only with `Authorization: Bearer
  <CHAT_METRICS_TOKEN>` (401 otherwise), and 404 while that setting is empty. Answered here too:
  Prometheus scrapes a target by address, as a probe does; the token is what guards it.
"""

from __future__ import annotations

import hmac
import logging
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction, sync_to_async
from django.db import connections
from django.db.utils import load_backend
from django.http import HttpRequest, HttpResponse, JsonResponse

from chat import metrics
from chat.conf import settings

log = logging.getLogger("chat.health")

LIVE = "/healthz"
READY = "/readyz"
METRICS = "/metrics"

# A check that hangs past its timeout keeps its thread until the driver gives up (its own connect
# and socket timeouts, set below); a few threads are enough for probes that come every second.
_pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="readyz")


def check_database() -> None:
    """`SELECT 1` on a fresh connection with the default database's settings: the pooled one of
    this thread could hide a server that stopped accepting connections."""
    timeout = settings.CHAT_READY_TIMEOUT
    config = connections.settings["default"]
    options = dict(config.get("OPTIONS") or {})
    engine = config["ENGINE"]
    if "postgresql" in engine:
        # libpq waits at least 2 s to connect; the statement itself gets the probe's timeout.
        options["connect_timeout"] = max(2, int(timeout))
        statement = f"-c statement_timeout={int(timeout * 1000)}"
        options["options"] = f"{options.get('options', '')} {statement}".strip()
    elif "sqlite" in engine:
        options["timeout"] = timeout
    wrapper = load_backend(engine).DatabaseWrapper(
        {**config, "OPTIONS": options, "CONN_MAX_AGE": 0}, "readyz"
    )
    try:
        with wrapper.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
    finally:
        wrapper.close()


def check_redis() -> None:
    import redis

    timeout = settings.CHAT_READY_TIMEOUT
    client = redis.Redis.from_url(
        settings.REDIS_URL, socket_timeout=timeout, socket_connect_timeout=timeout
    )
    try:
        client.ping()
    finally:
        client.close()


def checks() -> dict[str, Callable[[], None]]:
    """What readiness depends on here: the in-memory layer of `make run` has no Redis to ask."""
    table: dict[str, Callable[[], None]] = {"database": check_database}
    if settings.REDIS_URL:
        table["redis"] = check_redis
    return table


def readiness() -> tuple[bool, dict[str, str]]:
    """Every check at once, each given the same deadline; "ok", "timeout" or "error" for each."""
    deadline = time.monotonic() + settings.CHAT_READY_TIMEOUT
    futures: dict[str, Future[None]] = {name: _pool.submit(run) for name, run in checks().items()}
    results: dict[str, str] = {}
    for name, future in futures.items():
        try:
            future.result(timeout=max(0.0, deadline - time.monotonic()))
            results[name] = "ok"
        except FutureTimeout:
            results[name] = "timeout"
        except Exception as exc:
            results[name] = "error"
            # The class only: a driver's message can carry the host, user or DSN.
            log.warning("readiness check %s failed: %s", name, type(exc).__name__)
    return all(value == "ok" for value in results.values()), results


def _answer(ready: bool, results: dict[str, str]) -> HttpResponse:
    status = "ok" if ready else "unavailable"
    return _json({"status": status, "checks": results}, 200 if ready else 503)


def _json(data: dict[str, Any], status: int = 200) -> HttpResponse:
    response = JsonResponse(data, status=status)
    response["Cache-Control"] = "no-store"
    return response


def scrape(request: HttpRequest) -> HttpResponse:
    """`/metrics`: off (404) without a token configured, 401 without the right one."""
    token = settings.CHAT_METRICS_TOKEN
    if not token:
        return _json({"error": "not_found", "detail": "Metrics are off."}, 404)
    sent = request.headers.get("Authorization", "")
    # Compared in constant time: the answer must not say how much of a guess was right.
    if not hmac.compare_digest(sent.encode(), f"Bearer {token}".encode()):
        response = _json({"error": "unauthorized", "detail": "Send the metrics token."}, 401)
        response["WWW-Authenticate"] = 'Bearer realm="metrics"'
        return response
    body, content_type = metrics.exposition()
    response = HttpResponse(body, content_type=content_type)
    response["Cache-Control"] = "no-store"
    return response


def middleware(get_response: Callable[[HttpRequest], Any]) -> Callable[[HttpRequest], Any]:
    """Answers the two health paths; passes everything else on. Sync and async, so that it adds no
    thread hop under ASGI (the readiness checks run in their own threads either way)."""
    if iscoroutinefunction(get_response):

        async def async_middleware(request: HttpRequest) -> Any:
            if request.path_info == LIVE:
                return _json({"status": "ok"})
            if request.path_info == READY:
                return _answer(*await sync_to_async(readiness, thread_sensitive=False)())
            if request.path_info == METRICS:
                return scrape(request)
            return await get_response(request)

        return markcoroutinefunction(async_middleware)

    def sync_middleware(request: HttpRequest) -> Any:
        if request.path_info == LIVE:
            return _json({"status": "ok"})
        if request.path_info == READY:
            return _answer(*readiness())
        if request.path_info == METRICS:
            return scrape(request)
        return get_response(request)

    return sync_middleware
