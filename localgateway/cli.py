"""The command line: ``python -m localgateway`` (``manage.py localgateway`` execs it)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Callable
from pathlib import Path

from localgateway.aws import IDLE_TIMEOUT, INTEGRATION_TIMEOUT, MAX_DURATION
from localgateway.gateway import LocalGateway
from localgateway.runtime import LOG_FORMAT

PROJECT_DIR = Path(__file__).resolve().parent.parent


async def serve(gateway: LocalGateway, ready: Callable[[], None] | None = None) -> None:
    """Run until SIGINT or SIGTERM (the management command)."""
    await gateway.start()
    if ready:
        ready()
    stopping = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(sig, stopping.set)
    try:
        await stopping.wait()
    finally:
        await gateway.stop()


def _fault(value: str) -> tuple[str, float]:
    kind, _, fraction = value.partition("=")
    try:
        return kind, float(fraction)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--fault takes KIND=FRACTION, e.g. 429=0.1, not {value!r}"
        ) from None


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="manage.py localgateway",
        description="Run the Zappa deployment locally behind an API Gateway emulator "
        "(REST + WebSocket + @connections + Lambda's Invoke API).",
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8001)
    p.add_argument("--stage", default="dev", help="stage of zappa_settings.json")
    p.add_argument("--settings-file", default=str(PROJECT_DIR / "zappa_settings.json"))
    p.add_argument("--workers", type=int, default=32, help="concurrent invocations")
    p.add_argument(
        "--task-processes",
        type=int,
        default=2,
        help="processes for asynchronous invocations (Zappa's @task); 0 runs them on the "
        "gateway's own threads",
    )
    p.add_argument(
        "--task-workers",
        type=int,
        default=8,
        help="concurrent asynchronous invocations in each task process",
    )
    p.add_argument("--idle-timeout", type=float, default=IDLE_TIMEOUT, help="seconds")
    p.add_argument("--max-duration", type=float, default=MAX_DURATION, help="seconds")
    p.add_argument("--integration-timeout", type=float, default=INTEGRATION_TIMEOUT, help="seconds")
    p.add_argument(
        "--route-responses",
        action="store_true",
        help="send a $default handler's returned body to the client (not what Zappa deploys)",
    )
    p.add_argument(
        "--management-url-env",
        metavar="NAME",
        default="CHAT_APIGW_ENDPOINT",
        help="environment variable to set to the @connections endpoint URL ('' for none)",
    )
    p.add_argument(
        "--ws-url-env",
        metavar="NAME",
        default="CHAT_WS_URL",
        help="environment variable to set to the WebSocket URL ('' for none)",
    )
    p.add_argument("--connections-delay", type=float, default=0.0, help="seconds")
    p.add_argument(
        "--fault",
        type=_fault,
        action="append",
        default=[],
        metavar="KIND=FRACTION",
        help="answer a fraction of @connections calls with 429, 410 or hang",
    )
    p.add_argument("--seed", type=int, default=0, help="seed for --fault")
    p.add_argument("--log-level", default="INFO")
    return p


def main(argv: list[str] | None = None) -> None:
    options = parser().parse_args(argv)
    level = options.log_level.upper()
    logging.basicConfig(level=level, format=LOG_FORMAT)
    # Zappa's handler sets the root logger to the stage's log_level; ours stays as asked.
    logging.getLogger("localgateway").setLevel(level)
    try:
        gateway = LocalGateway(
            options.settings_file,
            options.stage,
            host=options.host,
            port=options.port,
            workers=options.workers,
            task_processes=options.task_processes,
            task_workers=options.task_workers,
            idle_timeout=options.idle_timeout,
            max_duration=options.max_duration,
            integration_timeout=options.integration_timeout,
            route_responses=options.route_responses,
            management_url_env=options.management_url_env or None,
            ws_url_env=options.ws_url_env or None,
            lambda_environment=True,
            connections_delay=options.connections_delay,
            connections_faults=dict(options.fault),
            fault_seed=options.seed,
        )
    except ValueError as exc:
        sys.exit(f"localgateway: {exc}")

    def ready() -> None:
        print(
            f"Local API Gateway for stage {gateway.stage!r}:\n"
            f"  HTTP          {gateway.url}/\n"
            f"  WebSocket     {gateway.ws_url}\n"
            f"  @connections  {gateway.management_url}\n"
            "Quit with CONTROL-C.",
            flush=True,
        )

    try:
        asyncio.run(serve(gateway, ready))
    except (FileNotFoundError, ValueError) as exc:
        sys.exit(f"localgateway: {exc}")
