"""Replies, reactions, html and hidden: what message events carry, and what is refused."""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.test import Client

from chat import moderation, writepath
from chat.errors import ChatError
from chat.models import Message, Reaction, Restriction, Room


@pytest.fixture
def moderator(moderator: Any, room: Room) -> Any:
    """The site moderator, also one of `general`'s own (hiding and locking need no more)."""
    room.moderators.add(moderator)
    return moderator


def post_json(client: Client, url: str, data: Any) -> Any:
    return client.post(url, json.dumps(data), content_type="application/json")


@pytest.fixture
def as_bob(bob: Any) -> Client:
    client = Client()
    client.force_login(bob)
    return client


def test_a_reply_carries_its_parents_excerpt(alice: Any, bob: Any, room: Room) -> None:
    parent = writepath.post_message(alice, room, "where  is\nthe meeting?").message
    reply = writepath.post_message(bob, room, "room 4", reply_to=parent.pk).message
    event = Message.objects.with_author().get(pk=reply.pk).to_event()
    assert event["reply_to"] == {
        "id": parent.pk,
        "seq": parent.posted_seq,
        "author": "alice",
        "excerpt": "where is the meeting?",
        "deleted": False,
    }
    assert Message.objects.for_room(room).events(room.slug)[-1] == event
    # The live event (built by the write path) says the same, the parent's seq included.
    assert reply.to_event()["reply_to"] == event["reply_to"]
    # Edited since, the parent keeps the seq it was posted at: older events still find it.
    writepath.edit_message(alice, room, parent.pk, "where is the meeting now?")
    again = Message.objects.with_author().get(pk=reply.pk).to_event()
    assert again["reply_to"]["seq"] == parent.posted_seq


def test_a_long_parent_is_cut_short(alice: Any, room: Room) -> None:
    parent = writepath.post_message(alice, room, "x" * 500).message
    reply = writepath.post_message(alice, room, "re", reply_to=parent.pk).message
    excerpt = reply.to_event()["reply_to"]["excerpt"]
    assert len(excerpt) == 100 and excerpt.endswith("…")


def test_a_deleted_or_hidden_parent_says_so_never_its_text(
    alice: Any, bob: Any, moderator: Any, room: Room
) -> None:
    first = writepath.post_message(alice, room, "secret one").message
    second = writepath.post_message(bob, room, "secret two").message
    reply_1 = writepath.post_message(bob, room, "a", reply_to=first.pk).message
    reply_2 = writepath.post_message(alice, room, "b", reply_to=second.pk).message
    writepath.delete_message(alice, room, first.pk)
    moderation.hide_message(moderator, room, second.pk)
    events = {e["id"]: e for e in Message.objects.for_room(room).events(room.slug)}
    assert events[reply_1.pk]["reply_to"]["excerpt"] == "message deleted"
    assert events[reply_2.pk]["reply_to"]["excerpt"] == "removed by a moderator"
    assert "secret" not in json.dumps(events)


def test_it_refuses_a_reply_to_another_rooms_message(alice: Any, room: Room) -> None:
    other = Room.objects.create(slug="other", title="Other")
    elsewhere = writepath.post_message(alice, other, "there").message
    for bad in (elsewhere.pk, 999999, "abc", True, 1.5, [1]):
        with pytest.raises(ChatError) as caught:
            writepath.post_message(alice, room, "re", reply_to=bad)
        assert caught.value.code == "bad_request"
    assert not Message.objects.filter(room=room).exists()


def test_the_api_posts_a_reply(as_bob: Client, alice: Any, room: Room) -> None:
    parent = writepath.post_message(alice, room, "hello").message
    answer = post_json(as_bob, "/api/rooms/general/messages", {"body": "hi", "reply_to": parent.pk})
    assert answer.status_code == 201
    assert answer.json()["reply_to"]["id"] == parent.pk
    refused = post_json(as_bob, "/api/rooms/general/messages", {"body": "x", "reply_to": 10**9})
    assert refused.status_code == 400 and refused.json()["error"] == "bad_request"
    assert Message.objects.filter(room=room).count() == 2


def test_a_reaction_toggles_and_takes_the_next_seq(alice: Any, bob: Any, room: Room) -> None:
    message = writepath.post_message(alice, room, "lunch?").message
    on = writepath.react(bob, room, message.pk, "👍")
    assert on.seq == message.seq + 1
    writepath.react(alice, room, message.pk, "👍")
    event = Message.objects.with_author().get(pk=message.pk).to_event()
    assert event["reactions"] == [{"emoji": "👍", "count": 2, "users": ["bob", "alice"]}]
    off = writepath.react(bob, room, message.pk, "👍")
    assert off.to_event()["reactions"] == [{"emoji": "👍", "count": 1, "users": ["alice"]}]
    assert Room.objects.get(pk=room.pk).seq == off.seq
    # It resumes like an edit: the latest state at the latest seq.
    assert [
        e["reactions"] for e in Message.objects.for_room(room).after(message.seq).events(room.slug)
    ] == [[{"emoji": "👍", "count": 1, "users": ["alice"]}]]


def test_an_emoji_without_its_variation_selector_is_the_same(alice: Any, room: Room) -> None:
    message = writepath.post_message(alice, room, "x").message
    writepath.react(alice, room, message.pk, "❤")
    assert writepath.react(alice, room, message.pk, "❤️").reactions == []


@pytest.mark.parametrize("bad", ["", "hello", "👍👍", "a", "<b>", None, 1, True, ["👍"], {"e": 1}])
def test_it_refuses_what_is_not_a_reaction(alice: Any, room: Room, bad: Any) -> None:
    message = writepath.post_message(alice, room, "x").message
    with pytest.raises(ChatError) as caught:
        writepath.react(alice, room, message.pk, bad)
    assert caught.value.code == "bad_request"
    assert not Reaction.objects.exists()


def test_a_message_takes_at_most_twenty_different_reactions(alice: Any, room: Room) -> None:
    from chat.emoji import REACTIONS

    message = writepath.post_message(alice, room, "x").message
    for glyph in REACTIONS[:20]:
        writepath.react(alice, room, message.pk, glyph)
    with pytest.raises(ChatError) as caught:
        writepath.react(alice, room, message.pk, REACTIONS[20])
    assert caught.value.code == "bad_request"
    # One already there can still be added to.
    writepath.react(alice, room, message.pk, REACTIONS[0])
    assert Reaction.objects.filter(message=message).count() == 19


def test_deleted_messages_take_no_reactions(
    alice: Any, bob: Any, moderator: Any, room: Room
) -> None:
    gone = writepath.post_message(alice, room, "x").message
    hidden = writepath.post_message(alice, room, "y").message
    writepath.delete_message(alice, room, gone.pk)
    moderation.hide_message(moderator, room, hidden.pk)
    seq = Room.objects.get(pk=room.pk).seq
    for pk in (gone.pk, hidden.pk):
        with pytest.raises(ChatError) as caught:
            writepath.react(bob, room, pk, "👍")
        assert caught.value.code == "forbidden"
    assert not Reaction.objects.exists() and Room.objects.get(pk=room.pk).seq == seq


def test_muted_and_banned_users_cannot_react(
    alice: Any, bob: Any, moderator: Any, room: Room
) -> None:
    message = writepath.post_message(alice, room, "x").message
    moderation.restrict(moderator, bob, Restriction.MUTE, room)
    with pytest.raises(ChatError) as caught:
        writepath.react(bob, room, message.pk, "👍")
    assert caught.value.code == "forbidden"
    assert not Reaction.objects.exists()


def test_a_locked_room_takes_reactions_from_moderators_only(
    alice: Any, bob: Any, moderator: Any, room: Room
) -> None:
    message = writepath.post_message(alice, room, "x").message
    moderation.moderate_room(moderator, room, {"locked": True})
    room.refresh_from_db()
    with pytest.raises(ChatError) as caught:
        writepath.react(bob, room, message.pk, "👍")
    assert caught.value.code == "forbidden"
    writepath.react(moderator, room, message.pk, "👍")
    assert list(Reaction.objects.values_list("user__username", flat=True)) == ["mod"]


def test_the_reactions_endpoint_toggles(as_bob: Client, alice: Any, room: Room) -> None:
    message = writepath.post_message(alice, room, "x").message
    url = f"/api/rooms/general/messages/{message.pk}/reactions"
    answer = post_json(as_bob, url, {"emoji": "🎉"})
    assert answer.status_code == 200
    assert answer.json()["reactions"] == [{"emoji": "🎉", "count": 1, "users": ["bob"]}]
    assert post_json(as_bob, url, {"emoji": "nope"}).status_code == 400
    assert (
        post_json(
            as_bob, "/api/rooms/general/messages/99999/reactions", {"emoji": "🎉"}
        ).status_code
        == 404
    )
    assert Reaction.objects.count() == 1


def test_a_hidden_message_says_a_moderator_removed_it(
    alice: Any, moderator: Any, room: Room
) -> None:
    message = writepath.post_message(alice, room, "**rude**").message
    writepath.react(alice, room, message.pk, "👍")
    moderation.hide_message(moderator, room, message.pk)
    event = Message.objects.with_author().get(pk=message.pk).to_event()
    assert (event["deleted"], event["hidden"]) == (True, True)
    assert (event["body"], event["html"], event["reactions"]) == ("", "", [])
    own = writepath.post_message(alice, room, "mine").message
    deleted = writepath.delete_message(alice, room, own.pk).to_event()
    assert (deleted["deleted"], deleted["hidden"]) == (True, False)


def test_html_is_stored_on_post_and_edit(alice: Any, bob: Any, room: Room) -> None:
    message = writepath.post_message(alice, room, "hi **@bob**").message
    stored = Message.objects.get(pk=message.pk)
    assert (
        stored.html
        == '<p>hi <strong><span class="mention" data-user="bob">@bob</span></strong></p>'
    )
    writepath.edit_message(alice, room, message.pk, "_now_")
    assert Message.objects.get(pk=message.pk).html == "<p><em>now</em></p>"


def test_rows_without_html_are_rendered_when_read(alice: Any, room: Room) -> None:
    message = writepath.post_message(alice, room, "**old**").message
    Message.objects.filter(pk=message.pk).update(html="")
    assert (
        Message.objects.for_room(room).events(room.slug)[0]["html"] == "<p><strong>old</strong></p>"
    )


# --- retry-safe reactions ---


def test_a_retried_toggle_with_its_client_id_changes_nothing(
    alice: Any, bob: Any, room: Room
) -> None:
    message = writepath.post_message(alice, room, "x").message
    first = writepath.react(bob, room, message.pk, "👍", client_id="k1")
    for _ in range(2):
        again = writepath.react(bob, room, message.pk, "👍", client_id="k1")
        assert (again.pk, again.seq, again.reactions) == (first.pk, first.seq, first.reactions)
    assert Reaction.objects.filter(message=message, user=bob).count() == 1
    assert Room.objects.get(pk=room.pk).seq == first.seq
    # A new key is a new toggle; the old key, no longer the last, toggles again.
    off = writepath.react(bob, room, message.pk, "👍", client_id="k2")
    assert off.reactions == [] and off.seq == first.seq + 1


def test_a_key_per_emoji_so_two_toggles_in_flight_are_both_retry_safe(
    alice: Any, bob: Any, room: Room
) -> None:
    message = writepath.post_message(alice, room, "x").message
    writepath.react(bob, room, message.pk, "👍", client_id="a")
    writepath.react(bob, room, message.pk, "🎉", client_id="b")
    writepath.react(bob, room, message.pk, "👍", client_id="a")
    writepath.react(bob, room, message.pk, "🎉", client_id="b")
    assert set(Reaction.objects.values_list("emoji", flat=True)) == {"👍", "🎉"}


@pytest.mark.parametrize("other", [{"glyph": "🎉"}, {"on": True}, {"on": False}])
def test_a_client_id_reused_for_another_reaction_is_a_conflict(
    alice: Any, bob: Any, room: Room, other: dict[str, Any]
) -> None:
    message = writepath.post_message(alice, room, "x").message
    writepath.react(bob, room, message.pk, "👍", client_id="k")
    seq = Room.objects.get(pk=room.pk).seq
    with pytest.raises(ChatError) as caught:
        writepath.react(bob, room, message.pk, other.get("glyph", "👍"), other.get("on"), "k")
    assert caught.value.code == "conflict"
    assert list(Reaction.objects.values_list("emoji", flat=True)) == ["👍"]
    assert Room.objects.get(pk=room.pk).seq == seq


def test_explicit_state_is_idempotent_and_takes_no_seq_when_it_holds(
    alice: Any, bob: Any, room: Room
) -> None:
    message = writepath.post_message(alice, room, "x").message
    seq = message.seq
    for on, count, moved in ((True, 1, 1), (True, 1, 0), (False, 0, 1), (False, 0, 0)):
        changed = writepath.react(bob, room, message.pk, "❤", on)
        assert Reaction.objects.filter(emoji="❤️").count() == count
        seq += moved
        assert changed.seq == seq == Room.objects.get(pk=room.pk).seq


@pytest.mark.parametrize("bad", [1, 0, "true", "false", [], {}, "", 1.0])
def test_on_must_be_true_false_or_absent(alice: Any, room: Room, bad: Any) -> None:
    message = writepath.post_message(alice, room, "x").message
    with pytest.raises(ChatError) as caught:
        writepath.react(alice, room, message.pk, "👍", bad)
    assert caught.value.code == "bad_request" and not Reaction.objects.exists()


def test_the_endpoint_takes_on_and_client_id(as_bob: Client, alice: Any, room: Room) -> None:
    message = writepath.post_message(alice, room, "x").message
    url = f"/api/rooms/general/messages/{message.pk}/reactions"
    for _ in range(2):
        answer = post_json(as_bob, url, {"emoji": "🎉", "on": True})
        assert answer.status_code == 200 and answer.json()["reactions"][0]["count"] == 1
    for _ in range(2):
        answer = post_json(as_bob, url, {"emoji": "🎉", "client_id": "t"})
        assert answer.status_code == 200 and answer.json()["reactions"] == []
    answer = post_json(as_bob, url, {"emoji": "🎉", "client_id": "t", "on": True})
    assert answer.status_code == 409 and answer.json()["error"] == "conflict"
    assert post_json(as_bob, url, {"emoji": "🎉", "on": "yes"}).status_code == 400
    assert not Reaction.objects.exists()


def test_a_block_that_commits_after_the_checks_still_stops_a_reaction(
    alice: Any, bob: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from chat import access, dms
    from chat.models import Block

    dm, _ = dms.open_dm(alice, ["bob"])
    message = writepath.post_message(alice, dm, "x").message
    # The checks before the room lock pass; the block lands before the lock is taken.
    checked = access.check_can_post

    def check_then_block(user: Any, room: Room) -> None:
        checked(user, room)
        Block.objects.get_or_create(blocker=alice, blocked=bob)

    monkeypatch.setattr(writepath, "check_can_post", check_then_block)
    with pytest.raises(ChatError) as caught:
        writepath.react(bob, dm, message.pk, "👍")
    assert caught.value.code == "forbidden"
    assert not Reaction.objects.exists()
    assert Room.objects.get(pk=dm.pk).seq == message.seq


def test_too_much_markup_is_stored_as_text() -> None:
    from chat import apigateway, formatting

    body = "a.co " * 800
    html = formatting.render(body)
    assert html == formatting.plain(body) and "<a" not in html
    assert len(html.encode()) <= formatting.MAX_HTML
    assert formatting.render("a.co").startswith("<p><a ")
    assert formatting.plain("a<b\nc") == "<p>a&lt;b<br>\nc</p>"
    assert apigateway.MAX_POST >= 2 * formatting.MAX_HTML
