"""The Channels consumer through Channels' communicator: the protocol, action by action."""

from __future__ import annotations

import asyncio
import json
import threading
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from channels.testing.websocket import WebsocketCommunicator
from django.contrib.auth import get_user_model

from chat import moderation, presence, writepath
from chat.hub import get_hub
from chat.models import Message, Room
from chat.tokens import make_token
from chatsite.asgi import application

pytestmark = pytest.mark.django_db(transaction=True)


async def connect(user: Any, query: str = "", origin: bytes | None = None) -> WebsocketCommunicator:
    token = await sync_to_async(make_token)(user)
    headers = [(b"origin", origin)] if origin else []
    comm = WebsocketCommunicator(application, f"/ws/?token={token}{query}", headers=headers)
    connected, _ = await comm.connect()
    assert connected
    return comm


async def receive_until(
    comm: WebsocketCommunicator, kind: str, timeout: float = 3
) -> dict[str, Any]:
    """The next event of `kind`, skipping presence and the like."""
    while True:
        event = json.loads(await comm.receive_from(timeout))
        if event["type"] == kind:
            return event


async def next_events(comm: WebsocketCommunicator, n: int) -> list[dict[str, Any]]:
    """The next n events, leaving out presence announcements."""
    received: list[dict[str, Any]] = []
    while len(received) < n:
        event = json.loads(await comm.receive_from(3))
        if event["type"] != "presence":
            received.append(event)
    return received


async def test_it_refuses_missing_forged_and_expired_tokens(alice: Any, settings: Any) -> None:
    for url in ("/ws/", "/ws/?token=forged", f"/ws/?token={make_token(alice)}x"):
        comm = WebsocketCommunicator(application, url)
        connected, code = await comm.connect()
        assert (connected, code) == (False, 4401)
    settings.CHAT_WS_TOKEN_MAX_AGE = -1
    comm = WebsocketCommunicator(application, f"/ws/?token={make_token(alice)}")
    assert await comm.connect() == (False, 4401)


async def test_it_refuses_foreign_origins(alice: Any) -> None:
    token = await sync_to_async(make_token)(alice)
    comm = WebsocketCommunicator(
        application, f"/ws/?token={token}", headers=[(b"origin", b"https://evil.example")]
    )
    connected, _ = await comm.connect()
    assert not connected
    ours = await connect(alice, origin=b"http://127.0.0.1")
    await ours.disconnect()


async def test_subscribe_send_and_receive(alice: Any, bob: Any, room: Room) -> None:
    a = await connect(alice)
    b = await connect(bob)
    for comm in (a, b):
        await comm.send_json_to({"action": "subscribe", "room": "general"})
        subscribed = await receive_until(comm, "subscribed")
        assert subscribed == {"type": "subscribed", "room": "general", "seq": 0, "resumed": False}
        # Then the room's current state, which no cursor replays.
        state = await receive_until(comm, "room")
        assert state == {"type": "room", "room": "general", "locked": False, "title": "General"}
    await a.send_json_to(
        {"action": "sendmessage", "room": "general", "body": "hi bob", "client_id": "c1"}
    )
    # The sender gets its ack and the message, in either order; the other subscriber the message.
    got = {e["type"]: e for e in await next_events(a, 2)}
    ack = got["ack"]
    assert ack["client_id"] == "c1" and ack["seq"] == 1 and got["message"]["id"] == ack["id"]
    for message in (got["message"], await receive_until(b, "message")):
        assert (message["body"], message["author"], message["seq"]) == ("hi bob", "alice", 1)
    # A retry with the same client_id: the same ack, no second message.
    await a.send_json_to(
        {"action": "sendmessage", "room": "general", "body": "hi bob", "client_id": "c1"}
    )
    again = await receive_until(a, "ack")
    assert again["id"] == ack["id"]
    assert await sync_to_async(Message.objects.count)() == 1
    await a.disconnect()
    await b.disconnect()


async def test_resume_after_a_cursor(alice: Any, bob: Any, room: Room) -> None:
    for i in range(4):
        await sync_to_async(writepath.post_message)(alice, room, f"m{i}")
    b = await connect(bob)
    await b.send_json_to({"action": "subscribe", "room": "general", "after": 2})
    subscribed = await receive_until(b, "subscribed")
    assert subscribed["resumed"] is True and subscribed["seq"] == 4
    assert [(await receive_until(b, "message"))["seq"] for _ in range(2)] == [3, 4]
    await b.disconnect()


async def test_a_too_old_cursor_gets_resync(alice: Any, room: Room, settings: Any) -> None:
    settings.CHAT_RESUME_LIMIT = 1
    for i in range(3):
        await sync_to_async(writepath.post_message)(alice, room, f"m{i}")
    a = await connect(alice)
    await a.send_json_to({"action": "subscribe", "room": "general", "after": 0})
    assert await receive_until(a, "subscribed") == {
        "type": "subscribed",
        "room": "general",
        "seq": 3,
        "resumed": False,
        "reason": "resync",
    }
    await a.disconnect()


async def test_the_url_room_and_the_tutorial_frame(alice: Any, bob: Any) -> None:
    await sync_to_async(writepath.ensure_lobby)()
    a = await connect(alice, "&room=lobby")
    b = await connect(bob, "&room=lobby")
    await receive_until(a, "subscribed")
    await receive_until(b, "subscribed")
    await a.send_json_to({"action": "sendmessage", "message": "hello, everyone!"})
    for comm in (a, b):
        assert (await receive_until(comm, "message"))["body"] == "hello, everyone!"
    await a.disconnect()
    await b.disconnect()


async def test_typing_reaches_others_not_the_typist(alice: Any, bob: Any, room: Room) -> None:
    a = await connect(alice, "&room=general")
    b = await connect(bob, "&room=general")
    for comm in (a, b):
        await receive_until(comm, "subscribed")
        await receive_until(comm, "room")
    await a.send_json_to({"action": "typing", "room": "general"})
    assert await receive_until(b, "typing") == {
        "type": "typing",
        "room": "general",
        "user": "alice",
    }
    await a.send_json_to({"action": "ping"})
    # The typist's next frame is the pong, not its own typing event.
    while (event := json.loads(await a.receive_from(3)))["type"] == "presence":
        pass
    assert event == {"type": "pong"}
    await a.disconnect()
    await b.disconnect()


async def presence_becomes(comm: WebsocketCommunicator, users: list[str]) -> None:
    """Presence events until the list is `users` (the subscriber gets one in its reply and one
    published); fails on timeout."""
    while (await receive_until(comm, "presence"))["users"] != users:
        pass


async def test_presence_lists_who_is_online(alice: Any, bob: Any, room: Room) -> None:
    a = await connect(alice, "&room=general")
    await receive_until(a, "subscribed")
    assert (await receive_until(a, "presence"))["users"] == ["alice"]
    # Only one announcement of alice's own arrival: the next presence event is bob's.
    b = await connect(bob, "&room=general")
    assert (await receive_until(a, "presence"))["users"] == ["alice", "bob"]
    await b.disconnect()
    await presence_becomes(a, ["alice"])
    await a.disconnect()


async def test_the_process_heartbeat_keeps_every_socket_present(
    alice: Any, bob: Any, room: Room, settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One heartbeat per process (the hub's) refreshes the entries of all its sockets, in one call
    to the store, later than the joins' expiry: nobody drops out while connected."""
    settings.CHAT_PRESENCE_TTL = 3  # a beat every second
    store = presence.store()
    refreshed: list[presence.Entries] = []
    beat = threading.Event()
    real_refresh = store.refresh

    def refresh(entries: presence.Entries, ttl: float) -> None:
        real_refresh(entries, ttl)
        refreshed.append(entries)
        beat.set()

    monkeypatch.setattr(store, "refresh", refresh)
    a, b = await connect(alice, "&room=general"), await connect(bob, "&room=general")
    for comm in (a, b):
        await receive_until(comm, "subscribed")
    key = store.key(room.pk)
    joined = {m.decode(): s for m, s in store.redis.zrange(key, 0, -1, withscores=True)}
    assert sorted(m.split("|")[1] for m in joined) == ["alice", "bob"]
    while not any(len(e.get(room.pk, {})) == 2 for e in refreshed):
        beat.clear()
        assert await asyncio.to_thread(beat.wait, 5), "no heartbeat"
    after = {m.decode(): s for m, s in store.redis.zrange(key, 0, -1, withscores=True)}
    assert after.keys() == joined.keys()
    assert all(after[m] > joined[m] for m in joined)
    await a.disconnect()
    await presence_becomes(b, ["bob"])
    await b.disconnect()


async def test_a_heartbeat_does_not_bring_back_an_entry_that_left_during_it(
    room: Room, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A connection that leaves while the heartbeat's refresh is on its way is not left in the
    presence list by that refresh (it would linger for a whole TTL)."""
    hub = get_hub()
    await hub.watch(lambda message: None)  # the hub's heartbeat runs while it has anyone

    def holder() -> presence.Entries:
        return {room.pk: {"ws-gone": "alice"}}

    hub.hold_presence(holder)
    real_beat = presence.beat

    async def beat_after_leave(entries: presence.Entries, rooms: list[int]) -> None:
        hub.release_presence(holder)  # left (and its leave ran) before the refresh landed
        await real_beat(entries, rooms)

    monkeypatch.setattr(presence, "beat", beat_after_leave)
    await hub._beat()
    assert "alice" not in await sync_to_async(presence.users)(room.pk)


BAD_FRAMES = [
    ("not json", "bad_request"),
    ("[1]", "bad_request"),
    ('{"no": "action"}', "bad_request"),
    ('{"action": 3}', "bad_request"),
    ('{"action": "explode"}', "unknown_action"),
    ('{"action": "subscribe", "room": 5}', "bad_request"),
    ('{"action": "subscribe", "room": "general", "after": "x"}', "bad_request"),
    ('{"action": "subscribe", "room": "nope"}', "not_found"),
    ('{"action": "subscribe", "room": "secret"}', "not_found"),
    ('{"action": "sendmessage", "room": "general", "body": ""}', "bad_request"),
    ('{"action": "sendmessage", "room": "general", "body": ["x"]}', "bad_request"),
    ('{"action": "sendmessage", "room": "general", "body": "' + "x" * 4001 + '"}', "too_large"),
    ('{"action": "sendmessage", "body": "no room"}', "bad_request"),
    ('{"action": "sendmessage", "room": "locked", "body": "hi"}', "forbidden"),
    ('{"action": "ping", "pad": "' + "x" * 33000 + '"}', "too_large"),
    ("[" * 5000 + "]" * 5000, "bad_request"),
]


@pytest.mark.parametrize(("frame", "code"), BAD_FRAMES)
async def test_bad_frames_get_errors_and_keep_the_connection(
    outsider: Any, private_room: Room, room: Room, frame: str, code: str
) -> None:
    await sync_to_async(Room.objects.create)(slug="locked", title="Locked", locked=True)
    comm = await connect(outsider)
    await comm.send_to(text_data=frame)
    error = await receive_until(comm, "error")
    assert error["code"] == code
    await comm.send_json_to({"action": "ping"})
    assert await receive_until(comm, "pong") == {"type": "pong"}
    assert await sync_to_async(Message.objects.count)() == 0
    await comm.disconnect()


async def test_binary_frames_are_refused(alice: Any) -> None:
    comm = await connect(alice)
    await comm.send_to(bytes_data=b"\x00\x01")
    assert (await receive_until(comm, "error"))["code"] == "bad_request"
    await comm.disconnect()


async def test_a_flood_is_rate_limited(alice: Any, settings: Any) -> None:
    settings.CHAT_FRAME_BURST = 5
    settings.CHAT_FRAME_RATE = 1
    comm = await connect(alice)
    for _ in range(8):
        await comm.send_json_to({"action": "ping"})
    kinds = [json.loads(await comm.receive_from(3)) for _ in range(8)]
    assert [k["type"] for k in kinds].count("pong") == 5
    limited = [k for k in kinds if k["type"] == "error"]
    assert len(limited) == 3
    assert all(k["code"] == "rate_limited" and k["retry_after"] > 0 for k in limited)
    await comm.disconnect()


async def test_a_gap_in_live_events_is_filled_from_the_database(alice: Any, room: Room) -> None:
    """The layer is at-most-once: write a message without publishing, then one that is published;
    the consumer notices the gap and sends both, in order."""
    a = await connect(alice, "&room=general")
    await receive_until(a, "subscribed")

    def post_silently() -> None:
        from unittest import mock

        with mock.patch("chat.fanout.publish"):
            writepath.post_message(alice, Room.objects.get(pk=room.pk), "lost on the way")

    await sync_to_async(post_silently)()
    await sync_to_async(writepath.post_message)(alice, room, "published")
    first = await receive_until(a, "message")
    second = await receive_until(a, "message")
    assert [(first["seq"], first["body"]), (second["seq"], second["body"])] == [
        (1, "lost on the way"),
        (2, "published"),
    ]
    await a.disconnect()


async def test_edit_and_delete_reach_subscribers(alice: Any, room: Room) -> None:
    a = await connect(alice, "&room=general")
    await receive_until(a, "subscribed")
    await a.send_json_to({"action": "sendmessage", "room": "general", "body": "typo"})
    message_id = (await receive_until(a, "ack"))["id"]
    await a.send_json_to(
        {"action": "editmessage", "room": "general", "id": message_id, "body": "fixed"}
    )
    while (event := await receive_until(a, "message"))["seq"] < 2:
        pass
    assert (event["body"], event["edited"]) == ("fixed", True)
    await a.send_json_to({"action": "deletemessage", "room": "general", "id": message_id})
    event = await receive_until(a, "message")
    assert (event["seq"], event["deleted"], event["body"]) == (3, True, "")
    await a.disconnect()


async def test_many_rooms_on_one_connection(alice: Any, room: Room) -> None:
    await sync_to_async(writepath.ensure_lobby)()
    a = await connect(alice)
    for slug in ("general", "lobby"):
        await a.send_json_to({"action": "subscribe", "room": slug})
        await receive_until(a, "subscribed")
    await a.send_json_to({"action": "sendmessage", "room": "lobby", "body": "in lobby"})
    assert (await receive_until(a, "message"))["room"] == "lobby"
    await a.send_json_to({"action": "unsubscribe", "room": "lobby"})
    assert await receive_until(a, "unsubscribed") == {"type": "unsubscribed", "room": "lobby"}
    await a.send_json_to({"action": "sendmessage", "room": "lobby", "body": "not for me"})
    await a.send_json_to({"action": "sendmessage", "room": "general", "body": "for me"})
    # The live message may arrive before or after the acks; the lobby one never does.
    received = await next_events(a, 3)
    assert sorted(e["type"] for e in received) == ["ack", "ack", "message"]
    assert [e["body"] for e in received if e["type"] == "message"] == ["for me"]
    await a.disconnect()


async def test_a_socket_that_does_not_drain_holds_a_bounded_outbox_and_loses_nothing(
    alice: Any, bob: Any, room: Room, settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The socket's writes block (a client that stops reading, once the kernel buffers are full):
    live events beyond CHAT_SEND_QUEUE are dropped, not queued, and the room is filled from the
    database once the socket drains, so the client still gets every message once, in order."""
    import asyncio

    from chat.consumers import ChatConsumer

    settings.CHAT_SEND_QUEUE = 10
    posts = 60
    drained = asyncio.Event()
    drained.set()
    consumers: list[ChatConsumer] = []
    delivered = asyncio.Event()
    deliver = ChatConsumer.deliver

    def counting(self: ChatConsumer, message: dict[str, Any]) -> None:
        if self not in consumers:
            consumers.append(self)
        deliver(self, message)
        if message.get("seq") == posts:
            delivered.set()

    monkeypatch.setattr(ChatConsumer, "deliver", counting)

    async def stalling(scope: Any, receive: Any, send: Any) -> None:
        async def gated(message: dict[str, Any]) -> None:
            if message["type"] == "websocket.send":
                await drained.wait()
            await send(message)

        await application(scope, receive, gated)

    token = await sync_to_async(make_token)(bob)
    comm = WebsocketCommunicator(stalling, f"/ws/?token={token}")
    assert (await comm.connect())[0]
    await comm.send_json_to({"action": "subscribe", "room": "general"})
    await receive_until(comm, "room")
    drained.clear()  # from here the socket takes nothing
    for i in range(posts):
        await sync_to_async(writepath.post_message)(alice, room, f"m{i}", f"c{i}")
    await asyncio.wait_for(delivered.wait(), 10)
    (consumer,) = consumers
    assert consumer.outbox.qsize() <= settings.CHAT_SEND_QUEUE
    assert consumer.lagging == {room.pk}
    drained.set()
    seqs: list[int] = []
    while len(seqs) < posts:
        event = await receive_until(comm, "message", timeout=5)
        seqs.append(event["seq"])
    assert seqs == list(range(1, posts + 1))
    await comm.disconnect()


async def test_an_edit_or_delete_with_a_client_id_is_acknowledged(alice: Any, room: Room) -> None:
    posted = await sync_to_async(writepath.post_message)(alice, room, "typo")
    a = await connect(alice, "&room=general")
    await receive_until(a, "subscribed")
    frames = [
        {"action": "editmessage", "id": posted.message.pk, "body": "fixed", "client_id": "e1"},
        {"action": "deletemessage", "id": posted.message.pk, "client_id": "d1"},
    ]
    for seq, frame in enumerate(frames, start=2):
        await a.send_json_to({"room": "general", **frame})
        ack = await receive_until(a, "ack")
        assert ack == {
            "type": "ack",
            "client_id": frame["client_id"],
            "room": "general",
            "seq": seq,
            "id": posted.message.pk,
        }
    await a.disconnect()


async def test_a_ban_reaches_a_socket_that_does_not_drain(
    alice: Any, bob: Any, room: Room, settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The ban is not a live event a full outbox may drop: the stalled socket gets nothing more of
    the room, only the ban, and is closed."""
    import asyncio

    from chat.consumers import ChatConsumer

    settings.CHAT_SEND_QUEUE = 5
    drained = asyncio.Event()
    drained.set()
    consumers: list[ChatConsumer] = []
    deliver = ChatConsumer.deliver

    def recording(self: ChatConsumer, message: dict[str, Any]) -> None:
        if self not in consumers:
            consumers.append(self)
        deliver(self, message)

    monkeypatch.setattr(ChatConsumer, "deliver", recording)
    left = asyncio.Event()
    leave = ChatConsumer.leave_room

    async def leaving(self: ChatConsumer, room_id: int) -> bool:
        done = await leave(self, room_id)
        if not self.cursors:
            left.set()
        return done

    monkeypatch.setattr(ChatConsumer, "leave_room", leaving)

    async def stalling(scope: Any, receive: Any, send: Any) -> None:
        async def gated(message: dict[str, Any]) -> None:
            if message["type"] in ("websocket.send", "websocket.close"):
                await drained.wait()
            await send(message)

        await application(scope, receive, gated)

    token = await sync_to_async(make_token)(bob)
    comm = WebsocketCommunicator(stalling, f"/ws/?token={token}")
    assert (await comm.connect())[0]
    await comm.send_json_to({"action": "subscribe", "room": "general"})
    await receive_until(comm, "room")
    drained.clear()
    for i in range(20):
        await sync_to_async(writepath.post_message)(alice, room, f"m{i}")
    boss = await sync_to_async(get_user_model().objects.create_superuser)("boss", password="pw-1")
    await sync_to_async(moderation.restrict)(boss, bob, "ban", room)
    await asyncio.wait_for(left.wait(), 5)  # the ban left the room at once, socket still stalled
    assert len(consumers) == 1 and len(consumers[0].cursors) == 0
    drained.set()
    first = json.loads(await comm.receive_from(5))
    assert (first["type"], first["code"], first["fatal"]) == ("error", "forbidden", True)
    assert (await comm.receive_output(5)) == {"type": "websocket.close", "code": 4403}
