"""The chat's ASGI routes, for a site's Channels router: the WebSocket and the long-poll waiters.

Mount both under the prefix that includes chat.urls (the pages find the WebSocket at "ws/" under
it, unless CHAT_WS_PATH or CHAT_WS_URL say otherwise):

    ProtocolTypeRouter({
        "http": URLRouter([*longpoll_urlpatterns("community/chat/"), re_path(r"", django_asgi)]),
        "websocket": direct_frames(SameOriginOrToken(
            AuthMiddlewareStack(URLRouter([path("community/chat/", URLRouter(websocket_urlpatterns))])),
            allowed_origins(),
        )),
    })

`direct_frames` (chat.consumers) is optional: outermost, it lets sockets write their frames past
the middleware in between, which in a large room costs as much as the frames themselves.

The long-poll routes are optional: chat.urls serves the same paths as Django views. Routed here,
a waiter skips Django's sync middleware and holds no thread while it waits (chat/longpoll.py).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from channels.auth import AuthMiddlewareStack
from django.urls import URLPattern, path

from chat.consumers import ChatConsumer
from chat.longpoll import PollConsumer

websocket_urlpatterns: list[URLPattern] = [path("ws/", ChatConsumer.as_asgi())]


def longpoll_urlpatterns(
    prefix: str = "", wrap: Callable[[Any], Any] = AuthMiddlewareStack
) -> list[URLPattern]:
    """The two long-poll paths of chat.urls under `prefix` (its route in the site's URLconf,
    e.g. "community/chat/"), each through `wrap`, which must give the consumer `scope["user"]`
    (Channels' AuthMiddlewareStack; a site may add its own middleware around it). It is a GET,
    so CSRF does not apply."""
    waiter = wrap(PollConsumer.as_asgi())
    return [
        path(f"{prefix}api/rooms/<slug:slug>/poll", waiter),
        path(f"{prefix}api/me/poll", waiter),
    ]
