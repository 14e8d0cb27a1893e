"""Direct messages, mentions and the user's stream in headless Chromium (as tests/test_browser.py:
a real server on the test database, one browser context per user, Debian's chromium).

A hidden tab is emulated in the page (document.visibilityState and a visibilitychange event), and
system notifications are observed through a spy around the real window.Notification, with the
permission granted to the context.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from playwright.sync_api import expect

from chat import writepath
from chat.models import Membership, Room
from tests import test_browser as shared
from tests.test_browser import FAST, TRANSPORTS

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

# The browser and the logged-in sessions of tests/test_browser.py.
browser = shared.browser
sessions = shared.sessions

# Before the page's modules: a page that can be told it is hidden, and a record of every
# notification it raises (each still a real one).
SPY = """
(() => {
  const Real = window.Notification;
  window.raised = [];
  window.Notification = class extends Real {
    constructor(title, options = {}) {
      super(title, options);
      window.raised.push({ title, body: options.body, tag: options.tag, note: this });
    }
  };
  let hidden = false;
  Object.defineProperty(document, "visibilityState", { get: () => (hidden ? "hidden" : "visible") });
  Object.defineProperty(document, "hidden", { get: () => hidden });
  window.setHidden = (value) => {
    hidden = value;
    document.dispatchEvent(new Event("visibilitychange"));
  };
})();
"""


# Before the page's modules: a browser not yet told whether this site may notify, in which every
# request for permission is counted. The prompt itself is the browser's to draw, so what the user
# answers in it (ANSWER) stands in for it.
ASK_SPY = """
(() => {
  let permission = "default";
  window.permissionAsks = 0;
  Object.defineProperty(Notification, "permission", { configurable: true, get: () => permission });
  Notification.requestPermission = function () {
    window.permissionAsks += 1;
    permission = ANSWER;
    return Promise.resolve(permission);
  };
})();
"""


@pytest.fixture
def carol(db: Any) -> Any:
    return get_user_model().objects.create_user("carol", password="pw-carol-123")


def entry(session: Any, slug: str) -> Any:
    return session.page.locator(f'#sidebar li[data-slug="{slug}"]')


def dm_entry(session: Any) -> Any:
    return session.page.locator("#dm-list li[data-slug^='dm-']")


def watched(session: Any) -> Any:
    """The page with the spy and the emulated visibility, notifications allowed."""
    session.context.grant_permissions(["notifications"], origin=session.server.url)
    session.context.add_init_script(SPY)
    return session


def raised(session: Any) -> list[dict[str, Any]]:
    return session.page.evaluate(
        "window.raised.map(({ title, body, tag }) => ({ title, body, tag }))"
    )


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_dm_arrives_while_bob_looks_at_another_room(
    sessions: Any, chat_server: Any, alice: Any, bob: Any, room: Room, transport: str
) -> None:
    query, state = TRANSPORTS[transport]
    Room.objects.create(slug="random", title="Random")
    a, b = sessions(alice, on=chat_server), sessions(bob, on=chat_server)
    b.open("random", FAST + query)
    expect(b.badge).to_have_text(state)
    expect(dm_entry(b)).to_have_count(0)

    # Alice writes to bob from the new-conversation dialog, his name completed by the server.
    a.open("general", FAST + query)
    a.page.locator("#dm-new").click()
    to = a.page.get_by_label("To")
    to.press_sequentially("bo")
    expect(a.page.get_by_role("option", name="bob")).to_be_visible()
    to.press("Enter")
    expect(a.page.locator("#dm-chosen")).to_contain_text("bob")
    a.page.get_by_role("button", name="Open conversation").click()
    expect(a.page).to_have_url(re.compile(r"/rooms/dm-[0-9a-f]+/"))
    expect(a.page.locator("#room-title .room-title-text")).to_have_text("bob")
    expect(a.badge).to_have_text("Live")  # a page of its own: the default transport
    a.say("psst, bob")
    expect(a.page.locator(".message.mine", has_text="psst, bob")).to_have_attribute(
        "data-state", "sent"
    )
    dm = Room.objects.get(kind=Room.DM)
    assert sorted(dm.memberships.values_list("user__username", flat=True)) == ["alice", "bob"]

    # Bob, in another room, sees the conversation appear with its count, pushed.
    expect(dm_entry(b)).to_have_count(1)
    expect(dm_entry(b).locator(".room-name")).to_have_text("alice")
    expect(dm_entry(b).locator(".unread")).to_have_text("1")
    expect(b.page).to_have_title("(1) Random")
    a.say("are you there?")
    expect(dm_entry(b).locator(".unread")).to_have_text("2")
    expect(b.page).to_have_title("(2) Random")

    dm_entry(b).locator("a").click()
    expect(b.page).to_have_url(re.compile(f"/rooms/{dm.slug}/"))
    expect(b.message("psst, bob")).to_have_count(1)
    expect(b.message("are you there?")).to_have_count(1)
    expect(b.page).to_have_title("alice")
    expect(dm_entry(b).locator(".unread")).to_be_hidden()


def test_a_group_conversation_reaches_both_people_and_the_rooms_page(
    sessions: Any, alice: Any, bob: Any, carol: Any, room: Room
) -> None:
    a, b, c = sessions(alice), sessions(bob), sessions(carol)
    c.page.goto(f"{c.server.url}/?poll_timeout=5")
    b.open("general")
    a.open("general")
    expect(a.page.locator("#online-list")).to_contain_text("bob")
    # "Message" next to bob in the online list opens the 1:1 conversation at once.
    a.page.get_by_role("button", name="Message bob").click()
    expect(a.page.locator("#room-title .room-title-text")).to_have_text("bob")
    a.page.go_back()
    a.page.locator("#dm-new").click()
    to = a.page.get_by_label("To")
    for name in ("bob", "carol"):
        to.press_sequentially(name[:2])
        expect(a.page.get_by_role("option", name=name)).to_be_visible()
        to.press("Enter")
    expect(a.page.locator("#dm-chosen li")).to_have_count(2)
    a.page.get_by_role("button", name="Open conversation").click()
    expect(a.page.locator("#room-title .room-title-text")).to_have_text("bob, carol")
    expect(a.badge).to_have_text("Live")
    a.say("three of us")

    group = Room.objects.get(kind=Room.DM, title="alice, bob, carol")
    for session, title in ((b, "alice, carol"), (c, "alice, bob")):
        item = session.page.locator(f'#dm-list li[data-slug="{group.slug}"]')
        expect(item.locator(".room-name")).to_have_text(title)
        expect(item.locator(".unread")).to_have_text("1")
    # The empty 1:1 conversation is listed for bob, with nothing unread.
    assert Room.objects.filter(kind=Room.DM).count() == 2
    expect(dm_entry(b)).to_have_count(2)
    expect(c.page).to_have_title("(1) Rooms")


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_mention_raises_a_notification_while_the_tab_is_hidden(
    sessions: Any, alice: Any, bob: Any, room: Room, transport: str
) -> None:
    query, state = TRANSPORTS[transport]
    Room.objects.create(slug="random", title="Random")
    Membership.objects.create(room=room, user=bob)
    b = watched(sessions(bob))
    b.open("random", FAST + query)
    expect(b.badge).to_have_text(state)
    expect(b.page.locator("#notify-permission")).to_be_hidden()  # already allowed

    # Looking at the page: the badge, no notification.
    writepath.post_message(alice, room, "@bob are you around?", "m1")
    badge = entry(b, "general").locator(".unread")
    expect(badge).to_have_text("1")
    expect(badge).to_have_attribute("aria-label", "1 mention")
    assert raised(b) == []

    b.page.evaluate("window.setHidden(true)")
    writepath.post_message(alice, room, "ping @bob, the deploy is done", "m2")
    b.page.wait_for_function("window.raised.length === 1")
    note = raised(b)[0]
    assert note["title"] == "alice mentioned you in General"
    assert note["body"] == "ping @bob, the deploy is done"
    expect(badge).to_have_text("2")
    expect(b.page).to_have_title("(2) Random")
    # A message that does not mention him: bold at most, no notification, no count.
    writepath.post_message(alice, room, "lunch?", "m3")
    writepath.post_message(alice, room, "@bob lunch?", "m4")
    b.page.wait_for_function("window.raised.length === 2")
    assert [n["body"] for n in raised(b)] == ["ping @bob, the deploy is done", "@bob lunch?"]
    expect(badge).to_have_text("3")

    # Clicking the notification opens the room, the mention of him marked.
    b.page.evaluate("window.raised[0].note.onclick()")
    expect(b.page).to_have_url(re.compile(r"/rooms/general/"))
    mentioned = b.page.locator("#messages .message.mentions-me")
    expect(mentioned).to_have_count(3)
    expect(mentioned.first.locator("mark.mention.me")).to_have_text("@bob")
    plain = b.page.locator("#messages .message", has_text="lunch?").first
    expect(plain).not_to_have_class(re.compile("mentions-me"))
    # He reads it: the page moves his read cursor to the room's end.
    room.refresh_from_db()
    b.page.wait_for_function(f"window.chatRoom.readSeq === {room.seq}")
    expect(entry(b, "general").locator(".unread")).to_be_hidden()
    expect(b.page).to_have_title("General")


def test_unread_clears_on_a_second_tab_when_read_on_the_first(
    sessions: Any, alice: Any, bob: Any, room: Room
) -> None:
    Room.objects.create(slug="random", title="Random")
    Membership.objects.create(room=room, user=bob)
    b = sessions(bob)
    first = b.open("random")
    second = b.context.new_page()
    second.goto(f"{b.server.url}/rooms/random/{FAST}&transport=poll")  # another device's way in
    expect(first.locator("#conn-badge")).to_have_text("Live")
    expect(second.locator("#conn-badge")).to_have_text("Fallback")
    general = [page.locator('#sidebar li[data-slug="general"]') for page in (first, second)]

    writepath.post_message(alice, room, "anyone?", "u1")
    # A room at the default level ("mentions"): unread activity is bold with a dot, no number.
    for item in general:
        expect(item).to_have_class(re.compile(r"\bhas-activity\b"))
        expect(item.locator(".unread")).to_be_hidden()
    writepath.post_message(alice, room, "@bob you?", "u2")
    for item in general:
        expect(item.locator(".unread")).to_have_text("1")

    first.locator('#sidebar li[data-slug="general"] a').click()
    expect(first.locator("#messages .message .body", has_text="@bob you?")).to_have_count(1)
    # Read on the first tab: the second clears, pushed by the stream.
    expect(general[1].locator(".unread")).to_be_hidden()
    expect(general[1]).not_to_have_class(re.compile(r"\bhas-unread\b"))
    expect(second).to_have_title("Random")


def test_the_notification_level_is_set_from_the_room_header(
    sessions: Any, alice: Any, bob: Any, room: Room
) -> None:
    other = Room.objects.create(slug="random", title="Random")
    Membership.objects.create(room=other, user=bob)
    b = sessions(bob)
    b.open("random")
    expect(b.badge).to_have_text("Live")
    level = b.page.get_by_label("Notify me")
    expect(level).to_have_value("mentions")
    level.select_option("all")
    expect(b.page.locator("#notify-level-status")).to_have_text("Saved")
    assert Membership.objects.get(room=other, user=bob).notify_level == "all"

    b.page.goto(f"{b.server.url}/rooms/general/{FAST}")
    expect(b.badge).to_have_text("Live")
    badge = entry(b, "random").locator(".unread")
    writepath.post_message(alice, other, "one", "l1")
    expect(badge).to_have_text("1")
    writepath.post_message(alice, other, "two", "l2")
    expect(badge).to_have_text("2")  # level "all": every message counts
    expect(badge).to_have_attribute("aria-label", "2 unread")


def test_the_composer_completes_the_names_of_the_rooms_people(
    sessions: Any, alice: Any, bob: Any, carol: Any, room: Room
) -> None:
    Membership.objects.create(room=room, user=bob)
    Membership.objects.create(room=room, user=carol)
    a, b = sessions(alice), sessions(bob)
    a.open("general")
    b.open("general")
    expect(a.badge).to_have_text("Live")
    box = a.page.locator("#composer-body")
    box.press_sequentially("thanks @b")
    expect(a.page.locator("#composer [role=option]")).to_have_text(["bob"])
    box.press("Enter")  # takes the name, does not send
    expect(box).to_have_value("thanks @bob ")
    box.press_sequentially("and @room-less <b>folks</b>")
    box.press("Enter")
    sent = b.page.locator("#messages .message", has_text="thanks @bob")
    expect(sent).to_have_class(re.compile(r"\bmentions-me\b"))
    expect(sent.locator("mark.mention")).to_have_text(["@bob"])
    expect(sent.locator(".body")).to_have_text("thanks @bob and @room-less <b>folks</b>")
    assert sent.locator(".body b").count() == 0
    mine = a.page.locator("#messages .message.mine", has_text="thanks @bob")
    expect(mine.locator("mark.mention")).to_have_text(["@bob"])
    expect(mine).not_to_have_class(re.compile(r"\bmentions-me\b"))


@pytest.mark.parametrize("answer", ["granted", "denied"])
def test_permission_is_asked_from_the_button_never_on_load(
    sessions: Any, bob: Any, room: Room, answer: str
) -> None:
    b = sessions(bob)
    b.context.add_init_script(ASK_SPY.replace("ANSWER", json.dumps(answer)))
    box = b.page.locator("#notify-permission")
    ask = box.get_by_role("button", name="Turn on desktop notifications")
    # The rooms page and a room's page offer it, and loading either asks nothing.
    b.page.goto(f"{b.server.url}/{FAST}")
    expect(ask).to_be_visible()
    assert b.page.evaluate("window.permissionAsks") == 0
    b.open("general")
    expect(b.badge).to_have_text("Live")
    expect(ask).to_be_visible()
    assert b.page.evaluate("window.permissionAsks") == 0

    ask.click()
    if answer == "granted":
        expect(box).to_be_hidden()
    else:
        # Refused: no button to ask again (the browser would not show its prompt), a hint instead.
        expect(ask).to_be_hidden()
        expect(box.locator(".note")).to_have_text(
            "Notifications are blocked for this site in the browser's settings."
        )
    assert b.page.evaluate("window.permissionAsks") == 1
