"""Per-room cursors of one connection: gap detection without a socket.

Live push is at-most-once (the channel layer drops silently when full), and the hub hands on
events in seq order only as far as they arrive in time. A connection therefore keeps, per room it
receives, the seq of the last `message` event it passed on, and asks this object what to do with
each live event:

- SEND: the next one (or an event without a seq: typing, presence, room state);
- DROP: at or below the cursor, a duplicate of something already sent (a replay, a gap fill);
- FILL: further ahead, so the layer lost something: read every change after the cursor from the
  database (reads.catch_up) and call `filled()`;
- HOLD: the subscribe reply carrying the starting seq is still on its way; `subscribed()` hands
  the held events back, to be offered again in order.

Used by the Channels consumer (a cursor per subscribed room, and one for the user's own stream,
keyed "user") and the long-poll (one stream).
"""

from __future__ import annotations

from enum import Enum
from typing import Any

Live = dict[str, Any]  # a hub message: {"room", "kind", "seq", "text", ...}
# Events that take the next seq of their stream: a room's messages, a user's notify events.
SEQUENCED = frozenset({"message", "notify"})


class Verdict(Enum):
    SEND = "send"
    DROP = "drop"
    FILL = "fill"
    HOLD = "hold"


class Cursors:
    def __init__(self) -> None:
        # room id -> cursor; None while the subscribe reply is on its way (live events wait).
        self._seq: dict[int, int | None] = {}
        self._held: dict[int, list[Live]] = {}

    def __contains__(self, room_id: object) -> bool:
        return room_id in self._seq

    def __len__(self) -> int:
        return len(self._seq)

    def rooms(self) -> list[int]:
        return list(self._seq)

    def started(self) -> list[int]:
        """Rooms whose starting seq is known."""
        return [room_id for room_id, seq in self._seq.items() if seq is not None]

    def get(self, room_id: int) -> int | None:
        return self._seq.get(room_id)

    def start(self, room_id: int, seq: int | None = None) -> None:
        """Receive the room from `seq` on; None = hold events until subscribed() says where."""
        self._seq[room_id] = seq
        self._held[room_id] = []

    def stop(self, room_id: int) -> bool:
        """Stop receiving the room; False if it was not received."""
        self._held.pop(room_id, None)
        return self._seq.pop(room_id, False) is not False

    def subscribed(self, room_id: int, seq: int) -> list[Live]:
        """The subscribe reply says the room is at `seq`: the held events, to offer again."""
        if room_id not in self._seq:
            return []
        self._seq[room_id] = seq
        held, self._held[room_id] = self._held.get(room_id, []), []
        return held

    def offer(self, live: Live) -> Verdict:
        """What to do with a live event; a SEND of a `message` moves the cursor."""
        room_id = live["room"]
        if room_id not in self._seq:
            return Verdict.DROP
        cursor = self._seq[room_id]
        if cursor is None:
            self._held[room_id].append(live)
            return Verdict.HOLD
        if live["kind"] not in SEQUENCED:
            return Verdict.SEND
        seq = live["seq"]
        if seq <= cursor:
            return Verdict.DROP
        if seq > cursor + 1:
            return Verdict.FILL
        self._seq[room_id] = seq
        return Verdict.SEND

    def filled(self, room_id: int, seq: int) -> None:
        """A gap fill sent every change up to `seq` (the room's seq as read)."""
        cursor = self._seq.get(room_id)
        if cursor is not None:
            self._seq[room_id] = max(seq, cursor)
