"""The JSON API under /api/ (shared/protocol.md, "HTTP JSON API"), as plain function views.

Each view parses input, calls the write path or the read path, and answers JSON. Errors are always
`{"error": code, "detail": text}` with the matching status; CSRF applies to unsafe methods as usual.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from functools import wraps
from typing import Any

from django.core.exceptions import RequestDataTooBig, SuspiciousOperation
from django.db import DatabaseError
from django.http import (
    FileResponse,
    HttpRequest,
    HttpResponse,
    HttpResponseRedirect,
    JsonResponse,
)
from django.http.multipartparser import MultiPartParserError
from django.middleware.csrf import CsrfViewMiddleware
from django.urls import NoReverseMatch, reverse
from django.utils.translation import gettext as _
from django.views.decorators.csrf import csrf_exempt

from chat import (
    access,
    attachments,
    cleaning,
    dms,
    longpoll,
    moderation,
    notify,
    reads,
    tokens,
    writepath,
)
from chat import rooms as chatrooms  # `rooms` is the view of /api/rooms/
from chat import search as chat_search
from chat.conf import settings
from chat.errors import ChatError
from chat.models import Restriction

View = Callable[..., HttpResponse]
log = logging.getLogger(__name__)


def error(code: str, detail: str, status: int, **extra: Any) -> JsonResponse:
    response = JsonResponse({"error": code, "detail": detail, **extra}, status=status)
    if "retry_after" in extra:
        response["Retry-After"] = str(max(1, round(extra["retry_after"])))
    return response


def chat_error(exc: ChatError) -> JsonResponse:
    extra = {"retry_after": exc.retry_after} if exc.retry_after is not None else {}
    return error(exc.code, exc.detail, exc.status, **extra)


def api(*methods: str) -> Callable[[View], View]:
    """Allowed methods, a logged-in user (401, not a login redirect), and ChatError as JSON."""

    def decorator(view: View) -> View:
        @wraps(view)
        def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
            if request.method not in methods:
                response = error(
                    "method_not_allowed",
                    _("Use %(methods)s.") % {"methods": _(" or ").join(methods)},
                    405,
                )
                response["Allow"] = ", ".join(methods)
                return response
            try:
                if not request.user.is_authenticated:
                    return error("unauthorized", _("Log in first."), 401)
                return view(request, *args, **kwargs)
            except ChatError as exc:
                return chat_error(exc)
            except DatabaseError:
                # Not stored, not acknowledged: the client retries with the same client_id.
                log.exception("database error in %s", view.__name__)
                return error("server_error", _("Try again: the server could not store it."), 500)

        return wrapper

    return decorator


def json_body(request: HttpRequest) -> dict[str, Any]:
    try:
        raw = request.body
    except RequestDataTooBig:
        raise ChatError("too_large", _("The request body is too large.")) from None
    try:
        data = json.loads(raw or b"{}")
    except (ValueError, RecursionError):
        raise ChatError("bad_request", _("The body must be a JSON object.")) from None
    if not isinstance(data, dict):
        raise ChatError("bad_request", _("The body must be a JSON object."))
    return data


def query_int(request: HttpRequest, name: str) -> int | None:
    value = request.GET.get(name)
    if value is None:
        return None
    return cleaning.clean_cursor(value, name)


# --- /api/rooms/ ---


@api("GET", "POST")
def rooms(request: HttpRequest) -> HttpResponse:
    if request.method == "POST":
        data = json_body(request)
        room = writepath.create_room(
            request.user,
            data.get("slug"),
            data.get("title"),
            data.get("private", False),
        )
        return JsonResponse(room.to_dict(unread=0), status=201)
    # The stream's position first: whatever happens after it comes on the stream, on top of
    # these counts.
    seq = reads.user_seq(request.user)
    return JsonResponse({"rooms": reads.visible_rooms(request.user), "user_seq": seq})


# --- direct messages, blocks, people ---


@api("POST")
def open_dm(request: HttpRequest) -> HttpResponse:
    """`{"users": [usernames]}`: the conversation with these people, made if it did not exist."""
    room, created = dms.open_dm(request.user, json_body(request).get("users"))
    return JsonResponse(reads.room_view(room, request.user), status=201 if created else 200)


@api("GET")
def blocks(request: HttpRequest) -> HttpResponse:
    return JsonResponse({"blocked": dms.blocked(request.user)})


@api("POST", "DELETE")
def block(request: HttpRequest, username: str) -> HttpResponse:
    if request.method == "DELETE":
        dms.unblock(request.user, username)
        return HttpResponse(status=204)
    created = dms.block(request.user, username)
    return JsonResponse({"blocked": username}, status=201 if created else 200)


@api("GET")
def users(request: HttpRequest) -> HttpResponse:
    """Usernames starting with `q` (case-insensitive), for the new-conversation dialog."""
    prefix = cleaning.clean_line(request.GET.get("q"), "q", max_length=cleaning.USERNAME_MAX)
    limit = cleaning.clean_limit(request.GET.get("limit"), "limit", 1, 20, default=10)
    return JsonResponse({"users": reads.find_users(prefix, limit)})


@api("GET", "POST", "DELETE")
def members(request: HttpRequest, slug: str) -> HttpResponse:
    """GET: who can be mentioned in the room, its members (a public room: those who joined it).
    POST `{"user"}`: invite someone to a private room; DELETE `{"user"}`: remove them."""
    room = access.get_room(request.user, slug)
    if request.method == "POST":
        person, created = chatrooms.invite(request.user, room, json_body(request).get("user"))
        answer = {"room": room.slug, "user": person.get_username()}
        return JsonResponse(answer, status=201 if created else 200)
    if request.method == "DELETE":
        chatrooms.remove(request.user, room, json_body(request).get("user"))
        return HttpResponse(status=204)
    return JsonResponse({"members": reads.room_members(room)})


# --- the directory, joining and leaving (chat/rooms.py) ---


@api("GET")
def directory(request: HttpRequest) -> HttpResponse:
    """`?q=&limit=&offset=`: public rooms, latest activity first."""
    limit = cleaning.clean_limit(request.GET.get("limit"), "limit", 1, 100, default=50)
    offset = cleaning.clean_limit(request.GET.get("offset"), "offset", 0, 10_000, default=0)
    return JsonResponse(chatrooms.directory(request.user, request.GET.get("q"), limit, offset))


@api("POST")
def join(request: HttpRequest, slug: str) -> HttpResponse:
    room = access.get_room(request.user, slug)
    created = chatrooms.join(request.user, room)
    answer = reads.room_view(room, request.user) | {"joined": True}
    return JsonResponse(answer, status=201 if created else 200)


@api("POST")
def leave(request: HttpRequest, slug: str) -> HttpResponse:
    """204 whether or not the user was in the room (a retry is safe)."""
    room = access.get_room(request.user, slug)
    chatrooms.leave(request.user, room)
    return HttpResponse(status=204)


@api("POST")
def notifications(request: HttpRequest, slug: str) -> HttpResponse:
    """`{"level": "all"|"mentions"|"none"}`: which messages of the room raise notify events."""
    room = access.get_room(request.user, slug)
    level = notify.set_level(request.user, room, json_body(request).get("level"))
    return JsonResponse({"room": room.slug, "level": level})


@api("GET")
def search(request: HttpRequest) -> HttpResponse:
    """`?q=<text>&room=<slug>&author=<username>&limit=<n>&before=<id>` (chat/search.py)."""
    found = chat_search.search(
        request.user,
        request.GET.get("q"),
        room=request.GET.get("room"),
        author=request.GET.get("author"),
        limit=request.GET.get("limit"),
        before=request.GET.get("before"),
    )
    return JsonResponse(found)


# --- the user's own stream ---


@api("GET")
def my_notifications(request: HttpRequest) -> HttpResponse:
    """`?after=<user_seq>`: every event after it (or a resync); without it, the latest `limit`."""
    after = query_int(request, "after")
    if after is not None:
        return JsonResponse(reads.user_catch_up(request.user, after).answer(seq_key="user_seq"))
    limit = cleaning.clean_limit(request.GET.get("limit"), "limit", 1, 100, default=50)
    return JsonResponse(reads.latest_user_events(request.user, limit))


async def my_poll(request: HttpRequest) -> HttpResponse:
    """`GET /api/me/poll` as a Django view (WSGI, Lambda); the ASGI server routes the same path
    to chat.longpoll.PollConsumer."""
    if request.method != "GET":
        return error("method_not_allowed", _("Use GET."), 405)
    user = await request.auser()
    try:
        answer = await longpoll.poll_user(
            user, request.GET.get("after"), request.GET.get("timeout")
        )
    except ChatError as exc:
        return chat_error(exc)
    return JsonResponse(answer, headers={"Cache-Control": "no-store"})


@api("GET", "POST")
def messages(request: HttpRequest, slug: str) -> HttpResponse:
    room = access.get_room(request.user, slug)
    if request.method == "POST":
        data = json_body(request)
        posted = writepath.post_message(
            request.user,
            room,
            data.get("body"),
            data.get("client_id"),
            data.get("attachment"),
            data.get("reply_to"),
        )
        return JsonResponse(posted.message.to_event(), status=201 if posted.created else 200)
    after = query_int(request, "after")
    if after is not None:
        return JsonResponse(reads.catch_up(room, after, room.seq).answer("messages"))
    limit = cleaning.clean_limit(request.GET.get("limit"), "limit", 1, 100, default=50)
    # Opening a room at one message (a search hit, a quoted reply), and scrolling down from it.
    around = query_int(request, "around")
    if around is not None:
        return JsonResponse(reads.around(room, around, limit))
    newer_than = query_int(request, "newer_than")
    if newer_than is not None:
        return JsonResponse(reads.newer(room, newer_than, limit))
    return JsonResponse(reads.history(room, query_int(request, "before"), limit))


@api("PATCH", "DELETE")
def message(request: HttpRequest, slug: str, message_id: int) -> HttpResponse:
    room = access.get_room(request.user, slug)
    if request.method == "DELETE":
        changed = writepath.delete_message(request.user, room, message_id)
    else:
        changed = writepath.edit_message(
            request.user, room, message_id, json_body(request).get("body")
        )
    return JsonResponse(changed.to_event())


@api("POST")
def report(request: HttpRequest, slug: str, message_id: int) -> HttpResponse:
    room = access.get_room(request.user, slug)
    data = json_body(request)
    made = moderation.report_message(request.user, room, message_id, data.get("reason"))
    return JsonResponse({"id": made.pk, "message": made.message_id}, status=201)


@api("POST")
def reactions(request: HttpRequest, slug: str, message_id: int) -> HttpResponse:
    """Set the user's reaction `{"emoji", "on"?, "client_id"?}`: on or off as `on` says, toggled
    without it; the answer is the message event after it."""
    room = access.get_room(request.user, slug)
    data = json_body(request)
    changed = writepath.react(
        request.user,
        room,
        message_id,
        data.get("emoji"),
        data.get("on"),
        data.get("client_id"),
    )
    return JsonResponse(changed.to_event())


# --- moderation (site staff with the Django permission, or the room's own moderators) ---


@api("POST")
def moderate_message(request: HttpRequest, slug: str, message_id: int, action: str) -> HttpResponse:
    room = access.get_room(request.user, slug)
    act = {
        "hide": moderation.hide_message,
        "restore": moderation.restore_message,
        "erase": moderation.erase_message,
    }[action]
    changed = act(request.user, room, message_id, json_body(request).get("reason"))
    return JsonResponse(changed.to_event())


@api("POST")
def moderate_room(request: HttpRequest, slug: str) -> HttpResponse:
    room = access.get_room(request.user, slug)
    data = json_body(request)
    reason = data.pop("reason", None)
    room = moderation.moderate_room(request.user, room, data, reason)
    return JsonResponse(room.to_dict() | {"rate_limit": room.rate_limit})


@api("POST")
def restrictions(request: HttpRequest) -> HttpResponse:
    """Ban or mute: {"user", "kind": "ban"|"mute", "room" (slug, or absent for the site),
    "until" (ISO 8601, optional), "reason"}."""
    data = json_body(request)
    room = None
    if data.get("room") is not None:
        room = access.get_room(request.user, data["room"])
    user = access.find_user(data.get("user"))
    row = moderation.restrict(
        request.user, user, data.get("kind"), room, data.get("until"), data.get("reason")
    )
    return JsonResponse({"id": row.pk, "kind": row.kind}, status=201)


@api("DELETE")
def restriction(request: HttpRequest, restriction_id: int) -> HttpResponse:
    row = Restriction.objects.select_related("room", "user").filter(pk=restriction_id).first()
    if row is None:
        # Whoever may lift nothing gets the same refusal whether or not the id exists.
        if not access.may_lift_any(request.user):
            raise ChatError("forbidden", _("Only this room's moderators may do that."))
        raise ChatError("not_found", _("There is no such ban or mute."))
    moderation.lift(request.user, row, json_body(request).get("reason"))
    return HttpResponse(status=204)


@api("POST")
def read(request: HttpRequest, slug: str) -> HttpResponse:
    room = access.get_room(request.user, slug)
    writepath.mark_read(request.user, room, json_body(request).get("seq"))
    return HttpResponse(status=204)


@api("POST")
def typing(request: HttpRequest, slug: str) -> HttpResponse:
    room = access.get_room(request.user, slug)
    writepath.send_typing(request.user, room)
    return HttpResponse(status=204)


async def poll(request: HttpRequest, slug: str) -> HttpResponse:
    """The long-poll as a Django view: what WSGI and Lambda serve (the ASGI server routes the same
    path to chat.longpoll.PollConsumer)."""
    if request.method != "GET":
        return error("method_not_allowed", _("Use GET."), 405)
    user = await request.auser()
    try:
        answer = await longpoll.poll(
            user, slug, request.GET.get("after"), request.GET.get("timeout")
        )
    except ChatError as exc:
        return chat_error(exc)
    return JsonResponse(answer, headers={"Cache-Control": "no-store"})


@api("POST")
def ws_token(request: HttpRequest) -> HttpResponse:
    if access.site_banned(request.user):
        raise ChatError("forbidden", _("You are banned."))
    ws_url = settings.CHAT_WS_URL or _default_ws_url(request)
    return JsonResponse(
        {
            "token": tokens.make_token(request.user, request.session.session_key),
            "ws_url": ws_url,
            "expires_in": settings.CHAT_WS_TOKEN_MAX_AGE,
        }
    )


# --- attachments (chat/attachments.py has the steps) ---


@api("POST")
def start_upload(request: HttpRequest, slug: str) -> HttpResponse:
    """Declare an upload: 201 with the pending attachment and where to send its bytes."""
    room = access.get_room(request.user, slug)
    data = json_body(request)
    attachment = attachments.start_upload(
        request.user, room, data.get("name"), data.get("size"), data.get("content_type")
    )
    return JsonResponse(
        {
            "attachment": attachment_dict(attachment),
            "upload": attachments.upload_target(attachment),
        },
        status=201,
    )


@csrf_exempt  # checked in the view, once the body has parsed (see below)
@api("POST")
def upload(request: HttpRequest, attachment_id: str) -> HttpResponse:
    """The bytes of a pending upload, as the multipart field `file` (file-system storage)."""
    declared = request.META.get("CONTENT_LENGTH") or ""
    # Refuse an oversized body before Django reads it into memory or a temporary file.
    if declared.isascii() and declared.isdigit():
        if int(declared) > settings.CHAT_ATTACHMENT_MAX_SIZE + 64 * 1024:
            raise ChatError("too_large", _("The file is larger than allowed."))
    try:
        upload = request.FILES.get("file")
    except RequestDataTooBig:
        raise ChatError("too_large", _("The request body is too large.")) from None
    except (MultiPartParserError, SuspiciousOperation):
        # A malformed body (a part header over Django's limit, too many parts or fields): the
        # CSRF middleware would read it first and answer Django's HTML 400, so the check that
        # it skips for this view runs here, after parsing, and every refusal is the API's JSON.
        raise ChatError(
            "bad_request", _("The body must be a multipart form with a `file`.")
        ) from None
    refused = CsrfViewMiddleware(lambda request: HttpResponse()).process_view(request, None, (), {})
    if refused is not None:
        return refused
    attachment = attachments.receive(request.user, attachment_id, upload)
    return JsonResponse({"attachment": attachment_dict(attachment)}, status=201)


@api("POST")
def complete_upload(request: HttpRequest, attachment_id: str) -> HttpResponse:
    """Check the stored file: 200 with the ready attachment, or an error and nothing kept."""
    attachment = attachments.complete(request.user, attachment_id)
    return JsonResponse({"attachment": attachment_dict(attachment)})


@api("GET", "HEAD")
def download(request: HttpRequest, attachment_id: str, thumbnail: bool = False) -> HttpResponse:
    """The file for those who may read its room: served here, or a redirect to a signed URL."""
    attachment = attachments.for_download(request.user, attachment_id)
    if thumbnail and not attachment.thumbnail:
        raise ChatError("not_found", _("This file has no thumbnail."))
    if attachments.direct_upload():
        response: HttpResponse = HttpResponseRedirect(attachments.signed_url(attachment, thumbnail))
    else:
        inline = thumbnail or attachment.content_type in attachments.IMAGE_FORMATS
        response = FileResponse(
            attachments.open_file(attachment, thumbnail),
            content_type=(
                attachments.thumbnail_type(attachment) if thumbnail else attachment.content_type
            ),
        )
        response["Content-Disposition"] = attachments.disposition(attachment.name, inline)
        # Served from our origin: the browser must not guess a type or run anything in it.
        response["Content-Security-Policy"] = "default-src 'none'; sandbox"
    response["Cache-Control"] = "private, max-age=60"
    return response


def attachment_dict(attachment: Any) -> dict[str, Any]:
    return {**attachment.to_event(), "status": attachment.status}


def _default_ws_url(request: HttpRequest) -> str:
    scheme = "wss" if request.is_secure() else "ws"
    return f"{scheme}://{request.get_host()}{ws_path()}"


def ws_path() -> str:
    """The WebSocket's path: CHAT_WS_PATH, else "ws/" under the prefix of chat.urls, where the
    site mounts chat.routing's websocket_urlpatterns (chat/routing.py)."""
    return settings.CHAT_WS_PATH or reverse("chat:index") + "ws/"


def under_api(request: HttpRequest) -> bool:
    """Whether the request is for the API of chat.urls, wherever the site has put it. False
    where the chat's URLs do not resolve (an error page of a site that does not include them)."""
    try:
        prefix = reverse("chat:api-rooms").removesuffix("rooms/")
    except NoReverseMatch:
        return False
    return request.path.startswith(prefix)


def csrf_failure(request: HttpRequest, reason: str = "") -> HttpResponse:
    """CSRF refusals under /api/ are JSON like every other API error."""
    if under_api(request):
        return error("forbidden", _("CSRF check failed: %(reason)s") % {"reason": reason}, 403)
    from django.views.csrf import csrf_failure as default

    return default(request, reason)


def not_found(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    """Django's 404 (an unknown /api/ path, a path converter that did not match) as JSON under
    /api/; the pages keep Django's page."""
    if under_api(request):
        return error("not_found", _("There is no such endpoint."), 404)
    from django.views.defaults import page_not_found

    return page_not_found(request, exception)  # type: ignore[arg-type]


def server_error(request: HttpRequest) -> HttpResponse:
    """An uncaught exception (already logged by Django with its traceback) as JSON under /api/."""
    if under_api(request):
        return error("server_error", _("Something went wrong on our side."), 500)
    from django.views.defaults import server_error as default

    return default(request)
