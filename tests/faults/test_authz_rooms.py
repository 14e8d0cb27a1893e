"""Who may find, join, leave, invite to, remove from and describe rooms: every principal of
tests/faults/test_authz_matrix.py against every new endpoint, in its public room, its private
room (alice's) and its DM, with the expected answer for each cell; then what leaving and removal
leave each principal able to read, over both WebSocket transports.

Every denied cell also checks that nothing was stored, the descriptions and user streams
included.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from channels.testing.websocket import WebsocketCommunicator

from chat import tokens
from chat.models import Membership, Room, UserEvent
from chatsite.asgi import application
from tests.faults.test_authz_matrix import (
    CODES,
    KIND,
    PRINCIPALS,
    ROOMS,
    USERS,
    World,
    build_world,
    channels_replies,
    client_for,
    lambda_connect,
    lambda_handler,  # noqa: F401 (a fixture)
    posts,  # noqa: F401 (a fixture)
    send,
    shown,
    snapshot,
)
from tests.test_serverless import Posts, ws_event

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def world(db: Any) -> World:
    return build_world()


@pytest.fixture
def committed_world(transactional_db: Any) -> World:
    """Committed: the Channels consumer reads it from its own thread and connection."""
    return build_world()


# Principals in PRINCIPALS order: anonymous, outsider, member, muted, banned, roommod, othermod,
# staff; per room: the public one, the private one, the DM. Every principal but the outsider
# and othermod has posted in the public room, so is in it already.
ROOM_CELLS: dict[str, tuple[tuple[int, ...], ...]] = {
    # A private room is by invitation only, even for those who may read it; a DM's members
    # are fixed.
    "join": (
        (401, 200, 200, 200, 403, 200, 200, 200),
        (401, 404, 403, 403, 403, 403, 404, 403),
        (401, 404, 403, 404, 404, 404, 404, 404),
    ),
    # 204 also for those who were not in it (roommod and staff read the private room as
    # moderators); a DM cannot be left.
    "leave": (
        (401, 204, 204, 204, 403, 204, 204, 204),
        (401, 404, 204, 204, 403, 204, 404, 204),
        (401, 404, 400, 404, 404, 404, 404, 404),
    ),
    # Inviting the outsider: the owner (alice), the room's moderators and site staff, in a
    # private room only (a public one is 400 for them: anyone can join it).
    "invite": (
        (401, 403, 403, 403, 403, 400, 403, 400),
        (401, 404, 403, 403, 403, 201, 404, 201),
        (401, 404, 400, 404, 404, 404, 404, 404),
    ),
    # Removing the muted member; in the DM, alice.
    "remove": (
        (401, 403, 403, 403, 403, 400, 403, 400),
        (401, 404, 403, 403, 403, 204, 404, 204),
        (401, 404, 400, 404, 404, 404, 404, 404),
    ),
    # The description, through the moderate endpoint (the owner may too: tests/test_rooms_directory.py).
    "describe": (
        (401, 403, 403, 403, 403, 200, 403, 200),
        (401, 404, 403, 403, 403, 200, 404, 200),
        (401, 404, 403, 404, 404, 404, 404, 404),
    ),
}


def everything() -> dict[str, Any]:
    """What any cell could write: the matrix's rows, the descriptions and the user streams."""
    return {
        **snapshot(),
        "descriptions": list(Room.objects.order_by("pk").values_list("pk", "description")),
        "user_events": list(
            UserEvent.objects.order_by("pk").values_list("user_id", "seq", "kind", "room_id")
        ),
    }


def room_request(action: str, slug: str) -> tuple[str, str, Any]:
    members = f"/api/rooms/{slug}/members"
    return {
        "join": ("post", f"/api/rooms/{slug}/join", None),
        "leave": ("post", f"/api/rooms/{slug}/leave", None),
        "invite": ("post", members, {"user": "outsider"}),
        "remove": ("delete", members, {"user": "alice" if slug == "dm-matrix" else "muted"}),
        "describe": ("post", f"/api/rooms/{slug}/moderate", {"description": "set in a cell"}),
    }[action]


def check_allowed(world: World, action: str, principal: str, slug: str) -> None:
    user = world.users[principal]
    in_room = Membership.objects.filter(room__slug=slug)
    if action == "join":
        assert in_room.filter(user=user).exists()
    elif action == "leave":
        assert not in_room.filter(user=user).exists()
    elif action == "invite":
        assert in_room.filter(user__username="outsider").exists()
        assert UserEvent.objects.filter(user__username="outsider", kind="invite").exists()
    elif action == "remove":
        assert not in_room.filter(user__username="muted").exists()
        assert UserEvent.objects.filter(user__username="muted", kind="left").exists()
    elif action == "describe":
        assert Room.objects.get(slug=slug).description == "set in a cell"


@pytest.mark.parametrize("kind", list(ROOMS))
@pytest.mark.parametrize("principal", PRINCIPALS)
@pytest.mark.parametrize("action", list(ROOM_CELLS))
def test_room_endpoints(world: World, action: str, principal: str, kind: str) -> None:
    slug = ROOMS[kind]
    expected = ROOM_CELLS[action][KIND[kind]][PRINCIPALS.index(principal)]
    method, url, data = room_request(action, slug)
    before = everything()
    answer = send(client_for(world, principal), method, url, data)
    assert answer.status_code == expected, shown(answer)
    if expected >= 400:
        assert answer.json()["error"] == CODES.get(expected, "bad_request")
        assert everything() == before
    else:
        check_allowed(world, action, principal, slug)


@pytest.mark.parametrize("principal", PRINCIPALS)
def test_the_directory(world: World, principal: str) -> None:
    answer = client_for(world, principal).get("/api/rooms/directory")
    if principal == "anonymous":
        assert answer.status_code == 401
        return
    assert answer.status_code == 200
    # Public rooms only, whoever asks: never the private room or the DM.
    listed = {r["slug"] for r in answer.json()["rooms"]}
    assert "general" in listed and not listed & {"secret", "dm-matrix"}


# --- what leaving and removal leave readable, on both WebSocket transports ---

# After the principal leaves the private room: what subscribing to it answers. Moderators still
# read it (as moderators); the banned member stays banned.
AFTER_LEAVING = {
    "outsider": "not_found",
    "member": "not_found",
    "muted": "not_found",
    "banned": "forbidden",
    "roommod": "subscribed",
    "othermod": "not_found",
    "staff": "subscribed",
}
# After the principal tries to remove the member from it: what the member's subscribe answers.
MEMBER_AFTER_REMOVAL = {
    name: "not_found" if name in ("roommod", "staff") else "subscribed" for name in USERS
}


def leave_and_remove(world: World, principal: str, step: str) -> None:
    if step == "leave":
        send(client_for(world, principal), "post", "/api/rooms/secret/leave")
    else:
        body = {"user": "member"}
        send(client_for(world, principal), "delete", "/api/rooms/secret/members", body)


def answer_of(replies: list[dict[str, Any]]) -> str:
    for event in replies:
        if event["type"] == "error":
            return event["code"]
        if event["type"] == "subscribed":
            return "subscribed"
    return f"nothing: {replies}"


STEPS = {"leave": AFTER_LEAVING, "remove": MEMBER_AFTER_REMOVAL}


@pytest.mark.parametrize("step", list(STEPS))
@pytest.mark.parametrize("principal", USERS)
async def test_channels_after_leaving_and_removal(
    committed_world: World,
    principal: str,
    step: str,
) -> None:
    world = committed_world
    await sync_to_async(leave_and_remove)(world, principal, step)
    reader = principal if step == "leave" else "member"
    token = await sync_to_async(tokens.make_token)(world.users[reader])
    comm = WebsocketCommunicator(application, f"/ws/?token={token}")
    connected, _ = await comm.connect()
    assert connected
    try:
        replies = await channels_replies(comm, {"action": "subscribe", "room": "secret"})
    finally:
        await comm.disconnect()
    assert answer_of(replies) == STEPS[step][principal]


@pytest.mark.parametrize("step", list(STEPS))
@pytest.mark.parametrize("principal", USERS)
def test_serverless_after_leaving_and_removal(
    world: World,
    lambda_handler: Callable[[dict[str, Any]], Any],  # noqa: F811 (the matrix's fixture)
    posts: Posts,  # noqa: F811 (the matrix's fixture)
    principal: str,
    step: str,
) -> None:
    leave_and_remove(world, principal, step)
    reader = principal if step == "leave" else "member"
    conn = f"{reader}-{step}="
    assert lambda_connect(lambda_handler, conn, tokens.make_token(world.users[reader])) == {
        "statusCode": 200
    }
    posts.sent.clear()
    frame = ws_event("$default", conn, body=json.dumps({"action": "subscribe", "room": "secret"}))
    assert lambda_handler(frame) == {"statusCode": 200}
    replies = [e for e in posts.to(conn) if e["type"] in ("error", "subscribed")]
    assert answer_of(replies) == STEPS[step][principal]
