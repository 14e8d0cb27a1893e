# ruff: noqa: F811 (the matrix fixtures are imported by name and taken as arguments)
"""Who may react and reply, on every transport: the JSON API, Channels and the Lambda handler.

The same world as tests/faults/test_authz_matrix.py (its principals, rooms and messages); each
refused cell must store nothing, reactions and replies included."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from channels.testing.websocket import WebsocketCommunicator

from chat import tokens
from chat.models import Message, Reaction
from chatsite.asgi import application
from tests.faults.test_authz_matrix import (  # noqa: F401 (fixtures)
    KIND,
    POST_WS,
    ROOMS,
    USERS,
    World,
    channels_replies,
    client_for,
    committed_world,
    lambda_connect,
    lambda_handler,
    posts,
    send,
    snapshot,
    world,
)
from tests.test_serverless import Posts, ws_event


def _allowed_becomes(cells: tuple[tuple[str, ...], ...], code: str) -> tuple[tuple[str, ...], ...]:
    return tuple(tuple(code if cell == "ok" else cell for cell in row) for row in cells)


# What each frame gets per principal (USERS order) and room kind (public, private, dm).
CELLS: dict[str, tuple[tuple[str, ...], ...]] = {
    "react": POST_WS,
    "reply": POST_WS,
    # The right to post is checked first: only who may post learns the id is no good here.
    "reply_elsewhere": _allowed_becomes(POST_WS, "bad_request"),
    "react_hidden": _allowed_becomes(POST_WS, "forbidden"),
}
STATUS = {"ok": 200, "bad_request": 400, "forbidden": 403, "not_found": 404}


def frame(world: World, step: str, slug: str) -> dict[str, Any]:
    other = next(s for s in world.target if s != slug)
    return {
        "react": {"action": "react", "room": slug, "id": world.target[slug], "emoji": "👍"},
        "reply": {
            "action": "sendmessage",
            "room": slug,
            "body": "a reply",
            "reply_to": world.target[slug],
            "client_id": "reply-1",
        },
        "reply_elsewhere": {
            "action": "sendmessage",
            "room": slug,
            "body": "a reply",
            "reply_to": world.target[other],
            "client_id": "reply-2",
        },
        "react_hidden": {"action": "react", "room": slug, "id": world.hidden[slug], "emoji": "🎉"},
    }[step]


def full_snapshot() -> dict[str, Any]:
    state = snapshot()
    state["reactions"] = list(Reaction.objects.order_by("pk").values_list("message_id", "user_id"))
    state["replies"] = list(Message.objects.order_by("pk").values_list("pk", "reply_to_id"))
    return state


def written(world: World, step: str, principal: str, slug: str) -> bool:
    user = world.users[principal]
    if step == "react":
        return Reaction.objects.filter(message_id=world.target[slug], user=user).exists()
    if step == "reply":
        return Message.objects.filter(
            author=user, client_id="reply-1", reply_to_id=world.target[slug]
        ).exists()
    return True


def judge(
    world: World, step: str, principal: str, kind: str, errors: list[str], before: Any
) -> str | None:
    expected = CELLS[step][KIND[kind]][USERS.index(principal)]
    cell = f"{principal} {step} in the {kind} room"
    slug = ROOMS[kind]
    if expected == "ok":
        if errors:
            return f"{cell}: expected it allowed, got {errors}"
        if not written(world, step, principal, slug):
            return f"{cell}: allowed but not stored"
        return None
    if errors != [expected]:
        return f"{cell}: expected {expected!r}, got {errors}"
    if full_snapshot() != before:
        return f"{cell}: refused, but something was stored"
    return None


def api_request(world: World, step: str, slug: str) -> tuple[str, dict[str, Any]]:
    data = frame(world, step, slug)
    if data["action"] == "react":
        return f"/api/rooms/{slug}/messages/{data['id']}/reactions", {"emoji": data["emoji"]}
    body = {"body": data["body"], "reply_to": data["reply_to"], "client_id": data["client_id"]}
    return f"/api/rooms/{slug}/messages", body


@pytest.mark.parametrize("kind", list(ROOMS))
@pytest.mark.parametrize("principal", ("anonymous", *USERS))
def test_the_json_api(world: World, principal: str, kind: str) -> None:
    slug = ROOMS[kind]
    client = client_for(world, principal)
    mismatches = []
    for step in CELLS:
        before = full_snapshot()
        url, data = api_request(world, step, slug)
        answer = send(client, "post", url, data)
        if principal == "anonymous":
            if answer.status_code != 401 or full_snapshot() != before:
                mismatches.append(f"anonymous {step}: {answer.status_code}")
            continue
        expected = CELLS[step][KIND[kind]][USERS.index(principal)]
        if answer.status_code not in (STATUS[expected], 201 if expected == "ok" else -1):
            mismatches.append(f"{principal} {step} in {kind}: {answer.status_code} {expected}")
            continue
        errors = [] if answer.status_code < 300 else [answer.json()["error"]]
        mismatch = judge(world, step, principal, kind, errors, before)
        if mismatch:
            mismatches.append(mismatch)
    assert not mismatches, "\n".join(mismatches)


@pytest.mark.parametrize("kind", list(ROOMS))
@pytest.mark.parametrize("principal", USERS)
async def test_channels(committed_world: World, principal: str, kind: str) -> None:
    world, slug = committed_world, ROOMS[kind]
    token = await sync_to_async(tokens.make_token)(world.users[principal])
    comm = WebsocketCommunicator(application, f"/ws/?token={token}")
    connected, _ = await comm.connect()
    assert connected
    mismatches = []
    try:
        for step in CELLS:
            before = await sync_to_async(full_snapshot)()
            replies = await channels_replies(comm, frame(world, step, slug))
            errors = [e["code"] for e in replies if e["type"] == "error"]
            mismatch = await sync_to_async(judge)(world, step, principal, kind, errors, before)
            if mismatch:
                mismatches.append(mismatch)
    finally:
        await comm.disconnect()
    assert not mismatches, "\n".join(mismatches)


@pytest.mark.parametrize("kind", list(ROOMS))
@pytest.mark.parametrize("principal", USERS)
def test_the_lambda_handler(
    world: World,
    lambda_handler: Callable[[dict[str, Any]], Any],
    posts: Posts,
    principal: str,
    kind: str,
) -> None:
    slug = ROOMS[kind]
    conn = f"{principal}-{kind}="
    token = tokens.make_token(world.users[principal])
    assert lambda_connect(lambda_handler, conn, token) == {"statusCode": 200}
    mismatches = []
    for step in CELLS:
        before = full_snapshot()
        posts.sent.clear()
        event = ws_event("$default", conn, body=json.dumps(frame(world, step, slug)))
        assert lambda_handler(event) == {"statusCode": 200}
        errors = [e["code"] for e in posts.to(conn) if e["type"] == "error"]
        mismatch = judge(world, step, principal, kind, errors, before)
        if mismatch:
            mismatches.append(mismatch)
    assert not mismatches, "\n".join(mismatches)
