"""The chat's settings, each with its default: a site that installs the app sets none of them.

`from chat.conf import settings` stands in for `django.conf.settings` in the app. An attribute in
DEFAULTS is the site's setting when it has one and the default here when it does not; any other
attribute is Django's setting as is. Every read goes to `django.conf.settings` at that moment, so
`override_settings` in tests and settings changed at run time are seen at once.

README.md ("Settings") documents each one; chatsite/settings.py reads them from the environment
for the product's own deployment, with these defaults.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from django.conf import settings as django_settings


def _aws_region() -> str:
    return os.environ.get("AWS_REGION", "us-east-1")


def _on_lambda() -> bool:
    return bool(os.environ.get("AWS_LAMBDA_FUNCTION_NAME"))


# A callable default is called at each read (it depends on the environment of the process).
DEFAULTS: dict[str, Any] = {
    # Messages and frames
    "CHAT_MAX_BODY": 4000,
    "CHAT_MAX_FRAME": 32 * 1024,
    "CHAT_RESUME_LIMIT": 1000,
    "CHAT_EDIT_WINDOW": 900,
    "CHAT_DM_MAX_OTHERS": 9,
    # Transports
    "CHAT_POLL_MAX_TIMEOUT": 25,
    "CHAT_POLL_WAIT": "hub",
    "CHAT_WS_TOKEN_MAX_AGE": 300,
    "CHAT_WS_URL": "",
    # The WebSocket's path when CHAT_WS_URL is empty; empty = "ws/" under the prefix of chat.urls
    # (where chat.routing is mounted alongside it).
    "CHAT_WS_PATH": "",
    "CHAT_FRAME_RATE": 20,
    "CHAT_FRAME_BURST": 60,
    "CHAT_SEND_QUEUE": 1000,
    "CHAT_TYPING_INTERVAL": 2,
    "CHAT_PRESENCE_TTL": 60,
    "CHAT_PRESENCE_STORE": "",
    # Fan-out, notifications and email
    "CHAT_FANOUT_BACKENDS": ["chat.fanout.ChannelLayerBackend"],
    "CHAT_UNREAD_INLINE": False,
    "CHAT_GROUP_COMMIT": True,
    "CHAT_EMAIL_DELAY": 10,
    "CHAT_SITE_URL": "http://127.0.0.1:8000",
    # Redis (presence, the hub): none by default, which keeps both in this process's memory.
    "REDIS_URL": "",
    "CHAT_REDIS_PREFIX": "chat",
    # Health checks and metrics (chat/health.py)
    "CHAT_READY_TIMEOUT": 1,
    "CHAT_METRICS_TOKEN": "",
    "CHAT_METRICS_EMF": _on_lambda,
    # Serverless (API Gateway and Lambda)
    "CHAT_APIGW_ENDPOINT": "",
    "CHAT_APIGW_REGION": _aws_region,
    "CHAT_APIGW_POOL": 64,
    "CHAT_APIGW_BATCH": 250,
    "CHAT_APIGW_RETRIES": 4,
    "CHAT_APIGW_FAST_POST": True,
    "CHAT_APIGW_CALL_TIMEOUT": 3,
    "CHAT_INVOCATION_TIMEOUT": 30,
    "CHAT_APIGW_IDLE_TIMEOUT": 600,
    "CHAT_APIGW_MAX_DURATION": 7200,
    # Attachments
    "CHAT_ATTACHMENT_MAX_SIZE": 10 * 1024 * 1024,
    "CHAT_ATTACHMENT_TYPES": [
        "image/png",
        "image/jpeg",
        "image/gif",
        "image/webp",
        "application/pdf",
        "text/plain",
        "application/zip",
    ],
    "CHAT_ATTACHMENT_DAILY_QUOTA": 100 * 1024 * 1024,
    "CHAT_ATTACHMENT_UPLOAD_TTL": 600,
    "CHAT_ATTACHMENT_UNUSED_TTL": 86400,
    "CHAT_ATTACHMENT_URL_TTL": 300,
    "CHAT_ATTACHMENT_THUMBNAIL": 320,
    # Django's and Channels' own settings the app reads, which a site may leave unset.
    "CHANNEL_LAYERS": {},
    "EMAIL_TIMEOUT": None,
}

_MISSING = object()


class ChatSettings:
    """Django's settings, with the chat's defaults under them."""

    def __getattr__(self, name: str) -> Any:
        if name not in DEFAULTS:
            return getattr(django_settings, name)
        value = getattr(django_settings, name, _MISSING)
        if value is not _MISSING:
            return value
        default: Any | Callable[[], Any] = DEFAULTS[name]
        if callable(default):
            return default()
        # A copy of a list or dict, so that no caller can change the default for the next one.
        return type(default)(default) if isinstance(default, list | dict) else default


settings = ChatSettings()


def default(name: str) -> Any:
    """The app's default for a setting (what chatsite/settings.py falls back to)."""
    value = DEFAULTS[name]
    return value() if callable(value) else value
