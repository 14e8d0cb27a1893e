"""Fan-out: the only way the write path and moderation reach live clients.

Four calls, each handed to every backend named in CHAT_FANOUT_BACKENDS:

- `publish(room_id, event)`: a room's event to everyone receiving the room;
- `notify_user(user_id, event)`: an event of the user's own stream (chat/notify.py) to every
  connection of that user, whatever rooms it receives;
- `recheck(room_id, user_id=None)`: connections receiving the room (or only this user's) check
  that their user may still read it, and stop receiving it, told why, if not; presence follows;
- `close_user(user_id, room_id=None)`: close the user's connections (those receiving the room,
  or all of them), told why; presence follows.

Backends: `ChannelLayerBackend` (self-hosted: each process's room hub hands events to its sockets
and long-poll waiters; control goes to the consumers only, on a group of its own, so it never wakes
a long-poll), `chat.apigateway.ApiGatewayBackend` (Lambda: API Gateway connections as rows) and
`PostgresNotifyBackend` (Lambda: NOTIFY wakes the long-polls waiting on the room).
Everything here is best effort by design: the write path has already committed, clients fill any
gap from the database by `seq`, and connections re-check access on their next frame. A failing
backend is logged, never raised into the writer.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from functools import cache
from typing import Any, Protocol

import redis
from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from channels_redis.pubsub import RedisPubSubChannelLayer
from django.core.signals import setting_changed
from django.db import connection as db_connection
from django.dispatch import receiver
from django.utils.module_loading import import_string

from chat import metrics
from chat.conf import settings

log = logging.getLogger(__name__)

Event = dict[str, Any]

# Control messages of the channel layer (one group for the deployment: moderation is rare, and a
# per-room group would make a site ban one message per room).
CONTROL_GROUP = "chat.control"
CONTROL_TYPE = "chat.control"


class Backend(Protocol):
    # Optional: publish_many(room_id, events, texts), several events to a room in order.
    def publish(self, room_id: int, event: Event, text: str) -> None: ...
    def notify_user(self, user_id: Any, event: Event, text: str) -> None: ...
    def recheck(self, room_id: int, user_id: int | None) -> None: ...
    def close_user(self, user_id: int, room_id: int | None) -> None: ...


def group_name(room_id: int) -> str:
    return f"room.{room_id}"


def user_group(user_id: Any) -> str:
    # Built from the id (an integer or a UUID), never from a username.
    return f"user.{user_id}"


# The type of a user-stream message on the channel layer (chat/hub.py routes it by user).
USER_TYPE = "chat.user"


def user_message(user_id: Any, event: Event, text: str) -> dict[str, Any]:
    """A user-stream event as the hub hands it on: shaped like a room's, with the stream's key
    "user" in place of a room id, so the same cursors (chat/cursor.py) find its gaps."""
    return {
        "type": USER_TYPE,
        "user": str(user_id),
        "room": "user",
        "kind": event["type"],
        "seq": event.get("user_seq"),
        "text": text,
    }


def encode(event: Event) -> str:
    """Serialise an event once; every socket of every process sends these same bytes."""
    return json.dumps(event, separators=(",", ":"), ensure_ascii=False)


def layer_message(room_id: int, event: Event, text: str) -> dict[str, Any]:
    return {
        "type": "chat.event",
        "room": room_id,
        "kind": event["type"],
        "seq": event.get("seq"),
        "user": event.get("user") if event["type"] == "typing" else None,
        "text": text,
    }


@cache
def _sync_redis() -> redis.Redis | None:
    """A pooled synchronous client when the layer is Redis pub/sub, else None."""
    layer = get_channel_layer()
    if settings.REDIS_URL and isinstance(layer, RedisPubSubChannelLayer):
        return redis.Redis.from_url(settings.REDIS_URL, socket_timeout=2, socket_connect_timeout=2)
    return None


def layer_send(group: str, message: dict[str, Any]) -> None:
    """Send one message to a group on the channel layer, from synchronous code."""
    layer = get_channel_layer()
    if layer is None:
        return
    client = _sync_redis()
    if client is not None:
        # The write path is synchronous: going through async_to_sync costs an event loop and a
        # Redis connection per call outside a server loop (measured ~2.5 ms). This sends the same
        # PUBLISH the pub/sub layer's group_send sends, on a pooled connection.
        channel = f"{settings.CHAT_REDIS_PREFIX}__group__{group}"
        client.publish(channel, layer.serialize(message))
        return
    async_to_sync(layer.group_send)(group, message)


def layer_send_many(group: str, messages: list[dict[str, Any]]) -> None:
    """Several messages to one group, in order: one round trip to Redis (a pipeline)."""
    layer = get_channel_layer()
    client = _sync_redis()
    if layer is None or client is None:
        for message in messages:
            layer_send(group, message)
        return
    channel = f"{settings.CHAT_REDIS_PREFIX}__group__{group}"
    pipe = client.pipeline(transaction=False)
    for message in messages:
        pipe.publish(channel, layer.serialize(message))
    pipe.execute()


class ChannelLayerBackend:
    """Self-hosted: events to the room's group, control to the consumers' group (chat/hub.py)."""

    def publish(self, room_id: int, event: Event, text: str) -> None:
        layer_send(group_name(room_id), layer_message(room_id, event, text))

    def publish_many(self, room_id: int, events: list[Event], texts: list[str]) -> None:
        messages = [layer_message(room_id, e, t) for e, t in zip(events, texts, strict=True)]
        layer_send_many(group_name(room_id), messages)

    def notify_user(self, user_id: Any, event: Event, text: str) -> None:
        layer_send(user_group(user_id), user_message(user_id, event, text))

    def recheck(self, room_id: int, user_id: int | None) -> None:
        self._control("recheck", room_id, user_id)

    def close_user(self, user_id: int, room_id: int | None) -> None:
        self._control("close", room_id, user_id)

    def _control(self, op: str, room_id: int | None, user_id: int | None) -> None:
        layer_send(
            CONTROL_GROUP, {"type": CONTROL_TYPE, "op": op, "room": room_id, "user": user_id}
        )


def notify_channel(room_id: int) -> str:
    """The PostgreSQL channel a room's long-polls LISTEN on (chat/longpoll.py)."""
    return f"chat_room_{int(room_id)}"


def user_channel(user_id: Any) -> str:
    """The PostgreSQL channel a user's stream long-polls LISTEN on (an id: digits or a UUID)."""
    return f"chat_user_{str(user_id).replace('-', '')}"


# Events a long-poll's answer never carries (typing is live only; presence goes with the answer).
NOT_NOTIFIED = frozenset({"typing", "presence"})


# PostgreSQL's limit on a NOTIFY payload is 8,000 bytes.
NOTIFY_PAYLOAD = 7900


class PostgresNotifyBackend:
    """Lambda: wakes the long-polls waiting on the room (chat/longpoll.py, CHAT_POLL_WAIT=database)
    at once, with `NOTIFY chat_room_<id>` after commit, instead of at their next re-read. The
    payload is the event's text when it fits (the waiter then answers without a read), else
    empty (the waiter reads). Nothing else: long-polls check access on every poll, so control
    needs no message. Does nothing on a database other than PostgreSQL."""

    def publish(self, room_id: int, event: Event, text: str) -> None:
        if event["type"] in NOT_NOTIFIED or db_connection.vendor != "postgresql":
            return
        self._notify(notify_channel(room_id), text)

    def notify_user(self, user_id: Any, event: Event, text: str) -> None:
        if db_connection.vendor == "postgresql":
            self._notify(user_channel(user_id), text)

    def _notify(self, channel: str, text: str) -> None:
        payload = text if len(text.encode()) <= NOTIFY_PAYLOAD else ""
        with db_connection.cursor() as cursor:
            cursor.execute("SELECT pg_notify(%s, %s)", [channel, payload])

    def recheck(self, room_id: int, user_id: int | None) -> None:
        pass

    def close_user(self, user_id: int, room_id: int | None) -> None:
        pass


@cache
def backends() -> tuple[Backend, ...]:
    return tuple(import_string(path)() for path in settings.CHAT_FANOUT_BACKENDS)


@receiver(setting_changed)
def _forget_backends(setting: str, **kwargs: Any) -> None:
    # Chosen once per process; a settings override (tests) chooses again.
    if setting == "CHAT_FANOUT_BACKENDS":
        backends.cache_clear()
    if setting in ("REDIS_URL", "CHANNEL_LAYERS", "CHAT_REDIS_PREFIX"):
        _sync_redis.cache_clear()


def uses_channel_layer() -> bool:
    """Whether this deployment fans out on the channel layer (self-hosted), as opposed to only
    through API Gateway (serverless): the long-poll's hub wait needs it."""
    return any(isinstance(backend, ChannelLayerBackend) for backend in backends())


# Fan-out asked for inside `deferred()`: sent when the block ends.
_queue: ContextVar[list[Callable[[], None]] | None] = ContextVar("chat_fanout_queue", default=None)


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """Fan-out asked for inside the block goes out, in order, when the block ends (also when it
    ends with an error: what was asked for had committed). A Lambda frame writes while it holds
    its connection's lock, and releases the lock before this fan-out's network calls, so that the
    connection's next frames do not queue behind posts to a whole room."""
    queue: list[Callable[[], None]] = []
    token = _queue.set(queue)
    try:
        yield
    finally:
        _queue.reset(token)
        for call in queue:
            call()


def _each(what: str, call: Any, took: Callable[[float], None] | None = None) -> None:
    """`call` for every backend, now or when `deferred()` ends; `took` is told the seconds the
    backends took, when they ran (not when they were queued)."""
    queue = _queue.get()
    if queue is not None:
        queue.append(lambda: _to_backends(what, call, took))
        return
    _to_backends(what, call, took)


def _to_backends(what: str, call: Any, took: Callable[[float], None] | None = None) -> None:
    start = time.perf_counter()
    for backend in backends():
        try:
            call(backend)
        except Exception:
            # Live push is an optimisation; clients recover what it misses from the database.
            log.exception("%s through %s failed", what, type(backend).__name__)
    if took is not None:
        took(time.perf_counter() - start)


def publish(room_id: int, event: Event) -> None:
    text = encode(event)
    _each(
        f"publishing {event['type']} to room {room_id}",
        lambda b: b.publish(room_id, event, text),
        metrics.FANOUT_SECONDS.observe,
    )


def publish_many(room_id: int, events: list[Event]) -> None:
    """A room's events in order (a batch of posts committed together): a backend that can sends
    them at once (one Redis round trip), the others one by one."""
    if not events:
        return
    texts = [encode(event) for event in events]

    def each(backend: Any) -> None:
        many = getattr(backend, "publish_many", None)
        if many is not None:
            many(room_id, events, texts)
            return
        for event, text in zip(events, texts, strict=True):
            backend.publish(room_id, event, text)

    def took(seconds: float) -> None:
        # The histogram is per event: each of the batch's events took its share.
        for _ in events:
            metrics.FANOUT_SECONDS.observe(seconds / len(events))

    _each(f"publishing {len(events)} events to room {room_id}", each, took)


def notify_user(user_id: Any, event: Event) -> None:
    text = encode(event)
    _each(f"telling user {user_id}", lambda b: b.notify_user(user_id, event, text))


def recheck(room_id: int, user_id: int | None = None) -> None:
    _each(f"rechecking room {room_id}", lambda b: b.recheck(room_id, user_id))


def close_user(user_id: int, room_id: int | None = None) -> None:
    _each(f"closing user {user_id}'s connections", lambda b: b.close_user(user_id, room_id))
