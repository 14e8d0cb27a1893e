"""Priority 2: one of two ASGI processes killed with SIGKILL mid-traffic. Its clients reconnect to
the other and resume; nothing acknowledged is lost (shared PostgreSQL and Redis, run prefix)."""

from __future__ import annotations

import asyncio
import signal

import pytest

from chat.models import Room
from tests.faults.client import ResilientClient, traffic, wait_all
from tests.faults.conftest import Servers, assert_complete, users_and_tokens

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(90)]


def test_sigkill_of_one_process_loses_nothing(servers: Servers) -> None:
    Room.objects.create(slug="general", title="General")
    doomed, survivor = servers.start(), servers.start()
    people = users_and_tokens("k", 8)
    clients = [
        ResilientClient(
            u.username,
            t,
            [doomed.ws_url, survivor.ws_url] if i % 2 else [survivor.ws_url, doomed.ws_url],
            "general",
            strict=True,
        )
        for i, (u, t) in enumerate(people)
    ]
    on_doomed = clients[1::2]
    stats: dict[str, int] = {}

    async def scenario() -> None:
        for c in clients:
            c.start()
        await wait_all(clients, lambda c: c.subscribed.is_set(), 10, "subscribed")
        stop = asyncio.Event()
        sending = asyncio.create_task(traffic(clients, 0.1, stop))
        await asyncio.sleep(1.5)
        assert doomed.proc is not None
        doomed.proc.send_signal(signal.SIGKILL)  # no disconnect handler, no goodbye
        doomed.proc.wait()
        stats["acked_at_kill"] = sum(len(c.acked) for c in clients)
        # The doomed process's clients find the survivor and resume there.
        await wait_all(on_doomed, lambda c: c.connects >= 2 and c.subscribed.is_set(), 15, "moved")
        await asyncio.sleep(1.5)
        stop.set()
        stats["sent"] = await sending
        await wait_all(clients, lambda c: not c.pending, 20, "every send acknowledged")
        seq = await asyncio.to_thread(lambda: Room.objects.get(slug="general").seq)
        await wait_all(clients, lambda c: c.cursor == seq, 20, f"cursor {seq}")
        for c in clients:
            await c.stop()

    asyncio.run(scenario())
    assert stats["acked_at_kill"] > 10, stats
    for c in on_doomed:
        assert c.connects >= 2
    rows = assert_complete("general", clients)
    assert len(rows) == stats["sent"]
