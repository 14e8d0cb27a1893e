"""The ASGI server's own limits, as `make run` and the production command start it
(chatsite/serve.py): a WebSocket message over the protocol's frame limit is refused by uvicorn
from the frame header, closing with 1009, before any of it reaches the application."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest
from django.conf import settings
from uvicorn.protocols.websockets.websockets_impl import WebSocketProtocol
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from chat import tokens
from chat.models import Message, Room
from chatsite import serve
from chatsite.wsprotocol import WINDOW_BITS, ChatWebSocketProtocol
from tests.conftest import ROOT, Server

pytestmark = pytest.mark.timeout(120)


class Served(Server):
    """`python -m chatsite.serve` on the test database."""

    def start(self) -> Served:
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "chatsite.serve",
                "--port",
                str(self.port),
                "--log-level",
                "warning",
            ],
            cwd=ROOT,
            env=self.env,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, "the server exited"
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return self
            except OSError:
                time.sleep(0.05)
        raise AssertionError("the server did not start")


@pytest.fixture
def served(transactional_db: Any) -> Iterator[Served]:
    server = Served().start()
    yield server
    server.stop()


def test_the_entry_passes_the_protocols_frame_limit_to_uvicorn() -> None:
    args = serve.uvicorn_args()
    assert args[args.index("--ws-max-size") + 1] == str(settings.CHAT_MAX_FRAME)
    # uvicorn's `websockets` implementation (wsproto ignores --ws-max-size), with the chat's
    # compression settings.
    protocol = args[args.index("--ws") + 1]
    assert protocol == "chatsite.wsprotocol:ChatWebSocketProtocol"
    assert issubclass(ChatWebSocketProtocol, WebSocketProtocol)
    printed = subprocess.run(
        [sys.executable, "-m", "chatsite.serve", "--print", "--port", "9"],
        cwd=ROOT,
        env={**os.environ, "CHAT_MAX_FRAME": "4096"},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "--ws-max-size 4096" in printed and printed.rstrip().endswith("--port 9")


def _frame(limit_room: str, size: int) -> str:
    """A ping frame padded to exactly `size` bytes of UTF-8."""
    base = {"action": "ping", "room": limit_room, "pad": ""}
    pad = size - len(json.dumps(base).encode())
    return json.dumps({**base, "pad": "x" * pad})


def test_a_frame_at_the_limit_is_read_and_one_byte_more_closes_with_1009(
    served: Served, alice: Any
) -> None:
    Room.objects.create(slug="general", title="General")
    token = tokens.make_token(alice)
    limit = settings.CHAT_MAX_FRAME

    async def scenario() -> tuple[list[dict[str, Any]], int | None]:
        async with connect(f"{served.ws_url}?token={token}", max_size=2**20) as ws:
            at_limit = _frame("general", limit)
            assert len(at_limit.encode()) == limit
            await ws.send(at_limit)
            assert json.loads(await asyncio.wait_for(ws.recv(), 5)) == {"type": "pong"}
            body = "y" * limit
            await ws.send(json.dumps({"action": "sendmessage", "room": "general", "body": body}))
            got = []
            try:
                while True:
                    got.append(json.loads(await asyncio.wait_for(ws.recv(), 5)))
            except ConnectionClosed as closed:
                return got, closed.rcvd.code if closed.rcvd else None

    got, code = asyncio.run(scenario())
    # Closed by the server with 1009 and no reply: the application never saw the frame (it would
    # have answered `too_large` and kept the socket open).
    assert code == 1009 and got == []
    assert not Message.objects.exists()


def test_the_server_refuses_an_oversized_frame_from_its_header_alone(
    served: Served, alice: Any
) -> None:
    """A frame header that announces limit + 1 bytes, and no payload at all: the close comes
    at once, so the server did not wait to read (or buffer) the payload."""
    token = tokens.make_token(alice)
    key = base64.b64encode(os.urandom(16)).decode()
    with socket.create_connection(("127.0.0.1", served.port), timeout=10) as s:
        s.sendall(
            (
                f"GET /ws/?token={token} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                "Sec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        response = b""
        while b"\r\n\r\n" not in response:
            response += s.recv(4096)
        assert response.startswith(b"HTTP/1.1 101"), response
        rest = response.split(b"\r\n\r\n", 1)[1]
        # FIN + text, masked, 64-bit length; the mask key, then nothing.
        s.sendall(struct.pack("!BBQ", 0x81, 0x80 | 127, settings.CHAT_MAX_FRAME + 1) + b"\0" * 4)
        started = time.monotonic()
        data = rest
        while len(data) < 4:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
        waited = time.monotonic() - started
    # A close frame (opcode 8) with code 1009, well before any read of the payload could end.
    assert data[0] == 0x88, data[:20]
    assert struct.unpack("!H", data[2:4])[0] == 1009
    assert waited < 3


def test_compression_is_offered_with_small_windows(served: Served, alice: Any) -> None:
    """permessage-deflate with 4 KB windows both ways (a few KB per socket, not zlib's 256 KB),
    as the server says in the handshake."""
    Room.objects.create(slug="general", title="General")
    token = tokens.make_token(alice)

    async def scenario() -> tuple[str, Any]:
        async with connect(f"{served.ws_url}?token={token}&room=general") as ws:
            while json.loads(await asyncio.wait_for(ws.recv(), 5))["type"] != "subscribed":
                pass
            return ws.response.headers["Sec-WebSocket-Extensions"], ws.protocol.extensions

    header, extensions = asyncio.run(scenario())
    params = dict(p.strip().partition("=")[::2] for p in header.split(";")[1:])
    assert header.startswith("permessage-deflate")
    assert params["server_max_window_bits"] == str(WINDOW_BITS)
    assert params["client_max_window_bits"] == str(WINDOW_BITS)
    (deflate,) = extensions
    assert deflate.remote_max_window_bits == WINDOW_BITS
