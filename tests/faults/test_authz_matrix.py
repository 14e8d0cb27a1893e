"""Who may do what: every principal against every endpoint and action, with the expected answer
for each cell, in a public and a private room.

Rooms: a public room, a private room, and a direct-message conversation of alice and the member
(nobody else may read it: not the room moderators, not site staff, who see a DM's messages only
through reports).

Principals: anonymous; an outsider (logged in, not a member of the private room); a member; a
member muted in the room; a member banned from the room; the room's own moderator (site staff
without any permission, as the admin wants them); a moderator of another room only (the same
kind of account: what it may do here is what any room moderator may do elsewhere); and site staff
with the moderation permissions. (A user blocked by alice is not a column: a block acts only in
their own 1:1 conversation with her, which is not this one; tests/faults/test_authz_blocks.py has
it on every transport.)

Transports: the JSON API and the admin through Django's test client; the WebSocket protocol
through Channels (the communicator against the ASGI application) and through Zappa's real
lambda_handler in this process (API Gateway's events, @connections recorded instead of called).

Every denied cell also checks that nothing was stored: the rows any write could touch are the
same before and after.
"""

from __future__ import annotations

import io
import json
import logging
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any
from unittest import mock

import pytest
from asgiref.sync import sync_to_async
from channels.testing.websocket import WebsocketCommunicator
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from PIL import Image

from chat import apigateway, attachments, dms, fanout, serverless, tokens, writepath
from chat.models import (
    ApiConnection,
    Attachment,
    Block,
    Membership,
    Message,
    ModerationAction,
    Report,
    Restriction,
    Room,
)
from chatsite.asgi import application
from tests.conftest import ROOT
from tests.test_serverless import Posts, ws_event

pytestmark = pytest.mark.timeout(120)

PRINCIPALS = ("anonymous", "outsider", "member", "muted", "banned", "roommod", "othermod", "staff")
USERS = PRINCIPALS[1:]
ROOMS = {"public": "general", "private": "secret", "dm": "dm-matrix"}
KIND = {"public": 0, "private": 1, "dm": 2}
# In the DM only the member (and alice) may read; everyone else logged in gets not_found.
DM_READ = (401, 404, 200, 404, 404, 404, 404, 404)
# What site staff hold: the moderation permissions (chat/models.py Meta, chat/access.py
# _require calls) and the view permissions the admin's lists need. Not the serverless
# connections': looking at who is online is not moderation.
STAFF_PERMISSIONS = [
    "moderate_room",
    "change_room",
    "view_room",
    "hide_message",
    "delete_message",
    "view_message",
    "add_restriction",
    "delete_restriction",
    "view_restriction",
    "change_report",
    "view_report",
    "view_membership",
    "view_moderationaction",
]
CODES = {401: "unauthorized", 403: "forbidden", 404: "not_found", 405: "method_not_allowed"}


# --- the world every cell starts from ---


@dataclass
class World:
    users: dict[str, Any]
    rooms: dict[str, Room]
    # The room's message by alice that cells report, hide, erase or try to change.
    target: dict[str, int]
    # A message by alice that a moderator has hidden (what "restore" acts on).
    hidden: dict[str, int]
    # Each principal's own message per room, where they could post one.
    own: dict[tuple[str, str], int] = field(default_factory=dict)
    # The muted principal's mute per room (what "lift" acts on).
    mute: dict[str, int] = field(default_factory=dict)

    def own_or_target(self, principal: str, slug: str) -> int:
        return self.own.get((principal, slug), self.target[slug])


def build_world() -> World:
    model = get_user_model()
    users = {"alice": model.objects.create_user("alice")}
    for name in USERS:
        users[name] = model.objects.create_user(
            name, is_staff=name in ("roommod", "othermod", "staff")
        )
    users["staff"].user_permissions.set(
        Permission.objects.filter(content_type__app_label="chat", codename__in=STAFF_PERMISSIONS)
    )
    general = Room.objects.create(slug="general", title="General")
    secret = Room.objects.create(
        slug="secret", title="Secret", private=True, created_by=users["alice"]
    )
    elsewhere = Room.objects.create(slug="elsewhere", title="Elsewhere")
    dm, _ = dms.open_dm(users["alice"], ["member"])
    Room.objects.filter(pk=dm.pk).update(slug="dm-matrix")
    dm.slug = "dm-matrix"
    for name in ("alice", "member", "muted", "banned"):
        Membership.objects.create(room=secret, user=users[name])
    general.moderators.add(users["roommod"])
    secret.moderators.add(users["roommod"])
    elsewhere.moderators.add(users["othermod"])
    rooms = {"general": general, "secret": secret, "dm-matrix": dm}
    world = World(users=users, rooms=rooms, target={}, hidden={})
    for slug, room in world.rooms.items():
        alice = users["alice"]
        world.target[slug] = writepath.post_message(alice, room, f"alice in {slug}").message.pk
        hidden = writepath.post_message(alice, room, f"hidden in {slug}").message.pk
        Message.objects.filter(pk=hidden).update(hidden=True)
        world.hidden[slug] = hidden
        for name in USERS:
            if room.private and name in ("outsider", "othermod"):
                continue  # they cannot post there (the cells check that they cannot)
            if room.is_dm and name != "member":
                continue
            posted = writepath.post_message(users[name], room, f"{name} in {slug}").message
            world.own[(name, slug)] = posted.pk
        mute = Restriction.objects.create(kind=Restriction.MUTE, user=users["muted"], room=room)
        world.mute[slug] = mute.pk
        Restriction.objects.create(kind=Restriction.BAN, user=users["banned"], room=room)
    writepath.post_message(users["alice"], elsewhere, "alice elsewhere")
    return world


@pytest.fixture
def world(db: Any) -> World:
    return build_world()


@pytest.fixture
def committed_world(transactional_db: Any) -> World:
    """The same world, committed: the Channels consumer and the long-poll read it from their own
    threads and database connections."""
    return build_world()


def snapshot() -> dict[str, Any]:
    """Every row a write of any cell could add, change or remove."""
    return {
        "messages": list(
            Message.objects.order_by("pk").values_list(
                "pk", "room_id", "author_id", "body", "client_id", "deleted", "hidden", "seq"
            )
        ),
        "rooms": list(
            Room.objects.order_by("pk").values_list(
                "pk", "slug", "title", "private", "locked", "seq"
            )
        ),
        "memberships": list(
            Membership.objects.order_by("pk").values_list(
                "room_id", "user_id", "read_seq", "notify_level"
            )
        ),
        "blocks": list(Block.objects.order_by("pk").values_list("blocker_id", "blocked_id")),
        "restrictions": list(
            Restriction.objects.order_by("pk").values_list("pk", "kind", "user_id", "room_id")
        ),
        "reports": list(Report.objects.order_by("pk").values_list("message_id", "reporter_id")),
        "audit": list(ModerationAction.objects.order_by("pk").values_list("action", "actor_id")),
        "attachments": list(
            Attachment.objects.order_by("pk").values_list("pk", "uploader_id", "status", "file")
        ),
    }


def shown(answer: Any) -> Any:
    """What a failed status assertion prints: the start of the body (a file: its type)."""
    if answer.streaming:
        answer.close()
        return answer.get("Content-Type")
    return answer.content[:300]


def client_for(world: World, principal: str) -> Client:
    client = Client()
    if principal != "anonymous":
        client.force_login(world.users[principal])
    return client


def send(client: Client, method: str, url: str, data: Any = None) -> Any:
    if method == "get":
        return client.get(url)
    body = json.dumps(data) if data is not None else ""
    return getattr(client, method)(url, body, content_type="application/json")


# --- the JSON API, per room ---

# One row per action: the expected status for each principal, in the public room and then in the
# private room. Principals in PRINCIPALS order:
#   anonymous, outsider, member, muted, banned, roommod, othermod, staff
ROOM_CELLS: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {
    "history": (
        (401, 200, 200, 200, 403, 200, 200, 200),
        (401, 404, 200, 200, 403, 200, 404, 200),
        DM_READ,
    ),
    "resume": (
        (401, 200, 200, 200, 403, 200, 200, 200),
        (401, 404, 200, 200, 403, 200, 404, 200),
        DM_READ,
    ),
    "post": (
        (401, 201, 201, 403, 403, 201, 201, 201),
        (401, 404, 201, 403, 403, 201, 404, 201),
        (401, 404, 201, 404, 404, 404, 404, 404),
    ),
    "edit_own": (
        (401, 200, 200, 403, 403, 200, 200, 200),
        (401, 404, 200, 403, 403, 200, 404, 200),
        (401, 404, 200, 404, 404, 404, 404, 404),
    ),
    "edit_other": (
        (401, 403, 403, 403, 403, 403, 403, 403),
        (401, 404, 403, 403, 403, 403, 404, 403),
        (401, 404, 403, 404, 404, 404, 404, 404),
    ),
    "delete_own": (
        (401, 200, 200, 403, 403, 200, 200, 200),
        (401, 404, 200, 403, 403, 200, 404, 200),
        (401, 404, 200, 404, 404, 404, 404, 404),
    ),
    "delete_other": (
        (401, 403, 403, 403, 403, 403, 403, 403),
        (401, 404, 403, 403, 403, 403, 404, 403),
        (401, 404, 403, 404, 404, 404, 404, 404),
    ),
    "report": (
        (401, 201, 201, 201, 403, 201, 201, 201),
        (401, 404, 201, 201, 403, 201, 404, 201),
        (401, 404, 201, 404, 404, 404, 404, 404),
    ),
    "hide": (
        (401, 403, 403, 403, 403, 200, 403, 200),
        (401, 404, 403, 403, 403, 200, 404, 200),
        (401, 404, 403, 404, 404, 404, 404, 404),
    ),
    "restore": (
        (401, 403, 403, 403, 403, 200, 403, 200),
        (401, 404, 403, 403, 403, 200, 404, 200),
        (401, 404, 403, 404, 404, 404, 404, 404),
    ),
    "erase": (
        (401, 403, 403, 403, 403, 200, 403, 200),
        (401, 404, 403, 403, 403, 200, 404, 200),
        (401, 404, 403, 404, 404, 404, 404, 404),
    ),
    "moderate": (
        (401, 403, 403, 403, 403, 200, 403, 200),
        (401, 404, 403, 403, 403, 200, 404, 200),
        (401, 404, 403, 404, 404, 404, 404, 404),
    ),
    "restrict": (
        (401, 403, 403, 403, 403, 201, 403, 201),
        (401, 404, 403, 403, 403, 201, 404, 201),
        (401, 404, 403, 404, 404, 404, 404, 404),
    ),
    # Lifting names the restriction by id, not the room: no room lookup, so no 404 either.
    "lift": (
        (401, 403, 403, 403, 403, 204, 403, 204),
        (401, 403, 403, 403, 403, 204, 403, 204),
        # Nobody moderates a DM: only site staff lift what applies in one.
        (401, 403, 403, 403, 403, 403, 403, 204),
    ),
    # Choosing what a room notifies is for its members (a public room: anyone, who joins it).
    "notifications": (
        (401, 200, 200, 200, 403, 200, 200, 200),
        (401, 404, 200, 200, 403, 403, 404, 403),
        DM_READ,
    ),
    "members": (
        (401, 200, 200, 200, 403, 200, 200, 200),
        (401, 404, 200, 200, 403, 200, 404, 200),
        DM_READ,
    ),
    "read": (
        (401, 204, 204, 204, 403, 204, 204, 204),
        (401, 404, 204, 204, 403, 204, 404, 204),
        (401, 404, 204, 404, 404, 404, 404, 404),
    ),
    # A muted user may not post, so may not announce that they are typing either.
    "typing": (
        (401, 204, 204, 403, 403, 204, 204, 204),
        (401, 404, 204, 403, 403, 204, 404, 204),
        (401, 404, 204, 404, 404, 404, 404, 404),
    ),
    # The admin's hide action answers with a redirect whoever runs it; what counts is the row.
    "admin_hide": ((302,) * 8, (302,) * 8, (302,) * 8),
}
# Cells of the admin_hide row that hide the message (the rest must leave it alone); in a DM
# nobody, since the admin does not list an unreported DM message.
ADMIN_HIDERS = {"public": {"roommod", "staff"}, "private": {"roommod", "staff"}, "dm": set()}


def room_request(world: World, action: str, principal: str, slug: str) -> tuple[str, str, Any]:
    base = f"/api/rooms/{slug}/messages"
    target, own = world.target[slug], world.own_or_target(principal, slug)
    return {
        "history": ("get", f"{base}?limit=50", None),
        "resume": ("get", f"{base}?after=0", None),
        "post": ("post", base, {"body": "from the cell", "client_id": "cell-1"}),
        "edit_own": ("patch", f"{base}/{own}", {"body": "edited in the cell"}),
        "edit_other": ("patch", f"{base}/{target}", {"body": "hijacked"}),
        "delete_own": ("delete", f"{base}/{own}", None),
        "delete_other": ("delete", f"{base}/{target}", None),
        "report": ("post", f"{base}/{target}/report", {"reason": "spam"}),
        "hide": ("post", f"{base}/{target}/hide", {"reason": "rude"}),
        "restore": ("post", f"{base}/{world.hidden[slug]}/restore", {}),
        "erase": ("post", f"{base}/{target}/erase", {"reason": "doxxing"}),
        "moderate": ("post", f"/api/rooms/{slug}/moderate", {"locked": True}),
        "restrict": (
            "post",
            "/api/moderation/restrictions",
            {"user": "alice", "kind": "mute", "room": slug},
        ),
        "lift": ("delete", f"/api/moderation/restrictions/{world.mute[slug]}", {}),
        "read": ("post", f"/api/rooms/{slug}/read", {"seq": 1}),
        "typing": ("post", f"/api/rooms/{slug}/typing", None),
        "notifications": ("post", f"/api/rooms/{slug}/notifications", {"level": "none"}),
        "members": ("get", f"/api/rooms/{slug}/members", None),
        "admin_hide": ("admin", "/admin/chat/message/", None),
    }[action]


def check_allowed_write(world: World, action: str, principal: str, slug: str, answer: Any) -> None:
    """What an allowed cell must have changed."""
    user = world.users.get(principal)
    target = Message.objects.get(pk=world.target[slug])
    if action in ("history", "resume"):
        assert world.target[slug] in [m["id"] for m in answer.json()["messages"]]
    elif action == "post":
        assert Message.objects.get(client_id="cell-1").author == user
    elif action == "edit_own":
        assert Message.objects.get(pk=world.own[(principal, slug)]).body == "edited in the cell"
    elif action == "delete_own":
        assert Message.objects.get(pk=world.own[(principal, slug)]).deleted
    elif action == "report":
        assert Report.objects.filter(message=target, reporter=user).exists()
    elif action in ("hide", "admin_hide"):
        assert target.hidden and target.body == f"alice in {slug}"
    elif action == "restore":
        assert not Message.objects.get(pk=world.hidden[slug]).hidden
    elif action == "erase":
        assert target.deleted and target.body == ""
    elif action == "moderate":
        assert Room.objects.get(slug=slug).locked
    elif action == "restrict":
        assert Restriction.objects.filter(user=world.users["alice"], room__slug=slug).exists()
    elif action == "lift":
        assert not Restriction.objects.filter(pk=world.mute[slug]).exists()
    elif action == "read":
        assert read_recorded(slug, user)
    elif action == "notifications":
        assert Membership.objects.get(room__slug=slug, user=user).notify_level == "none"
    elif action == "members":
        assert "alice" in answer.json()["members"]


@pytest.mark.parametrize("kind", list(ROOMS))
@pytest.mark.parametrize("principal", PRINCIPALS)
@pytest.mark.parametrize("action", list(ROOM_CELLS))
def test_room_endpoints(world: World, action: str, principal: str, kind: str) -> None:
    slug = ROOMS[kind]
    expected = ROOM_CELLS[action][KIND[kind]][PRINCIPALS.index(principal)]
    client = client_for(world, principal)
    method, url, data = room_request(world, action, principal, slug)
    before = snapshot()
    if method == "admin":
        data = {"action": "hide", "_selected_action": [world.target[slug]], "index": 0}
        answer = client.post(url, data)
    else:
        answer = send(client, method, url, data)
    assert answer.status_code == expected, shown(answer)
    if expected >= 400:
        assert answer.json()["error"] == CODES[expected]
    if action == "admin_hide":
        allowed = principal in ADMIN_HIDERS[kind]
    else:
        allowed = expected < 400
    if allowed:
        check_allowed_write(world, action, principal, slug, answer)
    if not allowed or action in ("history", "resume", "typing", "members"):
        assert snapshot() == before


# Long-poll reads the room from another thread (an async view), so its cells need the world
# committed; one answer each, at once, since the room has changes after 0.
POLL_CELLS = (
    (401, 200, 200, 200, 403, 200, 200, 200),
    (401, 404, 200, 200, 403, 200, 404, 200),
    DM_READ,
)


@pytest.mark.parametrize("kind", list(ROOMS))
@pytest.mark.parametrize("principal", PRINCIPALS)
def test_long_poll(committed_world: World, principal: str, kind: str) -> None:
    slug = ROOMS[kind]
    expected = POLL_CELLS[KIND[kind]][PRINCIPALS.index(principal)]
    client = client_for(committed_world, principal)
    answer = client.get(f"/api/rooms/{slug}/poll?after=0&timeout=0")
    assert answer.status_code == expected, shown(answer)
    if expected >= 400:
        assert answer.json()["error"] == CODES[expected]
    else:
        ids = [e["id"] for e in answer.json()["events"] if e["type"] == "message"]
        assert committed_world.target[slug] in ids


# --- attachments (chatsite/urls.py, the api-attachment* names) ---

# Who may post, and so upload, in each room (the same as the "post" row of ROOM_CELLS).
POSTERS = {
    "public": {"outsider", "member", "roommod", "othermod", "staff"},
    "private": {"member", "roommod", "staff"},
    "dm": {"member"},
}
ATTACHMENT_CELLS: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {
    "start": (
        (401, 201, 201, 403, 403, 201, 201, 201),
        (401, 404, 201, 403, 403, 201, 404, 201),
        (401, 404, 201, 404, 404, 404, 404, 404),
    ),
    # The principal's own pending upload where they may post; elsewhere alice's, which nobody
    # else may see: not_found, so that a guessed id tells nothing.
    "upload": (
        (401, 201, 201, 404, 404, 201, 201, 201),
        (401, 404, 201, 404, 404, 201, 404, 201),
        (401, 404, 201, 404, 404, 404, 404, 404),
    ),
    "complete": (
        (401, 200, 200, 404, 404, 200, 200, 200),
        (401, 404, 200, 404, 404, 200, 404, 200),
        (401, 404, 200, 404, 404, 404, 404, 404),
    ),
    "upload_other": ((401,) + (404,) * 7,) * 3,
    "complete_other": ((401,) + (404,) * 7,) * 3,
    # Alice's image, sent in a message: whoever may read the room. A ban takes reading away.
    "download": (
        (401, 200, 200, 200, 404, 200, 200, 200),
        (401, 404, 200, 200, 404, 200, 404, 200),
        (401, 404, 200, 404, 404, 404, 404, 404),
    ),
    "thumbnail": (
        (401, 200, 200, 200, 404, 200, 200, 200),
        (401, 404, 200, 200, 404, 200, 404, 200),
        (401, 404, 200, 404, 404, 404, 404, 404),
    ),
}


def png() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (32, 24), "red").save(out, "PNG")
    return out.getvalue()


def uploaded(user: Any, room: Room, name: str, data: bytes, content_type: str) -> Any:
    """A pending upload with its bytes stored, not yet checked."""
    pending = attachments.start_upload(user, room, name, len(data), content_type)
    return attachments.receive(user, pending.pk, SimpleUploadedFile(name, data))


@pytest.mark.parametrize("kind", list(ROOMS))
@pytest.mark.parametrize("principal", PRINCIPALS)
@pytest.mark.parametrize("action", list(ATTACHMENT_CELLS))
def test_attachment_endpoints(
    world: World, settings: Any, tmp_path: Any, action: str, principal: str, kind: str
) -> None:
    settings.MEDIA_ROOT = str(tmp_path)  # the files of this cell only, removed with it
    slug = ROOMS[kind]
    room, alice = world.rooms[slug], world.users["alice"]
    expected = ATTACHMENT_CELLS[action][KIND[kind]][PRINCIPALS.index(principal)]
    image = attachments.complete(alice, uploaded(alice, room, "pic.png", png(), "image/png").pk)
    writepath.post_message(alice, room, "", attachment=str(image.pk))
    alices_pending = attachments.start_upload(alice, room, "hers.txt", 5, "text/plain")
    alices_uploaded = uploaded(alice, room, "hers2.txt", b"hers!", "text/plain")
    own = principal in POSTERS[kind]
    user = world.users.get(principal)
    if action == "upload":
        pk = attachments.start_upload(user, room, "a.txt", 5, "text/plain").pk if own else None
        pk = pk or alices_pending.pk
    elif action == "complete":
        pk = uploaded(user, room, "a.txt", b"hello", "text/plain").pk if own else None
        pk = pk or alices_uploaded.pk
    else:
        pk = {"upload_other": alices_pending.pk, "complete_other": alices_uploaded.pk}.get(
            action, image.pk
        )
    client = client_for(world, principal)
    before = snapshot()
    if action == "start":
        data = {"name": "b.txt", "size": 5, "content_type": "text/plain"}
        answer = send(client, "post", f"/api/rooms/{slug}/attachments", data)
    elif action in ("upload", "upload_other"):
        file = SimpleUploadedFile("a.txt", b"hello")
        answer = client.post(f"/api/attachments/{pk}/upload", {"file": file})
    elif action in ("complete", "complete_other"):
        answer = client.post(f"/api/attachments/{pk}/complete")
    else:
        answer = client.get(f"/api/attachments/{pk}{'/thumbnail' if action == 'thumbnail' else ''}")
    assert answer.status_code == expected, shown(answer)
    if expected >= 400:
        assert answer.json()["error"] == CODES[expected]
        assert snapshot() == before
    elif action == "start":
        made = Attachment.objects.get(pk=answer.json()["attachment"]["id"])
        assert (made.uploader, made.room, made.status) == (user, room, Attachment.PENDING)
    elif action == "complete":
        assert Attachment.objects.get(pk=pk).status == Attachment.READY
    elif action in ("download", "thumbnail"):
        body = b"".join(answer.streaming_content)
        answer.close()
        assert body.startswith(b"\x89PNG" if action == "download" else b"RIFF")


# --- endpoints that name no room ---


SITE_CELLS: dict[str, tuple[int, ...]] = {
    "rooms": (401, 200, 200, 200, 200, 200, 200, 200),
    "create_room": (401, 201, 201, 201, 201, 201, 201, 201),
    # Room bans and mutes are not site bans: a WebSocket token is still given.
    "ws_token": (401, 200, 200, 200, 200, 200, 200, 200),
    # A site-wide mute is for site staff only; room moderators are refused, whatever their room.
    "restrict_site": (401, 403, 403, 403, 403, 403, 403, 201),
    "method": (405,) * 8,
    # The member's conversation with alice exists already: the same room again.
    "open_dm": (401, 201, 200, 201, 201, 201, 201, 201),
    "blocks": (401, 200, 200, 200, 200, 200, 200, 200),
    "block": (401, 201, 201, 201, 201, 201, 201, 201),
    "users": (401, 200, 200, 200, 200, 200, 200, 200),
    "my_notifications": (401, 200, 200, 200, 200, 200, 200, 200),
}


@pytest.mark.parametrize("principal", PRINCIPALS)
@pytest.mark.parametrize("action", list(SITE_CELLS))
def test_site_endpoints(world: World, action: str, principal: str) -> None:
    expected = SITE_CELLS[action][PRINCIPALS.index(principal)]
    method, url, data = {
        "rooms": ("get", "/api/rooms/", None),
        "create_room": ("post", "/api/rooms/", {"slug": "made", "title": "Made", "private": True}),
        "ws_token": ("post", "/api/ws-token", {}),
        "restrict_site": (
            "post",
            "/api/moderation/restrictions",
            {"user": "alice", "kind": "mute"},
        ),
        # The method check comes first: nobody learns anything else from a wrong method.
        "method": ("put", "/api/rooms/secret/messages", {}),
        "open_dm": ("post", "/api/dms/", {"users": ["alice"]}),
        "blocks": ("get", "/api/blocks/", None),
        "block": ("post", "/api/blocks/alice", None),
        "users": ("get", "/api/users?q=al", None),
        "my_notifications": ("get", "/api/me/notifications?after=0", None),
    }[action]
    before = snapshot()
    answer = send(client_for(world, principal), method, url, data)
    assert answer.status_code == expected, shown(answer)
    if expected >= 400:
        assert answer.json()["error"] == CODES[expected]
        assert snapshot() == before
        return
    user = world.users[principal]
    if action == "rooms":
        listed = {r["slug"] for r in answer.json()["rooms"]}
        assert "general" in listed
        # Never listed to those who may not read it. (The list follows membership: a
        # moderator or staff reaches a private room by its slug, not through the list.)
        if principal in ("outsider", "othermod"):
            assert "secret" not in listed
        if principal in ("member", "muted"):
            assert "secret" in listed
    elif action == "create_room":
        made = Room.objects.get(slug="made")
        assert made.private and Membership.objects.filter(room=made, user=user).exists()
    elif action == "ws_token":
        assert tokens.user_for_token(answer.json()["token"]) == user
    elif action == "restrict_site":
        assert Restriction.objects.filter(user=world.users["alice"], room=None).exists()
    elif action == "open_dm":
        made = Room.objects.get(slug=answer.json()["slug"])
        assert made.is_dm and set(made.memberships.values_list("user__username", flat=True)) == {
            "alice",
            principal,
        }
    elif action == "blocks":
        assert answer.json() == {"blocked": []}
    elif action == "block":
        assert Block.objects.filter(blocker=user, blocked=world.users["alice"]).exists()
    elif action == "users":
        assert answer.json() == {"users": ["alice"]}
    elif action == "my_notifications":
        # One's own stream only: of alice's DM, the member heard; nobody else did.
        rooms = {e["room"] for e in answer.json()["events"]}
        assert ("dm-matrix" in rooms) == (principal == "member")


def test_the_user_long_poll_is_ones_own(committed_world: World) -> None:
    for principal in PRINCIPALS:
        answer = client_for(committed_world, principal).get("/api/me/poll?after=0&timeout=0")
        assert answer.status_code == (401 if principal == "anonymous" else 200), principal


# --- the admin and the moderation dashboard ---

# 302: to the login page (not staff). 403: staff without the permission. Non-staff principals
# all answer alike, so the row lists anonymous, then every logged-in non-staff principal, then
# roommod, othermod, staff.
ADMIN_CELLS: dict[str, tuple[int, int, int, int, int]] = {
    "/admin/": (302, 302, 200, 200, 200),
    "/admin/chat/room/": (302, 302, 200, 200, 200),
    # Another room's moderator does not find the room: the admin redirects to its index.
    "/admin/chat/room/{general}/change/": (302, 302, 200, 302, 200),
    "/admin/chat/membership/": (302, 302, 200, 200, 200),
    "/admin/chat/message/": (302, 302, 200, 200, 200),
    "/admin/chat/restriction/": (302, 302, 200, 200, 200),
    "/admin/chat/restriction/add/": (302, 302, 200, 200, 200),
    "/admin/chat/report/": (302, 302, 200, 200, 200),
    "/admin/chat/moderationaction/": (302, 302, 200, 200, 200),
    "/admin/chat/apiconnection/": (302, 302, 403, 403, 403),
    "/admin/chat/subscription/": (302, 302, 403, 403, 403),
    "/admin/auth/user/": (302, 302, 403, 403, 403),
    "/admin/moderation/": (302, 302, 200, 200, 200),
}
ADMIN_COLUMNS = {
    "anonymous": 0,
    "outsider": 1,
    "member": 1,
    "muted": 1,
    "banned": 1,
    "roommod": 2,
    "othermod": 3,
    "staff": 4,
}


@pytest.mark.parametrize("principal", PRINCIPALS)
@pytest.mark.parametrize("page", list(ADMIN_CELLS))
def test_admin_pages(world: World, page: str, principal: str) -> None:
    expected = ADMIN_CELLS[page][ADMIN_COLUMNS[principal]]
    url = page.format(general=world.rooms["general"].pk)
    answer = client_for(world, principal).get(url)
    assert answer.status_code == expected
    if expected == 302 and ADMIN_COLUMNS[principal] < 2:
        assert "/login/" in answer["Location"]
    if page == "/admin/chat/message/" and expected == 200:
        # Each moderator sees the messages of their rooms only.
        content = answer.content.decode()
        sees = {slug: f"alice in {slug}" in content for slug in ROOMS.values()}
        sees["elsewhere"] = "alice elsewhere" in content
        assert (
            sees
            == {
                # Nobody sees an unreported DM message.
                "roommod": {
                    "general": True,
                    "secret": True,
                    "dm-matrix": False,
                    "elsewhere": False,
                },
                "othermod": {
                    "general": False,
                    "secret": False,
                    "dm-matrix": False,
                    "elsewhere": True,
                },
                "staff": {"general": True, "secret": True, "dm-matrix": False, "elsewhere": True},
            }[principal]
        )


# --- the WebSocket protocol, on both transports ---

# One row per frame, in the order a connection sends them: the expected answer for each logged-in
# principal ("ok" or the error code), public room then private room. Principals in USERS order:
#   outsider, member, muted, banned, roommod, othermod, staff
DM_WS = ("not_found", "ok", "not_found", "not_found", "not_found", "not_found", "not_found")
READ_WS = (
    ("ok", "ok", "ok", "forbidden", "ok", "ok", "ok"),
    ("not_found", "ok", "ok", "forbidden", "ok", "not_found", "ok"),
    DM_WS,
)
POST_WS = (
    ("ok", "ok", "forbidden", "forbidden", "ok", "ok", "ok"),
    ("not_found", "ok", "forbidden", "forbidden", "ok", "not_found", "ok"),
    DM_WS,
)
OTHERS_WS = (
    ("forbidden",) * 7,
    ("not_found", "forbidden", "forbidden", "forbidden", "forbidden", "not_found", "forbidden"),
    tuple("forbidden" if cell == "ok" else cell for cell in DM_WS),
)
WS_CELLS: dict[str, tuple[tuple[str, ...], ...]] = {
    "ping": (("ok",) * 7,) * 3,
    # Every user has their own stream, whatever the room.
    "resume_user": (("ok",) * 7,) * 3,
    "subscribe": READ_WS,
    "typing": POST_WS,
    "read": READ_WS,
    "report": READ_WS,
    "sendmessage": POST_WS,
    "edit_own": POST_WS,
    "edit_other": OTHERS_WS,
    "delete_own": POST_WS,
    "delete_other": OTHERS_WS,
    "unsubscribe": READ_WS,
}
# The reply an allowed frame gets (the others answer nothing, or only live events).
WS_REPLIES = {
    "ping": "pong",
    "resume_user": "user_resumed",
    "subscribe": "subscribed",
    "report": "ack",
    "sendmessage": "ack",
    "unsubscribe": "unsubscribed",
}


def ws_frame(world: World, step: str, principal: str, slug: str) -> dict[str, Any]:
    target, own = world.target[slug], world.own_or_target(principal, slug)
    return {
        "ping": {"action": "ping"},
        "resume_user": {"action": "resume_user", "after": 0},
        "subscribe": {"action": "subscribe", "room": slug},
        "typing": {"action": "typing", "room": slug},
        "read": {"action": "read", "room": slug, "seq": 1},
        "report": {"action": "report", "room": slug, "id": target, "reason": "spam"},
        "sendmessage": {
            "action": "sendmessage",
            "room": slug,
            "body": "over ws",
            "client_id": "ws-1",
        },
        "edit_own": {"action": "editmessage", "room": slug, "id": own, "body": "edited over ws"},
        "edit_other": {"action": "editmessage", "room": slug, "id": target, "body": "hijacked"},
        "delete_own": {"action": "deletemessage", "room": slug, "id": own},
        "delete_other": {"action": "deletemessage", "room": slug, "id": target},
        "unsubscribe": {"action": "unsubscribe", "room": slug},
    }[step]


def ws_written(world: World, step: str, principal: str, slug: str) -> bool:
    """Whether an allowed frame made the change it asks for."""
    user = world.users[principal]
    if step == "sendmessage":
        return Message.objects.filter(client_id="ws-1", author=user).exists()
    if step == "edit_own":
        return Message.objects.get(pk=world.own[(principal, slug)]).body == "edited over ws"
    if step == "delete_own":
        return Message.objects.get(pk=world.own[(principal, slug)]).deleted
    if step == "report":
        return Report.objects.filter(message_id=world.target[slug], reporter=user).exists()
    if step == "read":
        return read_recorded(slug, user)
    return True


def read_recorded(slug: str, user: Any) -> bool:
    """The read cursor moved; except that a moderator reading a private room they are not a
    member of gets none (reading never makes anyone a member of a private room)."""
    row = Membership.objects.filter(room__slug=slug, user=user).first()
    if row is None:
        return Room.objects.get(slug=slug).private
    return row.read_seq == 1


def judge(
    world: World,
    step: str,
    principal: str,
    kind: str,
    replies: list[dict[str, Any]],
    before: dict[str, Any],
) -> str | None:
    """A mismatch of one cell, described, or None."""
    slug = ROOMS[kind]
    expected = WS_CELLS[step][KIND[kind]][USERS.index(principal)]
    errors = [e["code"] for e in replies if e["type"] == "error"]
    types = {e["type"] for e in replies}
    cell = f"{principal} {step} in the {kind} room"
    if expected == "ok":
        if errors:
            return f"{cell}: expected it allowed, got {errors}"
        if step in WS_REPLIES and WS_REPLIES[step] not in types:
            return f"{cell}: expected {WS_REPLIES[step]!r}, got {sorted(types)}"
        if not ws_written(world, step, principal, slug):
            return f"{cell}: allowed but not stored"
        return None
    if errors != [expected]:
        return f"{cell}: expected {expected!r}, got {errors or sorted(types)}"
    if snapshot() != before:
        return f"{cell}: refused, but something was stored"
    return None


# Channels: the communicator against the ASGI application, one connection per principal and room.


async def channels_replies(
    comm: WebsocketCommunicator, frame: dict[str, Any]
) -> list[dict[str, Any]]:
    """What the frame got back: everything up to the pong of a ping sent after it (a socket's
    frames run in order). Live events (presence, typing, the room's messages) are left out."""
    await comm.send_json_to(frame)
    if frame["action"] != "ping":
        await comm.send_json_to({"action": "ping"})
    replies = []
    while True:
        event = json.loads(await comm.receive_from(5))
        if event["type"] == "pong":
            return [*replies, event] if frame["action"] == "ping" else replies
        if event["type"] not in ("presence", "typing", "message", "room", "notify"):
            replies.append(event)


@pytest.mark.parametrize("kind", list(ROOMS))
@pytest.mark.parametrize("principal", USERS)
async def test_channels_actions(committed_world: World, principal: str, kind: str) -> None:
    world, slug = committed_world, ROOMS[kind]
    token = await sync_to_async(tokens.make_token)(world.users[principal])
    comm = WebsocketCommunicator(application, f"/ws/?token={token}")
    connected, _ = await comm.connect()
    assert connected
    mismatches = []
    try:
        for step in WS_CELLS:
            before = await sync_to_async(snapshot)()
            replies = await channels_replies(comm, ws_frame(world, step, principal, slug))
            mismatch = await sync_to_async(judge)(world, step, principal, kind, replies, before)
            if mismatch:
                mismatches.append(mismatch)
    finally:
        await comm.disconnect()
    assert not mismatches, "\n".join(mismatches)


async def test_channels_refuses_anonymous_connections(committed_world: World) -> None:
    for url in ("/ws/", "/ws/?room=general", "/ws/?room=secret&token="):
        comm = WebsocketCommunicator(application, url)
        assert await comm.connect() == (False, 4401)


# Serverless: Zappa's own lambda_handler, as API Gateway invokes it.


@pytest.fixture
def lambda_handler(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> Iterator[Callable[[dict[str, Any]], Any]]:
    """Zappa's real `lambda_handler` in this process, with the settings module `zappa package`
    writes for the dev stage and chat.serverless's routes. Zappa keeps its handler, its route
    registry and its environment process-wide; each is put back afterwards, so the local gateway
    tests of the same run start from a clean state."""
    from zappa import handler, websocket

    from localgateway import load_stage

    stage = load_stage(ROOT / "zappa_settings.json", "dev")
    (tmp_path / "zappa_settings.py").write_text(stage.source)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "zappa_settings", raising=False)
    monkeypatch.setattr(handler.LambdaHandler, "_LambdaHandler__instance", None)
    routes = {
        "$connect": serverless.connect,
        "$disconnect": serverless.disconnect,
        "$default": serverless.message,
    }
    monkeypatch.setattr(websocket, "_registry", routes)
    monkeypatch.setattr(websocket, "_validated", False)
    root_level = logging.getLogger().level
    with mock.patch.dict(os.environ):
        yield lambda event: handler.lambda_handler(event, None)
    logging.getLogger().setLevel(root_level)
    sys.modules.pop("zappa_settings", None)


@pytest.fixture
def posts(monkeypatch: pytest.MonkeyPatch, settings: Any) -> Iterator[Posts]:
    """The stage's publication and presence settings; @connections posts recorded."""
    recorder = Posts()
    monkeypatch.setattr(apigateway, "post", recorder)
    # The handlers close "obsolete" connections around each invocation, which would close the
    # test's own (it is inside a transaction). The deployed path keeps doing it.
    monkeypatch.setattr(serverless, "close_old_connections", lambda: None)
    monkeypatch.setattr(apigateway, "close_old_connections", lambda: None)
    settings.CHAT_FANOUT_BACKENDS = ["chat.apigateway.ApiGatewayBackend"]
    settings.CHAT_PRESENCE_STORE = "chat.presence.SubscriptionStore"
    fanout.backends.cache_clear()
    yield recorder
    fanout.backends.cache_clear()


def lambda_connect(
    lambda_handler: Callable[[dict[str, Any]], Any], connection_id: str, token: str | None
) -> Any:
    event = ws_event("$connect", connection_id)
    event["queryStringParameters"] = {"token": token} if token is not None else None
    return lambda_handler(event)


@pytest.mark.parametrize("kind", list(ROOMS))
@pytest.mark.parametrize("principal", USERS)
def test_serverless_actions(
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
    for step in WS_CELLS:
        before = snapshot()
        posts.sent.clear()
        frame = ws_event("$default", conn, body=json.dumps(ws_frame(world, step, principal, slug)))
        assert lambda_handler(frame) == {"statusCode": 200}
        live = ("presence", "typing", "message", "notify")
        replies = [e for e in posts.to(conn) if e["type"] not in live]
        mismatch = judge(world, step, principal, kind, replies, before)
        if mismatch:
            mismatches.append(mismatch)
    assert not mismatches, "\n".join(mismatches)


def test_serverless_refuses_anonymous_connections(
    world: World, lambda_handler: Callable[[dict[str, Any]], Any], posts: Posts
) -> None:
    before = snapshot()
    for token in (None, "", "forged"):
        assert lambda_connect(lambda_handler, "Anon=", token)["statusCode"] == 401
    assert snapshot() == before
    assert not ApiConnection.objects.exists()
