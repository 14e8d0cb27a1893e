"""Priority 5: the serverless fan-out when @connections misbehaves. The local gateway answers a
random share of @connections calls with 429 (LimitExceeded) or hangs them (the app's call timeout
fires, then API Gateway's 504); rows whose $disconnect never came get real 410s."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone

from chat.models import ApiConnection, Room, Subscription
from tests.faults.client import ResilientClient, traffic, wait_all
from tests.faults.conftest import assert_complete, users_and_tokens
from tests.test_serverless import Gateway, quiesce

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(120)]

STALE = ["GoneOne0000=", "GoneTwo0000=", "GoneThree00="]


@pytest.fixture
def faulty_gateway(transactional_db: Any) -> Iterator[Gateway]:
    env = {"CHAT_APIGW_CALL_TIMEOUT": "1", "CHAT_APIGW_RETRIES": "8"}
    faults = ["--fault", "429=0.2", "--fault", "hang=0.04", "--seed", "11"]
    gateway = Gateway(*faults, env=env).start()
    yield gateway
    quiesce(10, gateway=gateway)
    gateway.stop()


def test_fan_out_reaches_every_live_connection_and_removes_gone_ones(
    faulty_gateway: Gateway,
) -> None:
    room = Room.objects.create(slug="general", title="General")
    people = users_and_tokens("s", 5)
    long_ago = timezone.now() - timedelta(minutes=5)
    for connection_id in STALE:  # sockets that went away without a $disconnect
        row = ApiConnection.objects.create(
            connection_id=connection_id,
            user=people[0][0],
            domain=f"127.0.0.1:{faulty_gateway.port}",
            stage="dev",
            connected_at=long_ago,
            last_seen=long_ago,
        )
        Subscription.objects.create(connection=row, room=room)
    clients = [
        ResilientClient(u.username, t, [faulty_gateway.ws_url], "general", strict=False)
        for u, t in people
    ]
    stats: dict[str, int] = {}

    async def scenario() -> None:
        for c in clients:
            c.start()
        await wait_all(clients, lambda c: c.subscribed.is_set(), 30, "subscribed")
        stop = asyncio.Event()
        sending = asyncio.create_task(traffic(clients, 0.6, stop))
        await asyncio.sleep(2.5)
        stop.set()
        stats["sent"] = await sending
        await wait_all(clients, lambda c: not c.pending, 40, "every send acknowledged")
        seq = await asyncio.to_thread(lambda: Room.objects.get(slug="general").seq)
        # Live push alone: the clients never resume, so every event has to arrive by fan-out.
        await wait_all(clients, lambda c: c.cursor == seq, 40, f"cursor {seq}")
        stats["connections"] = await asyncio.to_thread(ApiConnection.objects.count)
        for c in clients:
            await c.stop()

    asyncio.run(scenario())
    rows = assert_complete("general", clients)
    assert len(rows) == stats["sent"] >= 10
    assert all(c.connects == 1 for c in clients), "a live connection was dropped"
    # The gone rows were removed, the live ones kept.
    assert stats["connections"] == len(clients), stats
    assert not ApiConnection.objects.filter(connection_id__in=STALE).exists()
