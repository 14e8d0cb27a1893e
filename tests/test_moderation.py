"""Moderation: permissions in the write path, hide/restore/erase, room state, bans, mutes, reports,
rate limits and the audit log; live on both transports (the `chat_server` fixture)."""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta
from typing import Any

import aiohttp
import pytest
from asgiref.sync import sync_to_async
from django.contrib.auth import get_user_model
from django.test import Client
from django.utils import timezone
from websockets.exceptions import ConnectionClosed

from chat import access, moderation, reads, writepath
from chat.errors import ChatError
from chat.models import Membership, Message, ModerationAction, Report, Restriction, Room
from tests.conftest import Server
from tests.test_realtime import peer
from tests.test_serverless import session_cookies


def post_json(client: Client, url: str, data: Any) -> Any:
    return client.post(url, json.dumps(data), content_type="application/json")


@pytest.fixture
def room_mod(db: Any, room: Room) -> Any:
    """A moderator of `general` only: staff (to reach the admin) without any Django permission."""
    user = get_user_model().objects.create_user("roommod", password="pw-roommod-1", is_staff=True)
    room.moderators.add(user)
    return user


@pytest.fixture
def superuser(db: Any) -> Any:
    return get_user_model().objects.create_superuser("boss", password="pw-boss-123")


# --- the write path ---


def test_it_hides_and_restores_through_the_write_path(
    alice: Any, room_mod: Any, room: Room
) -> None:
    posted = writepath.post_message(alice, room, "rude words").message
    hidden = moderation.hide_message(room_mod, room, posted.pk, "rude")
    event = hidden.to_event()
    assert (event["seq"], event["deleted"], event["body"]) == (2, True, "")
    stored = Message.objects.get(pk=posted.pk)
    assert stored.hidden and stored.body == "rude words" and stored.seq == 2
    # The author cannot undo a moderator's hide by editing.
    with pytest.raises(ChatError) as info:
        writepath.edit_message(alice, room, posted.pk, "nice words")
    assert info.value.code == "forbidden"
    restored = moderation.restore_message(room_mod, room, posted.pk)
    assert restored.to_event()["body"] == "rude words" and restored.seq == 3
    resumed = reads.catch_up(room, 1).changes
    assert [(e["seq"], e["deleted"]) for e in resumed] == [(3, False)]
    assert list(ModerationAction.objects.values_list("action", "actor", "reason")) == [
        ("restore", room_mod.pk, ""),
        ("hide", room_mod.pk, "rude"),
    ]


def test_it_erases_for_good(alice: Any, superuser: Any, room: Room) -> None:
    posted = writepath.post_message(alice, room, "doxxing").message
    moderation.erase_message(superuser, room, posted.pk, "personal data")
    stored = Message.objects.get(pk=posted.pk)
    assert (stored.body, stored.deleted, stored.seq) == ("", True, 2)
    assert ModerationAction.objects.get().action == "erase"


def test_a_room_moderator_cannot_act_in_another_room(
    alice: Any, bob: Any, room_mod: Any, room: Room
) -> None:
    other = Room.objects.create(slug="other", title="Other")
    posted = writepath.post_message(alice, other, "hello").message
    for act in (
        lambda: moderation.hide_message(room_mod, other, posted.pk),
        lambda: moderation.erase_message(room_mod, other, posted.pk),
        lambda: moderation.moderate_room(room_mod, other, {"locked": True}),
        lambda: moderation.restrict(room_mod, bob, "ban", other),
        lambda: moderation.restrict(room_mod, bob, "ban", None),
    ):
        with pytest.raises(ChatError) as info:
            act()
        assert info.value.code == "forbidden"
    other.refresh_from_db()
    assert not other.locked and other.seq == 1
    assert not Restriction.objects.exists() and not ModerationAction.objects.exists()


def test_the_api_refuses_all_of_it_to_ordinary_users(alice: Any, bob: Any, room: Room) -> None:
    posted = writepath.post_message(alice, room, "mine").message
    client = Client()
    client.force_login(bob)
    base = f"/api/rooms/general/messages/{posted.pk}"
    for url, data in (
        (f"{base}/hide", {}),
        (f"{base}/restore", {}),
        (f"{base}/erase", {}),
        ("/api/rooms/general/moderate", {"locked": True}),
        ("/api/moderation/restrictions", {"user": "alice", "kind": "ban", "room": "general"}),
        ("/api/moderation/restrictions", {"user": "alice", "kind": "mute"}),
    ):
        response = post_json(client, url, data)
        assert response.status_code == 403, url
        assert response.json()["error"] == "forbidden"
    row = Restriction.objects.create(kind="mute", user=alice)
    assert client.delete(f"/api/moderation/restrictions/{row.pk}").status_code == 403
    room.refresh_from_db()
    assert not room.locked and room.seq == 1
    assert Message.objects.get().body == "mine" and not Message.objects.get().hidden
    assert Restriction.objects.count() == 1 and not ModerationAction.objects.exists()


def test_a_muted_user_may_read_but_not_post(
    alice: Any, bob: Any, room_mod: Any, room: Room
) -> None:
    moderation.restrict(room_mod, bob, "mute", room, reason="spam")
    client = Client()
    client.force_login(bob)
    response = post_json(client, "/api/rooms/general/messages", {"body": "hi"})
    assert response.status_code == 403 and response.json()["error"] == "forbidden"
    assert client.get("/api/rooms/general/messages").status_code == 200
    assert not Message.objects.exists()
    # Lifted, and an expired mute no longer applies.
    moderation.lift(room_mod, Restriction.objects.get())
    Restriction.objects.create(kind="mute", user=bob, until=timezone.now() - timedelta(seconds=1))
    assert post_json(client, "/api/rooms/general/messages", {"body": "hi"}).status_code == 201
    assert list(ModerationAction.objects.values_list("action", flat=True)) == ["lift_mute", "mute"]


def test_a_banned_user_can_neither_read_nor_post(bob: Any, superuser: Any, room: Room) -> None:
    moderation.restrict(superuser, bob, "ban", None, timezone.now() + timedelta(days=1), "abuse")
    client = Client()
    client.force_login(bob)
    assert client.get("/api/rooms/general/messages").status_code == 403
    assert post_json(client, "/api/rooms/general/messages", {"body": "x"}).status_code == 403
    assert post_json(client, "/api/ws-token", {}).status_code == 403
    assert access.site_banned(bob)


def test_deactivating_a_user_is_a_site_ban(bob: Any) -> None:
    bob.is_active = False
    bob.save()
    entry = ModerationAction.objects.get()
    assert (entry.action, entry.target_user_id) == ("deactivate", bob.pk)
    bob.save(update_fields=["last_login"])  # saves that do not deactivate are not logged
    assert ModerationAction.objects.count() == 1


def test_the_room_rate_limit(alice: Any, room_mod: Any, room: Room) -> None:
    moderation.moderate_room(room_mod, room, {"rate_limit": 2})
    client = Client()
    client.force_login(alice)
    for i in range(2):
        assert (
            post_json(client, "/api/rooms/general/messages", {"body": f"m{i}"}).status_code == 201
        )
    response = post_json(client, "/api/rooms/general/messages", {"body": "one too many"})
    assert response.status_code == 429
    assert response.json()["error"] == "rate_limited" and 0 < response.json()["retry_after"] <= 60
    assert int(response["Retry-After"]) >= 1
    assert Message.objects.count() == 2
    # Moderators are not limited.
    for i in range(3):
        writepath.post_message(room_mod, room, f"mod {i}")


def test_reports_over_the_api(alice: Any, bob: Any, room: Room) -> None:
    posted = writepath.post_message(alice, room, "spam").message
    client = Client()
    client.force_login(bob)
    url = f"/api/rooms/general/messages/{posted.pk}/report"
    assert post_json(client, url, {"reason": "spam"}).status_code == 201
    assert post_json(client, url, {"reason": "spam"}).status_code == 201  # safe to retry
    assert post_json(client, url, {}).status_code == 400
    assert (
        post_json(client, "/api/rooms/general/messages/999/report", {"reason": "x"}).status_code
        == 404
    )
    assert list(Report.objects.values_list("reporter", "reason")) == [(bob.pk, "spam")]


def test_the_admin_is_the_moderators_console(
    alice: Any, bob: Any, room_mod: Any, superuser: Any, room: Room
) -> None:
    other = Room.objects.create(slug="other", title="Other")
    mine = writepath.post_message(alice, room, "bad").message
    theirs = writepath.post_message(alice, other, "elsewhere").message
    Report.objects.create(message=mine, reporter=bob, reason="bad")
    client = Client()
    client.force_login(room_mod)
    listing = client.get("/admin/chat/message/")
    assert listing.status_code == 200
    assert b"elsewhere" not in listing.content  # only the rooms they moderate
    response = client.post(
        "/admin/chat/message/",
        {"action": "hide", "_selected_action": [mine.pk, theirs.pk], "index": 0},
    )
    assert response.status_code == 302
    assert Message.objects.get(pk=mine.pk).hidden
    assert not Message.objects.get(pk=theirs.pk).hidden
    assert client.get("/admin/chat/report/").status_code == 200
    assert client.get("/admin/moderation/").status_code == 200
    # The audit log is read-only, even for a superuser.
    boss = Client()
    boss.force_login(superuser)
    log = ModerationAction.objects.get()
    assert boss.get("/admin/chat/moderationaction/").status_code == 200
    assert (
        boss.post(f"/admin/chat/moderationaction/{log.pk}/delete/", {"post": "yes"}).status_code
        == 403
    )
    assert boss.get("/admin/chat/moderationaction/add/").status_code == 403
    # Locking from the room's change form goes through the write path.
    page = boss.get(f"/admin/chat/room/{room.pk}/change/")
    assert page.status_code == 200
    response = boss.post(
        "/admin/chat/room/",
        {"action": "lock", "_selected_action": [room.pk], "index": 0},
    )
    assert response.status_code == 302
    room.refresh_from_db()
    assert room.locked
    assert ModerationAction.objects.filter(action="room", actor=superuser).exists()
    # Ordinary users reach none of it.
    nobody = Client()
    nobody.force_login(bob)
    assert nobody.get("/admin/chat/message/").status_code == 302
    assert nobody.get("/admin/moderation/").status_code == 302


def test_the_dashboard_shows_each_moderator_their_rooms(
    alice: Any, bob: Any, outsider: Any, room_mod: Any, superuser: Any, room: Room
) -> None:
    other = Room.objects.create(slug="other", title="Other")
    twice = writepath.post_message(alice, room, "reported twice").message
    once = writepath.post_message(alice, room, "reported once").message
    elsewhere = writepath.post_message(alice, other, "reported elsewhere").message
    for reporter, message in ((bob, twice), (outsider, twice), (bob, once), (bob, elsewhere)):
        moderation.report_message(reporter, message.room, message.pk, "spam")
    moderation.hide_message(room_mod, room, once.pk, "first warning")
    moderation.moderate_room(superuser, other, {"locked": True}, "cooling off")

    def page(user: Any) -> str:
        client = Client()
        client.force_login(user)
        response = client.get("/admin/moderation/")
        assert response.status_code == 200
        return response.content.decode()

    mine = page(room_mod)
    # The most reported first; only the rooms they moderate; the latest actions with the reason.
    assert mine.index("reported twice") < mine.index("reported once")
    assert "reported elsewhere" not in mine and "cooling off" not in mine
    assert "first warning" in mine and ">hidden<" in mine
    everything = page(superuser)
    assert "reported elsewhere" in everything and "cooling off" in everything
    # Staff who moderate nothing are refused; ordinary users are sent to log in.
    staff = get_user_model().objects.create_user("staffer", password="pw-staffer-1", is_staff=True)
    client = Client()
    client.force_login(staff)
    assert client.get("/admin/moderation/").status_code == 403
    client.force_login(bob)
    assert client.get("/admin/moderation/").status_code == 302


# --- live, on both transports ---

pytestmark_live = pytest.mark.django_db(transaction=True)


async def _http(server: Server, user: Any) -> aiohttp.ClientSession:
    """A logged-in browser session on the server under test (CSRF pair and Origin included)."""
    cookies, headers = await sync_to_async(session_cookies)(user)
    headers["Origin"] = server.url
    return aiohttp.ClientSession(
        server.url, cookies=cookies, headers=headers, cookie_jar=aiohttp.CookieJar(unsafe=True)
    )


async def _poll_messages(http: aiohttp.ClientSession, after: int) -> list[dict[str, Any]]:
    """Long-poll until message events come (presence and the like also wake a poll)."""
    while True:
        async with http.get(f"/api/rooms/general/poll?after={after}&timeout=10") as answer:
            got = [e for e in (await answer.json())["events"] if e["type"] == "message"]
        if got:
            return got


@pytestmark_live
async def test_an_admin_hide_reaches_websocket_long_poll_and_resume(
    chat_server: Server,
    alice: Any,
    bob: Any,
    superuser: Any,
    room: Room,
) -> None:
    posted = (await sync_to_async(writepath.post_message)(alice, room, "rude")).message
    b = await peer(chat_server, bob)
    await b.subscribe("general", after=1)
    async with (
        await _http(chat_server, alice) as poller,
        await _http(chat_server, superuser) as admin,
    ):
        poll = asyncio.ensure_future(_poll_messages(poller, after=1))
        await asyncio.sleep(0.5)
        form = {"action": "hide", "_selected_action": str(posted.pk), "index": "0"}
        async with admin.post("/admin/chat/message/", data=form, allow_redirects=False) as r:
            assert r.status == 302, await r.text()
        assert await sync_to_async(lambda: Message.objects.get(pk=posted.pk).hidden)()
        live = await b.next("message")
        assert (live["id"], live["seq"], live["deleted"], live["body"]) == (posted.pk, 2, True, "")
        polled = await asyncio.wait_for(poll, 15)
        assert [(e["id"], e["deleted"]) for e in polled] == [(posted.pk, True)]
    resumer = await peer(chat_server, alice)
    assert (await resumer.subscribe("general", after=1))["seq"] == 2
    assert (await resumer.next("message"))["deleted"] is True
    await b.ws.close()
    await resumer.ws.close()


@pytestmark_live
async def test_restore_and_erase_reach_websocket_long_poll_and_resume(
    chat_server: Server,
    alice: Any,
    bob: Any,
    superuser: Any,
    room: Room,
) -> None:
    posted = (await sync_to_async(writepath.post_message)(alice, room, "borderline")).message
    await sync_to_async(moderation.hide_message)(superuser, room, posted.pk, "check")
    b = await peer(chat_server, bob)
    await b.subscribe("general", after=2)
    async with (
        await _http(chat_server, alice) as poller,
        await _http(chat_server, superuser) as admin,
    ):
        for action, seq, deleted, body in (
            ("restore", 3, False, "borderline"),
            ("erase", 4, True, ""),
        ):
            poll = asyncio.ensure_future(_poll_messages(poller, after=seq - 1))
            form = {"action": action, "_selected_action": str(posted.pk), "index": "0"}
            async with admin.post("/admin/chat/message/", data=form, allow_redirects=False) as r:
                assert r.status == 302, await r.text()
            live = await b.next("message")
            assert (live["id"], live["seq"], live["deleted"], live["body"]) == (
                posted.pk,
                seq,
                deleted,
                body,
            )
            polled = await asyncio.wait_for(poll, 15)
            assert [(e["seq"], e["deleted"], e["body"]) for e in polled] == [(seq, deleted, body)]
    stored = await sync_to_async(Message.objects.get)(pk=posted.pk)
    assert (stored.body, stored.deleted, stored.hidden) == ("", True, False)
    # A client that saw only the post learns the final state, once, on resume.
    resumer = await peer(chat_server, alice)
    assert (await resumer.subscribe("general", after=1))["seq"] == 4
    final = await resumer.next("message")
    assert (final["seq"], final["deleted"], final["body"]) == (4, True, "")
    await resumer.nothing_more()
    actions = await sync_to_async(
        lambda: list(ModerationAction.objects.order_by("id").values_list("action", flat=True))
    )()
    assert actions == ["hide", "restore", "erase"]
    await b.ws.close()
    await resumer.ws.close()


@pytestmark_live
async def test_a_lock_is_live_and_refuses_posts(
    chat_server: Server,
    bob: Any,
    room_mod: Any,
    room: Room,
) -> None:
    b = await peer(chat_server, bob)
    await b.subscribe("general")
    assert (await b.next("room"))["locked"] is False  # the state as of the subscribe
    async with await _http(chat_server, room_mod) as mod:
        async with mod.post(
            "/api/rooms/general/moderate", json={"locked": True, "title": "Quiet"}
        ) as r:
            assert r.status == 200, await r.text()
    event = await b.next("room")
    assert event == {"type": "room", "room": "general", "locked": True, "title": "Quiet"}
    await b.send({"action": "sendmessage", "room": "general", "body": "hi", "client_id": "x"})
    assert (await b.next("error"))["code"] == "forbidden"
    assert await sync_to_async(Message.objects.count)() == 0
    await b.ws.close()
    # A client that was away during the lock learns it when it resumes.
    again = await peer(chat_server, bob)
    assert (await again.subscribe("general", after=0))["resumed"] is True
    assert await again.next("room") == event
    await again.ws.close()


@pytestmark_live
async def test_long_pollers_learn_of_a_lock_live_and_on_their_next_poll(
    chat_server: Server,
    bob: Any,
    room_mod: Any,
    room: Room,
) -> None:
    """Self-hosted, the hub wakes the poll with the room event; on Lambda the database wait sees
    the room's state change. Every answer also carries the state, for clients that were away."""

    async def poll_until_room_event(http: aiohttp.ClientSession) -> dict[str, Any]:
        while True:
            async with http.get("/api/rooms/general/poll?after=0&timeout=10") as answer:
                body = await answer.json()
            rooms = [e for e in body["events"] if e["type"] == "room"]
            if rooms:
                assert body["room"] == rooms[-1]
            # Woken by the event, or (if the lock came before this poll read the room) told by
            # the state that every answer carries.
            if body["room"]["locked"]:
                return body["room"]

    async with await _http(chat_server, bob) as poller, await _http(chat_server, room_mod) as mod:
        async with poller.get("/api/rooms/general/poll?after=0&timeout=0") as answer:
            assert (await answer.json())["room"]["locked"] is False
        waiting = asyncio.ensure_future(poll_until_room_event(poller))
        async with mod.post("/api/rooms/general/moderate", json={"locked": True}) as r:
            assert r.status == 200, await r.text()
        event = await asyncio.wait_for(waiting, 15)
        assert (event["type"], event["locked"]) == ("room", True)
        async with poller.get("/api/rooms/general/poll?after=0&timeout=0") as answer:
            assert (await answer.json())["room"] == event


async def _presence(who: Any, users: list[str], timeout: float = 10) -> None:
    """Wait for the presence list to become `users` (earlier lists may still be on the way)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while (event := await who.next("presence", timeout=timeout))["users"] != users:
        assert asyncio.get_running_loop().time() < deadline, f"presence stayed {event['users']}"


@pytestmark_live
async def test_making_a_room_private_drops_those_who_may_no_longer_read_it(
    chat_server: Server,
    alice: Any,
    bob: Any,
    room_mod: Any,
    room: Room,
) -> None:
    await sync_to_async(Membership.objects.create)(room=room, user=alice)
    a, b = await peer(chat_server, alice), await peer(chat_server, bob)
    await a.subscribe("general")
    await b.subscribe("general")
    await _presence(a, ["alice", "bob"])
    async with await _http(chat_server, room_mod) as mod:
        async with mod.post("/api/rooms/general/moderate", json={"private": True}) as r:
            assert r.status == 200, await r.text()
    # Bob, not a member, is told and stops receiving the room; his socket stays open.
    error = await b.next("error")
    assert (error["code"], error["room"]) == ("forbidden", "general")
    assert error.get("fatal") is not True
    # ...and the others see him leave the room's presence, on every transport.
    await _presence(a, ["alice"])
    await a.send({"action": "sendmessage", "room": "general", "body": "members only"})
    assert (await a.next("message"))["body"] == "members only"
    await b.nothing_more(within=1.0)
    await b.send({"action": "ping"})
    assert (await b.next("pong")) == {"type": "pong"}
    await b.send({"action": "subscribe", "room": "general"})
    assert (await b.next("error"))["code"] == "not_found"
    await a.ws.close()
    await b.ws.close()


@pytestmark_live
async def test_a_banned_users_socket_is_closed_and_cannot_reconnect(
    chat_server: Server,
    bob: Any,
    superuser: Any,
    room: Room,
) -> None:
    b = await peer(chat_server, bob)
    await b.subscribe("general")
    async with await _http(chat_server, superuser) as admin:
        body = {"user": "bob", "kind": "ban", "reason": "abuse"}
        async with admin.post("/api/moderation/restrictions", json=body) as r:
            assert r.status == 201, await r.text()
    assert await sync_to_async(access.site_banned)(bob)
    # Told why, then closed by the server.
    told = await b.next("error", timeout=10)
    assert (told["code"], told.get("fatal")) == ("forbidden", True)
    with pytest.raises(ConnectionClosed):
        await b.next(timeout=10)
    with pytest.raises(Exception) as info:
        await peer(chat_server, bob)
    assert "403" in str(info.value) or "4403" in str(info.value)
    entry = await sync_to_async(ModerationAction.objects.get)()
    assert (entry.action, entry.target_user_id, entry.reason) == ("ban", bob.pk, "abuse")


@pytestmark_live
async def test_a_muted_user_cannot_post_and_limits_answer_rate_limited(
    chat_server: Server,
    alice: Any,
    bob: Any,
    room_mod: Any,
    room: Room,
) -> None:
    await sync_to_async(moderation.restrict)(room_mod, bob, "mute", room)
    await sync_to_async(moderation.moderate_room)(room_mod, room, {"rate_limit": 1})
    b, a = await peer(chat_server, bob), await peer(chat_server, alice)
    await b.send({"action": "sendmessage", "room": "general", "body": "hi"})
    assert (await b.next("error"))["code"] == "forbidden"
    await a.send({"action": "sendmessage", "room": "general", "body": "one", "client_id": "a1"})
    assert (await a.next("ack"))["client_id"] == "a1"
    await a.send({"action": "sendmessage", "room": "general", "body": "two", "client_id": "a2"})
    error = await a.next("error")
    assert error["code"] == "rate_limited" and 0 < error["retry_after"] <= 60
    await a.send({"action": "report", "room": "general", "id": 1, "reason": "x", "client_id": "r"})
    # id 1 may not be alice's message on a reused database; a report answers ack or not_found.
    answer = await a.next()
    assert answer["type"] in ("ack", "error")
    assert await sync_to_async(Message.objects.filter(author=bob).count)() == 0
    assert await sync_to_async(Message.objects.count)() == 1
    await a.ws.close()
    await b.ws.close()


def test_the_database_wait_sees_a_room_state_change(room_mod: Any, room: Room) -> None:
    """Lambda's long-poll re-reads the database; a lock is a room change, not a message."""
    from chat import events, longpoll

    before = events.room_state("general", False, "General")
    assert longpoll._reread(room.pk, 0, before) is None
    moderation.moderate_room(room_mod, room, {"locked": True})
    answer = longpoll._reread(room.pk, 0, before)
    assert answer == {"events": [events.room_state("general", True, "General")], "seq": 0}


@pytestmark_live
async def test_a_room_moderator_manages_their_room_in_the_admin_live(
    chat_server: Server,
    alice: Any,
    bob: Any,
    outsider: Any,
    private_room: Room,
) -> None:
    """Through the admin's change form: a rename reaches subscribers, a member taken out of the
    private room stops receiving it, and the moderators list stays out of their reach."""
    other = await sync_to_async(Room.objects.create)(slug="other", title="Other")
    mod = await sync_to_async(get_user_model().objects.create_user)(
        "secretmod", password="pw-secretmod-1", is_staff=True
    )
    await sync_to_async(private_room.moderators.add)(mod)
    bobs = await sync_to_async(Membership.objects.get)(room=private_room, user=bob)
    alices = await sync_to_async(Membership.objects.get)(room=private_room, user=alice)
    b = await peer(chat_server, bob)
    await b.subscribe("secret")
    assert (await b.next("room"))["title"] == "Secret"
    form = {
        "title": "Renamed",
        "private": "on",
        "rate_limit": "5",
        "moderators": [str(bob.pk)],  # read-only for a room moderator: ignored
        "memberships-TOTAL_FORMS": "3",
        "memberships-INITIAL_FORMS": "2",
        "memberships-MIN_NUM_FORMS": "0",
        "memberships-MAX_NUM_FORMS": "1000",
        "memberships-0-id": str(alices.pk),
        "memberships-0-room": str(private_room.pk),
        # Named by username: a room moderator may not list the site's users.
        "memberships-0-user": "alice",
        "memberships-1-id": str(bobs.pk),
        "memberships-1-room": str(private_room.pk),
        "memberships-1-user": "bob",
        "memberships-1-DELETE": "on",
        "memberships-2-room": str(private_room.pk),
        "memberships-2-user": "mallory",
        "_save": "Save",
    }
    async with await _http(chat_server, mod) as admin:
        url = f"/admin/chat/room/{private_room.pk}/change/"
        async with admin.post(url, data=form, allow_redirects=False) as r:
            assert r.status == 302, await r.text()
        # Another room's form is not theirs: the admin answers as for a room that does not exist.
        async with admin.get(f"/admin/chat/room/{other.pk}/change/", allow_redirects=False) as r:
            assert (r.status, r.headers["Location"]) == (302, "/admin/")
    renamed = await b.next("room")
    assert (renamed["title"], renamed["locked"]) == ("Renamed", False)
    error = await b.next("error")
    assert (error["code"], error["room"]) == ("forbidden", "secret")
    await b.ws.close()
    room = await sync_to_async(Room.objects.get)(pk=private_room.pk)
    assert (room.title, room.rate_limit) == ("Renamed", 5)
    moderators = await sync_to_async(
        lambda: list(room.moderators.values_list("username", flat=True))
    )()
    assert moderators == ["secretmod"]
    members = await sync_to_async(
        lambda: sorted(room.memberships.values_list("user__username", flat=True))
    )()
    assert members == ["alice", "mallory"]
    actions = await sync_to_async(
        lambda: sorted(ModerationAction.objects.filter(actor=mod).values_list("action", flat=True))
    )()
    assert actions == ["room", "room_people"]


def test_an_admin_save_never_writes_back_an_old_seq(
    alice: Any, superuser: Any, room: Room, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The admin reads the room, a post takes the next seq, the admin saves: the room keeps its
    seq, and the next post is stored (it would collide with a seq written back)."""
    from chat.admin import RoomAdmin

    read = RoomAdmin.get_object

    def read_then_post(self: Any, request: Any, object_id: Any, from_field: Any = None) -> Any:
        room = read(self, request, object_id, from_field)
        if request.method == "POST":
            writepath.post_message(alice, room, "meanwhile")
        return room

    monkeypatch.setattr(RoomAdmin, "get_object", read_then_post)
    client = Client()
    client.force_login(superuser)
    url = f"/admin/chat/room/{room.pk}/change/"
    form = {
        "slug": "general",
        "title": "Renamed",
        "rate_limit": "0",
        "memberships-TOTAL_FORMS": "0",
        "memberships-INITIAL_FORMS": "0",
        "memberships-MIN_NUM_FORMS": "0",
        "memberships-MAX_NUM_FORMS": "1000",
        "_save": "Save",
    }
    assert client.post(url, form).status_code == 302
    room.refresh_from_db()
    assert (room.title, room.seq) == ("Renamed", 1)
    assert writepath.post_message(alice, room, "after the save").message.seq == 2


def test_a_site_view_permission_does_not_grant_change_or_delete(
    alice: Any, room: Room, superuser: Any
) -> None:
    from django.contrib.auth.models import Permission

    viewer = get_user_model().objects.create_user("viewer", password="pw-viewer-1", is_staff=True)
    viewer.user_permissions.add(
        *Permission.objects.filter(codename__in=["view_room", "view_restriction"])
    )
    row = moderation.restrict(superuser, alice, "mute", room)
    client = Client()
    client.force_login(viewer)
    assert client.get(f"/admin/chat/room/{room.pk}/change/").status_code == 200  # a view
    assert client.post(f"/admin/chat/room/{room.pk}/change/", {"title": "x"}).status_code == 403
    assert (
        client.post(f"/admin/chat/restriction/{row.pk}/delete/", {"post": "yes"}).status_code == 403
    )
    assert Restriction.objects.filter(pk=row.pk).exists()


@pytestmark_live
async def test_moderation_control_never_wakes_a_long_poll(
    server: Server, alice: Any, bob: Any, room: Room
) -> None:
    """Moderation's control travels on a channel of its own: a re-check of the room's readers
    reaches the sockets (which check their user), while a long-poll waiting in the same room is
    not woken, since nothing in the room changed."""
    from chat import fanout

    b = await peer(server, bob)
    await b.subscribe("general")
    async with await _http(server, alice) as poller:
        async with poller.get("/api/rooms/general/poll?after=0&timeout=0") as answer:
            assert answer.status == 200  # alice is present now: her own arrival wakes nothing
        waiting = asyncio.ensure_future(poller.get("/api/rooms/general/poll?after=0&timeout=3"))
        await asyncio.sleep(0.3)  # the poll is parked on the hub before the re-check
        await sync_to_async(fanout.recheck)(room.pk)
        answer = await asyncio.wait_for(waiting, 10)
        body = await answer.json()
    # Nothing in the room changed: no room event, no message (who is online may change).
    assert [e for e in body["events"] if e["type"] != "presence"] == [] and body["seq"] == 0
    # Bob may still read the room: his socket carries on receiving it.
    await sync_to_async(writepath.post_message)(alice, room, "still here")
    assert (await b.next("message"))["body"] == "still here"
    await b.ws.close()


def test_lifting_an_unknown_restriction_tells_a_non_moderator_nothing(
    alice: Any, room_mod: Any
) -> None:
    """The refusal is the same whether the id exists or not (no probing ids)."""
    row = Restriction.objects.create(kind="mute", user=alice)
    client = Client()
    client.force_login(alice)
    for pk in (row.pk, row.pk + 1000):
        answer = client.delete(f"/api/moderation/restrictions/{pk}")
        assert (answer.status_code, answer.json()["error"]) == (403, "forbidden")
    client.force_login(room_mod)
    assert client.delete(f"/api/moderation/restrictions/{row.pk + 1000}").status_code == 404
    assert Restriction.objects.filter(pk=row.pk).exists()
