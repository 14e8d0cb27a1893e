"""The API Gateway fan-out backend: the @connections client, fan-out to a room, moderation's
control of connections, and the sweep of rows whose $disconnect never came.

On Lambda, API Gateway holds the sockets; who is behind each one and which rooms it receives are
rows (ApiConnection, Subscription). Events go out through API Gateway's @connections API with our
own client, whose endpoint is the connection's domain and stage or CHAT_APIGW_ENDPOINT (Zappa's
`send_message` builds it from a variable that only its WebSocket path sets, so it fails when a
message posted over HTTP fans out from a fresh container): boto3's apigatewaymanagementapi, with
posts signed by botocore and sent over keep-alive http.client connections (`Poster`, a tenth of
boto3's CPU per call; CHAT_APIGW_FAST_POST=false for boto3's own post_to_connection).

`ApiGatewayBackend` (listed in CHAT_FANOUT_BACKENDS) posts concurrently from a bounded pool; a
GoneException deletes exactly that connection's row, a LimitExceededException is retried with
jittered backoff, and a room beyond CHAT_APIGW_BATCH connections is split into batches that Zappa's
@task hands to asynchronous invocations, so no invocation approaches its timeout. The handlers
that own the sockets' frames are chat/serverless.py.
"""

from __future__ import annotations

import http.client
import logging
import os
import random
import ssl
import threading
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit

import boto3
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError
from botocore.utils import percent_encode
from django.conf import settings
from django.db import close_old_connections
from django.utils import timezone
from urllib3.util.wait import wait_for_read
from zappa.asynchronous import task

from chat import access, events, presence
from chat.events import Event
from chat.fanout import encode
from chat.models import ApiConnection, Room, Subscription

log = logging.getLogger(__name__)

# API Gateway sends a post of up to 128 KB as 32 KB frames; clients (and the local gateway) are
# simplest with one frame per event, and no event of ours needs more.
MAX_POST = 32 * 1024
# A 410 for a connection this young may only mean its $connect has not returned yet.
CONNECT_GRACE = timedelta(seconds=10)
RETRY_BASE = 0.05
RETRYABLE = {
    "LimitExceededException",
    "TooManyRequestsException",
    "ThrottlingException",
    "InternalServerErrorException",
    "ServiceUnavailable",
    "ConnectionError",
}

OK, GONE, FAILED = "ok", "gone", "failed"
Target = tuple[str, str]  # (connection id, @connections endpoint)


# --- the @connections client ---

_clients: dict[str, Any] = {}
_clients_lock = threading.Lock()
_pool: ThreadPoolExecutor | None = None


def endpoint(domain: str, stage: str) -> str:
    """The @connections endpoint of a connection: the setting, else the API's own domain."""
    return settings.CHAT_APIGW_ENDPOINT or f"https://{domain}/{stage}"


def client(url: str) -> Any:
    """One boto3 client per endpoint and container (client creation is not thread-safe)."""
    with _clients_lock:
        if url not in _clients:
            timeout = settings.CHAT_APIGW_CALL_TIMEOUT
            _clients[url] = boto3.client(
                "apigatewaymanagementapi",
                endpoint_url=url,
                region_name=settings.CHAT_APIGW_REGION,
                config=Config(
                    # Retries are ours: a throttled post backs off, a gone one is not retried.
                    retries={"max_attempts": 1, "mode": "standard"},
                    max_pool_connections=settings.CHAT_APIGW_POOL,
                    connect_timeout=timeout,
                    read_timeout=timeout,
                    parameter_validation=False,
                ),
            )
        return _clients[url]


def pool() -> ThreadPoolExecutor:
    global _pool
    with _clients_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(settings.CHAT_APIGW_POOL, thread_name_prefix="apigw")
        return _pool


class Poster:
    """PostToConnection of boto3's apigatewaymanagementapi, signed by botocore with the same
    credentials and signing name, sent over one keep-alive http.client connection per thread
    and endpoint. Measured here, CPU per call: boto3 about 1 ms, botocore's signing over a
    urllib3 pool 0.25 ms, over http.client 0.1 ms (urllib3's URL parsing, pool look-up and
    response wrapping cost more than the signature). A room of 1,000 is one fan-out: 0.15 s of
    CPU saved in the invocations that post it. Everything else (GET, DELETE) uses the boto3
    client."""

    def __init__(self) -> None:
        session = boto3.Session()
        self.credentials = session.get_credentials()
        model = session.client(
            "apigatewaymanagementapi",
            endpoint_url="https://localhost/x",
            region_name=settings.CHAT_APIGW_REGION,
        ).meta.service_model
        self.signing_name = model.signing_name  # execute-api
        self.timeout = settings.CHAT_APIGW_CALL_TIMEOUT
        self._local = threading.local()
        self._tls: ssl.SSLContext | None = None

    def connection(self, scheme: str, netloc: str) -> http.client.HTTPConnection:
        """This thread's connection to the endpoint, reopened if the server closed it."""
        connections = self._local.__dict__.setdefault("connections", {})
        conn = connections.get((scheme, netloc))
        if conn is None:
            if scheme == "https":
                self._tls = self._tls or ssl.create_default_context()
                conn = http.client.HTTPSConnection(netloc, timeout=self.timeout, context=self._tls)
            else:
                conn = http.client.HTTPConnection(netloc, timeout=self.timeout)
            connections[(scheme, netloc)] = conn
        elif conn.sock is not None and wait_for_read(conn.sock, timeout=0):
            # An idle keep-alive socket is only readable at EOF: the server has closed it, and
            # a request on it would fail. http.client opens a new one on the next request.
            conn.close()
        return conn

    def __call__(self, url: str, connection_id: str, data: bytes) -> str:
        """The error code of the call, "" when it succeeded. Raises OSError or HTTPException
        when no answer came (refused, reset, timed out)."""
        if self.credentials is None:
            raise NoCredentialsError()
        address = f"{url}/@connections/{percent_encode(connection_id, safe='~')}"
        request = AWSRequest(method="POST", url=address, data=data)
        credentials = self.credentials.get_frozen_credentials()
        SigV4Auth(credentials, self.signing_name, settings.CHAT_APIGW_REGION).add_auth(request)
        parts = urlsplit(address)
        conn = self.connection(parts.scheme, parts.netloc)
        try:
            conn.request("POST", parts.path, body=data, headers=dict(request.headers.items()))
            response = conn.getresponse()
            response.read()  # the whole answer, so the connection can carry the next call
        except (OSError, http.client.HTTPException):
            conn.close()  # half a request or answer may be in flight: never reuse it
            raise
        if response.will_close:
            conn.close()
        if 200 <= response.status < 300:
            return ""
        code = (response.getheader("x-amzn-ErrorType") or "").split(":")[0]
        return code or STATUS_CODES.get(response.status, f"HTTP{response.status}")


STATUS_CODES = {
    410: "GoneException",
    429: "LimitExceededException",
    500: "InternalServerErrorException",
    502: "ServiceUnavailable",
    503: "ServiceUnavailable",
    504: "ServiceUnavailable",
}
_poster: Poster | None = None


def poster() -> Poster:
    global _poster
    with _clients_lock:
        if _poster is None:
            _poster = Poster()
        return _poster


def _post_once(url: str, connection_id: str, data: bytes) -> str:
    if settings.CHAT_APIGW_FAST_POST:
        return poster()(url, connection_id, data)
    try:
        client(url).post_to_connection(ConnectionId=connection_id, Data=data)
    except ClientError as exc:
        return str(exc.response.get("Error", {}).get("Code", "") or "ClientError")
    return ""


def post(target: Target, data: bytes) -> str:
    """Post one event to one connection: OK, GONE, or FAILED after the retries."""
    connection_id, url = target
    delay = RETRY_BASE
    for attempt in range(settings.CHAT_APIGW_RETRIES + 1):
        try:
            code = _post_once(url, connection_id, data)
        except (BotoCoreError, OSError, http.client.HTTPException) as exc:  # timeouts, refusals
            log.debug("posting to %s: %s", connection_id, exc)
            code = "ConnectionError"
        if not code:
            return OK
        if code == "GoneException":
            return GONE
        if code not in RETRYABLE:
            log.warning("posting to %s failed: %s", connection_id, code)
            return FAILED
        if attempt < settings.CHAT_APIGW_RETRIES:
            time.sleep(delay * (0.5 + random.random()))  # jittered, so retries do not align
            delay *= 2
    log.warning("posting to %s failed after %s attempts", connection_id, attempt + 1)
    return FAILED


def deliver(targets: Sequence[Target], data: bytes) -> dict[str, int]:
    """Post to every target concurrently; delete the rows of those that are gone."""
    if not targets:
        return {OK: 0, GONE: 0, FAILED: 0}
    results = list(pool().map(lambda target: post(target, data), targets))
    gone = [target[0] for target, result in zip(targets, results, strict=True) if result == GONE]
    if gone:
        forget(ApiConnection.objects.filter(connection_id__in=gone), grace=True)
    return {kind: results.count(kind) for kind in (OK, GONE, FAILED)}


@task
def deliver_batch(targets: list[list[str]], text: str) -> dict[str, int]:
    """One batch of a large room's fan-out, in its own (asynchronous) invocation."""
    close_old_connections()
    try:
        return deliver([(t[0], t[1]) for t in targets], text.encode())
    finally:
        close_old_connections()


def fan_out(targets: Sequence[Target], data: bytes) -> None:
    """The first batch from this invocation, every further batch from an asynchronous one."""
    size = settings.CHAT_APIGW_BATCH
    here, rest = list(targets[:size]), targets[size:]
    text = data.decode()
    for start in range(0, len(rest), size):
        batch = [list(t) for t in rest[start : start + size]]
        try:
            deliver_batch(batch, text)  # outside Lambda, @task runs it right here
        except Exception:
            log.exception("handing a batch of %s to a task failed; posting it here", len(batch))
            here.extend(rest[start : start + size])
    deliver(here, data)


def fit(event: Event, text: str) -> bytes | None:
    """The event as one post within API Gateway's limits; a long presence list is cut short."""
    data = text.encode()
    if len(data) <= MAX_POST:
        return data
    if event.get("type") == "presence":
        users = list(event["users"])
        while users and len(data) > MAX_POST:
            users = users[: len(users) * 3 // 4]
            data = encode({**event, "users": users, "truncated": True}).encode()
        return data
    # Nothing else can be this large with sane settings; clients fill the gap by seq.
    log.error("dropping a %s event of %s bytes: over API Gateway's limit", event["type"], len(data))
    return None


def room_targets(room_id: int, exclude_user: str | None = None) -> list[Target]:
    oldest = timezone.now() - timedelta(seconds=settings.CHAT_APIGW_MAX_DURATION)
    rows = Subscription.objects.filter(room_id=room_id, connection__connected_at__gt=oldest)
    if exclude_user is not None:
        rows = rows.exclude(connection__user__username=exclude_user)
    return [
        (cid, endpoint(domain, stage))
        for cid, domain, stage in rows.values_list(
            "connection__connection_id", "connection__domain", "connection__stage"
        )
    ]


# --- connections as rows ---


def forget(rows: Any, grace: bool = False) -> int:
    """Delete connection rows and take their users out of presence. With `grace`, rows whose
    $connect may still be running are kept (a 410 then means "not open yet", not "gone")."""
    if grace:
        rows = rows.filter(connected_at__lt=timezone.now() - CONNECT_GRACE)
    subscriptions = list(
        Subscription.objects.filter(connection__in=rows).values_list(
            "connection__connection_id", "room_id", "room__slug", "connection__user__username"
        )
    )
    _, per_model = ApiConnection.objects.filter(pk__in=rows.values("pk")).delete()
    deleted = per_model.get(ApiConnection._meta.label, 0)
    # One announcement per room whose list changed, not one per gone connection: each is a
    # fan-out of its own to the whole room (which may find more gone connections).
    changed = {
        (room_id, slug)
        for connection_id, room_id, slug, username in subscriptions
        if presence.leave(room_id, slug, connection_id, username, announcing=False)
    }
    for room_id, slug in sorted(changed):
        presence.announce(room_id, slug)
    return deleted


def post_event(target: Target, event: Event) -> str:
    data = fit(event, encode(event))
    return OK if data is None else post(target, data)


def connection_target(row: ApiConnection) -> Target:
    return (row.connection_id, endpoint(row.domain, row.stage))


class ApiGatewayBackend:
    """CHAT_FANOUT_BACKENDS entry for Lambda: fan-out and control through @connections."""

    def publish(self, room_id: int, event: Event, text: str) -> None:
        """The event to every API Gateway connection subscribed to the room."""
        data = fit(event, text)
        if data is None:
            return
        typist = event.get("user") if event["type"] == "typing" else None
        fan_out(room_targets(room_id, exclude_user=typist), data)

    def recheck(self, room_id: int, user_id: int | None) -> None:
        """Subscriptions of users who may no longer read the room are deleted; each connection
        is told so (its other rooms go on) and the room hears the new presence list."""
        room = Room.objects.filter(pk=room_id).first()
        if room is None:
            return
        rows = Subscription.objects.filter(room_id=room_id).select_related("connection__user")
        if user_id is not None:
            rows = rows.filter(connection__user_id=user_id)
        allowed: dict[int, bool] = {}
        lost = []
        for row in rows:
            user = row.connection.user
            if user.pk not in allowed:
                allowed[user.pk] = access.may_read(user, room)
            if not allowed[user.pk]:
                lost.append(row)
        if not lost:
            return
        Subscription.objects.filter(pk__in=[row.pk for row in lost]).delete()
        changed = False
        for row in lost:
            post_event(connection_target(row.connection), events.no_access(room.slug))
            username = row.connection.user.get_username()
            conn_id = row.connection.connection_id
            changed |= presence.leave(room_id, room.slug, conn_id, username, announcing=False)
        if changed:
            presence.announce(room_id, room.slug)

    def close_user(self, user_id: int, room_id: int | None) -> None:
        """Tell each of the user's connections (those receiving the room, or all) why, delete it
        through @connections (API Gateway then closes the socket), and forget its row."""
        rows = ApiConnection.objects.filter(user_id=user_id)
        if room_id is not None:
            rows = rows.filter(subscriptions__room_id=room_id)
        targets = [connection_target(row) for row in rows]
        for target in targets:
            post_event(target, events.banned())
            try:
                client(target[1]).delete_connection(ConnectionId=target[0])
            except (ClientError, BotoCoreError):
                log.warning("deleting connection %s failed", target[0])
        if targets:
            forget(ApiConnection.objects.filter(connection_id__in=[t[0] for t in targets]))


# --- replies to one connection (chat/serverless.py) ---


def send(target: Target, replies: Iterable[Event], deadline: float | None = None) -> str:
    """Replies to one connection, one post each and in order. A replay still going at the
    deadline ends with a resync for its room: the client reloads that over HTTP."""
    for event in replies:
        if deadline is not None and event["type"] == "message" and time.monotonic() > deadline:
            room = Room.objects.get(slug=event["room"])
            return post_event(target, events.subscribed(room.slug, room.seq, False, "resync"))
        if post_event(target, event) == GONE:
            return GONE
    return OK


@task
def send_when_open(connection_id: str, url: str, replies: list[Event]) -> str:
    """The replies of a $connect (its `?room=` subscription), which can only be posted once
    API Gateway has opened the socket: that is after $connect returns, so retry a 410 a while."""
    close_old_connections()
    try:
        delay = RETRY_BASE
        for _ in range(8):  # about 6 s in all
            if not replies:
                return OK
            # Until it opens, a socket answers 410 (or 403): try again while its row exists.
            first = post_event((connection_id, url), replies[0])
            if first == OK:
                return send((connection_id, url), replies[1:])
            if not ApiConnection.objects.filter(connection_id=connection_id).exists():
                return first
            time.sleep(delay)
            delay *= 2
        return GONE
    finally:
        close_old_connections()


def send_after_connect(target: Target, replies: list[Event]) -> None:
    """The replies of a $connect, posted once the socket is open (after $connect returns)."""
    connection_id, url = target
    if os.environ.get("AWS_LAMBDA_FUNCTION_NAME"):
        send_when_open(connection_id, url, replies)  # an asynchronous invocation
    else:
        # Outside Lambda @task would run inline, before the socket can open: use a thread.
        threading.Thread(target=send_when_open.sync, args=(connection_id, url, replies)).start()


# --- housekeeping (a Zappa scheduled event, see zappa_settings.json) ---


def sweep(event: Any = None, context: Any = None) -> dict[str, int]:
    """Remove rows whose $disconnect never came: past API Gateway's maximum duration they are
    gone for certain; idle past its idle timeout they are asked about (GET @connections)."""
    now = timezone.now()
    expired = forget(
        ApiConnection.objects.filter(
            connected_at__lt=now - timedelta(seconds=settings.CHAT_APIGW_MAX_DURATION)
        )
    )
    idle = list(
        ApiConnection.objects.filter(
            last_seen__lt=now - timedelta(seconds=settings.CHAT_APIGW_IDLE_TIMEOUT)
        ).values_list("connection_id", "domain", "stage")[:5000]
    )

    def gone(row: tuple[str, str, str]) -> bool:
        try:
            client(endpoint(row[1], row[2])).get_connection(ConnectionId=row[0])
        except ClientError as exc:
            return exc.response.get("Error", {}).get("Code") == "GoneException"
        except BotoCoreError:
            return False
        return False

    dead = [row[0] for row, is_gone in zip(idle, pool().map(gone, idle), strict=True) if is_gone]
    probed = forget(ApiConnection.objects.filter(connection_id__in=dead)) if dead else 0
    return {"expired": expired, "gone": probed}
