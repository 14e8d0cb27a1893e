"""Who may search what, and open a room at a message: every principal of the authorization matrix
(tests/faults/test_authz_matrix.py) against `GET /api/search` (scoped to each room, and over
everything the principal reads) and `GET …/messages?around=` / `?newer_than=`, in the public
room, the private room and the DM. Nothing any cell does changes a row."""

from __future__ import annotations

from typing import Any

import pytest

from chat.models import Message
from tests.faults.test_authz_matrix import (
    DM_READ,
    KIND,
    PRINCIPALS,
    ROOMS,
    World,
    build_world,
    client_for,
    shown,
    snapshot,
)

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def world(db: Any) -> World:
    return build_world()


# Reading a room's messages in any shape is what history allows (the matrix's "history" row).
READ = (
    (401, 200, 200, 200, 403, 200, 200, 200),
    (401, 404, 200, 200, 403, 200, 404, 200),
    DM_READ,
)
ROOM_CELLS = {"search": READ, "around": READ, "newer": READ}

# The rooms a search over everything covers: those each principal is in now (posting joins a
# public room; the private room's members were added) and not banned from. A room's moderators
# and site staff read the private room by name but are not in it, so it is not searched for them.
EVERYWHERE: dict[str, set[str]] = {
    "outsider": {"general"},
    "member": {"general", "secret", "dm-matrix"},
    "muted": {"general", "secret"},
    "banned": set(),
    "roommod": {"general"},
    "othermod": {"general"},
    "staff": {"general"},
}


def room_url(world: World, action: str, slug: str) -> str:
    seq = Message.objects.get(pk=world.target[slug]).seq
    return {
        "search": f"/api/search?q=in&room={slug}",
        "around": f"/api/rooms/{slug}/messages?around={seq}&limit=5",
        "newer": f"/api/rooms/{slug}/messages?newer_than=0&limit=5",
    }[action]


@pytest.mark.parametrize("kind", list(ROOMS))
@pytest.mark.parametrize("principal", PRINCIPALS)
@pytest.mark.parametrize("action", list(ROOM_CELLS))
def test_room_reads(world: World, action: str, principal: str, kind: str) -> None:
    slug = ROOMS[kind]
    expected = ROOM_CELLS[action][KIND[kind]][PRINCIPALS.index(principal)]
    before = snapshot()
    answer = client_for(world, principal).get(room_url(world, action, slug))
    assert answer.status_code == expected, (action, principal, kind, shown(answer))
    assert snapshot() == before
    if expected != 200:
        return
    rows = answer.json()["results" if action == "search" else "messages"]
    assert rows and {row["room"] for row in rows} == {slug}
    # A hidden message is never found, and comes in a page only as a tombstone.
    hidden = world.hidden[slug]
    if action == "search":
        assert hidden not in {row["id"] for row in rows}
    else:
        assert all(row["body"] == "" for row in rows if row["id"] == hidden)


@pytest.mark.parametrize("principal", PRINCIPALS)
def test_search_everywhere(world: World, principal: str) -> None:
    before = snapshot()
    answer = client_for(world, principal).get("/api/search?q=in&limit=50")
    assert snapshot() == before
    if principal == "anonymous":
        assert answer.status_code == 401
        return
    assert answer.status_code == 200, shown(answer)
    found = answer.json()["results"]
    assert {row["room"] for row in found} == EVERYWHERE[principal]
    assert not {row["id"] for row in found} & set(world.hidden.values())
