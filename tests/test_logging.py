"""Server errors reach the console with their traceback, the request's path and the user's id, and
never the body, a token or a cookie (chatsite/logging.py, LOGGING in chatsite/settings.py)."""

from __future__ import annotations

import io
import logging
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest
from django.http import HttpRequest, HttpResponse
from django.test import Client, override_settings
from django.urls import path

from chatsite.logging import ContextFormatter
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
    assert buffer.getvalue() == ""


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
