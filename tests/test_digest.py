"""Email digests (chat/digest.py): mentions and DMs left unread for CHAT_EMAIL_DELAY minutes go out
as one email per user, once; the unsubscribe link works without logging in."""

from __future__ import annotations

import json
import logging
import os
import re
import smtplib
import sys
import threading
from collections.abc import Callable, Iterator
from datetime import timedelta
from io import StringIO
from typing import Any
from unittest import mock

import pytest
from django.contrib.auth import get_user_model
from django.core import mail
from django.core.mail.backends.locmem import EmailBackend as LocmemBackend
from django.core.management import call_command
from django.db import connection
from django.test import Client
from django.utils import timezone, translation

from chat import digest, dms, writepath
from chat.models import Block, Inbox, Membership, Message, Room, UserEvent
from tests.conftest import ROOT

SITE = "https://chat.example.com"


@pytest.fixture(autouse=True)
def _site(settings: Any) -> None:
    settings.CHAT_SITE_URL = SITE
    settings.CHAT_EMAIL_DELAY = 10


def person(name: str, email: str | None = None) -> Any:
    return get_user_model().objects.create_user(
        name, email=f"{name}@example.com" if email is None else email, password=f"pw-{name}-123"
    )


@pytest.fixture
def alice(db: Any) -> Any:
    return person("alice")


@pytest.fixture
def bob(db: Any) -> Any:
    return person("bob")


@pytest.fixture
def carol(db: Any) -> Any:
    return person("carol")


@pytest.fixture
def general(db: Any) -> Room:
    return Room.objects.create(slug="general", title="General")


def post(user: Any, room: Room, body: str) -> Message:
    room.refresh_from_db()
    return writepath.post_message(user, room, body).message


def age(minutes: int = 11) -> None:
    """Every event so far raised `minutes` ago (the delay is 10)."""
    UserEvent.objects.update(created=timezone.now() - timedelta(minutes=minutes))


def emailed_seq(user: Any) -> int:
    return Inbox.objects.get(user=user).emailed_seq


def html_of(message: Any) -> str:
    [(html, kind)] = message.alternatives
    assert kind == "text/html"
    return html


def unsubscribe_link(message: Any) -> str:
    match = re.search(rf"{re.escape(SITE)}(/email/unsubscribe/\S+)", message.body)
    assert match, message.body
    return match.group(1)


def test_it_emails_one_digest_per_user_grouped_by_room(
    alice: Any, bob: Any, carol: Any, general: Room
) -> None:
    post(bob, general, "@alice the release is at noon")
    post(bob, general, "@carol can you review?")
    room, _ = dms.open_dm(bob, ["alice"])
    post(bob, room, "lunch after?")
    age()

    assert digest.send_digests() == {"sent": 2, "nothing": 0, "failed": 0, "busy": 0, "left": 0}

    by_address = {message.to[0]: message for message in mail.outbox}
    assert sorted(by_address) == ["alice@example.com", "carol@example.com"]
    to_alice = by_address["alice@example.com"]
    assert to_alice.subject == "2 unread messages on Chat"
    assert "the release is at noon" in to_alice.body and "lunch after?" in to_alice.body
    assert "can you review" not in to_alice.body
    assert f"In General: {SITE}/rooms/general/" in to_alice.body
    assert f"Direct messages with bob: {SITE}/rooms/{room.slug}/" in to_alice.body
    assert f'href="{SITE}/rooms/general/"' in html_of(to_alice)
    link = SITE + unsubscribe_link(to_alice)
    assert to_alice.extra_headers["List-Unsubscribe"] == f"<{link}>"
    assert to_alice.extra_headers["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert "can you review?" in by_address["carol@example.com"].body
    assert emailed_seq(alice) == Inbox.objects.get(user=alice).seq == 2

    # Nothing is emailed twice.
    assert digest.send_digests()["sent"] == 0
    assert len(mail.outbox) == 2


def test_a_site_in_french_sends_its_digests_in_french(alice: Any, bob: Any, general: Room) -> None:
    post(bob, general, "@alice on se voit à midi ?")
    age()
    with translation.override("fr"):
        assert digest.send_digests()["sent"] == 1
    [message] = mail.outbox
    assert message.subject == "1 message non lu sur Chat"
    assert message.body.startswith("Bonjour alice,")
    assert "bob vous a mentionné" in message.body and "Dans General" in message.body
    assert '<html lang="fr">' in html_of(message)


def test_it_waits_for_the_delay_and_skips_what_was_read_meanwhile(
    alice: Any, bob: Any, general: Room
) -> None:
    first = post(bob, general, "@alice read me soon")
    age(minutes=9)
    assert digest.send_digests()["sent"] == 0
    assert mail.outbox == [] and emailed_seq(alice) == 0

    general.refresh_from_db()
    assert writepath.mark_read(alice, general, first.posted_seq) == first.posted_seq
    post(bob, general, "@alice and this one later")
    age()
    UserEvent.objects.filter(message__body__contains="later").update(created=timezone.now())

    # The read one is considered and dropped; the young one waits for the next run.
    assert digest.send_digests() == {"sent": 0, "nothing": 1, "failed": 0, "busy": 0, "left": 0}
    assert mail.outbox == []
    mention = UserEvent.objects.get(user=alice, kind=UserEvent.MENTION, message=first)
    assert emailed_seq(alice) == mention.seq

    age()
    assert digest.send_digests()["sent"] == 1
    [message] = mail.outbox
    assert "and this one later" in message.body and "read me soon" not in message.body


def test_it_leaves_out_blocked_authors_left_rooms_and_removed_messages(
    alice: Any, bob: Any, carol: Any, general: Room
) -> None:
    secret = Room.objects.create(slug="secret", title="Secret", private=True)
    Membership.objects.bulk_create([Membership(room=secret, user=u) for u in (alice, bob)])
    post(bob, general, "@alice still unread")
    post(carol, general, "@alice from carol")
    post(bob, secret, "@alice in the secret room")
    deleted = post(bob, general, "@alice deleted later")
    hidden = post(bob, general, "@alice hidden by a moderator")
    edited = post(bob, general, "@alice first draft")
    Block.objects.create(blocker=alice, blocked=carol)
    Membership.objects.filter(room=secret, user=alice).delete()
    writepath.delete_message(bob, general, deleted.pk)
    Message.objects.filter(pk=hidden.pk).update(hidden=True)
    general.refresh_from_db()
    writepath.edit_message(bob, general, edited.pk, "@alice final text")
    age()

    assert digest.send_digests()["sent"] == 1
    [message] = mail.outbox
    assert "still unread" in message.body and "final text" in message.body
    for gone in ("from carol", "secret room", "deleted later", "hidden by", "first draft"):
        assert gone not in message.body and gone not in html_of(message)
    assert message.subject == "2 unread messages on Chat"
    assert emailed_seq(alice) == Inbox.objects.get(user=alice).seq


def test_users_without_an_email_address_are_passed_over(bob: Any, general: Room) -> None:
    nobody = person("nobody", email="")
    post(bob, general, "@nobody hello")
    age()

    assert digest.send_digests()["nothing"] == 1
    assert mail.outbox == []
    assert emailed_seq(nobody) == 1


def test_the_html_part_escapes_message_bodies(alice: Any, bob: Any, general: Room) -> None:
    post(bob, general, "@alice <script>alert(1)</script> & <b>bold</b>")
    age()
    digest.send_digests()

    [message] = mail.outbox
    html = html_of(message)
    assert "<script>" not in html and "<b>bold" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt; &amp; &lt;b&gt;bold&lt;/b&gt;" in html
    assert "<script>alert(1)</script>" in message.body  # plain text stays as written


def test_the_unsubscribe_link_works_without_logging_in(alice: Any, bob: Any, general: Room) -> None:
    post(bob, general, "@alice first")
    age()
    digest.send_digests()
    path = unsubscribe_link(mail.outbox[0])
    client = Client(enforce_csrf_checks=True)

    page = client.get(path)
    assert page.status_code == 200
    assert b"Stop email digests?" in page.content and b"alice" in page.content
    assert Inbox.objects.get(user=alice).email_digests is True

    # A POST that is neither the page's form (no CSRF token) nor a one-click POST is refused.
    assert client.post(path, {"other": "x"}).status_code == 403
    assert Inbox.objects.get(user=alice).email_digests is True

    token = client.cookies["csrftoken"].value
    done = client.post(path, {"csrfmiddlewaretoken": token})
    assert done.status_code == 200 and b"Unsubscribed" in done.content
    assert Inbox.objects.get(user=alice).email_digests is False

    post(bob, general, "@alice second")
    age()
    assert digest.send_digests()["sent"] == 0
    assert len(mail.outbox) == 1


@pytest.mark.parametrize("encoding", ["urlencoded", "multipart"])
def test_mail_clients_unsubscribe_in_one_click(alice: Any, encoding: str) -> None:
    """RFC 8058: the client POSTs `List-Unsubscribe=One-Click` with no cookie and no CSRF token
    (the RFC's own example is multipart). A user with no event yet gets an Inbox that says no."""
    path = unsubscribe_link_for(alice)
    client = Client(enforce_csrf_checks=True)
    if encoding == "urlencoded":
        answer = client.post(
            path, "List-Unsubscribe=One-Click", content_type="application/x-www-form-urlencoded"
        )
    else:
        answer = client.post(path, {"List-Unsubscribe": "One-Click"})
    assert answer.status_code == 200
    assert Inbox.objects.get(user=alice).email_digests is False
    # Twice is the same.
    assert client.post(path, {"List-Unsubscribe": "One-Click"}).status_code == 200


def unsubscribe_link_for(user: Any) -> str:
    return digest.unsubscribe_url(user.pk).removeprefix(SITE)


def test_a_tampered_token_is_refused_and_changes_nothing(alice: Any, bob: Any) -> None:
    path = unsubscribe_link_for(alice)
    token = path.rsplit("/", 1)[1]
    # Bob's id under Alice's signature, a truncated signature, and something else entirely.
    bob_token = digest.make_token(bob.pk)
    forged = [bob_token.split(":")[0] + ":" + token.split(":", 1)[1], token[:-2], "nonsense"]
    client = Client(enforce_csrf_checks=True)
    for bad in forged:
        assert client.get(f"/email/unsubscribe/{bad}").status_code == 400
        answer = client.post(f"/email/unsubscribe/{bad}", {"List-Unsubscribe": "One-Click"})
        assert answer.status_code == 400 and b"This link does not work" in answer.content
    assert not Inbox.objects.filter(email_digests=False).exists()


class FailingBackend(LocmemBackend):
    def send_messages(self, messages: Any) -> int:
        raise smtplib.SMTPServerDisconnected("the mail server went away")


def test_a_failed_send_is_retried_on_the_next_run(
    alice: Any, bob: Any, general: Room, settings: Any
) -> None:
    post(bob, general, "@alice do not lose me")
    age()
    settings.EMAIL_BACKEND = "tests.test_digest.FailingBackend"
    assert digest.send_digests()["failed"] == 1
    assert mail.outbox == [] and emailed_seq(alice) == 0

    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    assert digest.send_digests()["sent"] == 1
    assert "do not lose me" in mail.outbox[0].body


entered = threading.Event()
release = threading.Event()


class SlowBackend(LocmemBackend):
    """Holds the first send until the test lets it go, so a second run overlaps it."""

    def send_messages(self, messages: Any) -> int:
        entered.set()
        assert release.wait(10)
        return super().send_messages(messages)


def test_two_runs_at_once_send_one_digest(transactional_db: Any, settings: Any) -> None:
    alice, bob = person("alice"), person("bob")
    general = Room.objects.create(slug="general", title="General")
    post(bob, general, "@alice once only")
    age()
    settings.EMAIL_BACKEND = "tests.test_digest.SlowBackend"
    entered.clear()
    release.clear()
    results: list[dict[str, int]] = []

    def run() -> None:
        try:
            results.append(digest.send_digests())
        finally:
            connection.close()

    first = threading.Thread(target=run)
    first.start()
    try:
        assert entered.wait(10)
        # The first run is sending, inside its transaction: the second finds the user taken.
        second = threading.Thread(target=run)
        second.start()
        second.join(10)
        assert results == [{"sent": 0, "nothing": 0, "failed": 0, "busy": 1, "left": 0}]
        # Posts that tell Alice meanwhile do not wait for the mail server: they take her Inbox
        # row, which the digest does not hold while it sends.
        with connection.cursor() as cursor:
            cursor.execute("SET lock_timeout = '5s'")
            try:
                post(bob, general, "@alice while the digest is sending")
            finally:
                cursor.execute("RESET lock_timeout")
    finally:
        release.set()
        first.join(10)
    assert results[1]["sent"] == 1
    [message] = mail.outbox
    assert "once only" in message.body and "while the digest" not in message.body
    assert emailed_seq(alice) == 1 and Inbox.objects.get(user=alice).seq == 2


def test_the_command_prints_what_it_did(alice: Any, bob: Any, general: Room) -> None:
    post(bob, general, "@alice from cron")
    age()
    out = StringIO()
    call_command("send_digests", stdout=out)
    assert out.getvalue().startswith("Sent 1 digest; 0 with nothing to send, 0 failed")
    assert len(mail.outbox) == 1


# --- Lambda: Zappa's own handler, with the scheduled event EventBridge sends for the rule ---


class Context:
    def __init__(self, remaining_ms: int) -> None:
        self.remaining_ms = remaining_ms

    def get_remaining_time_in_millis(self) -> int:
        return self.remaining_ms


@pytest.fixture
def lambda_handler(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> Iterator[Callable[[dict[str, Any], Any], Any]]:
    """Zappa's real `lambda_handler` in this process, with the settings module `zappa package`
    writes for the dev stage (tests/faults/test_authz_matrix.py does the same for WebSockets);
    Zappa's process-wide handler and environment are put back afterwards."""
    from zappa import handler

    from localgateway import load_stage

    stage = load_stage(ROOT / "zappa_settings.json", "dev")
    (tmp_path / "zappa_settings.py").write_text(stage.source)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "zappa_settings", raising=False)
    monkeypatch.setattr(handler.LambdaHandler, "_LambdaHandler__instance", None)
    root_level = logging.getLogger().level  # the handler sets the stage's log level
    with mock.patch.dict(os.environ):
        yield handler.lambda_handler
    logging.getLogger().setLevel(root_level)
    sys.modules.pop("zappa_settings", None)


def scheduled_event(function: str) -> dict[str, Any]:
    """The event of the EventBridge rule `zappa schedule` makes for `function` (as zappa_settings.json
    lists it): the handler finds the function from the rule's name."""
    from zappa.core import Zappa

    [entry] = [
        e
        for e in json.loads((ROOT / "zappa_settings.json").read_text())["dev"]["events"]
        if e["function"] == function
    ]
    assert entry["expression"] == "rate(1 minute)"
    rule = Zappa.get_scheduled_event_name(object.__new__(Zappa), entry, function, "chat-dev")
    return {
        "version": "0",
        "id": "53dc4d37-cffa-4f76-80c9-8b7d4a4d2eaa",
        "detail-type": "Scheduled Event",
        "source": "aws.events",
        "account": "123456789012",
        "time": "2025-01-01T00:00:00Z",
        "region": "us-east-1",
        "resources": [f"arn:aws:events:us-east-1:123456789012:rule/{rule}"],
        "detail": {},
    }


def test_lambda_runs_the_digest_on_its_schedule(
    alice: Any, bob: Any, general: Room, lambda_handler: Callable[..., Any]
) -> None:
    post(bob, general, "@alice from Lambda")
    age()
    event = scheduled_event("chat.digest.scheduled")

    # Too little of the invocation left to start a send: nothing is started, the next run goes on.
    assert lambda_handler(event, Context(remaining_ms=2000))["left"] == 1
    assert mail.outbox == [] and emailed_seq(alice) == 0

    assert lambda_handler(event, Context(remaining_ms=30_000))["sent"] == 1
    [message] = mail.outbox
    assert "from Lambda" in message.body and message.to == ["alice@example.com"]
