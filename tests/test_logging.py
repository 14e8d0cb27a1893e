"""Server errors reach the console with their traceback, the request's path and the user's id, and
never the body, a token or a cookie (chat/accesslog.py, LOGGING in chatsite/settings.py)."""

from __future__ import annotations

import io
import json
import logging
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from django.http import HttpRequest, HttpResponse
from django.test import Client, override_settings
from django.urls import path

from chat.accesslog import ContextFormatter, JsonFormatter
from tests.conftest import ROOT, free_port

BODY = "the-body-nobody-may-read"
TOKEN = "tok-secret-value"


def failing_view(request: HttpRequest) -> HttpResponse:
    assert request.user.is_authenticated  # the user is loaded, as every API view loads it
    raise RuntimeError("the view failed")


urlpatterns = [path("fails/", failing_view)]


@pytest.fixture
def console() -> Iterator[tuple[logging.Handler, io.StringIO]]:
    """The configured console handler of `django.request`, writing into a buffer for the test."""
    logger = logging.getLogger("django.request")
    assert not logger.propagate and logger.level == logging.ERROR
    [handler] = logger.handlers
    assert isinstance(handler, logging.StreamHandler)
    assert isinstance(handler.formatter, ContextFormatter)
    buffer = io.StringIO()
    previous = handler.setStream(buffer)
    yield handler, buffer
    handler.setStream(previous)


@override_settings(ROOT_URLCONF="tests.test_logging", DEBUG=False)
def test_a_500_is_logged_with_path_user_and_traceback_but_no_body_or_token(
    alice: Any, caplog: pytest.LogCaptureFixture, console: tuple[logging.Handler, io.StringIO]
) -> None:
    _, buffer = console
    logger = logging.getLogger("django.request")
    logger.addHandler(caplog.handler)  # the logger does not propagate to caplog's root handler
    try:
        client = Client(raise_request_exception=False)
        client.force_login(alice)
        response = client.post(
            f"/fails/?token={TOKEN}&room=general",
            {"body": BODY},
            content_type="application/json",
            HTTP_COOKIE=f"sessionid={client.cookies['sessionid'].value}",
        )
    finally:
        logger.removeHandler(caplog.handler)
    assert response.status_code == 500
    [record] = [r for r in caplog.records if r.name == "django.request"]
    assert record.levelno == logging.ERROR and record.exc_info is not None
    assert isinstance(record.exc_info[1], RuntimeError)
    logged = buffer.getvalue()
    assert (
        "Traceback (most recent call last)" in logged and "RuntimeError: the view failed" in logged
    )
    assert f"[path=/fails/ user={alice.pk}]" in logged
    assert BODY not in logged and TOKEN not in logged
    assert client.cookies["sessionid"].value not in logged


@override_settings(ROOT_URLCONF="tests.test_logging", DEBUG=False)
def test_client_errors_are_not_logged(
    alice: Any, console: tuple[logging.Handler, io.StringIO]
) -> None:
    _, buffer = console
    client = Client()
    client.force_login(alice)
    assert client.get("/nowhere/").status_code == 404
    # Its access line only, no warning or error of its own.
    [line] = buffer.getvalue().splitlines()
    assert " INFO chat.access: http GET /nowhere/ 404 " in line


def test_the_formatter_redacts_secrets_and_keeps_lines_whole() -> None:
    record = logging.LogRecord(
        "uvicorn.error",
        logging.INFO,
        __file__,
        1,
        '%s - "WebSocket %s" 403',
        (("127.0.0.1", 5000), f"/ws/?room=general&token={TOKEN}"),
        None,
    )
    line = ContextFormatter().format(record)
    assert TOKEN not in line and "token=[redacted]" in line and "room=general" in line
    request = HttpRequest()
    request.path = "/api/rooms/x\n2030-01-01 ERROR forged line/messages"
    record = logging.LogRecord("django.request", logging.ERROR, __file__, 1, "failed", (), None)
    record.request = request
    line = ContextFormatter().format(record)
    assert "\n" not in line and "path=/api/rooms/x\\x0a2030" in line and "user=?" in line


def _wait_for_port(proc: subprocess.Popen[bytes], port: int) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert proc.poll() is None, "uvicorn exited"
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise AssertionError("uvicorn did not start")


def test_uvicorn_logs_an_unhandled_asgi_exception_with_its_path(db: Any) -> None:
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "tests.failing_asgi:application",
            "--port",
            str(port),
            "--lifespan",
            "off",
            "--log-level",
            "info",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        _wait_for_port(proc, port)
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(
                f"GET /api/fails?token={TOKEN} HTTP/1.1\r\nHost: x\r\n"
                f"Cookie: sessionid={TOKEN}\r\nConnection: close\r\n\r\n".encode()
            )
            assert s.recv(100).startswith(b"HTTP/1.1 500")
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(
                f"GET /ws/?token={TOKEN} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                "Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
                "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n".encode()
            )
            s.recv(100)
        time.sleep(0.5)
    finally:
        proc.terminate()
        output = proc.communicate(timeout=15)[0].decode(errors="replace")
    assert "Exception in ASGI application" in output, output
    assert "RuntimeError: the application failed" in output
    assert "[path=/api/fails user=?]" in output and "[path=/ws/ user=?]" in output
    assert TOKEN not in output, output


# --- request ids and access lines ---


@pytest.fixture
def access(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.INFO, logger="chat.access")
    return caplog


def _access_lines(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    return [r.access for r in caplog.records if r.name == "chat.access"]  # type: ignore[attr-defined]


def test_a_request_keeps_a_sane_request_id_and_logs_one_access_line(
    alice: Any, access: pytest.LogCaptureFixture
) -> None:
    client = Client()
    client.force_login(alice)
    response = client.get(f"/api/rooms/?token={TOKEN}", HTTP_X_REQUEST_ID="lb-1234.abc_Z")
    assert response.status_code == 200 and response["X-Request-ID"] == "lb-1234.abc_Z"
    [line] = _access_lines(access)
    assert line == {
        "event": "request",
        "transport": "http",
        "method": "GET",
        "path": "/api/rooms/",
        "status": 200,
        "duration_ms": line["duration_ms"],
        "user": str(alice.pk),
    }
    formatted = ContextFormatter().format(access.records[-1])
    assert "[id=lb-1234.abc_Z]" not in formatted  # the id is reset once the request is over
    assert TOKEN not in access.text


@pytest.mark.parametrize("given", ["", "x" * 65, "a b", "id\nforged", "ünïcode"])
def test_an_unusable_request_id_is_replaced_by_a_new_one(db: Any, given: str) -> None:
    response = Client().get("/api/rooms/", HTTP_X_REQUEST_ID=given)
    assert response.status_code in (401, 403)
    assert response["X-Request-ID"] != given
    assert len(response["X-Request-ID"]) == 32 and response["X-Request-ID"].isalnum()


def test_lines_logged_during_a_request_carry_its_id() -> None:
    from chat.accesslog import reset_request_id, set_request_id

    record = logging.LogRecord("chat", logging.WARNING, __file__, 1, "something", (), None)
    token = set_request_id("req-42")
    try:
        assert ContextFormatter().format(record).endswith("something [id=req-42]")
        assert json.loads(JsonFormatter().format(record))["request_id"] == "req-42"
    finally:
        reset_request_id(token)


def test_the_json_format_has_stable_keys_and_redacts() -> None:
    record = logging.LogRecord(
        "uvicorn.access", logging.INFO, __file__, 1, "GET %s", (f"/x?token={TOKEN}",), None
    )
    data = json.loads(JsonFormatter().format(record))
    assert set(data) == {"time", "level", "logger", "message", "request_id", "path", "user"}
    assert data["message"] == "GET /x?token=[redacted]" and data["request_id"] is None


def test_uvicorn_writes_json_access_lines_for_requests_and_websockets(
    transactional_db: Any, alice: Any
) -> None:
    from websockets.sync.client import connect

    from chat import tokens
    from tests.conftest import database_url

    port = free_port()
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "tests.settings",
        "DATABASE_URL": database_url(),
        "CHAT_LOG_FORMAT": "json",
    }
    proc = subprocess.Popen(
        [
            *(sys.executable, "-m", "uvicorn", "chatsite.asgi:application"),
            *("--port", str(port), "--log-level", "warning", "--ws", "websockets"),
        ],
        cwd=ROOT,
        env=env,
        stderr=subprocess.PIPE,
    )
    try:
        _wait_for_port(proc, port)
        token = tokens.make_token(alice)
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/api/rooms/general/messages?token={TOKEN}",
            data=json.dumps({"body": BODY}).encode(),
            headers={"Content-Type": "application/json", "X-Request-ID": "http-77"},
        )
        try:
            urllib.request.urlopen(request, timeout=10)
        except urllib.error.HTTPError as error:
            assert error.headers["X-Request-ID"] == "http-77"
        with connect(
            f"ws://127.0.0.1:{port}/ws/?token={token}",
            additional_headers={"X-Request-ID": "ws-88"},
        ) as ws:
            ws.send(json.dumps({"action": "send", "room": "nowhere", "body": BODY}))
            ws.recv(timeout=10)
    finally:
        proc.terminate()
        output = proc.communicate(timeout=15)[1].decode(errors="replace")
    lines = [json.loads(line) for line in output.splitlines() if line.strip()]
    assert BODY not in output and TOKEN not in output and token not in output, output
    [posted] = [x for x in lines if x.get("request_id") == "http-77"]
    assert posted["event"] == "request" and posted["transport"] == "http"
    assert posted["path"] == "/api/rooms/general/messages" and posted["method"] == "POST"
    assert posted["status"] in (401, 403) and posted["user"] == "-"
    [closed] = [x for x in lines if x.get("event") == "connection"]
    assert closed["request_id"] == "ws-88" and closed["transport"] == "websocket"
    assert closed["user"] == str(alice.pk) and closed["connection"].startswith("ws-")
    assert closed["frames_in"] == 1 and closed["frames_out"] >= 1
    assert closed["code"] == 1000 and closed["outcome"] == "closed"
    keys = {"time", "level", "logger", "message", "request_id", "path", "user"}
    assert all(keys <= set(x) for x in lines)
