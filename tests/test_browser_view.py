"""The room view as a new reader meets it, in headless Chromium on a desktop and a phone viewport:
where unread messages start, jumping to the latest, keeping one's place while older pages load,
creating a room, the error pages, a ban seen from an open tab, signing up, drafts, ArrowUp, and
attaching a file by pasting or dropping it.

The browser, the per-user sessions and the server are tests/test_browser.py's."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.utils import timezone
from playwright.sync_api import Browser, Page, expect

from chat import moderation, writepath
from chat.models import Membership, Message, Restriction, Room
from tests import test_browser as shared

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

# The same fixtures as tests/test_browser.py: a module-scoped browser, one context per user.
browser = shared.browser
sessions = shared.sessions

DESKTOP = {"viewport": {"width": 1280, "height": 760}}
PHONE = {"viewport": {"width": 390, "height": 780}, "is_mobile": True, "has_touch": True}
SCREENS = pytest.mark.parametrize("screen", [DESKTOP, PHONE], ids=["desktop", "phone"])


def post_many(user: Any, room: Room, count: int, prefix: str) -> list[Message]:
    return [
        writepath.post_message(user, room, f"{prefix} {n:03}", f"{prefix}-{n}").message
        for n in range(count)
    ]


def read_up_to(user: Any, room: Room) -> None:
    room.refresh_from_db()
    Membership.objects.update_or_create(room=room, user=user, defaults={"read_seq": room.seq})


# Records the frames each page sends, so that a test can wait for the `read` one.
RECORD_FRAMES = """
    window.sentFrames = [];
    const send = WebSocket.prototype.send;
    WebSocket.prototype.send = function (data) {
        window.sentFrames.push(JSON.parse(data));
        return send.call(this, data);
    };
"""


def sent_reads(page: Page) -> list[int]:
    return page.evaluate("() => window.sentFrames.filter(f => f.action === 'read').map(f => f.seq)")


def wait_for_read(page: Page) -> int:
    page.wait_for_function("() => window.sentFrames.some(f => f.action === 'read')")
    return max(sent_reads(page))


def boss() -> Any:
    return get_user_model().objects.create_superuser("boss", password="pw-boss-123")


def top_of(page: Page, selector: str) -> float:
    return page.locator(selector).evaluate("el => el.getBoundingClientRect().top")


# --- where the unread messages start ---


@SCREENS
def test_a_room_with_303_unread_opens_at_a_new_messages_line(
    sessions: Any, alice: Any, bob: Any, room: Room, screen: dict[str, Any]
) -> None:
    post_many(alice, room, 10, "read")
    read_up_to(bob, room)
    unread = post_many(alice, room, 303, "new")
    b = sessions(bob, **screen)
    b.context.add_init_script(RECORD_FRAMES)
    page = b.open("general")
    expect(b.badge).to_have_text("Live")
    divider = page.locator("#messages .new-divider")
    # Opened at the cursor: the pages down to the first unread message were read, and the line
    # is just before it, where the reader is looking, with how many are new.
    expect(divider).to_have_attribute("data-placed", "true")
    expect(divider).to_have_text("303 new messages")
    expect(divider).to_be_in_viewport()
    assert divider.evaluate("el => el.nextElementSibling.dataset.id") == str(unread[0].pk)
    before = divider.evaluate("el => el.previousElementSibling.querySelector('.body').textContent")
    assert before == "read 009"
    # Not at the bottom, so nothing is read yet and the way down is offered.
    expect(page.locator("#jump-latest")).to_be_visible()
    assert sent_reads(page) == []

    # Reaching the bottom reads the room, up to its latest message.
    page.locator("#jump-latest").click()
    expect(page.locator("#jump-latest")).to_be_hidden()
    expect(b.message("new 302")).to_be_in_viewport()
    room.refresh_from_db()
    assert wait_for_read(page) == room.seq


def test_beyond_what_is_read_at_opening_the_line_heads_the_page_and_moves_into_place(
    sessions: Any, alice: Any, bob: Any, room: Room
) -> None:
    post_many(alice, room, 3, "read")
    read_up_to(bob, room)
    unread = post_many(alice, room, 620, "new")
    b = sessions(bob, **DESKTOP)
    page = b.open("general")
    divider = page.locator("#messages .new-divider")
    expect(divider).to_have_text("620 new messages")
    # Eight older pages were read at opening, and the line at the top of them loads one more
    # (500 messages): the first unread is not among them, so the line heads what is loaded.
    messages = page.locator("#messages .message")
    expect(messages).to_have_count(500)
    expect(divider).to_have_attribute("data-placed", "false")
    assert page.locator("#messages > li").first.get_attribute("class") == "new-divider"
    for count in (550, 600, 623):
        page.locator("#scroller").evaluate("el => { el.scrollTop = 0; }")
        expect(messages).to_have_count(count)
    expect(divider).to_have_attribute("data-placed", "true")
    assert divider.evaluate("el => el.nextElementSibling.dataset.id") == str(unread[0].pk)


def test_a_few_unread_are_marked_in_place_and_nothing_when_all_is_read(
    sessions: Any, alice: Any, bob: Any, room: Room
) -> None:
    post_many(alice, room, 5, "read")
    read_up_to(bob, room)
    first = post_many(alice, room, 3, "new")[0]
    b = sessions(bob, **DESKTOP)
    b.context.add_init_script(RECORD_FRAMES)
    page = b.open("general")
    divider = page.locator("#messages .new-divider")
    expect(divider).to_have_text("3 new messages")
    expect(divider).to_have_attribute("data-placed", "true")
    assert divider.evaluate("el => el.nextElementSibling.dataset.id") == str(first.pk)
    # Everything fits: the reader is at the bottom, and the room is read.
    room.refresh_from_db()
    assert wait_for_read(page) == room.seq

    read_up_to(bob, room)
    page.reload()
    expect(page.locator("#messages .message")).to_have_count(8)
    expect(page.locator("#messages .new-divider")).to_have_count(0)


# --- jump to latest ---


@SCREENS
def test_jump_to_latest_counts_what_arrives_while_scrolled_up(
    sessions: Any, alice: Any, bob: Any, room: Room, screen: dict[str, Any]
) -> None:
    post_many(alice, room, 40, "old")
    read_up_to(bob, room)
    b = sessions(bob, **screen)
    page = b.open("general")
    expect(b.badge).to_have_text("Live")
    jump = page.locator("#jump-latest")
    expect(jump).to_be_hidden()
    page.locator("#scroller").evaluate("el => { el.scrollTop = el.scrollHeight / 2; }")
    expect(jump).to_have_text("Jump to latest")
    writepath.post_message(alice, room, "while you were up", "up-1")
    writepath.post_message(alice, room, "and another", "up-2")
    expect(b.message("and another")).to_have_count(1)
    expect(jump).to_have_text("Jump to latest · 2 new")
    # An edit is not an arrival.
    writepath.edit_message(alice, room, Message.objects.get(body="old 000").pk, "old 000 (fixed)")
    expect(b.message("old 000 (fixed)")).to_have_count(1)
    expect(jump).to_have_text("Jump to latest · 2 new")
    jump.click()
    expect(jump).to_be_hidden()
    expect(b.message("and another")).to_be_in_viewport()
    assert page.locator("#scroller").evaluate(
        "el => el.scrollHeight - el.scrollTop - el.clientHeight < 2"
    )


@SCREENS
def test_the_first_visible_message_stays_put_when_older_messages_load(
    sessions: Any, alice: Any, bob: Any, room: Room, screen: dict[str, Any]
) -> None:
    post_many(alice, room, 120, "old")
    read_up_to(bob, room)
    b = sessions(bob, **screen)
    page = b.open("general")
    expect(page.locator("#messages .message")).to_have_count(50)
    scroller = page.locator("#scroller")
    # Just below the threshold that loads the next page, so that the load is what moves things.
    scroller.evaluate("el => { el.scrollTop = 160; }")
    looked_at = page.evaluate(
        """() => {
            const top = document.getElementById('scroller').getBoundingClientRect().top;
            const li = [...document.querySelectorAll('#messages .message')]
                .find((li) => li.getBoundingClientRect().bottom > top + 1);
            return {id: li.dataset.id, y: li.getBoundingClientRect().top};
        }"""
    )
    scroller.evaluate("el => { el.scrollTop = 120; }")
    expect(page.locator("#messages .message")).to_have_count(100)
    y = top_of(page, f'#messages li[data-id="{looked_at["id"]}"]')
    # Scrolled up by 40 px, then the page of 50 came in above it: it is where the reader left it.
    assert abs(y - (looked_at["y"] + 40)) <= 3, (y, looked_at["y"])


# --- creating a room ---


def test_creating_a_room_derives_the_slug_and_keeps_the_form_on_an_error(
    sessions: Any, alice: Any, bob: Any, room: Room
) -> None:
    Room.objects.create(slug="book-club", title="Book club")
    b = sessions(bob, **DESKTOP)
    console: list[str] = []
    b.page.on("console", lambda m: console.append(m.text))
    page = b.page
    page.goto(f"{b.server.url}/")
    title = page.locator("#new-room-title-input")
    slug = page.locator("#new-room-slug")
    title.press_sequentially("Book Club!")
    expect(slug).to_have_value("book-club")

    page.get_by_role("button", name="Create").click()
    # Taken: the same page again, everything as typed, the reason next to the form.
    expect(page.locator("#new-room-error")).to_have_text("The room 'book-club' already exists.")
    expect(title).to_have_value("Book Club!")
    expect(slug).to_have_value("book-club")
    assert Room.objects.filter(slug="book-club").count() == 1

    # An address edited by hand stays when the title changes.
    slug.fill("readers")
    title.fill("Readers' corner")
    expect(slug).to_have_value("readers")
    # The browser's own check is on: a bad address never reaches the server.
    slug.fill("-bad-")
    page.get_by_role("button", name="Create").click()
    assert slug.evaluate("el => el.validity.patternMismatch") is True
    expect(page).to_have_url(f"{b.server.url}/")
    assert not Room.objects.filter(title="Readers' corner").exists()

    slug.fill("")
    title.fill("Readers’ Corner")
    expect(slug).to_have_value("readers-corner")
    page.get_by_role("button", name="Create").click()
    expect(page).to_have_url(f"{b.server.url}/rooms/readers-corner/")
    assert Room.objects.get(slug="readers-corner").title == "Readers’ Corner"
    assert not [m for m in console if "pattern" in m or "Invalid" in m], console


def test_an_empty_slug_is_derived_by_the_server(sessions: Any, bob: Any) -> None:
    from django.test import Client

    client = Client()
    client.force_login(bob)
    response = client.post("/", {"title": "Weekend plans", "slug": ""})
    assert response.status_code == 302
    assert response["Location"] == "/rooms/weekend-plans/"
    taken = client.post("/", {"title": "Weekend plans", "slug": ""})
    assert taken.status_code == 400
    assert b"already exists" in taken.content and b'value="Weekend plans"' in taken.content


# --- error pages ---


@SCREENS
def test_a_private_room_of_others_is_a_styled_not_found(
    sessions: Any, outsider: Any, private_room: Room, screen: dict[str, Any]
) -> None:
    m = sessions(outsider, **screen)
    response = m.page.goto(f"{m.server.url}/rooms/secret/")
    assert response is not None and response.status == 404
    # The site's layout (top bar, who is logged in), not the bare server page.
    expect(m.page.locator(".topbar .whoami")).to_have_text("mallory")
    expect(m.page.get_by_role("heading", name="Not found")).to_be_visible()
    expect(m.page.get_by_role("link", name="All rooms")).to_be_visible()
    expect(m.page).to_have_title("Not found")


def test_a_banned_user_gets_a_styled_forbidden_with_the_reason(
    sessions: Any, alice: Any, bob: Any, room: Room
) -> None:
    moderation.restrict(boss(), bob, Restriction.BAN, room=room)
    b = sessions(bob, **DESKTOP)
    response = b.page.goto(f"{b.server.url}/rooms/general/")
    assert response is not None and response.status == 403
    expect(b.page.locator(".topbar .whoami")).to_have_text("bob")
    expect(b.page.locator(".error-page .reason")).to_have_text("You are banned from this room.")
    # The API keeps answering JSON.
    api = b.page.request.get(f"{b.server.url}/api/rooms/general/messages")
    assert api.status == 403 and api.json()["error"] == "forbidden"
    missing = b.page.request.get(f"{b.server.url}/api/no-such-endpoint")
    assert missing.status == 404 and missing.json()["error"] == "not_found"


# --- signing up ---


def test_a_new_user_lands_in_the_lobby(browser: Browser, server: Any) -> None:
    context = browser.new_context(**DESKTOP)
    try:
        page = context.new_page()
        page.goto(f"{server.url}/signup/")
        page.get_by_label("Username").fill("newcomer")
        page.locator("#id_password1").fill("a-long-pass-phrase")
        page.locator("#id_password2").fill("a-long-pass-phrase")
        page.get_by_role("button", name="Create account").click()
        expect(page).to_have_url(f"{server.url}/rooms/lobby/")
        expect(page.locator("#room-title")).to_contain_text("Lobby")
        expect(page.locator("#composer-body")).to_be_enabled()
        assert get_user_model().objects.filter(username="newcomer").exists()
    finally:
        context.close()


# --- a ban seen from an open tab ---


def test_a_site_ban_tells_the_open_tab_why_and_fails_what_is_sent(
    sessions: Any, alice: Any, bob: Any, room: Room
) -> None:
    b = sessions(bob, **DESKTOP)
    page = b.open("general")
    expect(b.badge).to_have_text("Live")
    moderation.restrict(boss(), bob, Restriction.BAN)
    alert = page.locator("#page-alert")
    expect(alert).to_contain_text("You are banned.")
    expect(b.badge).to_have_text("Disconnected")
    expect(page.locator("#composer-body")).to_be_disabled()
    # Whatever was still queued (here: sent through the channel after the ban) fails with why.
    page.evaluate("() => window.chatRoom.channel.send('general', 'after the ban')")
    failed = page.locator(".message.mine", has_text="after the ban")
    expect(failed).to_have_attribute("data-state", "failed")
    expect(failed).to_contain_text("Not sent: You are banned.")
    assert not Message.objects.filter(body="after the ban").exists()


@SCREENS
def test_a_room_ban_fails_the_pending_message_with_the_reason(
    sessions: Any, alice: Any, bob: Any, room: Room, screen: dict[str, Any]
) -> None:
    b = sessions(bob, **screen)
    page = b.open("general")
    expect(b.badge).to_have_text("Live")
    b.context.set_offline(True)
    expect(b.badge).to_have_text("Offline")
    b.say("are you there?")
    pending = page.locator(".message.mine", has_text="are you there?")
    expect(pending).to_have_attribute("data-state", "pending")
    moderation.restrict(boss(), bob, Restriction.BAN, room=room)
    b.context.set_offline(False)
    expect(pending).to_have_attribute("data-state", "failed")
    expect(pending).to_contain_text("Not sent: You are banned from this room.")
    expect(page.locator("#page-alert")).to_contain_text("You are banned from this room.")
    expect(page.locator("#composer-body")).to_be_disabled()
    assert not Message.objects.filter(body="are you there?").exists()


# --- the composer ---


def test_a_draft_survives_a_room_switch_and_a_reload(
    sessions: Any, alice: Any, bob: Any, room: Room
) -> None:
    random = Room.objects.create(slug="random", title="Random")
    Membership.objects.create(room=random, user=bob)  # the sidebar lists the rooms one is in
    b = sessions(bob, **DESKTOP)
    page = b.open("general")
    box = page.locator("#composer-body")
    box.press_sequentially("half a thought")
    page.locator('#sidebar li[data-slug="random"] a').click()
    expect(page).to_have_url(re.compile("/rooms/random/"))
    expect(box).to_have_value("")
    box.press_sequentially("elsewhere")
    page.go_back()
    expect(page).to_have_url(re.compile("/rooms/general/"))
    expect(box).to_have_value("half a thought")
    page.reload()
    expect(box).to_have_value("half a thought")
    box.press("Enter")
    expect(b.message("half a thought")).to_have_count(1)
    page.reload()
    # Sent: the draft is gone; the other room's is still there.
    expect(box).to_have_value("")
    b.open("random")
    expect(box).to_have_value("elsewhere")


@SCREENS
def test_arrow_up_in_an_empty_composer_edits_ones_last_message(
    sessions: Any, alice: Any, bob: Any, room: Room, screen: dict[str, Any]
) -> None:
    writepath.post_message(bob, room, "my first", "m1")
    writepath.post_message(bob, room, "my last", "m2")
    writepath.post_message(alice, room, "alice after", "m3")
    b = sessions(bob, **screen)
    page = b.open("general")
    box = page.locator("#composer-body")
    box.press_sequentially("x")
    box.press("ArrowUp")  # not empty: an ordinary key
    expect(page.locator(".edit-form")).to_have_count(0)
    box.fill("")
    box.press("ArrowUp")
    mine = Message.objects.get(client_id="m2")
    editor = page.locator(f'.message[data-id="{mine.pk}"] .edit-form textarea')
    expect(editor).to_be_focused()
    expect(editor).to_have_value("my last")
    editor.fill("my last, edited")
    editor.press("Enter")
    expect(b.message("my last, edited")).to_have_count(1)
    # Settled by the server (the change is no longer in flight), then stored.
    expect(page.locator(f'.message[data-id="{mine.pk}"]')).not_to_have_class(re.compile("changing"))
    assert Message.objects.get(client_id="m2").body == "my last, edited"


# A DataTransfer with one small text file, built in the page.
def with_file(name: str) -> str:
    return f"""() => {{
        const data = new DataTransfer();
        data.items.add(new File(["hello"], "{name}", {{type: "text/plain"}}));
        return data;
    }}"""


@SCREENS
def test_a_pasted_or_dropped_file_is_attached(
    sessions: Any, alice: Any, bob: Any, room: Room, screen: dict[str, Any]
) -> None:
    b = sessions(bob, **screen)
    page = b.open("general")
    expect(b.badge).to_have_text("Live")
    chip = page.locator("#attachment-chip")
    # As the browser fires it: a ClipboardEvent whose clipboardData holds the file.
    page.locator("#composer-body").evaluate(
        f"""box => box.dispatchEvent(new ClipboardEvent("paste", {{
            clipboardData: ({with_file("pasted.txt")})(), bubbles: true, cancelable: true,
        }}))"""
    )
    expect(chip).to_contain_text("pasted.txt")
    b.say("with a paste")
    expect(page.locator(".message.mine", has_text="with a paste")).to_have_attribute(
        "data-state", "sent"
    )
    expect(chip).to_be_hidden()

    dropped = page.evaluate_handle(with_file("dropped.txt"))
    page.dispatch_event("#scroller", "dragover", {"dataTransfer": dropped})
    expect(page.locator("#composer")).to_have_class(re.compile("dragging"))
    page.dispatch_event("#scroller", "drop", {"dataTransfer": dropped})
    expect(chip).to_contain_text("dropped.txt")
    expect(page.locator("#composer")).not_to_have_class(re.compile("dragging"))
    b.say("with a drop")
    expect(page.locator(".message.mine", has_text="with a drop")).to_have_attribute(
        "data-state", "sent"
    )
    names = sorted(
        Message.objects.filter(attachment__isnull=False).values_list("attachment__name", flat=True)
    )
    assert names == ["dropped.txt", "pasted.txt"]


# --- a quoted message far back ---


def test_a_quote_of_a_message_far_back_opens_the_room_at_it(
    sessions: Any, alice: Any, bob: Any, room: Room
) -> None:
    parent = writepath.post_message(alice, room, "the old question", "q").message
    # More than the first page and the two read in place: the parent is far back.
    post_many(alice, room, 200, "filler")
    writepath.post_message(bob, room, "the late answer", "a", reply_to=parent.pk)
    read_up_to(bob, room)  # the page opens at the bottom, not at an unread line
    b = sessions(bob, **DESKTOP)
    page = b.open("general")
    expect(b.message("the late answer")).to_have_count(1)
    expect(b.item(parent)).to_have_count(0)
    page.locator(".message", has_text="the late answer").locator(".reply-quote").click()
    expect(page).to_have_url(re.compile(rf"/rooms/general/\?around={parent.posted_seq}$"))
    anchor = page.locator("#messages li.anchor")
    expect(anchor).to_have_attribute("data-id", str(parent.pk))
    expect(anchor).to_contain_text("the old question")
    expect(anchor).to_be_in_viewport()


# --- how a run of messages reads ---


def test_runs_days_delivery_marks_and_the_two_kinds_of_removal(
    sessions: Any, alice: Any, bob: Any, room: Room
) -> None:
    def post(user: Any, body: str, created: Any = None) -> Message:
        message = writepath.post_message(user, room, body, body).message
        if created is not None:
            Message.objects.filter(pk=message.pk).update(created=created)
        return message

    # Three days back at noon, so that the day is neither today nor yesterday in any time zone.
    back = (timezone.now() - timedelta(days=3)).replace(hour=12, minute=0, second=0, microsecond=0)
    first = post(alice, "first of the run", back)
    second = post(alice, "second of the run", back + timedelta(minutes=2))
    later = post(alice, "after a long pause", back + timedelta(minutes=30))
    answer = post(bob, "bob answers", back + timedelta(minutes=31))
    today = post(alice, "a new day")
    mine = post(bob, "bob today")
    deleted = post(alice, "alice takes this back")
    hidden = post(alice, "over the line")
    writepath.delete_message(alice, room, deleted.pk)
    moderation.hide_message(boss(), room, hidden.pk)

    b = sessions(bob, timezone_id="UTC", **DESKTOP)
    b.open("general")
    expect(b.item(hidden)).to_contain_text("removed by a moderator")
    # One author closely in a row reads as one block; a new author or a long pause starts one.
    expect(b.item(second)).to_have_class(re.compile(r"\bgrouped\b"))
    for message in (first, later, answer, today, mine):
        expect(b.item(message)).not_to_have_class(re.compile(r"\bgrouped\b"))
    # The first message of each day carries the day's separator, and only it.
    day = b.item(first).get_attribute("data-day")
    assert day and day not in ("Today", "Yesterday")
    expect(b.item(today)).to_have_attribute("data-day", "Today")
    for message in (second, later, answer, mine):
        expect(b.item(message)).not_to_have_attribute("data-day", re.compile(".*"))
    # The delivery mark is on bob's own messages, not on anyone else's.
    for message in (answer, mine):
        expect(b.item(message).locator(".meta .state")).to_have_text("✓")
    for message in (first, second, later, today):
        expect(b.item(message).locator(".meta .state")).to_have_count(0)
    # Deleted by its author and hidden by a moderator read differently, and neither shows the text.
    expect(b.item(deleted).locator(".body")).to_have_text("message deleted")
    expect(b.item(hidden).locator(".body")).to_have_text("removed by a moderator")
    expect(b.page.locator("#messages")).not_to_contain_text("alice takes this back")
    expect(b.page.locator("#messages")).not_to_contain_text("over the line")
