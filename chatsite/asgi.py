"""The ASGI application: Django for HTTP, Channels for WebSockets and the long-poll path."""

import os

from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler
from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatsite.settings")
# Set up Django before importing anything that touches models.
# Static files are served by the app itself (uvicorn serves nothing on its own); a STATIC_URL on
# another host (S3/CloudFront) turns this off.
django_http = ASGIStaticFilesHandler(get_asgi_application())

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from django.urls import re_path  # noqa: E402

from chat import routing  # noqa: E402
from chat.accesslog import asgi_access  # noqa: E402
from chat.consumers import SameOriginOrToken, direct_frames  # noqa: E402
from chat.protocol import allowed_origins  # noqa: E402

application = ProtocolTypeRouter(
    {
        "http": URLRouter(
            [
                # The chat is at the site's root (chatsite/urls.py), so its routes are too.
                # A waiter's request id and access line come from asgi_access, inside the auth
                # stack so that it sees the user.
                *routing.longpoll_urlpatterns(
                    wrap=lambda app: AuthMiddlewareStack(asgi_access(app))
                ),
                re_path(r"", django_http),
            ]
        ),
        "websocket": direct_frames(
            SameOriginOrToken(
                AuthMiddlewareStack(URLRouter(routing.websocket_urlpatterns)),
                allowed_origins(),
            )
        ),
    }
)
