"""Finding, joining, leaving and inviting to rooms in headless Chromium (as tests/test_browser.py:
a real server on the test database, one browser context per user, Debian's chromium)."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from playwright.sync_api import WebSocketRoute, expect

from chat import rooms
from chat.models import Membership, Message, Room, UserEvent
from tests import test_browser as shared
from tests.test_browser import FAST

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

# The browser and the logged-in sessions of tests/test_browser.py.
browser = shared.browser
sessions = shared.sessions


@pytest.fixture
def carol(db: Any) -> Any:
    return get_user_model().objects.create_user("carol", password="pw-carol-123")


def entry(page: Any, slug: str) -> Any:
    return page.locator(f'#room-list li[data-slug="{slug}"]')


def test_a_room_found_in_the_directory_is_joined_and_listed(
    sessions: Any, bob: Any, room: Room
) -> None:
    Room.objects.create(slug="plants", title="Plants", description="Leaves, roots and pots.")
    Membership.objects.create(room=room, user=bob)
    b = sessions(bob)
    page = b.open("general")
    expect(entry(page, "general")).to_have_count(1)
    expect(entry(page, "plants")).to_have_count(0)  # not his until he joins it

    page.locator("#browse-rooms").click()
    plants = page.locator('#directory-list li[data-slug="plants"]')
    expect(plants).to_contain_text("Leaves, roots and pots.")
    expect(plants).to_contain_text("0 members")
    plants.get_by_role("button", name="Join Plants").click()
    expect(page).to_have_url(re.compile(r"/rooms/plants/"))
    expect(page.locator("#room-description")).to_have_text("Leaves, roots and pots.")
    expect(entry(page, "plants")).to_have_count(1)
    expect(entry(page, "general")).to_have_count(1)
    assert Membership.objects.filter(room__slug="plants", user=bob).exists()


def test_an_invitation_appears_in_the_invitees_open_sidebar(
    sessions: Any, alice: Any, carol: Any, room: Room
) -> None:
    # A right-to-left title: every place that shows it lets its own characters set the direction.
    secret = Room.objects.create(slug="secret", title="סודות", private=True, created_by=alice)
    Membership.objects.create(room=secret, user=alice)
    Membership.objects.create(room=room, user=carol)
    a, c = sessions(alice), sessions(carol)
    invitee = c.open("general")
    expect(c.badge).to_have_text("Live")
    expect(entry(invitee, "secret")).to_have_count(0)

    owner = a.open("secret")
    expect(owner.locator("#room-title .room-title-text")).to_have_attribute("dir", "auto")
    expect(entry(owner, "secret").locator(".room-name")).to_have_attribute("dir", "auto")
    owner.get_by_label("Invite").fill("carol")
    owner.get_by_role("button", name="Invite").click()
    expect(owner.locator(".room-admin-invite .status")).to_have_text("carol is in the room.")
    # Pushed on carol's user stream: no reload.
    expect(entry(invitee, "secret")).to_have_count(1)
    name = entry(invitee, "secret").locator(".room-name")  # drawn by sidebar.js, not the server
    expect(name).to_have_text("סודות")
    expect(name).to_have_attribute("dir", "auto")
    assert name.evaluate("el => getComputedStyle(el).direction") == "rtl"
    assert UserEvent.objects.filter(user=carol, kind=UserEvent.INVITE).count() == 1


def test_leaving_removes_the_room_from_a_second_tab(sessions: Any, bob: Any, room: Room) -> None:
    plants = Room.objects.create(slug="plants", title="Plants")
    Membership.objects.create(room=room, user=bob)
    Membership.objects.create(room=plants, user=bob)
    b = sessions(bob)
    first = b.open("plants")
    second = b.context.new_page()
    second.goto(f"{b.server.url}/rooms/general/{FAST}&transport=poll")  # another device's way in
    expect(second.locator("#conn-badge")).to_have_text("Fallback")
    expect(entry(second, "plants")).to_have_count(1)

    first.locator("#room-leave").click()
    expect(first).to_have_url(re.compile(r"/rooms/directory/"))
    expect(first.locator('#directory-list li[data-slug="plants"]')).not_to_have_class("joined")
    expect(entry(second, "plants")).to_have_count(0)
    expect(entry(second, "general")).to_have_count(1)
    assert not Membership.objects.filter(room=plants, user=bob).exists()


def test_a_removed_member_is_told_why_and_the_pending_message_fails(
    sessions: Any, alice: Any, bob: Any, private_room: Room
) -> None:
    held: list[str] = []

    def route(ws: WebSocketRoute) -> None:
        server = ws.connect_to_server()

        def forward(frame: str | bytes) -> None:
            # The post never reaches the server: it stays pending in bob's page.
            if json.loads(frame).get("action") == "sendmessage":
                held.append(str(frame))
            else:
                server.send(frame)

        ws.on_message(forward)

    b = sessions(bob)
    b.page.route_web_socket(re.compile(r"/ws/"), route)
    page = b.open("secret")
    expect(b.badge).to_have_text("Live")
    b.say("one more thing")
    pending = page.locator(".message.mine", has_text="one more thing")
    expect(pending).to_have_attribute("data-state", "pending")
    assert held

    rooms.remove(alice, private_room, "bob")
    reason = "You were removed from this room."
    expect(page.locator("#page-alert")).to_contain_text(reason)
    expect(pending).to_have_attribute("data-state", "failed")
    expect(pending).to_contain_text(f"Not sent: {reason}")
    expect(page.locator("#composer-body")).to_be_disabled()
    expect(entry(page, "secret")).to_have_count(0)
    # The page stays on the room, with the reason, rather than moving to the directory.
    assert re.search(r"/rooms/secret/", page.url)
    assert not Message.objects.filter(body="one more thing").exists()
