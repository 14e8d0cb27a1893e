"""Rooms people can find and join: the directory, joining and leaving, invitations to private rooms
and removals, descriptions; through the JSON API on PostgreSQL, and removals live on both
transports (the `chat_server` fixture)."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from chat import reads, writepath
from chat.models import Membership, ModerationAction, Room, UserEvent
from tests.conftest import Server
from tests.test_moderation import _http, _presence
from tests.test_realtime import peer

# Committed for real: `unread` events are raised after a message commits (chat/notify.py).
pytestmark = pytest.mark.django_db(transaction=True)


def login(user: Any) -> Client:
    client = Client()
    client.force_login(user)
    return client


def send(client: Client, method: str, path: str, data: Any = None) -> Any:
    body = data if data is not None else {}
    return getattr(client, method)(path, body, content_type="application/json")


def kinds(user: Any) -> list[tuple[str, str | None]]:
    return [(e["kind"], e["room"]) for e in reads.user_catch_up(user, 0).changes]


def removals(user: Any) -> list[bool]:
    """Whether each replayed `left` of the user's stream says it was a removal."""
    changes = reads.user_catch_up(user, 0).changes
    return [e.get("removed", False) for e in changes if e["kind"] == "left"]


@pytest.fixture(autouse=True)
def _no_lobby(db: Any) -> None:
    """The lobby (a data migration's) would be in every directory listed here."""
    Room.objects.filter(slug="lobby").delete()


@pytest.fixture
def carol(db: Any) -> Any:
    return get_user_model().objects.create_user("carol", password="pw-carol-123")


@pytest.fixture
def room_mod(db: Any, private_room: Room) -> Any:
    """One of the private room's own moderators, not its owner."""
    user = get_user_model().objects.create_user("rmod", is_staff=True)
    private_room.moderators.add(user)
    return user


# --- the directory ---


def test_the_directory_lists_public_rooms_with_counts_and_activity(
    alice: Any, bob: Any, carol: Any, private_room: Room
) -> None:
    quiet = Room.objects.create(slug="quiet", title="Quiet", description="Nobody talks here.")
    busy = Room.objects.create(slug="busy", title="Busy", description="Where it happens.")
    Membership.objects.create(room=busy, user=bob)
    Membership.objects.create(room=busy, user=carol)
    writepath.post_message(alice, busy, "hello")  # joins alice
    get_user_model().objects.filter(pk=carol.pk).update(is_active=False)
    dm = Room.objects.create(slug="dm-x", title="x", kind=Room.DM, private=True)
    Membership.objects.create(room=dm, user=alice)

    with CaptureQueriesContext(connection) as queries:
        answer = login(alice).get("/api/rooms/directory")
    assert answer.status_code == 200
    # The session and the user, then one query for the page, whatever its size.
    assert len([q for q in queries if "chat_room" in q["sql"]]) == 1
    listed = answer.json()
    assert [r["slug"] for r in listed["rooms"]] == ["busy", "quiet"]  # latest activity first
    first, second = listed["rooms"]
    assert first["title"] == "Busy" and first["description"] == "Where it happens."
    assert first["members"] == 2  # alice and bob; carol is deactivated
    assert first["latest_activity"] is not None and first["joined"] is True
    assert second["members"] == 0 and second["latest_activity"] is None
    assert second["joined"] is False
    assert listed["has_more"] is False
    assert quiet.slug not in {
        r["slug"] for r in login(bob).get("/api/rooms/directory?q=busy").json()["rooms"]
    }


def test_the_directory_filters_and_pages(alice: Any) -> None:
    for i in range(5):
        Room.objects.create(slug=f"room-{i}", title=f"Room {i}", description="plants" * (i % 2))
    Room.objects.create(slug="cats", title="Cat pictures")
    client = login(alice)
    assert [r["slug"] for r in client.get("/api/rooms/directory?q=CAT").json()["rooms"]] == ["cats"]
    by_description = client.get("/api/rooms/directory?q=plants").json()["rooms"]
    assert sorted(r["slug"] for r in by_description) == ["room-1", "room-3"]
    page = client.get("/api/rooms/directory?limit=4").json()
    rest = client.get("/api/rooms/directory?limit=4&offset=4").json()
    assert len(page["rooms"]) == 4 and page["has_more"] is True
    assert len(rest["rooms"]) == 2 and rest["has_more"] is False
    assert {r["slug"] for r in page["rooms"] + rest["rooms"]} == {
        *(f"room-{i}" for i in range(5)),
        "cats",
    }
    for bad in ("limit=0", "limit=101", "offset=-1", "q=%00", "q=a%0Ab"):
        assert client.get(f"/api/rooms/directory?{bad}").status_code == 400, bad
    assert Client().get("/api/rooms/directory").status_code == 401


def test_directory_is_not_a_room_slug(alice: Any) -> None:
    answer = send(login(alice), "post", "/api/rooms/", {"slug": "directory", "title": "Mine"})
    assert answer.status_code == 400
    assert not Room.objects.filter(slug="directory").exists()


# --- joining and leaving ---


def test_joining_a_public_room_and_leaving_it(alice: Any, bob: Any, room: Room) -> None:
    writepath.post_message(bob, room, "before alice came")
    client = login(alice)
    joined = send(client, "post", "/api/rooms/general/join")
    assert joined.status_code == 201 and joined.json()["joined"] is True
    membership = Membership.objects.get(room=room, user=alice)
    assert membership.read_seq == 1  # what was there before is not unread
    assert send(client, "post", "/api/rooms/general/join").status_code == 200
    assert Membership.objects.filter(room=room, user=alice).count() == 1
    listed = {r["slug"]: r for r in client.get("/api/rooms/").json()["rooms"]}
    assert listed["general"]["joined"] is True

    assert send(client, "post", "/api/rooms/general/leave").status_code == 204
    assert not Membership.objects.filter(room=room, user=alice).exists()
    assert send(client, "post", "/api/rooms/general/leave").status_code == 204  # a retry
    listed = {r["slug"]: r for r in client.get("/api/rooms/").json()["rooms"]}
    assert listed["general"]["joined"] is False
    # One event each way on every device's stream; the retries raised nothing.
    assert kinds(alice) == [("joined", "general"), ("left", "general")]


def test_a_private_room_cannot_be_joined(alice: Any, outsider: Any, private_room: Room) -> None:
    staff = get_user_model().objects.create_superuser("root")
    assert send(login(outsider), "post", "/api/rooms/secret/join").status_code == 404
    refused = send(login(staff), "post", "/api/rooms/secret/join")  # may read it, not join it
    assert refused.status_code == 403 and "private" in refused.json()["detail"]
    assert not Membership.objects.filter(room=private_room, user__in=[outsider, staff]).exists()
    assert UserEvent.objects.count() == 0


def test_leaving_a_private_room_loses_access(alice: Any, bob: Any, private_room: Room) -> None:
    client = login(bob)
    assert send(client, "post", "/api/rooms/secret/leave").status_code == 204
    assert client.get("/api/rooms/secret/messages").status_code == 404
    assert kinds(bob) == [("left", "secret")]  # the room is named even now that bob cannot read it
    assert removals(bob) == [False]  # by choice: his open tab moves on without a reason
    assert "secret" not in {r["slug"] for r in client.get("/api/rooms/").json()["rooms"]}


def test_the_owner_of_a_private_room_and_dm_members_cannot_leave(
    alice: Any, bob: Any, private_room: Room
) -> None:
    owner = send(login(alice), "post", "/api/rooms/secret/leave")
    assert owner.status_code == 400 and "own" in owner.json()["detail"]
    dm = send(login(alice), "post", "/api/dms/", {"users": ["bob"]}).json()["slug"]
    refused = send(login(bob), "post", f"/api/rooms/{dm}/leave")
    assert refused.status_code == 400
    assert Membership.objects.filter(room__slug__in=["secret", dm]).count() == 4
    assert not UserEvent.objects.filter(kind=UserEvent.LEFT).exists()


def test_leaving_stops_the_rooms_notifications(alice: Any, bob: Any, room: Room) -> None:
    Membership.objects.create(room=room, user=bob, read_seq=0)
    room.moderators.add(alice)  # who may say @room
    writepath.post_message(alice, room, "first")  # bob had nothing unread: one `unread`
    writepath.post_message(alice, room, "@bob look")  # a mention
    assert kinds(bob) == [("unread", "general"), ("mention", "general")]
    assert send(login(bob), "post", "/api/rooms/general/leave").status_code == 204
    writepath.post_message(alice, room, "@bob are you there?")
    writepath.post_message(alice, room, "@room everyone")
    writepath.post_message(alice, room, "more")
    assert kinds(bob)[2:] == [("left", "general")]
    # A mention no longer makes him a member either, as it would someone who never left.
    assert not Membership.objects.filter(room=room, user=bob).exists()


# --- invitations and removals ---


def test_the_owner_and_moderators_invite_to_a_private_room(
    alice: Any, bob: Any, carol: Any, room_mod: Any, private_room: Room
) -> None:
    invited = send(login(alice), "post", "/api/rooms/secret/members", {"user": "carol"})
    assert invited.status_code == 201, invited.content
    assert invited.json() == {"room": "secret", "user": "carol"}
    assert Membership.objects.filter(room=private_room, user=carol).exists()
    events = reads.user_catch_up(carol, 0).changes
    assert [(e["kind"], e["room"]) for e in events] == [("invite", "secret")]
    assert events[0]["unread"] == 0
    assert login(carol).get("/api/rooms/secret/messages").status_code == 200
    again = send(login(room_mod), "post", "/api/rooms/secret/members", {"user": "carol"})
    assert again.status_code == 200
    assert kinds(carol) == [("invite", "secret")]  # no second invitation
    assert ModerationAction.objects.filter(action="invite").count() == 1


@pytest.mark.parametrize(
    ("who", "slug", "user", "status"),
    [
        ("bob", "secret", "carol", 403),  # a member who neither owns nor moderates it
        ("alice", "general", "carol", 400),  # a public room: anyone can join
        ("alice", "secret", "nobody", 404),
        ("alice", "secret", "inactive", 404),  # the same answer as nobody
        ("alice", "secret", "x" * 151, 404),
        ("alice", "secret", "\x00", 400),
        ("alice", "secret", None, 400),
        ("alice", "secret", "banned", 403),
    ],
)
def test_refused_invitations_store_nothing(
    alice: Any,
    bob: Any,
    carol: Any,
    room: Room,
    private_room: Room,
    who: str,
    slug: str,
    user: Any,
    status: int,
) -> None:
    from chat.models import Restriction

    model = get_user_model()
    model.objects.create_user("inactive", is_active=False)
    banned = model.objects.create_user("banned")
    Restriction.objects.create(kind=Restriction.BAN, user=banned, room=private_room)
    Room.objects.filter(pk=room.pk).update(created_by=alice)
    before = list(Membership.objects.order_by("pk").values_list("room_id", "user_id"))
    actor = {"alice": alice, "bob": bob}[who]
    answer = send(login(actor), "post", f"/api/rooms/{slug}/members", {"user": user})
    assert answer.status_code == status, answer.content
    assert set(answer.json()) == {"error", "detail"}
    assert list(Membership.objects.order_by("pk").values_list("room_id", "user_id")) == before
    assert UserEvent.objects.count() == 0


def test_removal_by_the_owner_or_a_moderator(
    alice: Any, bob: Any, carol: Any, room_mod: Any, private_room: Room
) -> None:
    Membership.objects.create(room=private_room, user=carol)
    removed = send(login(room_mod), "delete", "/api/rooms/secret/members", {"user": "bob"})
    assert removed.status_code == 204
    assert not Membership.objects.filter(room=private_room, user=bob).exists()
    assert kinds(bob) == [("left", "secret")]
    assert removals(bob) == [True]  # his open tab says why rather than moving on
    assert login(bob).get("/api/rooms/secret/messages").status_code == 404
    assert ModerationAction.objects.filter(action="remove_member", target_user=bob).exists()
    # Again: nothing more to do, and no second event.
    assert (
        send(login(alice), "delete", "/api/rooms/secret/members", {"user": "bob"}).status_code
        == 204
    )
    assert kinds(bob) == [("left", "secret")]
    # Members cannot remove each other, nobody removes the owner, and a public room has no list.
    assert (
        send(login(carol), "delete", "/api/rooms/secret/members", {"user": "rmod"}).status_code
        == 403
    )
    owner = send(login(room_mod), "delete", "/api/rooms/secret/members", {"user": "alice"})
    assert owner.status_code == 403
    Room.objects.create(slug="general", title="General", created_by=alice)
    public = send(login(alice), "delete", "/api/rooms/general/members", {"user": "carol"})
    assert public.status_code == 400
    unknown = send(login(alice), "delete", "/api/rooms/secret/members", {"user": "nobody"})
    assert unknown.status_code == 404
    assert Membership.objects.filter(room=private_room).count() == 2  # alice and carol


# --- descriptions ---


def test_the_owner_and_moderators_edit_the_description(
    alice: Any, bob: Any, room_mod: Any, private_room: Room
) -> None:
    owner = send(login(alice), "post", "/api/rooms/secret/moderate", {"description": " Plans \n"})
    assert owner.status_code == 200, owner.content
    assert owner.json()["description"] == "Plans"
    moderator = send(login(room_mod), "post", "/api/rooms/secret/moderate", {"description": "New"})
    assert moderator.status_code == 200
    # The owner may describe the room, not lock it; a member may do neither.
    assert (
        send(login(alice), "post", "/api/rooms/secret/moderate", {"locked": True}).status_code
        == 403
    )
    assert (
        send(login(bob), "post", "/api/rooms/secret/moderate", {"description": "x"}).status_code
        == 403
    )
    private_room.refresh_from_db()
    assert (private_room.description, private_room.locked) == ("New", False)
    listed = {r["slug"]: r for r in login(bob).get("/api/rooms/").json()["rooms"]}
    assert listed["secret"]["description"] == "New"
    page = login(bob).get("/rooms/secret/")
    assert b'id="room-description"' in page.content and b"New" in page.content


@pytest.mark.parametrize(
    ("value", "status"),
    [("x" * 501, 413), ("a\x00b", 400), ("\ud800", 400), (5, 400), (None, 400)],
)
def test_bad_descriptions_change_nothing(
    alice: Any, private_room: Room, value: Any, status: int
) -> None:
    Room.objects.filter(pk=private_room.pk).update(description="Kept")
    answer = send(login(alice), "post", "/api/rooms/secret/moderate", {"description": value})
    assert answer.status_code == status, answer.content
    private_room.refresh_from_db()
    assert private_room.description == "Kept"
    assert not ModerationAction.objects.exists()


# --- the page ---


def test_the_directory_page_joins_without_javascript(alice: Any, room: Room) -> None:
    client = login(alice)
    page = client.get("/rooms/directory/")
    assert page.status_code == 200 and b'data-slug="general"' in page.content
    joined = client.post("/rooms/directory/", {"room": "general"})
    assert joined.status_code == 302 and joined["Location"] == "/rooms/general/"
    assert Membership.objects.filter(room=room, user=alice).exists()
    assert b"Joined" in client.get("/rooms/directory/").content


# --- live, on both transports ---


async def test_removal_drops_the_removed_users_subscription_and_their_other_rooms_go_on(
    chat_server: Server, alice: Any, bob: Any, private_room: Room, room: Room
) -> None:
    a, b = await peer(chat_server, alice), await peer(chat_server, bob)
    await a.subscribe("secret")
    await a.subscribe("general")
    await b.subscribe("secret")
    await b.subscribe("general")
    await _presence(a, ["alice", "bob"])
    async with await _http(chat_server, alice) as owner:
        async with owner.delete("/api/rooms/secret/members", json={"user": "bob"}) as r:
            assert r.status == 204, await r.text()
    # Bob is told, on his user stream and about the room, and stops receiving it.
    told = await b.next("notify", timeout=10)
    assert (told["kind"], told["room"], told["removed"]) == ("left", "secret", True)
    error = await b.next("error", timeout=10)
    assert (error["code"], error["room"]) == ("forbidden", "secret")
    assert error.get("fatal") is not True
    await _presence(a, ["alice"])
    await a.send({"action": "sendmessage", "room": "secret", "body": "members only"})
    assert (await a.next("message"))["body"] == "members only"
    await b.nothing_more(within=1.0)
    # His other room goes on.
    await a.send({"action": "sendmessage", "room": "general", "body": "still here"})
    assert (await b.next("message"))["body"] == "still here"
    await b.send({"action": "subscribe", "room": "secret"})
    assert (await b.next("error"))["code"] == "not_found"
    await a.ws.close()
    await b.ws.close()


async def test_an_invitation_reaches_the_invitees_open_socket(
    chat_server: Server, alice: Any, carol: Any, private_room: Room
) -> None:
    c = await peer(chat_server, carol)
    await c.send({"action": "ping"})
    await c.next("pong")
    async with await _http(chat_server, alice) as owner:
        async with owner.post("/api/rooms/secret/members", json={"user": "carol"}) as r:
            assert r.status == 201, await r.text()
    told = await c.next("notify", timeout=10)
    assert (told["kind"], told["room"], told["unread"]) == ("invite", "secret", 0)
    assert (await c.subscribe("secret"))["room"] == "secret"
    await c.ws.close()
