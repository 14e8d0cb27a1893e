"""A local stand-in for API Gateway in front of the real Zappa Lambda handler.

One aiohttp server plays both APIs of a Zappa deployment: the WebSocket API (sockets at
``/ws/`` or ``/{stage}``, plus the ``@connections`` management API at
``/{stage}/@connections/{id}``) and the REST API (every other request, as a 1.0 proxy event,
served at the root). Each event goes through ``zappa.handler.lambda_handler`` on a thread
pool, concurrently as on Lambda, with the ``zappa_settings`` module ``zappa package`` would
generate. Zappa's handler is a process-wide singleton: a process serves one settings module
at a time. It also answers Lambda's Invoke API (``/2015-03-31/functions/{name}/invocations``),
so Zappa's ``@task`` runs as an asynchronous invocation here as it would on AWS: in separate
container processes (``--task-processes``), since on Lambda each is a container of its own and
sharing the gateway's GIL would slow a large room's fan-out batches down together.

Run it as ``python -m chat.localgateway`` (``manage.py localgateway`` hands over to that): the
Lambda side has to import Django itself, after the stage's ``environment_variables`` and the
gateway's URLs are in the environment, as on Lambda; a process that has already loaded Django
settings would keep its own. Development only: the Lambda code never imports this module.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import concurrent.futures
import contextlib
import fcntl
import importlib
import itertools
import json
import logging
import multiprocessing
import os
import random
import re
import signal
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import KW_ONLY, dataclass, field
from datetime import UTC, datetime
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from aiohttp import WSMsgType, web
from multidict import CIMultiDict

logger = logging.getLogger(__name__)
report = logging.getLogger(f"{__name__}.report")
LOG_FORMAT = "%(levelname)s %(name)s %(message)s"

# API Gateway quotas (developerguide/limits.html) and Zappa's default Lambda settings.
FRAME_LIMIT = 32 * 1024
MESSAGE_LIMIT = 128 * 1024
IDLE_TIMEOUT = 10 * 60.0
MAX_DURATION = 2 * 60 * 60.0
INTEGRATION_TIMEOUT = 29.0
REST_PAYLOAD_LIMIT = 10 * 1024 * 1024
FAULT_KINDS = ("429", "410", "hang")

PROJECT_DIR = Path(__file__).resolve().parent.parent
_CONNECTIONS_PATH = re.compile(r"/([^/]+)/@connections/([^/]+)")
_INVOKE_PATH = re.compile(r"/2015-03-31/functions/([^/]+)/invocations")
_TIMED_OUT = {"message": "Endpoint request timed out"}
_INTERNAL_ERROR = {"message": "Internal server error"}

_HOP_BY_HOP = {"content-length", "transfer-encoding", "connection", "keep-alive"}
_MONTHS = "Jan Feb Mar Apr May Jun Jul Aug Sep Oct Nov Dec".split()
_ALNUM = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
# Stage settings that ZappaCLI copies to attributes of the same name, with its defaults.
_CLI_SETTINGS = {
    **dict.fromkeys(
        "app_function app_type exception_handler domain base_path aws_region"
        " settings_file django_settings remote_env remote_env_bucket remote_env_file".split()
    ),
    "debug": True,
    "log_level": "DEBUG",
    "binary_support": True,
    "context_header_mappings": {},
    "authorizer": {},
}


# --- Zappa settings and invocation ---------------------------------------------------


@dataclass(frozen=True)
class ZappaStage:
    source: str  # the text of the generated zappa_settings.py
    lambda_name: str
    region: str
    timeout_seconds: int
    memory_size: int
    binary_support: bool
    websocket_module: str | None
    environment: Mapping[str, str] = field(default_factory=dict)  # what the handler exports


def load_stage(
    settings_file: str | os.PathLike[str],
    stage: str,
    overrides: Mapping[str, Any] | None = None,
) -> ZappaStage:
    """Build the ``zappa_settings.py`` that ``zappa package`` would put in the zip.

    Zappa's own ``get_zappa_settings_string`` writes it, from the attributes that
    ``ZappaCLI.load_settings`` sets; that method itself is not used because it calls STS.
    """
    import slugify
    from zappa.cli import ZappaCLI

    path = Path(settings_file).resolve()
    if not path.is_file():  # ZappaCLI would fall back to ZAPPA_* variables silently
        raise FileNotFoundError(f"Zappa settings file not found: {path}")
    cli = ZappaCLI()
    cli.api_stage = stage
    cli.load_settings_file(str(path))
    if stage not in cli.zappa_settings:
        raise ValueError(f"Stage {stage!r} is not defined in {path}")
    for key, value in (overrides or {}).items():
        cli.override_stage_config_setting(key, value)
    # These make the handler fetch code or environment from S3 at cold start.
    for key in ("slim_handler", "remote_env", "remote_env_bucket", "remote_env_file"):
        if cli.stage_config.get(key):
            logger.warning("localgateway: ignoring %r, which needs S3", key)
            cli.override_stage_config_setting(key, None)
    config = cli.stage_config
    for name, default in _CLI_SETTINGS.items():
        setattr(cli, name, config.get(name, default))
    cli.project_name = config.get("project_name") or slugify.slugify(path.parent.name)[:15]
    cli.use_websocket = config.get("websocket_handler_module")  # no cwd auto-detection
    # On Lambda aws_environment_variables are the function's environment; locally the
    # settings module is the only way in, as for environment_variables.
    env = dict(config.get("aws_environment_variables", {}))
    env.update(config.get("environment_variables", {}))
    cli.check_environment(env)
    cli.environment_variables = env
    return ZappaStage(
        source=cli.get_zappa_settings_string(),
        lambda_name=slugify.slugify(f"{cli.project_name}-{stage}"),
        region=cli.aws_region or "us-east-1",
        timeout_seconds=int(config.get("timeout_seconds", 30)),
        memory_size=int(config.get("memory_size", 512)),
        binary_support=bool(cli.binary_support),
        websocket_module=cli.use_websocket,
        environment=dict(cli.environment_variables),
    )


_active_source: str | None = None
_active_lock = threading.Lock()


def _activate(zappa: ZappaStage, settings_dir: str) -> None:
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


def _cold_start() -> None:
    from zappa.handler import LambdaHandler

    LambdaHandler()


def _call_lambda(event: dict[str, Any], context: LambdaContext) -> Any:
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


# --- Lambda containers for asynchronous invocations -----------------------------------


@dataclass(frozen=True)
class _ContainerSetup:
    """What a container process needs to become the gateway's Lambda function."""

    zappa: ZappaStage
    settings_dir: str
    environment: Mapping[str, str]
    threads: int
    log_level: int
    root_log_level: int


def _marshal(result: Any) -> Any:
    """The result as Lambda hands it back: through JSON, or an error when it cannot be."""
    return json.loads(json.dumps(result))


def _container_main(conn: Connection, setup: _ContainerSetup) -> None:
    """A container's process: cold start, then run the invocations the gateway sends."""
    # Ctrl-C reaches the whole process group; the gateway stops its containers itself.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logging.basicConfig(level=setup.root_log_level, format=LOG_FORMAT)
    logger.setLevel(setup.log_level)
    os.environ.update(setup.environment)
    send_lock = threading.Lock()

    def reply(message: tuple[Any, ...]) -> None:
        with send_lock:
            conn.send(message)

    try:
        _activate(setup.zappa, setup.settings_dir)
        _cold_start()
    except Exception as exc:
        reply(("ready", f"{type(exc).__name__}: {exc}"))
        return
    # Django's LOGGING (applied at the cold start) resets the levels of chat.* loggers.
    logger.setLevel(setup.log_level)
    reply(("ready", None))

    def run(ident: int, event: dict[str, Any], context: LambdaContext) -> None:
        try:
            result = _marshal(_call_lambda(event, context))
        except Exception as exc:
            reply((ident, False, (type(exc).__name__, str(exc))))
        else:
            reply((ident, True, result))

    with ThreadPoolExecutor(setup.threads, thread_name_prefix="lambda") as pool:
        while True:
            try:
                message = conn.recv()
            except (EOFError, OSError):  # the gateway went away
                break
            if message is None:  # stop: the invocations already running finish first
                break
            pool.submit(run, *message)


class InvocationError(Exception):
    """An exception raised by the handler in a container, by its type name and message."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(f"{kind}: {message}")
        self.kind = kind


def _above_stdio(conn: Connection) -> Connection:
    """The connection on a descriptor above 2. A spawned child gets the pipe's descriptor by
    number, and multiprocessing closes the child's stdin before running it: in a parent
    started without stdin (a test runner, a service), the pipe can be descriptor 0."""
    if conn.fileno() > 2:
        return conn
    moved = Connection(fcntl.fcntl(conn.fileno(), fcntl.F_DUPFD_CLOEXEC, 3))
    conn.close()
    return moved


class _Container:
    """One container process, and the invocations it is running."""

    def __init__(self, setup: _ContainerSetup, name: str) -> None:
        context = multiprocessing.get_context("spawn")  # no fork of a threaded event loop
        parent, child = context.Pipe()
        child = _above_stdio(child)
        self.process = context.Process(
            target=_container_main, args=(child, setup), name=name, daemon=True
        )
        self.process.start()
        child.close()
        self.conn = parent
        self.ready: concurrent.futures.Future[None] = concurrent.futures.Future()
        self.running: dict[int, concurrent.futures.Future[Any]] = {}
        self.starting = 0
        self.exited = threading.Event()
        self._lock = threading.Lock()
        threading.Thread(target=self._read, name=f"{name}-reader", daemon=True).start()

    @property
    def alive(self) -> bool:
        return not self.exited.is_set() and self.process.is_alive()

    @property
    def load(self) -> int:
        return len(self.running) + self.starting

    def submit(self, ident: int, event: dict[str, Any], context: LambdaContext) -> Any:
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        with self._lock:
            self.conn.send((ident, event, context))
            self.running[ident] = future
        return future

    def _read(self) -> None:
        while True:
            try:
                message = self.conn.recv()
            except (EOFError, OSError):
                break
            if message[0] == "ready":
                if message[1] is None:
                    self.ready.set_result(None)
                else:
                    self.ready.set_exception(RuntimeError(f"cold start failed: {message[1]}"))
                continue
            ident, ok, payload = message
            with self._lock:
                future = self.running.pop(ident)
            if ok:
                future.set_result(payload)
            else:
                future.set_exception(InvocationError(*payload))
        # The process is gone: what it was running will never answer.
        self.exited.set()
        gone = RuntimeError(f"{self.process.name} exited")
        with self._lock:
            lost, self.running = list(self.running.values()), {}
        for future in [*lost, self.ready]:
            if not future.done():
                future.set_exception(gone)

    def stop(self, timeout: float) -> None:
        with self._lock, contextlib.suppress(OSError):
            self.conn.send(None)
        self.process.join(timeout)
        if self.process.is_alive():
            self.process.terminate()
            self.process.join(timeout)
        self.conn.close()


class Containers:
    """Processes that run the asynchronous (``Event``) invocations, as Lambda runs each
    invocation in an execution environment of its own. The batches of a large room's
    fan-out, which Zappa's ``@task`` hands to such invocations, then do not share one
    interpreter (and its GIL) with API Gateway's side of the very posts they make, nor with
    the invocation that queued them. Each process runs up to ``threads`` invocations at once,
    as the gateway's own pool does; an invocation goes to the least busy process, and a
    process that died is replaced (with a cold start) when it is next needed."""

    def __init__(self, count: int, setup: _ContainerSetup) -> None:
        self.setup = setup
        self._containers = [self._new(n) for n in range(count)]
        self._ids = itertools.count()

    def _new(self, n: int) -> _Container:
        return _Container(self.setup, f"lambda-container-{n}")

    async def ready(self) -> None:
        await asyncio.gather(*(asyncio.wrap_future(c.ready) for c in self._containers))

    def pids(self) -> list[int | None]:
        return [c.process.pid for c in self._containers]

    async def invoke(self, event: dict[str, Any], context: LambdaContext) -> Any:
        for _ in range(len(self._containers) + 1):
            n, container = min(enumerate(self._containers), key=lambda item: item[1].load)
            if not container.alive:
                name = container.process.name
                logger.warning("localgateway: %s exited; starting another", name)
                container = self._containers[n] = self._new(n)
            if not container.ready.done():
                container.starting += 1  # counted as load while it waits: others go elsewhere
                try:
                    await asyncio.wrap_future(container.ready)
                finally:
                    container.starting -= 1
            try:
                future = container.submit(next(self._ids), event, context)
            except OSError:  # it died after the check: the next round replaces it
                container.exited.set()
                continue
            return await asyncio.wrap_future(future)
        raise RuntimeError("no container could take the invocation")

    async def stop(self, timeout: float = 5.0) -> None:
        loop = asyncio.get_running_loop()
        await asyncio.gather(
            *(loop.run_in_executor(None, c.stop, timeout) for c in self._containers)
        )


# --- helpers -------------------------------------------------------------------------


def _aws_id() -> str:
    """16 characters shaped like API Gateway's ids (``L0SM9cOFvHcCIhw=``); AWS's may
    hold ``+`` and ``/``, these stay alphanumeric so URLs and logs need no escaping."""
    return "".join(random.choices(_ALNUM, k=15)) + "="


def _request_time(now: float) -> str:
    t = time.gmtime(now)  # not strftime("%b"), which follows the locale
    month = _MONTHS[t.tm_mon - 1]
    return f"{t.tm_mday:02d}/{month}/{t.tm_year}:{time.strftime('%H:%M:%S', t)} +0000"


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="milliseconds")


def _client(request: web.Request) -> tuple[str, str, str]:
    """Domain, source IP and user agent, as API Gateway reports them."""
    ip = request.remote or "127.0.0.1"
    return request.host, ip, request.headers.get("User-Agent", "")


def _multi(pairs: Any) -> tuple[dict[str, str], dict[str, list[str]]]:
    """API Gateway's two views of repeated keys: the last value, and all of them."""
    single: dict[str, str] = {}
    multi: dict[str, list[str]] = {}
    for key, value in pairs:
        single[key] = value
        multi.setdefault(key, []).append(value)
    return single, multi


def _aws_error(status: int, error_type: str, message: str | None) -> web.Response:
    # botocore's rest-json parser picks the exception class from x-amzn-ErrorType.
    headers = {"x-amzn-ErrorType": error_type}
    return web.json_response({"message": message}, status=status, headers=headers)


def _status_of(result: Any) -> int:
    if isinstance(result, dict) and "statusCode" in result:
        try:
            return int(result["statusCode"])
        except (TypeError, ValueError):
            return 502  # what API Gateway answers for a malformed proxy response
    return 200  # Zappa already turns a handler's None into 200


# --- WebSocket connections -----------------------------------------------------------


class _FrameGuard:
    """Enforces the frame and message limits in front of aiohttp's WebSocket reader.

    aiohttp only has a whole-message limit, so this reads frame headers itself. The frame
    over a limit and every data frame after it are dropped; control frames still pass, so
    the close handshake works.
    """

    def __init__(
        self,
        inner: Any,
        frame_limit: int,
        message_limit: int,
        on_violation: Callable[[], None],
    ) -> None:
        self._inner, self._on_violation = inner, on_violation
        self._frame_limit, self._message_limit = frame_limit, message_limit
        self._header = bytearray()
        self._remaining = self._message_size = 0
        self._forward, self._violated = True, False

    def feed_eof(self) -> None:
        self._inner.feed_eof()

    def feed_data(self, data: bytes) -> tuple[bool, bytes]:
        data, out, pos = bytes(data), bytearray(), 0
        while pos < len(data):
            if self._remaining:
                take = min(self._remaining, len(data) - pos)
                if self._forward:
                    out += data[pos : pos + take]
                pos, self._remaining = pos + take, self._remaining - take
                continue
            self._header.append(data[pos])
            pos += 1
            head = self._header
            if len(head) >= 2:
                short = head[1] & 0x7F
                size = 2 + (4 if head[1] & 0x80 else 0) + {126: 2, 127: 8}.get(short, 0)
                if len(head) == size:
                    self._start_frame(bytes(head), out)
                    head.clear()
        return self._inner.feed_data(bytes(out)) if out else (False, b"")

    def _start_frame(self, head: bytes, out: bytearray) -> None:
        short = head[1] & 0x7F
        end = {126: 4, 127: 10}.get(short)
        length = int.from_bytes(head[2:end]) if end else short
        opcode = head[0] & 0x0F
        if opcode < 8:  # continuation, text, binary
            self._message_size = length + (self._message_size if opcode == 0 else 0)
            too_big = self._message_size > self._message_limit
            if (too_big or length > self._frame_limit) and not self._violated:
                self._violated = True
                self._on_violation()
            self._forward = not self._violated
            if head[0] & 0x80:  # FIN
                self._message_size = 0
        else:
            self._forward = True
        if self._forward:
            out += head
        self._remaining = length


class _GuardedWebSocketResponse(web.WebSocketResponse):
    def __init__(self, guard: Callable[[Any], _FrameGuard], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._guard = guard

    def _post_start(self, request: web.BaseRequest, protocol: Any, writer: Any) -> None:
        # In the same synchronous step that installs aiohttp's reader, so no byte reaches
        # it unguarded (aiohttp 3.13 internals).
        super()._post_start(request, protocol, writer)
        handler = request.protocol
        handler._payload_parser = self._guard(handler._payload_parser)


@dataclass(eq=False)
class _Connection:
    id: str
    domain: str
    source_ip: str
    user_agent: str
    ws: web.WebSocketResponse | None = None
    connected_at: float = field(default_factory=time.time)
    last_active_at: float = field(default_factory=time.time)
    opened: float = field(default_factory=time.monotonic)
    last_active: float = field(default_factory=time.monotonic)
    close_code: int | None = None
    close_reason: str = ""
    send_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    done: asyncio.Event = field(default_factory=asyncio.Event)

    async def send(self, data: bytes | str) -> bool:
        """Text if it is UTF-8, else binary; False once the socket is going away."""
        try:
            text = data if isinstance(data, str) else data.decode("utf-8")
        except UnicodeDecodeError:
            text = None
        # One writer at a time keeps frames whole and in order.
        async with self.send_lock:
            if self.ws is None or self.ws.closed or self.close_code is not None:
                return False
            try:
                if text is None:
                    await self.ws.send_bytes(data)  # type: ignore[arg-type]
                else:
                    await self.ws.send_str(text)
            except (ConnectionError, RuntimeError):
                return False
            return True

    async def close(self, code: int, reason: str) -> None:
        if self.close_code is None:
            self.close_code, self.close_reason = code, reason
        if self.ws is not None and not self.ws.closed:
            await self.ws.close(code=code, message=reason.encode())


# --- the gateway ---------------------------------------------------------------------


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
        faults = self.connections_faults
        if unknown := set(faults) - set(FAULT_KINDS):
            raise ValueError(f"Unknown faults {sorted(unknown)}; use {FAULT_KINDS}")
        if sum(faults.values()) > 1 or min(faults.values(), default=0) < 0:
            raise ValueError("Fault fractions must be >= 0 and add up to at most 1")
        self.ws_paths = (*self.ws_paths, f"/{self.stage}")
        self.api_id = "".join(random.choices(_ALNUM[26:], k=10)).lower()
        self.zappa: ZappaStage | None = None
        self._rng = random.Random(self.fault_seed)
        self._connections: dict[str, _Connection] = {}
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
        _activate(self.zappa, self._settings_dir.name)

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
            setup = _ContainerSetup(
                zappa=self.zappa,
                settings_dir=self._settings_dir.name,
                environment=dict(os.environ),
                threads=self.workers,
                log_level=logger.getEffectiveLevel(),
                root_log_level=logging.getLogger().level,
            )
            self._containers = Containers(self.task_processes, setup)
        # Lambda's init phase: errors show now, and the first concurrent requests do not
        # race through LambdaHandler's unlocked singleton set-up.
        await asyncio.get_running_loop().run_in_executor(self._pool, _cold_start)
        if self._containers is not None:
            await self._containers.ready()
        logger.info("localgateway: %s %s %s", self.url, self.ws_url, self.management_url)
        return self.port

    async def stop(self) -> None:
        """Close every socket with 1001 (as when API Gateway goes away), wait for the
        ``$disconnect`` invocations, stop listening."""
        connections = list(self._connections.values())
        for conn in connections:
            await conn.close(1001, "Going away")
        try:
            closed = asyncio.gather(*(conn.done.wait() for conn in connections))
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
        return list(self._connections)

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
            future = loop.run_in_executor(self._pool, _call_lambda, event, context)
        return await asyncio.wait_for(future, timeout or self.integration_timeout)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        if match := _CONNECTIONS_PATH.fullmatch(request.path):
            return await self._management(request, *match.groups())
        if request.method == "POST" and (match := _INVOKE_PATH.fullmatch(request.path)):
            return await self._lambda_invoke(request, match.group(1))
        upgrade = request.headers.get("Upgrade", "").lower() == "websocket"
        if upgrade and request.path in self.ws_paths:
            return await self._websocket(request)
        return await self._rest(request)

    def _context(self, domain: str, ip: str, agent: str, **extra: Any) -> dict[str, Any]:
        """The requestContext fields common to REST and WebSocket events."""
        now = time.time()
        return {
            "stage": self.stage,
            "requestId": _aws_id(),
            "extendedRequestId": _aws_id(),
            "requestTime": _request_time(now),
            "requestTimeEpoch": int(now * 1000),
            "identity": {"sourceIp": ip, "userAgent": agent},
            "domainName": domain,
            "apiId": self.api_id,
            **extra,
        }

    def _headers(self, request: web.Request) -> list[tuple[str, str]]:
        """Client headers plus API Gateway's, presented as if they came over HTTPS.

        Zappa forces ``wsgi.url_scheme`` to https, as on AWS, so the gateway plays TLS
        terminator: its own origin in Origin/Referer becomes https, or Django's CSRF check
        would refuse every browser POST.
        """
        plain, forwarded_for = f"http://{request.host}", request.remote or "127.0.0.1"
        headers: list[tuple[str, str]] = []
        for key, value in request.headers.items():
            lower = key.lower()
            if lower == "x-forwarded-for":
                forwarded_for = f"{value}, {forwarded_for}"
                continue
            if lower in ("x-forwarded-port", "x-forwarded-proto"):
                continue
            if lower in ("origin", "referer") and (value + "/").startswith(plain + "/"):
                value = "https" + value[4:]
            # Zappa looks up headers["Host"], case-sensitively.
            headers.append(("Host" if lower == "host" else key, value))
        trace = f"Root=1-{int(time.time()):08x}-{uuid.uuid4().hex[:24]}"
        return [
            *headers,
            ("X-Amzn-Trace-Id", trace),
            ("X-Forwarded-For", forwarded_for),
            ("X-Forwarded-Port", str(self.port)),
            ("X-Forwarded-Proto", "https"),
        ]

    # WebSocket API

    def _ws_event(self, conn: _Connection, route: str, kind: str, **extra: Any) -> dict[str, Any]:
        context = self._context(
            conn.domain,
            conn.source_ip,
            conn.user_agent,
            routeKey=route,
            eventType=kind,
            messageDirection="IN",
            connectedAt=int(conn.connected_at * 1000),
            connectionId=conn.id,
            **extra,
        )
        return {"requestContext": context, "isBase64Encoded": False}

    async def _websocket(self, request: web.Request) -> web.StreamResponse:
        conn = _Connection(_aws_id(), *_client(request))
        event = self._ws_event(conn, "$connect", "CONNECT")
        event["headers"], event["multiValueHeaders"] = _multi(self._headers(request))
        # API Gateway leaves these keys out when there is no query string.
        if request.query:
            query, multi_query = _multi(request.query.items())
            event["queryStringParameters"] = query
            event["multiValueQueryStringParameters"] = multi_query
        try:
            result = await self.invoke(event)
        except TimeoutError:
            return web.json_response(_TIMED_OUT, status=504)
        except Exception:
            logger.exception("localgateway: $connect failed")
            return web.json_response(_INTERNAL_ERROR, status=500)
        if not 200 <= _status_of(result) < 300:
            return self._lambda_response(result, request)

        # A subprotocol is chosen the AWS way: by the $connect handler's response.
        returned = (result.get("headers") or {}) if isinstance(result, dict) else {}
        protocol = [v for k, v in returned.items() if k.lower() == "sec-websocket-protocol"]

        def guard(inner: Any) -> _FrameGuard:
            def too_big() -> None:
                self._spawn(conn.close(1009, "Message too big"))

            return _FrameGuard(inner, self.frame_limit, self.message_limit, too_big)

        conn.ws = ws = _GuardedWebSocketResponse(
            guard=guard,
            protocols=protocol,
            compress=False,  # API Gateway does not negotiate permessage-deflate
            max_msg_size=self.message_limit + 1,  # a backstop: the guard decides first
        )
        try:
            await ws.prepare(request)
        except (ConnectionError, RuntimeError):
            return ws  # the client left during $connect: no $disconnect on AWS either
        self._connections[conn.id] = conn
        logger.info("localgateway: connected %s from %s", conn.id, conn.source_ip)
        try:
            await self._receive(conn, ws)
        finally:
            del self._connections[conn.id]
            code, reason = conn.close_code or ws.close_code or 1006, conn.close_reason
            logger.info("localgateway: disconnected %s (%s %s)", conn.id, code, reason)
            event = self._ws_event(conn, "$disconnect", "DISCONNECT")
            event["requestContext"]["disconnectStatusCode"] = code
            event["requestContext"]["disconnectReason"] = reason
            headers = [("Host", conn.domain), ("x-api-key", ""), ("x-restapi", "")]
            event["headers"], event["multiValueHeaders"] = _multi(headers)
            self._spawn(self._invoke_logged(event))
            conn.done.set()
        return ws

    async def _receive(self, conn: _Connection, ws: web.WebSocketResponse) -> None:
        while True:
            idle_end = conn.last_active + self.idle_timeout
            left = min(idle_end, conn.opened + self.max_duration) - time.monotonic()
            if left <= 0:
                await conn.close(1001, "Going away")
                return
            try:
                msg = await ws.receive(timeout=left)
            except TimeoutError:
                continue
            if msg.type in (WSMsgType.TEXT, WSMsgType.BINARY):
                # Only client data frames count as activity (not pings, not pushes): the
                # strictest reading of the idle timeout, so keep-alive bugs show up here.
                conn.last_active, conn.last_active_at = time.monotonic(), time.time()
                self._spawn(self._message(conn, msg.data))
                continue
            if conn.close_code is None:  # else the gateway closed it and knows why
                if msg.type is WSMsgType.CLOSE:
                    conn.close_code = msg.data or 1005
                    no_status = "Client-side close frame status not set"
                    conn.close_reason = msg.extra or ("" if msg.data else no_status)
                elif msg.type is WSMsgType.ERROR:
                    conn.close_code = ws.close_code or 1002
                    conn.close_reason = str(msg.data)
                else:
                    conn.close_code, conn.close_reason = 1006, "Going away"
            return

    async def _message(self, conn: _Connection, data: str | bytes) -> None:
        event = self._ws_event(conn, "$default", "MESSAGE", messageId=_aws_id())
        event["body"] = data
        if isinstance(data, bytes):  # binary frames are passed on base64-encoded
            event["body"], event["isBase64Encoded"] = (
                base64.b64encode(data).decode(),
                True,
            )
        try:
            result = await self.invoke(event)
        except TimeoutError:
            error = "Endpoint request timed out"
        except Exception:
            logger.exception("localgateway: $default failed")
            error = "Internal server error"
        else:
            if self.route_responses and isinstance(result, dict) and result.get("body"):
                body = result["body"]
                b64 = result.get("isBase64Encoded")
                await conn.send(base64.b64decode(body) if b64 else body)
            return
        # What API Gateway sends the client when the integration fails.
        request_id = event["requestContext"]["requestId"]
        frame = {"message": error, "connectionId": conn.id, "requestId": request_id}
        await conn.send(json.dumps(frame))

    async def _invoke_logged(
        self, event: dict[str, Any], timeout: float | None = None, asynchronous: bool = False
    ) -> None:
        try:
            await self.invoke(event, timeout, asynchronous)
        except Exception:
            what = event.get("requestContext", {}).get("routeKey") or event.get("command")
            logger.exception("localgateway: %s failed", what or "invocation")

    # Lambda's Invoke API (what Zappa's @task calls, through AWS_ENDPOINT_URL_LAMBDA)

    async def _lambda_invoke(self, request: web.Request, name: str) -> web.Response:
        assert self.zappa is not None
        # A name, an ARN or a partial ARN, optionally with a qualifier.
        function = name.rsplit(":function:", 1)[-1].split(":")[0]
        if function != self.zappa.lambda_name:
            message = f"Function not found: {name}"
            return _aws_error(404, "ResourceNotFoundException", message)
        try:
            event = json.loads(await request.read() or b"{}")
        except ValueError:
            return _aws_error(400, "InvalidRequestContentException", "Could not parse JSON")
        kind = request.headers.get("X-Amz-Invocation-Type", "RequestResponse")
        timeout = float(self.zappa.timeout_seconds)
        if kind == "Event":  # queued: answered at once, run in a container if there are any
            self._spawn(self._invoke_logged(event, timeout, asynchronous=True))
            return web.Response(status=202)
        if kind == "DryRun":
            return web.Response(status=204)
        try:
            result = await self.invoke(event, timeout)
        except TimeoutError:
            return web.json_response({"errorMessage": "Task timed out"}, status=200)
        except Exception as exc:
            error = {"errorMessage": str(exc), "errorType": type(exc).__name__}
            headers = {"X-Amz-Function-Error": "Unhandled"}
            return web.json_response(error, headers=headers)
        return web.Response(body=json.dumps(result).encode(), content_type="application/json")

    # @connections management API

    async def _management(self, request: web.Request, stage: str, conn_id: str) -> web.Response:
        if stage != self.stage or request.method not in ("POST", "GET", "DELETE"):
            return _aws_error(403, "ForbiddenException", "Forbidden")
        if self.connections_delay:
            await asyncio.sleep(self.connections_delay)
        fault = self._draw_fault()
        if fault == "429":
            return _aws_error(429, "LimitExceededException", "Rate exceeded")
        if fault == "hang":
            await asyncio.sleep(self.hang_seconds)
            return web.json_response(_TIMED_OUT, status=504)
        conn = self._connections.get(conn_id)
        if fault == "410" or conn is None or conn.close_code is not None:
            return _aws_error(410, "GoneException", None)
        if request.method == "POST":
            data = await request.read()
            if len(data) > self.message_limit:
                return _aws_error(413, "PayloadTooLargeException", "Message too long")
            if not await conn.send(data):
                return _aws_error(410, "GoneException", None)
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

    def _draw_fault(self) -> str | None:
        draw = self._rng.random() if self.connections_faults else 1.0
        for kind, fraction in self.connections_faults.items():
            if draw < fraction:
                return kind
            draw -= fraction
        return None

    # REST API (proxy integration, payload format 1.0)

    async def _rest(self, request: web.Request) -> web.Response:
        body = await request.read()
        path = request.raw_path.split("?", 1)[0]
        resource = "/" if path == "/" else "/{proxy+}"
        headers, multi_headers = _multi(self._headers(request))
        query, multi_query = _multi(request.query.items())
        assert self.zappa is not None
        # With binary_support Zappa registers binaryMediaTypes */*, so API Gateway
        # base64-encodes every body.
        encoded = bool(body) and self.zappa.binary_support
        text = base64.b64encode(body).decode() if encoded else body.decode(errors="replace")
        event = {
            "resource": resource,
            "path": path,  # without the stage, so Zappa builds URLs at the root
            "httpMethod": request.method,
            "headers": headers,
            "multiValueHeaders": multi_headers,
            "queryStringParameters": query or None,
            "multiValueQueryStringParameters": multi_query or None,
            "pathParameters": None if path == "/" else {"proxy": request.path[1:]},
            "stageVariables": None,
            "requestContext": self._context(
                *_client(request),
                requestId=str(uuid.uuid4()),
                resourceId="local",
                resourcePath=resource,
                httpMethod=request.method,
                path=path,
                protocol=f"HTTP/{request.version.major}.{request.version.minor}",
                accountId="123456789012",
            ),
            "body": text or None,
            "isBase64Encoded": encoded,
        }
        try:
            result = await self.invoke(event)
        except TimeoutError:
            return web.json_response(_TIMED_OUT, status=504)
        except Exception:
            logger.exception("localgateway: %s %s failed", request.method, path)
            result = None
        if not isinstance(result, dict) or "statusCode" not in result:
            return web.json_response(_INTERNAL_ERROR, status=502)
        response = self._lambda_response(result, request)
        response.headers["x-amzn-RequestId"] = event["requestContext"]["requestId"]
        return response

    def _lambda_response(self, result: dict[str, Any], request: web.Request) -> web.Response:
        # API Gateway merges both maps, the lists winning. Repeated identical lines are
        # dropped: Zappa 0.63's middleware adds a lower-case copy of every Set-Cookie.
        multi = result.get("multiValueHeaders") or {}
        pairs = [(k, str(v)) for k, values in multi.items() for v in values]
        listed = {k.lower() for k in multi}
        single = (result.get("headers") or {}).items()
        pairs += [(k, str(v)) for k, v in single if k.lower() not in listed]
        headers: CIMultiDict[str] = CIMultiDict()
        seen: set[tuple[str, str]] = set()
        for key, value in pairs:
            if key.lower() not in _HOP_BY_HOP and (key.lower(), value) not in seen:
                seen.add((key.lower(), value))
                headers.add(key, value)
        # The reverse of the https presentation in _headers: a redirect to the gateway's
        # own origin has to stay on plain http.
        location = headers.get("Location", "")
        if location.startswith(f"https://{request.host}"):
            headers["Location"] = "http" + location[5:]
        body = result.get("body") or ""
        b64 = result.get("isBase64Encoded")
        data = base64.b64decode(body) if b64 else str(body).encode()
        return web.Response(status=_status_of(result), body=data, headers=headers)


# --- running it ----------------------------------------------------------------------


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


# --- the command line (python -m chat.localgateway; manage.py localgateway execs this) ---


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
    logger.setLevel(level)
    try:
        gateway = LocalGateway(
            options.settings_file,
            options.stage,
            host=options.host,
            port=options.port,
            workers=options.workers,
            task_processes=options.task_processes,
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
        # Django's LOGGING (applied at the cold start) resets the levels of chat.* loggers.
        logger.setLevel(level)
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


if __name__ == "__main__":
    # Run the module's real copy, not this __main__ one: the handler state lives there.
    from chat.localgateway import main as real_main

    real_main()
