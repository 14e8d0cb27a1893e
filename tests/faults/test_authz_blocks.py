"""A blocked user against every way of writing to the 1:1 conversation with the blocker: posting,
editing or deleting their own message, reacting and typing, over the JSON API and over both WebSocket
transports (the Channels server and Zappa's handler behind the local gateway, each a real process).

A principal of its own rather than a column of tests/faults/test_authz_matrix.py: a block acts in
one place only, the blocked user's 1:1 conversation with the blocker, which is not the matrix's
conversation (alice's with the member); everywhere else the blocked user is a plain member.

Every refusal leaves every row a write could touch as it was; each frame is then sent again once
the block is lifted and is accepted, so what refused it was the block and nothing else.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.test import Client

from chat import dms, writepath
from chat.models import Block, Message, Reaction, Room, UserEvent
from tests.conftest import Server
from tests.test_realtime import Peer, peer

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(120)]

REFUSED = "You cannot message this person."


@dataclass
class Conversation:
    slug: str
    # Bob's messages from before the block (what he tries to edit, and to delete) and alice's
    # (what he reacts to).
    own: int
    doomed: int
    alices: int


def login(user: Any) -> Client:
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def conversation(alice: Any, bob: Any) -> Conversation:
    room, _ = dms.open_dm(alice, ["bob"])
    own = writepath.post_message(bob, room, "before the block").message.pk
    doomed = writepath.post_message(bob, room, "regretted").message.pk
    alices = writepath.post_message(alice, room, "hello bob").message.pk
    blocked = login(alice).post("/api/blocks/bob", {}, content_type="application/json")
    assert blocked.status_code == 201
    return Conversation(room.slug, own, doomed, alices)


def unblock(alice: Any) -> None:
    assert login(alice).delete("/api/blocks/bob").status_code == 204


def snapshot() -> dict[str, Any]:
    """Every row a refused write could have touched."""
    return {
        "messages": list(
            Message.objects.order_by("pk").values_list(
                "pk", "author_id", "body", "client_id", "seq", "edited", "deleted", "reactions"
            )
        ),
        "rooms": list(Room.objects.order_by("pk").values_list("pk", "seq")),
        "reactions": list(Reaction.objects.order_by("pk").values_list("message_id", "user_id")),
        "events": list(UserEvent.objects.order_by("pk").values_list("user_id", "seq", "kind")),
        "blocks": list(Block.objects.values_list("blocker_id", "blocked_id")),
    }


# --- the JSON API ---


def http_requests(c: Conversation) -> list[tuple[str, str, Any, int]]:
    """Method, path, body and the status once allowed, for each way of writing."""
    base = f"/api/rooms/{c.slug}/messages"
    return [
        ("post", base, {"body": "let me in", "client_id": "b-post"}, 201),
        ("patch", f"{base}/{c.own}", {"body": "edited after the block"}, 200),
        ("delete", f"{base}/{c.doomed}", None, 200),
        ("post", f"{base}/{c.alices}/reactions", {"emoji": "👍", "on": True}, 200),
        ("post", f"/api/rooms/{c.slug}/typing", None, 204),
    ]


def test_a_blocked_user_cannot_write_to_the_dm_over_http(
    alice: Any, bob: Any, conversation: Conversation
) -> None:
    client = login(bob)
    before = snapshot()
    for method, path, data, _ in http_requests(conversation):
        answer = getattr(client, method)(
            path, json.dumps(data) if data is not None else "", content_type="application/json"
        )
        assert answer.status_code == 403, (method, path, answer.content[:200])
        assert answer.json() == {"error": "forbidden", "detail": REFUSED}, (method, path)
    assert snapshot() == before
    # Reading goes on: a block stops what bob says, not what he may see.
    history = client.get(f"/api/rooms/{conversation.slug}/messages?limit=50")
    assert history.status_code == 200
    bodies = [m["body"] for m in history.json()["messages"]]
    assert bodies == ["before the block", "regretted", "hello bob"]

    unblock(alice)
    for method, path, data, allowed in http_requests(conversation):
        answer = getattr(client, method)(
            path, json.dumps(data) if data is not None else "", content_type="application/json"
        )
        assert answer.status_code == allowed, (method, path, answer.content[:200])
    assert Message.objects.get(client_id="b-post").body == "let me in"
    assert Message.objects.get(pk=conversation.own).body == "edited after the block"
    assert Message.objects.get(pk=conversation.doomed).deleted
    assert Reaction.objects.filter(message_id=conversation.alices, user=bob).exists()


def test_the_blocker_still_writes_to_the_dm(alice: Any, conversation: Conversation) -> None:
    base = f"/api/rooms/{conversation.slug}/messages"
    answer = login(alice).post(base, {"body": "still mine"}, content_type="application/json")
    assert answer.status_code == 201
    assert Message.objects.filter(body="still mine", author=alice).exists()


# --- the WebSocket protocol, on both transports ---


def ws_frames(c: Conversation) -> list[dict[str, Any]]:
    """Each way of writing, with a client_id where the protocol acks one."""
    return [
        {"action": "sendmessage", "room": c.slug, "body": "let me in", "client_id": "b-ws-post"},
        {
            "action": "editmessage",
            "room": c.slug,
            "id": c.own,
            "body": "edited over ws",
            "client_id": "b-ws-edit",
        },
        {"action": "deletemessage", "room": c.slug, "id": c.doomed, "client_id": "b-ws-delete"},
        {
            "action": "react",
            "room": c.slug,
            "id": c.alices,
            "emoji": "👍",
            "on": True,
            "client_id": "b-ws-react",
        },
        {"action": "typing", "room": c.slug},
    ]


async def test_a_blocked_user_cannot_post_to_the_dm_over_websocket(
    chat_server: Server, alice: Any, bob: Any, conversation: Conversation
) -> None:
    b = await peer(chat_server, bob)
    before = await sync_to_async(Message.objects.count)()
    frame = ws_frames(conversation)[0]
    await b.send(frame)
    error = await b.next("error")
    assert error["code"] == "forbidden" and error["detail"] == REFUSED
    assert error["client_id"] == "b-ws-post" and error["room"] == conversation.slug
    assert await sync_to_async(Message.objects.count)() == before
    assert not await sync_to_async(Message.objects.filter(client_id="b-ws-post").exists)()


async def answer(p: Peer, frame: dict[str, Any]) -> dict[str, Any]:
    """The frame's own reply, its ack or its error. One frame at a time: Lambda runs a socket's
    frames concurrently, so the replies to several could come in any order."""
    await p.send(frame)
    while True:
        event = await p.next()
        if event["type"] in ("ack", "error"):
            return event


async def test_a_blocked_user_cannot_edit_delete_react_or_type_over_websocket(
    chat_server: Server, alice: Any, bob: Any, conversation: Conversation
) -> None:
    a, b = await peer(chat_server, alice), await peer(chat_server, bob)
    # Both still read the conversation.
    assert (await a.subscribe(conversation.slug))["type"] == "subscribed"
    assert (await b.subscribe(conversation.slug))["type"] == "subscribed"
    before = await sync_to_async(snapshot)()
    for frame in ws_frames(conversation):
        reply = await answer(b, frame)
        assert reply["type"] == "error", (frame["action"], reply)
        assert (reply["code"], reply["detail"]) == ("forbidden", REFUSED), frame["action"]
    assert await sync_to_async(snapshot)() == before

    await sync_to_async(unblock)(alice)
    *writes, typing_frame = ws_frames(conversation)
    for frame in writes:
        reply = await answer(b, frame)
        assert reply["type"] == "ack", (frame["action"], reply)
    # An accepted typing frame answers nothing: alice hearing it is the answer.
    await b.send(typing_frame)
    typing = await a.next("typing")
    assert typing["room"] == conversation.slug and typing["user"] == "bob"

    def stored() -> tuple[str, str, bool, bool]:
        return (
            Message.objects.get(client_id="b-ws-post").body,
            Message.objects.get(pk=conversation.own).body,
            Message.objects.get(pk=conversation.doomed).deleted,
            Reaction.objects.filter(message_id=conversation.alices, user=bob).exists(),
        )

    assert await sync_to_async(stored)() == ("let me in", "edited over ws", True, True)
