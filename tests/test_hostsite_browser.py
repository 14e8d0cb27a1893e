"""The browser client on another site (tests/hostsite/): signed up through the site's form, under
/community/chat/, live over the WebSocket and over the long-poll fallback. Every request the page
makes to the chat is under the chat's prefix: nothing in the scripts assumes /api/ or /ws/."""

from __future__ import annotations

import os
from collections.abc import Iterator
from urllib.parse import urlparse

import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from tests.test_browser import ARGS, CHROMIUM, FAST, TIMEOUT, TRANSPORTS
from tests.test_hostsite import PREFIX, HostSite, hostsite  # noqa: F401 (the fixture)

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def browser(hostsite: HostSite) -> Iterator[Browser]:  # noqa: F811
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield browser
        browser.close()


class Person:
    """Someone who signs up on the host site in their own browser context."""

    def __init__(self, browser: Browser, site: HostSite, name: str) -> None:
        self.site = site
        self.email = f"{name}-{os.urandom(4).hex()}@example.com"
        self.context = browser.new_context()
        self.context.set_default_timeout(TIMEOUT)
        self.page: Page = self.context.new_page()
        self.errors: list[str] = []
        self.paths: list[str] = []
        self.page.on("pageerror", lambda exc: self.errors.append(str(exc)))
        self.page.on("request", lambda r: self.paths.append(urlparse(r.url).path))
        self.page.on("websocket", lambda ws: self.paths.append(urlparse(ws.url).path))

    def sign_up(self) -> None:
        self.page.goto(f"{self.site.url}{PREFIX}signup/")
        password = f"pw-{self.email}-Long"
        self.page.fill("#id_email", self.email)
        self.page.fill("#id_password1", password)
        self.page.fill("#id_password2", password)
        self.page.click("button[type=submit]")
        expect(self.page).to_have_url(f"{self.site.url}{PREFIX}rooms/lobby/")

    def say(self, text: str) -> None:
        box = self.page.locator("#composer-body")
        box.fill(text)
        box.press("Enter")

    def close(self) -> None:
        assert self.errors == [], f"JavaScript errors in {self.email}'s page: {self.errors}"
        # The page's own requests: the chat's, under its prefix, and the static files.
        strays = [p for p in self.paths if not p.startswith((PREFIX, "/static/"))]
        assert strays == [], strays
        self.context.close()


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_two_people_chat_under_the_prefix(
    browser: Browser,
    hostsite: HostSite,  # noqa: F811
    transport: str,
) -> None:
    query, badge = TRANSPORTS[transport]
    alice, bob = Person(browser, hostsite, "alice"), Person(browser, hostsite, "bob")
    try:
        for person in (alice, bob):
            person.sign_up()
            person.paths.clear()  # the sign-up form posts to the prefix; from here, the room
            person.page.goto(f"{hostsite.url}{PREFIX}rooms/lobby/{FAST}{query}")
            expect(person.page.locator("#conn-badge")).to_have_text(badge)
            # The site's layout around the chat.
            expect(person.page.locator("body")).to_have_attribute("data-site", "hostsite")
        expect(alice.page.locator("#online-list")).to_contain_text(bob.email)

        alice.say(f"hello over {transport}")
        received = bob.page.locator("#messages .message", has_text=f"hello over {transport}")
        expect(received).to_have_count(1)
        expect(received).to_contain_text(alice.email)
        if transport == "websocket":
            assert f"{PREFIX}ws/" in bob.paths
        else:
            assert f"{PREFIX}api/me/poll" in bob.paths or any(
                p.startswith(f"{PREFIX}api/rooms/") and p.endswith("/poll") for p in bob.paths
            )
    finally:
        alice.close()
        bob.close()
