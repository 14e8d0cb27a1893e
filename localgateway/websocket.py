"""The WebSocket API: sockets at ``/ws/`` or ``/{stage}``, each connect, frame and disconnect
turned into the event API Gateway sends its ``$connect``, ``$default`` and ``$disconnect``
routes, within API Gateway's frame, message, idle and duration limits.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiohttp import WSMsgType, web

from localgateway.aws import INTERNAL_ERROR, TIMED_OUT, aws_id, client, multi
from localgateway.rest import forwarded_headers, lambda_response, status_of

if TYPE_CHECKING:
    from localgateway.gateway import LocalGateway

logger = logging.getLogger(__name__)


class _FrameGuard:
    """Enforces the frame and message limits in front of aiohttp's WebSocket reader.

    aiohttp only has a whole-message limit, so this reads frame headers itself. The frame
    over a limit and every data frame after it are dropped; control frames still pass, so
    the close handshake works.
    """

    def __init__(
        self,
        inner: Any,
        frame_limit: int,
        message_limit: int,
        on_violation: Callable[[], None],
    ) -> None:
        self._inner, self._on_violation = inner, on_violation
        self._frame_limit, self._message_limit = frame_limit, message_limit
        self._header = bytearray()
        self._remaining = self._message_size = 0
        self._forward, self._violated = True, False

    def feed_eof(self) -> None:
        self._inner.feed_eof()

    def feed_data(self, data: bytes) -> tuple[bool, bytes]:
        data, out, pos = bytes(data), bytearray(), 0
        while pos < len(data):
            if self._remaining:
                take = min(self._remaining, len(data) - pos)
                if self._forward:
                    out += data[pos : pos + take]
                pos, self._remaining = pos + take, self._remaining - take
                continue
            self._header.append(data[pos])
            pos += 1
            head = self._header
            if len(head) >= 2:
                short = head[1] & 0x7F
                size = 2 + (4 if head[1] & 0x80 else 0) + {126: 2, 127: 8}.get(short, 0)
                if len(head) == size:
                    self._start_frame(bytes(head), out)
                    head.clear()
        return self._inner.feed_data(bytes(out)) if out else (False, b"")

    def _start_frame(self, head: bytes, out: bytearray) -> None:
        short = head[1] & 0x7F
        end = {126: 4, 127: 10}.get(short)
        length = int.from_bytes(head[2:end]) if end else short
        opcode = head[0] & 0x0F
        if opcode < 8:  # continuation, text, binary
            self._message_size = length + (self._message_size if opcode == 0 else 0)
            too_big = self._message_size > self._message_limit
            if (too_big or length > self._frame_limit) and not self._violated:
                self._violated = True
                self._on_violation()
            self._forward = not self._violated
            if head[0] & 0x80:  # FIN
                self._message_size = 0
        else:
            self._forward = True
        if self._forward:
            out += head
        self._remaining = length


class _GuardedWebSocketResponse(web.WebSocketResponse):
    def __init__(self, guard: Callable[[Any], _FrameGuard], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._guard = guard

    def _post_start(self, request: web.BaseRequest, protocol: Any, writer: Any) -> None:
        # In the same synchronous step that installs aiohttp's reader, so no byte reaches
        # it unguarded (aiohttp 3.13 internals).
        super()._post_start(request, protocol, writer)
        handler = request.protocol
        handler._payload_parser = self._guard(handler._payload_parser)


@dataclass(eq=False)
class Connection:
    id: str
    domain: str
    source_ip: str
    user_agent: str
    ws: web.WebSocketResponse | None = None
    connected_at: float = field(default_factory=time.time)
    last_active_at: float = field(default_factory=time.time)
    opened: float = field(default_factory=time.monotonic)
    last_active: float = field(default_factory=time.monotonic)
    close_code: int | None = None
    close_reason: str = ""
    send_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    done: asyncio.Event = field(default_factory=asyncio.Event)

    async def send(self, data: bytes | str) -> bool:
        """Text if it is UTF-8, else binary; False once the socket is going away."""
        try:
            text = data if isinstance(data, str) else data.decode("utf-8")
        except UnicodeDecodeError:
            text = None
        # One writer at a time keeps frames whole and in order.
        async with self.send_lock:
            if self.ws is None or self.ws.closed or self.close_code is not None:
                return False
            try:
                if text is None:
                    await self.ws.send_bytes(data)  # type: ignore[arg-type]
                else:
                    await self.ws.send_str(text)
            except (ConnectionError, RuntimeError):
                return False
            return True

    async def close(self, code: int, reason: str) -> None:
        if self.close_code is None:
            self.close_code, self.close_reason = code, reason
        if self.ws is not None and not self.ws.closed:
            await self.ws.close(code=code, message=reason.encode())


async def handle(gateway: LocalGateway, request: web.Request) -> web.StreamResponse:
    conn = Connection(aws_id(), *client(request))
    event = _event(gateway, conn, "$connect", "CONNECT")
    event["headers"], event["multiValueHeaders"] = multi(forwarded_headers(request, gateway.port))
    # API Gateway leaves these keys out when there is no query string.
    if request.query:
        query, multi_query = multi(request.query.items())
        event["queryStringParameters"] = query
        event["multiValueQueryStringParameters"] = multi_query
    try:
        result = await gateway.invoke(event)
    except TimeoutError:
        return web.json_response(TIMED_OUT, status=504)
    except Exception:
        logger.exception("localgateway: $connect failed")
        return web.json_response(INTERNAL_ERROR, status=500)
    if not 200 <= status_of(result) < 300:
        return lambda_response(result, request)

    # A subprotocol is chosen the AWS way: by the $connect handler's response.
    returned = (result.get("headers") or {}) if isinstance(result, dict) else {}
    protocol = [v for k, v in returned.items() if k.lower() == "sec-websocket-protocol"]

    def guard(inner: Any) -> _FrameGuard:
        def too_big() -> None:
            gateway.spawn(conn.close(1009, "Message too big"))

        return _FrameGuard(inner, gateway.frame_limit, gateway.message_limit, too_big)

    conn.ws = ws = _GuardedWebSocketResponse(
        guard=guard,
        protocols=protocol,
        compress=False,  # API Gateway does not negotiate permessage-deflate
        max_msg_size=gateway.message_limit + 1,  # a backstop: the guard decides first
    )
    try:
        await ws.prepare(request)
    except (ConnectionError, RuntimeError):
        return ws  # the client left during $connect: no $disconnect on AWS either
    gateway.connections[conn.id] = conn
    logger.info("localgateway: connected %s from %s", conn.id, conn.source_ip)
    try:
        await _receive(gateway, conn, ws)
    finally:
        del gateway.connections[conn.id]
        code, reason = conn.close_code or ws.close_code or 1006, conn.close_reason
        logger.info("localgateway: disconnected %s (%s %s)", conn.id, code, reason)
        event = _event(gateway, conn, "$disconnect", "DISCONNECT")
        event["requestContext"]["disconnectStatusCode"] = code
        event["requestContext"]["disconnectReason"] = reason
        headers = [("Host", conn.domain), ("x-api-key", ""), ("x-restapi", "")]
        event["headers"], event["multiValueHeaders"] = multi(headers)
        gateway.spawn(gateway.invoke_logged(event))
        conn.done.set()
    return ws


async def _receive(gateway: LocalGateway, conn: Connection, ws: web.WebSocketResponse) -> None:
    while True:
        idle_end = conn.last_active + gateway.idle_timeout
        left = min(idle_end, conn.opened + gateway.max_duration) - time.monotonic()
        if left <= 0:
            await conn.close(1001, "Going away")
            return
        try:
            msg = await ws.receive(timeout=left)
        except TimeoutError:
            continue
        if msg.type in (WSMsgType.TEXT, WSMsgType.BINARY):
            # Only client data frames count as activity (not pings, not pushes): the
            # strictest reading of the idle timeout, so keep-alive bugs show up here.
            conn.last_active, conn.last_active_at = time.monotonic(), time.time()
            gateway.spawn(_message(gateway, conn, msg.data))
            continue
        if conn.close_code is None:  # else the gateway closed it and knows why
            if msg.type is WSMsgType.CLOSE:
                conn.close_code = msg.data or 1005
                no_status = "Client-side close frame status not set"
                conn.close_reason = msg.extra or ("" if msg.data else no_status)
            elif msg.type is WSMsgType.ERROR:
                conn.close_code = ws.close_code or 1002
                conn.close_reason = str(msg.data)
            else:
                conn.close_code, conn.close_reason = 1006, "Going away"
        return


async def _message(gateway: LocalGateway, conn: Connection, data: str | bytes) -> None:
    event = _event(gateway, conn, "$default", "MESSAGE", messageId=aws_id())
    event["body"] = data
    if isinstance(data, bytes):  # binary frames are passed on base64-encoded
        event["body"], event["isBase64Encoded"] = (
            base64.b64encode(data).decode(),
            True,
        )
    try:
        result = await gateway.invoke(event)
    except TimeoutError:
        error = "Endpoint request timed out"
    except Exception:
        logger.exception("localgateway: $default failed")
        error = "Internal server error"
    else:
        if gateway.route_responses and isinstance(result, dict) and result.get("body"):
            body = result["body"]
            b64 = result.get("isBase64Encoded")
            await conn.send(base64.b64decode(body) if b64 else body)
        return
    # What API Gateway sends the client when the integration fails.
    request_id = event["requestContext"]["requestId"]
    frame = {"message": error, "connectionId": conn.id, "requestId": request_id}
    await conn.send(json.dumps(frame))


def _event(
    gateway: LocalGateway, conn: Connection, route: str, kind: str, **extra: Any
) -> dict[str, Any]:
    context = gateway.request_context(
        conn.domain,
        conn.source_ip,
        conn.user_agent,
        routeKey=route,
        eventType=kind,
        messageDirection="IN",
        connectedAt=int(conn.connected_at * 1000),
        connectionId=conn.id,
        **extra,
    )
    return {"requestContext": context, "isBase64Encoded": False}
