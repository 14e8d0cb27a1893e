"""Long-poll wake-up: N concurrent waiters on one uvicorn process, then one post.

Each run starts a uvicorn process (chatsite.asgi on the bench PostgreSQL + Redis), parks N waiters
on GET /api/rooms/<slug>/poll?after=<seq>&timeout=20 (session cookies of a few users, made with
Django's SessionStore; aiohttp with no connection limit), waits until the server is idle (all
parked), posts one message through writepath.post_message in this process (published through Redis
to the server's room hub), and times each answer from just before the post.

Presence: a poller's first request for a user announces `presence`, and any room event wakes every
waiter. So the users are made present first (one timeout=0 poll each), as they would be in a real
session; waiters answered before the post are counted as "early".

    .venv/bin/python bench/longpoll.py [--waiters 1000] [--users 20] [--runs 3]

With --serverless the server is the local gateway in front of Zappa's handler (the dev stage:
CHAT_POLL_WAIT=database, woken by PostgreSQL's NOTIFY from chat.fanout.PostgresNotifyBackend),
one invocation per waiter, and this process publishes with the stage's backends. Each waiter
holds one database connection, so unless BENCH_PG names a server, a throwaway cluster with enough
connections is made for the run (pg_createcluster) and dropped after:

    .venv/bin/python bench/longpoll.py --serverless --waiters 100 [--runs 3]
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common

SLUG = "bench-poll"


def sessions(n: int) -> tuple[list[Any], list[str]]:
    from django.conf import settings
    from django.contrib.auth import (
        BACKEND_SESSION_KEY,
        HASH_SESSION_KEY,
        SESSION_KEY,
        get_user_model,
    )
    from django.contrib.sessions.backends.db import SessionStore

    User = get_user_model()
    names = [f"bench-poll{i}" for i in range(n)]
    have = {u.username for u in User.objects.filter(username__in=names)}
    User.objects.bulk_create(
        [User(username=name, password="!") for name in names if name not in have]
    )
    users = list(User.objects.filter(username__in=names).order_by("username"))
    cookies = []
    for user in users:
        s = SessionStore()
        s[SESSION_KEY] = str(user.pk)
        s[BACKEND_SESSION_KEY] = "django.contrib.auth.backends.ModelBackend"
        s[HASH_SESSION_KEY] = user.get_session_auth_hash()
        s.create()
        cookies.append(f"{settings.SESSION_COOKIE_NAME}={s.session_key}")
    return users, cookies


def _close_db() -> None:
    from django.db import connection

    connection.close()


async def wait_idle(pid: int, quiet: float = 0.6, limit: float = 60.0) -> float:
    """Seconds until the server has used < 3% of a core for `quiet` seconds."""
    t0 = time.monotonic()
    last = common.cpu_seconds(pid)
    while time.monotonic() - t0 < limit:
        await asyncio.sleep(quiet)
        now = common.cpu_seconds(pid)
        if now - last < 0.03 * quiet:
            return time.monotonic() - t0
        last = now
    return time.monotonic() - t0


async def one_round(
    server: common.Server, args: argparse.Namespace, room: Any, user: Any, cookies: list[str]
):
    import aiohttp

    from chat import fanout, writepath
    from chat.models import Room

    # The poster: one thread with its database connection already open, as in a warm server.
    poster = concurrent.futures.ThreadPoolExecutor(1)
    loop = asyncio.get_running_loop()
    seq = await loop.run_in_executor(poster, lambda: Room.objects.get(pk=room.pk).seq)
    url = f"{server.http_url}/api/rooms/{SLUG}/poll"
    connector = aiohttp.TCPConnector(limit=0, limit_per_host=0)
    timeout = aiohttp.ClientTimeout(total=60)
    results: list[tuple[float, int, Any]] = []
    async with aiohttp.ClientSession(
        connector=connector, timeout=timeout, cookie_jar=aiohttp.DummyCookieJar()
    ) as http:
        # Make every user present first (a real client's earlier polls did), so joins do not announce.
        for cookie in cookies:
            async with http.get(
                url, params={"after": seq, "timeout": 0}, headers={"Cookie": cookie}
            ) as r:
                assert r.status == 200, await r.text()

        async def waiter(i: int) -> None:
            params = {"after": seq, "timeout": args.timeout}
            async with http.get(
                url, params=params, headers={"Cookie": cookies[i % len(cookies)]}
            ) as r:
                body = await r.read()
                results.append((time.time(), r.status, body))

        t_open = time.monotonic()
        tasks = [asyncio.create_task(waiter(i)) for i in range(args.waiters)]
        await asyncio.sleep(0.5)
        if args.serverless:
            # Each waiter re-reads every second (the fallback): the gateway is never idle. Every
            # waiter's invocation has started and LISTENs well within this.
            await asyncio.sleep(3)
        else:
            await wait_idle(server.pid)
        park_s = time.monotonic() - t_open
        early = len(results)
        parked = server.status()
        spy = None
        if args.profile:
            # py-spy (pip install py-spy; not a project requirement) samples the wake-up.
            spy = await asyncio.create_subprocess_exec(
                str(Path(sys.executable).parent / "py-spy"),
                "record",
                "--pid",
                str(server.pid),
                "--duration",
                "3",
                "--rate",
                "1000",
                "--format",
                "raw",
                "--output",
                args.profile,
                "--threads",
                "--idle",
                stdout=asyncio.subprocess.DEVNULL,
            )
            await asyncio.sleep(0.5)
        t_post = time.time()
        published: list[float] = []
        real_publish = fanout.publish

        def timed_publish(room_id: int, event: dict[str, Any]) -> None:
            published.append(time.time())
            real_publish(room_id, event)

        fanout.publish = timed_publish
        posted = await loop.run_in_executor(
            poster, writepath.post_message, user, room, "wake up", None
        )
        t_committed = time.time()
        fanout.publish = real_publish
        t_pub = published[0] if published else t_post
        await asyncio.wait(tasks, timeout=args.timeout + 10)
        for t in tasks:
            t.cancel()
        if spy is not None:
            await spy.wait()
    await loop.run_in_executor(poster, _close_db)
    poster.shutdown()
    after = server.status()
    with_message = 0
    lat: list[float] = []
    lat_pub: list[float] = []
    statuses: dict[int, int] = {}
    for t_done, status, body in results[early:]:
        statuses[status] = statuses.get(status, 0) + 1
        lat.append((t_done - t_post) * 1000)
        lat_pub.append((t_done - t_pub) * 1000)
        if status == 200:
            data = json.loads(body)
            if any(
                e.get("type") == "message" and e.get("seq") == posted.message.seq
                for e in data.get("events", [])
            ):
                with_message += 1
    return {
        "waiters": args.waiters,
        "park_s": park_s,
        "early": early,
        "answered": len(results) - early,
        "with_message": with_message,
        "statuses": statuses,
        "commit_ms": (t_committed - t_post) * 1000,
        "p50": common.percentile(lat, 50),
        "p95": common.percentile(lat, 95),
        "p99": common.percentile(lat, 99),
        "max": max(lat) if lat else float("nan"),
        "pub_p50": common.percentile(lat_pub, 50),
        "pub_p99": common.percentile(lat_pub, 99),
        "rss_parked_mb": parked.get("VmRSS", 0) / 1024,
        "hwm_mb": after.get("VmHWM", 0) / 1024,
        "threads": parked.get("Threads", 0),
    }


def one_run(args: argparse.Namespace) -> dict[str, Any]:
    from chat.models import Room

    env = common.bench_env(**dict(kv.split("=", 1) for kv in args.server_env))
    if args.server_root:
        env["BENCH_SERVER_ROOT"] = args.server_root
    room, _ = Room.objects.get_or_create(slug=SLUG, defaults={"title": "Bench poll"})
    users, cookies = sessions(args.users)
    if args.serverless:
        # One Lambda invocation per waiter, as each is a container on AWS.
        workers = str(args.waiters + 16)
        server: common.Server = common.LoggedServer.localgateway(env, "--workers", workers)
    else:
        server = common.Server.uvicorn(env)
    with server:
        idle_rss = server.status().get("VmRSS", 0) / 1024
        r = asyncio.run(one_round(server, args, room, users[0], cookies))
        r["rss_idle_mb"] = idle_rss
        return r


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--waiters", type=int, default=1000)
    ap.add_argument("--users", type=int, default=20)
    ap.add_argument("--timeout", type=int, default=20)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--server-env", action="append", default=[], metavar="K=V")
    ap.add_argument("--server-root", help="serve this copy of the project instead (prototypes)")
    ap.add_argument("--profile", help="py-spy raw output of the wake-up (3 s from the post)")
    ap.add_argument(
        "--serverless",
        action="store_true",
        help="the local gateway and the Lambda stage's long-poll (budget p99 200 ms)",
    )
    ap.add_argument("--json")
    args = ap.parse_args()
    if args.serverless and not os.environ.get("BENCH_PG"):
        # The machine's PostgreSQL allows 100 connections; the waiters need one each.
        with common.private_postgres(max_connections=args.waiters + 200) as url:
            env = {**os.environ, "BENCH_PG": url}
            return subprocess.call([sys.executable, *sys.argv], env=env)
    if args.serverless:
        # This process posts as a Lambda invocation would: with the stage's fan-out backends.
        stage = json.loads((common.ROOT / "zappa_settings.json").read_text())["dev"]
        os.environ.update(stage["environment_variables"])

    nofile = common.raise_nofile(max(20000, 4 * args.waiters))
    common.ensure_database()
    common.setup_django()
    print(
        f"long-poll{' (serverless)' if args.serverless else ''}: {args.waiters} waiters, "
        f"{args.users} users, timeout={args.timeout}, "
        f"ulimit -n {nofile} (this process and the server)"
        + (f", server env {args.server_env}" if args.server_env else ""),
        flush=True,
    )
    runs = []
    for i in range(args.runs):
        r = one_run(args)
        runs.append(r)
        print(
            f"  run {i + 1}: {r['with_message']}/{r['waiters']} woke with the message, p99 {r['p99']:.0f} ms",
            flush=True,
        )

    cols = [
        ("parked s", "park_s"),
        ("early", "early"),
        ("answered", "answered"),
        ("with msg", "with_message"),
        ("post ms", "commit_ms"),
        ("p50 ms", "p50"),
        ("p95 ms", "p95"),
        ("p99 ms", "p99"),
        ("max ms", "max"),
        ("p50 from pub", "pub_p50"),
        ("p99 from pub", "pub_p99"),
        ("RSS idle MB", "rss_idle_mb"),
        ("RSS parked MB", "rss_parked_mb"),
        ("peak MB", "hwm_mb"),
    ]
    rows = [[f"run {i + 1}", *(r[k] for _, k in cols)] for i, r in enumerate(runs)]
    med = {k: common.median(r[k] for r in runs) for _, k in cols}
    med["with_message"] = min(r["with_message"] for r in runs)
    rows.append(["MEDIAN (with msg: min)", *(med[k] for _, k in cols)])
    print()
    print(
        f"Long-poll: {args.waiters} waiters woken by one post; latency from just before the post "
        "(p50/p99/max) and from the publish after commit"
    )
    print(common.table(["run", *(c for c, _ in cols)], rows))
    print(f"HTTP statuses: {[r['statuses'] for r in runs]}")
    budgets = [
        common.budget(
            "long-poll answered with the message (worst run)",
            med["with_message"],
            args.waiters,
            "min",
            "",
        ),
        common.budget(
            "serverless long-poll wake p99" if args.serverless else "long-poll wake p99",
            med["p99"],
            200 if args.serverless else 500,
            "max",
            "ms",
        ),
    ]
    print()
    common.print_budgets(budgets)
    common.write_json(args.json, {"budgets": budgets, "runs": runs, "median": med})
    return 0 if all(b["ok"] for b in budgets) else 1


if __name__ == "__main__":
    sys.exit(main())
