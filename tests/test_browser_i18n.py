"""The room page in a French browser, in headless Chromium: the server's strings and the scripts'
(from the JavaScript catalog) are French, and times are in the browser's time zone.

The browser, the per-user sessions and the server are tests/test_browser.py's."""

from __future__ import annotations

import re
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from playwright.sync_api import expect

from chat import writepath
from chat.models import Room
from tests import test_browser as shared

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

browser = shared.browser
sessions = shared.sessions

# Half an hour off UTC, so that a time shown in UTC (or the server's zone) cannot pass for it.
ZONE = "Asia/Kolkata"


def test_a_french_browser_gets_the_room_in_french_and_in_its_own_time(
    sessions: Any, alice: Any, bob: Any, room: Room
) -> None:
    sent = writepath.post_message(bob, room, "bonjour", "fr-1").message
    a = sessions(alice, locale="fr-FR", timezone_id=ZONE)
    page = a.open("general")

    # From the server: the template's strings and the page's language.
    expect(page.locator("html")).to_have_attribute("lang", "fr")
    expect(page.locator("#composer-body")).to_have_attribute(
        "placeholder", re.compile(r"^Message dans #general \(Entrée envoie")
    )
    expect(page.get_by_role("heading", name="En ligne")).to_be_visible()
    # From the scripts, through the catalog: the connection badge and its explanation.
    expect(a.badge).to_have_text("En direct")
    expect(a.badge).to_have_attribute("title", "Connecté par WebSocket")
    expect(page.locator("#online-count")).to_have_text(re.compile(r"^\d+ en ligne$"))

    # Dates and times: the day's label in French, the time in the browser's zone.
    item = a.item(sent)
    expect(item).to_have_attribute("data-day", "Aujourd’hui")
    local = sent.created.astimezone(ZoneInfo(ZONE))
    expect(item.locator(".meta time")).to_have_text(
        re.compile(rf"^0?{local.hour}:{local.minute:02d}$")
    )

    # Another's typing, worded by the scripts.
    b = sessions(bob)
    b.open("general")
    expect(b.badge).to_have_text("Live")
    b.page.locator("#composer-body").press_sequentially("hé")
    expect(page.locator("#typing")).to_have_text("bob écrit…")
