"""Zappa's handler in this process, as the Lambda runtime runs it: the stage's settings module
made importable, the cold start, and one invocation with its context object.

Zappa's handler is a process-wide singleton: a process serves one stage at a time.
"""

from __future__ import annotations

import importlib
import logging
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from localgateway.stages import ZappaStage

report = logging.getLogger("localgateway.report")
LOG_FORMAT = "%(levelname)s %(name)s %(message)s"  # the gateway's and its containers'

_active_source: str | None = None
_active_lock = threading.Lock()


def activate(zappa: ZappaStage, settings_dir: str) -> None:
    """Make ``import zappa_settings`` find this stage's module, as on Lambda."""
    global _active_source
    with _active_lock:
        if settings_dir not in sys.path:
            sys.path.insert(0, settings_dir)
        if _active_source == zappa.source and "zappa_settings" in sys.modules:
            return
        from zappa import handler, websocket

        # LambdaHandler keeps the first settings it loads for the life of the process, and
        # zappa.websocket has one route registry: start over, like a fresh container.
        sys.modules.pop("zappa_settings", None)
        handler.LambdaHandler._LambdaHandler__instance = None
        # Always: another handler module may have registered routes on import (a test suite
        # imports several), so the registry is rebuilt from this stage's module only.
        websocket._registry.clear()
        websocket._validated = False
        websocket._ws_client = None
        if module := sys.modules.get(zappa.websocket_module or ""):
            importlib.reload(module)  # its decorators register the routes again
        importlib.invalidate_caches()
        _active_source = zappa.source


def cold_start() -> None:
    from zappa.handler import LambdaHandler

    LambdaHandler()


def call_lambda(event: dict[str, Any], context: LambdaContext) -> Any:
    from zappa.handler import lambda_handler

    started = time.perf_counter()
    try:
        return lambda_handler(event, context)
    finally:
        # Lambda's own REPORT line, for benchmarks that want the handler's duration.
        rc = event.get("requestContext") or {}
        what = rc.get("routeKey") or event.get("command") or event.get("httpMethod") or "?"
        report.info(
            "REPORT RequestId: %s Route: %s Duration: %.2f ms",
            context.aws_request_id,
            what,
            (time.perf_counter() - started) * 1000,
        )


@dataclass
class LambdaContext:
    """The attributes of the Python runtime's context object that handlers use."""

    function_name: str
    invoked_function_arn: str
    memory_limit_in_mb: int
    timeout_seconds: int
    aws_request_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    function_version: str = "$LATEST"
    identity: Any = None
    client_context: Any = None

    def __post_init__(self) -> None:
        self.log_group_name = f"/aws/lambda/{self.function_name}"
        self.log_stream_name = f"{time.strftime('%Y/%m/%d')}/[$LATEST]{uuid.uuid4().hex}"
        self._deadline = time.monotonic() + self.timeout_seconds

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self._deadline - time.monotonic()) * 1000))
