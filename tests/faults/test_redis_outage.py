"""Priority 1: Redis (the channel layer and presence) stopped for ten seconds mid-traffic, then
restarted. The servers use a redis-server of their own on a free port, never the shared one."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from websockets.asyncio.client import connect

from chat import tokens
from chat.models import Message, Room
from tests.faults.client import ResilientClient, traffic, wait_all
from tests.faults.conftest import RedisServer, Servers, assert_complete, users_and_tokens
from tests.test_realtime import Peer

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(90)]

OUTAGE = 10.0


def _env(redis: RedisServer, **extra: str) -> dict[str, str]:
    return {"REDIS_URL": redis.url, "CHAT_REDIS_PREFIX": "faults", **extra}


def test_redis_down_for_ten_seconds_loses_nothing_acknowledged(
    own_redis: RedisServer, servers: Servers
) -> None:
    Room.objects.create(slug="general", title="General")
    one, two = servers.start(_env(own_redis)), servers.start(_env(own_redis))
    people = users_and_tokens("r", 6)
    clients = [
        ResilientClient(u.username, t, [(one, two)[i % 2].ws_url], "general", strict=True)
        for i, (u, t) in enumerate(people)
    ]
    stats: dict[str, Any] = {}

    async def scenario() -> None:
        for c in clients:
            c.start()
        await wait_all(clients, lambda c: c.subscribed.is_set(), 10, "subscribed")
        stop = asyncio.Event()
        sending = asyncio.create_task(traffic(clients, 0.25, stop))
        await asyncio.sleep(1.5)
        acked_before = sum(len(c.acked) for c in clients)
        own_redis.stop()
        down_at = time.monotonic()
        await asyncio.sleep(2)
        # Two clients lose their sockets while Redis is down, and come back.
        await clients[0].drop(abrupt=True)
        await clients[1].drop()
        await asyncio.sleep(OUTAGE - (time.monotonic() - down_at))
        stats["acked_during"] = sum(len(c.acked) for c in clients) - acked_before
        own_redis.start()
        await asyncio.sleep(3)
        stop.set()
        stats["sent"] = await sending
        await wait_all(clients, lambda c: not c.pending, 20, "every send acknowledged")
        room_seq = await asyncio.to_thread(lambda: Room.objects.get(slug="general").seq)
        stats["seq"] = room_seq
        # Clients connected all along catch up from live events after Redis is back: their
        # consumer sees the seq jump and fills the gap from the database.
        await wait_all(clients, lambda c: c.cursor == room_seq, 20, f"cursor {room_seq}")
        for c in clients:
            await c.stop()

    asyncio.run(scenario())
    # Posting kept working with Redis down: the write path does not depend on it.
    assert stats["acked_during"] >= 20, stats
    assert clients[0].connects >= 2 and clients[1].connects >= 2
    rows = assert_complete("general", clients)
    assert len(rows) == stats["sent"], "every send stored exactly once"


def _presence_key(room_id: int) -> str:
    return f"faults:presence:{room_id}"


def test_resume_works_while_redis_is_down(own_redis: RedisServer, servers: Servers) -> None:
    room = Room.objects.create(slug="general", title="General")
    alice = get_user_model().objects.create_user("alice", password="pw-alice-123")
    server = servers.start(_env(own_redis))
    token = tokens.make_token(alice)

    async def scenario() -> dict[str, Any]:
        peer = Peer(await connect(f"{server.ws_url}?token={token}", open_timeout=5))
        await peer.subscribe("general")
        await peer.send({"action": "sendmessage", "room": "general", "body": "one"})
        await peer.next("ack")
        await peer.ws.close()
        own_redis.stop()
        try:
            peer = Peer(await connect(f"{server.ws_url}?token={token}", open_timeout=5))
            await peer.send({"action": "sendmessage", "room": "general", "body": "two"})
            assert (await peer.next("ack"))["seq"] == 2  # posting works without Redis
            await peer.send({"action": "subscribe", "room": "general", "after": 0})
            return await peer.next()
        finally:
            own_redis.start()

    reply = asyncio.run(scenario())
    assert Message.objects.filter(room=room).count() == 2
    assert reply["type"] == "subscribed" and reply["resumed"] is True, reply


def test_presence_survives_a_redis_restart(own_redis: RedisServer, servers: Servers) -> None:
    import redis

    room = Room.objects.create(slug="general", title="General")
    alice = get_user_model().objects.create_user("alice", password="pw-alice-123")
    server = servers.start(_env(own_redis, CHAT_PRESENCE_TTL="5"))
    token = tokens.make_token(alice)

    async def scenario() -> None:
        peer = Peer(await connect(f"{server.ws_url}?token={token}", open_timeout=5))
        await peer.subscribe("general")
        own_redis.stop()
        await asyncio.sleep(2.5)  # longer than one heartbeat interval (TTL / 3)
        own_redis.start()
        # Redis restarted empty: within a TTL the heartbeat must have put alice back.
        await asyncio.sleep(6)
        await peer.send({"action": "ping"})
        await peer.next("pong")  # still connected
        client = redis.Redis.from_url(own_redis.url)
        members = client.zrangebyscore(_presence_key(room.pk), time.time(), "+inf")
        await peer.ws.close()
        assert any(m.decode().endswith("|alice") for m in members), members

    asyncio.run(scenario())
