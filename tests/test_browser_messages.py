"""Messages as the room page draws and answers them, in headless Chromium: replying from the page
(on the Channels server and the serverless gateway, over a socket and over long-polling, through
the outbox's retries), a quote that shows the message it quotes, reactions seen by another user,
and the corpus of hostile bodies (tests/test_formatting.py) drawn to nothing that runs.

The browser, the per-user sessions and the servers are tests/test_browser.py's and conftest's."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from django.test import Client
from playwright.sync_api import Page, Request, Route, WebSocketRoute, expect

from chat import writepath
from chat.models import Message, Reaction, Room
from tests import test_browser as shared
from tests import test_browser_view as shared_view
from tests.test_formatting import HOSTILE

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

browser = shared.browser
sessions = shared.sessions
FAST = shared.FAST
TRANSPORTS = shared.TRANSPORTS


def message_li(session: Any, body: str) -> Any:
    """The message whose body is exactly `body` (what follows a quote inside it)."""
    exactly = session.page.locator(".body").filter(has_text=re.compile(f"^{re.escape(body)}$"))
    return session.page.locator("#messages .message", has=exactly)


def reply_button(item: Any, author: str) -> Any:
    return item.get_by_role("button", name=f"Reply to {author}", exact=True)


# --- replying ---


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_bob_replies_from_the_page_and_the_quote_follows_its_parent(
    sessions: Any, chat_server: Any, alice: Any, bob: Any, room: Room, transport: str
) -> None:
    query, state = TRANSPORTS[transport]
    question = writepath.post_message(alice, room, "which   train\n do we take?", "q1").message
    a, b = sessions(alice, on=chat_server), sessions(bob, on=chat_server)
    a.open("general", FAST + query)
    b.open("general", FAST + query)
    expect(a.badge).to_have_text(state)
    expect(b.badge).to_have_text(state)

    reply_button(b.item(question), "alice").click()
    preview = b.page.locator("#reply-preview")
    expect(preview).to_be_visible()
    expect(preview.locator(".reply-author")).to_have_text("alice")
    # The server's excerpt: whitespace collapsed.
    expect(preview.locator(".reply-excerpt")).to_have_text("which train do we take?")
    expect(b.page.locator("#composer-body")).to_be_focused()
    b.say("the 8:15")
    expect(preview).to_be_hidden()

    for session in (a, b):
        quote = message_li(session, "the 8:15").locator(".reply-quote")
        expect(quote).to_have_text("alice which train do we take?")
        expect(quote).to_have_attribute("data-reply-to", str(question.pk))
    expect(message_li(b, "the 8:15")).to_have_attribute("data-state", "sent")
    reply = Message.objects.get(body="the 8:15")
    assert reply.reply_to_id == question.pk

    # Alice deletes the question: both quotes stop quoting it at once, without a reload.
    item = a.item(question)
    shared.delete_button(item).click()
    item.get_by_role("button", name="Delete", exact=True).click()
    for session in (a, b):
        quote = message_li(session, "the 8:15").locator(".reply-quote")
        expect(quote).to_have_text("alice message deleted")
        expect(quote).to_have_class(re.compile(r"\bremoved\b"))
    assert Message.objects.get(pk=question.pk).deleted


def test_the_reply_is_a_keyboard_button_and_can_be_let_go(
    sessions: Any, alice: Any, bob: Any, room: Room
) -> None:
    first = writepath.post_message(alice, room, "first thought", "f1").message
    second = writepath.post_message(alice, room, "second thought", "f2").message
    b = sessions(bob)
    page = b.open("general")
    expect(b.badge).to_have_text("Live")
    preview = page.locator("#reply-preview")
    box = page.locator("#composer-body")

    button = reply_button(b.item(first), "alice")
    assert button.evaluate("el => el.tagName") == "BUTTON"
    button.focus()
    page.keyboard.press("Enter")
    expect(preview.locator(".reply-excerpt")).to_have_text("first thought")
    expect(box).to_be_focused()
    box.press("Escape")
    expect(preview).to_be_hidden()

    # Another message's Reply replaces the one chosen before; its cancel button lets go of it.
    reply_button(b.item(first), "alice").click()
    reply_button(b.item(second), "alice").click()
    expect(preview.locator(".reply-excerpt")).to_have_text("second thought")
    page.get_by_role("button", name="Cancel the reply to alice").click()
    expect(preview).to_be_hidden()
    expect(box).to_be_focused()
    b.say("just a message")
    expect(message_li(b, "just a message")).to_have_attribute("data-state", "sent")
    expect(message_li(b, "just a message").locator(".reply-quote")).to_have_count(0)
    assert Message.objects.get(body="just a message").reply_to_id is None


def test_a_reply_in_the_composer_to_a_message_deleted_meanwhile_says_so(
    sessions: Any, alice: Any, bob: Any, room: Room
) -> None:
    doomed = writepath.post_message(alice, room, "soon gone", "d1").message
    b = sessions(bob)
    page = b.open("general")
    expect(b.badge).to_have_text("Live")
    reply_button(b.item(doomed), "alice").click()
    writepath.delete_message(alice, room, doomed.pk)
    preview = page.locator("#reply-preview")
    expect(preview.locator(".reply-excerpt")).to_have_text("message deleted")
    # The server would refuse a reply to it: the text goes as a message of its own.
    b.say("too late")
    expect(message_li(b, "too late")).to_have_attribute("data-state", "sent")
    expect(preview).to_be_hidden()
    assert Message.objects.get(body="too late").reply_to_id is None


def test_a_reply_keeps_its_client_id_and_parent_over_a_socket_retry(
    sessions: Any, alice: Any, bob: Any, room: Room
) -> None:
    parent = writepath.post_message(alice, room, "retry me", "r1").message
    frames: list[dict[str, Any]] = []

    def route(ws: WebSocketRoute) -> None:
        server = ws.connect_to_server()

        def up(raw: str | bytes) -> None:
            frame = json.loads(raw)
            if frame.get("action") == "sendmessage":
                frames.append(frame)
                if len(frames) == 1:
                    return  # lost on the way: no ack, so the outbox tries again
            server.send(raw)

        ws.on_message(up)

    b = sessions(bob)
    b.page.route_web_socket(re.compile(r"/ws/"), route)
    b.open("general", FAST + "&ack_timeout=1500&retry_min=200")
    expect(b.badge).to_have_text("Live")
    reply_button(b.item(parent), "alice").click()
    b.say("said twice, stored once")
    sent = message_li(b, "said twice, stored once")
    # Until the retry's answer the server's copy and the waiting one are both drawn; then one.
    expect(sent.and_(b.page.locator("[data-state=sent]"))).to_have_count(1)
    expect(sent).to_have_count(1)
    expect(sent).to_have_attribute("data-state", "sent")
    expect(sent.locator(".reply-quote")).to_have_text("alice retry me")

    assert len(frames) >= 2
    assert {(f["client_id"], f["reply_to"]) for f in frames} == {
        (frames[0]["client_id"], parent.pk)
    }
    stored = Message.objects.get(body="said twice, stored once")
    assert (stored.client_id, stored.reply_to_id) == (frames[0]["client_id"], parent.pk)


def test_a_reply_keeps_its_client_id_and_parent_over_an_http_retry(
    sessions: Any, alice: Any, bob: Any, room: Room
) -> None:
    parent = writepath.post_message(alice, room, "retry me", "r1").message
    posts: list[dict[str, Any]] = []

    def messages(route: Route, request: Request) -> None:
        if request.method != "POST":
            route.continue_()
            return
        posts.append(request.post_data_json)
        if len(posts) == 1:
            # Stored by the server, the answer lost: the retry must not store it again.
            route.fetch()
            route.abort()
            return
        route.continue_()

    def polls(route: Route, request: Request) -> None:
        # Until the retry is sent, the long-poll hears nothing: its copy of the message would
        # settle the waiting one (the same client_id) and no retry would be needed.
        if len(posts) < 2:
            route.abort()
            return
        route.continue_()

    b = sessions(bob)
    b.page.route("**/api/rooms/general/messages", messages)
    b.page.route("**/api/rooms/general/poll*", polls)
    b.open("general", FAST + "&transport=poll&retry_min=200")
    expect(b.badge).to_have_text("Fallback")
    reply_button(b.item(parent), "alice").click()
    b.say("posted twice, stored once")
    sent = message_li(b, "posted twice, stored once")
    # Until the retry's answer the server's copy and the waiting one are both drawn; then one.
    expect(sent.and_(b.page.locator("[data-state=sent]"))).to_have_count(1)
    expect(sent).to_have_count(1)
    expect(sent).to_have_attribute("data-state", "sent")
    expect(sent.locator(".reply-quote")).to_have_text("alice retry me")

    assert len(posts) >= 2
    assert {(p["client_id"], p["reply_to"]) for p in posts} == {(posts[0]["client_id"], parent.pk)}
    stored = Message.objects.get(body="posted twice, stored once")
    assert (stored.client_id, stored.reply_to_id) == (posts[0]["client_id"], parent.pk)


# --- quotes ---


def test_a_quote_shows_its_message_loaded_or_not(
    sessions: Any, alice: Any, bob: Any, room: Room
) -> None:
    old = writepath.post_message(alice, room, "the very first word", "old").message
    for n in range(60):
        writepath.post_message(alice, room, f"filler {n:02}", f"fill-{n}")
    near = writepath.post_message(alice, room, "a recent point", "near").message
    writepath.post_message(bob, room, "about the start", "b1", reply_to=old.pk)
    writepath.post_message(bob, room, "about that point", "b2", reply_to=near.pk)
    # All read: the page opens at the bottom, not at an unread line further up.
    shared_view.read_up_to(bob, room)
    b = sessions(bob, viewport={"width": 1280, "height": 500})
    page = b.open("general")
    expect(b.badge).to_have_text("Live")
    expect(b.item(old)).to_have_count(0)  # older than the latest page

    # Loaded: scrolled into view and marked, the keyboard on it.
    page.locator("#scroller").evaluate("el => { el.scrollTop = 0; }")
    quote = message_li(b, "about that point").locator(".reply-quote")
    quote.click()
    expect(b.item(near)).to_be_in_viewport()
    expect(b.item(near)).to_have_attribute("data-quoted", "")
    expect(b.item(near)).to_be_focused()

    # Not loaded: the older pages are read until it is in, then the same.
    message_li(b, "about the start").locator(".reply-quote").click()
    expect(b.item(old)).to_be_in_viewport()
    expect(b.item(old)).to_have_attribute("data-quoted", "")
    expect(b.item(near)).not_to_have_attribute("data-quoted", "")
    expect(b.item(old)).to_be_focused()


# --- reactions ---


def toggle(session: Any, message: Message, emoji: str) -> Any:
    return session.item(message).locator(".reactions .reaction:not(.add-reaction)", has_text=emoji)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_reaction_shows_for_the_other_user_with_its_count_and_toggles_off(
    sessions: Any, chat_server: Any, alice: Any, bob: Any, room: Room, transport: str
) -> None:
    query, state = TRANSPORTS[transport]
    lunch = writepath.post_message(alice, room, "lunch?", "l1").message
    a, b = sessions(alice, on=chat_server), sessions(bob, on=chat_server)
    a.open("general", FAST + query)
    b.open("general", FAST + query)
    expect(a.badge).to_have_text(state)
    expect(b.badge).to_have_text(state)

    b.item(lunch).get_by_role("button", name="Add a reaction").click()
    b.item(lunch).get_by_role("button", name="React with 👍").click()
    expect(toggle(a, lunch, "👍")).to_have_text("👍 1")
    expect(toggle(a, lunch, "👍")).to_have_attribute("aria-pressed", "false")
    expect(toggle(a, lunch, "👍")).to_have_attribute("title", "bob")
    expect(toggle(b, lunch, "👍")).to_have_attribute("aria-pressed", "true")

    toggle(a, lunch, "👍").click()
    for session in (a, b):
        expect(toggle(session, lunch, "👍")).to_have_text("👍 2")
    expect(toggle(a, lunch, "👍")).to_have_attribute("aria-pressed", "true")

    toggle(b, lunch, "👍").click()
    for session in (a, b):
        expect(toggle(session, lunch, "👍")).to_have_text("👍 1")
    expect(toggle(b, lunch, "👍")).to_have_attribute("aria-pressed", "false")
    assert list(Reaction.objects.values_list("user__username", "emoji")) == [("alice", "👍")]

    toggle(a, lunch, "👍").click()
    for session in (a, b):
        expect(toggle(session, lunch, "👍")).to_have_count(0)
    assert not Reaction.objects.exists()


# --- hostile bodies ---

# Every element in the message list that could run or load something, every inline handler, and
# every URL attribute with a scheme that runs or embeds. Schemes are read as a browser reads them:
# control characters and whitespace inside are ignored.
OFFENDERS = """() => {
    const list = document.getElementById("messages");
    const found = [];
    const tags = ["script", "iframe", "frame", "object", "embed", "form", "style", "link", "meta",
        "base", "img", "svg", "math", "video", "audio", "source", "input", "textarea"];
    for (const node of list.querySelectorAll(tags.join())) found.push(node.tagName);
    for (const node of list.querySelectorAll("*")) {
        for (const attr of node.attributes) {
            const name = attr.name.toLowerCase();
            if (name.startsWith("on")) found.push(`${node.tagName} ${name}`);
            const scheme = attr.value.replace(/[\\u0000-\\u0020]/g, "").toLowerCase();
            if (/^(javascript|data|vbscript):/.test(scheme)) found.push(`${name}=${attr.value}`);
        }
    }
    return found;
}"""

LINKS = """() => [...document.querySelectorAll("#messages a")].map((a) => ({
    href: a.getAttribute("href"), rel: a.rel, target: a.target,
}))"""

# Every handler a payload could hang on an element, fired on every element of the list.
FIRE = """() => {
    const types = ["mouseover", "mouseenter", "mousemove", "mouseout", "pointerover", "pointerenter",
        "focus", "focusin", "blur", "load", "error", "animationstart", "transitionend", "toggle"];
    const nodes = document.querySelectorAll("#messages *");
    for (const node of nodes) {
        for (const type of types) node.dispatchEvent(new Event(type, { bubbles: true }));
    }
    return nodes.length;
}"""


def post_hostile(user: Any) -> list[dict[str, Any]]:
    """Every payload through the JSON API, the page's own write path."""
    client = Client()
    client.force_login(user)
    stored = []
    for n, payload in enumerate(HOSTILE):
        answer = client.post(
            "/api/rooms/general/messages",
            json.dumps({"body": payload, "client_id": f"hostile-{n}"}),
            content_type="application/json",
        )
        if "\u0000" in payload:
            # NUL is refused on every deployment (docs/protocol.md): nothing to draw.
            assert answer.status_code == 400, payload
            continue
        assert answer.status_code == 201, (payload, answer.content)
        stored.append(answer.json())
    return stored


def test_hostile_bodies_draw_to_nothing_that_runs(
    sessions: Any, alice: Any, bob: Any, room: Room
) -> None:
    stored = post_hostile(alice)
    assert len(stored) == len(HOSTILE) - 1
    b = sessions(bob, viewport={"width": 1280, "height": 900})
    tabs: list[Page] = []
    # Links open in a new tab: nothing leaves the test's machine, but where they went is kept.
    outside: list[str] = []

    def leave(route: Route) -> None:
        outside.append(route.request.url)
        route.abort()

    b.context.route(re.compile(r"^(?!http://127\.0\.0\.1)"), leave)
    page = b.open("general")
    expect(b.badge).to_have_text("Live")
    drawn = page.locator("#messages .message[data-state=sent]")
    expect(drawn).to_have_count(len(stored))
    ids = page.locator("#messages .message").evaluate_all(
        "els => els.map(el => Number(el.dataset.id))"
    )
    assert ids == [event["id"] for event in stored]

    for item in drawn.all():
        item.hover()
    links = page.locator("#messages a")
    assert links.count() > 0
    for link in links.all():
        link.hover()
        if link.get_attribute("href") is None:
            link.click()
            continue
        # A link with an address opens it in a tab of its own (target=_blank).
        with b.context.expect_page() as tab:
            link.click()
        tabs.append(tab.value)
    assert page.evaluate(FIRE) > len(stored)
    # Back on the room: no link navigated the page itself.
    assert page.url.startswith(f"{b.server.url}/rooms/general/")

    assert page.evaluate("() => typeof window.pwned") == "undefined"
    assert page.evaluate(OFFENDERS) == []
    for link in page.evaluate(LINKS):
        assert set(link["rel"].split()) >= {"nofollow", "noopener", "noreferrer"}, link
        assert link["target"] == "_blank", link
        assert link["href"] is None or re.match(r"^(https?:|mailto:)", link["href"]), link
    # What the tabs opened went over http(s) only.
    assert tabs
    assert outside and all(re.match(r"^https?://", url) for url in outside), outside
    for opened in tabs:
        opened.close()

    # The client's own allowlist holds without the server's: each payload, unsanitized, through
    # richtext.js into the page.
    assert page.evaluate(
        """async (payloads) => {
                const { richNodes } = await import("/static/chat/richtext.js");
                const box = document.createElement("div");
                document.body.append(box);
                for (const html of payloads) box.append(...richNodes(html, "bob"));
                for (const node of box.querySelectorAll("*")) {
                    node.dispatchEvent(new Event("mouseover", { bubbles: true }));
                    node.dispatchEvent(new Event("error"));
                    node.dispatchEvent(new Event("load"));
                }
                const left = box.querySelectorAll("script, img, svg, iframe, style, form, a[href^=j]");
                return [left.length, typeof window.pwned];
            }""",
        HOSTILE,
    ) == [0, "undefined"]

    # The controls: the payloads' code sets the global when it runs, and their markup runs it
    # when drawn without the allowlist. Without these the checks above could pass vacuously.
    code = re.fullmatch(r"<script>(.*)</script>", HOSTILE[0])
    assert code is not None
    page.evaluate(f"() => {{ {code.group(1)}; }}")
    assert page.evaluate("() => window.pwned") == 1
    page.evaluate("() => { delete window.pwned; }")
    page.evaluate(
        """(html) => {
            const box = document.createElement("div");
            box.innerHTML = html;
            document.body.append(box);
        }""",
        HOSTILE[1],
    )
    page.wait_for_function("() => window.pwned === 1")
