"""The pages: sign up, the rooms list, a room. They work without JavaScript; static/chat/ adds the
live client on top of the room page."""

from __future__ import annotations

import uuid
from typing import Any

from django.conf import settings
from django.contrib import messages as flash
from django.contrib.auth import login
from django.contrib.auth.decorators import login_required
from django.contrib.auth.forms import UserCreationForm
from django.http import Http404, HttpRequest, HttpResponse
from django.middleware.csrf import CsrfViewMiddleware
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_http_methods

from chat import access, cleaning, digest, reads, rooms, writepath
from chat.errors import ChatError

PAGE_SIZE = 50


def signup(request: HttpRequest) -> HttpResponse:
    form = UserCreationForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        user = form.save()
        login(request, user, backend="django.contrib.auth.backends.ModelBackend")
        return redirect("index")
    return render(request, "registration/signup.html", {"form": form})


@login_required
def index(request: HttpRequest) -> HttpResponse:
    if request.method == "POST":
        try:
            room = writepath.create_room(
                request.user,
                request.POST.get("slug", ""),
                request.POST.get("title", ""),
                request.POST.get("private") == "on",
            )
        except ChatError as exc:
            flash.error(request, exc.detail)
        else:
            return redirect("room", slug=room.slug)
    rooms = reads.visible_rooms(request.user)
    return render(request, "chat/index.html", {"rooms": rooms})


@login_required
def directory(request: HttpRequest) -> HttpResponse:
    """The public rooms to browse and join (a form post: it works without JavaScript)."""
    if request.method == "POST":
        try:
            room = access.get_room(request.user, request.POST.get("room", ""))
            rooms.join(request.user, room)
        except ChatError as exc:
            flash.error(request, exc.detail)
            return redirect("directory")
        return redirect("room", slug=room.slug)
    q = request.GET.get("q", "")
    try:
        listed = rooms.directory(request.user, q)
    except ChatError as exc:
        flash.error(request, exc.detail)
        q, listed = "", rooms.directory(request.user, "")
    return render(request, "chat/directory.html", {"q": q, **listed})


@login_required
def room(request: HttpRequest, slug: str) -> HttpResponse:
    try:
        room = access.get_room(request.user, slug)
    except ChatError:
        raise Http404("No such room.") from None
    if request.method == "POST":
        try:
            writepath.post_message(
                request.user,
                room,
                request.POST.get("body", ""),
                request.POST.get("client_id"),
            )
        except ChatError as exc:
            flash.error(request, exc.detail)
        return redirect("room", slug=room.slug)
    before = request.GET.get("before")
    try:
        before_seq = cleaning.clean_cursor(before, "before") if before else None
    except ChatError:
        before_seq = None
    page = reads.history(room, before_seq, PAGE_SIZE)
    oldest = min((m["seq"] for m in page["messages"]), default=None)
    # ?around=<seq>: opened at one message (a search hit, a quoted reply); search.js scrolls on.
    opened = _around(room, request.GET.get("around"))
    if opened is not None:
        page, oldest = opened, opened["older"]
    rooms = reads.visible_rooms(request.user)
    # The reader's own view of this room: a DM is titled by the other people's names, and the
    # header's notification control starts at the reader's level.
    listed = next((r for r in rooms if r["slug"] == room.slug), None)
    if listed is None:  # a moderator reading a private room they are not a member of
        listed = {**reads.room_view(room, request.user), "notifications": "mentions"}
    context = {
        "room": room,
        # Not "messages": that name is the messages framework's, which base.html shows as flashes.
        "history": page["messages"],
        "has_more": page["has_more"],
        "older_url": f"{reverse('room', args=[room.slug])}?before={oldest}" if oldest else None,
        "client_id": uuid.uuid4().hex,
        "rooms": rooms,
        "title": listed["title"],
        "level": listed["notifications"],
        "is_latest": before_seq is None and opened is None,
        "around": opened,
        "max_body": settings.CHAT_MAX_BODY,
        "edit_window": settings.CHAT_EDIT_WINDOW,
        "max_attachment": settings.CHAT_ATTACHMENT_MAX_SIZE,
        "attachment_types": ",".join(settings.CHAT_ATTACHMENT_TYPES),
        # Moderators may post in a locked room: the page keeps their composer open.
        "is_moderator": access.is_moderator(request.user, room),
        # The header's description and members controls (static/chat/roomadmin.js).
        "can_manage": access.can_manage(request.user, room),
        "is_owner": access.is_owner(request.user, room),
        "joined": bool(listed.get("joined")),
    }
    return render(request, "chat/room.html", context)


def _around(room: Any, value: str | None) -> dict[str, Any] | None:
    """The page around a message, or None (absent or unreadable: the latest page, as for a
    bad ?before=)."""
    if not value:
        return None
    try:
        return reads.around(room, cleaning.clean_cursor(value, "around"), PAGE_SIZE)
    except ChatError:
        return None


# --- email digests: the unsubscribe link of every digest (chat/digest.py) ---


def _csrf_refusal(request: HttpRequest) -> HttpResponse | None:
    """The CSRF check the middleware skipped for email_unsubscribe (None: it passes)."""

    def checked(request: HttpRequest) -> HttpResponse:  # not exempt: the middleware checks it
        return HttpResponse()

    return CsrfViewMiddleware(checked).process_view(request, checked, (), {})


@csrf_exempt
@require_http_methods(["GET", "HEAD", "POST"])
def email_unsubscribe(request: HttpRequest, token: str) -> HttpResponse:
    """Works without logging in: the signed token names the user. GET asks (a link scanner that
    follows the link unsubscribes nobody); POST unsubscribes. Mail clients' RFC 8058 one-click
    POST carries no CSRF token, so only that exact form skips the check; any other POST (the
    page's button) is checked as usual. The token is what authorises either."""
    person = digest.user_for_token(token)
    if person is None:
        return render(request, "chat/unsubscribe.html", {"state": "invalid"}, status=400)
    if request.method == "POST":
        if not digest.is_one_click(request):
            refused = _csrf_refusal(request)
            if refused is not None:
                return refused
        digest.unsubscribe(person)
        return render(request, "chat/unsubscribe.html", {"state": "done", "person": person})
    return render(
        request, "chat/unsubscribe.html", {"state": "ask", "person": person, "token": token}
    )
