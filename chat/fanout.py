"""Fan-out: `publish(room_id, event)`, one call for every live transport.

The backends are chosen by the CHAT_PUBLISHERS setting: the Channels layer (self-hosted, where each
process's room hub hands events to its sockets and long-poll waiters) and, on Lambda, API Gateway
connections. Publication is best effort by design: the write path has already committed, and clients
fill any gap from the database by `seq`. A failing backend is logged, never raised into the writer.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from functools import cache
from typing import Any

import redis
from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from channels_redis.pubsub import RedisPubSubChannelLayer
from django.conf import settings
from django.core.signals import setting_changed
from django.dispatch import receiver
from django.utils.module_loading import import_string

log = logging.getLogger(__name__)

Publisher = Callable[[int, dict[str, Any], str], None]


def group_name(room_id: int) -> str:
    return f"room.{room_id}"


def encode(event: dict[str, Any]) -> str:
    """Serialise an event once; every socket of every process sends these same bytes."""
    return json.dumps(event, separators=(",", ":"), ensure_ascii=False)


def layer_message(room_id: int, event: dict[str, Any], text: str) -> dict[str, Any]:
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


def layer_send(room_id: int, message: dict[str, Any]) -> None:
    """Send one message to the room's group on the channel layer, from synchronous code."""
    layer = get_channel_layer()
    if layer is None:
        return
    client = _sync_redis()
    if client is not None:
        # The write path is synchronous: going through async_to_sync costs an event loop and a
        # Redis connection per call outside a server loop (measured ~2.5 ms). This sends the same
        # PUBLISH the pub/sub layer's group_send sends, on a pooled connection.
        channel = f"{settings.CHAT_REDIS_PREFIX}__group__{group_name(room_id)}"
        client.publish(channel, layer.serialize(message))
        return
    async_to_sync(layer.group_send)(group_name(room_id), message)


def channel_layer_publisher(room_id: int, event: dict[str, Any], text: str) -> None:
    layer_send(room_id, layer_message(room_id, event, text))


@cache
def _publishers() -> tuple[Publisher, ...]:
    return tuple(import_string(path) for path in settings.CHAT_PUBLISHERS)


@receiver(setting_changed)
def _forget_publishers(setting: str, **kwargs: Any) -> None:
    # Chosen once per process; a settings override (tests) chooses again.
    if setting == "CHAT_PUBLISHERS":
        _publishers.cache_clear()
    if setting in ("REDIS_URL", "CHANNEL_LAYERS", "CHAT_REDIS_PREFIX"):
        _sync_redis.cache_clear()


CHANNEL_LAYER_PUBLISHER = "chat.fanout.channel_layer_publisher"


def uses_channel_layer() -> bool:
    """Whether this deployment publishes on the channel layer (self-hosted), as opposed to only
    through API Gateway (serverless)."""
    return CHANNEL_LAYER_PUBLISHER in settings.CHAT_PUBLISHERS


def publish(room_id: int, event: dict[str, Any]) -> None:
    text = encode(event)
    for publisher in _publishers():
        try:
            publisher(room_id, event, text)
        except Exception:
            # Live push is an optimisation; clients recover what it misses from the database.
            log.exception("publishing %s to room %s failed", event["type"], room_id)
