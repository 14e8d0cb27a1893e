"""Attachments when Pillow lacks a codec, as a package built for another glibc does on Lambda
(its `_webp` fails to load: no WebP writer, `KeyError: 'WEBP'`, and no WebP reader). Thumbnails
fall back to JPEG or PNG; a file in a format the server cannot read is a clear refusal. Never a
500, and nothing refused is kept."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from PIL import Image, WebPImagePlugin, features

from chat.models import Attachment, Room
from tests.test_attachments import declare, login, media, png, stored_files, upload

pytestmark = pytest.mark.django_db
__all__ = ["media"]  # the autouse fixture: uploads of this module go to a temporary folder


def rgba_png() -> bytes:
    out = io.BytesIO()
    Image.new("RGBA", (64, 48), (0, 0, 255, 128)).save(out, "PNG")
    return out.getvalue()


def webp() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (64, 48), "green").save(out, "WEBP")
    return out.getvalue()


WEBP = webp()  # made here, with the codec, before a test takes it away


@pytest.fixture
def no_webp_writer(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pillow without its WebP encoder: saving as WEBP raises KeyError('WEBP')."""
    monkeypatch.delitem(Image.SAVE, "WEBP")


@pytest.fixture
def no_webp(monkeypatch: pytest.MonkeyPatch, no_webp_writer: None) -> None:
    """Pillow whose `_webp` did not load at all: it cannot read WebP files either."""
    monkeypatch.setattr(WebPImagePlugin, "SUPPORTED", False)
    real = features.check
    monkeypatch.setattr(features, "check", lambda name: name != "webp" and real(name))


@pytest.mark.parametrize(
    ("data", "thumbnail_format", "content_type"),
    [(png(640, 480), "JPEG", "image/jpeg"), (rgba_png(), "PNG", "image/png")],
)
def test_without_a_webp_writer_thumbnails_are_jpeg_or_png(
    alice: Any,
    room: Room,
    no_webp_writer: None,
    data: bytes,
    thumbnail_format: str,
    content_type: str,
) -> None:
    with pytest.raises(KeyError):
        Image.new("RGB", (1, 1)).save(io.BytesIO(), "WEBP")  # what Lambda's broken build did
    a = login(alice)
    ready = upload(a, "general", "picture.png", data, "image/png")
    thumb = a.get(ready["thumbnail"])
    assert thumb.status_code == 200
    assert thumb["Content-Type"] == content_type
    with Image.open(io.BytesIO(b"".join(thumb.streaming_content))) as image:
        assert image.format == thumbnail_format


def test_a_failing_webp_encoder_falls_back_too(
    alice: Any, room: Room, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: Any) -> None:
        raise OSError("encoder error -2")

    monkeypatch.setitem(Image.SAVE, "WEBP", broken)
    ready = upload(login(alice), "general", "p.png", png(), "image/png")
    assert Attachment.objects.get(pk=ready["id"]).thumbnail.name.endswith(".thumb.jpg")


def test_a_format_the_server_cannot_read_is_a_clear_refusal_and_nothing_is_kept(
    alice: Any, room: Room, media: Path, no_webp: None
) -> None:
    data = WEBP
    a = login(alice)
    started = declare(a, "general", "p.webp", data, "image/webp").json()
    sent = a.post(started["upload"]["url"], {"file": SimpleUploadedFile("p.webp", data)})
    assert sent.status_code == 201
    refused = a.post(f"/api/attachments/{started['attachment']['id']}/complete")
    assert refused.status_code == 400
    assert refused.json()["error"] == "bad_request"
    assert "cannot read image/webp" in refused.json()["detail"]
    assert Attachment.objects.count() == 0
    assert stored_files(media) == []
    # Other images still go through, with a thumbnail the server can write.
    assert upload(a, "general", "p.png", png(), "image/png")["thumbnail"]
