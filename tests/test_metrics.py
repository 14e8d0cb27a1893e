"""/metrics through a real uvicorn server on the test PostgreSQL and Redis, @connections results,
and the CloudWatch EMF line a Lambda invocation prints."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import aiohttp
import pytest
from asgiref.sync import sync_to_async
from django.test import Client
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from chat import apigateway, fanout, metrics, serverless, writepath
from chat.models import Room
from tests.conftest import Server
from tests.test_realtime import peer

TOKEN = "metrics-token-for-tests"
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def _lower(headers: Any) -> dict[str, str]:
    return {key.lower(): value for key, value in headers.items()}


def fetch(server: Server, token: str | None = None) -> tuple[int, str, dict[str, str]]:
    headers = {"Host": "10.0.0.9"}  # by address, as Prometheus scrapes a target
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(f"{server.url}/metrics", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read().decode(), _lower(response.headers)
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode(), _lower(error.headers)


def scrape(server: Server) -> Samples:
    status, text, _ = fetch(server, TOKEN)
    assert status == 200
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def moved(before: Samples, after: Samples, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


async def until(server: Server, check: Callable[[Samples], bool], timeout: float = 10) -> Samples:
    """Scrape until `check` holds: what the server does after answering has no event to await."""
    deadline = time.monotonic() + timeout
    while True:
        samples = await sync_to_async(scrape, thread_sensitive=False)(server)
        if check(samples):
            return samples
        assert time.monotonic() < deadline, "the metrics never got there"
        await asyncio.sleep(0.05)


@pytest.fixture(scope="module")
def metered(django_db_setup: Any, django_db_blocker: Any) -> Iterator[Server]:
    with django_db_blocker.unblock():
        # A short resume window, so that a resync takes a few messages, not a thousand.
        server = Server({"CHAT_METRICS_TOKEN": TOKEN, "CHAT_RESUME_LIMIT": "3"}).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def live(metered: Server, transactional_db: Any) -> Server:
    """The metered server; the test's data is committed so that it sees it."""
    return metered


# --- the endpoint ---


def test_it_is_off_without_a_token_configured(server: Server) -> None:
    status, body, _ = fetch(server, TOKEN)
    assert status == 404 and "chat_" not in body


def test_it_refuses_a_missing_or_wrong_token(live: Server) -> None:
    status, body, headers = fetch(live)
    assert status == 401 and "chat_" not in body
    assert headers["www-authenticate"].startswith("Bearer")
    assert fetch(live, "not-the-token")[0] == 401
    assert fetch(live, TOKEN + "x")[0] == 401


def test_it_answers_the_text_format_with_the_token(live: Server) -> None:
    status, body, headers = fetch(live, TOKEN)
    assert status == 200
    assert headers["content-type"].startswith("text/plain; version=")
    for name in (
        "chat_open_connections",
        "chat_long_poll_waiters",
        "chat_write_seconds",
        "chat_fanout_seconds",
    ):
        assert f"# TYPE {name} " in body


# --- what it counts ---


async def test_a_websocket_chat_moves_connections_deliveries_and_writes(
    live: Server, alice: Any, bob: Any, room: Room
) -> None:
    start = await sync_to_async(scrape, thread_sensitive=False)(live)
    opened = value(start, "chat_open_connections", transport="websocket")
    a, b = await peer(live, alice), await peer(live, bob)
    await b.subscribe("general")
    await b.next("presence")  # bob's arrival: delivered before the counts below are taken
    await a.send({"action": "ping"})
    await a.next("pong")  # alice's connect has run to the end too
    before = await sync_to_async(scrape, thread_sensitive=False)(live)
    assert value(before, "chat_open_connections", transport="websocket") == opened + 2

    await a.send({"action": "sendmessage", "room": "general", "body": "counted"})
    assert (await b.next("message"))["body"] == "counted"
    # The socket's write and post_message's return both come a moment after bob has it.
    after = await until(live, lambda s: moved(before, s, "chat_deliveries_total") > 0)
    after = await until(live, lambda s: moved(before, s, "chat_write_seconds_count") > 0)
    assert value(after, "chat_deliveries_total") - value(before, "chat_deliveries_total") == 1
    writes = value(after, "chat_write_seconds_count") - value(before, "chat_write_seconds_count")
    assert writes == 1
    assert value(after, "chat_write_seconds_sum") > value(before, "chat_write_seconds_sum")
    fanouts = value(after, "chat_fanout_seconds_count") - value(before, "chat_fanout_seconds_count")
    assert fanouts >= 1  # the message (presence may publish too)

    await a.ws.close()
    await b.ws.close()
    await until(live, lambda s: value(s, "chat_open_connections", transport="websocket") == opened)


@pytest.fixture
async def session(live: Server, alice: Any) -> AsyncIterator[aiohttp.ClientSession]:
    client = Client()
    await sync_to_async(client.force_login)(alice)
    cookies = {"sessionid": client.cookies["sessionid"].value}
    async with aiohttp.ClientSession(live.url, cookies=cookies) as http:
        yield http


async def test_a_parked_long_poll_shows_as_a_waiter(
    live: Server, session: aiohttp.ClientSession, bob: Any, room: Room
) -> None:
    poll = asyncio.create_task(session.get("/api/rooms/general/poll?after=0&timeout=20"))
    parked = await until(live, lambda s: value(s, "chat_long_poll_waiters") == 1)
    assert value(parked, "chat_open_connections", transport="long-poll") == 1
    await sync_to_async(writepath.post_message)(bob, room, "wake up")
    response = await asyncio.wait_for(poll, 10)
    assert [e["body"] for e in (await response.json())["events"]] == ["wake up"]
    done = await until(
        live, lambda s: value(s, "chat_open_connections", transport="long-poll") == 0
    )
    assert value(done, "chat_long_poll_waiters") == 0


async def test_a_cursor_too_far_behind_counts_one_resync(
    live: Server, session: aiohttp.ClientSession, bob: Any, room: Room
) -> None:
    for n in range(5):
        await sync_to_async(writepath.post_message)(bob, room, f"message {n}")
    before = await sync_to_async(scrape, thread_sensitive=False)(live)
    async with session.get("/api/rooms/general/messages?after=3") as near:
        assert [m["body"] for m in (await near.json())["messages"]] == ["message 3", "message 4"]
    async with session.get("/api/rooms/general/messages?after=0") as far:
        assert (await far.json())["resync"] is True
    after = await sync_to_async(scrape, thread_sensitive=False)(live)
    assert moved(before, after, "chat_resyncs_total") == 1


async def test_rate_limit_refusals_are_counted_by_where(
    live: Server, alice: Any, room: Room
) -> None:
    room.rate_limit = 1
    await sync_to_async(room.save)()
    before = await sync_to_async(scrape, thread_sensitive=False)(live)
    a = await peer(live, alice)
    await a.send({"action": "sendmessage", "room": "general", "body": "one", "client_id": "c1"})
    await a.next("ack")
    await a.send({"action": "sendmessage", "room": "general", "body": "two", "client_id": "c2"})
    refused = await a.next("error")
    assert refused["code"] == "rate_limited"
    for _ in range(100):
        await a.send({"action": "ping"})
    replies = [await a.next() for _ in range(100)]
    flooded = sum(1 for e in replies if e["type"] == "error" and e["code"] == "rate_limited")
    assert flooded > 0
    after = await sync_to_async(scrape, thread_sensitive=False)(live)
    room_refusals = value(after, "chat_rate_limited_total", where="room") - value(
        before, "chat_rate_limited_total", where="room"
    )
    frame_refusals = value(after, "chat_rate_limited_total", where="frames") - value(
        before, "chat_rate_limited_total", where="frames"
    )
    assert room_refusals == 1
    assert frame_refusals == flooded
    await a.ws.close()


def test_connections_posts_are_counted_by_result(monkeypatch: Any, settings: Any) -> None:
    settings.CHAT_APIGW_RETRIES = 2
    # What @connections answers each attempt, per connection: throttled once then taken; gone;
    # refused for good.
    answers = {
        "Busy=": ["LimitExceededException", ""],
        "Gone=": ["GoneException"],
        "Denied=": ["ForbiddenException"],
        "Fine=": [""],
    }
    monkeypatch.setattr(apigateway, "_post_once", lambda url, cid, data: answers[cid].pop(0))
    monkeypatch.setattr(apigateway.time, "sleep", lambda seconds: None)

    def count(result: str) -> float:
        return REGISTRY.get_sample_value("chat_apigw_posts_total", {"result": result}) or 0.0

    before = {r: count(r) for r in ("ok", "gone", "failed", "throttled")}
    results = [apigateway.post((cid, "https://x/dev"), b"{}") for cid in list(answers)]
    assert results == [apigateway.OK, apigateway.GONE, apigateway.FAILED, apigateway.OK]
    moved = {r: count(r) - before[r] for r in before}
    assert moved == {"ok": 2, "gone": 1, "failed": 1, "throttled": 1}


# --- Lambda: one EMF line per invocation ---


def _emf_lines(out: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.splitlines() if line.startswith('{"_aws"')]


def test_a_lambda_invocation_prints_one_emf_line_with_its_deltas(
    transactional_db: Any, alice: Any, room: Room, settings: Any, monkeypatch: Any, capsys: Any
) -> None:
    monkeypatch.setenv("AWS_LAMBDA_FUNCTION_NAME", "chat-dev")
    settings.CHAT_METRICS_EMF = True
    metrics.RATE_LIMITED.labels("frames").inc()  # before the invocation: not in its line

    @serverless.invocation
    def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
        writepath.post_message(alice, room, "from a Lambda")
        writepath.post_message(alice, room, "and another")
        return {"statusCode": 200}

    capsys.readouterr()
    assert handler({"requestContext": {"requestId": "r-1"}}, None) == {"statusCode": 200}
    lines = _emf_lines(capsys.readouterr().out)
    assert len(lines) == 1
    line = lines[0]
    block = line["_aws"]["CloudWatchMetrics"][0]
    assert block["Namespace"] == "Chat" and block["Dimensions"] == [["Function"]]
    assert abs(line["_aws"]["Timestamp"] - time.time() * 1000) < 60_000
    assert line["Function"] == "chat-dev" and line["Handler"] == "handler"
    assert line["write_seconds_count"] == 2 and line["write_seconds_sum"] > 0
    units = {m["Name"]: m["Unit"] for m in block["Metrics"]}
    assert units["write_seconds_count"] == "Count" and units["write_seconds_sum"] == "Seconds"
    assert set(units) == {k for k in line if k not in ("_aws", "Function", "Handler")}
    assert "rate_limited_frames" not in line


def test_no_emf_line_when_it_is_off(transactional_db: Any, settings: Any, capsys: Any) -> None:
    settings.CHAT_METRICS_EMF = False

    @serverless.invocation
    def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
        return {"statusCode": 200}

    capsys.readouterr()
    assert handler({}, None) == {"statusCode": 200}
    assert _emf_lines(capsys.readouterr().out) == []


def test_the_http_path_prints_one_line_per_request_on_lambda(settings: Any, capsys: Any) -> None:
    from chat import invocation

    settings.CHAT_METRICS_EMF = True

    class Context:
        def get_remaining_time_in_millis(self) -> int:
            return 30_000

    def view(request: Any) -> str:
        metrics.RESYNCS.inc()
        return "answered"

    class Request:
        META = {"lambda.context": Context()}

    capsys.readouterr()
    assert invocation.middleware(view)(Request()) == "answered"
    lines = _emf_lines(capsys.readouterr().out)
    assert len(lines) == 1 and lines[0]["Handler"] == "http" and lines[0]["resyncs"] == 1


class SlowBackend:
    """A fan-out backend whose publish takes 50 ms."""

    def publish(self, room_id: int, event: dict[str, Any], text: str) -> None:
        time.sleep(0.05)


def _fanout_seconds() -> float:
    return REGISTRY.get_sample_value("chat_fanout_seconds_sum") or 0.0


def test_a_deferred_fanout_is_timed_when_it_runs(settings: Any) -> None:
    """A Lambda frame's fan-out waits for its connection's lock to go: its latency is that of
    the posts, measured when they are made, not the moment they were queued."""
    settings.CHAT_FANOUT_BACKENDS = ["tests.test_metrics.SlowBackend"]
    before = _fanout_seconds()
    with fanout.deferred():
        fanout.publish(1, {"type": "message", "seq": 1})
        assert _fanout_seconds() == before
    assert _fanout_seconds() - before >= 0.05


@pytest.mark.timeout(180)
async def test_a_reader_that_stops_reading_is_filled_in_order_once_it_reads_again(
    django_db_setup: Any, django_db_blocker: Any, transactional_db: Any, alice: Any, bob: Any
) -> None:
    """A client that stops reading: once the kernel's buffers are full the socket's writer waits
    on it, its queue overflows (CHAT_SEND_QUEUE), and the room is filled from the database when
    the client reads again: every message once, in order, and the gap fill counted."""
    import socket

    from websockets.asyncio.client import connect

    from chat.tokens import make_token

    room = await sync_to_async(Room.objects.create)(slug="general", title="General")
    with django_db_blocker.unblock():
        server = await sync_to_async(
            # Every message replayed, not a resync (the gap can be longer than the default).
            Server(
                {"CHAT_METRICS_TOKEN": TOKEN, "CHAT_SEND_QUEUE": "10", "CHAT_RESUME_LIMIT": "5000"}
            ).start,
            thread_sensitive=False,
        )()
    try:
        token = await sync_to_async(make_token)(bob)
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", server.port))
        # Uncompressed: a repeated body would otherwise shrink to a few bytes a frame.
        ws = await connect(
            f"{server.ws_url}?token={token}", sock=sock, max_queue=1, compression=None
        )
        await ws.send(json.dumps({"action": "subscribe", "room": "general"}))
        while json.loads(await ws.recv())["type"] != "subscribed":
            pass
        before = await sync_to_async(scrape, thread_sensitive=False)(server)
        # About 5.5 MB: more than the kernel's buffers hold (a socket's send buffer grows to
        # 4 MB here), while bob reads nothing.
        body, count = "z" * 3900, 1400
        for i in range(count):
            await sync_to_async(writepath.post_message)(alice, room, f"{i} {body}", f"s{i}")
        seqs: list[int] = []
        while len(seqs) < count:
            event = json.loads(await asyncio.wait_for(ws.recv(), 30))
            if event["type"] == "message":
                seqs.append(event["seq"])
        assert seqs == list(range(1, count + 1))
        after = await sync_to_async(scrape, thread_sensitive=False)(server)
        assert moved(before, after, "chat_gap_fills_total", transport="websocket") >= 1
        await ws.close()
    finally:
        await sync_to_async(server.stop, thread_sensitive=False)()
