"""Attachments: the one path for files in messages.

An upload has three steps, the same on every storage so that one client serves both deployments:

1. `start_upload` checks the declared name, size and type, the poster's rights and daily quota,
   and records a `pending` Attachment whose storage key is fixed. It answers where to send the
   bytes: our own upload view on the file system, or an S3 presigned POST on S3 (Lambda's 6 MB
   request limit makes proxying files through Django wrong there). The presigned POST pins the key,
   the exact size and the content type, so S3 itself refuses anything else.
2. The bytes go there (`receive` for our view).
3. `complete` checks what was stored: it exists, has the declared size, is within the limits, and
   its content is what its type says. Images are opened with Pillow and get a thumbnail. A failed
   check deletes the object and the row: nothing refused is kept.

`writepath.post_message` then puts a ready attachment into one message, once. Downloads go through
`for_download`, which checks the room every time: the file itself on the file system, a redirect
to a short-lived signed URL on S3.
"""

from __future__ import annotations

import io
import logging
import unicodedata
import uuid
import warnings
from datetime import timedelta
from pathlib import PurePosixPath
from typing import IO, TYPE_CHECKING, Any

import puremagic
from django.contrib.auth import get_user_model
from django.core.exceptions import SuspiciousFileOperation
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.db import transaction
from django.db.models import Sum
from django.urls import reverse
from django.utils import timezone
from django.utils.text import get_valid_filename
from django.utils.translation import gettext as _

from chat import access
from chat.conf import settings

if TYPE_CHECKING:
    import PIL.Image
from chat.errors import ChatError
from chat.models import Attachment, Room

log = logging.getLogger(__name__)

# The formats Pillow must find for each image type: a PNG named .jpg is refused, not converted.
IMAGE_FORMATS = {
    "image/png": "PNG",
    "image/jpeg": "JPEG",
    "image/gif": "GIF",
    "image/webp": "WEBP",
}
# What Pillow needs to read each format (a build without the codec cannot check such a file).
DECODERS = {"PNG": "zlib", "JPEG": "jpg", "GIF": None, "WEBP": "webp"}
# Thumbnails: WebP, the smallest; where Pillow cannot write it (a build without libwebp), JPEG for
# opaque images and PNG, which Pillow's core always writes, for the rest.
THUMBNAIL_TYPES = {".webp": "image/webp", ".jpg": "image/jpeg", ".png": "image/png"}
# Pillow refuses images above this many pixels (a few kilobytes can decode to gigabytes).
MAX_IMAGE_PIXELS = 40_000_000


def _pillow() -> Any:
    """Pillow, imported on the first image: every process imports this module (the write path
    needs it), while only uploads open images, and Pillow costs a cold start about 4 MB and
    tens of milliseconds."""
    import PIL.features
    import PIL.Image

    PIL.Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS
    return PIL


SNIFF_BYTES = 64 * 1024


def direct_upload() -> bool:
    """Whether uploads go straight to S3 with a presigned POST (else through our upload view)."""
    return settings.STORAGES["default"]["BACKEND"].endswith("S3Storage")


# --- validation of what the client declares ---


def clean_name(name: Any) -> str:
    if not isinstance(name, str):
        raise ChatError("bad_request", _("`name` must be the file's name."))
    # Only the last path component, printable, and short enough for the column and the key.
    name = name.replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(c for c in name if unicodedata.category(c)[0] != "C").strip()
    if not name or name in (".", ".."):
        raise ChatError("bad_request", _("`name` must be the file's name."))
    if len(name) > 255:
        stem, dot, ext = name.rpartition(".")
        name = (stem[: 254 - len(ext)] + dot + ext) if dot and len(ext) < 16 else name[:255]
    return name


def storage_name(name: str) -> str:
    """The name's part of the storage key: the file keeps its real name in the row, but a key is
    ASCII-safe, and a name with nothing safe in it (an emoji, a script Django cannot slug) is
    "file" rather than Django's refusal."""
    try:
        return get_valid_filename(name)[-100:] or "file"
    except SuspiciousFileOperation:
        return "file"


def clean_size(size: Any) -> int:
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ChatError("bad_request", _("`size` must be the file's size in bytes."))
    limit = settings.CHAT_ATTACHMENT_MAX_SIZE
    if size > limit:
        raise ChatError(
            "too_large", _("A file is at most %(limit)s.") % {"limit": human_size(limit)}
        )
    return size


def clean_type(content_type: Any) -> str:
    if not isinstance(content_type, str) or not content_type:
        raise ChatError("bad_request", _("`content_type` must be the file's type."))
    content_type = content_type.split(";", 1)[0].strip().lower()
    if content_type not in settings.CHAT_ATTACHMENT_TYPES:
        allowed = ", ".join(settings.CHAT_ATTACHMENT_TYPES)
        raise ChatError(
            "bad_request",
            _("Files of type %(type)r are not allowed: %(allowed)s.")
            % {"type": content_type[:60], "allowed": allowed},
        )
    return content_type


def clean_id(value: Any) -> uuid.UUID:
    if isinstance(value, uuid.UUID):
        return value
    try:
        if isinstance(value, str):
            return uuid.UUID(value)
    except ValueError:
        pass
    raise ChatError("bad_request", _("`attachment` must be an attachment id."))


def human_size(size: int) -> str:
    for unit in ("bytes", "KB", "MB"):
        if size < 1024 or unit == "MB":
            return f"{size} {unit}" if unit == "bytes" else f"{size:.1f} {unit}".replace(".0 ", " ")
        size /= 1024
    raise AssertionError("unreachable")


# --- step 1: declare ---


def start_upload(user: Any, room: Room, name: Any, size: Any, content_type: Any) -> Attachment:
    """Record a pending upload; refused uploads store nothing."""
    name, size, content_type = clean_name(name), clean_size(size), clean_type(content_type)
    # Whoever may not post here may not upload here either (muted, banned, a locked room).
    access.check_can_post(user, room)
    pk = uuid.uuid4()
    key = f"attachments/{room.pk}/{pk}/{storage_name(name)}"
    with transaction.atomic():
        # One upload at a time per user, so two racing uploads cannot both fit the quota.
        list(get_user_model().objects.select_for_update().filter(pk=user.pk).values_list("pk"))
        since = timezone.now() - timedelta(days=1)
        used = (
            Attachment.objects.filter(uploader=user, created__gt=since).aggregate(n=Sum("size"))[
                "n"
            ]
            or 0
        )
        quota = settings.CHAT_ATTACHMENT_DAILY_QUOTA
        if used + size > quota:
            raise ChatError(
                "too_large",
                _("You may upload %(quota)s a day; %(left)s are left.")
                % {"quota": human_size(quota), "left": human_size(max(quota - used, 0))},
            )
        return Attachment.objects.create(
            id=pk,
            room=room,
            uploader=user,
            name=name,
            size=size,
            content_type=content_type,
            file=key,
        )


def upload_target(attachment: Attachment) -> dict[str, Any]:
    """Where the client sends the bytes: a multipart POST of `fields`, then the file as `file`."""
    if not direct_upload():
        return {"url": reverse("chat:api-attachment-upload", args=[attachment.pk]), "fields": {}}
    storage: Any = default_storage
    key = storage._normalize_name(attachment.file.name)
    client = storage.connection.meta.client
    post = client.generate_presigned_post(
        Bucket=storage.bucket_name,
        Key=key,
        Fields={"Content-Type": attachment.content_type},
        # S3 refuses a body of any other size or type: the declaration is enforced at the door.
        Conditions=[
            ["content-length-range", attachment.size, attachment.size],
            {"Content-Type": attachment.content_type},
        ],
        ExpiresIn=settings.CHAT_ATTACHMENT_UPLOAD_TTL,
    )
    return {"url": post["url"], "fields": post["fields"]}


def _pending(user: Any, pk: Any) -> Attachment:
    attachment = (
        Attachment.objects.select_related("room")
        .filter(pk=clean_id(pk), uploader=user if user.is_authenticated else None)
        .first()
    )
    if attachment is None:
        raise ChatError("not_found", _("There is no such upload."))
    return attachment


# --- step 2: the bytes, on the file system ---


def receive(user: Any, pk: Any, upload: Any) -> Attachment:
    """Store the bytes of a pending upload (file-system storage only)."""
    if direct_upload():
        raise ChatError(
            "bad_request", _("Send the file to the `upload` address of its declaration.")
        )
    attachment = _pending(user, pk)
    if attachment.status != Attachment.PENDING:
        raise ChatError("bad_request", _("This upload is already complete."))
    if upload is None:
        raise ChatError("bad_request", _("Send the file as the multipart field `file`."))
    if upload.size != attachment.size:
        discard(attachment)
        raise ChatError(
            "bad_request",
            _("The file has %(size)s bytes, not the %(declared)s declared.")
            % {"size": upload.size, "declared": attachment.size},
        )
    if default_storage.exists(attachment.file.name):
        raise ChatError("bad_request", _("This upload already has its file."))
    stored = default_storage.save(attachment.file.name, upload)
    if stored != attachment.file.name:
        Attachment.objects.filter(pk=attachment.pk).update(file=stored)
        attachment.file.name = stored
    return attachment


# --- step 3: check what was stored ---


def complete(user: Any, pk: Any) -> Attachment:
    """Check the stored object and make the attachment ready, or delete both object and row."""
    attachment = _pending(user, pk)
    if attachment.status == Attachment.READY:
        return attachment  # a retried complete changes nothing
    key = attachment.file.name
    if not default_storage.exists(key):
        raise ChatError("bad_request", _("The file has not been uploaded yet."))
    try:
        size = default_storage.size(key)
        if size != attachment.size:  # the declared size was checked against the limit
            raise ChatError(
                "bad_request",
                _("The file has %(size)s bytes, not the %(declared)s declared.")
                % {"size": size, "declared": attachment.size},
            )
        # Images are opened whole (to verify and thumbnail them); other types only sniffed.
        whole = attachment.content_type in IMAGE_FORMATS
        with default_storage.open(key, "rb") as handle:
            data = handle.read(size if whole else SNIFF_BYTES)
        _check_content(attachment, data)
    except ChatError:
        discard(attachment)
        raise
    attachment.status = Attachment.READY
    attachment.save(update_fields=["status", "thumbnail", "width", "height"])
    return attachment


def _check_content(attachment: Attachment, data: bytes) -> None:
    """Refuse content that is not what its declared type says; thumbnail images."""
    declared = attachment.content_type
    mismatch = ChatError(
        "bad_request", _("The file's content is not %(type)s.") % {"type": declared}
    )
    if declared in IMAGE_FORMATS:
        pil = _pillow()
        Image = pil.Image
        decoder = DECODERS[IMAGE_FORMATS[declared]]
        if decoder is not None and not pil.features.check(decoder):
            # Not the file's fault: this server's Pillow was built without the codec.
            log.error("Pillow cannot read %s here: its %s codec is missing", declared, decoder)
            raise ChatError(
                "bad_request",
                _(
                    "This server cannot read %(type)s images (its image library lacks the "
                    "codec); send the picture in another format."
                )
                % {"type": declared},
            )
        try:
            with warnings.catch_warnings():
                # Between one and two times MAX_IMAGE_PIXELS Pillow only warns: refuse those too.
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                with Image.open(io.BytesIO(data)) as image:
                    if image.format != IMAGE_FORMATS[declared]:
                        raise mismatch
                    image.verify()
                # verify() leaves the image unusable: open it again to draw the thumbnail.
                with Image.open(io.BytesIO(data)) as image:
                    _thumbnail(attachment, image)
        except ChatError:
            raise
        except (
            Image.UnidentifiedImageError,
            Image.DecompressionBombError,
            Image.DecompressionBombWarning,
            OSError,
            ValueError,
        ):
            raise mismatch from None
        return
    head = data[:SNIFF_BYTES]
    if declared == "text/plain":
        # Text is whatever decodes as UTF-8 without control bytes; a cut may split a character.
        if b"\x00" in head:
            raise mismatch
        try:
            head.decode("utf-8")
        except UnicodeDecodeError as error:
            if error.start < len(head) - 3:
                raise mismatch from None
        return
    try:
        found = {match.mime_type for match in puremagic.magic_string(head) if match.mime_type}
    except (puremagic.PureError, ValueError):
        found = set()
    if declared not in found:
        raise mismatch


def _thumbnail(attachment: Attachment, image: PIL.Image.Image) -> None:
    attachment.width, attachment.height = image.size
    side = settings.CHAT_ATTACHMENT_THUMBNAIL
    image.seek(0)  # the first frame of an animation
    thumb = image.convert("RGBA" if image.mode in ("RGBA", "LA", "P") else "RGB")
    thumb.thumbnail((side, side))
    for suffix, kind, options in _thumbnail_formats(thumb.mode):
        out = io.BytesIO()
        try:
            thumb.save(out, kind, **options)
        except (KeyError, OSError) as exc:
            # KeyError: Pillow has no writer for the format at all (its codec failed to load).
            log.error("Pillow cannot write %s thumbnails here (%r); trying another", kind, exc)
            continue
        name = f"{attachment.file.name}.thumb{suffix}"
        attachment.thumbnail.name = default_storage.save(name, ContentFile(out.getvalue()))
        return
    raise ChatError("bad_request", _("This server cannot make a thumbnail of this image."))


def _thumbnail_formats(mode: str) -> list[tuple[str, str, dict[str, Any]]]:
    formats: list[tuple[str, str, dict[str, Any]]] = [(".webp", "WEBP", {"quality": 80})]
    if mode == "RGB":
        formats.append((".jpg", "JPEG", {"quality": 85}))
    formats.append((".png", "PNG", {"optimize": True}))
    return formats


def thumbnail_type(attachment: Attachment) -> str:
    """The content type of the attachment's thumbnail, from its name."""
    suffix = PurePosixPath(attachment.thumbnail.name or "").suffix
    return THUMBNAIL_TYPES.get(suffix, "image/webp")


def discard(attachment: Attachment) -> None:
    """Delete an attachment's files and its row."""
    delete_files(attachment.file.name, attachment.thumbnail.name)
    Attachment.objects.filter(pk=attachment.pk).delete()


def delete_files(*keys: str) -> None:
    for key in keys:
        if not key:
            continue
        try:
            default_storage.delete(key)
        except Exception:  # storage errors must not undo the database change that freed the file
            log.exception("could not delete %s from storage", key)


# --- into a message ---


def for_message(user: Any, room: Room, pk: Any) -> Attachment:
    """The ready, unsent attachment this user uploaded to this room (the write path's check)."""
    attachment = (
        Attachment.objects.filter(
            pk=clean_id(pk), uploader=user, room=room, status=Attachment.READY
        )
        .filter(message__isnull=True)
        .first()
    )
    if attachment is None:
        raise ChatError("bad_request", _("There is no such attachment to send (upload it first)."))
    return attachment


# --- downloads ---


def for_download(user: Any, pk: Any) -> Attachment:
    """The attachment if this user may read it, else not_found (nothing tells a guess apart)."""
    try:
        key = clean_id(pk)
    except ChatError:
        raise ChatError("not_found", _("There is no such file.")) from None
    attachment = Attachment.objects.select_related("room", "message").filter(pk=key).first()
    missing = ChatError("not_found", _("There is no such file."))
    if attachment is None or attachment.status != Attachment.READY:
        raise missing
    room = access.with_flags(user, attachment.room)  # the user's flags, read once
    if not access.may_read(user, room):
        raise missing
    message = getattr(attachment, "message", None)
    if message is None:
        # Not sent yet: only its uploader sees it (a preview before sending).
        if attachment.uploader_id != user.pk:
            raise missing
    elif message.deleted or (message.hidden and not access.is_moderator(user, room)):
        raise missing
    return attachment


def signed_url(attachment: Attachment, thumbnail: bool = False) -> str:
    """A short-lived signed S3 URL that serves the file with a safe disposition."""
    storage: Any = default_storage
    key = attachment.thumbnail.name if thumbnail else attachment.file.name
    inline = attachment.content_type in IMAGE_FORMATS
    params = {
        "ResponseContentType": thumbnail_type(attachment) if thumbnail else attachment.content_type,
        "ResponseContentDisposition": disposition(attachment.name, inline or thumbnail),
    }
    return storage.url(key, parameters=params, expire=settings.CHAT_ATTACHMENT_URL_TTL)


def open_file(attachment: Attachment, thumbnail: bool = False) -> IO[bytes]:
    return default_storage.open(attachment.thumbnail.name if thumbnail else attachment.file.name)


def disposition(name: str, inline: bool) -> str:
    """A Content-Disposition with the name in both the ASCII and the RFC 5987 forms."""
    from urllib.parse import quote

    ascii_name = (
        name.encode("ascii", "ignore").decode().replace('"', "").replace("\\", "") or "file"
    )
    kind = "inline" if inline else "attachment"
    return f"{kind}; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(name)}"


# --- clean-up ---


def purge_unused(older_than: timedelta | None = None) -> int:
    """Delete uploads never sent in a message (pending or ready) after CHAT_ATTACHMENT_UNUSED_TTL."""
    age = older_than or timedelta(seconds=settings.CHAT_ATTACHMENT_UNUSED_TTL)
    stale = Attachment.objects.filter(created__lt=timezone.now() - age, message__isnull=True)
    count = 0
    for attachment in stale.iterator():
        discard(attachment)
        count += 1
    return count


def scheduled_purge(event: Any = None, context: Any = None) -> int:
    """The Lambda schedule's entry point (zappa_settings.json "events")."""
    return purge_unused()
