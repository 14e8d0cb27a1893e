"""The browser client in headless Chromium (Debian's package, driven by Playwright's sync API).

Each test runs a real uvicorn server on the test database (the `server` fixture) and one browser
context per user, so alice and bob have separate cookies, sockets and network conditions. Timings
are shortened through the page's query string (see chat/static/chat/room.js), so falling back and
upgrading take about a second instead of tens. Nothing sleeps: every wait is an expect() on the page.

Set SAVE_SCREENSHOTS=1 to refresh the screenshots in static/screenshots/.
"""

from __future__ import annotations

import io
import json
import os
import re
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.test import Client
from django.utils import timezone
from PIL import Image
from playwright.sync_api import (
    Browser,
    BrowserContext,
    Page,
    WebSocketRoute,
    expect,
    sync_playwright,
)

from chat import moderation, writepath
from chat.models import Attachment, Membership, Message, Report, Room
from tests.conftest import Server

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
# A lock published while a long-poll is between two requests comes with a later answer: short
# polls keep that within a test's wait.
NO_ROOMS_POLL = FAST.replace("rooms_poll=1000", "rooms_poll=600000").replace(
    "poll_timeout=5", "poll_timeout=2"
)
TRANSPORTS = {"websocket": ("", "Live"), "long-poll": ("&transport=poll", "Fallback")}
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

    def item(self, message: Message) -> Any:
        return self.page.locator(f'#messages .message[data-id="{message.pk}"]')

    def bodies(self) -> list[str]:
        return self.page.locator("#messages .message .body").all_text_contents()

    def close(self) -> None:
        assert self.errors == [], f"JavaScript errors in {self.user}'s page: {self.errors}"
        self.context.close()


@pytest.fixture
def sessions(browser: Browser, server: Any) -> Iterator[Any]:
    opened: list[Session] = []

    def start(user: Any, on: Any = None, **context: Any) -> Session:
        session = Session(browser, on or server, user, **context)
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
    first = writepath.post_message(alice, room, "frist", "c1").message
    writepath.post_message(alice, room, "keep me", "c2")
    b = sessions(bob)
    b.open("general")
    expect(b.badge).to_have_text("Live")
    writepath.edit_message(alice, room, first.pk, "first")
    expect(b.message("first")).to_have_count(1)
    expect(b.page.locator(f'.message[data-id="{first.pk}"] .edited')).to_be_visible()
    writepath.delete_message(alice, room, first.pk)
    expect(b.page.locator(f'.message[data-id="{first.pk}"]')).to_have_class(re.compile("deleted"))
    assert b.bodies() == ["message deleted", "keep me"]


def test_scrolling_up_loads_older_pages(sessions: Any, alice: Any, bob: Any, room: Room) -> None:
    for n in range(130):
        writepath.post_message(alice, room, f"old {n:03}", f"old-{n}")
    # An edit moves a message's seq past its page: paging must neither skip nor repeat it.
    old = Message.objects.get(body="old 100")
    writepath.edit_message(alice, room, old.pk, "old 100 (fixed)")
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
    # Level "all": the badge counts every message (at "mentions", only mentions; see sidebar.js).
    Membership.objects.create(room=other, user=bob, notify_level="all")
    b = sessions(bob)
    b.open("general")
    expect(b.badge).to_have_text("Live")
    unread = b.page.locator('#room-list li[data-slug="random"] .unread')
    expect(unread).to_be_hidden()
    writepath.post_message(alice, other, "over here", "r1")
    writepath.post_message(alice, other, "and here", "r2")
    expect(unread).to_have_text("2")
    # The current room never counts as unread.
    writepath.post_message(alice, room, "in general", "g1")
    expect(b.message("in general")).to_have_count(1)
    expect(b.page.locator('#room-list li[data-slug="general"] .unread')).to_be_hidden()
    # The rooms page keeps its counts current the same way (long-polling the user's stream).
    b.page.goto(f"{b.server.url}/?poll_timeout=5")
    unread = b.page.locator('#room-list li[data-slug="random"] .unread')
    expect(unread).to_have_text("2")
    writepath.post_message(alice, other, "and one more", "r3")
    expect(unread).to_have_text("3")


def test_it_works_on_a_phone_by_keyboard(sessions: Any, alice: Any, bob: Any, room: Room) -> None:
    writepath.post_message(alice, room, "morning!", "p1")
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


def png(width: int, height: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), (200, 30, 60)).save(out, "PNG")
    return out.getvalue()


def fetch(page: Page, url: str) -> tuple[int, bytes]:
    """GET a URL from inside the page, with its cookies, as an <img> or a download would."""
    status, data = page.evaluate(
        """async (url) => {
            const response = await fetch(url);
            const data = new Uint8Array(await response.arrayBuffer());
            return [response.status, Array.from(data)];
        }""",
        url,
    )
    return status, bytes(data)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_bob_reports_alices_message_with_a_reason(
    sessions: Any, alice: Any, bob: Any, room: Room, transport: str
) -> None:
    rude = writepath.post_message(alice, room, "something rude", "r1").message
    gone = writepath.post_message(alice, room, "said and deleted", "r2").message
    writepath.delete_message(alice, room, gone.pk)
    writepath.post_message(bob, room, "my own words", "r3")
    query, badge = TRANSPORTS[transport]
    b = sessions(bob)
    page = b.open("general", FAST + query)
    expect(b.badge).to_have_text(badge)

    # Only other people's messages that are still there can be reported.
    expect(page.locator(f'.message[data-id="{gone.pk}"]')).to_have_class(re.compile("deleted"))
    expect(page.locator(".message.deleted .report-button")).to_have_count(0)
    expect(page.locator(".message.mine .report-button")).to_have_count(0)
    message = page.locator(f'.message[data-id="{rude.pk}"]')
    message.get_by_role("button", name="Report this message by alice").click()
    reason = message.get_by_label("Why report this message?")
    expect(reason).to_be_focused()
    reason.fill("insults another member")
    message.get_by_role("button", name="Send report").click()

    expect(message.locator(".report-status")).to_have_text(
        "Reported. The moderators will take a look."
    )
    expect(message.locator(".report-button")).to_be_disabled()
    report = Report.objects.get()
    assert (report.message_id, report.reporter, report.reason) == (
        rude.pk,
        bob,
        "insults another member",
    )


def test_a_refused_report_shows_the_servers_reason(
    sessions: Any, alice: Any, bob: Any, room: Room
) -> None:
    rude = writepath.post_message(alice, room, "something rude", "r1").message
    b = sessions(bob)
    page = b.open("general")
    expect(b.badge).to_have_text("Live")
    message = page.locator(f'.message[data-id="{rude.pk}"]')
    message.get_by_role("button", name="Report this message by alice").click()
    message.get_by_label("Why report this message?").fill("spam")
    # Gone from the database while the form was open (no event says so): the server answers
    # not_found, and the form stays for another try.
    Message.objects.filter(pk=rude.pk).delete()
    message.get_by_role("button", name="Send report").click()
    status = message.locator(".report-status")
    expect(status).to_have_attribute("data-code", "not_found")
    expect(status).to_contain_text("Not reported:")
    expect(message.get_by_role("button", name="Send report")).to_be_enabled()
    assert Report.objects.count() == 0


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_locking_the_room_disables_the_composer_live(
    sessions: Any, bob: Any, moderator: Any, room: Room, transport: str
) -> None:
    room.moderators.add(moderator)
    query, badge = TRANSPORTS[transport]
    b, m = sessions(bob), sessions(moderator)
    b.open("general", NO_ROOMS_POLL + query)
    m.open("general", NO_ROOMS_POLL + query)
    expect(b.badge).to_have_text(badge)
    expect(m.badge).to_have_text(badge)
    # The page gets the room's state on subscribing (WebSocket) and with every poll answer, so a
    # lock published before the page listens, or between two polls, still arrives. Only the rooms
    # list could also bring it, and it is turned off here.
    box, notice = b.page.locator("#composer-body"), b.page.locator("#locked-notice")
    expect(box).to_be_enabled()
    expect(notice).to_be_hidden()

    moderation.moderate_room(moderator, room, {"locked": True})
    expect(box).to_be_disabled()
    expect(b.page.get_by_role("button", name="Send")).to_be_disabled()
    expect(notice).to_be_visible()
    expect(notice).to_contain_text("This room is locked")
    # The server lets moderators post in a locked room, so their composer stays open.
    expect(m.page.locator("#locked-notice")).to_contain_text("You can still post")
    expect(m.page.locator("#composer-body")).to_be_enabled()
    m.say("locked for a while")
    expect(b.message("locked for a while")).to_have_count(1)
    if transport == "websocket":
        screenshot(b.page, "room-locked.png")

    moderation.moderate_room(moderator, room, {"locked": False, "title": "General chat"})
    expect(box).to_be_enabled()
    expect(notice).to_be_hidden()
    expect(b.page.locator("#room-title .room-title-text")).to_have_text("General chat")
    b.say("thanks for opening it again")
    expect(m.message("thanks for opening it again")).to_have_count(1)


def test_the_rooms_list_catches_a_missed_room_event(
    sessions: Any, bob: Any, moderator: Any, room: Room
) -> None:
    room.moderators.add(moderator)
    dropped: list[str] = []

    def route(ws: WebSocketRoute) -> None:
        server = ws.connect_to_server()

        def forward(frame: str | bytes) -> None:
            # Lost on the way, as the at-most-once channel layer may lose it.
            if json.loads(frame).get("type") == "room":
                dropped.append(str(frame))
            else:
                ws.send(frame)

        server.on_message(forward)

    b = sessions(bob)
    b.page.route_web_socket(re.compile(r"/ws/"), route)
    b.open("general")
    expect(b.badge).to_have_text("Live")
    expect(b.page.locator("#online-list")).to_contain_text("bob")
    moderation.moderate_room(moderator, room, {"locked": True, "title": "Quiet please"})
    # Coming back to the tab reads the rooms list again (what no stream carries).
    b.page.evaluate("document.dispatchEvent(new Event('visibilitychange'))")
    expect(b.page.locator("#composer-body")).to_be_disabled()
    expect(b.page.locator("#locked-notice")).to_be_visible()
    expect(b.page.locator("#room-title .room-title-text")).to_have_text("Quiet please")
    assert [json.loads(frame)["locked"] for frame in dropped][-1] is True


def test_a_page_opened_in_a_locked_room_starts_locked(
    sessions: Any, bob: Any, moderator: Any, room: Room
) -> None:
    room.moderators.add(moderator)
    moderation.moderate_room(moderator, room, {"locked": True})
    b, m = sessions(bob), sessions(moderator)
    b.open("general")
    m.open("general")
    expect(b.page.locator("#composer-body")).to_be_disabled()
    expect(b.page.locator("#locked-notice")).to_contain_text("This room is locked")
    expect(m.page.locator("#composer-body")).to_be_enabled()


def test_an_image_appears_as_a_thumbnail_on_the_other_page_live(
    sessions: Any, alice: Any, bob: Any, room: Room
) -> None:
    picture = png(640, 480)
    a = sessions(alice, viewport={"width": 1280, "height": 760})
    b = sessions(bob)
    a.open("general")
    b.open("general")
    expect(a.badge).to_have_text("Live")
    expect(b.badge).to_have_text("Live")

    a.page.locator("#composer-file").set_input_files(
        {"name": "sunset.png", "mimeType": "image/png", "buffer": picture}
    )
    chip = a.page.locator("#attachment-chip")
    expect(chip).to_contain_text("sunset.png")
    expect(chip.locator(".size")).to_have_text(re.compile(r"^\d+ bytes$|^\d+\.\d\sKB$"))
    a.say("look at this")
    expect(chip).to_be_hidden()

    image = b.page.locator(".message", has_text="look at this").get_by_role(
        "img", name="sunset.png"
    )
    expect(image).to_be_visible()
    # Scaled into the thumbnail box with the picture's proportions, before the file loads.
    expect(image).to_have_attribute("width", "320")
    expect(image).to_have_attribute("height", "240")
    expect(image).to_have_js_property("complete", True)
    assert image.evaluate("img => img.naturalWidth") > 0
    mine = a.page.locator(".message.mine", has_text="look at this")
    expect(mine).to_have_attribute("data-state", "sent")
    expect(a.page.locator("#messages .empty")).to_have_count(0)
    expect(mine.get_by_role("img", name="sunset.png")).to_be_visible()

    attachment = Attachment.objects.get()
    assert (attachment.name, attachment.size, attachment.status) == (
        "sunset.png",
        len(picture),
        Attachment.READY,
    )
    assert Message.objects.get(body="look at this").attachment_id == attachment.pk
    link = image.locator("xpath=..")
    href = link.get_attribute("href")
    thumbnail = image.get_attribute("src")
    assert href and thumbnail
    assert fetch(b.page, href) == (200, picture)
    status, data = fetch(b.page, thumbnail)
    assert status == 200
    assert Image.open(io.BytesIO(data)).size == (320, 240)
    screenshot(a.page, "room-attachments.png")


def test_a_file_shows_as_a_download_link_with_its_size(
    sessions: Any, alice: Any, bob: Any, room: Room
) -> None:
    notes = b"meeting notes\n" * 146  # 2,044 bytes
    a, b = sessions(alice), sessions(bob)
    # Sent over the fallback: the message POST carries the attachment too.
    a.open("general", FAST + "&transport=poll")
    b.open("general")
    expect(a.badge).to_have_text("Fallback")
    expect(b.badge).to_have_text("Live")

    a.page.locator("#composer-file").set_input_files(
        {"name": "notes.txt", "mimeType": "text/plain", "buffer": notes}
    )
    # A file alone is a message: the text may stay empty.
    a.page.get_by_role("button", name="Send").click()

    item = b.page.locator(".message", has=b.page.locator(".attachment"))
    expect(item).to_have_count(1)
    link = item.get_by_role("link", name="notes.txt")
    expect(link).to_be_visible()
    expect(item.locator(".attachment .size")).to_have_text(re.compile(r"^2\.0\sKB$"))
    expect(item.locator("img")).to_have_count(0)
    expect(item.locator(".body")).to_have_count(0)
    href = link.get_attribute("href")
    assert href
    assert fetch(b.page, href) == (200, notes)
    assert Message.objects.get().body == ""


def test_a_file_the_server_refuses_fails_with_its_reason_and_can_be_retried(
    sessions: Any, alice: Any, room: Room
) -> None:
    interrupted = {"left": 1}

    def uploads(route: Any) -> None:
        if interrupted["left"]:
            interrupted["left"] -= 1
            route.abort()
        else:
            route.continue_()

    a = sessions(alice)
    a.page.route(re.compile(r"/api/attachments/[^/]+/upload$"), uploads)
    a.open("general")
    expect(a.badge).to_have_text("Live")

    # A text file that claims to be a PNG: the server reads it and says no.
    a.page.locator("#composer-file").set_input_files(
        {"name": "fake.png", "mimeType": "image/png", "buffer": b"not a picture at all"}
    )
    a.say("fake")
    fake = a.page.locator(".message.mine", has_text="fake.png")
    expect(fake).to_have_attribute("data-state", "failed")
    expect(fake.locator(".state")).to_contain_text("The upload was interrupted.")
    fake.get_by_role("button", name="Retry now").click()
    expect(fake).to_have_attribute("data-state", "failed")
    expect(fake.locator(".state")).to_contain_text("Not sent: ")
    expect(fake.locator(".state")).not_to_contain_text("interrupted")
    detail = fake.locator(".state").text_content()
    assert Message.objects.count() == 0
    assert not Attachment.objects.filter(status=Attachment.READY).exists()

    fake.get_by_role("button", name="Discard").click()
    expect(fake).to_have_count(0)
    assert detail


def test_a_file_over_the_limit_is_refused_before_uploading(
    sessions: Any, alice: Any, room: Room
) -> None:
    a = sessions(alice)
    page = a.open("general")
    expect(a.badge).to_have_text("Live")
    requests: list[str] = []
    page.on("request", lambda r: requests.append(r.url) if "attachments" in r.url else None)
    limit = int(page.locator("#chat").get_attribute("data-max-attachment") or 0)
    assert limit == settings.CHAT_ATTACHMENT_MAX_SIZE

    page.locator("#composer-file").set_input_files(
        {"name": "huge.png", "mimeType": "image/png", "buffer": b"\0" * (limit + 1)}
    )
    error = page.locator("#attach-error")
    expect(error).to_be_visible()
    expect(error).to_contain_text("huge.png")
    expect(error).to_contain_text("files can be up to 10.0")
    expect(page.locator("#attachment-chip")).to_be_hidden()
    # Nothing is attached, so an empty message is not a message either.
    a.say("")
    a.say("just text")
    expect(page.locator(".message.mine")).to_have_count(1)
    expect(page.locator(".message.mine")).to_have_attribute("data-state", "sent")
    assert requests == []
    assert Attachment.objects.count() == 0


def test_a_long_poll_page_shows_who_is_online_in_a_quiet_room(
    sessions: Any, alice: Any, bob: Any, room: Room
) -> None:
    """Nobody arrives or leaves after the page opens, and nobody speaks: the list comes with the
    poll answers themselves."""
    b = sessions(bob)
    b.open("general")
    expect(b.page.locator("#online-list")).to_contain_text("bob")
    a = sessions(alice)
    a.open("general", FAST + "&transport=poll&poll_timeout=2")
    expect(a.badge).to_have_text("Fallback")
    expect(a.page.locator("#online-list")).to_contain_text("alice")
    expect(a.page.locator("#online-list")).to_contain_text("bob")


# --- editing and deleting one's own messages ---


def edit_button(item: Any) -> Any:
    return item.get_by_role("button", name="Edit your message", exact=True)


def delete_button(item: Any) -> Any:
    return item.get_by_role("button", name="Delete your message", exact=True)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_alice_edits_her_message_and_bob_sees_it_live(
    sessions: Any, alice: Any, bob: Any, room: Room, transport: str
) -> None:
    mine = writepath.post_message(alice, room, "see you at 5", "e1").message
    query, badge = TRANSPORTS[transport]
    a, b = sessions(alice), sessions(bob)
    a.open("general", FAST + query)
    b.open("general")
    expect(a.badge).to_have_text(badge)
    expect(b.badge).to_have_text("Live")

    item = a.item(mine)
    edit_button(item).click()
    box = item.get_by_label("Edited message")
    expect(box).to_be_focused()
    expect(box).to_have_value("see you at 5")
    expect(box).to_have_attribute("maxlength", str(settings.CHAT_MAX_BODY))
    box.fill("see you at 6")
    box.press("Shift+Enter")
    box.press_sequentially("at the station")
    if transport == "websocket":
        screenshot(a.page, "room-editing.png")
    box.press("Enter")

    expect(b.message("see you at 6\nat the station")).to_have_count(1)
    expect(b.item(mine).locator(".edited")).to_have_text("edited")
    expect(a.message("see you at 6\nat the station")).to_have_count(1)
    expect(item.locator(".edited")).to_have_text("edited")
    expect(box).to_have_count(0)
    expect(item).not_to_have_attribute("data-change", re.compile(".*"))
    # Back on the message's own button, not lost at the top of the page.
    expect(edit_button(item)).to_be_focused()
    mine.refresh_from_db()
    assert (mine.body, mine.edited is not None) == ("see you at 6\nat the station", True)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_alice_deletes_her_message_after_confirming_and_bob_sees_it_gone(
    sessions: Any, alice: Any, bob: Any, room: Room, transport: str
) -> None:
    mine = writepath.post_message(alice, room, "wrong room, sorry", "d1").message
    writepath.post_message(alice, room, "this one stays", "d2")
    query, badge = TRANSPORTS[transport]
    a, b = sessions(alice), sessions(bob)
    a.open("general", FAST + query)
    b.open("general")
    expect(a.badge).to_have_text(badge)
    expect(b.badge).to_have_text("Live")

    item = a.item(mine)
    delete_button(item).click()
    confirm = item.get_by_role("group", name="Delete this message for everyone?")
    expect(confirm).to_be_visible()
    # The safe answer has the keyboard; Escape is the same answer.
    expect(confirm.get_by_role("button", name="Cancel")).to_be_focused()
    a.page.keyboard.press("Escape")
    expect(confirm).to_have_count(0)
    expect(delete_button(item)).to_be_focused()
    assert not Message.objects.get(pk=mine.pk).deleted

    delete_button(item).click()
    if transport == "websocket":
        screenshot(a.page, "room-delete-confirm.png")
    confirm.get_by_role("button", name="Delete", exact=True).click()
    expect(b.item(mine)).to_have_class(re.compile(r"\bdeleted\b"))
    expect(b.item(mine).locator(".body")).to_have_text("message deleted")
    expect(item.locator(".body")).to_have_text("message deleted")
    expect(item.get_by_role("button")).to_have_count(0)
    assert b.bodies() == ["message deleted", "this one stays"]
    mine.refresh_from_db()
    assert (mine.deleted, mine.body) == (True, "")


def test_edit_and_delete_are_only_on_your_own_messages_still_there(
    sessions: Any, alice: Any, bob: Any, room: Room
) -> None:
    hers = writepath.post_message(alice, room, "alice speaking", "o1").message
    gone = writepath.post_message(bob, room, "bob, said and deleted", "o2").message
    writepath.delete_message(bob, room, gone.pk)
    his = writepath.post_message(bob, room, "bob speaking", "o3").message
    b = sessions(bob)
    b.open("general")
    expect(b.badge).to_have_text("Live")

    expect(edit_button(b.item(his))).to_be_visible()
    expect(delete_button(b.item(his))).to_be_visible()
    expect(b.item(his).locator(".report-button")).to_have_count(0)
    expect(b.item(hers).get_by_role("button", name="Report this message by alice")).to_be_visible()
    expect(b.item(hers).locator(".own-actions")).to_have_count(0)
    expect(b.item(gone).get_by_role("button")).to_have_count(0)
    # A message just sent gets its buttons too, once the server has it.
    b.say("and one more")
    fresh = b.page.locator(".message.mine", has_text="and one more")
    expect(fresh).to_have_attribute("data-state", "sent")
    expect(edit_button(fresh)).to_be_visible()
    expect(b.page.locator(".own-actions")).to_have_count(2)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_refused_change_shows_the_servers_reason_and_keeps_the_text(
    sessions: Any, alice: Any, room: Room, transport: str
) -> None:
    late = writepath.post_message(alice, room, "typed in haste", "r1").message
    vanished = writepath.post_message(alice, room, "about to vanish", "r2").message
    query, badge = TRANSPORTS[transport]
    a = sessions(alice)
    a.open("general", FAST + query)
    expect(a.badge).to_have_text(badge)

    item = a.item(late)
    edit_button(item).click()
    item.get_by_label("Edited message").fill("typed at leisure")
    # The window passes while the editor is open (no event says so): the server refuses.
    Message.objects.filter(pk=late.pk).update(created=timezone.now() - timedelta(hours=1))
    item.get_by_role("button", name="Save").click()
    note = item.locator(".change-note")
    expect(note).to_have_attribute("data-code", "forbidden")
    expect(note).to_contain_text("Not saved: The edit window for this message has passed.")
    expect(item.locator(".body")).to_have_text("typed in haste")
    expect(item.locator(".edited")).to_have_count(0)
    expect(item).not_to_have_attribute("data-change", re.compile(".*"))
    assert Message.objects.get(pk=late.pk).body == "typed in haste"
    note.get_by_role("button", name="Dismiss this notice").click()
    expect(note).to_have_count(0)

    # Gone from the database behind the page's back: the delete is refused as not found.
    gone = a.item(vanished)
    delete_button(gone).click()
    Message.objects.filter(pk=vanished.pk).delete()
    gone.get_by_role("button", name="Delete", exact=True).click()
    expect(gone.locator(".change-note")).to_have_attribute("data-code", "not_found")
    expect(gone.locator(".change-note")).to_contain_text(
        "Not deleted: There is no such message in this room."
    )
    expect(gone.locator(".body")).to_have_text("about to vanish")
    expect(delete_button(gone)).to_be_enabled()


def test_a_change_in_flight_shows_as_pending(sessions: Any, alice: Any, room: Room) -> None:
    first = writepath.post_message(alice, room, "first draft", "p1").message
    second = writepath.post_message(alice, room, "to be deleted", "p2").message
    held: list[Any] = []
    a = sessions(alice)
    # Over long-polling each change is one request, which the test holds until it has looked.
    a.page.route(re.compile(r"/api/rooms/general/messages/\d+$"), lambda r: held.append(r))
    a.open("general", FAST + "&transport=poll")
    expect(a.badge).to_have_text("Fallback")

    item = a.item(first)
    edit_button(item).click()
    box = item.get_by_label("Edited message")
    box.fill("second draft")
    box.press("Enter")
    expect(item).to_have_attribute("data-change", "edit")
    expect(item.locator(".state")).to_have_text("Saving…")
    expect(item.locator(".body")).to_have_text("second draft")
    expect(edit_button(item)).to_be_disabled()
    expect(delete_button(item)).to_be_disabled()

    other = a.item(second)
    delete_button(other).click()
    other.get_by_role("button", name="Delete", exact=True).click()
    expect(other).to_have_attribute("data-change", "delete")
    expect(other.locator(".state")).to_have_text("Deleting…")
    expect(other.locator(".body")).to_have_text("to be deleted")

    assert [(r.request.method, r.request.url.rsplit("/", 1)[1]) for r in held] == [
        ("PATCH", str(first.pk)),
        ("DELETE", str(second.pk)),
    ]
    for route in held:
        route.continue_()
    expect(item.locator(".edited")).to_have_text("edited")
    expect(item).not_to_have_attribute("data-change", re.compile(".*"))
    expect(edit_button(item)).to_be_enabled()
    expect(other.locator(".body")).to_have_text("message deleted")
    assert Message.objects.get(pk=first.pk).body == "second draft"


def test_cancelling_or_saving_the_same_text_changes_nothing(
    sessions: Any, alice: Any, room: Room
) -> None:
    mine = writepath.post_message(alice, room, "as it was", "c1").message
    a = sessions(alice)
    frames: list[str] = []
    a.page.on("websocket", lambda ws: ws.on("framesent", lambda frame: frames.append(frame)))
    a.open("general")
    expect(a.badge).to_have_text("Live")
    item = a.item(mine)

    edit_button(item).click()
    box = item.get_by_label("Edited message")
    box.fill("something else")
    box.press("Escape")
    expect(box).to_have_count(0)
    expect(item.locator(".body")).to_have_text("as it was")
    expect(edit_button(item)).to_be_focused()

    a.page.keyboard.press("Enter")  # the focused Edit button opens it again
    expect(box).to_have_value("as it was")
    box.press("Enter")
    expect(box).to_have_count(0)
    expect(item.locator(".edited")).to_have_count(0)
    expect(item.locator(".body")).to_have_text("as it was")
    assert any('"subscribe"' in str(frame) for frame in frames)
    assert not any("editmessage" in str(frame) for frame in frames)
    assert Message.objects.get(pk=mine.pk).edited is None


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_locking_the_room_disables_edit_and_delete_live(
    sessions: Any, bob: Any, moderator: Any, room: Room, transport: str
) -> None:
    room.moderators.add(moderator)
    his = writepath.post_message(bob, room, "before the lock", "l1").message
    theirs = writepath.post_message(moderator, room, "moderator here", "l2").message
    query, badge = TRANSPORTS[transport]
    b, m = sessions(bob), sessions(moderator)
    b.open("general", NO_ROOMS_POLL + query)
    m.open("general", NO_ROOMS_POLL + query)
    expect(b.badge).to_have_text(badge)
    expect(m.badge).to_have_text(badge)
    item = b.item(his)
    expect(edit_button(item)).to_be_enabled()
    # An edit being written keeps its text through the lock; only Save waits for the unlock.
    edit_button(item).click()
    item.get_by_label("Edited message").fill("after the lock")

    moderation.moderate_room(moderator, room, {"locked": True})
    expect(edit_button(item)).to_be_disabled()
    expect(delete_button(item)).to_be_disabled()
    expect(item.get_by_role("button", name="Save")).to_be_disabled()
    expect(item.get_by_label("Edited message")).to_have_value("after the lock")
    # The server lets moderators change their messages in a locked room.
    expect(edit_button(m.item(theirs))).to_be_enabled()
    expect(delete_button(m.item(theirs))).to_be_enabled()

    moderation.moderate_room(moderator, room, {"locked": False})
    expect(edit_button(item)).to_be_enabled()
    item.get_by_role("button", name="Save").click()
    expect(m.message("after the lock")).to_have_count(1)


@pytest.fixture
def short_window_server(live_server_proc: Server, transactional_db: Any) -> Iterator[Server]:
    """The edit window is read by the server process: this one gives five seconds."""
    server = Server(env={"CHAT_EDIT_WINDOW": "5"}).start()
    yield server
    server.stop()


def test_the_edit_button_goes_when_the_edit_window_passes(
    sessions: Any, short_window_server: Server, alice: Any, room: Room
) -> None:
    old = writepath.post_message(alice, room, "from a minute ago", "w1").message
    Message.objects.filter(pk=old.pk).update(created=timezone.now() - timedelta(minutes=1))
    fresh = writepath.post_message(alice, room, "just now", "w2").message
    a = sessions(alice, on=short_window_server)
    page = a.open("general")
    expect(a.badge).to_have_text("Live")
    expect(page.locator("#chat")).to_have_attribute("data-edit-window", "5")

    expect(edit_button(a.item(old))).to_have_count(0)
    expect(delete_button(a.item(old))).to_be_visible()
    edit = edit_button(a.item(fresh))
    expect(edit).to_be_visible()
    # No event and no reload: the page's own clock takes it away.
    expect(edit).to_have_count(0)
    expect(delete_button(a.item(fresh))).to_be_visible()
    # ...and not before the window had passed.
    assert timezone.now() - Message.objects.get(pk=fresh.pk).created > timedelta(seconds=5)


def drop_first(ws: WebSocketRoute, lost: list[dict[str, Any]], matches: Any) -> None:
    """Forward the server's frames to the page except the first that `matches` (into `lost`)."""
    server = ws.connect_to_server()

    def forward(frame: str | bytes) -> None:
        event = json.loads(frame)
        if not lost and matches(event):
            lost.append(event)
        else:
            ws.send(frame)

    server.on_message(forward)


def test_a_gap_whose_fill_fails_is_read_again(
    sessions: Any, alice: Any, bob: Any, room: Room
) -> None:
    """A message lost on the way, and the request that reads the hole failing once: the cursor
    stays before the hole and the page asks again, so every message shows, once."""
    lost: list[dict[str, Any]] = []
    fills: list[str] = []

    def fill(route: Any) -> None:
        fills.append(route.request.url)
        if len(fills) == 1:
            route.abort()
        else:
            route.continue_()

    b = sessions(bob)
    b.page.route_web_socket(
        re.compile(r"/ws/"),
        lambda ws: drop_first(
            ws, lost, lambda e: e.get("type") == "message" and e.get("body") == "two"
        ),
    )
    b.page.route(re.compile(r"/api/rooms/general/messages\?after="), fill)
    b.open("general")
    expect(b.badge).to_have_text("Live")
    for body in ("one", "two", "three"):
        writepath.post_message(alice, room, body, f"gap-{body}")
    expect(b.message("three")).to_have_count(1)
    expect(b.message("two")).to_have_count(1)
    assert b.bodies() == ["one", "two", "three"]
    assert [event["body"] for event in lost] == ["two"]
    assert len(fills) == 1


def test_an_edit_is_settled_by_its_ack_over_websocket(
    sessions: Any, alice: Any, room: Room
) -> None:
    """The changed message is lost on the way: the server's ack alone settles the edit."""
    mine = writepath.post_message(alice, room, "typo here", "k1").message
    lost: list[dict[str, Any]] = []
    a = sessions(alice)
    a.page.route_web_socket(
        re.compile(r"/ws/"),
        lambda ws: drop_first(
            ws, lost, lambda e: e.get("type") == "message" and e.get("id") == mine.pk
        ),
    )
    a.open("general", FAST + "&ack_timeout=3000")
    expect(a.badge).to_have_text("Live")
    item = a.item(mine)
    edit_button(item).click()
    box = item.get_by_label("Edited message")
    box.fill("no typo here")
    box.press("Enter")
    expect(item.locator(".edited")).to_have_text("edited")
    expect(item.locator(".body")).to_have_text("no typo here")
    expect(item).not_to_have_attribute("data-change", re.compile(".*"))
    expect(item.locator(".change-note")).to_have_count(0)
    assert [event["body"] for event in lost] == ["no typo here"]
    assert Message.objects.get(pk=mine.pk).body == "no typo here"

    # The next event shows the hole, which is read: the server's copy replaces the page's.
    writepath.post_message(alice, room, "and another", "k2")
    expect(a.message("and another")).to_have_count(1)
    expect(item.locator(".body")).to_have_text("no typo here")
    expect(item.locator(".change-note")).to_have_count(0)


def test_a_change_waiting_on_a_socket_that_closes_fails_at_once(
    sessions: Any, alice: Any, room: Room
) -> None:
    mine = writepath.post_message(alice, room, "still here", "w1").message
    routes: list[WebSocketRoute] = []
    held: list[str | bytes] = []

    def route(ws: WebSocketRoute) -> None:
        server = ws.connect_to_server()

        def up(frame: str | bytes) -> None:
            # The delete never reaches the server: the socket dies with it in flight.
            if json.loads(frame).get("action") == "deletemessage":
                held.append(frame)
            else:
                server.send(frame)

        ws.on_message(up)
        routes.append(ws)

    a = sessions(alice)
    a.page.route_web_socket(re.compile(r"/ws/"), route)
    # Far longer than the test waits: only the closing socket can answer in time.
    a.open("general", FAST + "&ack_timeout=60000")
    expect(a.badge).to_have_text("Live")
    item = a.item(mine)
    delete_button(item).click()
    item.get_by_role("button", name="Delete", exact=True).click()
    expect(item).to_have_attribute("data-change", "delete")
    routes[0].close()
    note = item.locator(".change-note")
    expect(note).to_have_attribute("data-code", "network", timeout=3000)
    expect(note).to_contain_text("Not deleted:")
    expect(item.locator(".body")).to_have_text("still here")
    expect(a.badge).to_have_text("Live")
    expect(delete_button(item)).to_be_enabled()
    assert not Message.objects.get(pk=mine.pk).deleted
    assert len(held) == 1


def test_live_messages_are_kept_while_history_reloads_after_a_resync(
    sessions: Any, alice: Any, bob: Any, room: Room
) -> None:
    for n in range(60):
        writepath.post_message(alice, room, f"old {n:02}", f"old-{n}")
    routes: list[WebSocketRoute] = []
    pages: list[Any] = []

    def route(ws: WebSocketRoute) -> None:
        ws.connect_to_server()
        routes.append(ws)

    b = sessions(bob)
    b.page.route_web_socket(re.compile(r"/ws/"), route)
    # Held, so that a live message arrives while the page waits for its history.
    b.page.route(re.compile(r"/api/rooms/general/messages\?limit="), lambda r: pages.append(r))
    b.open("general")
    expect(b.badge).to_have_text("Live")
    expect(b.page.locator("#messages .message")).to_have_count(50)
    # What the server says when the page's cursor is too old to resume.
    seq = Room.objects.get(pk=room.pk).seq
    routes[0].send(
        json.dumps(
            {
                "type": "subscribed",
                "room": "general",
                "seq": seq,
                "resumed": False,
                "reason": "resync",
            }
        )
    )
    expect(b.page.locator("#messages .message")).to_have_count(0)
    # Playwright hands a held request to its handler while the test talks to the browser.
    for _ in range(500):
        if pages:
            break
        b.page.evaluate("0")
    # The page as the server had it before the new message.
    assert len(pages) == 1
    answer = pages[0].fetch()
    writepath.post_message(alice, room, "during the reload", "live-1")
    expect(b.message("during the reload")).to_have_count(1)
    pages[0].fulfill(response=answer)
    expect(b.page.locator("#messages .message")).to_have_count(51)
    assert b.bodies() == [f"old {n:02}" for n in range(10, 60)] + ["during the reload"]
    expect(b.page.locator("#older button")).to_have_text("Load older messages")


def test_the_page_works_against_the_local_gateway(
    sessions: Any, serverless_server: Any, alice: Any, bob: Any, room: Room
) -> None:
    """`make serverless`: the page, its CSS and JavaScript come through the API Gateway stand-in,
    and two people chat live over its WebSocket API (Zappa's handler behind it)."""
    a, b = sessions(alice, on=serverless_server), sessions(bob, on=serverless_server)
    a.open("general")
    b.open("general")
    expect(a.badge).to_have_text("Live")
    expect(b.badge).to_have_text("Live")
    styled = (
        "[...document.styleSheets].some(s => s.href?.endsWith('/chat.css') && s.cssRules.length)"
    )
    assert a.page.evaluate(styled)
    a.say("hello through the gateway")
    expect(b.message("hello through the gateway")).to_have_count(1)
    expect(a.page.locator(".message.mine", has_text="hello through the gateway")).to_have_attribute(
        "data-state", "sent"
    )
    assert Message.objects.get().body == "hello through the gateway"
