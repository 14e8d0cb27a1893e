"""The host's ASGI application: its Django, and the chat's ASGI routes under the chat's prefix."""

import os

from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler
from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.hostsite.settings")
django_http = ASGIStaticFilesHandler(get_asgi_application())

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from django.urls import path, re_path  # noqa: E402

from chat.consumers import SameOriginOrToken  # noqa: E402
from chat.protocol import allowed_origins  # noqa: E402
from chat.routing import longpoll_urlpatterns, websocket_urlpatterns  # noqa: E402

application = ProtocolTypeRouter(
    {
        "http": URLRouter([*longpoll_urlpatterns("community/chat/"), re_path(r"", django_http)]),
        "websocket": SameOriginOrToken(
            AuthMiddlewareStack(
                URLRouter([path("community/chat/", URLRouter(websocket_urlpatterns))])
            ),
            allowed_origins(),
        ),
    }
)
