"""The socket-free parts of live delivery: the per-room cursor (gap detection) and the room hub's
routing of events and moderation's control messages."""

from __future__ import annotations

from typing import Any

import pytest

from chat.cursor import Cursors, Verdict
from chat.fanout import CONTROL_TYPE
from chat.hub import RoomHub


def live(room: int, seq: int | None, kind: str = "message") -> dict[str, Any]:
    return {"room": room, "kind": kind, "seq": seq, "text": "{}"}


def test_events_wait_for_the_subscribe_reply_then_run_in_order() -> None:
    cursors = Cursors()
    cursors.start(1)
    assert cursors.offer(live(1, 6)) is Verdict.HOLD
    assert cursors.offer(live(1, None, "typing")) is Verdict.HOLD
    held = cursors.subscribed(1, 5)
    assert [e["seq"] for e in held] == [6, None]
    assert [cursors.offer(e) for e in held] == [Verdict.SEND, Verdict.SEND]
    assert cursors.get(1) == 6


def test_duplicates_are_dropped_and_gaps_filled() -> None:
    cursors = Cursors()
    cursors.start(1, 10)
    assert cursors.offer(live(1, 10)) is Verdict.DROP  # already sent (a replay)
    assert cursors.offer(live(1, 9)) is Verdict.DROP
    assert cursors.offer(live(1, 11)) is Verdict.SEND
    assert cursors.offer(live(1, 13)) is Verdict.FILL  # 12 was lost on the way
    assert cursors.get(1) == 11  # a gap does not move the cursor: the fill does
    cursors.filled(1, 13)
    assert cursors.offer(live(1, 13)) is Verdict.DROP
    cursors.filled(1, 3)  # a fill never moves a cursor back
    assert cursors.get(1) == 13


def test_rooms_are_independent_and_stopped_rooms_drop_everything() -> None:
    cursors = Cursors()
    cursors.start(1, 0)
    cursors.start(2, 7)
    assert cursors.offer(live(2, 8)) is Verdict.SEND
    assert cursors.offer(live(1, 1)) is Verdict.SEND
    assert cursors.stop(2) and not cursors.stop(2)
    assert cursors.offer(live(2, 9)) is Verdict.DROP
    assert cursors.offer(live(3, 1)) is Verdict.DROP
    assert (cursors.rooms(), len(cursors), 1 in cursors, 2 in cursors) == ([1], 1, True, False)


@pytest.mark.asyncio
async def test_control_messages_reach_watchers_only_never_room_listeners() -> None:
    """Long-poll waiters are room listeners: a ban or a re-check must not wake them."""
    hub = RoomHub()
    heard: list[dict[str, Any]] = []
    watched: list[dict[str, Any]] = []
    await hub.join(1, heard.append)
    await hub.watch(watched.append)
    control = {"type": CONTROL_TYPE, "op": "recheck", "room": 1, "user": None}
    hub.dispatch(control)
    assert (heard, watched) == ([], [control])
    event = {"type": "chat.event", **live(1, 1)}
    hub.dispatch(event)
    assert (heard, watched) == ([event], [control])
    hub.unwatch(watched.append)
    hub.dispatch(control)
    assert watched == [control]
    await hub.leave(1, heard.append)
    for task in (hub.reader, hub.maintainer):
        assert task is not None
        task.cancel()
