"""Lambda containers for asynchronous invocations: worker processes of their own.

Each process imports the stage's settings module, cold-starts Zappa's handler and then runs the
invocations the gateway sends it over a pipe, on a thread pool, answering each with its result
or its exception.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import fcntl
import itertools
import json
import logging
import multiprocessing
import os
import signal
import threading
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

from localgateway.runtime import LOG_FORMAT, LambdaContext, activate, call_lambda, cold_start
from localgateway.stages import ZappaStage

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ContainerSetup:
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


def _container_main(conn: Connection, setup: ContainerSetup) -> None:
    """A container's process: cold start, then run the invocations the gateway sends."""
    # Ctrl-C reaches the whole process group; the gateway stops its containers itself.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logging.basicConfig(level=setup.root_log_level, format=LOG_FORMAT)
    logging.getLogger("localgateway").setLevel(setup.log_level)
    os.environ.update(setup.environment)
    send_lock = threading.Lock()

    def reply(message: tuple[Any, ...]) -> None:
        with send_lock:
            conn.send(message)

    try:
        activate(setup.zappa, setup.settings_dir)
        cold_start()
    except Exception as exc:
        reply(("ready", f"{type(exc).__name__}: {exc}"))
        return
    reply(("ready", None))

    def run(ident: int, event: dict[str, Any], context: LambdaContext) -> None:
        try:
            result = _marshal(call_lambda(event, context))
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

    def __init__(self, setup: ContainerSetup, name: str) -> None:
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

    def __init__(self, count: int, setup: ContainerSetup) -> None:
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
