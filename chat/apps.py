import os
from typing import Any

from django.apps import AppConfig
from django.contrib.auth.signals import user_logged_out
from django.core import checks

from chat.conf import settings


class ChatConfig(AppConfig):
    name = "chat"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        checks.register(check_settings, checks.Tags.compatibility)
        # Imported here: these need the models, which are not loaded when this module is.
        # Moderation connects its signal receivers (deactivating a user is a site ban).
        from chat import moderation, tokens  # noqa: F401

        # A WebSocket token dies with the session that made it (chat/tokens.py).
        user_logged_out.connect(tokens.forget_session, dispatch_uid="chat.tokens.forget_session")


def check_settings(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """Combinations of settings that cannot work, caught at start-up rather than in production."""
    errors: list[checks.CheckMessage] = []
    if settings.CHAT_POLL_MAX_TIMEOUT >= 29:
        errors.append(
            checks.Error(
                "CHAT_POLL_MAX_TIMEOUT must stay below API Gateway's 29 s integration timeout.",
                id="chat.E001",
            )
        )
    # chat/apigateway.py's cut-off: the last @connections attempt (connect and read timeouts)
    # and the hand-off of what is left must fit in an invocation.
    if settings.CHAT_INVOCATION_TIMEOUT <= 2 * settings.CHAT_APIGW_CALL_TIMEOUT + 2:
        errors.append(
            checks.Error(
                "CHAT_INVOCATION_TIMEOUT must exceed twice CHAT_APIGW_CALL_TIMEOUT plus 2 s: "
                "fan-out stops that long before an invocation's end.",
                id="chat.E003",
            )
        )
    from chat import fanout

    uses_layer = fanout.uses_channel_layer()
    if settings.CHAT_POLL_WAIT == "hub" and not uses_layer:
        errors.append(
            checks.Error(
                "CHAT_POLL_WAIT=hub is woken by the channel layer, which CHAT_FANOUT_BACKENDS does not "
                "publish to; use CHAT_POLL_WAIT=database.",
                id="chat.E002",
            )
        )
    if os.environ.get("AWS_LAMBDA_FUNCTION_NAME") and not settings.CHAT_WS_URL:
        errors.append(
            checks.Warning(
                "CHAT_WS_URL is not set on Lambda: POST /api/ws-token hands out the HTTP API's "
                "host, where no WebSocket API listens. After the first deploy run "
                "`make ws-url STAGE=<stage>` (it saves the URL in the stage's remote_env).",
                id="chat.W002",
            )
        )
    paths = settings.CHAT_FANOUT_BACKENDS
    if (
        settings.CHAT_POLL_WAIT == "database"
        and "chat.apigateway.ApiGatewayBackend" in paths
        and "chat.fanout.PostgresNotifyBackend" not in paths
    ):
        errors.append(
            checks.Warning(
                "Long-polls wait on the database, but CHAT_FANOUT_BACKENDS has no "
                "chat.fanout.PostgresNotifyBackend to wake them: they answer only at their "
                "next re-read, up to a second late.",
                id="chat.W003",
            )
        )
    layer = settings.CHANNEL_LAYERS.get("default", {}).get("BACKEND", "")
    if uses_layer and not layer:
        errors.append(
            checks.Error(
                "CHAT_FANOUT_BACKENDS publishes to the channel layer, but CHANNEL_LAYERS has no "
                "default layer: live clients would receive nothing. Set CHANNEL_LAYERS (README.md, "
                '"Installing into your own Django site").',
                id="chat.E004",
            )
        )
    postgres = settings.DATABASES["default"]["ENGINE"].endswith("postgresql")
    if uses_layer and layer.endswith("InMemoryChannelLayer") and postgres:
        errors.append(
            checks.Warning(
                "The in-memory channel layer reaches only this process: with several processes, "
                "set REDIS_URL so that they share rooms.",
                id="chat.W001",
            )
        )
    return errors
