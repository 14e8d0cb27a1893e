"""The Django admin as the moderators' console.

Every change to a message, a room's state or a ban goes through the write path and moderation (permission
checks, the room's next seq, the audit row, publication after commit); nothing here writes those
models itself. Site staff see everything their Django permissions allow; a room's own moderators
(staff accounts listed in Room.moderators) see and act on their rooms only.

Direct messages are private to their members: no admin lists the conversations, their members,
their files or their messages, except a message somebody reported (and its file), which the
reports and the messages list show so that it can be hidden or erased (docs/protocol.md, "Direct
messages").
"""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.views.decorators import staff_member_required
from django.contrib.auth import get_user_model
from django.db.models import Count, Q, QuerySet
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from chat import access, moderation
from chat.errors import ChatError
from chat.models import (
    ApiConnection,
    Attachment,
    Block,
    DeliveryClaim,
    Inbox,
    LoggedOutSession,
    Membership,
    Message,
    ModerationAction,
    Reaction,
    ReactionKey,
    Report,
    Restriction,
    Room,
    Subscription,
    UserEvent,
)

# Rows of direct-message conversations, which the admin does not show (see above).
NOT_DM = Q(room__kind=Room.ROOM)


def moderated_rooms(user: Any) -> QuerySet[Room]:
    """The rooms the user may act in from the admin: every room for site staff with the
    permission, else the rooms they moderate."""
    if user.is_superuser or user.has_perm("chat.moderate_room"):
        return Room.objects.filter(kind=Room.ROOM)
    return Room.objects.filter(moderators=user)


# Searches by a person go through the user model's USERNAME_FIELD (an admin module is imported once
# the models are loaded).
USERNAME = get_user_model().USERNAME_FIELD


class ReadOnly:
    """Rows that only the write path (or a transport) writes: the admin shows them, never adds or
    changes one."""

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class Permanent(ReadOnly):
    """Read-only and never deleted here either (the audit log; files go with their message)."""

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class RoomScoped(admin.ModelAdmin):
    """Site permissions as usual; a room moderator without them may view (and act through the
    actions, which the write path checks again) the rows of their own rooms."""

    # The lookup from a row to its room's moderators.
    moderators_path = "room__moderators"

    def _site(self, request: HttpRequest, action: str) -> bool:
        opts = self.model._meta
        return request.user.has_perm(f"{opts.app_label}.{action}_{opts.model_name}")

    def _moderates(self, request: HttpRequest, obj: Any = None) -> bool:
        """A room moderator's own rows (any of them without `obj`). Site permissions are not
        this: a site view permission must not turn into change or delete."""
        user = request.user
        if not (user.is_active and user.is_staff):
            return False
        if obj is None:
            return Room.objects.filter(moderators=user).exists()
        mine = self.model._default_manager.filter(**{self.moderators_path: user})
        return mine.filter(pk=obj.pk).exists()

    def get_queryset(self, request: HttpRequest) -> QuerySet[Any]:
        qs = super().get_queryset(request)
        if self._site(request, "view") or self._site(request, "change"):
            return qs
        return qs.filter(**{self.moderators_path: request.user}).distinct()

    def has_module_permission(self, request: HttpRequest) -> bool:
        return super().has_module_permission(request) or self._moderates(request)

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return super().has_view_permission(request, obj) or self._moderates(request, obj)

    def run(self, request: HttpRequest, rows: Any, act: Any, done: str) -> None:
        count = 0
        for row in rows:
            try:
                act(row)
                count += 1
            except ChatError as exc:
                self.message_user(request, f"{row}: {exc.detail}", messages.ERROR)
        if count:
            self.message_user(request, f"{count} {done}.", messages.SUCCESS)


class UsernameField(forms.ModelChoiceField):
    """A member named by username: for moderators who may not list the site's users (the
    admin's user autocomplete needs that permission)."""

    def __init__(self) -> None:
        model = get_user_model()
        super().__init__(
            queryset=model.objects.filter(is_active=True),
            to_field_name=model.USERNAME_FIELD,
            widget=forms.TextInput(attrs={"autocomplete": "off"}),
            help_text="Their username.",
        )


class MembershipForm(forms.ModelForm):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if isinstance(self.fields.get("user"), UsernameField) and self.instance.pk:
            self.initial["user"] = self.instance.user.get_username()


def _lists_users(request: HttpRequest) -> bool:
    return request.user.has_perm(f"{get_user_model()._meta.app_label}.view_user")


class MembershipInline(admin.TabularInline):
    """The room's members, managed by whoever may change the room: site staff with the
    permission, or the room's own moderators (who hold no model permissions of their own)."""

    model = Membership
    form = MembershipForm
    extra = 0
    autocomplete_fields = ["user"]
    # What each member chose to be notified of is theirs to change, not a moderator's.
    readonly_fields = ["joined", "read_seq", "notify_level"]

    def get_autocomplete_fields(self, request: HttpRequest) -> list[str]:
        return list(self.autocomplete_fields) if _lists_users(request) else []

    def formfield_for_foreignkey(self, db_field: Any, request: HttpRequest, **kwargs: Any) -> Any:
        if db_field.name == "user" and not _lists_users(request):
            return UsernameField()
        return super().formfield_for_foreignkey(db_field, request, **kwargs)

    def _manages(self, request: HttpRequest, room: Any) -> bool:
        if room is None:
            # Asked without a room (the inline's queryset): the parent form only opens for the
            # rooms the user moderates, and the formset only holds that room's rows.
            return request.user.is_staff and Room.objects.filter(moderators=request.user).exists()
        return access.can_moderate(request.user, room, "change_room")

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return super().has_view_permission(request, obj) or self._manages(request, obj)

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return super().has_add_permission(request, obj) or self._manages(request, obj)

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return super().has_change_permission(request, obj) or self._manages(request, obj)

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return super().has_delete_permission(request, obj) or self._manages(request, obj)


@admin.register(Room)
class RoomAdmin(RoomScoped):
    moderators_path = "moderators"
    list_display = ["slug", "title", "private", "locked", "rate_limit", "seq", "created"]
    list_filter = ["private", "locked"]
    search_fields = ["slug", "title", "description"]
    readonly_fields = ["seq", "created"]
    filter_horizontal = ["moderators"]
    inlines = [MembershipInline]
    actions = ["lock", "unlock"]

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return super().has_change_permission(request, obj) or self._moderates(request, obj)

    def get_queryset(self, request: HttpRequest) -> QuerySet[Any]:
        return super().get_queryset(request).filter(kind=Room.ROOM)

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        # A room moderator manages the room's state and members, not who moderates it.
        fields = list(self.readonly_fields)
        if obj is not None and not self._site(request, "change"):
            fields += ["slug", "moderators", "created_by"]
        return fields

    def save_model(self, request: HttpRequest, obj: Room, form: Any, change: bool) -> None:
        if not change:
            super().save_model(request, obj, form, change)
            moderation.audit(request.user, "create_room", room=obj)
            return
        # Lock, rename, privacy and rate limit go through the write path (it publishes a `room`
        # event and writes the audit row); the rest of the form is saved as usual.
        # Never obj.save(): it would write back the `seq` read when the form was loaded, and a
        # post in between would then collide with the next one. Only the changed plain columns.
        state = ["locked", "title", "private", "rate_limit", "description"]
        wanted = {name: getattr(obj, name) for name in state if name in form.changed_data}
        plain = {
            name: getattr(obj, name)
            for name in form.changed_data
            if name not in state and not Room._meta.get_field(name).many_to_many
        }
        if plain:
            Room.objects.filter(pk=obj.pk).update(**plain)
        current = Room.objects.get(pk=obj.pk)
        for field in Room._meta.concrete_fields:
            setattr(obj, field.attname, getattr(current, field.attname))
        try:
            moderation.moderate_room(request.user, obj, wanted)
        except ChatError as exc:
            self.message_user(request, exc.detail, messages.ERROR)

    def save_related(self, request: HttpRequest, form: Any, formsets: Any, change: bool) -> None:
        super().save_related(request, form, formsets, change)
        changed = [f.model._meta.model_name for f in formsets if f.has_changed()]
        removed = any(getattr(f, "deleted_objects", None) for f in formsets)
        room = form.instance
        if room.private and (removed or "moderators" in form.changed_data):
            # Members (or moderators) taken out of a private room stop receiving it, as when a
            # room turns private.
            moderation.members_changed(room)
        if "moderators" in form.changed_data or changed:
            moderation.audit(
                request.user,
                "room_people",
                room=form.instance,
                moderators=[u.get_username() for u in form.instance.moderators.all()],
                changed=changed,
            )

    def _set_locked(self, request: HttpRequest, rooms: Any, locked: bool) -> None:
        self.run(
            request,
            rooms,
            lambda room: moderation.moderate_room(request.user, room, {"locked": locked}),
            "locked" if locked else "unlocked",
        )

    @admin.action(description="Lock (read-only for everyone but moderators)")
    def lock(self, request: HttpRequest, queryset: QuerySet[Room]) -> None:
        self._set_locked(request, queryset, True)

    @admin.action(description="Unlock")
    def unlock(self, request: HttpRequest, queryset: QuerySet[Room]) -> None:
        self._set_locked(request, queryset, False)


@admin.register(Membership)
class MembershipAdmin(RoomScoped):
    list_display = ["room", "user", "joined", "read_seq"]
    list_select_related = ["room", "user"]
    search_fields = ["room__slug", f"user__{USERNAME}"]
    readonly_fields = ["read_seq", "notified_seq", "notify_level"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[Any]:
        return super().get_queryset(request).filter(NOT_DM)


class StateFilter(admin.SimpleListFilter):
    title = "state"
    parameter_name = "state"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("visible", "visible"), ("hidden", "hidden by a moderator"), ("deleted", "deleted")]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        where = {
            "visible": Q(hidden=False, deleted=False),
            "hidden": Q(hidden=True),
            "deleted": Q(deleted=True),
        }.get(self.value() or "")
        return queryset if where is None else queryset.filter(where)


@admin.register(Message)
class MessageAdmin(Permanent, RoomScoped):
    list_display = ["room", "posted_seq", "seq", "author", "body", "created", "hidden", "deleted"]
    # Only rooms with listed messages: a list of every room would name the DM conversations.
    list_filter = [("room", admin.RelatedOnlyFieldListFilter), StateFilter, "created"]
    list_select_related = ["room", "author"]
    search_fields = ["body", f"author__{USERNAME}", "room__slug"]
    # Messages change only through the write path (it takes the room's next seq and publishes):
    # no save or delete here (a save would write back what the form read; Django's delete would
    # take a seq-less row out of history). The actions, which moderation checks per message, do.
    actions = ["hide", "restore", "erase"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[Any]:
        # A DM's message only once somebody reported it.
        reported = Report.objects.values("message_id")
        return super().get_queryset(request).filter(NOT_DM | Q(pk__in=reported))

    def _each(self, request: HttpRequest, queryset: QuerySet[Message], act: Any, done: str) -> None:
        self.run(request, queryset, lambda m: act(request.user, m.room, m.pk), done)

    @admin.action(description="Hide (clients show “message removed”; the text is kept)")
    def hide(self, request: HttpRequest, queryset: QuerySet[Message]) -> None:
        self._each(request, queryset, moderation.hide_message, "hidden")

    @admin.action(description="Restore hidden messages")
    def restore(self, request: HttpRequest, queryset: QuerySet[Message]) -> None:
        self._each(request, queryset, moderation.restore_message, "restored")

    @admin.action(description="Delete for good (erase the text)")
    def erase(self, request: HttpRequest, queryset: QuerySet[Message]) -> None:
        self._each(request, queryset, moderation.erase_message, "erased")


@admin.register(Restriction)
class RestrictionAdmin(RoomScoped):
    """Bans and mutes. Adding one goes through moderation.restrict (a ban closes the user's open
    connections); deleting one lifts it through moderation.lift. Both are in the audit log."""

    list_display = ["kind", "user", "room", "until", "reason", "created_by", "created"]
    list_filter = ["kind", "room"]
    list_select_related = ["user", "room", "created_by"]
    search_fields = [f"user__{USERNAME}", "reason"]
    autocomplete_fields = ["user"]
    fields = ["kind", "user", "room", "until", "reason"]

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # lift and ban again: each step is its own audit row

    def has_add_permission(self, request: HttpRequest) -> bool:
        return super().has_add_permission(request) or self._moderates(request)

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return super().has_delete_permission(request, obj) or self._moderates(request, obj)

    def formfield_for_foreignkey(self, db_field: Any, request: HttpRequest, **kwargs: Any) -> Any:
        if db_field.name == "room":
            kwargs["queryset"] = moderated_rooms(request.user)
        return super().formfield_for_foreignkey(db_field, request, **kwargs)

    def save_model(self, request: HttpRequest, obj: Restriction, form: Any, change: bool) -> None:
        try:
            made = moderation.restrict(
                request.user, obj.user, obj.kind, obj.room, obj.until, obj.reason
            )
        except ChatError as exc:
            # The admin has no "refuse after validation" path: say so, and save nothing.
            self.message_user(request, exc.detail, messages.ERROR)
            obj.pk = None
            return
        obj.pk = made.pk

    def response_add(self, request: HttpRequest, obj: Restriction, *args: Any) -> HttpResponse:
        if obj.pk is None:
            from django.shortcuts import redirect

            return redirect("admin:chat_restriction_changelist")
        return super().response_add(request, obj, *args)

    def delete_model(self, request: HttpRequest, obj: Restriction) -> None:
        moderation.lift(request.user, obj)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[Restriction]) -> None:
        self.run(request, queryset, lambda row: moderation.lift(request.user, row), "lifted")


@admin.register(Report)
class ReportAdmin(RoomScoped):
    moderators_path = "message__room__moderators"
    list_display = ["message", "message_body", "reporter", "reason", "created", "resolved"]
    list_filter = ["resolved", "message__room", "created"]
    list_select_related = ["message__room", "message__author", "reporter"]
    search_fields = ["reason", "message__body", f"reporter__{USERNAME}"]
    readonly_fields = ["message", "reporter", "reason", "created", "resolved"]
    actions = ["resolve", "hide_reported"]

    @admin.display(description="text")
    def message_body(self, report: Report) -> str:
        return report.message.body[:100]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    @admin.action(description="Mark resolved")
    def resolve(self, request: HttpRequest, queryset: QuerySet[Report]) -> None:
        try:
            count = moderation.resolve_reports(request.user, queryset)
        except ChatError as exc:
            self.message_user(request, exc.detail, messages.ERROR)
            return
        self.message_user(request, f"{count} resolved.", messages.SUCCESS)

    @admin.action(description="Hide the reported messages")
    def hide_reported(self, request: HttpRequest, queryset: QuerySet[Report]) -> None:
        self.run(
            request,
            queryset.select_related("message__room"),
            lambda r: moderation.hide_message(request.user, r.message.room, r.message_id, r.reason),
            "hidden",
        )


@admin.register(ModerationAction)
class ModerationActionAdmin(Permanent, RoomScoped):
    """The audit log: read-only for everyone, superusers included."""

    list_display = ["created", "actor", "action", "room", "target_user", "message", "reason"]
    list_filter = ["action", "room", "created"]
    list_select_related = ["actor", "room", "target_user"]
    search_fields = [f"actor__{USERNAME}", f"target_user__{USERNAME}", "reason"]
    readonly_fields = [f.name for f in ModerationAction._meta.fields]


@staff_member_required
def dashboard(request: HttpRequest) -> HttpResponse:
    """The moderators' front page: the latest actions and the most-reported messages, of the
    rooms the user may moderate."""
    rooms = moderated_rooms(request.user)
    if not (request.user.is_superuser or rooms.exists()):
        return render(request, "chat/dashboard.html", {"forbidden": True}, status=403)
    actions = ModerationAction.objects.filter(room__in=rooms)
    if access.is_site_moderator(request.user):
        # Site-wide actions (site bans, deactivations) are the site moderators' business only.
        actions |= ModerationAction.objects.filter(room__isnull=True)
    reported = (
        Message.objects.filter(room__in=rooms, reports__resolved=False)
        .annotate(reports_count=Count("reports"))
        .select_related("room", "author")
        .order_by("-reports_count", "-created")[:20]
    )
    return render(
        request,
        "chat/dashboard.html",
        {
            "actions": actions.select_related("actor", "room", "target_user")[:50],
            "reported": reported,
            "rooms": rooms,
        },
    )


@admin.register(Attachment)
class AttachmentAdmin(Permanent, RoomScoped):
    """Uploaded files, read-only: a file is hidden or deleted with its message (Messages), so the
    write path publishes the change and deletes the stored object after commit."""

    list_display = ["name", "room", "uploader", "size", "content_type", "status", "created"]
    list_filter = ["status", "content_type", ("room", admin.RelatedOnlyFieldListFilter), "created"]
    list_select_related = ["room", "uploader"]
    search_fields = ["name", f"uploader__{USERNAME}", "room__slug"]
    readonly_fields = [f.name for f in Attachment._meta.fields]

    def get_queryset(self, request: HttpRequest) -> QuerySet[Any]:
        reported = Report.objects.values("message__attachment_id")
        return super().get_queryset(request).filter(NOT_DM | Q(pk__in=reported))


@admin.register(LoggedOutSession)
class LoggedOutSessionAdmin(ReadOnly, admin.ModelAdmin):
    """Sessions whose WebSocket tokens are refused since they logged out (kept for the token
    lifetime only)."""

    list_display = ["key_hash", "at"]
    readonly_fields = ["key_hash", "at"]


class SubscriptionInline(admin.TabularInline):
    model = Subscription
    extra = 0
    readonly_fields = ["room", "created"]


@admin.register(ApiConnection)
class ApiConnectionAdmin(ReadOnly, admin.ModelAdmin):
    """Serverless WebSocket connections (API Gateway): read-only, for looking into who is online;
    rows come and go with $connect, $disconnect, 410s and the clean-up job."""

    list_display = ["connection_id", "user", "domain", "stage", "connected_at", "last_seen"]
    list_select_related = ["user"]
    search_fields = ["connection_id", f"user__{USERNAME}"]
    readonly_fields = [f.name for f in ApiConnection._meta.fields]
    inlines = [SubscriptionInline]


@admin.register(Subscription)
class SubscriptionAdmin(ReadOnly, admin.ModelAdmin):
    list_display = ["connection", "room", "created"]
    list_select_related = ["connection", "room"]
    list_filter = ["room"]
    readonly_fields = ["connection", "room", "created"]


@admin.register(DeliveryClaim)
class DeliveryClaimAdmin(ReadOnly, admin.ModelAdmin):
    """Which connections each fan-out batch has claimed (a retried batch skips them); the sweep
    deletes them after CHAT_APIGW_MAX_DURATION."""

    list_display = ["delivery", "connection_id", "claimed_at"]
    search_fields = ["delivery", "connection_id"]
    readonly_fields = ["delivery", "connection_id", "claimed_at"]


@admin.register(Block)
class BlockAdmin(ReadOnly, admin.ModelAdmin):
    """Who blocked whom (users block and unblock from the chat; staff only look)."""

    list_display = ["blocker", "blocked", "created"]
    list_select_related = ["blocker", "blocked"]
    search_fields = [f"blocker__{USERNAME}", f"blocked__{USERNAME}"]
    readonly_fields = ["blocker", "blocked", "created"]


@admin.register(Inbox)
class InboxAdmin(ReadOnly, admin.ModelAdmin):
    list_display = ["user", "seq", "emailed_seq", "email_digests"]
    list_select_related = ["user"]
    search_fields = [f"user__{USERNAME}"]
    readonly_fields = ["user", "seq", "emailed_seq", "email_digests"]


@admin.register(UserEvent)
class UserEventAdmin(ReadOnly, admin.ModelAdmin):
    """The users' streams, for diagnosis; events about DMs are not shown."""

    list_display = ["user", "seq", "kind", "room", "room_seq", "created"]
    list_filter = ["kind", "created"]
    list_select_related = ["user", "room"]
    search_fields = [f"user__{USERNAME}", "room__slug"]
    readonly_fields = ["user", "seq", "kind", "room", "room_seq", "created"]
    exclude = ["message"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[Any]:
        return super().get_queryset(request).filter(Q(room__isnull=True) | NOT_DM)


@admin.register(Reaction)
class ReactionAdmin(ReadOnly, admin.ModelAdmin):
    """Who reacted with what (users toggle reactions in the chat; staff only look), DMs aside."""

    list_display = ["emoji", "user", "message", "created"]
    list_select_related = ["user", "message__room"]
    search_fields = [f"user__{USERNAME}"]
    readonly_fields = ["emoji", "user", "message", "created"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[Any]:
        return super().get_queryset(request).filter(message__room__kind=Room.ROOM)


@admin.register(ReactionKey)
class ReactionKeyAdmin(ReadOnly, admin.ModelAdmin):
    """The last `react` request per user, message and emoji (what makes a retry change
    nothing), for diagnosis; DMs aside."""

    list_display = ["emoji", "user", "message", "client_id", "on"]
    list_select_related = ["user", "message__room"]
    search_fields = [f"user__{USERNAME}", "client_id"]
    readonly_fields = ["emoji", "user", "message", "client_id", "on"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[Any]:
        return super().get_queryset(request).filter(message__room__kind=Room.ROOM)
