"""The serverless transport: Zappa's WebSocket handlers, which only move frames.

API Gateway holds the sockets and invokes the Lambda for `$connect`, `$default` and `$disconnect`
(zappa_settings.json names this module as `websocket_handler_module`). Who is behind each socket
and which rooms it receives are rows (ApiConnection, Subscription); the protocol is
chat/protocol.py, exactly as on the Channels transport, and replies go back through the
@connections client of the API Gateway fan-out backend (chat/apigateway.py).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import functools
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError
from django.db import DatabaseError, close_old_connections, transaction
from django.db import connection as db_connection
from django.utils import timezone
from zappa.websocket import on_connect, on_disconnect, on_message

from chat import apigateway, cleaning, events, fanout, metrics, presence, protocol
from chat.accesslog import ConnectionLine, pick_request_id, reset_request_id, set_request_id
from chat.errors import ChatError
from chat.invocation import reserving, running
from chat.models import ApiConnection, Room, Subscription

log = logging.getLogger(__name__)

# Replies to one frame stop (with a resync) before the invocation gets near API Gateway's 29 s.
REPLY_BUDGET = 20.0
Handler = Callable[[dict[str, Any], Any], dict[str, Any]]


class LambdaConnection(protocol.Connection):
    """The protocol's view of an API Gateway connection: its row, rebuilt for every invocation."""

    def __init__(self, row: ApiConnection) -> None:
        super().__init__(row.user, row.connection_id, row.default_room or None)
        self.row = row
        if row.bucket_tokens is not None and row.bucket_at is not None:
            # The rate limiter continues where the last frame left it (wall clock across containers).
            self.bucket.tokens = row.bucket_tokens
            self.bucket.stamp = time.monotonic() - max(0.0, time.time() - row.bucket_at)

    def join(self, room: Room) -> None:
        # Committed before protocol.subscribe reads the history: whatever commits later is
        # published to this row, whatever committed earlier is in the read.
        Subscription.objects.get_or_create(connection=self.row, room=room)

    def leave(self, room: Room) -> bool:
        deleted, _ = Subscription.objects.filter(connection=self.row, room=room).delete()
        return deleted > 0

    def save_bucket(self) -> None:
        # time.monotonic() stamps do not travel between containers; store the wall clock.
        stamp = time.time() - (time.monotonic() - self.bucket.stamp)
        ApiConnection.objects.filter(pk=self.row.pk).update(
            bucket_tokens=self.bucket.tokens, bucket_at=stamp, last_seen=timezone.now()
        )


# --- the handlers ---


def invocation(handler: Handler) -> Handler:
    """Database connections checked around each invocation (a warm container keeps them, within
    DB_CONN_MAX_AGE), the invocation's clock started from its context (chat/invocation.py), and
    no exception let out: Zappa retries a handler that raises TypeError with fewer arguments,
    which would run half of it twice."""

    @functools.wraps(handler)
    def wrapper(event: dict[str, Any], context: Any) -> dict[str, Any]:
        close_old_connections()
        # API Gateway's id of this invocation's event, in every line it logs.
        token = set_request_id(
            pick_request_id((event.get("requestContext") or {}).get("requestId"))
        )
        try:
            # The deadline that fan-out respects; this invocation's figures for CloudWatch.
            with running(context), metrics.emitting(handler.__name__):
                return handler(event, context)
        except Exception:
            log.exception("%s failed", handler.__name__)
            return {"statusCode": 500, "body": "Internal server error"}
        finally:
            reset_request_id(token)
            close_old_connections()

    return wrapper


def _query(event: dict[str, Any]) -> dict[str, str]:
    return event.get("queryStringParameters") or {}


def _header(event: dict[str, Any], name: str) -> str | None:
    """A request header of the event, whatever its case (API Gateway keeps the client's)."""
    for key, value in (event.get("headers") or {}).items():
        if key.lower() == name:
            return value
    return None


@on_connect
@invocation
def connect(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """Refuse a browser from another site (403, as the Channels transport does); authenticate
    `?token=` (401 and nothing stored without a valid one); subscribe `?room=`."""
    origin = _header(event, "origin")
    if not protocol.origin_allowed(origin):
        log.info("refused a WebSocket from origin %r", origin)
        return {"statusCode": 403, "body": "Origin not allowed"}
    query = _query(event)
    try:
        user = protocol.authenticate(query.get("token") or "")
    except ChatError as refused:
        return {"statusCode": refused.status, "body": refused.detail}
    rc = event["requestContext"]
    now = timezone.now()
    room = query.get("room") or ""
    try:
        kept = cleaning.clean_slug(room, "room") if room else ""
    except ChatError:
        kept = ""  # not a possible slug: the subscribe below answers why
    # update_or_create: API Gateway may deliver the same $connect twice.
    row, _ = ApiConnection.objects.update_or_create(
        connection_id=rc["connectionId"],
        defaults={
            "user": user,
            "domain": rc["domainName"],
            "stage": rc["stage"],
            # Not cut to fit: a cut slug could name another room. What cannot be a slug (too
            # long, NUL) is not kept, and the subscribe below answers, as on Channels.
            "default_room": kept,
            "connected_at": now,
            "last_seen": now,
        },
    )
    conn = LambdaConnection(row)
    conn.default_room = room or None
    replies = protocol.open_connection(conn)
    subscribed = next((e for e in replies if e["type"] == "subscribed"), None)
    if subscribed and not any(e["type"] == "presence" for e in replies):
        # A changed list was published to the room before this socket could receive it.
        room_id = Room.objects.values_list("pk", flat=True).get(slug=subscribed["room"])
        replies.append(events.presence(subscribed["room"], presence.users(room_id)))
    if replies:
        apigateway.send_after_connect(apigateway.connection_target(row), replies)
    return {"statusCode": 200}


@on_disconnect
@invocation
def disconnect(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """Remove the connection; its subscriptions and presence go with it (it may never come:
    see chat.apigateway.sweep)."""
    rc = event["requestContext"]
    rows = ApiConnection.objects.filter(connection_id=rc["connectionId"])
    row = rows.values("user_id", "connected_at").first()
    apigateway.forget(rows)
    if row is not None:
        # The connection's line; its frames are not counted (each was its own invocation).
        age = (timezone.now() - row["connected_at"]).total_seconds()
        ConnectionLine("lambda-websocket", counted=False).closed(
            str(row["user_id"]), rc["connectionId"], rc.get("disconnectStatusCode"), age
        )
    return {"statusCode": 200}


@contextlib.contextmanager
def one_frame_at_a_time(connection_id: str) -> Iterator[None]:
    """API Gateway invokes the Lambda for each frame as it comes, concurrently; the Channels
    consumer runs a socket's frames one after the other. A session-level advisory lock per
    connection (outside any transaction, so the subscribe order still holds) queues this
    connection's frames in the order they reach PostgreSQL. Best effort: two frames sent
    within a millisecond can still swap; clients that need order wait for the ack."""
    if db_connection.vendor != "postgresql":
        yield  # SQLite runs one writer at a time anyway
        return
    with db_connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_lock(hashtextextended(%s, 0))", [connection_id])
    try:
        yield
    finally:
        with db_connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_unlock(hashtextextended(%s, 0))", [connection_id])


@on_message
@invocation
def message(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """One frame through the shared protocol; the replies go back through @connections."""
    rc = event["requestContext"]
    started = time.monotonic()
    try:
        # The frame's fan-out waits until the connection's lock is released; its replies follow
        # the fan-out, as on Channels (a message's event reaches the room before the ack).
        with reserving(apigateway.reply_reserve()), fanout.deferred():
            with one_frame_at_a_time(rc["connectionId"]):
                target, replies = _message(event)
        if target is not None:
            apigateway.send(target, replies, deadline=started + REPLY_BUDGET)
        return {"statusCode": 200}
    except DatabaseError:
        # Everything needed to answer is in the event: tell the client, which retries with the
        # same client_id (nothing was stored or acknowledged).
        log.exception("database error on a frame")
        close_old_connections()
        target = (rc["connectionId"], apigateway.endpoint(rc["domainName"], rc["stage"]))
        apigateway.post_event(target, protocol.database_error(protocol.frame_of(event.get("body"))))
        return {"statusCode": 500}


def _message(event: dict[str, Any]) -> tuple[apigateway.Target | None, list[protocol.Event]]:
    """The frame through the protocol: where to reply, and the replies (none for a connection
    that is gone: it was told to reconnect)."""
    rc = event["requestContext"]
    text: str | None = event.get("body") or ""
    binary: bytes | None = None
    if event.get("isBase64Encoded"):
        try:
            binary = base64.b64decode(text or "")
        except (binascii.Error, ValueError):
            binary = b""
        text = None
    with transaction.atomic():
        # The row lock serialises the rate limiter of one connection across invocations.
        row = (
            ApiConnection.objects.select_for_update(of=("self",))
            .select_related("user")
            .filter(connection_id=rc["connectionId"])
            .first()
        )
        if row is None:
            # Its row was removed (expired, or a $disconnect raced ahead): make it reconnect.
            _refuse(rc)
            return None, []
        conn = LambdaConnection(row)
        frame, error = protocol.admit(conn, text, binary)
        conn.save_bucket()
    replies = [error] if error else protocol.execute(conn, frame) if frame else []
    return apigateway.connection_target(row), replies


def _refuse(rc: dict[str, Any]) -> None:
    target = (rc["connectionId"], apigateway.endpoint(rc["domainName"], rc["stage"]))
    apigateway.post_event(
        target, events.error("unauthorized", "Reconnect with a new token.", fatal=True)
    )
    with contextlib.suppress(ClientError, BotoCoreError):
        apigateway.client(target[1]).delete_connection(ConnectionId=target[0])
