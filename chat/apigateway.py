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
jittered backoff. A room beyond CHAT_APIGW_BATCH connections is split into batches, each an
asynchronous invocation of its own (a Zappa command, `deliver_batch`). Every invocation watches
its deadline (chat/invocation.py): no @connections attempt starts after `cutoff()`, and what is
left then goes to another batch. Batches may be retried by Lambda: each claims its connections
(DeliveryClaim) before posting, so a retry posts nothing twice. The handlers that own the
sockets' frames are chat/serverless.py.
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import random
import ssl
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit

import boto3
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError
from botocore.utils import percent_encode
from django.db import close_old_connections
from django.db import connection as db_connection
from django.utils import timezone
from urllib3.util.wait import wait_for_read
from zappa.asynchronous import task

from chat import access, events, invocation, metrics, presence
from chat.conf import settings
from chat.events import Event
from chat.fanout import encode
from chat.models import ApiConnection, DeliveryClaim, Room, Subscription, username_lookup

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

OK, GONE, FAILED, DEFERRED = "ok", "gone", "failed", "deferred"
RESULTS = (OK, GONE, FAILED, DEFERRED)
# Seconds kept, after the last attempt's timeouts, to hand what is left to another batch.
HANDOFF_RESERVE = 1.0
# Batches that hand on what they could not post, at most, before the rest is given up.
MAX_HOPS = 8
BATCH_COMMAND = "chat.apigateway.deliver_batch"
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


def cutoff(deadline: float) -> float:
    """The last moment a @connections attempt may start in an invocation ending at `deadline`:
    the attempt's connect and read timeouts, then the hand-off of what is left, end before it."""
    return deadline - 2 * settings.CHAT_APIGW_CALL_TIMEOUT - HANDOFF_RESERVE


@metrics.counted_result(metrics.APIGW_POSTS)
def post(target: Target, data: bytes, until: float | None = None) -> str:
    """Post one event to one connection: OK, GONE, or FAILED after the retries. From `until` on
    (monotonic time) no attempt starts: DEFERRED, for another invocation to post."""
    connection_id, url = target
    delay = RETRY_BASE
    for attempt in range(settings.CHAT_APIGW_RETRIES + 1):
        if until is not None and time.monotonic() >= until:
            return DEFERRED
        try:
            code = _post_once(url, connection_id, data)
        except (BotoCoreError, OSError, http.client.HTTPException) as exc:  # timeouts, refusals
            log.debug("posting to %s: %s", connection_id, exc)
            code = "ConnectionError"
        metrics.apigw_attempt(code)
        if not code:
            return OK
        if code == "GoneException":
            return GONE
        if code not in RETRYABLE:
            log.warning("posting to %s failed: %s", connection_id, code)
            return FAILED
        if attempt < settings.CHAT_APIGW_RETRIES:
            pause = delay * (0.5 + random.random())  # jittered, so retries do not align
            if until is not None and time.monotonic() + pause >= until:
                return DEFERRED
            time.sleep(pause)
            delay *= 2
    log.warning("posting to %s failed after %s attempts", connection_id, attempt + 1)
    return FAILED


@dataclass
class Outcome:
    """What one invocation's `deliver` did: counts per result, and what it left for another
    invocation: `deferred` (started, stopped between retries at the cut-off; claimed, when
    claims are kept) and `unstarted` (never claimed)."""

    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(RESULTS, 0))
    deferred: list[Target] = field(default_factory=list)
    unstarted: list[Target] = field(default_factory=list)

    @property
    def left(self) -> list[Target]:
        return self.deferred + self.unstarted


def deliver(
    targets: Sequence[Target],
    data: bytes,
    until: float | None = None,
    claim: Callable[[list[Target]], list[Target]] | None = None,
) -> Outcome:
    """Post to every target concurrently, at most the pool's size in flight; delete the rows of
    those that are gone. Nothing is started from `until` on: what is left comes back in the
    outcome, for another batch. With `claim`, targets are claimed a chunk at a time just before
    they start, and only those it returns are posted to (a retried batch skips what an earlier
    run claimed)."""
    outcome = Outcome()
    window = settings.CHAT_APIGW_POOL
    todo = list(targets)
    taken = 0
    running: dict[Future[str], Target] = {}
    executor = pool()
    gone: list[str] = []
    while True:
        late = until is not None and time.monotonic() >= until
        if not late and taken < len(todo) and len(running) <= window // 2:
            chunk = todo[taken : taken + window - len(running)]
            taken += len(chunk)
            for target in claim(chunk) if claim is not None else chunk:
                running[executor.submit(post, target, data, until)] = target
        if not running:
            if late or taken >= len(todo):
                break
            continue  # every target of that chunk was claimed by an earlier run
        done, _ = wait(running, return_when=FIRST_COMPLETED)
        for future in done:
            target = running.pop(future)
            try:
                result = future.result()
            except Exception:
                log.exception("posting to %s failed", target[0])
                result = FAILED
            outcome.counts[result] += 1
            if result == GONE:
                gone.append(target[0])
            elif result == DEFERRED:
                outcome.deferred.append(target)
    outcome.unstarted = todo[taken:]
    if gone:
        forget(ApiConnection.objects.filter(connection_id__in=gone), grace=True)
    return outcome


class Claims:
    """The connections one publication has been posted to by its asynchronous batches (or is
    being posted to): a row per connection, claimed by one INSERT per chunk, so that a retried
    batch posts nothing twice. At most once, as live push is everywhere: a batch that dies
    between claiming and posting (killed at its timeout, out of memory) leaves those
    connections to fill the gap by `seq`, as after any missed event."""

    def __init__(self, delivery: str) -> None:
        self.delivery = delivery

    def claim(self, targets: list[Target]) -> list[Target]:
        if not targets:
            return []
        field_ = DeliveryClaim._meta.get_field("claimed_at")
        now = field_.get_db_prep_value(timezone.now(), db_connection)
        table = db_connection.ops.quote_name(DeliveryClaim._meta.db_table)
        values = ", ".join(["(%s, %s, %s)"] * len(targets))
        params: list[Any] = []
        for connection_id, _ in targets:
            params += [self.delivery, connection_id, now]
        with db_connection.cursor() as cursor:
            cursor.execute(
                f"INSERT INTO {table} (delivery, connection_id, claimed_at) VALUES {values}"
                " ON CONFLICT (delivery, connection_id) DO NOTHING RETURNING connection_id",
                params,
            )
            won = {row[0] for row in cursor.fetchall()}
        return [target for target in targets if target[0] in won]

    def release(self, targets: list[Target]) -> None:
        """Give back claims whose post never happened (handed to the next batch)."""
        if targets:
            DeliveryClaim.objects.filter(
                delivery=self.delivery, connection_id__in=[t[0] for t in targets]
            ).delete()


# --- batches: asynchronous invocations of their own ---


def lambda_client() -> Any:
    """Lambda's API, for the asynchronous invocations of batches (AWS_ENDPOINT_URL_LAMBDA
    points it elsewhere, as the local gateway does)."""
    with _clients_lock:
        if "lambda" not in _clients:
            _clients["lambda"] = boto3.client(
                "lambda",
                region_name=os.environ.get("AWS_REGION") or settings.CHAT_APIGW_REGION,
                config=Config(retries={"max_attempts": 3, "mode": "standard"}),
            )
        return _clients["lambda"]


def start_batch(batch: dict[str, Any]) -> None:
    """Run a batch in an asynchronous invocation: a Zappa command (Zappa's handler calls it with
    the invocation's context, which its @task route does not pass on). Outside Lambda it runs
    here and now, as @task does."""
    function = os.environ.get("AWS_LAMBDA_FUNCTION_NAME")
    if not function:
        deliver_batch(batch, None)
        return
    payload = json.dumps({"command": BATCH_COMMAND, **batch}, separators=(",", ":"))
    lambda_client().invoke(FunctionName=function, InvocationType="Event", Payload=payload)


def hand_off(batch: dict[str, Any], targets: Sequence[Target]) -> list[Target]:
    """`targets` in batches of CHAT_APIGW_BATCH, each an asynchronous invocation of its own, with
    `batch`'s delivery id, creation time and hop count; returns those that could not be handed
    off."""
    size = settings.CHAT_APIGW_BATCH
    failed: list[Target] = []
    for start in range(0, len(targets), size):
        part = list(targets[start : start + size])
        try:
            start_batch({**batch, "targets": [list(t) for t in part]})
        except Exception:
            log.exception("handing a batch of %s connections to an invocation failed", len(part))
            failed += part
    return failed


def deliver_batch(event: dict[str, Any], context: Any = None) -> dict[str, int]:
    """One batch of a room's fan-out, in an asynchronous invocation (Zappa's handler runs it as
    the event's `command`). Lambda retries a failed asynchronous invocation up to twice: every
    connection is claimed before it is posted to, so a retry posts only what no run claimed.
    What the deadline leaves goes to the next batch, with the same delivery id."""
    try:
        with invocation.running(context), metrics.emitting("deliver_batch"):
            close_old_connections()
            try:
                return _deliver_batch(event)
            finally:
                close_old_connections()
    except TypeError as exc:
        # Zappa runs a command that raises TypeError again with fewer arguments.
        raise RuntimeError(f"batch failed: {exc}") from exc


def _deliver_batch(event: dict[str, Any]) -> dict[str, int]:
    targets = [(str(t[0]), str(t[1])) for t in event["targets"]]
    if time.time() - float(event["created"]) > settings.CHAT_APIGW_MAX_DURATION:
        return {"expired": len(targets)}  # every connection it names is gone by now
    claims = Claims(str(event["delivery"]))
    until = cutoff(invocation.deadline())
    outcome = deliver(targets, str(event["text"]).encode(), until, claim=claims.claim)
    claims.release(outcome.deferred)
    hops = int(event.get("hops", 0)) + 1
    if outcome.left and hops > MAX_HOPS:
        log.error("fan-out gave up on %s connections after %s batches", len(outcome.left), hops)
    elif outcome.left:
        batch = {k: event[k] for k in ("delivery", "created", "text")}
        lost = hand_off({**batch, "hops": hops}, outcome.left)
        if lost:
            log.error("fan-out lost %s connections: no batch could take them", len(lost))
    return {**outcome.counts, "handed_off": len(outcome.left)}


def fan_out(targets: Sequence[Target], data: bytes) -> None:
    """The first CHAT_APIGW_BATCH from this invocation, every further batch from an asynchronous
    one; what this invocation cannot post before its deadline goes to another batch too. This
    invocation keeps no claims: it is not asynchronous, so Lambda never retries it."""
    size = settings.CHAT_APIGW_BATCH
    batch = {"delivery": uuid.uuid4().hex, "created": time.time(), "text": data.decode()}
    here = list(targets[:size])
    here += hand_off(batch, targets[size:])  # what could not be handed off is posted here
    outcome = deliver(here, data, cutoff(invocation.deadline()))
    if outcome.left:
        lost = hand_off(batch, outcome.left)
        if lost:
            log.error("fan-out lost %s connections: no batch could take them", len(lost))


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
        rows = rows.exclude(**{username_lookup("connection__user"): exclude_user})
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
            "connection__connection_id",
            "room_id",
            "room__slug",
            username_lookup("connection__user"),
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


def post_event(target: Target, event: Event, until: float | None = None) -> str:
    data = fit(event, encode(event))
    return OK if data is None else post(target, data, until)


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

    def notify_user(self, user_id: Any, event: Event, text: str) -> None:
        """The event to every API Gateway connection of the user (a handful: posted here)."""
        data = fit(event, text)
        if data is None:
            return
        oldest = timezone.now() - timedelta(seconds=settings.CHAT_APIGW_MAX_DURATION)
        rows = ApiConnection.objects.filter(user_id=user_id, connected_at__gt=oldest)
        targets = [connection_target(row) for row in rows]
        if targets:
            deliver(targets, data, cutoff(invocation.deadline()))

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


def reply_reserve() -> float:
    """Seconds a reply's attempt (connect and read timeouts) may take."""
    return 2.0 * settings.CHAT_APIGW_CALL_TIMEOUT


def reply_cutoff() -> float:
    """The last moment a reply's attempt may start: its timeouts end before the invocation."""
    return invocation.deadline() - reply_reserve()


def send(target: Target, replies: Iterable[Event], deadline: float | None = None) -> str:
    """Replies to one connection, one post each and in order. A replay still going at the
    deadline ends with a resync for its room: the client reloads that over HTTP. Nothing is
    started that could outlast the invocation (the client retries an unanswered frame)."""
    until = reply_cutoff()
    for event in replies:
        if deadline is not None and event["type"] == "message" and time.monotonic() > deadline:
            room = Room.objects.get(slug=event["room"])
            resync = events.subscribed(room.slug, room.seq, False, "resync")
            return post_event(target, resync, until)
        result = post_event(target, event, until)
        if result in (GONE, DEFERRED):
            return result
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
    with invocation.running(context):
        return _sweep()


def _sweep() -> dict[str, int]:
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
    # A claim outlives every connection it names after the maximum duration: no retry needs it.
    claims, _ = DeliveryClaim.objects.filter(
        claimed_at__lt=now - timedelta(seconds=settings.CHAT_APIGW_MAX_DURATION)
    ).delete()
    return {"expired": expired, "gone": probed, "claims": claims}
