"""The ``@connections`` management API at ``/{stage}/@connections/{id}``: what boto3's
``apigatewaymanagementapi`` client calls to post to a connection (POST), read it (GET) or
close it (DELETE), with 410 for a gone one, and faults that can be injected for tests.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from aiohttp import web

from localgateway.aws import TIMED_OUT, aws_error

if TYPE_CHECKING:
    from localgateway.gateway import LocalGateway

FAULT_KINDS = ("429", "410", "hang")


class Faults:
    """Which ``@connections`` calls fail: ``fractions`` maps ``"429"``, ``"410"`` or
    ``"hang"`` to the fraction of calls that get it, drawn from ``random.Random(seed)``."""

    def __init__(self, fractions: Mapping[str, float], seed: int | None) -> None:
        if unknown := set(fractions) - set(FAULT_KINDS):
            raise ValueError(f"Unknown faults {sorted(unknown)}; use {FAULT_KINDS}")
        if sum(fractions.values()) > 1 or min(fractions.values(), default=0) < 0:
            raise ValueError("Fault fractions must be >= 0 and add up to at most 1")
        self.fractions = fractions
        self._rng = random.Random(seed)

    def draw(self) -> str | None:
        draw = self._rng.random() if self.fractions else 1.0
        for kind, fraction in self.fractions.items():
            if draw < fraction:
                return kind
            draw -= fraction
        return None


async def handle(
    gateway: LocalGateway, request: web.Request, stage: str, conn_id: str
) -> web.Response:
    if stage != gateway.stage or request.method not in ("POST", "GET", "DELETE"):
        return aws_error(403, "ForbiddenException", "Forbidden")
    if gateway.connections_delay:
        await asyncio.sleep(gateway.connections_delay)
    fault = gateway.faults.draw()
    if fault == "429":
        return aws_error(429, "LimitExceededException", "Rate exceeded")
    if fault == "hang":
        await asyncio.sleep(gateway.hang_seconds)
        return web.json_response(TIMED_OUT, status=504)
    conn = gateway.connections.get(conn_id)
    if fault == "410" or conn is None or conn.close_code is not None:
        return aws_error(410, "GoneException", None)
    if request.method == "POST":
        data = await request.read()
        if len(data) > gateway.message_limit:
            return aws_error(413, "PayloadTooLargeException", "Message too long")
        if not await conn.send(data):
            return aws_error(410, "GoneException", None)
        return web.Response()
    if request.method == "GET":
        # rest-json wire names; boto3 turns them into ConnectedAt, Identity, ...
        identity = {"sourceIp": conn.source_ip, "userAgent": conn.user_agent}
        connected, active = _iso(conn.connected_at), _iso(conn.last_active_at)
        return web.json_response(
            {"connectedAt": connected, "identity": identity, "lastActiveAt": active}
        )
    await conn.close(1000, "")
    return web.Response(status=204)


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="milliseconds")
