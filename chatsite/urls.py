from django.contrib import admin
from django.urls import include, path

urlpatterns = [
    path("accounts/", include("django.contrib.auth.urls")),
    # Before admin.site.urls: the chat's moderation dashboard is /admin/moderation/ (chat/urls.py).
    path("", include("chat.urls")),
    path("admin/", admin.site.urls),
]

# Under the API every error is JSON, Django's own 404s and 500s included (chat/api.py).
handler404 = "chat.api.not_found"
handler500 = "chat.api.server_error"
