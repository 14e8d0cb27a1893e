"""`python -m chatsite.serve [uvicorn options]`: uvicorn with the limits the chat needs.

`make run` and the production command both start the server through here, so that they share one
set of limits; options given after these win (`--host 0.0.0.0 --port 8000 --workers 4`,
`--timeout-keep-alive 75` behind a proxy that keeps upstream connections longer).
`python -m chatsite.serve --print` shows the full command line instead of running it.

What uvicorn 0.38 enforces, and what it cannot:

- WebSocket messages over CHAT_MAX_FRAME bytes are refused from the frame header (close 1009)
  before the payload is read; the default would buffer 16 MB per message. Only the `websockets`
  implementation enforces `--ws-max-size` (wsproto ignores it), so it is pinned; as
  chatsite/wsprotocol.py, whose compression takes a few KB per socket instead of about 256 KB.
- Pings find dead peers: a socket that does not answer within the ping timeout is closed.
- Idle keep-alive connections close after `--timeout-keep-alive` seconds, once a response is out.
- After the upgrade request, websockets gives the application's accept 10 seconds.
- It has no timeout for a connection that never finishes its request line and headers (one that
  connects and sends nothing, or a header a byte at a time), and httptools has no limit on a
  header's size. A proxy in front must time out and bound request heads: nginx
  `client_header_timeout 10s` and `large_client_header_buffers 4 16k`, HAProxy
  `timeout http-request 10s`; and allow CHAT_POLL_MAX_TIMEOUT seconds for a long-poll's answer.
"""

from __future__ import annotations

import os
import shlex
import sys

# Seconds; uvicorn's defaults, stated so they are chosen, not inherited.
WS_PING_INTERVAL = 20
WS_PING_TIMEOUT = 20
KEEP_ALIVE = 5
# A stop waits this long for open long-polls and sockets (each is told to reconnect).
GRACEFUL_SHUTDOWN = 30


def uvicorn_args() -> list[str]:
    """The application and its limits, the frame limit read from the settings (CHAT_MAX_FRAME)."""
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatsite.settings")
    from django.conf import settings

    return [
        "chatsite.asgi:application",
        "--http",
        "httptools",
        "--ws",
        # uvicorn's `websockets` implementation with small compression windows (chatsite/wsprotocol.py).
        "chatsite.wsprotocol:ChatWebSocketProtocol",
        "--ws-max-size",
        str(settings.CHAT_MAX_FRAME),
        "--ws-ping-interval",
        str(WS_PING_INTERVAL),
        "--ws-ping-timeout",
        str(WS_PING_TIMEOUT),
        "--timeout-keep-alive",
        str(KEEP_ALIVE),
        "--timeout-graceful-shutdown",
        str(GRACEFUL_SHUTDOWN),
    ]


def main(argv: list[str]) -> None:
    show = "--print" in argv
    argv = [arg for arg in argv if arg != "--print"]
    command = [sys.executable, "-m", "uvicorn", *uvicorn_args(), *argv]
    if show:
        print(shlex.join(["uvicorn", *command[3:]]))
        return
    os.execv(sys.executable, command)


if __name__ == "__main__":
    main(sys.argv[1:])
