"""The pages: sign up, the rooms list, a room. They work without JavaScript; chat/static/chat/ adds
the live client on top of the room page. Templates are chat/templates/chat/, each extending
"chat/base.html", which a site overrides with its own layout."""

from __future__ import annotations

import uuid
from typing import Any

from django.contrib import messages as flash
from django.contrib.auth import get_user_model, login
from django.contrib.auth.decorators import login_required
from django.contrib.auth.forms import UserCreationForm
from django.db.models import Count, Min
from django.http import HttpRequest, HttpResponse
from django.middleware.csrf import CsrfViewMiddleware
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.text import slugify
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_http_methods

from chat import access, cleaning, digest, reads, rooms, writepath
from chat.conf import settings
from chat.errors import ChatError
from chat.models import Membership, Message

PAGE_SIZE = 50


def signup_form() -> type[UserCreationForm]:
    """Django's sign-up form for the site's user model (AUTH_USER_MODEL): its USERNAME_FIELD (an
    email, say) and whatever else it requires, then the two passwords."""
    users = get_user_model()
    # REQUIRED_FIELDS are what createsuperuser asks for; only those that may not be blank are
    # asked here (Django's own User lists its optional email).
    required = [name for name in users.REQUIRED_FIELDS if not users._meta.get_field(name).blank]
    fields = (users.USERNAME_FIELD, *required)
    meta = type("Meta", (UserCreationForm.Meta,), {"model": users, "fields": fields})
    return type("SignupForm", (UserCreationForm,), {"Meta": meta})


def signup(request: HttpRequest) -> HttpResponse:
    form = signup_form()(request.POST or None)
    if request.method == "POST" and form.is_valid():
        user = form.save()
        login(request, user, backend="django.contrib.auth.backends.ModelBackend")
        # Straight into a conversation: the rooms page of someone who belongs to none is empty.
        return redirect("chat:room", slug=writepath.ensure_lobby().slug)
    return render(request, "chat/signup.html", {"form": form})


def slug_for(title: str) -> str:
    """The slug a title suggests (the form derives the same in the browser; without JavaScript
    an empty slug field means this one)."""
    return slugify(title.replace("_", " "))[: cleaning.SLUG_MAX].strip("-")


@login_required
def index(request: HttpRequest) -> HttpResponse:
    new_room = {"slug": "", "title": "", "private": False, "error": None, "edited": False}
    status = 200
    if request.method == "POST":
        title = request.POST.get("title", "")
        slug = request.POST.get("slug", "").strip() or slug_for(title)
        private = request.POST.get("private") == "on"
        try:
            room = writepath.create_room(request.user, slug, title, private)
        except ChatError as exc:
            # The form comes back as it was typed, with the reason next to it.
            new_room = {
                "slug": slug,
                "title": title,
                "private": private,
                "error": exc.detail,
                # A slug the title would not give stays as typed when the title changes.
                "edited": slug != slug_for(title),
            }
            status = 400
        else:
            return redirect("chat:room", slug=room.slug)
    rooms = reads.visible_rooms(request.user)
    return render(request, "chat/index.html", {"rooms": rooms, "new_room": new_room}, status=status)


def refused(request: HttpRequest, exc: ChatError) -> HttpResponse:
    """A room the page cannot show, in the site's layout: 403 with the reason for a ban, else 404
    (a private room of others is not found, so that slugs do not leak)."""
    if exc.code == "forbidden":
        return render(request, "chat/403.html", {"reason": exc.detail}, status=403)
    return render(request, "chat/404.html", {"reason": exc.detail}, status=404)


@login_required
def directory(request: HttpRequest) -> HttpResponse:
    """The public rooms to browse and join (a form post: it works without JavaScript)."""
    if request.method == "POST":
        try:
            room = access.get_room(request.user, request.POST.get("room", ""))
            rooms.join(request.user, room)
        except ChatError as exc:
            flash.error(request, exc.detail)
            return redirect("chat:directory")
        return redirect("chat:room", slug=room.slug)
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
    except ChatError as exc:
        return refused(request, exc)
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
        return redirect("chat:room", slug=room.slug)
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
        "older_url": f"{reverse('chat:room', args=[room.slug])}?before={oldest}"
        if oldest
        else None,
        "client_id": uuid.uuid4().hex,
        "rooms": rooms,
        "title": listed["title"],
        "level": listed["notifications"],
        "is_latest": before_seq is None and opened is None,
        "around": opened,
        **unread_marker(request.user, room),
        "max_body": settings.CHAT_MAX_BODY,
        "edit_window": settings.CHAT_EDIT_WINDOW,
        "max_attachment": settings.CHAT_ATTACHMENT_MAX_SIZE,
        "attachment_types": ",".join(settings.CHAT_ATTACHMENT_TYPES),
        # Moderators may post in a locked room: the page keeps their composer open.
        "is_moderator": access.is_moderator(request.user, room),
        # The header's description and members controls (chat/static/chat/roomadmin.js).
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


def unread_marker(user: Any, room: Any) -> dict[str, Any]:
    """Where the reader's cursor is, for the "new messages" line: the first message by others
    after it (ids follow posting order in a room) and how many there are, counted as the rooms
    list counts them."""
    cursor = (
        Membership.objects.filter(room=room, user=user).values_list("read_seq", flat=True).first()
    )
    if cursor is None:  # not a member (a moderator, a public room not joined yet): no marker
        return {"read_seq": room.seq, "first_unread": "", "unread": 0}
    unread = (
        Message.objects.filter(room=room, posted_seq__gt=cursor, deleted=False, hidden=False)
        .exclude(author=user)
        .aggregate(first=Min("id"), count=Count("id"))
    )
    return {"read_seq": cursor, "first_unread": unread["first"] or "", "unread": unread["count"]}


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
