"""Accessibility in headless Chromium: axe-core on every kind of page, in light and dark, and the
room by keyboard and screen reader (a skip link, a visible focus, new messages announced).

axe-core comes bundled with axe-playwright-python, so nothing is fetched at test time. Only
serious and critical violations fail a test: those are the ones that lock someone out (unreadable
text, unlabelled controls), while "moderate" ones are judgement calls axe itself is unsure of.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from axe_playwright_python.sync_playwright import Axe
from playwright.sync_api import Browser, Page, expect

from chat import writepath
from chat.models import Room
from tests import test_browser as shared

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

browser = shared.browser
sessions = shared.sessions
FAST = shared.FAST
SCHEMES = ["light", "dark"]
BLOCKING = {"serious", "critical"}
# The page's background in each scheme (--bg in chat.css): proof the scheme under test is drawn.
BACKGROUND = {"light": "rgb(248, 250, 252)", "dark": "rgb(11, 18, 32)"}


def blocking_violations(page: Page) -> list[str]:
    """One line per serious or critical violation: the rule, and the elements it failed on."""
    results = Axe().run(page)
    return [
        f"{v['id']} ({v['impact']}): {v['help']} -- "
        + "; ".join(
            f"{' '.join(map(str, n['target']))}: {n.get('failureSummary', '')}"
            for n in v["nodes"][:5]
        )
        for v in results.response["violations"]
        if v["impact"] in BLOCKING
    ]


@pytest.fixture
def busy_room(alice: Any, bob: Any, room: Room) -> Room:
    """A room with everything a message can carry: own and others', a reaction, a reply, a
    mention and a deleted message."""
    question = writepath.post_message(bob, room, "which train do we take?", "a11y-q").message
    writepath.post_message(
        alice, room, "the **early** one, `08:10`", "a11y-a", reply_to=question.pk
    )
    writepath.post_message(bob, room, "@alice bring the tickets", "a11y-m")
    writepath.react(alice, room, question.pk, "👍", on=True)
    writepath.react(bob, room, question.pk, "👍", on=True)
    doomed = writepath.post_message(alice, room, "never mind", "a11y-d").message
    writepath.delete_message(alice, room, doomed.pk)
    return room


@pytest.fixture
def anonymous(browser: Browser, server: Any) -> Iterator[Any]:
    opened: list[Any] = []

    def start(**context: Any) -> Page:
        ctx = browser.new_context(**context)
        opened.append(ctx)
        return ctx.new_page()

    yield start
    for ctx in opened:
        ctx.close()


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize(
    ("transport", "badge"), [("", "Live"), ("&transport=poll", "Fallback")], ids=["live", "poll"]
)
def test_a_room_with_messages_has_no_serious_violations(
    sessions: Any, alice: Any, busy_room: Room, scheme: str, transport: str, badge: str
) -> None:
    a = sessions(alice, color_scheme=scheme)
    page = a.open("general", FAST + transport)
    expect(a.badge).to_have_text(badge)
    expect(page.locator("#messages .message.mine").first).to_be_visible()
    expect(page.locator("#messages .reactions .reaction").first).to_be_visible()
    expect(page.locator("#messages .message.deleted")).to_have_count(1)
    expect(page.locator("body")).to_have_css("background-color", BACKGROUND[scheme])
    violations = blocking_violations(page)
    assert violations == [], "\n".join(violations)


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("path", ["/", "/rooms/directory/"], ids=["index", "directory"])
def test_the_rooms_pages_have_no_serious_violations(
    sessions: Any, alice: Any, busy_room: Room, scheme: str, path: str
) -> None:
    Room.objects.create(slug="random", title="Random", description="Anything goes")
    a = sessions(alice, color_scheme=scheme)
    a.page.goto(a.server.url + path)
    expect(a.page.get_by_role("link", name="General").first).to_be_visible()
    violations = blocking_violations(a.page)
    assert violations == [], "\n".join(violations)


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("path", ["/signup/", "/accounts/login/"], ids=["signup", "login"])
def test_the_account_pages_have_no_serious_violations(
    anonymous: Any, server: Any, scheme: str, path: str
) -> None:
    page = anonymous(color_scheme=scheme)
    page.goto(server.url + path)
    expect(page.locator("form input:not([type=hidden])").first).to_be_visible()
    expect(page.locator("body")).to_have_css("background-color", BACKGROUND[scheme])
    violations = blocking_violations(page)
    assert violations == [], "\n".join(violations)


def test_the_first_tab_in_a_room_skips_to_the_composer(
    sessions: Any, alice: Any, busy_room: Room
) -> None:
    a = sessions(alice)
    page = a.open("general")
    expect(a.badge).to_have_text("Live")
    page.keyboard.press("Tab")
    skip = page.get_by_role("link", name="Skip to the composer")
    expect(skip).to_be_focused()
    expect(skip).to_be_in_viewport()
    expect(skip).not_to_have_css("outline-style", "none")
    page.keyboard.press("Enter")
    expect(page.locator("#composer-body")).to_be_focused()
    page.keyboard.type("typed straight in")
    expect(page.locator("#composer-body")).to_have_value("typed straight in")


def test_buttons_and_links_show_where_the_focus_is(
    sessions: Any, alice: Any, busy_room: Room
) -> None:
    a = sessions(alice)
    page = a.open("general")
    expect(a.badge).to_have_text("Live")
    send = page.locator("#composer button[type=submit]")
    page.locator("#composer-body").focus()
    page.keyboard.press("Tab")
    expect(send).to_be_focused()
    expect(send).to_have_css("outline-style", "solid")
    # A link in the sidebar, reached by keyboard (Shift+Tab then Tab from it).
    link = page.get_by_role("link", name="Browse rooms")
    link.focus()
    page.keyboard.press("Shift+Tab")
    page.keyboard.press("Tab")
    expect(link).to_be_focused()
    expect(link).to_have_css("outline-style", "solid")


def test_a_message_from_someone_else_is_announced_politely(
    sessions: Any, alice: Any, bob: Any, busy_room: Room
) -> None:
    a, b = sessions(alice), sessions(bob)
    a.open("general")
    b.open("general")
    expect(a.badge).to_have_text("Live")
    expect(b.badge).to_have_text("Live")
    announcer = a.page.locator('[aria-live="polite"]', has_text="bob: the platform moved")
    expect(announcer).to_have_count(0)
    b.say("the platform moved to 4")
    expect(announcer).to_have_text("bob: the platform moved to 4")
    # One's own message is not read back to the one who just typed it.
    a.say("thanks")
    expect(b.page.locator("#announcer")).to_have_text("alice: thanks")
    expect(a.page.locator("#announcer")).to_have_text("bob: the platform moved to 4")
