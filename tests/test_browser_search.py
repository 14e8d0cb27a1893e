"""Search in the browser: the box, results grouped by room, a click that opens the room at the
message highlighted, and scrolling up and down from there loading more (tests/test_browser.py's
server, browser and sessions)."""

from __future__ import annotations

import re
from typing import Any

import pytest
from playwright.sync_api import expect

import tests.test_browser as base
from chat import writepath
from chat.models import Message, Room

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

# The same module-scoped browser and per-test sessions as the main browser tests.
browser = base.browser
sessions = base.sessions


def test_search_opens_the_room_at_the_message_and_scrolls_both_ways(
    sessions: Any, alice: Any, bob: Any, room: Room
) -> None:
    random = Room.objects.create(slug="random", title="Random talk")
    for n in range(1, 151):
        body = "the quarterly zebra report" if n == 75 else f"message {n}"
        writepath.post_message(alice if n % 2 else bob, room, body)
    writepath.post_message(alice, random, "a <b>zebra</b> & crossing")
    target = Message.objects.get(body="the quarterly zebra report")

    alice_session = sessions(alice)
    page = alice_session.open("general")
    expect(alice_session.badge).to_have_text("Live")
    page.locator("#search-q").fill("zebra")
    groups = page.locator(".search-group")
    expect(groups).to_have_count(2)
    # Grouped by room, newest hit first, titled as the sidebar titles them.
    expect(groups.nth(0).locator(".search-room")).to_have_text("Random talk")
    expect(groups.nth(1).locator(".search-room")).to_have_text("General")
    expect(page.locator("#search-status")).to_have_text("2 found")
    # The message's own markup is text; only the matched word is marked.
    random_hit = groups.nth(0).locator(".search-body")
    expect(random_hit).to_have_text("a <b>zebra</b> & crossing")
    expect(random_hit.locator("mark")).to_have_text("zebra")
    expect(random_hit.locator("b")).to_have_count(0)

    groups.nth(1).locator("a").click()
    expect(page).to_have_url(re.compile(rf"/rooms/general/\?around={target.seq}$"))
    anchor = page.locator("#messages li.anchor")
    expect(anchor).to_have_count(1)
    expect(anchor).to_contain_text("the quarterly zebra report")
    expect(anchor).to_have_attribute("data-id", str(target.pk))
    expect(anchor).to_be_in_viewport()
    items = page.locator("#messages li.message")
    expect(items).to_have_count(50)
    expect(page.get_by_text("message 10", exact=True)).to_have_count(0)
    expect(page.get_by_text("message 140", exact=True)).to_have_count(0)

    scroller = page.locator("#scroller")
    first = items.first.get_attribute("data-id")
    scroller.evaluate("el => { el.scrollTop = 0; }")
    expect(page.get_by_text("message 30", exact=True)).to_have_count(1)
    # What the reader was looking at (the top of what was loaded) stays on screen while older
    # messages come in above it.
    expect(page.locator(f'#messages li[data-id="{first}"]')).to_be_in_viewport()
    scroller.evaluate("el => { el.scrollTop = el.scrollHeight; }")
    expect(page.get_by_text("message 140", exact=True)).to_have_count(1)
    scroller.evaluate("el => { el.scrollTop = el.scrollHeight; }")
    expect(page.get_by_text("message 150", exact=True)).to_have_count(1)
    expect(page.locator("#newer")).to_be_hidden()
    scroller.evaluate("el => { el.scrollTop = 0; }")
    expect(page.get_by_text("message 1", exact=True)).to_have_count(1)
    expect(page.locator("#older")).to_be_hidden()
    # Every message exactly once, in order.
    bodies = items.locator(".body").all_inner_texts()
    expected = [f"message {n}" for n in range(1, 151)]
    expected[74] = "the quarterly zebra report"
    assert bodies == expected
    assert alice_session.errors == []


def test_a_refused_search_says_why(sessions: Any, alice: Any, room: Room) -> None:
    writepath.post_message(alice, room, "hello")
    alice_session = sessions(alice)
    page = alice_session.open("general")
    page.locator("#search-q").fill("-hello")
    page.locator("#search-q").press("Enter")
    expect(page.locator("#search-status")).to_have_text("`q` needs at least one word to look for.")
    expect(page.locator(".search-group")).to_have_count(0)
    page.locator("#search-q").fill("nothing-like-it")
    expect(page.locator("#search-status")).to_have_text("Nothing found.")
