"""Search (`GET /api/search`) and opening a room at a message (`…/messages?around=`), on
PostgreSQL: the query syntax, order and paging, filters, what is never found, the highlight's
safety, and every kind of bad input."""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from chat import dms, moderation, search, writepath
from chat.models import Membership, Message, Restriction, Room


@pytest.fixture
def as_alice(alice: Any) -> Client:
    client = Client()
    client.force_login(alice)
    return client


def post(user: Any, room: Room, body: str) -> Message:
    return writepath.post_message(user, room, body).message


def find(client: Client, **query: Any) -> Any:
    return client.get("/api/search", query)


def bodies(answer: Any) -> list[str]:
    assert answer.status_code == 200, answer.content
    return [r["body"] for r in answer.json()["results"]]


@pytest.fixture
def talk(alice: Any, bob: Any, room: Room, private_room: Room) -> dict[str, Message]:
    """A few messages in a public room alice joined and in a private room she is in."""
    said = {
        "plan": post(alice, room, "The release plan is ready"),
        "review": post(bob, room, "Please review the release notes"),
        "lunch": post(bob, room, "Lunch plan: pizza or sushi"),
        "secret": post(bob, private_room, "The secret release date"),
    }
    return said


def test_it_is_built_on_a_stored_vector_and_a_gin_index(db: Any) -> None:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT is_generated FROM information_schema.columns"
            " WHERE table_name = 'chat_message' AND column_name = %s",
            [search.COLUMN],
        )
        assert cursor.fetchone() == ("ALWAYS",)
        cursor.execute(
            "SELECT indexdef, obj_description(indexrelid::regclass) FROM pg_indexes"
            " JOIN pg_index ON indexrelid = (schemaname || '.' || indexname)::regclass"
            " WHERE indexname = 'message_search'"
        )
        indexdef, comment = cursor.fetchone()
    assert "USING gin" in indexdef and "NOT deleted" in indexdef and "NOT hidden" in indexdef
    assert "chat.search.search" in comment


def test_it_finds_all_words_newest_first(as_alice: Client, talk: dict[str, Message]) -> None:
    assert bodies(find(as_alice, q="release")) == [
        "The secret release date",
        "Please review the release notes",
        "The release plan is ready",
    ]
    # Both words, in any order and case.
    assert bodies(find(as_alice, q="PLAN release")) == ["The release plan is ready"]


def test_it_reads_phrases_exclusions_and_or(as_alice: Client, talk: dict[str, Message]) -> None:
    assert bodies(find(as_alice, q='"release plan"')) == ["The release plan is ready"]
    assert bodies(find(as_alice, q='"plan release"')) == []
    assert bodies(find(as_alice, q="release -secret -notes")) == ["The release plan is ready"]
    assert bodies(find(as_alice, q="pizza or notes")) == [
        "Lunch plan: pizza or sushi",
        "Please review the release notes",
    ]


def test_each_result_has_the_documented_shape(
    as_alice: Client, talk: dict[str, Message], room: Room
) -> None:
    answer = find(as_alice, q="pizza")
    assert answer.status_code == 200
    [hit] = answer.json()["results"]
    message = Message.objects.get(pk=talk["lunch"].pk)
    assert hit == {
        "room": "general",
        "seq": message.seq,
        "id": message.pk,
        "author": "bob",
        "created": message.created.isoformat(),
        "body": "Lunch plan: pizza or sushi",
        "highlight": "Lunch plan: <mark>pizza</mark> or sushi",
    }
    assert answer.json()["rooms"] == {"general": "General"}
    assert answer.json()["next"] is None


def test_it_pages_with_before(as_alice: Client, alice: Any, room: Room) -> None:
    made = [post(alice, room, f"standup note {n}") for n in range(7)]
    seen: list[int] = []
    before = None
    for _ in range(4):
        query = {"q": "standup", "limit": 3} | ({"before": before} if before else {})
        answer = find(as_alice, **query).json()
        seen += [r["id"] for r in answer["results"]]
        before = answer["next"]
        if before is None:
            break
    assert seen == [m.pk for m in reversed(made)]
    # A message posted while paging comes on a new first page, never inside the old pages.
    post(alice, room, "standup note late")
    assert [r["id"] for r in find(as_alice, q="standup", before=made[3].pk).json()["results"]] == [
        m.pk for m in reversed(made[:3])
    ]


def test_it_filters_by_room_and_author(
    as_alice: Client, talk: dict[str, Message], room: Room
) -> None:
    assert bodies(find(as_alice, q="release", room="secret")) == ["The secret release date"]
    assert bodies(find(as_alice, q="release", author="alice")) == ["The release plan is ready"]
    assert bodies(find(as_alice, q="release", author="bob", room="general")) == [
        "Please review the release notes"
    ]
    assert bodies(find(as_alice, q="release", author="nobody-called-this")) == []


def test_it_never_finds_hidden_deleted_or_erased_messages(
    as_alice: Client, alice: Any, room: Room
) -> None:
    moderator = get_user_model().objects.create_superuser("boss")
    kept = post(alice, room, "budget kept")
    deleted = post(alice, room, "budget deleted")
    hidden = post(alice, room, "budget hidden")
    erased = post(alice, room, "budget erased")
    writepath.delete_message(alice, room, deleted.pk)
    moderation.hide_message(moderator, room, hidden.pk)
    moderation.erase_message(moderator, room, erased.pk)
    assert bodies(find(as_alice, q="budget")) == ["budget kept"]
    # Restored, it is found again: the vector follows the body, the index its state.
    moderation.restore_message(moderator, room, hidden.pk)
    assert bodies(find(as_alice, q="budget")) == ["budget hidden", "budget kept"]
    assert kept.pk


def test_it_finds_an_edited_message_by_its_new_words(
    as_alice: Client, alice: Any, room: Room
) -> None:
    message = post(alice, room, "meet at noon")
    writepath.edit_message(alice, room, message.pk, "meet at dawn")
    assert bodies(find(as_alice, q="noon")) == []
    assert bodies(find(as_alice, q="dawn")) == ["meet at dawn"]


def test_it_never_searches_rooms_left_removed_from_banned_or_others(
    as_alice: Client, alice: Any, bob: Any, outsider: Any, room: Room, private_room: Room
) -> None:
    post(alice, room, "zebra in general")
    post(bob, private_room, "zebra in secret")
    others, _ = dms.open_dm(bob, ["mallory"])
    post(bob, others, "zebra between bob and mallory")
    own_dm, _ = dms.open_dm(alice, ["bob"])
    post(bob, own_dm, "zebra for alice")
    elsewhere = Room.objects.create(slug="elsewhere", title="Elsewhere")
    post(bob, elsewhere, "zebra in a room alice never joined")
    assert sorted(bodies(find(as_alice, q="zebra"))) == [
        "zebra for alice",
        "zebra in general",
        "zebra in secret",
    ]
    # Left the public room, removed from the private one: neither is searched any more.
    Membership.objects.filter(user=alice, room__in=[room, private_room]).delete()
    assert bodies(find(as_alice, q="zebra")) == ["zebra for alice"]
    # Naming a room does not reach past that: a public room left, or never joined, is refused
    # (it could be read, but alice is not in it), an unreadable one is not found.
    for slug in ("general", "elsewhere"):
        refused = find(as_alice, q="zebra", room=slug)
        assert refused.status_code == 403 and "join" in refused.json()["detail"], slug
    assert find(as_alice, q="zebra", room="secret").status_code == 404
    assert find(as_alice, q="zebra", room=others.slug).status_code == 404
    Restriction.objects.create(kind=Restriction.BAN, user=alice, room=own_dm)
    assert bodies(find(as_alice, q="zebra")) == []
    assert find(as_alice, q="zebra", room=own_dm.slug).status_code == 403
    Restriction.objects.create(kind=Restriction.BAN, user=alice, room=None)
    assert find(as_alice, q="zebra").json()["error"] == "forbidden"


def test_a_dm_result_is_titled_by_the_other_person(as_alice: Client, alice: Any) -> None:
    get_user_model().objects.create_user("carol")
    dm, _ = dms.open_dm(alice, ["carol"])
    post(alice, dm, "hello carol")
    answer = find(as_alice, q="hello").json()
    assert answer["rooms"] == {dm.slug: "carol"}


HOSTILE = (
    '<script>alert("x")</script> &amp;lt;b&amp;gt; release'
    " <img src=x onerror=alert(1)> 'release' &#60;mark&#62;"
)


def test_the_highlight_carries_no_markup_from_the_message(
    as_alice: Client, alice: Any, room: Room
) -> None:
    post(alice, room, HOSTILE)
    # PostgreSQL's parser skips what looks like a tag (`<script>`), so "script" is no word here.
    assert bodies(find(as_alice, q="script")) == []
    [hit] = find(as_alice, q="release alert").json()["results"]
    assert hit["body"] == HOSTILE
    marked = hit["highlight"]
    # Only <mark> and </mark> are tags; every other < of the message is escaped.
    stripped = marked.replace("<mark>", "").replace("</mark>", "")
    assert "<" not in stripped and ">" not in stripped and '"' not in stripped
    assert "'" not in stripped
    assert marked.count("<mark>") == 4 and marked.count("</mark>") == 4
    assert "&lt;script&gt;<mark>alert</mark>(&quot;x&quot;)&lt;/script&gt;" in marked
    # A "&amp;" the message spelled out is escaped again, so it shows as typed.
    assert "&amp;amp;lt;b&amp;amp;gt;" in marked
    assert "&amp;#60;mark&amp;#62;" in marked
    # Unescaping gives the message back, exactly.
    import html

    assert html.unescape(stripped) == HOSTILE


def test_the_highlight_marks_words_not_parts_of_words() -> None:
    terms = search.parse("cat").terms
    assert search.highlight("Cat, concatenate cat_cat CAT.", terms) == (
        "<mark>Cat</mark>, concatenate <mark>cat</mark>_<mark>cat</mark> <mark>CAT</mark>."
    )


def test_it_costs_a_fixed_number_of_queries(
    as_alice: Client, alice: Any, bob: Any, room: Room, private_room: Room
) -> None:
    for n in range(5):
        post(alice if n % 2 else bob, room, f"count {n}")
        dm, _ = dms.open_dm(alice, [get_user_model().objects.create_user(f"p{n}").username])
        post(alice, dm, f"count in dm {n}")
    with CaptureQueriesContext(connection) as queries:
        answer = find(as_alice, q="count", limit=50)
    assert len(answer.json()["results"]) == 10
    assert len(answer.json()["rooms"]) == 6
    # session, user, site ban, memberships and readable rooms, rooms, results, DM members
    assert len(queries) <= 9, [q["sql"] for q in queries]


@pytest.mark.parametrize(
    "query, code",
    [
        ({}, "bad_request"),
        ({"q": ""}, "bad_request"),
        ({"q": "   \t\n "}, "bad_request"),
        ({"q": "-only -excluded"}, "bad_request"),
        ({"q": "or"}, "bad_request"),
        ({"q": '""'}, "bad_request"),
        ({"q": "!!! ???"}, "bad_request"),
        ({"q": "x" * (search.QUERY_MAX + 1)}, "too_large"),
        ({"q": "a\x00b"}, "bad_request"),
        ({"q": "ok", "limit": "0"}, "bad_request"),
        ({"q": "ok", "limit": str(search.LIMIT_MAX + 1)}, "bad_request"),
        ({"q": "ok", "limit": "١٢"}, "bad_request"),
        ({"q": "ok", "limit": "²"}, "bad_request"),
        ({"q": "ok", "limit": "-1"}, "bad_request"),
        ({"q": "ok", "limit": "1.0"}, "bad_request"),
        ({"q": "ok", "limit": " 5"}, "bad_request"),
        ({"q": "ok", "before": "١٢"}, "bad_request"),
        ({"q": "ok", "before": "0"}, "bad_request"),
        ({"q": "ok", "before": "abc"}, "bad_request"),
        ({"q": "ok", "before": "9" * 30}, "bad_request"),
        ({"q": "ok", "room": "NOT A SLUG"}, "not_found"),
        ({"q": "ok", "room": "a\x00b"}, "bad_request"),
        ({"q": "ok", "room": "nowhere"}, "not_found"),
        ({"q": "ok", "author": "a\x01b"}, "bad_request"),
        ({"q": "ok", "author": "x" * 200}, "not_found"),
    ],
)
def test_it_refuses_bad_input_clearly(
    as_alice: Client, talk: dict[str, Message], query: dict[str, str], code: str
) -> None:
    before = Message.objects.count()
    answer = find(as_alice, **query)
    assert answer.status_code in (400, 404, 413)
    assert answer.json()["error"] == code
    assert answer.json()["detail"]
    assert Message.objects.count() == before


@pytest.mark.parametrize(
    "value",
    [None, 1, 1.5, True, [], {}, ["word"], {"q": "word"}, "\ud800", "a\udfffb", "a\x00b"],
)
def test_the_search_function_refuses_every_wrong_type(alice: Any, value: Any) -> None:
    from chat.errors import ChatError

    with pytest.raises(ChatError) as refused:
        search.search(alice, value)
    assert refused.value.code == "bad_request"


@pytest.mark.parametrize("name", ["limit", "before", "room", "author"])
@pytest.mark.parametrize("value", [1.5, True, [], {}, ["1"], "\ud800", "a\x00b", "١"])
def test_the_search_function_refuses_every_wrong_filter(alice: Any, name: str, value: Any) -> None:
    from chat.errors import ChatError

    if name == "author" and value == "١":
        # A name of Arabic-Indic digits could be someone's: looked up, nobody, nothing found.
        assert search.search(alice, "word", author=value)["results"] == []
        return
    with pytest.raises(ChatError) as refused:
        search.search(alice, "word", **{name: value})
    # A slug or a username that cannot exist is not_found, like one that does not.
    assert refused.value.code in ("bad_request", "not_found"), (name, value)


def test_it_answers_only_get_and_only_logged_in(db: Any, as_alice: Client) -> None:
    assert Client().get("/api/search", {"q": "x"}).status_code == 401
    refused = as_alice.post("/api/search", json.dumps({"q": "x"}), content_type="application/json")
    assert refused.status_code == 405


# --- opening a room at a message: ?around= ---


@pytest.fixture
def numbered(alice: Any, room: Room) -> list[Message]:
    return [post(alice, room, f"message {n}") for n in range(1, 21)]


def around(client: Client, slug: str = "general", **query: Any) -> Any:
    return client.get(f"/api/rooms/{slug}/messages", query)


def page_bodies(answer: Any) -> list[str]:
    assert answer.status_code == 200, answer.content
    return [m["body"] for m in answer.json()["messages"]]


def test_around_answers_the_page_around_a_message(
    as_alice: Client, numbered: list[Message]
) -> None:
    answer = around(as_alice, around=numbered[9].seq, limit=5)
    assert page_bodies(answer) == [f"message {n}" for n in (8, 9, 10, 11, 12)]
    page = answer.json()
    assert page["anchor"] == numbered[9].pk
    assert page["has_older"] and page["has_newer"] and page["has_more"]
    # The cursors continue exactly where the page ends, either way.
    older = around(as_alice, before=page["older"], limit=3)
    assert page_bodies(older) == ["message 5", "message 6", "message 7"]
    newer = around(as_alice, newer_than=page["newer"], limit=3)
    assert page_bodies(newer) == ["message 13", "message 14", "message 15"]
    assert newer.json()["has_newer"] is True
    last = around(as_alice, newer_than=newer.json()["newer"], limit=50)
    assert page_bodies(last) == [f"message {n}" for n in range(16, 21)]
    assert last.json()["has_newer"] is False


def test_around_the_first_and_last_messages_fills_from_the_other_side(
    as_alice: Client, numbered: list[Message]
) -> None:
    first = around(as_alice, around=numbered[0].seq, limit=4)
    assert page_bodies(first) == ["message 1", "message 2", "message 3", "message 4"]
    assert first.json()["has_older"] is False and first.json()["has_newer"] is True
    last = around(as_alice, around=numbered[-1].seq, limit=4)
    assert page_bodies(last) == ["message 17", "message 18", "message 19", "message 20"]
    assert last.json()["has_older"] is True and last.json()["has_newer"] is False
    assert last.json()["anchor"] == numbered[-1].pk


def test_around_an_edited_message_finds_it_by_either_seq(
    as_alice: Client, alice: Any, room: Room, numbered: list[Message]
) -> None:
    target = numbered[4]
    edited = writepath.edit_message(alice, room, target.pk, "message 5, edited")
    for seq in (target.posted_seq, edited.seq):
        answer = around(as_alice, around=seq, limit=3)
        assert page_bodies(answer) == ["message 4", "message 5, edited", "message 6"]
        assert answer.json()["anchor"] == target.pk


def test_around_a_seq_no_message_holds_centres_on_that_position(
    as_alice: Client, alice: Any, room: Room, numbered: list[Message]
) -> None:
    writepath.edit_message(alice, room, numbered[2].pk, "edited once")
    superseded = Message.objects.get(pk=numbered[2].pk).seq
    writepath.edit_message(alice, room, numbered[2].pk, "edited twice")
    answer = around(as_alice, around=superseded, limit=2)
    assert answer.json()["anchor"] is None
    assert page_bodies(answer) == ["message 19", "message 20"]
    assert answer.json()["has_newer"] is False


def test_around_refuses_a_seq_ahead_of_the_room_and_limits_out_of_bounds(
    as_alice: Client, room: Room, numbered: list[Message]
) -> None:
    room.refresh_from_db()
    assert around(as_alice, around=room.seq + 1).json()["error"] == "bad_request"
    for limit in ("0", "101", "-1", "١"):
        assert around(as_alice, around=1, limit=limit).status_code == 400
    for value in ("", "x", "١٢", "1.5", "9" * 30):
        assert around(as_alice, around=value).status_code == 400
    assert len(page_bodies(around(as_alice, around=5, limit=1))) == 1
    assert len(page_bodies(around(as_alice, around=5, limit=100))) == 20


def test_around_the_seq_of_another_room_stays_in_this_room(
    as_alice: Client, alice: Any, numbered: list[Message]
) -> None:
    other = Room.objects.create(slug="other", title="Other")
    for n in range(30):
        post(alice, other, f"other {n}")
    foreign = Message.objects.filter(room=other).order_by("-seq").first()
    answer = around(as_alice, slug="other", around=foreign.seq, limit=3)
    assert answer.json()["anchor"] == foreign.pk
    # In general that seq is ahead of the room: refused, nothing of the other room shown.
    refused = around(as_alice, around=foreign.seq, limit=3)
    assert refused.json()["error"] == "bad_request"
    inside = around(as_alice, around=numbered[1].seq, limit=3)
    assert all(m["room"] == "general" for m in inside.json()["messages"])


def test_around_an_empty_room(as_alice: Client, room: Room) -> None:
    answer = around(as_alice, around=0, limit=10)
    assert answer.json() == {
        "messages": [],
        "anchor": None,
        "has_older": False,
        "has_newer": False,
        "has_more": False,
        "older": 1,
        "newer": 0,
    }


def test_around_costs_a_fixed_number_of_queries(as_alice: Client, numbered: list[Message]) -> None:
    around(as_alice, around=numbered[3].seq, limit=10)
    with CaptureQueriesContext(connection) as queries:
        answer = around(as_alice, around=numbered[10].seq, limit=10)
    assert len(page_bodies(answer)) == 10
    # session, user, room with flags, anchor, older, newer, page
    assert len(queries) <= 7, [q["sql"] for q in queries]


def test_the_room_page_opens_at_a_message(as_alice: Client, numbered: list[Message]) -> None:
    page = as_alice.get(f"/rooms/general/?around={numbered[9].seq}")
    assert page.status_code == 200
    html = page.content.decode()
    assert f'data-anchor="{numbered[9].pk}"' in html
    assert 'data-latest="false"' in html
    assert "message 10" in html
    # A bad value opens the latest page, as a bad ?before= does.
    latest = as_alice.get("/rooms/general/?around=%D9%A1").content.decode()
    assert 'data-latest="true"' in latest


def test_the_fallback_reads_the_same_syntax(
    as_alice: Client, talk: dict[str, Message], monkeypatch: pytest.MonkeyPatch
) -> None:
    """What SQLite runs (substring matches), exercised here by making search think it is not on
    PostgreSQL: the same answers for the same syntax on this data."""

    class Elsewhere:
        vendor = "sqlite"

    monkeypatch.setattr(search, "connection", Elsewhere())
    assert bodies(find(as_alice, q="PLAN release")) == ["The release plan is ready"]
    assert bodies(find(as_alice, q='"release plan"')) == ["The release plan is ready"]
    assert bodies(find(as_alice, q="release -secret -notes")) == ["The release plan is ready"]
    assert bodies(find(as_alice, q="pizza or notes")) == [
        "Lunch plan: pizza or sushi",
        "Please review the release notes",
    ]


def test_the_parser_reads_websearch_syntax() -> None:
    parsed = search.parse('sad "Fat  Cat" or -rat dog "unclosed phrase')
    assert [[(c.words, c.negated) for c in group] for group in parsed.groups] == [
        [(["sad"], False), (["fat", "cat"], False)],
        [(["rat"], True), (["dog"], False), (["unclosed", "phrase"], False)],
    ]
    assert parsed.terms == {"sad", "fat", "cat", "dog", "unclosed", "phrase"}
