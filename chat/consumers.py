"""The self-hosted WebSocket transport: a Channels consumer that only moves frames.

Parsing, validation and the actions live in chat/protocol.py; this module owns the socket and the
order of what goes out on it. One writer task per socket sends everything, so replies and live events
never interleave badly, and keeps a cursor per room: a live `message` at or below the cursor is
dropped (a duplicate), one right after it is sent, and one further ahead means the layer lost something
(it is at-most-once), so the gap is filled from the database before going on.
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
from django.conf import settings

from chat import events, presence, protocol, services, tokens
from chat.fanout import encode
from chat.hub import get_hub
from chat.models import Room

log = logging.getLogger(__name__)

UNAUTHORIZED = 4401
FORBIDDEN = 4403


class SameOriginOrToken(OriginValidator):
    """Browsers always send Origin, and only a foreign page could abuse the session cookie, so a
    present Origin must be ours; a missing one (wscat, load generators) may only use a token."""

    def valid_origin(self, parsed_origin: Any) -> bool:
        if parsed_origin is None:
            return True
        return self.validate_origin(parsed_origin)


def allowed_origins() -> list[str]:
    # A host without a scheme matches any port: "http://127.0.0.1" alone would mean port 80 only
    # and refuse a browser on http://127.0.0.1:8000.
    origins = [h for h in settings.ALLOWED_HOSTS if h != "*"]
    return (
        [*origins, *settings.CSRF_TRUSTED_ORIGINS] if "*" not in settings.ALLOWED_HOSTS else ["*"]
    )


def _query(scope: dict[str, Any]) -> dict[str, str]:
    parsed = parse_qs(scope.get("query_string", b"").decode("latin1"))
    return {key: values[-1] for key, values in parsed.items()}


def _has_origin(scope: dict[str, Any]) -> bool:
    return any(name == b"origin" for name, _ in scope.get("headers", []))


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

    async def connect(self) -> None:
        query = _query(self.scope)
        user = None
        if "token" in query:
            user = await database_sync_to_async(tokens.user_for_token, thread_sensitive=False)(
                query["token"]
            )
        elif _has_origin(self.scope):
            scope_user = self.scope.get("user")
            if scope_user is not None and scope_user.is_authenticated and scope_user.is_active:
                user = scope_user
        if user is None:
            await self.close(code=UNAUTHORIZED)
            return
        # Moderation: a site-banned user cannot reconnect.
        if await database_sync_to_async(services.site_banned, thread_sensitive=False)(user):
            await self.close(code=FORBIDDEN)
            return
        self.conn = ChannelsConnection(self, user, query.get("room"))
        self.username = user.get_username()
        self.outbox: asyncio.Queue[tuple[str, Any]] = asyncio.Queue(settings.CHAT_SEND_QUEUE)
        # room id -> cursor; None while the subscribe reply is on its way (live events wait).
        self.cursors: dict[int, int | None] = {}
        self.slugs: dict[int, str] = {}
        self.pending: dict[int, list[dict[str, Any]]] = {}
        self.lagging: set[int] = set()
        await self.accept()
        self.tasks = [
            asyncio.create_task(self._write(), name="ws-writer"),
            asyncio.create_task(self._heartbeat(), name="ws-presence"),
        ]
        if self.conn.default_room:
            await self._run({"action": "subscribe", "room": self.conn.default_room})

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        if self.conn is None:
            return
        frame, error = protocol.admit(self.conn, text_data, bytes_data)
        if frame is None:
            await self.outbox.put(("reply", [error]))
            return
        await self._run(frame)

    async def _run(self, frame: dict[str, Any]) -> None:
        assert self.conn is not None
        # Not thread-sensitive: Channels would otherwise run every socket's database work on one
        # thread per process, and that thread was the bottleneck under load.
        replies = await database_sync_to_async(protocol.execute, thread_sensitive=False)(
            self.conn, frame
        )
        if replies:
            await self.outbox.put(("reply", replies))

    async def disconnect(self, code: int) -> None:
        if self.conn is None:
            return
        for task in self.tasks:
            task.cancel()
        hub = get_hub()
        rooms = list(self.cursors)
        for room_id in rooms:
            await hub.leave(room_id, self.deliver)
        await database_sync_to_async(self._leave_presence, thread_sensitive=False)(
            [(room_id, self.slugs[room_id]) for room_id in rooms]
        )
        self.cursors.clear()

    def _leave_presence(self, rooms: list[tuple[int, str]]) -> None:
        assert self.conn is not None
        for room_id, slug in rooms:
            presence.leave(room_id, slug, self.conn.conn_id, self.username)

    # --- subscriptions (called through ChannelsConnection from the protocol handlers) ---

    async def join_room(self, room_id: int, slug: str) -> None:
        self.cursors[room_id] = None
        self.slugs[room_id] = slug
        self.pending[room_id] = []
        await get_hub().join(room_id, self.deliver)

    async def leave_room(self, room_id: int) -> bool:
        if room_id not in self.cursors:
            return False
        del self.cursors[room_id]
        self.pending.pop(room_id, None)
        await get_hub().leave(room_id, self.deliver)
        return True

    # --- outgoing ---

    def deliver(self, message: dict[str, Any]) -> None:
        """Called by the hub for every live event of a subscribed room; must not block."""
        if "kick" in message or "recheck" in message:
            # Moderation (chat/services._tell_consumers) acts at once: never queued behind, or
            # dropped with, the events of a client that does not read.
            if self.conn is not None and message.get("kick") in (None, self.conn.user.pk):
                self.tasks.append(asyncio.create_task(self._control(message)))
            return
        try:
            self.outbox.put_nowait(("live", message))
        except asyncio.QueueFull:
            # A client that does not read: drop, remember, and fill from the database once it
            # catches up. Its memory stays bounded and nobody else waits for it.
            self.lagging.add(message["room"])

    async def _control(self, message: dict[str, Any]) -> None:
        room_id = message["room"]
        if room_id not in self.cursors or self.conn is None:
            return
        slug = self.slugs[room_id]
        if message.get("kick") is not None:
            # Banned (chat/services.close_connections): stop the writer first, so nothing more
            # of any room reaches this socket, then say why and close.
            for task in self.tasks:
                if task.get_name() == "ws-writer":
                    task.cancel()
            rooms = [(rid, self.slugs[rid]) for rid in list(self.cursors)]
            for rid, _ in rooms:
                await self.leave_room(rid)
            await database_sync_to_async(self._leave_presence, thread_sensitive=False)(rooms)
            error = events.error("forbidden", "You are banned.", room=slug, fatal=True)
            await self.send(text_data=encode(error))
            await self.close(code=FORBIDDEN)
            return
        # The room turned private, or this user left its members (services.
        # drop_readers_without_access): leave it unless the user may still read it.
        if await database_sync_to_async(_may_read, thread_sensitive=False)(self.conn.user, room_id):
            return
        if await self.leave_room(room_id):
            await database_sync_to_async(self._leave_presence, thread_sensitive=False)(
                [(room_id, slug)]
            )
            await self.send(
                text_data=encode(events.error("forbidden", services.NO_ACCESS, room=slug))
            )

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

    async def _send_replies(self, replies: list[events.Event]) -> None:
        subscribed = []
        for event in replies:
            await self.send(text_data=encode(event))
            if event["type"] == "subscribed":
                subscribed.append(event)
        for event in subscribed:
            room_id = next((r for r, s in self.slugs.items() if s == event["room"]), None)
            if room_id is None or room_id not in self.cursors:
                continue
            self.cursors[room_id] = event["seq"]
            for message in self.pending.pop(room_id, []):
                await self._send_live(message)
            self.pending[room_id] = []

    async def _send_live(self, message: dict[str, Any]) -> None:
        room_id = message["room"]
        if room_id not in self.cursors:
            return
        cursor = self.cursors[room_id]
        if cursor is None:
            self.pending[room_id].append(message)
            return
        kind = message["kind"]
        if kind == "message":
            seq = message["seq"]
            if seq <= cursor:
                return
            if seq > cursor + 1:
                await self._fill(room_id)
                return
            self.cursors[room_id] = seq
        elif kind == "typing" and message.get("user") == self.username:
            return
        await self.send(text_data=message["text"])

    async def _fill(self, room_id: int) -> None:
        """Send what the live path lost: every change after the cursor, from the database."""
        cursor = self.cursors.get(room_id)
        if cursor is None:
            return
        changes, seq = await database_sync_to_async(_changes_after, thread_sensitive=False)(
            room_id, cursor
        )
        if room_id not in self.cursors:
            return
        if changes is None:
            await self.send(
                text_data=encode(events.subscribed(self.slugs[room_id], seq, False, "resync"))
            )
        else:
            for event in changes:
                await self.send(text_data=encode(event))
        self.cursors[room_id] = max(seq, cursor)

    async def _heartbeat(self) -> None:
        interval = max(1.0, settings.CHAT_PRESENCE_TTL / 3)
        while True:
            await asyncio.sleep(interval)
            rooms = [r for r, c in self.cursors.items() if c is not None]
            if rooms:
                try:
                    await database_sync_to_async(self._refresh_presence, thread_sensitive=False)(
                        rooms
                    )
                except Exception:
                    # Keep beating: one failure must not drop the user from presence for good.
                    log.warning("presence refresh failed", exc_info=True)

    def _refresh_presence(self, rooms: list[int]) -> None:
        assert self.conn is not None
        for room_id in rooms:
            presence.refresh(room_id, self.conn.conn_id, self.username)


def _changes_after(room_id: int, cursor: int) -> tuple[list[events.Event] | None, int]:
    room = Room.objects.get(pk=room_id)
    try:
        return services.changes_after(room, cursor, room.seq)
    except services.ChatError:
        return [], room.seq


def _may_read(user: Any, room_id: int) -> bool:
    room = Room.objects.filter(pk=room_id).first()
    return room is not None and services.may_read(user, room)
