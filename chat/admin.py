from django.contrib import admin

from chat.models import Membership, Message, Room


class MembershipInline(admin.TabularInline):
    model = Membership
    extra = 0
    autocomplete_fields = ["user"]
    readonly_fields = ["joined", "read_seq"]


@admin.register(Room)
class RoomAdmin(admin.ModelAdmin):
    list_display = ["slug", "title", "private", "locked", "seq", "created"]
    list_filter = ["private", "locked"]
    search_fields = ["slug", "title"]
    readonly_fields = ["seq", "created"]
    inlines = [MembershipInline]


@admin.register(Membership)
class MembershipAdmin(admin.ModelAdmin):
    list_display = ["room", "user", "joined", "read_seq"]
    list_select_related = ["room", "user"]
    search_fields = ["room__slug", "user__username"]
    readonly_fields = ["read_seq"]


@admin.register(Message)
class MessageAdmin(admin.ModelAdmin):
    list_display = ["room", "posted_seq", "seq", "author", "body", "created", "deleted"]
    list_filter = ["room", "deleted", "created"]
    list_select_related = ["room", "author"]
    search_fields = ["body", "author__username", "room__slug"]
    # Messages change only through the write path (it takes the room's next seq and publishes).
    readonly_fields = [f.name for f in Message._meta.fields]

    def has_add_permission(self, request):  # type: ignore[no-untyped-def]
        return False
