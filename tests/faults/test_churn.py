"""Priority 3: reconnect churn. 50 clients in one room, a tenth of them dropped and reconnected
every second for ten seconds while all of them send. Afterwards every client holds every
acknowledged message exactly once, in seq order.

Run against both deployments: the Channels server, and Zappa's handler behind the local API
Gateway, where every frame, connect and disconnect is an invocation of its own and the fan-out
goes through @connections (a room of 50 fits one invocation's batch; the connections of dropped
clients whose $disconnect has not run yet push it over, into a @task batch)."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import pytest

from chat.models import ApiConnection, Room
from tests.conftest import Server
from tests.faults.client import ResilientClient, traffic, wait_for_state
from tests.faults.conftest import assert_complete, users_and_tokens

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(150)]

CLIENTS = 50
SECONDS = 10
# Every wait below is bounded; this bounds the whole scenario below pytest's timeout, so a
# stuck run fails with the step it was waiting for.
SCENARIO_LIMIT = 120


async def connection_rows_settle(most: int, least: int, timeout: float) -> int:
    """The number of ApiConnection rows once it is between `least` and `most`, or when
    `timeout` runs out. A $disconnect invocation tells no client when it is done: the table is
    read until then."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        rows = await asyncio.to_thread(ApiConnection.objects.count)
        if least <= rows <= most or loop.time() > deadline:
            return rows
        await asyncio.sleep(0.1)


def test_reconnect_churn_keeps_every_client_complete(
    chat_server: Server, request: pytest.FixtureRequest
) -> None:
    serverless = request.node.callspec.params["chat_server"] == "serverless"
    Room.objects.create(slug="general", title="General")
    people = users_and_tokens("c", CLIENTS)
    # The Channels consumer delivers a socket's events in seq order. API Gateway does not:
    # each frame is its own invocation, so two messages' fan-outs can overtake each other and
    # the client orders by seq itself (its cursor waits for the gap to fill).
    strict = not serverless
    # Each message is 50 @connections posts. On AWS API Gateway makes them; here the local
    # gateway serves every one of them, and every socket, from one Python process on the same two
    # cores as the 50 clients: one message per client every 2 s keeps it short of saturation, so
    # that what is measured is the churn, not a queue that grows for the whole run.
    period = 2.0 if serverless else 1.0
    clients = [
        ResilientClient(u.username, t, [chat_server.ws_url], "general", strict=strict)
        for u, t in people
    ]
    rng = random.Random(1234)
    stats: dict[str, Any] = {"drops": 0, "skipped": 0}

    async def scenario() -> None:
        for c in clients:
            c.start()
        await wait_for_state(clients, lambda c: c.subscribed.is_set(), 30, "subscribed")
        stop = asyncio.Event()
        sending = asyncio.create_task(traffic(clients, period, stop))
        for second in range(SECONDS):
            await asyncio.sleep(1)  # the churn's pace, not a wait for anything
            for n, c in enumerate(rng.sample(clients, CLIENTS // 10)):
                if c.ws is None:  # still reconnecting from its last drop: nothing to drop
                    stats["skipped"] += 1
                    continue
                await c.drop(abrupt=bool((n + second) % 2))
                stats["drops"] += 1
        stop.set()
        stats["sent"] = await sending
        await wait_for_state(clients, lambda c: not c.pending, 40, "every send acknowledged")
        seq = await asyncio.to_thread(lambda: Room.objects.get(slug="general").seq)
        await wait_for_state(clients, lambda c: c.cursor == seq, 40, f"cursor {seq}")
        if serverless:
            failed = sum(c.failed_connects for c in clients)
            stats["rows"] = await connection_rows_settle(CLIENTS + failed, CLIENTS, 10)
        for c in clients:
            await c.stop()

    asyncio.run(asyncio.wait_for(scenario(), SCENARIO_LIMIT))
    rows = assert_complete("general", clients)
    assert len(rows) == stats["sent"] >= CLIENTS * (SECONDS / period - 1)
    # Churn happened: most picks found a connection to drop (a slow reconnect skips one).
    assert stats["drops"] >= SECONDS * (CLIENTS // 10) // 2, stats
    failed = sum(c.failed_connects for c in clients)
    assert sum(c.connects for c in clients) >= CLIENTS + stats["drops"] * 0.9, (stats, failed)
    if serverless:
        # Every dropped socket's row went with its $disconnect. Extra rows can only be those of
        # handshakes a client gave up on (its open timeout) after $connect had stored the row:
        # API Gateway sends no $disconnect for those either; a 410 or the sweep removes them.
        assert CLIENTS <= stats["rows"] <= CLIENTS + failed, (stats, failed)
