"""A malformed multipart body on the upload view gets the API's JSON `bad_request`, not Django's
HTML 400, with CSRF still enforced as on every other unsafe endpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from django.test import Client

from chat.models import Attachment, Room

pytestmark = pytest.mark.django_db

BOUNDARY = "----chatboundary"


@pytest.fixture(autouse=True)
def media(settings: Any, tmp_path: Path) -> Path:
    settings.MEDIA_ROOT = str(tmp_path)
    return tmp_path


@pytest.fixture
def browser(alice: Any, room: Room) -> tuple[Client, str]:
    """A browser session that enforces CSRF as a real one does, and its CSRF token."""
    client = Client(enforce_csrf_checks=True)
    client.force_login(alice)
    client.get("/rooms/general/")
    return client, client.cookies["csrftoken"].value


def pending_upload(client: Client, csrf: str) -> str:
    declared = client.post(
        "/api/rooms/general/attachments",
        {"name": "note.txt", "size": 5, "content_type": "text/plain"},
        content_type="application/json",
        HTTP_X_CSRFTOKEN=csrf,
    )
    assert declared.status_code == 201, declared.content
    return declared.json()["upload"]["url"]


def multipart(*parts: tuple[str, bytes]) -> bytes:
    """A multipart body from (part headers, content) pairs, written by hand so that its headers
    can be anything."""
    out = b""
    for headers, content in parts:
        out += f"--{BOUNDARY}\r\n{headers}\r\n\r\n".encode() + content + b"\r\n"
    return out + f"--{BOUNDARY}--\r\n".encode()


FILE = (
    'Content-Disposition: form-data; name="file"; filename="note.txt"\r\nContent-Type: text/plain'
)
MALFORMED = {
    # One part's headers over Django's 1,024-byte limit (MultiPartParserError).
    "long part header": multipart((FILE + "\r\nX-Padding: " + "p" * 2000, b"hello")),
    # More files than DATA_UPLOAD_MAX_NUMBER_FILES (TooManyFilesSent).
    "too many files": multipart(
        *[(FILE.replace('name="file"', f'name="f{i}"'), b"x") for i in range(101)]
    ),
    # More fields than DATA_UPLOAD_MAX_NUMBER_FIELDS (TooManyFieldsSent).
    "too many fields": multipart(
        *[(f'Content-Disposition: form-data; name="k{i}"', b"v") for i in range(1001)]
    ),
    # A base64 part that is not base64.
    "bad base64": multipart((FILE + "\r\nContent-Transfer-Encoding: base64", b"@@@not base64")),
}


def stored(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()]


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_a_malformed_multipart_body_is_a_json_bad_request(
    browser: tuple[Client, str], media: Path, case: str
) -> None:
    client, csrf = browser
    url = pending_upload(client, csrf)
    response = client.generic(
        "POST",
        url,
        MALFORMED[case],
        content_type=f"multipart/form-data; boundary={BOUNDARY}",
        HTTP_X_CSRFTOKEN=csrf,
    )
    assert response.status_code == 400, response.content[:300]
    assert response["Content-Type"] == "application/json"
    assert response.json()["error"] == "bad_request" and response.json()["detail"]
    assert Attachment.objects.get().status == Attachment.PENDING
    assert not stored(media)


def test_a_bad_boundary_is_a_json_bad_request(browser: tuple[Client, str]) -> None:
    client, csrf = browser
    url = pending_upload(client, csrf)
    response = client.generic(
        "POST",
        url,
        b"--x\r\n",
        content_type="multipart/form-data; boundary=" + "b" * 100,
        HTTP_X_CSRFTOKEN=csrf,
    )
    assert response.status_code == 400 and response.json()["error"] == "bad_request"


def test_the_upload_still_needs_the_csrf_token(browser: tuple[Client, str], media: Path) -> None:
    client, csrf = browser
    url = pending_upload(client, csrf)
    body = multipart((FILE, b"hello"))
    content_type = f"multipart/form-data; boundary={BOUNDARY}"
    refused = client.generic("POST", url, body, content_type=content_type)
    assert refused.status_code == 403 and refused.json()["error"] == "forbidden"
    assert not stored(media)
    # A malformed body without the token is refused too (by parsing or by CSRF, as JSON).
    malformed = client.generic(
        "POST", url, MALFORMED["long part header"], content_type=content_type
    )
    assert malformed.status_code in (400, 403) and malformed["Content-Type"] == "application/json"
    sent = client.generic("POST", url, body, content_type=content_type, HTTP_X_CSRFTOKEN=csrf)
    assert sent.status_code == 201, sent.content
    assert [p.read_bytes() for p in stored(media)] == [b"hello"]
