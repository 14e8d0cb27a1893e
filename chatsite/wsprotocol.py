"""uvicorn's `websockets` WebSocket implementation, with what a server of many sockets needs.

`python -m chatsite.serve` runs uvicorn with `--ws chatsite.wsprotocol:ChatWebSocketProtocol`.
It is uvicorn's own protocol (pings, `--ws-max-size`, the ASGI side are unchanged) with two
differences, both measured with 10,000 idle sockets on one process (bench/sockets.py):

- permessage-deflate with a 4 KB window (12 bits, for both directions) and zlib memLevel 5, the
  settings of websockets' own servers, instead of zlib's defaults (32 KB windows, memLevel 8), whose
  compressor alone takes about 256 KB per socket, most of it kept for the socket's life by context
  takeover. Chat frames are small JSON objects: a 4 KB window compresses them nearly as well.
- The handler takes no `path` argument, so websockets does not inspect its signature twice and warn
  about it on every connection (a tenth of the event loop's time while thousands connect).
"""

from __future__ import annotations

import inspect
from typing import Any

from uvicorn.protocols.websockets.websockets_impl import WebSocketProtocol
from websockets.extensions.permessage_deflate import ServerPerMessageDeflateFactory

# websockets' defaults for its own servers (websockets.extensions.permessage_deflate
# enable_server_permessage_deflate): log2 of the LZ77 window, and zlib's memory level.
WINDOW_BITS = 12
MEM_LEVEL = 5


class ChatWebSocketProtocol(WebSocketProtocol):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.config.ws_per_message_deflate:
            # Read by the handshake, which comes after this (websockets' legacy server).
            self.available_extensions = [
                ServerPerMessageDeflateFactory(
                    server_max_window_bits=WINDOW_BITS,
                    client_max_window_bits=WINDOW_BITS,
                    compress_settings={"memLevel": MEM_LEVEL},
                )
            ]

    async def ws_handler(self, protocol: Any, path: str = "") -> Any:  # type: ignore[override]
        return await super().ws_handler(protocol, path)

    # inspect.signature() returns this at once instead of working it out per connection.
    ws_handler.__signature__ = inspect.signature(ws_handler)  # type: ignore[attr-defined]
