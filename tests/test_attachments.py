"""Attachments on the file-system storage: declare, upload, check, send, receive, download, delete;
every refusal stores nothing. tests/test_attachments_s3.py runs the S3 path against moto's server."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management import call_command
from django.test import Client
from django.utils import timezone
from PIL import Image

from chat import attachments, moderation
from chat.models import Attachment, Membership, Message, Restriction, Room

pytestmark = pytest.mark.django_db


def png(width: int = 64, height: int = 48, color: str = "red") -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), color).save(out, "PNG")
    return out.getvalue()


PDF = b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n"


@pytest.fixture(autouse=True)
def media(settings: Any, tmp_path: Path) -> Path:
    settings.MEDIA_ROOT = str(tmp_path)
    return tmp_path


def stored_files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def login(user: Any) -> Client:
    client = Client()
    client.force_login(user)
    return client


def declare(client: Client, slug: str, name: str, data: bytes, content_type: str) -> Any:
    return client.post(
        f"/api/rooms/{slug}/attachments",
        {"name": name, "size": len(data), "content_type": content_type},
        content_type="application/json",
    )


def upload(client: Client, slug: str, name: str, data: bytes, content_type: str) -> dict[str, Any]:
    """The browser's three steps; returns the ready attachment."""
    declared = declare(client, slug, name, data, content_type)
    assert declared.status_code == 201, declared.content
    target = declared.json()["upload"]
    sent = client.post(
        target["url"], {**target["fields"], "file": SimpleUploadedFile(name, data, content_type)}
    )
    assert sent.status_code == 201, sent.content
    done = client.post(f"/api/attachments/{declared.json()['attachment']['id']}/complete")
    assert done.status_code == 200, done.content
    return done.json()["attachment"]


def post(client: Client, slug: str, attachment: str, body: str = "", **extra: Any) -> Any:
    return client.post(
        f"/api/rooms/{slug}/messages",
        {"body": body, "attachment": attachment, **extra},
        content_type="application/json",
    )


def test_an_image_is_uploaded_sent_and_read_by_the_room(
    alice: Any, bob: Any, room: Room, media: Path
) -> None:
    a = login(alice)
    data = png(640, 480)
    ready = upload(a, "general", "cat picture.png", data, "image/png")
    assert ready["status"] == "ready"
    assert (ready["name"], ready["size"], ready["content_type"]) == (
        "cat picture.png",
        len(data),
        "image/png",
    )
    assert (ready["width"], ready["height"]) == (640, 480)
    assert ready["url"] == f"/api/attachments/{ready['id']}"
    assert ready["thumbnail"] == f"/api/attachments/{ready['id']}/thumbnail"

    sent = post(a, "general", ready["id"], client_id="c1")
    assert sent.status_code == 201, sent.content
    event = sent.json()
    assert event["body"] == ""
    assert event["attachment"]["id"] == ready["id"]
    assert event["attachment"]["url"] == ready["url"]

    # Another member reads it in history and downloads the same bytes, the image inline.
    b = login(bob)
    page = b.get("/api/rooms/general/messages").json()["messages"]
    assert page[-1]["attachment"] == event["attachment"]
    got = b.get(ready["url"])
    assert got.status_code == 200
    assert b"".join(got.streaming_content) == data
    assert got["Content-Type"] == "image/png"
    assert got["Content-Disposition"].startswith("inline;")
    assert got["X-Content-Type-Options"] == "nosniff"
    assert "sandbox" in got["Content-Security-Policy"]

    thumb = b.get(ready["thumbnail"])
    assert thumb.status_code == 200
    with Image.open(io.BytesIO(b"".join(thumb.streaming_content))) as image:
        assert image.format == "WEBP"
        assert max(image.size) == 320 and image.size == (320, 240)

    # The resume read carries it too, and so does the event built for fan-out.
    after = b.get("/api/rooms/general/messages?after=0").json()["messages"]
    assert after[-1]["attachment"] == event["attachment"]
    message = Message.objects.get(pk=event["id"])
    assert message.attachment_id is not None


def test_other_files_download_as_attachments_with_their_name(
    alice: Any, bob: Any, room: Room
) -> None:
    a = login(alice)
    ready = upload(a, "general", "report ü.pdf", PDF, "application/pdf")
    assert ready["thumbnail"] is None and ready["width"] is None
    assert post(a, "general", ready["id"], "the report").status_code == 201
    got = login(bob).get(ready["url"])
    assert got.status_code == 200
    assert got["Content-Type"] == "application/pdf"
    disposition = got["Content-Disposition"]
    assert disposition.startswith("attachment;")
    assert "filename*=UTF-8''report%20%C3%BC.pdf" in disposition
    assert login(bob).get(f"{ready['url']}/thumbnail").status_code == 404


def test_only_members_of_a_private_room_can_read_its_files(
    alice: Any, bob: Any, outsider: Any, private_room: Room
) -> None:
    a = login(alice)
    ready = upload(a, "secret", "plan.txt", "the plan ✓\n".encode(), "text/plain")
    assert post(a, "secret", ready["id"]).status_code == 201
    assert login(bob).get(ready["url"]).status_code == 200
    # An outsider who has the URL (or guesses it) learns nothing, not even that it exists.
    for url in (ready["url"], f"{ready['url']}/thumbnail"):
        refused = login(outsider).get(url)
        assert refused.status_code == 404
        assert refused.json()["error"] == "not_found"
    assert Client().get(ready["url"]).status_code == 401
    assert login(outsider).get("/api/attachments/not-a-uuid").status_code == 404


def test_an_unsent_upload_is_only_its_uploaders(alice: Any, bob: Any, room: Room) -> None:
    ready = upload(login(alice), "general", "draft.txt", b"draft", "text/plain")
    assert login(alice).get(ready["url"]).status_code == 200
    assert login(bob).get(ready["url"]).status_code == 404
    # Nobody else may send it, complete it or upload into it.
    assert post(login(bob), "general", ready["id"], "mine now").status_code == 400
    assert login(bob).post(f"/api/attachments/{ready['id']}/complete").status_code == 404


@pytest.mark.parametrize(
    ("name", "data", "declared", "status", "code"),
    [
        ("big.png", b"x" * 101, "image/png", 413, "too_large"),  # over CHAT_ATTACHMENT_MAX_SIZE
        ("page.html", b"<script>alert(1)</script>", "text/html", 400, "bad_request"),
        ("image.svg", b"<svg xmlns='http://www.w3.org/2000/svg'/>", "image/svg+xml", 400, None),
        ("", b"x", "text/plain", 400, "bad_request"),
        ("x.txt", b"", "text/plain", 400, "bad_request"),
    ],
)
def test_refused_declarations_store_nothing(
    settings: Any,
    alice: Any,
    room: Room,
    media: Path,
    name: str,
    data: bytes,
    declared: str,
    status: int,
    code: str | None,
) -> None:
    settings.CHAT_ATTACHMENT_MAX_SIZE = 100
    refused = declare(login(alice), "general", name, data, declared)
    assert refused.status_code == status, refused.content
    assert refused.json()["error"] == (code or "bad_request")
    assert refused.json()["detail"]
    assert Attachment.objects.count() == 0
    assert stored_files(media) == []


@pytest.mark.parametrize(
    ("name", "data", "declared"),
    [
        ("fake.png", b"not an image at all, just text", "image/png"),
        ("renamed.jpg", png(), "image/jpeg"),  # a PNG declared as JPEG
        ("fake.pdf", b"MZ\x90\x00 an executable", "application/pdf"),
        ("binary.txt", b"\x00\x01\x02 binary", "text/plain"),
        ("truncated.png", png()[:60], "image/png"),
    ],
)
def test_content_that_is_not_its_declared_type_is_refused_and_deleted(
    alice: Any, room: Room, media: Path, name: str, data: bytes, declared: str
) -> None:
    a = login(alice)
    started = declare(a, "general", name, data, declared).json()
    target = started["upload"]
    assert a.post(target["url"], {"file": SimpleUploadedFile(name, data)}).status_code == 201
    assert stored_files(media)  # the bytes arrived; the check comes next
    refused = a.post(f"/api/attachments/{started['attachment']['id']}/complete")
    assert refused.status_code == 400
    assert refused.json()["detail"] == f"The file's content is not {declared}."
    assert Attachment.objects.count() == 0
    assert stored_files(media) == []


def test_a_file_of_another_size_than_declared_is_refused(
    alice: Any, room: Room, media: Path
) -> None:
    a = login(alice)
    started = declare(a, "general", "a.txt", b"12345", "text/plain").json()
    sent = a.post(started["upload"]["url"], {"file": SimpleUploadedFile("a.txt", b"123456789")})
    assert sent.status_code == 400
    assert "not the 5 declared" in sent.json()["detail"]
    assert Attachment.objects.count() == 0
    assert stored_files(media) == []


def test_an_oversized_upload_is_refused_before_it_is_read(
    settings: Any, alice: Any, room: Room, media: Path
) -> None:
    a = login(alice)
    started = declare(a, "general", "a.txt", b"12345", "text/plain").json()
    settings.CHAT_ATTACHMENT_MAX_SIZE = 5
    body = b"x" * (200 * 1024)
    sent = a.post(started["upload"]["url"], {"file": SimpleUploadedFile("a.txt", body)})
    assert sent.status_code == 413
    assert stored_files(media) == []


def test_the_daily_quota_counts_every_upload_of_the_last_day(
    settings: Any, alice: Any, bob: Any, room: Room
) -> None:
    settings.CHAT_ATTACHMENT_DAILY_QUOTA = 12
    a = login(alice)
    upload(a, "general", "one.txt", b"12345678", "text/plain")
    over = declare(a, "general", "two.txt", b"12345", "text/plain")
    assert over.status_code == 413
    assert "4 bytes are left" in over.json()["detail"]
    assert Attachment.objects.count() == 1
    # Another user has their own quota; uploads older than a day no longer count.
    assert declare(login(bob), "general", "b.txt", b"12345", "text/plain").status_code == 201
    Attachment.objects.filter(uploader=alice).update(created=timezone.now() - timedelta(days=2))
    assert declare(a, "general", "two.txt", b"12345", "text/plain").status_code == 201


def test_who_may_not_post_may_not_upload(alice: Any, moderator: Any, room: Room) -> None:
    room.moderators.add(moderator)
    Restriction.objects.create(kind=Restriction.MUTE, user=alice, room=room)
    muted = declare(login(alice), "general", "a.txt", b"hello", "text/plain")
    assert muted.status_code == 403
    Restriction.objects.all().delete()
    moderation.moderate_room(moderator, room, {"locked": True})
    assert declare(login(alice), "general", "a.txt", b"hello", "text/plain").status_code == 403
    assert Attachment.objects.count() == 0


def test_an_attachment_goes_into_one_message_once(alice: Any, room: Room) -> None:
    a = login(alice)
    ready = upload(a, "general", "a.txt", b"hello", "text/plain")
    first = post(a, "general", ready["id"], "one", client_id="k1")
    assert first.status_code == 201
    # The same client_id is a retry: the same message, not an error.
    again = post(a, "general", ready["id"], "one", client_id="k1")
    assert again.status_code == 200 and again.json()["id"] == first.json()["id"]
    second = post(a, "general", ready["id"], "two", client_id="k2")
    assert second.status_code == 400
    assert Message.objects.count() == 1
    # Not in another room either, and not a pending upload.
    Room.objects.create(slug="other", title="Other")
    other = upload(a, "general", "b.txt", b"hello", "text/plain")
    assert post(a, "other", other["id"], "x").status_code == 400
    pending = declare(a, "general", "c.txt", b"hello", "text/plain").json()["attachment"]
    assert post(a, "general", pending["id"], "x").status_code == 400
    assert post(a, "general", "nonsense", "x").status_code == 400
    assert Message.objects.count() == 1


def test_deleting_a_message_deletes_its_file(
    alice: Any, bob: Any, room: Room, media: Path, django_capture_on_commit_callbacks: Any
) -> None:
    a = login(alice)
    ready = upload(a, "general", "p.png", png(), "image/png")
    assert len(stored_files(media)) == 2  # the file and its thumbnail
    event = post(a, "general", ready["id"], "look").json()
    with django_capture_on_commit_callbacks(execute=True):
        gone = a.delete(f"/api/rooms/general/messages/{event['id']}")
    assert gone.status_code == 200
    assert gone.json()["attachment"] is None and gone.json()["deleted"] is True
    assert stored_files(media) == []
    assert Attachment.objects.count() == 0
    assert login(bob).get(ready["url"]).status_code == 404


def test_a_hidden_message_hides_its_file_until_restored(
    alice: Any,
    bob: Any,
    moderator: Any,
    room: Room,
    media: Path,
    django_capture_on_commit_callbacks: Any,
) -> None:
    room.moderators.add(moderator)
    a = login(alice)
    ready = upload(a, "general", "p.png", png(), "image/png")
    event = post(a, "general", ready["id"]).json()
    hidden = moderation.hide_message(moderator, room, event["id"], "spam")
    assert hidden.to_event()["attachment"] is None
    assert login(bob).get(ready["url"]).status_code == 404
    # Kept for the audit: the room's moderator still reaches it, and the file stays in storage.
    assert login(moderator).get(ready["url"]).status_code == 200
    assert len(stored_files(media)) == 2
    restored = moderation.restore_message(moderator, room, event["id"])
    assert restored.to_event()["attachment"]["id"] == ready["id"]
    assert login(bob).get(ready["url"]).status_code == 200
    # Erased for good: the file goes too, once the erase has committed.
    with django_capture_on_commit_callbacks(execute=True):
        moderation.erase_message(moderator, room, event["id"])
    assert stored_files(media) == []


def test_unsent_uploads_are_purged_after_a_day(alice: Any, room: Room, media: Path) -> None:
    a = login(alice)
    kept = upload(a, "general", "kept.txt", b"hello", "text/plain")
    post(a, "general", kept["id"], "sent")
    upload(a, "general", "stale.txt", b"stale", "text/plain")
    declare(a, "general", "never.txt", b"never", "text/plain")
    Attachment.objects.update(created=timezone.now() - timedelta(days=2))
    out = io.StringIO()
    call_command("purgeattachments", stdout=out)
    assert out.getvalue().strip() == "Deleted 2 unused uploads."
    assert list(Attachment.objects.values_list("name", flat=True)) == ["kept.txt"]
    assert [Path(p).name for p in stored_files(media)] == ["kept.txt"]
    assert attachments.scheduled_purge({}, None) == 0


def test_names_are_cleaned(alice: Any, room: Room) -> None:
    started = declare(login(alice), "general", "../../etc/pass\x00wd.txt", b"hi", "text/plain")
    assert started.status_code == 201
    row = Attachment.objects.get()
    assert row.name == "passwd.txt"
    assert ".." not in row.file.name and row.file.name.startswith(f"attachments/{room.pk}/")


def test_a_message_with_an_attachment_over_the_protocol(alice: Any, room: Room) -> None:
    """The protocol's sendmessage takes the attachment id; the body may be left out."""
    from chat import protocol

    class Conn(protocol.Connection):
        def __init__(self, user: Any) -> None:
            super().__init__(user, "conn-1")

        def join(self, room: Room) -> None:
            return None

        def leave(self, room: Room) -> bool:
            return True

    ready = upload(login(alice), "general", "a.txt", b"hello", "text/plain")
    frame = {"action": "sendmessage", "room": "general", "attachment": ready["id"]}
    answers = protocol.handle(Conn(alice), json.dumps({**frame, "client_id": "w1"}))
    assert answers[0]["type"] == "ack", answers
    message = Message.objects.get()
    assert message.body == "" and str(message.attachment_id) == ready["id"]
    # Without a body and without an attachment it is still a bad request.
    bare = protocol.handle(Conn(alice), json.dumps({"action": "sendmessage", "room": "general"}))
    assert bare[0]["code"] == "bad_request"


@pytest.fixture
def member_of_nothing(outsider: Any, private_room: Room) -> Iterator[Any]:
    assert not Membership.objects.filter(user=outsider).exists()
    yield outsider


def test_outsiders_cannot_upload_to_a_private_room(
    member_of_nothing: Any, private_room: Room, media: Path
) -> None:
    refused = declare(login(member_of_nothing), "secret", "a.txt", b"hi", "text/plain")
    assert refused.status_code == 404
    assert Attachment.objects.count() == 0 and stored_files(media) == []


def test_moderators_see_their_rooms_files_in_the_admin(
    alice: Any, room: Room, private_room: Room
) -> None:
    from django.contrib.auth import get_user_model

    a = login(alice)
    upload(a, "general", "public-file.txt", b"hello", "text/plain")
    upload(a, "secret", "secret-file.txt", b"hello", "text/plain")
    boss = get_user_model().objects.create_superuser("boss", password="pw-boss-123")
    page = login(boss).get("/admin/chat/attachment/")
    assert page.status_code == 200
    assert b"public-file.txt" in page.content and b"secret-file.txt" in page.content
    # A moderator of `general` only sees `general`'s files, and cannot delete any.
    mod = get_user_model().objects.create_user("roommod", password="pw-roommod-1", is_staff=True)
    room.moderators.add(mod)
    page = login(mod).get("/admin/chat/attachment/")
    assert page.status_code == 200
    assert b"public-file.txt" in page.content and b"secret-file.txt" not in page.content
    row = Attachment.objects.get(name="public-file.txt")
    assert login(mod).post(f"/admin/chat/attachment/{row.pk}/delete/").status_code == 403
    assert Attachment.objects.count() == 2
