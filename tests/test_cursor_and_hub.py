"""The socket-free parts of live delivery: the per-room cursor (gap detection) and the room hub's
routing of events and moderation's control messages."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from prometheus_client import REGISTRY

from chat import hub as hub_module
from chat import writepath
from chat.cursor import Cursors, Verdict
from chat.events import Event
from chat.fanout import CONTROL_TYPE, encode, layer_message
from chat.hub import RoomHub
from chat.models import Room


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


def hub_fills() -> float:
    return REGISTRY.get_sample_value("chat_gap_fills_total", {"transport": "hub"}) or 0.0


@sync_to_async
def three_messages(django_user_model: Any) -> tuple[int, list[Event]]:
    author = django_user_model.objects.create_user("hub-author")
    room = Room.objects.create(slug="hub-fill", title="Hub fill")
    posted = [writepath.post_message(author, room, f"m{i}", f"c{i}").message for i in range(3)]
    return room.pk, [m.to_event() for m in posted]


async def listening(
    hub: RoomHub, room_id: int, count: int
) -> tuple[list[list[Any]], asyncio.Event]:
    """Two listeners of the room; the event is set once both have heard `count` events."""
    heard: list[list[Any]] = [[], []]
    done = asyncio.Event()

    def listener(i: int) -> Any:
        def hear(message: dict[str, Any]) -> None:
            heard[i].append(message)
            if all(len(h) >= count for h in heard):
                done.set()

        return hear

    for i in range(2):
        await hub.join(room_id, listener(i))
    return heard, done


async def stop(hub: RoomHub) -> None:
    for task in (hub.reader, hub.maintainer, *hub.fills):
        if task is not None:
            task.cancel()


async def without_the_second(
    room_id: int, first: Event, third: Event, count: int
) -> tuple[RoomHub, list[list[Any]], float]:
    """A hub with two listeners of the room, handed the first and third events (the second lost
    on the way), once both have heard `count` events; and how many hub fills that took."""
    hub = RoomHub()
    heard, done = await listening(hub, room_id, count)
    before = hub_fills()
    for event in (first, third):
        hub.dispatch(layer_message(room_id, event, encode(event)))
    await asyncio.wait_for(done.wait(), 10)
    return hub, heard, hub_fills() - before


@pytest.mark.django_db(transaction=True)
async def test_an_event_that_does_not_come_is_read_once_for_every_listener(
    django_user_model: Any,
) -> None:
    room_id, (first, second, third) = await three_messages(django_user_model)

    hub, heard, fills = await without_the_second(room_id, first, third, 3)

    for got in heard:
        assert [m["seq"] for m in got] == [first["seq"], second["seq"], third["seq"]]
        assert json.loads(got[1]["text"]) == json.loads(encode(second))
    assert fills == 1  # one read for both listeners
    await stop(hub)


@pytest.mark.django_db(transaction=True)
async def test_when_the_read_fails_the_held_events_go_on_and_cursors_see_the_gap(
    django_user_model: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    room_id, (first, _, third) = await three_messages(django_user_model)

    def database_away(room_id: int, after: int) -> None:
        raise OSError("connection refused")

    monkeypatch.setattr(hub_module, "_missing", database_away)

    hub, heard, fills = await without_the_second(room_id, first, third, 2)

    cursors = Cursors()
    cursors.start(room_id, first["seq"] - 1)
    for got in heard:
        assert [m["seq"] for m in got] == [first["seq"], third["seq"]]
    assert [cursors.offer(m) for m in heard[0]] == [Verdict.SEND, Verdict.FILL]
    assert fills == 0
    await stop(hub)
