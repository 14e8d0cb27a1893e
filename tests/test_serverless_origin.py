"""`$connect` on Lambda checks a browser's Origin with the Channels transport's policy
(chat.protocol.origin_allowed): a foreign page is refused before anything is stored."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import websockets
from websockets.exceptions import InvalidStatus

from chat import apigateway, protocol, serverless, tokens, writepath
from chat.models import ApiConnection
from tests.test_serverless import make_user, of_type, recv_until, ws_event


def connect_event(origin: str | None, token: str) -> dict[str, Any]:
    event = ws_event("$connect", "Conn1=")
    event["queryStringParameters"] = {"token": token}
    if origin is not None:
        event["headers"] = {"Host": "abc.execute-api.us-east-1.amazonaws.com", "Origin": origin}
    return event


@pytest.mark.parametrize(
    ("origin", "status"),
    [
        ("https://evil.example", 403),
        ("null", 403),  # a sandboxed or file:// page
        ("http://127.0.0.1:8000", 200),  # ALLOWED_HOSTS: any port
        ("https://chat.example.com", 200),  # CSRF_TRUSTED_ORIGINS: that scheme and host
        (None, 200),  # no browser: the token alone decides
    ],
)
def test_connect_checks_a_browsers_origin(
    db: Any, settings: Any, monkeypatch: pytest.MonkeyPatch, origin: str | None, status: int
) -> None:
    settings.ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
    settings.CSRF_TRUSTED_ORIGINS = ["https://chat.example.com"]
    monkeypatch.setattr(serverless, "close_old_connections", lambda: None)
    monkeypatch.setattr(apigateway, "send_after_connect", lambda target, replies: None)
    alice = make_user("alice")
    answer = serverless.connect(connect_event(origin, tokens.make_token(alice)), None)
    assert answer["statusCode"] == status
    assert ApiConnection.objects.exists() == (status == 200)


def test_both_transports_share_one_origin_policy(settings: Any) -> None:
    settings.ALLOWED_HOSTS = ["chat.example.com"]
    settings.CSRF_TRUSTED_ORIGINS = ["https://.example.org"]
    assert protocol.origin_allowed("https://chat.example.com")
    assert protocol.origin_allowed("https://sub.example.org")
    assert not protocol.origin_allowed("http://sub.example.org")
    assert not protocol.origin_allowed("https://chat.example.com.evil.example")
    settings.ALLOWED_HOSTS = ["*"]
    assert protocol.origin_allowed("https://anything.example")


def test_a_foreign_page_cannot_open_a_socket_on_the_local_gateway(serverless_server: Any) -> None:
    alice = make_user("alice")
    writepath.ensure_lobby()
    url = f"{serverless_server.ws_url}?room=lobby&token={tokens.make_token(alice)}"

    async def run() -> None:
        with pytest.raises(InvalidStatus) as refused:
            await websockets.connect(url, origin="https://evil.example", proxy=None)
        assert refused.value.response.status_code == 403
        ours = serverless_server.url  # the page's own origin
        async with websockets.connect(url, origin=ours, proxy=None) as ws:
            await recv_until(ws, of_type("subscribed"))

    asyncio.run(run())
