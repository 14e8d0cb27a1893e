"""Attachments on S3 through django-storages, against a local S3 endpoint: moto's server mode,
started by these tests (no S3 runs on this machine, and nothing else speaks its API here).

moto serves S3's API but does not enforce a presigned POST's policy or a signed URL's expiry, so
these tests check the policy and the expiry that we sign, and that our own check after the upload
(`complete`) refuses what S3 would have: the rest runs against moto as it would against S3.
"""

from __future__ import annotations

import base64
import io
import json
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs, urlparse

import boto3
import pytest
import requests
from botocore.config import Config
from django.test import Client
from PIL import Image

from chat.models import Attachment, Room
from tests.conftest import ROOT, free_port
from tests.test_attachments import PDF, declare, login, png, post

pytestmark = pytest.mark.django_db

CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        cwd=ROOT,
        env={**os.environ, **CREDENTIALS},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"moto_server exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                break
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError("moto_server did not start") from None
            time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    proc.terminate()
    proc.wait(10)


@pytest.fixture
def bucket(settings: Any, monkeypatch: pytest.MonkeyPatch, moto_endpoint: str) -> Any:
    """A fresh bucket as the default storage, configured as chatsite/settings.py configures S3."""
    for name, value in CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    name = f"chat-media-{uuid.uuid4().hex[:12]}"
    s3 = boto3.client(
        "s3",
        endpoint_url=moto_endpoint,
        region_name="us-east-1",
        config=Config(s3={"addressing_style": "path"}, signature_version="s3v4"),
    )
    s3.create_bucket(Bucket=name)
    settings.STORAGES = {
        **settings.STORAGES,
        "default": {
            "BACKEND": "storages.backends.s3.S3Storage",
            "OPTIONS": {
                "bucket_name": name,
                "location": "media",
                "default_acl": None,
                "querystring_auth": True,
                "querystring_expire": settings.CHAT_ATTACHMENT_URL_TTL,
                "file_overwrite": False,
                "signature_version": "s3v4",
                "region_name": "us-east-1",
                "endpoint_url": moto_endpoint,
                "addressing_style": "path",
            },
        },
    }

    class Bucket:
        client = s3
        bucket = name

        def keys(self) -> list[str]:
            listed = s3.list_objects_v2(Bucket=name).get("Contents", [])
            return sorted(item["Key"] for item in listed)

    return Bucket()


def send_to_s3(started: dict[str, Any], name: str, data: bytes) -> requests.Response:
    """What the browser does with the presigned POST: the fields, then the file."""
    target = started["upload"]
    return requests.post(
        target["url"], data=target["fields"], files={"file": (name, data)}, timeout=10
    )


def upload(client: Client, name: str, data: bytes, content_type: str) -> dict[str, Any]:
    declared = declare(client, "general", name, data, content_type)
    assert declared.status_code == 201, declared.content
    started = declared.json()
    assert send_to_s3(started, name, data).status_code in (200, 201, 204)
    done = client.post(f"/api/attachments/{started['attachment']['id']}/complete")
    assert done.status_code == 200, done.content
    return done.json()["attachment"]


def test_a_presigned_post_pins_key_size_and_type(
    settings: Any, alice: Any, room: Room, bucket: Any, moto_endpoint: str
) -> None:
    data = png()
    started = declare(login(alice), "general", "p.png", data, "image/png").json()
    target = started["upload"]
    assert target["url"] == f"{moto_endpoint}/{bucket.bucket}"
    fields = target["fields"]
    row = Attachment.objects.get()
    assert fields["key"] == f"media/{row.file.name}"
    assert fields["Content-Type"] == "image/png"
    policy = json.loads(base64.b64decode(fields["policy"]))
    assert ["content-length-range", len(data), len(data)] in policy["conditions"]
    assert {"Content-Type": "image/png"} in policy["conditions"]
    assert {"key": fields["key"]} in policy["conditions"]
    expires = datetime.strptime(policy["expiration"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    lifetime = (expires - datetime.now(UTC)).total_seconds()
    assert (
        settings.CHAT_ATTACHMENT_UPLOAD_TTL - 30 < lifetime <= settings.CHAT_ATTACHMENT_UPLOAD_TTL
    )
    # Declared but not sent yet: nothing in the bucket, and the check says so.
    assert bucket.keys() == []
    early = login(alice).post(f"/api/attachments/{row.pk}/complete")
    assert early.status_code == 400
    assert early.json()["detail"] == "The file has not been uploaded yet."


def test_an_image_goes_to_s3_and_members_get_signed_urls_that_expire(
    settings: Any, alice: Any, bob: Any, outsider: Any, private_room: Room, bucket: Any
) -> None:
    a = login(alice)
    data = png(800, 600)
    declared = declare(a, "secret", "holiday.png", data, "image/png")
    started = declared.json()
    assert send_to_s3(started, "holiday.png", data).status_code in (200, 201, 204)
    done = a.post(f"/api/attachments/{started['attachment']['id']}/complete").json()["attachment"]
    key = Attachment.objects.get().file.name
    assert bucket.keys() == [f"media/{key}", f"media/{key}.thumb.webp"]
    assert (done["width"], done["height"]) == (800, 600)
    assert post(a, "secret", done["id"], "look").status_code == 201

    before = datetime.now(UTC).replace(microsecond=0)
    answer = login(bob).get(done["url"])
    assert answer.status_code == 302
    signed = urlparse(answer["Location"])
    query = parse_qs(signed.query)
    assert signed.path == f"/{bucket.bucket}/media/{key}"
    assert query["X-Amz-Expires"] == [str(settings.CHAT_ATTACHMENT_URL_TTL)]
    signed_at = datetime.strptime(query["X-Amz-Date"][0], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    assert abs((signed_at - before).total_seconds()) < 30
    assert query["response-content-type"] == ["image/png"]
    assert query["response-content-disposition"][0].startswith("inline;")
    fetched = requests.get(answer["Location"], timeout=10)
    assert fetched.status_code == 200 and fetched.content == data

    thumb = login(bob).get(done["thumbnail"])
    assert thumb.status_code == 302
    with Image.open(io.BytesIO(requests.get(thumb["Location"], timeout=10).content)) as image:
        assert image.format == "WEBP" and image.size == (320, 240)

    # The permission check comes before any signing: an outsider gets no URL at all.
    refused = login(outsider).get(done["url"])
    assert refused.status_code == 404 and "Location" not in refused


def test_what_s3_would_refuse_is_refused_and_deleted(alice: Any, room: Room, bucket: Any) -> None:
    a = login(alice)
    # Declared 5 bytes, sent 9: the policy forbids it on S3; our check catches it on any store.
    started = declare(a, "general", "a.txt", b"12345", "text/plain").json()
    assert send_to_s3(started, "a.txt", b"123456789").status_code in (200, 201, 204)
    refused = a.post(f"/api/attachments/{started['attachment']['id']}/complete")
    assert refused.status_code == 400
    assert "not the 5 declared" in refused.json()["detail"]
    assert bucket.keys() == [] and Attachment.objects.count() == 0

    # The right size, the wrong content.
    started = declare(a, "general", "fake.pdf", b"MZ" * 20, "application/pdf").json()
    assert send_to_s3(started, "fake.pdf", b"MZ" * 20).status_code in (200, 201, 204)
    refused = a.post(f"/api/attachments/{started['attachment']['id']}/complete")
    assert refused.status_code == 400
    assert bucket.keys() == [] and Attachment.objects.count() == 0


def test_too_large_is_refused_before_anything_is_signed(
    settings: Any, alice: Any, room: Room, bucket: Any
) -> None:
    settings.CHAT_ATTACHMENT_MAX_SIZE = 1000
    refused = declare(login(alice), "general", "big.pdf", b"x" * 1001, "application/pdf")
    assert refused.status_code == 413
    assert "upload" not in refused.json()
    assert bucket.keys() == [] and Attachment.objects.count() == 0


def test_uploads_through_django_are_refused_on_s3(alice: Any, room: Room, bucket: Any) -> None:
    a = login(alice)
    started = declare(a, "general", "a.txt", b"hello", "text/plain").json()
    pk = started["attachment"]["id"]
    refused = a.post(f"/api/attachments/{pk}/upload", {"file": io.BytesIO(b"hello")})
    assert refused.status_code == 400
    assert bucket.keys() == []


def test_a_deleted_message_deletes_its_objects(
    alice: Any, room: Room, bucket: Any, django_capture_on_commit_callbacks: Any
) -> None:
    a = login(alice)
    kept = upload(a, "report.pdf", PDF, "application/pdf")
    gone = upload(a, "p.png", png(), "image/png")
    post(a, "general", kept["id"], "keep")
    event = post(a, "general", gone["id"], "drop").json()
    assert len(bucket.keys()) == 3
    with django_capture_on_commit_callbacks(execute=True):
        assert a.delete(f"/api/rooms/general/messages/{event['id']}").status_code == 200
    assert bucket.keys() == [f"media/{Attachment.objects.get().file.name}"]
    assert login(alice).get(gone["url"]).status_code == 404
    download = login(alice).get(kept["url"])
    assert download.status_code == 302
    disposition = parse_qs(urlparse(download["Location"]).query)["response-content-disposition"]
    assert disposition[0].startswith('attachment; filename="report.pdf"')
