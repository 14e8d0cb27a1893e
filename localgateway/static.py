"""Static files, for a developer's browser.

On Lambda the pages link their CSS and JavaScript to S3 or CloudFront (``STATIC_URL``), so API
Gateway never sees those requests, and the handler has no static files to serve: the REST
proxy would answer them with Django's 404 page. Here ``STATIC_URL`` is a path on the gateway,
so the gateway answers it itself from Django's staticfiles finders, as ``runserver`` does,
without ``collectstatic``.
"""

from __future__ import annotations

import asyncio
import os

from aiohttp import web


def static_url() -> str | None:
    """The URL path to serve: ``STATIC_URL`` when the cold start has set Django up in this
    process with staticfiles installed and ``STATIC_URL`` is a path on this host. Otherwise
    None, and those requests go to the handler like any other."""
    try:
        from django.apps import apps
        from django.conf import settings
    except ImportError:  # a stage that is not a Django project
        return None
    if not apps.ready or not apps.is_installed("django.contrib.staticfiles"):
        return None
    url = settings.STATIC_URL or ""
    return url if url.startswith("/") else None


async def handle(request: web.Request, prefix: str) -> web.StreamResponse:
    name = request.path.removeprefix(prefix)  # decoded: %2e%2e is "..", checked below
    path = await asyncio.get_running_loop().run_in_executor(None, find, name)
    if path is None:
        return web.Response(status=404, text="Not Found")
    # Revalidated on every reload (answered 304 while unchanged), so edits show at once.
    return web.FileResponse(path, headers={"Cache-Control": "no-cache"})


def find(name: str) -> str | None:
    """The file behind a static name, or None. A name with an empty, ``.`` or ``..`` segment
    is refused before any finder sees it, so no name reaches outside the static folders."""
    from django.contrib.staticfiles import finders
    from django.core.exceptions import SuspiciousFileOperation

    segments = name.split("/")
    if any(s in ("", ".", "..") for s in segments) or "\\" in name or "\0" in name:
        return None
    try:
        found = finders.find(name)
    except SuspiciousFileOperation:  # the finders' own check (safe_join), a second line
        return None
    # A finder also matches folders.
    return found if isinstance(found, str) and os.path.isfile(found) else None
