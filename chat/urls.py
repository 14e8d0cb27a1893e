"""The chat's pages and its HTTP API, to include under any prefix of a site's URLconf.

`path("", include("chat.urls"))` serves the pages at the root and the API under /api/; every name is
in the "chat" namespace (`{% url 'chat:room' slug %}`), and the pages and scripts reach the API only
through these names, so another prefix needs nothing else. The WebSocket and the long-poll waiters
are ASGI routes (chat/routing.py), mounted under the same prefix.

The moderation dashboard is "admin/moderation/" under the prefix: a site that includes this at its
root should include it before `admin.site.urls`, which would otherwise answer the path with a 404.
"""

from django.urls import path
from django.views.i18n import JavaScriptCatalog

from chat import admin, api, views

app_name = "chat"

urlpatterns = [
    path("", views.index, name="index"),
    path("signup/", views.signup, name="signup"),
    # The scripts' strings in the request's language (chat/locale/*/djangojs.po), read by i18n.js.
    path("jsi18n/", JavaScriptCatalog.as_view(packages=["chat"]), name="jsi18n"),
    path("rooms/directory/", views.directory, name="directory"),
    path("rooms/<slug:slug>/", views.room, name="room"),
    path("email/unsubscribe/<str:token>", views.email_unsubscribe, name="email-unsubscribe"),
    path("admin/moderation/", admin.dashboard, name="moderation-dashboard"),
    path("api/rooms/", api.rooms, name="api-rooms"),
    # Before every api/rooms/<slug>/… pattern; "directory" is no room's slug (cleaning.py).
    path("api/rooms/directory", api.directory, name="api-directory"),
    path("api/rooms/<slug:slug>/join", api.join, name="api-join"),
    path("api/rooms/<slug:slug>/leave", api.leave, name="api-leave"),
    path("api/dms/", api.open_dm, name="api-dms"),
    path("api/blocks/", api.blocks, name="api-blocks"),
    path("api/blocks/<str:username>", api.block, name="api-block"),
    path("api/users", api.users, name="api-users"),
    path("api/search", api.search, name="api-search"),
    path("api/rooms/<slug:slug>/members", api.members, name="api-members"),
    path("api/rooms/<slug:slug>/notifications", api.notifications, name="api-notifications"),
    path("api/me/notifications", api.my_notifications, name="api-my-notifications"),
    path("api/me/poll", api.my_poll, name="api-my-poll"),
    path("api/rooms/<slug:slug>/messages", api.messages, name="api-messages"),
    path(
        "api/rooms/<slug:slug>/messages/<int:message_id>",
        api.message,
        name="api-message",
    ),
    path(
        "api/rooms/<slug:slug>/messages/<int:message_id>/report",
        api.report,
        name="api-report",
    ),
    path(
        "api/rooms/<slug:slug>/messages/<int:message_id>/reactions",
        api.reactions,
        name="api-reactions",
    ),
    *(
        path(
            f"api/rooms/<slug:slug>/messages/<int:message_id>/{action}",
            api.moderate_message,
            {"action": action},
            name=f"api-{action}-message",
        )
        for action in ("hide", "restore", "erase")
    ),
    path("api/rooms/<slug:slug>/moderate", api.moderate_room, name="api-moderate-room"),
    path("api/moderation/restrictions", api.restrictions, name="api-restrictions"),
    path(
        "api/moderation/restrictions/<int:restriction_id>",
        api.restriction,
        name="api-restriction",
    ),
    path("api/rooms/<slug:slug>/read", api.read, name="api-read"),
    path("api/rooms/<slug:slug>/typing", api.typing, name="api-typing"),
    path("api/rooms/<slug:slug>/poll", api.poll, name="api-poll"),
    path("api/ws-token", api.ws_token, name="api-ws-token"),
    path("api/rooms/<slug:slug>/attachments", api.start_upload, name="api-attachments"),
    path("api/attachments/<uuid:attachment_id>", api.download, name="api-attachment"),
    path(
        "api/attachments/<uuid:attachment_id>/thumbnail",
        api.download,
        {"thumbnail": True},
        name="api-attachment-thumbnail",
    ),
    path(
        "api/attachments/<uuid:attachment_id>/upload",
        api.upload,
        name="api-attachment-upload",
    ),
    path(
        "api/attachments/<uuid:attachment_id>/complete",
        api.complete_upload,
        name="api-attachment-complete",
    ),
]
