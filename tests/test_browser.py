"""The browser client in headless Chromium (Debian's package, driven by Playwright's sync API).

Each test runs a real uvicorn server on the test database (the `server` fixture) and one browser
context per user, so alice and bob have separate cookies, sockets and network conditions. Timings
are shortened through the page's query string (see static/chat/room.js), so falling back and
upgrading take about a second instead of tens. Nothing sleeps: every wait is an expect() on the page.

Set SAVE_SCREENSHOTS=1 to refresh the screenshots in static/screenshots/.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.test import Client
from playwright.sync_api import (
    Browser,
    BrowserContext,
    Page,
    WebSocketRoute,
    expect,
    sync_playwright,
)

from chat import services
from chat.models import Message, Room

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

CHROMIUM = "/usr/bin/chromium"
# Without the background-networking flags Chromium tries to reach Google, which is closed here.
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
FAST = "?ws_timeout=2000&probe_min=300&probe_max=1500&poll_timeout=5&rooms_poll=1000"
TIMEOUT = 10_000
expect.set_options(timeout=TIMEOUT)
SCREENSHOTS = Path(__file__).resolve().parent.parent / "static" / "screenshots"


@pytest.fixture(scope="module")
def browser(live_server_proc: Any) -> Iterator[Browser]:
    """Module scope: the Playwright loop is gone before the async tests of other modules run.

    Playwright's sync API keeps an event loop running in this thread, so Django would refuse the
    tests' own (synchronous) ORM calls; DJANGO_ALLOW_ASYNC_UNSAFE lifts that for this module only.
    The server is started first (`live_server_proc`) so that it does not inherit the variable.
    """
    if not os.path.exists(CHROMIUM):
        pytest.skip("Debian's chromium package is not installed (make browser)")
    previous = os.environ.get("DJANGO_ALLOW_ASYNC_UNSAFE")
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            yield browser
            browser.close()
    finally:
        if previous is None:
            del os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"]
        else:
            os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = previous


class Session:
    """One user in their own browser context, logged in with a session cookie."""

    def __init__(self, browser: Browser, server: Any, user: Any, **context: Any) -> None:
        self.server = server
        self.user = user
        self.context: BrowserContext = browser.new_context(**context)
        self.context.set_default_timeout(TIMEOUT)
        client = Client()
        client.force_login(user)
        cookie = client.cookies[settings.SESSION_COOKIE_NAME].value
        self.context.add_cookies(
            [{"name": settings.SESSION_COOKIE_NAME, "value": cookie, "url": server.url}]
        )
        self.page: Page = self.context.new_page()
        self.errors: list[str] = []
        self.page.on("pageerror", lambda exc: self.errors.append(str(exc)))
        if os.environ.get("BROWSER_DEBUG"):
            name = user.get_username()
            self.page.on("console", lambda m: print(name, "console", m.text))
            self.page.on("request", lambda r: print(name, r.method, r.url))

    def open(self, slug: str, query: str = FAST) -> Page:
        self.page.goto(f"{self.server.url}/rooms/{slug}/{query}")
        return self.page

    @property
    def badge(self) -> Any:
        return self.page.locator("#conn-badge")

    def say(self, text: str) -> None:
        box = self.page.locator("#composer-body")
        box.fill(text)
        box.press("Enter")

    def message(self, body: str) -> Any:
        return self.page.locator("#messages .message .body").filter(
            has_text=re.compile(f"^{re.escape(body)}$")
        )

    def bodies(self) -> list[str]:
        return self.page.locator("#messages .message .body").all_text_contents()

    def close(self) -> None:
        assert self.errors == [], f"JavaScript errors in {self.user}'s page: {self.errors}"
        self.context.close()


@pytest.fixture
def sessions(browser: Browser, server: Any) -> Iterator[Any]:
    opened: list[Session] = []

    def start(user: Any, **context: Any) -> Session:
        session = Session(browser, server, user, **context)
        opened.append(session)
        return session

    yield start
    for session in opened:
        session.close()


def screenshot(page: Page, name: str) -> None:
    if os.environ.get("SAVE_SCREENSHOTS"):
        SCREENSHOTS.mkdir(exist_ok=True)
        page.screenshot(path=str(SCREENSHOTS / name))


def test_alice_and_bob_chat_both_ways_live(sessions: Any, alice: Any, bob: Any, room: Room) -> None:
    Room.objects.create(slug="random", title="Random")
    a, b = sessions(alice, viewport={"width": 1280, "height": 760}), sessions(bob)
    a.open("general")
    b.open("general")
    expect(a.badge).to_have_text("Live")
    expect(b.badge).to_have_text("Live")
    expect(a.page.locator("#online-list")).to_contain_text("bob")

    a.say("hello bob")
    expect(b.message("hello bob")).to_have_count(1)
    sent = a.page.locator(".message.mine", has_text="hello bob")
    expect(sent).to_have_attribute("data-state", "sent")

    box = b.page.locator("#composer-body")
    box.press_sequentially("hi alice")
    expect(a.page.locator("#typing")).to_have_text("bob is typing…")
    box.press("Shift+Enter")
    box.press_sequentially("second line")
    box.press("Enter")
    expect(a.message("hi alice\nsecond line")).to_have_count(1)
    expect(a.page.locator("#typing")).to_have_text("")
    expect(box).to_have_value("")

    assert list(Message.objects.order_by("posted_seq").values_list("body", flat=True)) == [
        "hello bob",
        "hi alice\nsecond line",
    ]
    screenshot(a.page, "room-live.png")


def test_bob_falls_back_to_long_polling_and_returns_to_live(
    sessions: Any, alice: Any, bob: Any, room: Room
) -> None:
    blocked = False
    routes: list[tuple[WebSocketRoute, WebSocketRoute]] = []

    def route(ws: WebSocketRoute) -> None:
        if blocked:
            # Closed on its first frame (the client's opening ping): a close() in the handler
            # itself never returns in Playwright's sync API, as the route is not set up yet.
            ws.on_message(lambda _: ws.close())
            return
        routes.append((ws, ws.connect_to_server()))

    a, b = sessions(alice), sessions(bob, viewport={"width": 1280, "height": 760})
    b.page.route_web_socket(re.compile(r"/ws/"), route)
    a.open("general")
    b.open("general")
    expect(b.badge).to_have_text("Live")
    expect(a.badge).to_have_text("Live")

    # Block: the open socket is cut and every new one is refused.
    blocked = True
    for page_side, server_side in routes:
        page_side.close()
        server_side.close()
    expect(b.badge).to_have_text("Fallback")

    a.say("are you still there?")
    expect(b.message("are you still there?")).to_have_count(1)
    b.say("yes, over long-polling")
    expect(a.message("yes, over long-polling")).to_have_count(1)
    expect(b.page.locator(".message.mine", has_text="long-polling")).to_have_attribute(
        "data-state", "sent"
    )
    screenshot(b.page, "room-fallback.png")

    blocked = False
    expect(b.badge).to_have_text("Live")
    a.say("welcome back")
    b.say("live again")
    expect(b.message("welcome back")).to_have_count(1)
    expect(a.message("live again")).to_have_count(1)
    assert b.bodies() == [
        "are you still there?",
        "yes, over long-polling",
        "welcome back",
        "live again",
    ]
    assert Message.objects.count() == 4


def test_a_socket_that_never_answers_falls_back_at_once(
    sessions: Any, alice: Any, bob: Any, room: Room
) -> None:
    """A proxy that accepts the upgrade and then holds it: one timeout, no second attempt."""
    held: list[WebSocketRoute] = []
    a, b = sessions(alice), sessions(bob)
    b.page.route_web_socket(re.compile(r"/ws/"), lambda ws: held.append(ws))
    a.open("general")
    b.open("general", "?ws_timeout=1000&probe_min=60000&poll_timeout=5")
    expect(b.badge).to_have_text("Fallback")
    assert len(held) == 1
    a.say("through the fallback")
    expect(b.message("through the fallback")).to_have_count(1)


def test_bob_offline_gets_every_message_once_and_his_own_is_sent_once(
    sessions: Any, alice: Any, bob: Any, room: Room
) -> None:
    a, b = sessions(alice), sessions(bob)
    a.open("general")
    b.open("general")
    expect(b.badge).to_have_text("Live")

    b.context.set_offline(True)
    expect(b.badge).to_have_text("Offline")
    b.say("typed in a tunnel")
    expect(b.page.locator(".message.mine", has_text="tunnel")).to_have_attribute(
        "data-state", "pending"
    )
    for n in range(1, 6):
        a.say(f"message {n}")
        expect(a.page.locator(".message.mine", has_text=f"message {n}")).to_have_attribute(
            "data-state", "sent"
        )

    b.context.set_offline(False)
    expect(b.badge).to_have_text("Live")
    expect(b.message("message 5")).to_have_count(1)
    expect(a.message("typed in a tunnel")).to_have_count(1)
    expect(b.page.locator(".message.mine", has_text="tunnel")).to_have_attribute(
        "data-state", "sent"
    )
    bodies = b.bodies()
    assert [body for body in bodies if body.startswith("message")] == [
        f"message {n}" for n in range(1, 6)
    ]
    assert bodies.count("typed in a tunnel") == 1
    assert Message.objects.filter(body="typed in a tunnel").count() == 1


def test_a_socket_that_goes_silent_is_replaced_and_resumed(
    sessions: Any, alice: Any, bob: Any, room: Room
) -> None:
    """Heartbeats find a connection that died without a close (a NAT or gateway forgot it)."""
    silent = {"on": False}
    sockets: list[WebSocketRoute] = []

    def route(ws: WebSocketRoute) -> None:
        server = ws.connect_to_server()
        mine = len(sockets)
        server.on_message(lambda m: None if silent["on"] and mine == 0 else ws.send(m))
        sockets.append(ws)

    a, b = sessions(alice), sessions(bob)
    b.page.route_web_socket(re.compile(r"/ws/"), route)
    a.open("general")
    b.open("general", FAST + "&heartbeat=500&pong_timeout=1000")
    expect(b.badge).to_have_text("Live")
    silent["on"] = True
    a.say("can you hear me?")
    expect(b.message("can you hear me?")).to_have_count(1)
    expect(b.badge).to_have_text("Live")
    assert len(sockets) >= 2


def test_html_in_a_message_is_shown_as_text(
    sessions: Any, alice: Any, bob: Any, room: Room
) -> None:
    a, b = sessions(alice), sessions(bob)
    a.open("general")
    b.open("general")
    expect(b.badge).to_have_text("Live")
    html = '<img src=x onerror="window.pwned=1"><b>bold</b>'
    a.say(html)
    expect(b.message(html)).to_have_count(1)
    assert b.page.locator("#messages img, #messages .body b").count() == 0
    assert b.page.evaluate("window.pwned") is None


def test_edits_and_deletes_update_in_place(sessions: Any, alice: Any, bob: Any, room: Room) -> None:
    first = services.post_message(alice, room, "frist", "c1").message
    services.post_message(alice, room, "keep me", "c2")
    b = sessions(bob)
    b.open("general")
    expect(b.badge).to_have_text("Live")
    services.edit_message(alice, room, first.pk, "first")
    expect(b.message("first")).to_have_count(1)
    expect(b.page.locator(f'.message[data-id="{first.pk}"] .edited')).to_be_visible()
    services.delete_message(alice, room, first.pk)
    expect(b.page.locator(f'.message[data-id="{first.pk}"]')).to_have_class(re.compile("deleted"))
    assert b.bodies() == ["message deleted", "keep me"]


def test_scrolling_up_loads_older_pages(sessions: Any, alice: Any, bob: Any, room: Room) -> None:
    for n in range(130):
        services.post_message(alice, room, f"old {n:03}", f"old-{n}")
    # An edit moves a message's seq past its page: paging must neither skip nor repeat it.
    old = Message.objects.get(body="old 100")
    services.edit_message(alice, room, old.pk, "old 100 (fixed)")
    b = sessions(bob, viewport={"width": 390, "height": 760})
    page = b.open("general")
    expect(page.locator("#messages .message")).to_have_count(50)
    scroller = page.locator("#scroller")
    for count in (100, 130):
        scroller.evaluate("el => { el.scrollTop = 0; }")
        expect(page.locator("#messages .message")).to_have_count(count)
    expect(page.locator("#older")).to_have_text("Beginning of the conversation")
    expected = [f"old {n:03}" for n in range(130)]
    expected[100] = "old 100 (fixed)"
    assert b.bodies() == expected


def test_unread_counts_in_the_sidebar_update_live(
    sessions: Any, alice: Any, bob: Any, room: Room
) -> None:
    other = Room.objects.create(slug="random", title="Random")
    b = sessions(bob)
    b.open("general")
    expect(b.badge).to_have_text("Live")
    unread = b.page.locator('#room-list li[data-slug="random"] .unread')
    expect(unread).to_be_hidden()
    services.post_message(alice, other, "over here", "r1")
    services.post_message(alice, other, "and here", "r2")
    expect(unread).to_have_text("2")
    # The current room never counts as unread.
    services.post_message(alice, room, "in general", "g1")
    expect(b.message("in general")).to_have_count(1)
    expect(b.page.locator('#room-list li[data-slug="general"] .unread')).to_be_hidden()
    # The rooms page keeps its counts current the same way.
    b.page.goto(f"{b.server.url}/?rooms_poll=500")
    unread = b.page.locator('#room-list li[data-slug="random"] .unread')
    expect(unread).to_have_text("2")
    services.post_message(alice, other, "and one more", "r3")
    expect(unread).to_have_text("3")


def test_it_works_on_a_phone_by_keyboard(sessions: Any, alice: Any, bob: Any, room: Room) -> None:
    services.post_message(alice, room, "morning!", "p1")
    b = sessions(bob, viewport={"width": 390, "height": 780}, is_mobile=True, has_touch=True)
    page = b.open("general")
    expect(b.badge).to_have_text("Live")
    expect(page.locator("#sidebar")).to_be_hidden()
    page.locator("#rooms-toggle").click()
    expect(page.locator("#sidebar")).to_be_visible()
    expect(page.locator('#sidebar a[aria-current="page"]')).to_be_focused()
    page.keyboard.press("Escape")
    expect(page.locator("#sidebar")).to_be_hidden()
    expect(page.locator("#rooms-toggle")).to_be_focused()
    page.locator("#composer-body").focus()
    page.keyboard.type("on my phone")
    page.keyboard.press("Enter")
    expect(page.locator(".message.mine", has_text="on my phone")).to_have_attribute(
        "data-state", "sent"
    )
    screenshot(page, "room-phone.png")


def test_a_queued_message_survives_a_reload_and_can_be_retried_by_hand(
    sessions: Any, bob: Any, room: Room
) -> None:
    failing = True

    def posts(route: Any) -> None:
        if failing and route.request.method == "POST":
            route.abort()
        else:
            route.continue_()

    b = sessions(bob)
    b.page.route("**/api/rooms/general/messages", posts)
    # No automatic retry within the test: the retry here is by hand.
    b.open("general", FAST + "&transport=poll&retry_min=60000")
    expect(b.badge).to_have_text("Fallback")
    b.say("queued before a reload")
    mine = b.page.locator(".message.mine", has_text="queued before a reload")
    expect(mine).to_have_attribute("data-state", "failed")
    b.page.reload()
    expect(mine).to_have_attribute("data-state", "failed")
    failing = False
    mine.get_by_role("button", name="Retry now").click()
    expect(mine).to_have_attribute("data-state", "sent")
    expect(mine).to_have_count(1)
    assert Message.objects.filter(body="queued before a reload").count() == 1
