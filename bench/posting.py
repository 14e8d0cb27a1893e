"""Posting at saturation: N writer threads posting into one room through writepath.post_message.

Each writer has its own database connection and posts as fast as it is acknowledged, with a fresh
client_id each time and publication to Redis as shipped. A run counts what was acknowledged and
checks, from the database, that the room's seq is gap-free over the run, that every acknowledged
message is stored with the seq it was acknowledged with, and that no two acks name one message.

    .venv/bin/python bench/posting.py [--runs 3] [--threads 32] [--seconds 5] [--json FILE]

The writers are threads of one process, as a server's worker threads are (Django's sync views,
database_sync_to_async), so concurrent posts to the room can be committed together
(CHAT_GROUP_COMMIT, chat/writepath.py).
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common

SLUG = "bench-posting"
TARGET = 3000  # messages/s with 32 writers into one room


def writers(n: int) -> list[Any]:
    from django.contrib.auth import get_user_model

    User = get_user_model()
    names = [f"bench-poster{i}" for i in range(n)]
    have = set(User.objects.filter(username__in=names).values_list("username", flat=True))
    User.objects.bulk_create([User(username=x, password="!") for x in names if x not in have])
    by_name = {u.username: u for u in User.objects.filter(username__in=names)}
    return [by_name[x] for x in names]


def run_once(threads: int, seconds: float) -> dict[str, Any]:
    from django.db import connection

    from chat import writepath
    from chat.models import Message, Room

    room, _ = Room.objects.get_or_create(slug=SLUG, defaults={"title": "Bench posting"})
    users = writers(threads)
    acks: list[list[tuple[int, int, float]]] = [[] for _ in range(threads)]
    errors: list[list[str]] = [[] for _ in range(threads)]
    barrier = threading.Barrier(threads + 1)
    stop = threading.Event()
    tag = uuid.uuid4().hex[:8]

    def writer(i: int) -> None:
        user = users[i]
        try:
            try:
                r = Room.objects.get(pk=room.pk)
            except Exception:
                barrier.abort()  # no connection (the server's limit): the run stops, not hangs
                raise
            try:
                barrier.wait()
            except threading.BrokenBarrierError:
                return
            n = 0
            while not stop.is_set():
                t0 = time.perf_counter()
                try:
                    posted = writepath.post_message(user, r, f"post {i} {n}", f"{tag}-{i}-{n}")
                    ms = (time.perf_counter() - t0) * 1000
                    acks[i].append((posted.message.pk, posted.message.seq, ms))
                except Exception as exc:
                    errors[i].append(repr(exc))
                n += 1
        finally:
            connection.close()

    pool = [threading.Thread(target=writer, args=(i,)) for i in range(threads)]
    for t in pool:
        t.start()
    seq_before = Room.objects.get(pk=room.pk).seq
    load = os.getloadavg()[0]
    try:
        barrier.wait()
    except threading.BrokenBarrierError:
        for t in pool:
            t.join()
        raise RuntimeError(f"a writer could not start: {threads} connections needed") from None
    t0 = time.perf_counter()
    time.sleep(seconds)
    stop.set()
    for t in pool:
        t.join()
    elapsed = time.perf_counter() - t0
    seq_after = Room.objects.get(pk=room.pk).seq
    flat = [a for per in acks for a in per]
    stored = dict(
        Message.objects.filter(room=room, seq__gt=seq_before, seq__lte=seq_after).values_list(
            "pk", "seq"
        )
    )
    return {
        "acked": len(flat),
        "seconds": elapsed,
        "rate": len(flat) / elapsed,
        "p50": common.percentile([a[2] for a in flat], 50),
        "p99": common.percentile([a[2] for a in flat], 99),
        "errors": sum(len(e) for e in errors),
        "first_error": next((e[0] for e in errors if e), None),
        "gap_free": sorted(stored.values()) == list(range(seq_before + 1, seq_after + 1)),
        # Each ack names a distinct stored message, with the seq it was stored under.
        "acked_once": len({a[0] for a in flat}) == len(flat) == len(stored)
        and all(stored.get(pk) == seq for pk, seq, _ in flat),
        "load": load,
    }


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=32)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--json", help="write the results here (used by bench/run.py)")
    args = ap.parse_args()

    common.ensure_database()
    common.setup_django()
    from django.conf import settings

    print(
        f"database: {settings.DATABASES['default']['NAME']}  redis: {settings.REDIS_URL}"
        f"  group commit: {settings.CHAT_GROUP_COMMIT}"
    )
    runs = []
    for i in range(args.runs):
        runs.append(run_once(args.threads, args.seconds))
        print(f"run {i + 1}/{args.runs} done", flush=True)
    print()
    print(f"Posting: {args.threads} writer threads, one room, {args.seconds:g} s each")
    rows = [
        [
            f"run {i + 1}",
            r["acked"],
            r["rate"],
            r["p50"],
            r["p99"],
            r["errors"],
            r["gap_free"],
            r["acked_once"],
            r["load"],
        ]
        for i, r in enumerate(runs)
    ]
    rate = common.median(r["rate"] for r in runs)
    rows.append(
        [
            "MEDIAN",
            "",
            rate,
            common.median(r["p50"] for r in runs),
            common.median(r["p99"] for r in runs),
            sum(r["errors"] for r in runs),
            all(r["gap_free"] for r in runs),
            all(r["acked_once"] for r in runs),
            "",
        ]
    )
    print(
        common.table(
            ["", "acked", "msg/s", "p50 ms", "p99 ms", "errors", "gap-free", "acked once", "load"],
            rows,
        )
    )
    for r in runs:
        if r["first_error"]:
            print(f"first error: {r['first_error']}")
    sound = all(r["gap_free"] and r["acked_once"] and not r["errors"] for r in runs)
    budgets = [
        common.budget(f"posting {args.threads} writers, one room", rate, TARGET, "min", "msg/s"),
        common.budget("posting gap-free, each acked once, no errors", int(sound), 1, "min", ""),
    ]
    print()
    common.print_budgets(budgets)
    common.write_json(args.json, {"budgets": budgets, "runs": runs})
    return 0 if all(b["ok"] for b in budgets) else 1


if __name__ == "__main__":
    sys.exit(main())
