"""Direct messages, blocks, mentions and the unsubscribe link attacked as an outsider would, in
this process through Django's own request handling (the middleware included): what each attack
answers, and that nothing it was refused left a row behind.

tests/faults/test_fuzz_dms.py sends the same kinds of input through the running servers."""

from __future__ import annotations

import json
from typing import Any
from unittest import mock

import pytest
from django.contrib.auth import get_user_model
from django.core import signing
from django.test import Client

from chat import digest, dms
from chat.models import Block, Inbox, Membership, Message, Room, UserEvent

pytestmark = pytest.mark.django_db


def state() -> tuple[Any, ...]:
    """Every row the new features write."""
    return (
        list(Room.objects.order_by("pk").values_list("pk", "slug", "kind", "dm_key", "seq")),
        list(
            Membership.objects.order_by("pk").values_list(
                "pk", "room_id", "user_id", "read_seq", "notified_seq", "notify_level"
            )
        ),
        list(Message.objects.order_by("pk").values_list("pk", "body", "seq", "mentions")),
        list(UserEvent.objects.order_by("pk").values_list("pk", "user_id", "seq", "kind")),
        list(Block.objects.order_by("pk").values_list("pk", "blocker_id", "blocked_id")),
        list(Inbox.objects.order_by("pk").values_list("user_id", "seq", "email_digests")),
    )


def client_of(user: Any, csrf: bool = False) -> Client:
    client = Client(enforce_csrf_checks=csrf)
    client.force_login(user)
    return client


def post(client: Client, path: str, data: Any) -> Any:
    return client.post(path, json.dumps(data), content_type="application/json")


def refused(response: Any, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, (response.status_code, response.content[:200])
    body = response.json()
    assert body["error"] == code, body
    return body


@pytest.fixture
def carol(db: Any) -> Any:
    return get_user_model().objects.create_user("carol", password="pw-carol-123")


@pytest.fixture
def gone(db: Any) -> Any:
    """A deactivated account."""
    return get_user_model().objects.create_user("ghost", password="pw-ghost-123", is_active=False)


# --- opening conversations ---


LOOKALIKES = [
    "Bob",  # usernames are case-sensitive: another name
    "BOB",
    "b\u043eb",  # Cyrillic o
    "\uff42\uff4f\uff42",  # fullwidth: NFKC makes it "bob", a lookup does not
    "bob\u200b",  # zero-width space
    "\u200bbob",
    "bob\ufeff",
    "\u202ebob",  # right-to-left override (a control-like format character)
    "bo\u0301b",  # combining accent
    "bob ",
    " bob",
]


@pytest.mark.parametrize("name", LOOKALIKES)
def test_a_lookalike_of_a_username_opens_nothing(alice: Any, bob: Any, name: str) -> None:
    before = state()
    response = post(client_of(alice), "/api/dms/", {"users": [name]})
    assert response.status_code in (400, 404), response.content
    assert state() == before


@pytest.mark.parametrize(
    "name", ["\x00", "bob\x00", "\ud800", "bob\udfff", "\u2028", "\x1b[2J", "\t", "\x85"]
)
def test_a_name_with_a_control_or_lone_surrogate_is_a_bad_request(
    alice: Any, bob: Any, name: str
) -> None:
    before = state()
    # Sent as raw JSON escapes, as a hostile client would: \u0000 and \ud800 on the wire.
    raw = json.dumps({"users": [name]}, ensure_ascii=True)
    response = client_of(alice).post("/api/dms/", raw, content_type="application/json")
    refused(response, 400, "bad_request")
    assert state() == before


def test_a_deactivated_account_answers_as_nobody(alice: Any, gone: Any) -> None:
    client = client_of(alice)
    before = state()
    ghost = refused(post(client, "/api/dms/", {"users": ["ghost"]}), 404, "not_found")
    nobody = refused(post(client, "/api/dms/", {"users": ["nobody-at-all"]}), 404, "not_found")
    assert ghost == nobody  # the same answer: no account enumeration
    group = post(client, "/api/dms/", {"users": ["bob-missing", "ghost"]})
    assert group.status_code == 404
    assert state() == before


def test_blocking_a_deactivated_account_answers_as_nobody(alice: Any, gone: Any) -> None:
    """The DM endpoint and the user search hide deactivated accounts; blocking must not tell
    them apart from names nobody has, nor store a block."""
    client = client_of(alice)
    before = state()
    ghost = client.post("/api/blocks/ghost")
    nobody = client.post("/api/blocks/nobody-at-all")
    assert ghost.status_code == nobody.status_code == 404
    assert ghost.json() == nobody.json()
    ghost = client.delete("/api/blocks/ghost")
    nobody = client.delete("/api/blocks/nobody-at-all")
    assert ghost.status_code == nobody.status_code == 404
    assert state() == before


def test_a_block_made_before_deactivation_can_still_be_lifted(alice: Any, bob: Any) -> None:
    client = client_of(alice)
    assert client.post("/api/blocks/bob").status_code == 201
    get_user_model().objects.filter(pk=bob.pk).update(is_active=False)
    assert client.delete("/api/blocks/bob").status_code == 204
    assert not Block.objects.exists()


def test_ten_thousand_names_are_refused_before_any_lookup(alice: Any, bob: Any) -> None:
    before = state()
    names = [f"user{i}" for i in range(10_000)]
    refused(post(client_of(alice), "/api/dms/", {"users": names}), 400, "bad_request")
    refused(post(client_of(alice), "/api/dms/", {"users": ["bob"] * 10_000}), 400, "bad_request")
    assert state() == before


def test_duplicate_names_make_one_member_each(alice: Any, bob: Any, carol: Any) -> None:
    client = client_of(alice)
    response = post(client, "/api/dms/", {"users": ["bob", "bob", "carol", "alice", "carol"]})
    assert response.status_code == 201, response.content
    room = Room.objects.get(slug=response.json()["slug"])
    members = Membership.objects.filter(room=room).values_list("user__username", flat=True)
    assert sorted(members) == ["alice", "bob", "carol"]
    # The same people in another order and spelling of the list: the same room.
    again = post(client, "/api/dms/", {"users": ["carol", "bob"]})
    assert again.status_code == 200 and again.json()["slug"] == room.slug
    assert Room.objects.filter(kind=Room.DM).count() == 1


def test_an_outsider_who_guesses_a_dm_slug_learns_and_changes_nothing(
    alice: Any, bob: Any, outsider: Any
) -> None:
    room, _ = dms.open_dm(alice, ["bob"])
    post(client_of(alice), f"/api/rooms/{room.slug}/messages", {"body": "@bob secret"})
    mallory = client_of(outsider)
    before = state()
    base = f"/api/rooms/{room.slug}"
    unknown = "/api/rooms/dm-0123456789abcdef"
    for path in (base, unknown):
        answers = [
            mallory.get(f"{path}/messages"),
            mallory.get(f"{path}/messages?after=0"),
            mallory.get(f"{path}/members"),
            post(mallory, f"{path}/messages", {"body": "hi"}),
            post(mallory, f"{path}/read", {"seq": 1}),
            post(mallory, f"{path}/notifications", {"level": "all"}),
            post(mallory, f"{path}/typing", {}),
            mallory.get(f"{path}/poll?after=0&timeout=0"),
        ]
        for answer in answers:
            assert answer.status_code == 404, (path, answer.status_code, answer.content[:200])
            assert b"secret" not in answer.content
    # Naming the members themselves opens the outsider's own conversation, never theirs.
    response = post(mallory, "/api/dms/", {"users": ["alice", "bob"]})
    assert response.status_code == 201 and response.json()["slug"] != room.slug
    assert not Message.objects.filter(author=outsider).exists()
    assert state()[1:3] != before[1:3]  # the new group's rows: the check above could fail
    assert Membership.objects.filter(room=room).count() == 2


# --- mentions ---


def test_ten_thousand_mentions_do_not_fit_a_body(alice: Any, bob: Any, room: Room) -> None:
    before = state()
    response = post(client_of(alice), "/api/rooms/general/messages", {"body": "@bob " * 10_000})
    refused(response, 413, "too_large")
    assert state() == before


def test_a_body_full_of_mentions_tells_each_user_once_and_at_most_fifty(
    alice: Any, bob: Any, room: Room
) -> None:
    users = get_user_model()
    for i in range(60):
        users.objects.create_user(f"u{i}", password="pw-u-123")
    # Repeats, every user, and names nobody has, up to the body limit.
    body = " ".join(
        ["@bob"] * 100 + [f"@u{i}" for i in range(60)] + [f"@zz{i}" for i in range(400)]
    )
    assert len(body) <= 4000
    response = post(client_of(alice), "/api/rooms/general/messages", {"body": body})
    assert response.status_code == 201, response.content
    mentions = response.json()["mentions"]
    assert len(mentions) == 50 and len(set(mentions)) == 50 and mentions[0] == "bob"
    stored = Message.objects.get(pk=response.json()["id"])
    assert stored.mentions == mentions
    told = list(UserEvent.objects.values_list("user__username", flat=True))
    assert sorted(told) == sorted(mentions)


@pytest.mark.parametrize(
    "body",
    [
        "@b\u043eb hi",  # Cyrillic o
        "@Bob hi",
        "@\uff42\uff4f\uff42 hi",
        "@\u200bbob hi",
        "@\u202ebob hi",
        "@\u2066bob\u2069 hi",
        "x@bob hi",  # an email address
        "@bo\u0301b",
    ],
)
def test_a_lookalike_mention_tells_nobody(alice: Any, bob: Any, room: Room, body: str) -> None:
    response = post(client_of(alice), "/api/rooms/general/messages", {"body": body})
    assert response.status_code == 201, response.content
    assert response.json()["mentions"] == []
    assert not UserEvent.objects.filter(user=bob).exists()


@pytest.mark.parametrize("body", ["@bob\x00", "@\x00bob", "@bob\ud800", "@\udfffbob"])
def test_a_mention_with_nul_or_a_lone_surrogate_stores_nothing(
    alice: Any, bob: Any, room: Room, body: str
) -> None:
    before = state()
    raw = json.dumps({"body": body}, ensure_ascii=True)
    response = client_of(alice).post(
        "/api/rooms/general/messages", raw, content_type="application/json"
    )
    refused(response, 400, "bad_request")
    assert state() == before


def test_a_mention_followed_by_an_invisible_character_still_mentions(
    alice: Any, bob: Any, room: Room
) -> None:
    response = post(client_of(alice), "/api/rooms/general/messages", {"body": "@bob\u200b\u202e"})
    assert response.json()["mentions"] == ["bob"]
    assert UserEvent.objects.filter(user=bob, kind=UserEvent.MENTION).count() == 1


def test_room_wide_and_a_name_do_not_reach_someone_who_blocked_the_author(
    alice: Any, bob: Any, carol: Any
) -> None:
    """In a group conversation anyone may say @room; naming the blocker next to it must not
    get past the block (nothing they write notifies the blocker)."""
    room, _ = dms.open_dm(alice, ["bob", "carol"])
    assert client_of(bob).post("/api/blocks/alice").status_code == 201
    for body in ("@room @bob", "@bob @room", "@room"):
        response = post(client_of(alice), f"/api/rooms/{room.slug}/messages", {"body": body})
        assert response.status_code == 201, response.content
    assert not UserEvent.objects.filter(user=bob).exists()
    assert UserEvent.objects.filter(user=carol, kind=UserEvent.MENTION).count() == 3


def test_room_wide_and_a_name_in_a_public_room_respect_the_block(
    alice: Any, bob: Any, moderator: Any, room: Room
) -> None:
    """A moderator whom bob blocked says `@room @bob` in a public room bob never joined: bob is
    not told, and is not made a member by it."""
    assert client_of(bob).post("/api/blocks/mod").status_code == 201
    response = post(client_of(moderator), "/api/rooms/general/messages", {"body": "@room @bob"})
    assert response.status_code == 201, response.content
    assert not UserEvent.objects.filter(user=bob).exists()
    assert not Membership.objects.filter(room=room, user=bob).exists()


def test_an_edit_adding_room_wide_and_a_name_respects_the_block(
    alice: Any, bob: Any, carol: Any
) -> None:
    room, _ = dms.open_dm(alice, ["bob", "carol"])
    client = client_of(alice)
    posted = post(client, f"/api/rooms/{room.slug}/messages", {"body": "hello"}).json()
    assert client_of(bob).post("/api/blocks/alice").status_code == 201
    before = UserEvent.objects.filter(user=bob).count()
    edited = client.patch(
        f"/api/rooms/{room.slug}/messages/{posted['id']}",
        json.dumps({"body": "hello @room @bob"}),
        content_type="application/json",
    )
    assert edited.status_code == 200, edited.content
    assert UserEvent.objects.filter(user=bob).count() == before


def test_a_mention_in_a_group_does_not_reach_a_member_at_level_none(
    alice: Any, bob: Any, carol: Any
) -> None:
    """carol chose `none` for the group; alice mentioning bob there must not tell carol."""
    room, _ = dms.open_dm(alice, ["bob", "carol"])
    level = post(client_of(carol), f"/api/rooms/{room.slug}/notifications", {"level": "none"})
    assert level.status_code == 200, level.content
    for body in ("@bob hi", "plain", "@room"):
        response = post(client_of(alice), f"/api/rooms/{room.slug}/messages", {"body": body})
        assert response.status_code == 201, response.content
    assert not UserEvent.objects.filter(user=carol).exists()
    assert list(UserEvent.objects.filter(user=bob).values_list("kind", flat=True)) == [
        UserEvent.MENTION,
        UserEvent.DM,
        UserEvent.MENTION,
    ]


def test_room_wide_from_a_member_who_is_not_a_moderator_stores_nothing(
    alice: Any, bob: Any, room: Room
) -> None:
    before = state()
    response = post(client_of(alice), "/api/rooms/general/messages", {"body": "@room @bob"})
    refused(response, 403, "forbidden")
    assert state() == before


# --- CSRF: a logged-in browser's POST from another site ---


@pytest.mark.parametrize(
    "method,path,data",
    [
        ("post", "/api/dms/", {"users": ["bob"]}),
        ("post", "/api/blocks/bob", None),
        ("delete", "/api/blocks/bob", None),
        ("post", "/api/rooms/general/notifications", {"level": "none"}),
        ("post", "/api/rooms/general/read", {"seq": 1}),
        ("post", "/api/rooms/general/messages", {"body": "@bob forged"}),
    ],
)
def test_a_post_without_the_csrf_token_is_refused(
    alice: Any, bob: Any, room: Room, method: str, path: str, data: Any
) -> None:
    Block.objects.create(blocker=alice, blocked=bob)  # so that the DELETE has something to undo
    before = state()
    client = client_of(alice, csrf=True)
    body = json.dumps(data) if data is not None else ""
    response = getattr(client, method)(path, body, content_type="application/json")
    refused(response, 403, "forbidden")
    assert "CSRF" in response.json()["detail"]
    assert state() == before


def test_the_unsubscribe_button_without_the_csrf_token_is_refused(alice: Any) -> None:
    """Only a mail client's exact one-click form skips the CSRF check; a logged-in browser's
    forged form with anything else in it does not unsubscribe."""
    Inbox.objects.create(user=alice)
    url = f"/email/unsubscribe/{digest.make_token(alice.pk)}"
    client = client_of(alice, csrf=True)
    for data in (
        {},
        {"List-Unsubscribe": "One-Click", "x": "1"},
        {"List-Unsubscribe": "one-click"},
    ):
        assert client.post(url, data).status_code == 403
    assert client.post(
        url, "List-Unsubscribe=One-Click", content_type="text/plain"
    ).status_code == (403)
    assert Inbox.objects.get(user=alice).email_digests is True
    assert client.post(url, {"List-Unsubscribe": "One-Click"}).status_code == 200
    assert Inbox.objects.get(user=alice).email_digests is False


# --- the unsubscribe token ---


def bad_tokens(user: Any) -> list[str]:
    good = digest.make_token(user.pk)
    value, _, signature = good.rpartition(":")
    flipped = signature[:-1] + ("A" if signature[-1] != "A" else "B")
    return [
        "",
        "x",
        ":",
        "::",
        good[:-1],
        good + "x",
        f"{value}:{flipped}",
        good.upper(),
        signing.dumps(str(user.pk), salt="chat.other"),  # another salt
        signing.dumps(str(user.pk)),  # the default salt
        signing.dumps(user.pk, salt=digest.SALT),  # an int, not the string the link carries
        signing.dumps(["1"], salt=digest.SALT),
        signing.dumps("not-a-pk", salt=digest.SALT),
        signing.dumps("9" * 30, salt=digest.SALT),  # out of a bigint's range
        signing.dumps("-1", salt=digest.SALT),
        signing.dumps("999999", salt=digest.SALT),  # nobody
        signing.dumps(str(user.pk), salt=digest.SALT, key="another-secret-key"),
        "%00",
        f"{good}%00",
        "%ED%A0%80",  # a lone surrogate's UTF-8 bytes
        "%C0%80",  # an overlong NUL
        "\u0661\u0662:\u0663",
        "a" * 5000,
    ]


def test_a_bad_unsubscribe_token_is_a_clear_refusal_that_changes_nothing(alice: Any) -> None:
    Inbox.objects.create(user=alice)
    client = Client(enforce_csrf_checks=True)  # not logged in: the link works without a session
    for token in bad_tokens(alice):
        for method in ("get", "post"):
            if method == "get":
                response = client.get(f"/email/unsubscribe/{token}")
            else:
                response = client.post(
                    f"/email/unsubscribe/{token}", {"List-Unsubscribe": "One-Click"}
                )
            # "" and a lone "%00" never reach the view (no such path): 404, never a 500.
            assert response.status_code in (400, 404), (token[:40], method, response.status_code)
    assert Inbox.objects.get(user=alice).email_digests is True


def test_an_old_unsubscribe_link_still_works_and_a_deactivated_account_is_refused(
    alice: Any, bob: Any
) -> None:
    """The link carries no expiry (RFC 8058): one signed long ago works; one for an account
    deactivated since does not reveal or change it."""
    with mock.patch("time.time", return_value=1_000_000_000.0):
        old = digest.make_token(alice.pk)
    client = Client()
    assert client.post(
        f"/email/unsubscribe/{old}", {"List-Unsubscribe": "One-Click"}
    ).status_code == (200)
    assert Inbox.objects.get(user=alice).email_digests is False
    Inbox.objects.create(user=bob)
    get_user_model().objects.filter(pk=bob.pk).update(is_active=False)
    token = digest.make_token(bob.pk)
    assert client.post(
        f"/email/unsubscribe/{token}", {"List-Unsubscribe": "One-Click"}
    ).status_code == (400)
    assert Inbox.objects.get(user=bob).email_digests is True


def test_a_malformed_multipart_unsubscribe_is_a_client_error(alice: Any) -> None:
    Inbox.objects.create(user=alice)
    url = f"/email/unsubscribe/{digest.make_token(alice.pk)}"
    client = Client(enforce_csrf_checks=True)
    body = b"--xx\r\nContent-Disposition: form-data; name=\x00\r\n\r\nOne-Click\r\n"
    response = client.post(url, body, content_type="multipart/form-data; boundary=xx")
    assert response.status_code < 500
    response = client.post(url, b"\xff\xfe", content_type="multipart/form-data")
    assert response.status_code < 500
    assert Inbox.objects.get(user=alice).email_digests is True
