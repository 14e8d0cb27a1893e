"""Finding, joining, leaving and inviting to rooms in headless Chromium (as tests/test_browser.py:
a real server on the test database, one browser context per user, Debian's chromium)."""

from __future__ import annotations

import re
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from playwright.sync_api import expect

from chat.models import Membership, Room, UserEvent
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
    secret = Room.objects.create(slug="secret", title="Secret", private=True, created_by=alice)
    Membership.objects.create(room=secret, user=alice)
    Membership.objects.create(room=room, user=carol)
    a, c = sessions(alice), sessions(carol)
    invitee = c.open("general")
    expect(c.badge).to_have_text("Live")
    expect(entry(invitee, "secret")).to_have_count(0)

    owner = a.open("secret")
    owner.get_by_label("Invite").fill("carol")
    owner.get_by_role("button", name="Invite").click()
    expect(owner.locator(".room-admin-invite .status")).to_have_text("carol is in the room.")
    # Pushed on carol's user stream: no reload.
    expect(entry(invitee, "secret")).to_have_count(1)
    expect(entry(invitee, "secret").locator(".room-name")).to_have_text("Secret")
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
