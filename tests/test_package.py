"""The app as a site installs it: the `chat` package alone, without this repository's own site
(`chatsite`), its development tools (`localgateway`) or its tests on the import path. Every module
a site names in its settings, URLconf or ASGI router must import from there."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT

# What a site's settings, urls.py and asgi.py name, and what Zappa's handler loads.
ENTRY_POINTS = (
    "chat.urls",
    "chat.routing",
    "chat.consumers",
    "chat.serverless",
    "chat.health",
    "chat.accesslog",
    "chat.admin",
    "chat.api",
    "chat.views",
)

SETTINGS = """
SECRET_KEY = "package-test"
INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "channels",
    "chat",
]
DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}}
CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
MIDDLEWARE = [
    "chat.health.middleware",
    "chat.accesslog.middleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ]
        },
    }
]
ROOT_URLCONF = "site_urls"
STATIC_URL = "/static/"
"""


def test_the_app_imports_with_nothing_of_this_repository_but_itself(tmp_path: Path) -> None:
    shutil.copytree(ROOT / "chat", tmp_path / "chat", ignore=shutil.ignore_patterns("__pycache__"))
    (tmp_path / "site_settings.py").write_text(SETTINGS)
    (tmp_path / "site_urls.py").write_text(
        'from django.urls import include, path\nurlpatterns = [path("c/", include("chat.urls"))]\n'
    )
    script = (
        "import sys, django\n"
        "django.setup()\n"
        f"for name in {ENTRY_POINTS!r}:\n"
        "    __import__(name)\n"
        "from django.core.management import call_command\n"
        "call_command('check')\n"
        "leaked = sorted(m for m in sys.modules if m.split('.')[0] in"
        " ('chatsite', 'localgateway', 'tests'))\n"
        "print('leaked:', leaked)\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "DJANGO_SETTINGS_MODULE")}
    env["DJANGO_SETTINGS_MODULE"] = "site_settings"
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "leaked: []" in done.stdout, done.stdout


def test_the_local_gateway_command_says_it_needs_the_repository(tmp_path: Path) -> None:
    """`manage.py localgateway` is a tool of this repository: elsewhere it says so and stops."""
    shutil.copytree(ROOT / "chat", tmp_path / "chat", ignore=shutil.ignore_patterns("__pycache__"))
    (tmp_path / "site_settings.py").write_text(SETTINGS)
    (tmp_path / "site_urls.py").write_text("urlpatterns = []\n")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "DJANGO_SETTINGS_MODULE")}
    env["DJANGO_SETTINGS_MODULE"] = "site_settings"
    done = subprocess.run(
        [sys.executable, "-m", "django", "localgateway"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode != 0
    assert "The local gateway is not installed" in done.stderr
