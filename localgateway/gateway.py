"""The gateway itself: one aiohttp server on one port, its options, its lifecycle, and the
dispatch of each request to the API that serves it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import sys
import tempfile
import threading
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import KW_ONLY, dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from localgateway import connections, lambda_api, rest, static, websocket
from localgateway.aws import (
    FRAME_LIMIT,
    IDLE_TIMEOUT,
    INTEGRATION_TIMEOUT,
    MAX_DURATION,
    MESSAGE_LIMIT,
    REST_PAYLOAD_LIMIT,
    api_id,
    aws_id,
    request_time,
)
from localgateway.containers import Containers, ContainerSetup
from localgateway.runtime import LambdaContext, activate, call_lambda, cold_start
from localgateway.stages import ZappaStage, load_stage

logger = logging.getLogger(__name__)

_CONNECTIONS_PATH = re.compile(r"/([^/]+)/@connections/([^/]+)")
_INVOKE_PATH = re.compile(r"/2015-03-31/functions/([^/]+)/invocations")
# Not API Gateway's: answers once no frame, $disconnect or asynchronous invocation is running
# (tests wait on it before they empty the database under the function).
DRAIN_PATH = "/_localgateway/drain"


@dataclass(eq=False)
class LocalGateway:
    """API Gateway (REST proxy and WebSocket API) for the Zappa handler, on one port.

    ``connections_faults`` maps ``"429"``, ``"410"`` or ``"hang"`` to the fraction of
    ``@connections`` calls that get it, drawn from ``random.Random(fault_seed)``; a hang
    answers 504 after ``hang_seconds``. Faulted calls deliver nothing. With
    ``route_responses`` a ``$default`` handler's returned body is sent to the client; off by
    default since Zappa's routes have no route response, so on AWS that body is dropped.
    ``management_url_env`` names an environment variable that gets ``management_url``
    before the cold start (the endpoint the app's boto3 client needs), ``ws_url_env`` one
    that gets ``ws_url``. ``lambda_environment`` exports what the Lambda runtime would
    (``runtime_environment()``); it changes this process's environment, so it is for a
    process of its own.
    """

    settings_file: str | os.PathLike[str] = "zappa_settings.json"
    stage: str = "dev"
    _: KW_ONLY
    host: str = "127.0.0.1"
    port: int = 0
    settings_overrides: Mapping[str, Any] = field(default_factory=dict)
    workers: int = 32
    task_processes: int = 0
    # Each running invocation holds a database connection, as each Lambda container does: the
    # asynchronous ones are bounded apart, so that all of them fit the database's connections.
    task_workers: int = 8
    ws_paths: tuple[str, ...] = ("/ws/", "/ws")
    idle_timeout: float = IDLE_TIMEOUT
    max_duration: float = MAX_DURATION
    integration_timeout: float = INTEGRATION_TIMEOUT
    frame_limit: int = FRAME_LIMIT
    message_limit: int = MESSAGE_LIMIT
    route_responses: bool = False
    management_url_env: str | None = None
    ws_url_env: str | None = None
    lambda_environment: bool = False
    connections_delay: float = 0.0
    connections_faults: Mapping[str, float] = field(default_factory=dict)
    fault_seed: int | None = 0
    hang_seconds: float = 30.0

    def __post_init__(self) -> None:
        self.faults = connections.Faults(self.connections_faults, self.fault_seed)
        self.ws_paths = (*self.ws_paths, f"/{self.stage}")
        self.api_id = api_id()
        self.zappa: ZappaStage | None = None
        self.static_url: str | None = None  # known after the cold start (static.py)
        # The open WebSocket connections by id, for the @connections API.
        self.connections: dict[str, websocket.Connection] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._pool: ThreadPoolExecutor | None = None
        self._containers: Containers | None = None
        self._runner: web.AppRunner | None = None
        self._settings_dir: tempfile.TemporaryDirectory[str] | None = None

    async def start(self) -> int:
        """Load the stage, listen, cold-start the Lambda handler; returns the port."""
        self.zappa = load_stage(self.settings_file, self.stage, self.settings_overrides)
        self._settings_dir = tempfile.TemporaryDirectory(prefix="localgateway-")
        Path(self._settings_dir.name, "zappa_settings.py").write_text(self.zappa.source)
        # The project directory is Lambda's /var/task: importable.
        project_dir = str(Path(self.settings_file).resolve().parent)
        if project_dir not in sys.path:
            sys.path.append(project_dir)
        activate(self.zappa, self._settings_dir.name)

        app = web.Application(client_max_size=REST_PAYLOAD_LIMIT)
        app.router.add_route("*", "/{tail:.*}", self._dispatch)
        self._runner = web.AppRunner(
            app, handle_signals=False, access_log=None, shutdown_timeout=1.0
        )
        await self._runner.setup()
        await web.TCPSite(self._runner, self.host, self.port).start()
        self.port = self._runner.addresses[0][1]
        if self.management_url_env:
            os.environ[self.management_url_env] = self.management_url
        if self.ws_url_env:
            os.environ[self.ws_url_env] = self.ws_url
        if self.lambda_environment:
            os.environ.update(self.runtime_environment())
        self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="lambda")
        if self.task_processes:  # spawned now, with the URLs above in their environment
            setup = ContainerSetup(
                zappa=self.zappa,
                settings_dir=self._settings_dir.name,
                environment=dict(os.environ),
                threads=self.task_workers,
                log_level=logging.getLogger("localgateway").getEffectiveLevel(),
                root_log_level=logging.getLogger().level,
            )
            self._containers = Containers(self.task_processes, setup)
        # Lambda's init phase: errors show now, and the first concurrent requests do not
        # race through LambdaHandler's unlocked singleton set-up.
        await asyncio.get_running_loop().run_in_executor(self._pool, cold_start)
        if self._containers is not None:
            await self._containers.ready()
        self.static_url = static.static_url()
        logger.info("localgateway: %s %s %s", self.url, self.ws_url, self.management_url)
        return self.port

    async def stop(self) -> None:
        """Close every socket with 1001 (as when API Gateway goes away), wait for the
        ``$disconnect`` invocations, stop listening."""
        open_connections = list(self.connections.values())
        for conn in open_connections:
            await conn.close(1001, "Going away")
        try:
            closed = asyncio.gather(*(conn.done.wait() for conn in open_connections))
            await asyncio.wait_for(closed, 5)
            await asyncio.wait_for(self.drain(), 5)
        except TimeoutError:
            logger.warning("localgateway: stopped with invocations still running")
        if self._runner is not None:
            await self._runner.cleanup()
        if self._containers is not None:
            await self._containers.stop()
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
        if self._settings_dir is not None:  # the handler keeps the imported module
            if self._settings_dir.name in sys.path:
                sys.path.remove(self._settings_dir.name)
            self._settings_dir.cleanup()

    async def drain(self) -> None:
        """Wait until no message or disconnect invocation is running, route responses
        and error frames included."""
        while self._tasks:
            await asyncio.wait(set(self._tasks))

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "", "::") else self.host
        return f"http://{host}:{self.port}"

    @property
    def ws_url(self) -> str:
        return self.url.replace("http", "ws", 1) + self.ws_paths[0]

    @property
    def management_url(self) -> str:
        """The ``endpoint_url`` for boto3's ``apigatewaymanagementapi`` client."""
        return f"{self.url}/{self.stage}"

    def connection_ids(self) -> list[str]:
        return list(self.connections)

    def container_pids(self) -> list[int | None]:
        """The process ids of the containers for asynchronous invocations, if any."""
        return self._containers.pids() if self._containers is not None else []

    def runtime_environment(self) -> dict[str, str]:
        """What the Lambda runtime puts in a function's environment, for code that checks
        it (Zappa's @task runs inline without AWS_LAMBDA_FUNCTION_NAME). Dummy credentials
        only where none are set, and Lambda's own API pointed here: @task invocations come
        back to this gateway as asynchronous invocations."""
        assert self.zappa is not None, "call start() first"
        env = {
            "AWS_LAMBDA_FUNCTION_NAME": self.zappa.lambda_name,
            "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(self.zappa.memory_size),
            "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
            "AWS_REGION": self.zappa.region,
            "AWS_DEFAULT_REGION": self.zappa.region,
            "AWS_ENDPOINT_URL_LAMBDA": self.url,
        }
        if not os.environ.get("AWS_ACCESS_KEY_ID"):
            env.update(AWS_ACCESS_KEY_ID="localgateway", AWS_SECRET_ACCESS_KEY="localgateway")
        return env

    async def invoke(
        self, event: dict[str, Any], timeout: float | None = None, asynchronous: bool = False
    ) -> Any:
        """One Lambda invocation on the pool, or with ``asynchronous`` in a container process
        when there are any. Raises the handler's exceptions (a container's as
        InvocationError), and TimeoutError after ``timeout`` (default ``integration_timeout``;
        the invocation runs on, as Lambda would)."""
        assert self._pool is not None and self.zappa is not None, "call start() first"
        z = self.zappa
        arn = f"arn:aws:lambda:{z.region}:123456789012:function:{z.lambda_name}"
        context = LambdaContext(z.lambda_name, arn, z.memory_size, z.timeout_seconds)
        if asynchronous and self._containers is not None:
            future = asyncio.ensure_future(self._containers.invoke(event, context))
        else:
            loop = asyncio.get_running_loop()
            future = loop.run_in_executor(self._pool, call_lambda, event, context)
        return await asyncio.wait_for(future, timeout or self.integration_timeout)

    def spawn(self, coro: Any) -> None:
        """Run a coroutine in the background; ``drain()`` waits for it."""
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        if match := _CONNECTIONS_PATH.fullmatch(request.path):
            return await connections.handle(self, request, *match.groups())
        if request.method == "POST" and (match := _INVOKE_PATH.fullmatch(request.path)):
            return await lambda_api.handle(self, request, match.group(1))
        if request.path == DRAIN_PATH:
            try:
                await asyncio.wait_for(self.drain(), float(request.query.get("timeout", "10")))
            except (TimeoutError, ValueError):
                return web.json_response({"idle": False}, status=503)
            return web.json_response({"idle": True})
        upgrade = request.headers.get("Upgrade", "").lower() == "websocket"
        if upgrade and request.path in self.ws_paths:
            return await websocket.handle(self, request)
        prefix = self.static_url
        if prefix and request.method in ("GET", "HEAD") and request.path.startswith(prefix):
            return await static.handle(request, prefix)
        return await rest.handle(self, request)

    def request_context(self, domain: str, ip: str, agent: str, **extra: Any) -> dict[str, Any]:
        """The requestContext fields common to REST and WebSocket events."""
        now = time.time()
        return {
            "stage": self.stage,
            "requestId": aws_id(),
            "extendedRequestId": aws_id(),
            "requestTime": request_time(now),
            "requestTimeEpoch": int(now * 1000),
            "identity": {"sourceIp": ip, "userAgent": agent},
            "domainName": domain,
            "apiId": self.api_id,
            **extra,
        }

    async def invoke_logged(
        self, event: dict[str, Any], timeout: float | None = None, asynchronous: bool = False
    ) -> None:
        """An invocation that nobody waits for (a ``$disconnect``, an ``Event``): its
        failure is logged, as Lambda would log it."""
        try:
            await self.invoke(event, timeout, asynchronous)
        except Exception:
            what = event.get("requestContext", {}).get("routeKey") or event.get("command")
            logger.exception("localgateway: %s failed", what or "invocation")


class GatewayThread:
    """Runs a LocalGateway on its own event loop in a daemon thread, for sync code:
    ``with GatewayThread(LocalGateway(path)) as gateway: ...``."""

    def __init__(self, gateway: LocalGateway) -> None:
        self.gateway = gateway
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    def start(self) -> int:
        self._thread.start()
        return self.run(self.gateway.start())

    def run(self, coro: Any, timeout: float | None = 30) -> Any:
        """Run a coroutine on the gateway's loop and return its result."""
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def stop(self) -> None:
        try:
            self.run(self.gateway.stop())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._loop.close()

    def __enter__(self) -> LocalGateway:
        self.start()
        return self.gateway

    def __exit__(self, *exc: object) -> None:
        self.stop()
