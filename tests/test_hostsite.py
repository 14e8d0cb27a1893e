"""The chat installed into another Django site (tests/hostsite/): a user model that logs in by email,
the site's own layout, the chat under /community/chat/ and none of the chat's settings. A real
server of that site, on its own database: sign up, the page's URLs, posting, a WebSocket at the
prefix, resuming, long-polling, the API's JSON errors and the admin."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import psycopg
import pytest
from websockets.asyncio.client import connect

from tests.conftest import ROOT, Server
from tests.test_realtime import Peer

PREFIX = "/community/chat/"
ADMIN = ("admin@example.com", "pw-admin-123")
ADMIN_URL = "postgres://postgres@127.0.0.1:5432/postgres"


class HostSite(Server):
    app = "tests.hostsite.asgi:application"


def _manage(env: dict[str, str], *args: str) -> None:
    subprocess.run(
        [sys.executable, "-m", "django", *args], cwd=ROOT, env=env, check=True, timeout=120
    )


@pytest.fixture(scope="module")
def hostsite() -> Iterator[HostSite]:
    """The host site's server on a database of its own: the chat's tables there point at the
    site's user table (the main test database's point at auth_user)."""
    name = f"test_hostsite_{os.environ.get('CHAT_TEST_DB_SUFFIX') or os.getpid()}"
    with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}"')
        admin.execute(f'CREATE DATABASE "{name}"')
    env = {
        "DJANGO_SETTINGS_MODULE": "tests.hostsite.settings",
        "DATABASE_URL": f"postgres://postgres@127.0.0.1:5432/{name}",
    }
    server = HostSite(env)
    try:
        _manage(server.env, "migrate", "--noinput", "-v0")
        _manage(
            server.env,
            "shell",
            "-c",
            "from django.contrib.auth import get_user_model;"
            f"get_user_model().objects.create_superuser({ADMIN[0]!r}, {ADMIN[1]!r})",
        )
        yield server.start()
    finally:
        server.stop()
        with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# Each signed-up person's email, by session (their name in the chat).
emails: dict[aiohttp.ClientSession, str] = {}


def _csrf(session: aiohttp.ClientSession) -> str:
    return next(c.value for c in session.cookie_jar if c.key == "csrftoken")


async def _form(session: aiohttp.ClientSession, url: str, fields: dict[str, str]) -> str:
    """GET a form (for its CSRF cookie), POST it; the answer's redirect target."""
    async with session.get(url) as page:
        assert page.status == 200, await page.text()
    data = {"csrfmiddlewaretoken": _csrf(session), **fields}
    async with session.post(url, data=data, allow_redirects=False) as answer:
        assert answer.status == 302, await answer.text()
        return answer.headers["Location"]


async def _post(session: aiohttp.ClientSession, url: str, body: dict[str, Any]) -> Any:
    headers = {"X-CSRFToken": _csrf(session)}
    async with session.post(url, json=body, headers=headers) as answer:
        assert answer.status in (200, 201), await answer.text()
        return await answer.json()


@pytest.fixture
async def people(hostsite: HostSite) -> AsyncIterator[dict[str, aiohttp.ClientSession]]:
    """Two people who signed up on the host site, by email, each with their own session."""
    suffix = os.urandom(4).hex()  # the server and its database live as long as the module
    sessions: dict[str, aiohttp.ClientSession] = {}
    emails.clear()
    try:
        for name in ("alice", "bob"):
            session = aiohttp.ClientSession(hostsite.url, cookie_jar=aiohttp.CookieJar(unsafe=True))
            sessions[name] = session
            email = f"{name}-{suffix}@example.com"
            password = f"pw-{name}-{suffix}-Long"
            fields = {"email": email, "password1": password, "password2": password}
            # Straight into the lobby, under the chat's prefix.
            assert await _form(session, f"{PREFIX}signup/", fields) == f"{PREFIX}rooms/lobby/"
            emails[session] = email
        yield sessions
    finally:
        for session in sessions.values():
            await session.close()


async def _socket(hostsite: HostSite, session: aiohttp.ClientSession) -> Peer:
    info = await _post(session, f"{PREFIX}api/ws-token", {})
    # The WebSocket is under the chat's prefix too, with no setting saying so.
    assert info["ws_url"] == f"ws://127.0.0.1:{hostsite.port}{PREFIX}ws/"
    return Peer(await connect(f"{info['ws_url']}?token={info['token']}", open_timeout=5))


async def test_the_pages_use_the_sites_layout_and_the_chats_prefix(
    hostsite: HostSite, people: dict[str, aiohttp.ClientSession]
) -> None:
    alice = people["alice"]
    async with alice.get(f"{PREFIX}rooms/lobby/") as page:
        html = await page.text()
    assert page.status == 200
    assert 'data-site="hostsite"' in html  # the site's chat/base.html, not the chat's
    assert f'data-user="{emails[alice]}"' in html
    urls = re.findall(r'data-(?:api-[\w-]+|room-url|directory-url)="([^"]+)"', html)
    assert len(urls) >= 8
    assert all(url.startswith(PREFIX) for url in urls), urls
    # The scripts and styles are the app's, under the site's STATIC_URL.
    scripts = re.findall(r'src="([^"]+\.js)"', html)
    assert scripts and all(src.startswith("/static/chat/") for src in scripts), scripts
    async with alice.get(scripts[0]) as script:
        assert script.status == 200
    # The site's own pages are untouched.
    async with alice.get("/") as home:
        assert await home.text() == "The host's own home page."


async def test_post_receive_and_resume_over_the_websocket(
    hostsite: HostSite, people: dict[str, aiohttp.ClientSession]
) -> None:
    alice, bob = people["alice"], people["bob"]
    listener = await _socket(hostsite, bob)
    try:
        start = (await listener.subscribe("lobby"))["seq"]
        posted = await _post(
            alice,
            f"{PREFIX}api/rooms/lobby/messages",
            {"body": "hello from the host", "client_id": "h1"},
        )
        event = await listener.next("message")
        assert (event["author"], event["body"]) == (emails[alice], "hello from the host")
        assert event["seq"] == posted["seq"] > start
    finally:
        await listener.ws.close()

    # While bob is away, two more; back with his cursor, exactly those two.
    for n in (1, 2):
        await _post(
            alice,
            f"{PREFIX}api/rooms/lobby/messages",
            {"body": f"missed {n}", "client_id": f"m{n}"},
        )
    back = await _socket(hostsite, bob)
    try:
        subscribed = await back.subscribe("lobby", after=posted["seq"])
        assert subscribed["resumed"] is True
        assert [m["body"] for m in await back.messages(2)] == ["missed 1", "missed 2"]
        await back.nothing_more()
    finally:
        await back.ws.close()


async def test_replies_and_reactions_name_people_by_the_sites_login(
    hostsite: HostSite, people: dict[str, aiohttp.ClientSession]
) -> None:
    """The site's user model has no `username`: a reply's quote and a reaction's people are
    named by its USERNAME_FIELD (the email) all the same."""
    alice, bob = people["alice"], people["bob"]
    parent = await _post(
        alice, f"{PREFIX}api/rooms/lobby/messages", {"body": "a question", "client_id": "q1"}
    )
    reply = await _post(
        bob,
        f"{PREFIX}api/rooms/lobby/messages",
        {"body": "an answer", "client_id": "a1", "reply_to": parent["id"]},
    )
    assert reply["reply_to"]["author"] == emails[alice]
    assert reply["reply_to"]["excerpt"] == "a question"
    reacted = await _post(
        bob, f"{PREFIX}api/rooms/lobby/messages/{parent['id']}/reactions", {"emoji": "👍"}
    )
    assert reacted["reactions"] == [{"emoji": "👍", "count": 1, "users": [emails[bob]]}]


async def test_long_poll_under_the_prefix(
    hostsite: HostSite, people: dict[str, aiohttp.ClientSession]
) -> None:
    alice, bob = people["alice"], people["bob"]
    first = await _post(
        alice, f"{PREFIX}api/rooms/lobby/messages", {"body": "first", "client_id": "p1"}
    )
    # Behind: answered at once.
    async with bob.get(f"{PREFIX}api/rooms/lobby/poll?after={first['seq'] - 1}&timeout=10") as r:
        data = await r.json()
    assert r.status == 200 and [e["body"] for e in data["events"]] == ["first"]

    # Up to date: the poll waits until a post wakes it. Alice's socket sees bob join the room's
    # presence when his poll starts waiting.
    watcher = await _socket(hostsite, alice)
    try:
        await watcher.subscribe("lobby")
        poll = asyncio.create_task(
            bob.get(f"{PREFIX}api/rooms/lobby/poll?after={data['seq']}&timeout=20")
        )
        while emails[bob] not in (await watcher.next("presence", 10))["users"]:
            pass
        await _post(alice, f"{PREFIX}api/rooms/lobby/messages", {"body": "wake", "client_id": "p2"})
        response = await asyncio.wait_for(poll, 10)
        assert [e["body"] for e in (await response.json())["events"]] == ["wake"]
    finally:
        await watcher.ws.close()


async def test_the_api_answers_errors_in_json_under_the_prefix(
    hostsite: HostSite, people: dict[str, aiohttp.ClientSession]
) -> None:
    alice = people["alice"]
    async with alice.get(f"{PREFIX}api/no-such-endpoint") as r:
        assert r.status == 404 and (await r.json())["error"] == "not_found"
    async with alice.get(f"{PREFIX}api/rooms/nowhere/messages") as r:
        assert r.status == 404 and (await r.json())["error"] == "not_found"
    # A page of the site that is not there is the site's HTML, not the API's JSON.
    async with alice.get("/no-such-page/") as r:
        assert r.status == 404 and "json" not in r.headers["Content-Type"]


async def test_the_probes_answer_and_metrics_are_off_without_a_token(hostsite: HostSite) -> None:
    """The app's health middleware on a site that sets none of the chat's settings: ready when
    its database answers, and /metrics off (404)."""
    async with aiohttp.ClientSession(hostsite.url) as client:
        async with client.get("/healthz") as live:
            assert live.status == 200
        async with client.get("/readyz") as ready:
            assert ready.status == 200, await ready.text()
            assert (await ready.json())["checks"] == {"database": "ok"}
        async with client.get("/metrics") as metrics:
            assert metrics.status == 404


async def test_the_admin_finds_people_by_their_email(
    hostsite: HostSite, people: dict[str, aiohttp.ClientSession]
) -> None:
    alice = people["alice"]
    await _post(
        alice, f"{PREFIX}api/rooms/lobby/messages", {"body": "for the admin", "client_id": "a1"}
    )
    async with aiohttp.ClientSession(
        hostsite.url, cookie_jar=aiohttp.CookieJar(unsafe=True)
    ) as staff:
        fields = {"username": ADMIN[0], "password": ADMIN[1], "next": "/admin/"}
        assert await _form(staff, "/admin/login/", fields) == "/admin/"
        # The chat's search fields go through the user model's USERNAME_FIELD (the email).
        query = {"q": emails[alice]}
        async with staff.get("/admin/chat/message/", params=query) as r:
            page = await r.text()
        assert r.status == 200 and "for the admin" in page
        async with staff.get(f"{PREFIX}admin/moderation/") as r:
            dashboard = await r.text()
        assert r.status == 200 and 'href="/admin/chat/message/"' in dashboard
