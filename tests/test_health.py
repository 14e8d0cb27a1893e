"""/healthz and /readyz, through real servers: uvicorn, and Zappa's handler behind the local gateway."""

from __future__ import annotations

import json
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import Server, free_port


def _lower(headers: Any) -> dict[str, str]:
    return {key.lower(): value for key, value in headers.items()}


def get(url: str, host: str | None = None) -> tuple[int, dict[str, Any], dict[str, str]]:
    request = urllib.request.Request(url, headers={"Host": host} if host else {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read()), _lower(response.headers)
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read()), _lower(error.headers)


@pytest.fixture(scope="module")
def silent_port() -> Iterator[int]:
    """A port that accepts connections and never answers: a hung dependency."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        yield listener.getsockname()[1]


def started(env: dict[str, str]) -> Iterator[Server]:
    server = Server(env).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def no_database(django_db_setup: Any) -> Iterator[Server]:
    yield from started({"DATABASE_URL": f"postgres://postgres@127.0.0.1:{free_port()}/chat"})


@pytest.fixture(scope="module")
def hung_redis(django_db_setup: Any, silent_port: int) -> Iterator[Server]:
    yield from started({"REDIS_URL": f"redis://127.0.0.1:{silent_port}/0"})


def test_liveness_answers_a_probe_by_ip_without_a_session(server: Server) -> None:
    # 10.0.0.7 is in no ALLOWED_HOSTS: a load balancer's probe by address.
    status, body, headers = get(f"{server.url}/healthz", host="10.0.0.7")
    assert status == 200 and body == {"status": "ok"}
    assert "set-cookie" not in headers and headers["cache-control"] == "no-store"


def test_readiness_checks_the_database_and_redis(server: Server) -> None:
    status, body, _ = get(f"{server.url}/readyz", host="10.0.0.7")
    assert status == 200
    assert body == {"status": "ok", "checks": {"database": "ok", "redis": "ok"}}


def test_both_answer_through_the_serverless_path(serverless_server: Server) -> None:
    status, body, _ = get(f"{serverless_server.url}/healthz", host="10.0.0.7")
    assert status == 200 and body == {"status": "ok"}
    status, body, _ = get(f"{serverless_server.url}/readyz")
    assert status == 200 and body["status"] == "ok" and body["checks"]["database"] == "ok"


def test_readiness_is_503_when_the_database_is_unreachable(no_database: Server) -> None:
    assert get(f"{no_database.url}/healthz")[0] == 200  # alive all the same: no restart
    status, body, _ = get(f"{no_database.url}/readyz")
    assert status == 503
    assert body == {"status": "unavailable", "checks": {"database": "error", "redis": "ok"}}
    assert "127.0.0.1" not in json.dumps(body) and "postgres" not in json.dumps(body)


def test_readiness_is_503_within_the_timeout_when_redis_hangs(hung_redis: Server) -> None:
    started_at = time.monotonic()
    status, body, _ = get(f"{hung_redis.url}/readyz")
    elapsed = time.monotonic() - started_at
    assert status == 503 and body["checks"]["database"] == "ok"
    assert body["checks"]["redis"] in ("timeout", "error")
    assert elapsed < 1 + 1.0, elapsed  # CHAT_READY_TIMEOUT (1 s) and the request's own cost


def test_readiness_without_redis_checks_only_the_database(
    db: Any, settings: Any, client: Any
) -> None:
    # `make run`: the in-memory layer, nothing to ping.
    settings.REDIS_URL = ""
    response = client.get("/readyz", HTTP_HOST="10.0.0.7")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "checks": {"database": "ok"}}
