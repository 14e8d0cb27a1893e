"""Shared helpers for the benchmarks: the bench database, a server subprocess, stats and tables.

Everything talks to 127.0.0.1 only. The benchmark database is separate from the development and test
databases (default `chat_bench`, BENCH_DATABASE to change it) and is kept between runs.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PG = os.environ.get("BENCH_PG", "postgres://postgres@127.0.0.1:5432")


@contextlib.contextmanager
def private_postgres(max_connections: int = 300) -> Iterator[str]:
    """A throwaway PostgreSQL cluster (Debian's pg_createcluster, trust auth on 127.0.0.1) with
    more connections than the machine's server allows, dropped afterwards: for benchmarks whose
    every waiter holds a connection, as every waiting Lambda invocation does."""
    version = sorted(os.listdir("/etc/postgresql"))[-1]
    name = f"bench{os.getpid()}"
    port = free_port()
    subprocess.run(
        ["pg_createcluster", version, name, "-p", str(port), "--", "--auth=trust"],
        check=True,
        capture_output=True,
    )
    try:
        limit = f"-c max_connections={max_connections}"
        subprocess.run(["pg_ctlcluster", version, name, "start", "-o", limit], check=True)
        yield f"postgres://postgres@127.0.0.1:{port}"
    finally:
        subprocess.run(["pg_dropcluster", version, name, "--stop"], check=False)


REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
DB_NAME = os.environ.get("BENCH_DATABASE", "chat_bench")


def database_url(name: str = DB_NAME) -> str:
    return f"{PG}/{name}"


def bench_env(name: str = DB_NAME, **extra: str) -> dict[str, str]:
    """The environment of the bench process and of the servers it starts."""
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "chatsite.settings",
        "DATABASE_URL": database_url(name),
        "REDIS_URL": REDIS_URL,
        # One prefix per bench process: runs never see each other's groups or presence.
        "CHAT_REDIS_PREFIX": f"bench{os.getpid()}",
        "ALLOWED_HOSTS": "127.0.0.1,localhost,testserver",
        "CHAT_LOG_LEVEL": "WARNING",
    }
    env.update(extra)
    return env


def ensure_database(name: str = DB_NAME) -> None:
    """Create the bench database if needed and migrate it (a no-op when up to date)."""
    import psycopg

    with psycopg.connect(f"{PG}/postgres", autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
        if not exists:
            conn.execute(f'CREATE DATABASE "{name}"')
    subprocess.run(
        [sys.executable, "manage.py", "migrate", "--noinput", "-v", "0"],
        cwd=ROOT,
        env=bench_env(name),
        check=True,
    )


def setup_django(name: str = DB_NAME, **extra: str) -> None:
    os.environ.update(bench_env(name, **extra))
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    import django

    django.setup()


def raise_nofile(want: int = 20000) -> int:
    """Raise this process's open-file limit towards `want` (children inherit it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak RSS) in kB from /proc/PID/status."""
    out: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in ("VmRSS", "VmHWM", "Threads"):
                    out[key] = int(value.split()[0])
    except OSError:
        pass
    return out


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process (from /proc/PID/stat)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def self_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class Server:
    """A server in its own process on 127.0.0.1; `cmd` gets the port appended via {port}."""

    def __init__(self, cmd: list[str], env: dict[str, str], name: str = "server") -> None:
        self.port = free_port()
        self.cmd = [part.replace("{port}", str(self.port)) for part in cmd]
        self.env = env
        self.name = name
        # A scratch copy of the project (prototypes) may be served instead: bench --server-root.
        self.cwd = Path(env.get("BENCH_SERVER_ROOT") or ROOT)
        self.proc: subprocess.Popen[bytes] | None = None

    @classmethod
    def uvicorn(cls, env: dict[str, str]) -> Server:
        """The production command (`python -m chatsite.serve`: uvicorn with the chat's limits,
        pings and WebSocket protocol); it execs uvicorn, so the pid is the server's."""
        return cls(
            [
                sys.executable,
                "-m",
                "chatsite.serve",
                "--host",
                "127.0.0.1",
                "--port",
                "{port}",
                "--log-level",
                "warning",
                "--no-access-log",
            ],
            env,
            name="uvicorn",
        )

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws/"

    def start(self) -> Server:
        self.proc = subprocess.Popen(self.cmd, cwd=self.cwd, env=self.env)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"{self.name} did not start")

    def status(self) -> dict[str, int]:
        return proc_status(self.pid)

    def cpu(self) -> float:
        return cpu_seconds(self.pid)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __enter__(self) -> Server:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# --- numbers ---


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100); NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(p / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def median(values: Iterable[float]) -> float:
    values = [v for v in values if v == v]
    return statistics.median(values) if values else float("nan")


def fmt(value: Any, digits: int = 1) -> str:
    if isinstance(value, float):
        if value != value:
            return "-"
        return f"{value:,.{digits}f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]], digits: int = 1) -> str:
    cells = [[fmt(c, digits) for c in row] for row in rows]
    widths = [
        max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)
    ]
    lines = [
        "  ".join(
            h.ljust(w) if i == 0 else h.rjust(w)
            for i, (h, w) in enumerate(zip(headers, widths, strict=True))
        ),
        "  ".join("-" * w for w in widths),
    ]
    for row in cells:
        lines.append(
            "  ".join(
                c.ljust(w) if i == 0 else c.rjust(w)
                for i, (c, w) in enumerate(zip(row, widths, strict=True))
            )
        )
    return "\n".join(lines)


def table_row(label: str, r: dict[str, Any], columns: Sequence[tuple[str, str, int]]) -> list[Any]:
    """One row of a results table: per (header, key, digits) column, r[key] rounded to its digits
    (NaN stays NaN: a figure that did not come out, printed as "-")."""
    out: list[Any] = [label]
    for _, key, digits in columns:
        v = r[key]
        if isinstance(v, float) and v == v:
            v = round(v, digits) if digits else round(v)
        out.append(v)
    return out


def budget(name: str, value: float, limit: float, kind: str, unit: str) -> dict[str, Any]:
    """A budget line: kind is "max" (value ≤ limit) or "min" (value ≥ limit)."""
    ok = value == value and (value <= limit if kind == "max" else value >= limit)
    return {
        "name": name,
        "value": value,
        "limit": limit,
        "kind": kind,
        "unit": unit,
        "ok": bool(ok),
    }


def write_json(path: str | None, data: dict[str, Any]) -> None:
    if path:
        Path(path).write_text(json.dumps(data, indent=2, default=str))


def print_budgets(budgets: list[dict[str, Any]]) -> None:
    rows = [
        [
            b["name"],
            f"{fmt(b['value'], 1)} {b['unit']}",
            f"{'≤' if b['kind'] == 'max' else '≥'} {fmt(b['limit'], 0)} {b['unit']}",
            "PASS" if b["ok"] else "FAIL",
        ]
        for b in budgets
    ]
    print(table(["budget", "measured (median)", "limit", "result"], rows))


# --- long runs (bench/soak.py) ---


class LoggedServer(Server):
    """A Server whose output goes to a log file, for runs long enough that server warnings would
    break up the tables; the file is searched for errors at the end (`error_lines`).

    With `ready_text`, start() waits for that line in the log instead of an open port: the local
    gateway listens before its Lambda cold start has finished, and a request that early would race
    the handler's set-up."""

    def __init__(
        self,
        cmd: list[str],
        env: dict[str, str],
        name: str = "server",
        log: Path | None = None,
        ready_text: str | None = None,
    ) -> None:
        super().__init__(cmd, env, name)
        self.log = log or Path(f"/tmp/bench-{name}-{os.getpid()}.log")
        self.ready_text = ready_text

    @classmethod
    def localgateway(cls, env: dict[str, str], *extra: str) -> LoggedServer:
        """`manage.py localgateway`: it execs `python -m localgateway` in the same process,
        so this pid is the gateway's (for RSS and CPU)."""
        return cls(
            [sys.executable, "manage.py", "localgateway", "--port", "{port}", *extra],
            env,
            name="localgateway",
            ready_text="Quit with",
        )

    def start(self) -> LoggedServer:
        # The log is appended to: a server started again must not find the last one's line.
        seen = self.log.stat().st_size if self.log.exists() else 0
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                self.cmd, cwd=self.cwd, env=self.env, stdout=out, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited with {self.proc.returncode}; see {self.log}"
                )
            if self.ready_text is not None:
                with self.log.open("rb") as log:
                    log.seek(seen)
                    new = log.read().decode(errors="replace")
                if self.ready_text in new:
                    return self
            else:
                try:
                    with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                        return self
                except OSError:
                    pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"{self.name} did not start; see {self.log}")

    def error_lines(self) -> list[str]:
        """Log lines that report an error or a traceback."""
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return []
        return [
            line
            for line in text.splitlines()
            if "Traceback" in line or "ERROR" in line or "CRITICAL" in line
        ]


def session_cookie(user: Any) -> str:
    """A logged-in session for `user` (stored in the database, so every server of the bench
    accepts it), as the value of the session cookie. Needs setup_django()."""
    from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY
    from django.contrib.sessions.backends.db import SessionStore

    s = SessionStore()
    s[SESSION_KEY] = str(user.pk)
    s[BACKEND_SESSION_KEY] = "django.contrib.auth.backends.ModelBackend"
    s[HASH_SESSION_KEY] = user.get_session_auth_hash()
    s.create()
    assert s.session_key is not None
    return s.session_key


def slope_per_hour(samples: Sequence[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, value) samples, per hour; NaN for fewer than 3."""
    if len(samples) < 3:
        return float("nan")
    n = len(samples)
    mean_t = sum(t for t, _ in samples) / n
    mean_v = sum(v for _, v in samples) / n
    var = sum((t - mean_t) ** 2 for t, _ in samples)
    if var == 0:
        return float("nan")
    cov = sum((t - mean_t) * (v - mean_v) for t, v in samples)
    return cov / var * 3600


def descendants(pid: int) -> list[int]:
    """The processes below `pid` (children, theirs, ...): a server's workers count towards it."""
    found: list[int] = []
    todo = [pid]
    while todo:
        for path in Path(f"/proc/{todo.pop()}/task").glob("*/children"):
            try:
                kids = [int(k) for k in path.read_text().split()]
            except (OSError, ValueError):
                continue
            found.extend(kids)
            todo.extend(kids)
    return found


def process_label(pid: int) -> str:
    """A short name for a process from its command line."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return "?"
    text = " ".join(argv)
    if "resource_tracker" in text:
        return "multiprocessing resource tracker"
    if "spawn_main" in text:
        return "spawned worker"
    return Path(argv[0]).name if argv and argv[0] else "?"
