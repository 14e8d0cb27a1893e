"""Serverless fan-out: one message to 1,000 API Gateway connections through the local gateway.

The gateway (`python -m localgateway`, Zappa's real handler) adds 20 ms to every @connections
call, as a stand-in for API Gateway's latency. 1,000 WebSocket clients of one user subscribe to a
room; one of them sends a message. Printed: the time from the send until every client has the
message (budget 1.5 s), and the $default invocation's own duration from the gateway's REPORT lines
(the batches beyond CHAT_APIGW_BATCH run in asynchronous invocations, reported separately).
Median of --runs sends. Traffic only to 127.0.0.1; bounded by --deadline seconds.

    python bench/serverless_fanout.py [--connections 1000] [--delay 0.02] [--runs 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (
    ROOT,
    bench_env,
    cpu_seconds,
    ensure_database,
    proc_status,
    raise_nofile,
    self_cpu_seconds,
    setup_django,
)

ROOM = "serverless-fanout"
REPORT = re.compile(r"REPORT RequestId: (\S+) Route: (\S+) Duration: ([\d.]+) ms")
# The asynchronous invocations of a fan-out: its batches (and Zappa's @task route, for others).
BATCH_ROUTES = {"chat.apigateway.deliver_batch", "zappa.asynchronous.route_lambda_task"}


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def prepare() -> str:
    """The room and its user, no connection rows left from an earlier run; returns a token."""
    from django.contrib.auth import get_user_model

    from chat import tokens
    from chat.models import ApiConnection, Room

    user, created = get_user_model().objects.get_or_create(username="bench-serverless")
    if created:
        user.set_password("bench-serverless-pw")
        user.save()
    Room.objects.get_or_create(slug=ROOM, defaults={"title": "Serverless fan-out"})
    ApiConnection.objects.filter(user=user).delete()
    return tokens.make_token(user)


def start_gateway(
    port: int, delay: float, log: Path, batch: int | None, task_processes: int | None
) -> subprocess.Popen[bytes]:
    env = bench_env()
    env.pop("DJANGO_SETTINGS_MODULE", None)  # the stage's django_settings decides, as on Lambda
    if batch:
        env["CHAT_APIGW_BATCH"] = str(batch)
    command = [
        sys.executable,
        "-m",
        "localgateway",
        "--port",
        str(port),
        "--connections-delay",
        str(delay),
        "--log-level",
        "INFO",
        "--workers",
        "64",
    ]
    if task_processes is not None:
        command += ["--task-processes", str(task_processes)]
    proc = subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=log.open("wb")
    )
    assert proc.stdout is not None
    deadline = time.monotonic() + 60
    for line in iter(proc.stdout.readline, b""):
        if b"Quit with" in line:
            return proc
        if time.monotonic() > deadline:
            break
    proc.kill()
    raise RuntimeError(f"the local gateway did not start; see {log}")


def process_tree(pid: int) -> list[int]:
    """The process and its descendants (the gateway's Lambda containers, if it runs any)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    tree, todo = [], [pid]
    while todo:
        tree.append(todo.pop())
        todo += children.get(tree[-1], [])
    return tree


def tree_cpu(pid: int) -> float:
    """CPU seconds used so far by the gateway and its live descendants."""
    return sum(cpu_seconds(p) for p in process_tree(pid))


def reports(log: Path) -> list[tuple[str, float]]:
    """(route, milliseconds) of each invocation, in order (a line may be logged twice)."""
    seen: dict[str, tuple[str, float]] = {}
    for m in REPORT.finditer(log.read_text(errors="replace")):
        seen.setdefault(m[1], (m[2], float(m[3])))
    return list(seen.values())


async def scenario(
    port: int, token: str, connections: int, runs: int, log: Path, gateway_pid: int
) -> dict[str, Any]:
    import websockets

    url = f"ws://127.0.0.1:{port}/ws/?room={ROOM}&token={token}"

    async def open_one() -> Any:
        ws = await websockets.connect(url, proxy=None, open_timeout=60, max_queue=None)
        while json.loads(await ws.recv())["type"] != "subscribed":
            pass
        return ws

    started = time.monotonic()
    sockets: list[Any] = []
    for _ in range(0, connections, 100):  # API Gateway admits 500 new connections a second
        sockets += await asyncio.gather(
            *(open_one() for _ in range(min(100, connections - len(sockets))))
        )
    connect_seconds = time.monotonic() - started

    async def drain(ws: Any) -> None:
        try:
            while True:
                await asyncio.wait_for(ws.recv(), 0.3)
        except (TimeoutError, Exception):
            pass

    await asyncio.gather(*(drain(ws) for ws in sockets))  # presence and the like
    results = []
    for run in range(runs):
        body = f"fan-out {run} {time.time()}"
        before = len(reports(log))

        async def arrival(ws: Any, body: str = body) -> float:
            while True:
                event = json.loads(await ws.recv())
                if event.get("type") == "message" and event.get("body") == body:
                    return time.monotonic()

        waiters = [asyncio.ensure_future(arrival(ws)) for ws in sockets]
        # CPU is the figure a shared 2-core machine does not blur: wall time waits for cores.
        cpu_before, own_before = tree_cpu(gateway_pid), self_cpu_seconds()
        sent = time.monotonic()
        await sockets[0].send(json.dumps({"action": "sendmessage", "body": body}))
        done, pending = await asyncio.wait(waiters, timeout=30)
        for task in pending:
            task.cancel()
        arrivals = sorted(task.result() - sent for task in done)
        own_cpu = self_cpu_seconds() - own_before
        await asyncio.sleep(1.0)  # let the invocations finish and log
        gateway_cpu = tree_cpu(gateway_pid) - cpu_before
        await asyncio.gather(*(drain(ws) for ws in sockets[:1]))
        new = reports(log)[before:]
        handler = [ms for route, ms in new if route == "$default"]
        batches = [ms for route, ms in new if route in BATCH_ROUTES]
        results.append(
            {
                "delivered": len(arrivals),
                "all_delivered_s": arrivals[-1] if len(arrivals) == len(sockets) else None,
                "p50_s": arrivals[len(arrivals) // 2] if arrivals else None,
                "handler_ms": max(handler) if handler else None,
                "task_batches": len(batches),
                "task_ms": max(batches) if batches else None,
                # Lambda bills every invocation: the message's total, all of them together.
                "invocations_ms": round(sum(handler) + sum(batches), 1),
                "gateway_cpu_s": round(gateway_cpu, 3),
                "clients_cpu_s": round(own_cpu, 3),
            }
        )
    # Peak resident memory of each process: the gateway (its threads run the synchronous
    # invocations, the sockets' $connect and $disconnect too) and its Lambda containers.
    peaks = {pid: proc_status(pid).get("VmHWM", 0) / 1024 for pid in process_tree(gateway_pid)}
    await asyncio.gather(*(ws.close() for ws in sockets), return_exceptions=True)
    return {"connect_seconds": connect_seconds, "runs": results, "peak_mb": peaks}


def median(values: list[Any]) -> Any:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=1000)
    parser.add_argument(
        "--delay", type=float, default=0.02, help="seconds added to each @connections call"
    )
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--batch", type=int, default=None, help="CHAT_APIGW_BATCH for the gateway")
    parser.add_argument(
        "--task-processes",
        type=int,
        default=None,
        help="the gateway's processes for @task invocations (default: the gateway's own)",
    )
    parser.add_argument(
        "--deadline", type=float, default=240, help="give up after this many seconds"
    )
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    options = parser.parse_args()

    raise_nofile(options.connections * 3 + 1000)
    ensure_database()
    setup_django()
    token = prepare()
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="bench-serverless-") as tmp:
        log = Path(tmp) / "gateway.log"
        gateway = start_gateway(port, options.delay, log, options.batch, options.task_processes)
        try:
            figures = asyncio.run(
                asyncio.wait_for(
                    scenario(port, token, options.connections, options.runs, log, gateway.pid),
                    options.deadline,
                )
            )
        finally:
            gateway.terminate()
            try:
                gateway.wait(15)
            except subprocess.TimeoutExpired:
                gateway.kill()
    runs = figures["runs"]
    summary = {
        "connections": options.connections,
        "delay_ms": options.delay * 1000,
        "connect_seconds": round(figures["connect_seconds"], 2),
        "all_delivered_s_median": median([r["all_delivered_s"] for r in runs]),
        "p50_delivered_s_median": median([r["p50_s"] for r in runs]),
        "handler_ms_median": median([r["handler_ms"] for r in runs]),
        "task_ms_median": median([r["task_ms"] for r in runs]),
        "task_batches": runs[0]["task_batches"] if runs else 0,
        "gateway_cpu_s_median": median([r["gateway_cpu_s"] for r in runs]),
        "invocations_ms_median": median([r["invocations_ms"] for r in runs]),
        "peak_mb": {str(pid): round(mb, 1) for pid, mb in figures["peak_mb"].items()},
        "delivered": [r["delivered"] for r in runs],
        "runs": runs,
    }
    if options.json:
        print(json.dumps(summary))
        return
    print(
        f"Serverless fan-out: 1 message to {options.connections} connections through the local gateway"
    )
    print(f"  @connections delay    {summary['delay_ms']:.0f} ms per call")
    print(f"  connecting            {summary['connect_seconds']} s")
    for n, r in enumerate(runs, 1):
        all_s = "n/a" if r["all_delivered_s"] is None else f"{r['all_delivered_s']:.3f} s"
        print(
            f"  run {n}: delivered {r['delivered']}, all after {all_s},"
            f" $default {r['handler_ms']} ms, {r['task_batches']} task batches (max {r['task_ms']} ms),"
            f" CPU: gateway {r['gateway_cpu_s']} s, clients {r['clients_cpu_s']} s"
        )
    med = summary["all_delivered_s_median"]
    print(f"  median all delivered  {med:.3f} s (budget 1.5 s)" if med else "  not all delivered")
    print(f"  median $default       {summary['handler_ms_median']} ms")
    print(f"  median gateway CPU    {summary['gateway_cpu_s_median']} s per fan-out")
    print(f"  median invocations    {summary['invocations_ms_median']} ms per message, in all")
    peaks = ", ".join(f"{mb:.0f}" for mb in figures["peak_mb"].values())
    print(f"  peak RSS              {peaks} MB (the gateway, then each container process)")


if __name__ == "__main__":
    main()
