"""Direct messages, blocks, mentions, notification levels and the user's stream, through the JSON
API and the write path on PostgreSQL (tests/test_user_stream.py has the live transports)."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.db import connection
from django.test import Client

from chat import dms, moderation, notify, reads, writepath
from chat.errors import ChatError
from chat.models import Block, Inbox, Membership, Message, Room, UserEvent

# Committed for real: `unread` events are raised after the message commits (chat/notify.py).
pytestmark = pytest.mark.django_db(transaction=True)


def login(user: Any) -> Client:
    client = Client()
    client.force_login(user)
    return client


def post(client: Client, path: str, data: Any = None) -> Any:
    return client.post(path, data if data is not None else {}, content_type="application/json")


@pytest.fixture
def carol(db: Any) -> Any:
    return get_user_model().objects.create_user("carol", password="pw-carol-123")


def stream(user: Any) -> list[dict[str, Any]]:
    return reads.user_catch_up(user, 0).changes


# --- opening conversations ---


def test_a_dm_is_always_the_same_room(alice: Any, bob: Any) -> None:
    first = post(login(alice), "/api/dms/", {"users": ["bob"]})
    assert first.status_code == 201
    room = first.json()
    assert room["kind"] == "dm" and room["private"] is True
    assert room["title"] == "bob" and room["members"] == ["alice", "bob"]
    again = post(login(bob), "/api/dms/", {"users": ["alice"]})
    assert again.status_code == 200
    assert again.json()["slug"] == room["slug"] and again.json()["title"] == "alice"
    listed = login(bob).get("/api/rooms/").json()
    dm = next(r for r in listed["rooms"] if r["kind"] == "dm")
    assert dm["slug"] == room["slug"] and dm["title"] == "alice" and dm["notifications"] == "all"


def test_a_group_dm_and_a_dm_with_oneself(alice: Any, bob: Any, carol: Any) -> None:
    group = post(login(alice), "/api/dms/", {"users": ["carol", "bob", "alice"]})
    assert group.status_code == 201
    assert group.json()["members"] == ["alice", "bob", "carol"]
    assert group.json()["title"] == "bob, carol"
    same = post(login(carol), "/api/dms/", {"users": ["alice", "bob"]})
    assert same.status_code == 200 and same.json()["slug"] == group.json()["slug"]
    notes = post(login(alice), "/api/dms/", {"users": ["alice"]})
    assert notes.status_code == 201
    assert notes.json()["members"] == ["alice"] and notes.json()["title"] == "alice"


def test_two_people_opening_it_at_once_get_one_room(alice: Any, bob: Any) -> None:
    barrier = threading.Barrier(8)
    rooms: list[str] = []
    errors: list[BaseException] = []

    def open_it(user: Any, other: str) -> None:
        try:
            barrier.wait()
            room, _ = dms.open_dm(user, [other])
            rooms.append(room.slug)
        except BaseException as exc:  # reported below
            errors.append(exc)
        finally:
            connection.close()

    threads = [
        threading.Thread(target=open_it, args=(alice, "bob") if i % 2 else (bob, "alice"))
        for i in range(8)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert len(rooms) == 8 and len(set(rooms)) == 1
    assert Room.objects.filter(kind=Room.DM).count() == 1
    assert Membership.objects.filter(room__kind=Room.DM).count() == 2


@pytest.mark.parametrize(
    ("users", "status", "code"),
    [
        (None, 400, "bad_request"),
        ("bob", 400, "bad_request"),
        ([], 400, "bad_request"),
        ([1], 400, "bad_request"),
        ([None], 400, "bad_request"),
        (["bo b\x00"], 400, "bad_request"),
        (["nobody"], 404, "not_found"),
        (["bob", "nobody"], 404, "not_found"),
        ([f"u{i}" for i in range(10)], 400, "bad_request"),
    ],
)
def test_bad_conversations_are_refused_and_nothing_is_stored(
    alice: Any, bob: Any, users: Any, status: int, code: str
) -> None:
    for i in range(10):
        get_user_model().objects.create_user(f"u{i}")
    body = {} if users is None else {"users": users}
    response = post(login(alice), "/api/dms/", body)
    assert response.status_code == status and response.json()["error"] == code
    assert not Room.objects.filter(kind=Room.DM).exists()


def test_a_deactivated_user_looks_like_nobody(alice: Any, bob: Any) -> None:
    bob.is_active = False
    bob.save()
    gone = post(login(alice), "/api/dms/", {"users": ["bob"]})
    nobody = post(login(alice), "/api/dms/", {"users": ["nobody"]})
    assert gone.status_code == nobody.status_code == 404
    assert gone.json() == nobody.json()


def test_nine_others_is_the_limit(alice: Any) -> None:
    names = [get_user_model().objects.create_user(f"p{i}").username for i in range(9)]
    assert post(login(alice), "/api/dms/", {"users": names}).status_code == 201


def test_outsiders_and_site_moderators_cannot_open_a_dm(
    alice: Any, bob: Any, outsider: Any, moderator: Any
) -> None:
    room, _ = dms.open_dm(alice, ["bob"])
    writepath.post_message(alice, room, "just us")
    for user in (outsider, moderator):
        client = login(user)
        for path in (
            f"/api/rooms/{room.slug}/messages",
            f"/api/rooms/{room.slug}/members",
            f"/api/rooms/{room.slug}/poll?after=0&timeout=0",
        ):
            response = client.get(path)
            assert response.status_code == 404, (user, path)
        assert post(client, f"/api/rooms/{room.slug}/messages", {"body": "hi"}).status_code == 404
        listed = client.get("/api/rooms/").json()["rooms"]
        assert room.slug not in {r["slug"] for r in listed}
    assert Message.objects.filter(room=room).count() == 1


# --- blocks ---


def test_a_blocked_user_cannot_open_or_post_to_the_dm(alice: Any, bob: Any) -> None:
    room, _ = dms.open_dm(alice, ["bob"])
    assert post(login(alice), "/api/blocks/bob").status_code == 201
    assert post(login(alice), "/api/blocks/bob").status_code == 200
    assert login(alice).get("/api/blocks/").json() == {"blocked": ["bob"]}
    refused = post(login(bob), "/api/dms/", {"users": ["alice"]})
    assert refused.status_code == 403 and refused.json()["error"] == "forbidden"
    posting = post(login(bob), f"/api/rooms/{room.slug}/messages", {"body": "hello?"})
    assert posting.status_code == 403
    assert not Message.objects.filter(room=room).exists()
    # The blocker still may; unblocking lets bob write again.
    assert post(login(alice), f"/api/rooms/{room.slug}/messages", {"body": "x"}).status_code == 201
    assert login(alice).delete("/api/blocks/bob").status_code == 204
    assert post(login(bob), f"/api/rooms/{room.slug}/messages", {"body": "y"}).status_code == 201


def test_block_errors(alice: Any) -> None:
    client = login(alice)
    assert post(client, "/api/blocks/alice").status_code == 400
    assert post(client, "/api/blocks/nobody").status_code == 404
    assert client.delete("/api/blocks/nobody").status_code == 404
    assert client.get("/api/blocks/alice").status_code == 405
    assert not Block.objects.exists()


def test_a_block_that_commits_during_a_post_still_stops_it(alice: Any, bob: Any) -> None:
    # The one-statement insert is PostgreSQL's, and the suite runs on PostgreSQL: anything else
    # is a broken setup, not a reason to test less.
    assert connection.vendor == "postgresql", connection.vendor
    room, _ = dms.open_dm(alice, ["bob"])
    room = Room.objects.get(pk=room.pk)
    # As if the block committed after bob's checks: the insert itself refuses.
    Block.objects.create(blocker=alice, blocked=bob)
    message = Message(room=room, author=bob, body="late", client_id=None)
    message.mentions = []
    with pytest.raises(ChatError) as refused:
        writepath._insert_in_one_statement(message, False, join=False, one_to_one=True)
    assert refused.value.code == "forbidden"
    assert Room.objects.get(pk=room.pk).seq == 0


# --- mentions and notifications ---


def test_a_mention_notifies_once_with_the_message(alice: Any, bob: Any, room: Room) -> None:
    writepath.post_message(bob, room, "hi")
    posted = writepath.post_message(alice, room, "hey @bob, and @nobody, mail a@bob.com")
    assert posted.message.mentions == ["bob"]
    events = stream(bob)
    mention = [e for e in events if e["kind"] == "mention"]
    assert len(mention) == 1
    assert mention[0]["room"] == "general" and mention[0]["message"]["id"] == posted.message.pk
    assert mention[0]["message"]["mentions"] == ["bob"] and mention[0]["mentions"] == 1
    assert [e["user_seq"] for e in events] == list(range(1, len(events) + 1))
    assert not stream(alice)  # nobody is told of their own message
    assert login(bob).get("/api/rooms/").json()["rooms"][0]["mentions"] == 1


def test_a_trailing_dot_still_mentions(alice: Any, bob: Any, room: Room) -> None:
    assert writepath.post_message(alice, room, "thanks @bob.").message.mentions == ["bob"]


def test_private_rooms_mention_members_only(
    alice: Any, bob: Any, outsider: Any, private_room: Room
) -> None:
    posted = writepath.post_message(alice, private_room, "@bob @mallory")
    assert posted.message.mentions == ["bob"]
    assert not stream(outsider)


def test_at_room_is_for_moderators(alice: Any, bob: Any, moderator: Any, room: Room) -> None:
    writepath.post_message(bob, room, "here")
    refused = post(login(alice), "/api/rooms/general/messages", {"body": "@room look"})
    assert refused.status_code == 403 and refused.json()["error"] == "forbidden"
    assert not Message.objects.filter(body="@room look").exists()
    posted = writepath.post_message(moderator, room, "@room look")
    assert posted.message.mentions == ["room"]
    assert [e["kind"] for e in stream(bob)][-1] == "mention"


def test_blocked_and_silenced_users_are_not_notified(
    alice: Any, bob: Any, carol: Any, room: Room
) -> None:
    for user in (alice, bob, carol):
        writepath.mark_read(user, room, 0)
    Block.objects.create(blocker=bob, blocked=alice)
    notify.set_level(carol, room, "none")
    writepath.post_message(alice, room, "@bob @carol hello")
    assert not stream(bob) and not stream(carol)


def test_levels(alice: Any, bob: Any, room: Room, private_room: Room, outsider: Any) -> None:
    client = login(bob)
    assert post(client, "/api/rooms/general/notifications", {"level": "all"}).json() == {
        "room": "general",
        "level": "all",
    }
    for bad in ("loud", None, 1, ["all"], "ALL"):
        response = post(client, "/api/rooms/general/notifications", {"level": bad})
        assert response.status_code == 400
    assert Membership.objects.get(room=room, user=bob).notify_level == "all"
    # Level all: one event per message.
    for i in range(3):
        writepath.post_message(alice, room, f"m{i}")
    unread = [e for e in stream(bob) if e["kind"] == "unread"]
    assert len(unread) == 3 and unread[-1]["unread"] == 3
    refused = post(login(outsider), "/api/rooms/secret/notifications", {"level": "all"})
    assert refused.status_code == 404


def test_unread_is_raised_once_per_reading_and_cleared_by_a_read(
    alice: Any, bob: Any, room: Room
) -> None:
    writepath.mark_read(bob, room, 0)  # bob joins the room
    for i in range(5):
        writepath.post_message(alice, room, f"m{i}")
    events = stream(bob)
    assert [e["kind"] for e in events] == ["unread"]
    assert events[0]["unread"] == 5  # counts as of now (a replay says what is true now)
    assert UserEvent.objects.filter(user=bob).count() == 1
    room.refresh_from_db()
    writepath.mark_read(bob, room, room.seq)
    events = stream(bob)
    assert [e["kind"] for e in events] == ["unread", "unread"]
    assert events[-1]["unread"] == 0 and events[-1]["mentions"] == 0
    # Read again: nothing pending, nothing raised.
    writepath.mark_read(bob, room, room.seq)
    assert len(stream(bob)) == 2
    writepath.post_message(alice, room, "again")
    assert len(stream(bob)) == 3


def test_a_dm_notifies_every_other_member(alice: Any, bob: Any, carol: Any) -> None:
    room, _ = dms.open_dm(alice, ["bob", "carol"])
    posted = writepath.post_message(alice, room, "hi both")
    for user in (bob, carol):
        (event,) = stream(user)
        assert event["kind"] == "dm" and event["room"] == room.slug
        assert event["message"]["body"] == "hi both" and event["unread"] == 1
    assert not stream(alice)
    assert posted.message.mentions == []


def test_an_edit_notifies_only_the_newly_mentioned(
    alice: Any, bob: Any, carol: Any, room: Room
) -> None:
    posted = writepath.post_message(alice, room, "hi @bob")
    writepath.edit_message(alice, room, posted.message.pk, "hi @bob and @carol")
    assert [e["kind"] for e in stream(bob)] == ["mention"]
    (event,) = stream(carol)
    assert event["kind"] == "mention" and event["message"]["mentions"] == ["bob", "carol"]


def test_a_replay_says_nothing_of_a_room_the_user_left(
    alice: Any, bob: Any, private_room: Room
) -> None:
    writepath.post_message(alice, private_room, "@bob secret")
    Membership.objects.filter(room=private_room, user=bob).delete()
    (event,) = stream(bob)
    assert event == {"type": "notify", "user_seq": 1, "kind": "mention", "room": None}


def test_the_stream_over_http(alice: Any, bob: Any, room: Room, settings: Any) -> None:
    client = login(bob)
    assert client.get("/api/me/notifications?after=0").json() == {"events": [], "user_seq": 0}
    writepath.post_message(alice, room, "@bob one")
    writepath.post_message(alice, room, "@bob two")
    data = client.get("/api/me/notifications?after=1").json()
    assert data["user_seq"] == 2 and [e["user_seq"] for e in data["events"]] == [2]
    latest = client.get("/api/me/notifications?limit=1").json()
    assert [e["user_seq"] for e in latest["events"]] == [2]
    assert client.get("/api/rooms/").json()["user_seq"] == 2
    for bad in ("3", "-1", "x", "²", "1.0"):
        response = client.get(f"/api/me/notifications?after={bad}")
        assert response.status_code == 400 and response.json()["error"] == "bad_request"
    settings.CHAT_RESUME_LIMIT = 1
    assert client.get("/api/me/notifications?after=0").json() == {"resync": True, "user_seq": 2}
    assert Client().get("/api/me/notifications?after=0").status_code == 401


def test_people_and_members(alice: Any, bob: Any, carol: Any, room: Room) -> None:
    client = login(alice)
    assert client.get("/api/users?q=b").json() == {"users": ["bob"]}
    assert client.get("/api/users?q=").status_code == 400
    assert client.get("/api/users?q=%00").status_code == 400
    writepath.post_message(bob, room, "hi")
    assert client.get("/api/rooms/general/members").json() == {"members": ["bob"]}


def test_seqs_of_several_users_are_taken_in_one_statement(db: Any) -> None:
    # In id order whatever order they are asked in, so that two writers cannot deadlock.
    users = [get_user_model().objects.create_user(f"s{i}") for i in range(3)]
    first = notify._take_seqs([u.pk for u in reversed(users)])
    second = notify._take_seqs([u.pk for u in users])
    assert set(first.values()) == {1} and set(second.values()) == {2}
    assert Inbox.objects.filter(seq=2).count() == 3


def test_user_seq_is_gap_free_under_concurrent_writers(alice: Any, bob: Any) -> None:
    # Half the writers mention bob in public rooms of their own, half write to him in 1:1
    # conversations: different rooms (no room lock in common), one stream. Bob is a member of
    # none of the public rooms, so each post tells him exactly one thing.
    writers = 8
    jobs: list[tuple[Any, Room, str]] = []
    for i in range(writers // 2):
        jobs.append((alice, Room.objects.create(slug=f"r{i}", title=f"R{i}"), f"@bob in r{i}"))
        sender = get_user_model().objects.create_user(f"d{i}")
        dm, _ = dms.open_dm(sender, ["bob"])
        jobs.append((sender, dm, f"dm {i} to bob"))
    barrier = threading.Barrier(writers)
    posted: list[int] = []
    errors: list[BaseException] = []

    def write(author: Any, room: Room, body: str) -> None:
        try:
            barrier.wait()
            posted.append(writepath.post_message(author, room, body).message.pk)
        except BaseException as exc:  # reported below
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=write, args=job) for job in jobs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert len(posted) == writers
    rows = list(UserEvent.objects.filter(user=bob).order_by("seq").values_list("seq", "message_id"))
    assert [seq for seq, _ in rows] == list(range(1, writers + 1))
    assert sorted(message for _, message in rows) == sorted(posted)
    assert Inbox.objects.get(user=bob).seq == writers
    kinds = sorted(UserEvent.objects.filter(user=bob).values_list("kind", flat=True))
    assert kinds == ["dm"] * (writers // 2) + ["mention"] * (writers // 2)


def test_a_blocker_is_not_told_even_when_named_beside_at_room(
    alice: Any, bob: Any, moderator: Any, room: Room
) -> None:
    writepath.mark_read(bob, room, 0)
    Block.objects.create(blocker=bob, blocked=moderator)
    writepath.post_message(moderator, room, "@room and @bob")
    assert not stream(bob)


def test_a_dm_at_level_mentions_raises_unread_not_dm(alice: Any, bob: Any) -> None:
    room, _ = dms.open_dm(alice, ["bob"])
    notify.set_level(bob, room, "mentions")
    writepath.post_message(alice, room, "one")
    writepath.post_message(alice, room, "two")
    assert [e["kind"] for e in stream(bob)] == ["unread"]
    writepath.post_message(alice, room, "@bob three")
    assert [e["kind"] for e in stream(bob)] == ["unread", "mention"]


def test_site_moderators_see_a_dm_message_only_once_reported(
    alice: Any, bob: Any, moderator: Any
) -> None:
    room, _ = dms.open_dm(alice, ["bob"])
    quiet = writepath.post_message(alice, room, "between us").message
    rude = writepath.post_message(alice, room, "something rude").message
    staff = login(moderator)
    moderator.user_permissions.add(
        *Permission.objects.filter(
            codename__in=["view_message", "hide_message", "view_room", "view_membership"]
        )
    )
    listing = staff.get("/admin/chat/message/").content.decode()
    assert "between us" not in listing and "something rude" not in listing
    assert room.slug not in staff.get("/admin/chat/room/").content.decode()
    assert room.slug not in staff.get("/admin/chat/membership/").content.decode()
    moderation.report_message(bob, room, rude.pk, "rude")
    listing = staff.get("/admin/chat/message/").content.decode()
    assert "something rude" in listing and "between us" not in listing
    answer = staff.post(
        "/admin/chat/message/", {"action": "hide", "_selected_action": [rude.pk, quiet.pk]}
    )
    assert answer.status_code == 302
    assert Message.objects.get(pk=rude.pk).hidden
    assert not Message.objects.get(pk=quiet.pk).hidden  # not listed, so not acted on


def test_a_block_in_a_group_dm_stops_notifications_not_posts(
    alice: Any, bob: Any, carol: Any
) -> None:
    room, _ = dms.open_dm(alice, ["bob", "carol"])
    Block.objects.create(blocker=bob, blocked=alice)
    writepath.post_message(alice, room, "hi all")
    assert not stream(bob)
    assert [e["kind"] for e in stream(carol)] == ["dm"]


def test_a_dm_is_titled_for_its_reader_on_subscribe_and_poll(alice: Any, bob: Any) -> None:
    room, _ = dms.open_dm(alice, ["bob"])
    page = login(bob).get(f"/api/rooms/{room.slug}/poll?after=0&timeout=0").json()
    assert page["room"]["title"] == "alice"
    assert reads.title_for(Room.objects.get(pk=room.pk), alice) == "bob"


def test_a_public_room_never_joined_counts_nothing(alice: Any, bob: Any, room: Room) -> None:
    writepath.post_message(alice, room, "hello")
    (general,) = [
        r for r in login(bob).get("/api/rooms/").json()["rooms"] if r["slug"] == "general"
    ]
    assert general["unread"] == 0
    writepath.mark_read(bob, room, 0)
    writepath.post_message(alice, room, "again")
    (general,) = [
        r for r in login(bob).get("/api/rooms/").json()["rooms"] if r["slug"] == "general"
    ]
    assert general["unread"] == 2


def test_unread_is_raised_off_the_writers_thread(
    alice: Any, bob: Any, room: Room, settings: Any
) -> None:
    settings.CHAT_UNREAD_INLINE = False
    writepath.mark_read(bob, room, 0)
    for i in range(5):
        writepath.post_message(alice, room, f"m{i}")
    assert notify.later.flush()
    events = stream(bob)
    assert [e["kind"] for e in events] == ["unread"] and events[0]["unread"] == 5
    assert notify.later.thread is not None and notify.later.thread.name == "chat-unread"
