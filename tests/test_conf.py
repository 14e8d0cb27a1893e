"""chat/conf.py: every setting the app reads has its default in the app, and a site's own value
(or a test's override) wins at the moment it is read."""

from __future__ import annotations

import re

from django.conf import settings as django_settings
from django.test import override_settings

from chat.apps import check_settings
from chat.conf import DEFAULTS
from chat.conf import settings as chat_settings
from tests.conftest import ROOT


def test_every_chat_setting_the_app_reads_has_a_default() -> None:
    read = {
        name
        for path in (ROOT / "chat").rglob("*.py")
        for name in re.findall(r"\bsettings\.(CHAT_\w+)", path.read_text())
    }
    assert len(read) > 30
    assert read <= DEFAULTS.keys(), read - DEFAULTS.keys()


def test_a_site_without_the_settings_gets_the_defaults() -> None:
    with override_settings():
        for name in DEFAULTS:
            if hasattr(django_settings, name):
                delattr(django_settings, name)
        assert not hasattr(django_settings, "CHAT_MAX_BODY")
        assert chat_settings.CHAT_MAX_BODY == 4000
        assert chat_settings.CHAT_FANOUT_BACKENDS == ["chat.fanout.ChannelLayerBackend"]
        assert chat_settings.CHAT_WS_PATH == ""
        # A caller that changes a list it was given changes nobody else's default.
        chat_settings.CHAT_ATTACHMENT_TYPES.append("text/html")
        assert "text/html" not in chat_settings.CHAT_ATTACHMENT_TYPES
        # Django's own settings come through as they are.
        assert chat_settings.AUTH_USER_MODEL == django_settings.AUTH_USER_MODEL


def test_a_sites_value_and_an_override_win() -> None:
    with override_settings(CHAT_MAX_BODY=10):
        assert chat_settings.CHAT_MAX_BODY == 10
    assert chat_settings.CHAT_MAX_BODY == django_settings.CHAT_MAX_BODY


def test_no_channel_layer_is_an_error_when_fan_out_uses_one() -> None:
    assert "chat.E004" not in {m.id for m in check_settings()}
    with override_settings(CHANNEL_LAYERS={}):
        assert "chat.E004" in {m.id for m in check_settings()}
