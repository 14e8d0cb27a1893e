"""Fan-out within the Lambda deadline: with @connections stalling, an invocation starts no post
after its cut-off and hands what is left to another batch; a batch that Lambda retries posts
nothing twice. In this process with a stalling @connections stub (the clock is controlled),
then through the local gateway with a slow @connections and a short function timeout."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections import Counter
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.test import RequestFactory
from django.utils import timezone

from chat import apigateway, fanout, invocation, serverless, tokens
from chat.models import ApiConnection, DeliveryClaim, Room, Subscription
from tests.conftest import ROOT, Gateway, quiesce
from tests.test_serverless import make_user, of_type, recv_until, ws_connect

pytestmark = [pytest.mark.timeout(120)]


class Context:
    """The Lambda context's clock: `get_remaining_time_in_millis()` counts down from `seconds`."""

    def __init__(self, seconds: float) -> None:
        self.deadline = time.monotonic() + seconds

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self.deadline - time.monotonic()) * 1000))


class StallingConnections:
    """@connections where every call takes `stall` seconds (and then succeeds), recording when
    each attempt started and ended, per connection."""

    def __init__(self, stall: float, fail_after: int | None = None) -> None:
        self.stall = stall
        self.fail_after = fail_after
        self.calls: list[tuple[str, float, float, dict[str, Any]]] = []
        self.lock = threading.Lock()

    def __call__(self, url: str, connection_id: str, data: bytes) -> str:
        with self.lock:
            if self.fail_after is not None and len(self.calls) >= self.fail_after:
                raise Crash("the invocation dies here")
        started = time.monotonic()
        time.sleep(self.stall)
        with self.lock:
            self.calls.append((connection_id, started, time.monotonic(), json.loads(data)))
        return ""

    def messages(self) -> Counter[str]:
        """How many times each connection was sent a message event."""
        return Counter(cid for cid, _, _, event in self.calls if event.get("type") == "message")


class Crash(BaseException):
    """A failure the fan-out does not catch: the invocation ends with an error (Lambda then
    retries it, if it was asynchronous)."""


@pytest.fixture
def lambda_settings(settings: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    settings.CHAT_FANOUT_BACKENDS = ["chat.apigateway.ApiGatewayBackend"]
    settings.CHAT_PRESENCE_STORE = "chat.presence.SubscriptionStore"
    settings.CHAT_APIGW_CALL_TIMEOUT = 1
    settings.CHAT_APIGW_POOL = 4
    settings.CHAT_APIGW_BATCH = 100
    fanout.backends.cache_clear()
    # The test's own database connection lives in its transaction: keep it.
    monkeypatch.setattr(serverless, "close_old_connections", lambda: None)
    monkeypatch.setattr(apigateway, "close_old_connections", lambda: None)
    yield settings
    fanout.backends.cache_clear()


def subscribe_many(room: Room, count: int) -> list[str]:
    """`count` connections of their own users in the room, old enough to be past $connect."""
    now = timezone.now()
    ids = []
    for n in range(count):
        user = make_user(f"member{n:03}")
        row = ApiConnection.objects.create(
            connection_id=f"Member{n:03}=",
            user=user,
            domain="abc.execute-api.us-east-1.amazonaws.com",
            stage="dev",
            connected_at=now - timedelta(minutes=5),
            last_seen=now,
        )
        Subscription.objects.create(connection=row, room=room)
        ids.append(row.connection_id)
    return ids


def test_the_clock_comes_from_the_context_else_from_the_setting(settings: Any) -> None:
    settings.CHAT_INVOCATION_TIMEOUT = 30
    before = time.monotonic()
    assert before + 29 <= invocation.deadline() <= time.monotonic() + 30  # no context: the setting
    with invocation.running(Context(5)):
        assert 4 < invocation.remaining() <= 5
        with invocation.running(None):
            assert 29 < invocation.remaining() <= 30
        assert invocation.remaining() <= 5
    assert invocation.remaining() > 29


def test_an_http_request_on_lambda_runs_on_its_contexts_clock() -> None:
    seen: list[float] = []
    middleware = invocation.middleware(lambda request: seen.append(invocation.remaining()))
    request = RequestFactory().get("/")
    request.META["lambda.context"] = Context(7)  # what Zappa's WSGI handler puts in the environ
    middleware(request)
    middleware(RequestFactory().get("/"))  # not through Zappa: the setting's default
    assert 6 < seen[0] <= 7 and seen[1] > 20


def test_a_stalled_fan_out_posts_nothing_past_its_cut_off_and_hands_the_rest_on(
    transactional_db: Any, lambda_settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    room = Room.objects.create(slug="general", title="General")
    members = subscribe_many(room, 40)
    sender = make_user("sender")
    stalling = StallingConnections(stall=0.4)
    monkeypatch.setattr(apigateway, "_post_once", stalling)
    handed: list[dict[str, Any]] = []
    monkeypatch.setattr(apigateway, "start_batch", handed.append)

    # One $default invocation with 6.5 s left. Its replies keep two call timeouts (connect,
    # read) at the end; its fan-out's cut-off is another two and 1 s for the hand-off before
    # that: 1.5 s from now. 40 posts of 0.4 s from 4 threads need 4 s: most of the room has
    # to go to the next batch.
    context = Context(6.5)
    cut_off = apigateway.cutoff(context.deadline - apigateway.reply_reserve())
    connect = {
        "requestContext": {
            "routeKey": "$connect",
            "eventType": "CONNECT",
            "connectionId": "Sender=",
            "domainName": "abc.execute-api.us-east-1.amazonaws.com",
            "stage": "dev",
        },
        "queryStringParameters": {"token": tokens.make_token(sender)},
        "isBase64Encoded": False,
    }
    monkeypatch.setattr(apigateway, "send_after_connect", lambda target, replies: None)
    assert serverless.connect(connect, Context(30)) == {"statusCode": 200}
    frame = {**connect, "requestContext": {**connect["requestContext"], "routeKey": "$default"}}
    frame["requestContext"]["eventType"] = "MESSAGE"
    frame["body"] = json.dumps({"action": "sendmessage", "room": "general", "body": "to all"})
    stalling.calls.clear()
    # Committed for real (transactional_db): the fan-out runs after commit, inside the handler.
    assert serverless.message(frame, context) == {"statusCode": 200}

    first = stalling.messages()
    assert first and all(count == 1 for count in first.values())
    assert len(first) < len(members)
    # No fan-out post started after the cut-off (the frame's replies keep two call timeouts
    # after it), and every call, the sender's ack included, ended before the deadline.
    fanned = [started for _, started, _, event in stalling.calls if event["type"] == "message"]
    assert max(fanned) < cut_off + 0.05
    assert max(ended for _, _, ended, _ in stalling.calls) < context.deadline
    assert [e["type"] for cid, _, _, e in stalling.calls if cid == "Sender="] == ["ack"]
    [batch] = handed
    left = {target[0] for target in batch["targets"]}
    assert left == set(members) - set(first)

    # The follow-up batch, an asynchronous invocation with a fresh 30 s, posts the rest.
    stalling.calls.clear()
    result = apigateway.deliver_batch(batch, Context(30))
    assert result["ok"] == len(left) and result["handed_off"] == 0
    assert set(stalling.messages()) == left
    # Lambda retries it (or delivers the event twice): nothing is posted again.
    stalling.calls.clear()
    assert apigateway.deliver_batch(batch, Context(30))["ok"] == 0
    assert stalling.calls == []
    assert DeliveryClaim.objects.filter(delivery=batch["delivery"]).count() == len(left)


def test_a_batch_that_dies_half_way_is_retried_without_posting_twice(
    db: Any, lambda_settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    room = Room.objects.create(slug="general", title="General")
    members = subscribe_many(room, 30)
    batch = {
        "delivery": "d" * 32,
        "created": time.time(),
        "text": json.dumps({"type": "message", "room": "general", "seq": 1}),
        "targets": [
            [cid, "https://abc.execute-api.us-east-1.amazonaws.com/dev"] for cid in members
        ],
    }
    monkeypatch.setattr(apigateway, "start_batch", lambda batch: pytest.fail("no hand-off"))
    dying = StallingConnections(stall=0.01, fail_after=12)
    monkeypatch.setattr(apigateway, "_post_once", dying)
    with pytest.raises(Crash):
        apigateway.deliver_batch(batch, Context(30))  # Lambda marks it failed and retries it
    first = dying.messages()
    assert 0 < len(first) < len(members)

    # The retry: the connections claimed by the first run are skipped, whether that run posted
    # to them or died before it could (those fill the gap by seq, as after any missed event).
    retry = StallingConnections(stall=0.01)
    monkeypatch.setattr(apigateway, "_post_once", retry)
    apigateway.deliver_batch(batch, Context(30))
    second = retry.messages()
    assert not set(first) & set(second)
    assert all(count == 1 for count in (first + second).values())
    claimed_by_first = DeliveryClaim.objects.count() - len(second)
    assert len(first) <= claimed_by_first <= len(first) + lambda_settings.CHAT_APIGW_POOL
    assert len(first) + len(second) >= len(members) - lambda_settings.CHAT_APIGW_POOL

    # A second retry posts nothing at all.
    again = StallingConnections(stall=0.01)
    monkeypatch.setattr(apigateway, "_post_once", again)
    apigateway.deliver_batch(batch, Context(30))
    assert again.calls == []


def test_a_deferred_post_is_released_to_the_next_batch_and_a_batch_expires(
    db: Any, lambda_settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    room = Room.objects.create(slug="general", title="General")
    members = subscribe_many(room, 8)
    url = "https://abc.execute-api.us-east-1.amazonaws.com/dev"
    batch = {
        "delivery": "e" * 32,
        "created": time.time(),
        "text": json.dumps({"type": "message", "room": "general", "seq": 1}),
        "targets": [[cid, url] for cid in members],
    }
    handed: list[dict[str, Any]] = []
    monkeypatch.setattr(apigateway, "start_batch", handed.append)
    throttled = threading.Event()

    def busy(url: str, connection_id: str, data: bytes) -> str:
        throttled.set()
        time.sleep(0.2)
        return "LimitExceededException"  # retried until the cut-off, then deferred

    monkeypatch.setattr(apigateway, "_post_once", busy)
    lambda_settings.CHAT_APIGW_RETRIES = 50
    result = apigateway.deliver_batch(batch, Context(4))
    assert throttled.is_set() and result["ok"] == 0
    assert result["deferred"] >= 4 and result["handed_off"] == len(members)
    [follow_up] = handed
    assert sorted(t[0] for t in follow_up["targets"]) == members
    assert (follow_up["delivery"], follow_up["hops"]) == (batch["delivery"], 1)
    # Claims of what was never posted are given back, so the next batch can take them.
    assert not DeliveryClaim.objects.exists()

    stale = {**batch, "created": time.time() - 3 * 3600}
    monkeypatch.setattr(apigateway, "_post_once", lambda *a: pytest.fail("posted"))
    assert apigateway.deliver_batch(stale, Context(30)) == {"expired": len(members)}


# --- through the local gateway: real invocations, a real Invoke of the follow-up batch ---


@pytest.fixture(scope="module")
def slow_gateway_proc(
    django_db_setup: Any, django_db_blocker: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    """The dev stage with a 6 s function timeout, behind @connections that take 0.25 s a call,
    and two posts in flight per invocation. The frame's invocation stops fanning out after about
    1 s (6 s less 2 s kept for its replies, two 1 s call timeouts and 1 s for the hand-off),
    each batch after 3 s: a room of 40 takes three invocations."""
    stages = json.loads((ROOT / "zappa_settings.json").read_text())
    stages["dev"]["timeout_seconds"] = 6
    settings_file = tmp_path_factory.mktemp("stage") / "zappa_settings.json"
    settings_file.write_text(json.dumps(stages))
    env = {"CHAT_APIGW_CALL_TIMEOUT": "1", "CHAT_APIGW_POOL": "2", "CHAT_APIGW_BATCH": "100"}
    args = ("--settings-file", str(settings_file), "--connections-delay", "0.25")
    with django_db_blocker.unblock():
        gateway = Gateway(*args, env=env).start()
    yield gateway
    gateway.stop()


@pytest.fixture
def slow_gateway(slow_gateway_proc: Gateway, transactional_db: Any) -> Iterator[Gateway]:
    yield slow_gateway_proc
    quiesce(20, gateway=slow_gateway_proc)


def test_a_room_behind_stalling_connections_hears_each_message_once(slow_gateway: Gateway) -> None:
    alice = make_user("alice")
    Room.objects.create(slug="general", title="General")
    token = tokens.make_token(alice)
    count = 40

    async def run() -> list[int]:
        async def open_one() -> Any:
            ws = await ws_connect(slow_gateway, f"room=general&token={token}")
            await recv_until(ws, of_type("subscribed"), timeout=30)
            return ws

        sockets = await asyncio.gather(*(open_one() for _ in range(count)))
        await sockets[0].send(json.dumps({"action": "sendmessage", "body": "to all"}))
        await asyncio.gather(*(recv_until(ws, of_type("message"), timeout=40) for ws in sockets))
        await asyncio.sleep(1.5)  # anything posted twice would arrive by now

        async def extra(ws: Any) -> int:
            try:
                await recv_until(ws, of_type("message"), timeout=0.2)
            except TimeoutError:
                return 0
            return 1

        duplicates = await asyncio.gather(*(extra(ws) for ws in sockets))
        await asyncio.gather(*(ws.close() for ws in sockets))
        return list(duplicates)

    assert sum(asyncio.run(run())) == 0
    # The first invocation could not post to all 40 before its cut-off: a batch did the rest.
    assert DeliveryClaim.objects.exists()


def test_the_stages_timeout_is_the_invocation_timeout_setting() -> None:
    """CHAT_INVOCATION_TIMEOUT is the clock when no context tells: it must be each Lambda
    stage's timeout_seconds."""
    stages = json.loads(Path(ROOT / "zappa_settings.json").read_text())
    for name, stage in stages.items():
        merged = {**stages.get(stage.get("extends", ""), {}), **stage}
        env = merged.get("environment_variables", {})
        assert int(env.get("CHAT_INVOCATION_TIMEOUT", 30)) == merged.get("timeout_seconds", 30), (
            name
        )
