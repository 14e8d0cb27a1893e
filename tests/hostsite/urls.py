from django.contrib import admin
from django.http import HttpRequest, HttpResponse
from django.urls import include, path


def home(request: HttpRequest) -> HttpResponse:
    return HttpResponse("The host's own home page.")


urlpatterns = [
    path("", home, name="home"),
    path("accounts/", include("django.contrib.auth.urls")),
    path("community/chat/", include("chat.urls")),
    path("admin/", admin.site.urls),
]

# The chat's API answers its errors in JSON wherever it is mounted; other paths keep Django's pages.
handler404 = "chat.api.not_found"
handler500 = "chat.api.server_error"
