"""An ASGI application that fails on every request, with the test settings' LOGGING applied: what
uvicorn logs for an exception no application handled (tests/test_logging.py)."""

import os

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")
django.setup()


async def application(scope: dict, receive: object, send: object) -> None:
    raise RuntimeError("the application failed")
