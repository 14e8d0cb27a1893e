"""A minimal broadcast server with no Django: the fan-out baseline.

It speaks just enough of the protocol for bench/fanout.py: connect to ws://HOST:PORT/ws/?room=R
(any token accepted), get `subscribed`, send `sendmessage` frames; each one takes the room's next seq,
is serialised once and written to every socket of the room (websockets.broadcast), and the sender gets
an `ack`. No database, no channel layer, no auth.

    .venv/bin/python bench/baseline_server.py --port 8765
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
from datetime import UTC, datetime
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import ServerConnection, broadcast, serve

rooms: dict[str, set[ServerConnection]] = {}
seqs: dict[str, int] = {}


def dumps(event: dict[str, object]) -> str:
    return json.dumps(event, separators=(",", ":"), ensure_ascii=False)


async def handler(ws: ServerConnection) -> None:
    query = parse_qs(urlsplit(ws.request.path).query)
    room = query.get("room", ["lobby"])[-1]
    user = query.get("user", ["anon"])[-1]
    members = rooms.setdefault(room, set())
    members.add(ws)
    await ws.send(
        dumps({"type": "subscribed", "room": room, "seq": seqs.get(room, 0), "resumed": False})
    )
    try:
        async for text in ws:
            try:
                frame = json.loads(text)
            except ValueError:
                continue
            if frame.get("action") != "sendmessage":
                continue
            seq = seqs[room] = seqs.get(room, 0) + 1
            event = {
                "type": "message",
                "room": room,
                "seq": seq,
                "id": seq,
                "author": user,
                "body": frame.get("body", ""),
                "created": datetime.now(UTC).isoformat(),
                "client_id": frame.get("client_id"),
                "attachment": None,
                "edited": False,
                "deleted": False,
            }
            await ws.send(
                dumps(
                    {
                        "type": "ack",
                        "client_id": frame.get("client_id"),
                        "room": room,
                        "seq": seq,
                        "id": seq,
                    }
                )
            )
            broadcast(members, dumps(event))
    finally:
        members.discard(ws)


async def main(port: int) -> None:
    async with serve(handler, "127.0.0.1", port, max_size=32 * 1024):
        await asyncio.Future()


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    port = ap.parse_args().port
    # The bench's readiness probe opens and closes a bare TCP connection: not worth a traceback.
    logging.getLogger("websockets.server").setLevel(logging.CRITICAL)
    try:
        import uvloop  # the same event loop uvicorn uses
    except ImportError:
        asyncio.run(main(port))
    else:
        uvloop.run(main(port))
