"""The self-hosted WebSocket transport: a Channels consumer that only moves frames.

The protocol (authentication, actions, what moderation means for a connection) is chat/protocol.py;
gap detection is chat/cursor.py. This module owns the socket and the order of what goes out on it:
one writer task per socket sends everything, so replies and live events never interleave badly; a
live event the cursor finds ahead of a gap makes the writer fill it from the database first.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from typing import Any
from urllib.parse import parse_qs

from asgiref.sync import async_to_sync
from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer
from channels.security.websocket import OriginValidator
from django.utils import translation

from chat import events, metrics, presence, protocol, reads
from chat.accesslog import ConnectionLine, header, pick_request_id, set_request_id
from chat.conf import settings
from chat.cursor import Cursors, Verdict
from chat.errors import ChatError, language_from_headers
from chat.fanout import encode
from chat.hub import get_hub
from chat.models import Room

log = logging.getLogger(__name__)

CLOSE_CODES = {"unauthorized": 4401, "forbidden": 4403}
USER = "user"  # the user stream's key among a socket's cursors (chat.fanout.user_message)


# The scope key under which direct_frames() hands the consumer the server's own `send`.
SERVER_SEND = "chat.server_send"


def direct_frames(app: Any) -> Any:
    """Outermost on the WebSocket route: the consumer writes its frames after the handshake with
    the server's own `send`, past the middleware in between. Channels' session middleware looks
    at the session on every message sent, to save it with the accept; a chat socket never changes
    its session, and in a 200-member room that look cost an eighth of the process's time. The
    handshake and the close still go through every middleware."""

    async def with_server_send(scope: dict[str, Any], receive: Any, send: Any) -> Any:
        return await app({**scope, SERVER_SEND: send}, receive, send)

    return with_server_send


def in_thread(func: Any) -> Any:
    # Not thread-sensitive: Channels would otherwise run every socket's database work on one
    # thread per process, and that thread was the bottleneck under load.
    return database_sync_to_async(func, thread_sensitive=False)


class SameOriginOrToken(OriginValidator):
    """The origin policy of chat.protocol.origin_allowed, in front of the Channels consumer: a
    present Origin must be ours (chat.protocol.allowed_origins()); a missing one may only use a
    token."""

    def valid_origin(self, parsed_origin: Any) -> bool:
        if parsed_origin is None:
            return True
        return self.validate_origin(parsed_origin)


class ChannelsConnection(protocol.Connection):
    """The protocol's view of a Channels socket; join/leave run on the consumer's event loop."""

    def __init__(self, consumer: ChatConsumer, user: Any, default_room: str | None) -> None:
        super().__init__(user, f"ws-{uuid.uuid4().hex}", default_room)
        self.consumer = consumer

    def join(self, room: Room) -> None:
        async_to_sync(self.consumer.join_room)(room.pk, room.slug)

    def leave(self, room: Room) -> bool:
        return async_to_sync(self.consumer.leave_room)(room.pk)


class ChatConsumer(AsyncWebsocketConsumer):
    # No per-socket channel: the room hub subscribes once per process and room.
    channel_layer_alias = "__no_layer_per_socket__"

    conn: ChannelsConnection | None = None
    # Where text frames go once accepted, if direct_frames() gave the server's send; without it
    # they go through the middleware like everything else.
    frame_send: Any = None

    async def connect(self) -> None:
        # This task serves the socket to the end: its lines carry this id, and its own line
        # says how it ended.
        set_request_id(pick_request_id(header(self.scope, b"x-request-id")))
        self.line = ConnectionLine("websocket")
        # The handshake's Accept-Language, for the details of this socket's refusals: set in this
        # task's context, it holds for every frame after, and the worker threads inherit it.
        self.language = language_from_headers(self.scope.get("headers", []))
        translation.activate(self.language)
        parsed = parse_qs(self.scope.get("query_string", b"").decode("latin1"))
        query = {key: values[-1] for key, values in parsed.items()}
        browser = any(name == b"origin" for name, _ in self.scope.get("headers", []))
        # The session cookie counts only for a browser (whose Origin the validator checked).
        session_user = self.scope.get("user") if browser and "token" not in query else None
        try:
            user = await in_thread(protocol.authenticate)(query.get("token"), session_user)
        except ChatError as refused:
            await self.close(code=CLOSE_CODES.get(refused.code, 4403))
            return
        self.conn = ChannelsConnection(self, user, query.get("room"))
        self.username = user.get_username()
        self.outbox: asyncio.Queue[tuple[str, Any]] = asyncio.Queue(settings.CHAT_SEND_QUEUE)
        self.cursors = Cursors()
        # The user's own stream (chat/notify.py), received from connect on whatever the rooms.
        self.stream = Cursors()
        self.slugs: dict[int, str] = {}
        self.lagging: set[Any] = set()
        await self.accept()
        self.frame_send = self.scope.get(SERVER_SEND)
        metrics.OPEN_CONNECTIONS.labels(metrics.WEBSOCKET).inc()
        self.writer = asyncio.create_task(self._write(), name="ws-writer")
        self.tasks = {self.writer}
        await get_hub().watch(self.control)
        # The hub's heartbeat keeps this socket's presence entries alive (presence_entries).
        get_hub().hold_presence(self.presence_entries)
        # Joined before its position is read: nothing committed in between is missed.
        await get_hub().join_user(user.pk, self.deliver)
        self.stream.start(USER, await in_thread(reads.user_seq)(user))
        replies = await in_thread(protocol.open_connection)(self.conn)
        if replies:
            await self.outbox.put(("reply", replies))

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        self.line.frames_in += 1
        if self.conn is None:
            return
        frame, error = protocol.admit(self.conn, text_data, bytes_data)
        replies = [error] if frame is None else await in_thread(protocol.execute)(self.conn, frame)
        if replies:
            await self.outbox.put(("reply", replies))

    async def send(
        self, text_data: str | None = None, bytes_data: bytes | None = None, close: bool = False
    ) -> None:
        self.line.frames_out += 1
        if text_data is not None and not close and self.frame_send is not None:
            await self.frame_send({"type": "websocket.send", "text": text_data})
            return
        await super().send(text_data, bytes_data, close)

    async def close(self, code: int | bool | None = None, reason: str | None = None) -> None:
        self.line.code = code if isinstance(code, int) and not isinstance(code, bool) else 1000
        await super().close(code, reason)

    async def disconnect(self, code: int) -> None:
        user = "-" if self.conn is None else str(self.conn.user.pk)
        self.line.closed(user, "-" if self.conn is None else self.conn.conn_id, code)
        if self.conn is None:
            return
        metrics.OPEN_CONNECTIONS.labels(metrics.WEBSOCKET).dec()
        for task in self.tasks:
            task.cancel()
        rooms = await self._leave_hub()
        await in_thread(protocol.close_connection)(self.conn, rooms)

    async def _leave_hub(self) -> list[tuple[int, str]]:
        """Stop receiving anything; the rooms this socket received, for the protocol's goodbye."""
        assert self.conn is not None
        get_hub().unwatch(self.control)
        get_hub().release_presence(self.presence_entries)
        await get_hub().leave_user(self.conn.user.pk, self.deliver)
        rooms = [(room_id, self.slugs[room_id]) for room_id in self.cursors.rooms()]
        for room_id, _ in rooms:
            await self.leave_room(room_id)
        return rooms

    # --- subscriptions (called through ChannelsConnection from the protocol handlers) ---

    async def join_room(self, room_id: int, slug: str) -> None:
        self.cursors.start(room_id)
        self.slugs[room_id] = slug
        await get_hub().join(room_id, self.deliver)

    async def leave_room(self, room_id: int) -> bool:
        if not self.cursors.stop(room_id):
            return False
        await get_hub().leave(room_id, self.deliver)
        return True

    # --- incoming from the hub ---

    def deliver(self, message: dict[str, Any]) -> None:
        """Called by the hub for every live event of a subscribed room; must not block."""
        try:
            self.outbox.put_nowait(("live", message))
        except asyncio.QueueFull:
            # A client that does not read: drop, remember, and fill from the database once it
            # catches up. Its memory stays bounded and nobody else waits for it.
            self.lagging.add(message["room"])

    def control(self, message: dict[str, Any]) -> None:
        """Moderation (chat/fanout.py) acts at once: never queued behind, or dropped with, the
        events of a client that does not read."""
        if self.conn is not None and protocol.control_applies(
            self.conn, message, self.cursors.rooms()
        ):
            task = asyncio.create_task(self._control(message))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)  # a long-lived socket keeps no old ones

    async def _control(self, message: dict[str, Any]) -> None:
        assert self.conn is not None
        if message["op"] == "close":
            # Banned: stop the writer first, so nothing more of any room reaches this socket,
            # then say why and close.
            self.writer.cancel()
            rooms = await self._leave_hub()
            told = await in_thread(protocol.banned)(self.conn, rooms, message.get("room"))
            await self.send(text_data=encode(told))
            await self.close(code=CLOSE_CODES["forbidden"])
            return
        for room_id in [message["room"]] if message.get("room") else self.cursors.rooms():
            replies = await in_thread(protocol.recheck)(self.conn, room_id)
            if replies:
                await self.outbox.put(("reply", replies))

    # --- outgoing: the writer ---

    async def _write(self) -> None:
        try:
            while True:
                kind, item = await self.outbox.get()
                if kind == "reply":
                    await self._send_replies(item)
                else:
                    await self._send_live(item)
                if self.lagging and self.outbox.empty():
                    for room_id in list(self.lagging):
                        self.lagging.discard(room_id)
                        await self._fill(room_id)
        except asyncio.CancelledError:
            raise
        except (OSError, RuntimeError) as exc:
            # The client went away while we were writing; disconnect() cleans up.
            log.debug("websocket writer stopped: %r", exc)
        except Exception:
            log.exception("websocket writer failed; closing")
            await self.close(code=1011)

    async def _send_replies(self, replies: list[dict[str, Any]]) -> None:
        for event in replies:
            await self.send(text_data=encode(event))
        for event in replies:
            if event["type"] == "user_resumed":
                # Replayed up to here: live events of the stream at or below it are duplicates.
                self.stream.filled(USER, event["user_seq"])
            if event["type"] == "subscribed":
                room_id = next((r for r, s in self.slugs.items() if s == event["room"]), None)
                if room_id is not None:
                    for held in self.cursors.subscribed(room_id, event["seq"]):
                        await self._send_live(held)

    async def _send_live(self, message: dict[str, Any]) -> None:
        if message["kind"] == "typing" and message.get("user") == self.username:
            return
        verdict = (self.stream if message["room"] == USER else self.cursors).offer(message)
        if verdict is Verdict.SEND:
            await self.send(text_data=message["text"])
            metrics.DELIVERIES.inc()
        elif verdict is Verdict.FILL:
            await self._fill(message["room"])

    async def _fill(self, room_id: Any) -> None:
        """Send what the live path lost: every change after the cursor, from the database."""
        metrics.GAP_FILLS.labels(metrics.WEBSOCKET).inc()
        if room_id == USER:
            await self._fill_user()
            return
        cursor = self.cursors.get(room_id)
        if cursor is None:
            return
        caught = await in_thread(_catch_up)(room_id, cursor)
        if room_id not in self.cursors:
            return
        for event in caught.frames(self.slugs[room_id]):
            await self.send(text_data=encode(event))
        self.cursors.filled(room_id, caught.seq)

    async def _fill_user(self) -> None:
        assert self.conn is not None
        cursor = self.stream.get(USER)
        if cursor is None:
            return
        caught = await in_thread(reads.user_catch_up)(self.conn.user, cursor)
        frames = [events.user_resumed(caught.seq, True)] if caught.resync else caught.changes
        for event in frames:
            await self.send(text_data=encode(event))
        self.stream.filled(USER, caught.seq)

    def presence_entries(self) -> presence.Entries:
        """The rooms this socket is in the presence of, for the hub's heartbeat: those whose
        subscribe reply has come (the join itself was made, and announced, by the subscribe)."""
        assert self.conn is not None
        return {room_id: {self.conn.conn_id: self.username} for room_id in self.cursors.started()}


def _catch_up(room_id: int, cursor: int) -> reads.CatchUp:
    room = Room.objects.get(pk=room_id)
    try:
        return reads.catch_up(room, cursor, room.seq)
    except ChatError:
        return reads.CatchUp(room.seq)
