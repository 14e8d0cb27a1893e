from django.contrib import admin
from django.urls import include, path

from chat import api, views

urlpatterns = [
    path("", views.index, name="index"),
    path("signup/", views.signup, name="signup"),
    path("accounts/", include("django.contrib.auth.urls")),
    path("rooms/<slug:slug>/", views.room, name="room"),
    path("admin/", admin.site.urls),
    path("api/rooms/", api.rooms, name="api-rooms"),
    path("api/rooms/<slug:slug>/messages", api.messages, name="api-messages"),
    path(
        "api/rooms/<slug:slug>/messages/<int:message_id>",
        api.message,
        name="api-message",
    ),
    path("api/rooms/<slug:slug>/read", api.read, name="api-read"),
    path("api/rooms/<slug:slug>/typing", api.typing, name="api-typing"),
    path("api/rooms/<slug:slug>/poll", api.poll, name="api-poll"),
    path("api/ws-token", api.ws_token, name="api-ws-token"),
]
