"""The JSON API: answers, errors, CSRF, and pinned query counts."""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from chat import writepath
from chat.models import Message, Room


@pytest.fixture
def as_alice(alice: Any) -> Client:
    client = Client()
    client.force_login(alice)
    return client


def post_json(client: Client, url: str, data: Any, **extra: Any) -> Any:
    body = data if isinstance(data, (str, bytes)) else json.dumps(data)
    return client.post(url, body, content_type="application/json", **extra)


def test_it_answers_401_to_anonymous_api_calls(db: Any, room: Room) -> None:
    response = Client().get("/api/rooms/")
    assert response.status_code == 401
    assert response.json()["error"] == "unauthorized"
    assert Client().get("/rooms/general/").status_code == 302


def test_it_lists_rooms_the_user_may_see(as_alice: Client, room: Room, outsider: Any) -> None:
    Room.objects.create(slug="hidden", title="Hidden", private=True, created_by=outsider)
    slugs = [r["slug"] for r in as_alice.get("/api/rooms/").json()["rooms"]]
    assert "general" in slugs and "lobby" in slugs and "hidden" not in slugs


def test_it_creates_rooms_and_refuses_bad_ones(as_alice: Client) -> None:
    response = post_json(
        as_alice, "/api/rooms/", {"slug": "team", "title": "Team", "private": True}
    )
    assert response.status_code == 201
    assert response.json()["private"] is True
    again = post_json(as_alice, "/api/rooms/", {"slug": "team", "title": "Again", "private": False})
    assert again.status_code == 400
    bad = post_json(as_alice, "/api/rooms/", {"slug": "Not A Slug", "title": "x", "private": False})
    assert bad.status_code == 400
    assert Room.objects.filter(slug="team").count() == 1


def test_posting_and_retrying_with_a_client_id(as_alice: Client, room: Room) -> None:
    url = "/api/rooms/general/messages"
    first = post_json(as_alice, url, {"body": "hi", "client_id": "abc"})
    assert first.status_code == 201
    event = first.json()
    assert (event["type"], event["seq"], event["body"], event["author"]) == (
        "message",
        1,
        "hi",
        "alice",
    )
    again = post_json(as_alice, url, {"body": "hi", "client_id": "abc"})
    assert again.status_code == 200
    assert again.json()["id"] == event["id"]
    assert Message.objects.count() == 1


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ("not json", 400, "bad_request"),
        ("[1, 2]", 400, "bad_request"),
        ({"body": 5}, 400, "bad_request"),
        ({"body": "   "}, 400, "bad_request"),
        ({"body": "x", "client_id": "c" * 65}, 400, "bad_request"),
        ({"body": "x" * 4001}, 413, "too_large"),
        ("[" * 100000 + "]" * 100000, 400, "bad_request"),
    ],
)
def test_bad_posts_get_a_json_error_and_store_nothing(
    as_alice: Client, room: Room, body: Any, status: int, code: str
) -> None:
    response = post_json(as_alice, "/api/rooms/general/messages", body)
    assert response.status_code == status
    assert response.json()["error"] == code
    assert Message.objects.count() == 0
    room.refresh_from_db()
    assert room.seq == 0


def test_private_rooms_are_not_found_for_outsiders(
    outsider: Any, private_room: Room, alice: Any
) -> None:
    writepath.post_message(alice, private_room, "secret stuff")
    client = Client()
    client.force_login(outsider)
    for response in (
        client.get("/api/rooms/secret/messages"),
        post_json(client, "/api/rooms/secret/messages", {"body": "hi"}),
        client.get("/api/rooms/nope/messages"),
    ):
        assert response.status_code == 404
        assert response.json()["error"] == "not_found"
    assert Message.objects.count() == 1


def test_history_pages_and_limits(as_alice: Client, alice: Any, room: Room) -> None:
    for i in range(7):
        writepath.post_message(alice, room, f"m{i}")
    latest = as_alice.get("/api/rooms/general/messages?limit=3").json()
    assert [m["body"] for m in latest["messages"]] == ["m4", "m5", "m6"]
    assert latest["has_more"] is True
    older = as_alice.get("/api/rooms/general/messages?limit=3&before=5").json()
    assert [m["body"] for m in older["messages"]] == ["m1", "m2", "m3"]
    first = as_alice.get("/api/rooms/general/messages?limit=3&before=2").json()
    assert [m["body"] for m in first["messages"]] == ["m0"] and first["has_more"] is False
    for bad in ("0", "101", "x", "-1"):
        response = as_alice.get(f"/api/rooms/general/messages?limit={bad}")
        assert response.status_code == 400, bad
        assert response.json()["error"] == "bad_request"


def test_the_resume_read(as_alice: Client, alice: Any, room: Room, settings: Any) -> None:
    for i in range(5):
        writepath.post_message(alice, room, f"m{i}")
    answer = as_alice.get("/api/rooms/general/messages?after=3").json()
    assert [m["seq"] for m in answer["messages"]] == [4, 5] and answer["seq"] == 5
    settings.CHAT_RESUME_LIMIT = 2
    assert as_alice.get("/api/rooms/general/messages?after=1").json() == {"resync": True, "seq": 5}


def test_edit_delete_and_read(as_alice: Client, alice: Any, bob: Any, room: Room) -> None:
    mine = writepath.post_message(alice, room, "typo").message
    theirs = writepath.post_message(bob, room, "bob's").message
    url = f"/api/rooms/general/messages/{mine.pk}"
    edited = as_alice.patch(url, json.dumps({"body": "fixed"}), content_type="application/json")
    assert edited.status_code == 200 and edited.json()["edited"] is True
    forbidden = as_alice.delete(f"/api/rooms/general/messages/{theirs.pk}")
    assert forbidden.status_code == 403
    deleted = as_alice.delete(url)
    assert deleted.json()["deleted"] is True and deleted.json()["body"] == ""
    assert post_json(as_alice, "/api/rooms/general/read", {"seq": 4}).status_code == 204
    assert post_json(as_alice, "/api/rooms/general/read", {"seq": "x"}).status_code == 400


def test_csrf_is_enforced_on_unsafe_methods(alice: Any, room: Room) -> None:
    client = Client(enforce_csrf_checks=True)
    client.force_login(alice)
    for method, url in (
        ("post", "/api/rooms/general/messages"),
        ("post", "/api/rooms/"),
        ("patch", "/api/rooms/general/messages/1"),
        ("delete", "/api/rooms/general/messages/1"),
        ("post", "/api/rooms/general/read"),
        ("post", "/api/rooms/general/typing"),
        ("post", "/api/ws-token"),
    ):
        response = getattr(client, method)(url, "{}", content_type="application/json")
        assert response.status_code == 403, url
        assert response.json()["error"] == "forbidden"
    assert Message.objects.count() == 0
    # With the token it goes through.
    client.get("/rooms/general/")
    token = client.cookies["csrftoken"].value
    ok = client.post(
        "/api/rooms/general/messages",
        json.dumps({"body": "with token"}),
        content_type="application/json",
        headers={"X-CSRFToken": token},
    )
    assert ok.status_code == 201


def test_wrong_methods_get_405(as_alice: Client, room: Room) -> None:
    response = as_alice.put("/api/rooms/general/messages")
    assert response.status_code == 405 and response.json()["error"] == "method_not_allowed"


def test_query_counts_are_pinned(as_alice: Client, alice: Any, bob: Any) -> None:
    for i in range(5):
        r = Room.objects.create(slug=f"r{i}", title=f"R{i}")
        for j in range(3):
            writepath.post_message(bob if j % 2 else alice, r, f"m{j}")
    # session + user, the user stream's position, then rooms, read cursors, mention counts,
    # unread counts: the same for 5 rooms or 50 (DMs add one, for their members).
    with CaptureQueriesContext(connection) as rooms_queries:
        rooms = as_alice.get("/api/rooms/").json()["rooms"]
    assert len(rooms) == 6
    assert {r["slug"]: r["unread"] for r in rooms}["r0"] == 1
    assert len(rooms_queries) == 7
    with CaptureQueriesContext(connection) as page_queries:
        page = as_alice.get("/api/rooms/r0/messages?limit=50").json()
    assert len(page["messages"]) == 3
    # session + user, room, membership check is skipped for public rooms, one page query.
    assert len(page_queries) == 4


def test_pages_render_bodies_as_text(as_alice: Client, alice: Any, room: Room) -> None:
    writepath.post_message(alice, room, "<script>alert(1)</script>")
    html = as_alice.get("/rooms/general/").content.decode()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "<script>alert(1)</script>" not in html


def test_the_page_form_posts_once(as_alice: Client, room: Room) -> None:
    data = {"body": "from the form", "client_id": "form-1"}
    assert as_alice.post("/rooms/general/", data).status_code == 302
    assert as_alice.post("/rooms/general/", data).status_code == 302
    assert Message.objects.filter(body="from the form").count() == 1


def test_signup_login_logout(db: Any) -> None:
    client = Client()
    response = client.post(
        "/signup/",
        {
            "username": "newbie",
            "password1": "a-long-pass-phrase",
            "password2": "a-long-pass-phrase",
        },
    )
    assert response.status_code == 302
    assert client.get("/").status_code == 200
    weak = Client().post("/signup/", {"username": "w", "password1": "123", "password2": "123"})
    assert weak.status_code == 200 and b"too short" in weak.content
    client.post("/accounts/logout/")
    assert client.get("/").status_code == 302


def test_ws_token(as_alice: Client, alice: Any) -> None:
    from chat.tokens import user_for_token

    data = post_json(as_alice, "/api/ws-token", {}).json()
    assert data["ws_url"] == "ws://testserver/ws/"
    assert user_for_token(data["token"]) == alice
    assert user_for_token(data["token"] + "x") is None
    assert user_for_token("garbage") is None


def test_the_admin_lists_every_model(moderator: Any) -> None:
    moderator.is_superuser = True
    moderator.save()
    client = Client()
    client.force_login(moderator)
    from django.apps import apps
    from django.contrib import admin

    for model in apps.get_app_config("chat").get_models():
        assert model in admin.site._registry, model
        assert client.get(f"/admin/chat/{model._meta.model_name}/").status_code == 200
