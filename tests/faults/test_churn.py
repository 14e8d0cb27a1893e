"""Priority 3: reconnect churn. 50 clients in one room, a tenth of them dropped and reconnected
every second for ten seconds while all of them send. Afterwards every client holds every
acknowledged message exactly once, in seq order."""

from __future__ import annotations

import asyncio
import random

import pytest

from chat.models import Room
from tests.conftest import Server
from tests.faults.client import ResilientClient, traffic, wait_all
from tests.faults.conftest import assert_complete, users_and_tokens

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(120)]

CLIENTS = 50
SECONDS = 10


def test_reconnect_churn_keeps_every_client_complete(server: Server) -> None:
    Room.objects.create(slug="general", title="General")
    people = users_and_tokens("c", CLIENTS)
    clients = [
        ResilientClient(u.username, t, [server.ws_url], "general", strict=True) for u, t in people
    ]
    rng = random.Random(1234)
    stats: dict[str, int] = {"drops": 0}

    async def scenario() -> None:
        for c in clients:
            c.start()
        await wait_all(clients, lambda c: c.subscribed.is_set(), 20, "subscribed")
        stop = asyncio.Event()
        sending = asyncio.create_task(traffic(clients, 1.0, stop))
        for second in range(SECONDS):
            await asyncio.sleep(1)
            for n, c in enumerate(rng.sample(clients, CLIENTS // 10)):
                await c.drop(abrupt=bool((n + second) % 2))
                stats["drops"] += 1
        stop.set()
        stats["sent"] = await sending
        await wait_all(clients, lambda c: not c.pending, 30, "every send acknowledged")
        seq = await asyncio.to_thread(lambda: Room.objects.get(slug="general").seq)
        await wait_all(clients, lambda c: c.cursor == seq, 30, f"cursor {seq}")
        for c in clients:
            await c.stop()

    asyncio.run(scenario())
    rows = assert_complete("general", clients)
    assert len(rows) == stats["sent"] >= CLIENTS * (SECONDS - 1)
    assert sum(c.connects for c in clients) >= CLIENTS + stats["drops"] * 0.9
