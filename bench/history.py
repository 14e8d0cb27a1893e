"""History reads on a 1,000,000-message room, and write-path throughput on PostgreSQL.

Reads are timed server-side, in this process, two ways:
  * "view": the whole Django request through django.test.Client (middleware, session and user
    lookup, the view, the read path, JSON serialisation; no socket, no ASGI server);
  * "reads": get_room() + the read path + json.dumps of the answer (the read path alone).
Writes: N writer threads (own DB connection each) calling writepath.post_message() into one room,
with publication to Redis as shipped, and again with publication switched off to isolate its cost.

    .venv/bin/python bench/history.py [--runs 3] [--requests 200] [--threads 8] [--seconds 5]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common

HISTORY_SLUG = "bench-history"
POST_SLUG = "bench-post"
N_MESSAGES = 1_000_000
N_AUTHORS = 10


def users(prefix: str, n: int) -> list[Any]:
    from django.contrib.auth import get_user_model

    User = get_user_model()
    names = [f"{prefix}{i}" for i in range(n)]
    have = {u.username for u in User.objects.filter(username__in=names)}
    User.objects.bulk_create(
        [User(username=name, password="!") for name in names if name not in have]
    )
    by_name = {u.username: u for u in User.objects.filter(username__in=names)}
    return [by_name[name] for name in names]


def fill(n: int) -> tuple[Any, float]:
    """The history room with n messages (seq = posted_seq = 1..n); reused when already filled."""
    from django.db import connection, transaction

    from chat.models import Message, Room

    authors = users("bench-author", N_AUTHORS)
    room, _ = Room.objects.get_or_create(slug=HISTORY_SLUG, defaults={"title": "Bench history"})
    last = (
        Message.objects.filter(room=room)
        .order_by("-posted_seq")
        .values_list("posted_seq", flat=True)
        .first()
    )
    if room.seq == n and last == n and Message.objects.filter(room=room, posted_seq=1).exists():
        return room, 0.0
    start = time.perf_counter()
    print(f"filling {HISTORY_SLUG} with {n:,} messages ...", flush=True)
    with transaction.atomic():
        Message.objects.filter(room=room).delete()
        with connection.cursor() as cur:
            # One server-side bulk INSERT from generate_series: consistent seq = posted_seq = g, the
            # created time one second apart, ten authors in turn.
            cur.execute(
                """
                INSERT INTO chat_message
                    (room_id, author_id, body, client_id, created, edited, deleted, posted_seq, seq,
                     mentions, reactions)
                SELECT %s, (%s::bigint[])[1 + g %% %s],
                       'bench message ' || g || ' lorem ipsum dolor sit amet, consectetur adipiscing',
                       NULL, now() - make_interval(secs => %s - g), NULL, false, g, g,
                       '[]'::jsonb, '[]'::jsonb
                FROM generate_series(1, %s) AS g
                """,
                [room.pk, [a.pk for a in authors], N_AUTHORS, n, n],
            )
        Room.objects.filter(pk=room.pk).update(seq=n)
    with connection.cursor() as cur:
        cur.execute("ANALYZE chat_message")
    room.refresh_from_db()
    return room, time.perf_counter() - start


def time_reads(client: Any, room: Any, kind: str, count: int) -> dict[str, list[float]]:
    """Per-request milliseconds for the view (test Client) and for the read path alone."""
    from chat import access, reads
    from chat.fanout import encode

    seq = room.seq
    url = f"/api/rooms/{room.slug}/messages"
    view_ms: list[float] = []
    svc_ms: list[float] = []
    user = client_user(client)

    def params() -> dict[str, Any]:
        if kind == "latest":
            return {}
        if kind == "after":
            return {"after": seq - 20}
        return {"before": random.randint(seq // 2 - 50_000, seq // 2 + 50_000)}

    for i in range(count + 10):
        p = params()
        t0 = time.perf_counter()
        response = client.get(url, p)
        t1 = time.perf_counter()
        assert response.status_code == 200, response.content[:200]
        # The read path alone: the same lookups and serialisation the view does.
        t2 = time.perf_counter()
        r = access.get_room(user, room.slug)
        if kind == "after":
            data: Any = reads.catch_up(r, p["after"]).answer("messages")
        else:
            data = reads.history(r, p.get("before"), 50)
        encode(data)
        t3 = time.perf_counter()
        if i >= 10:  # warm-up
            view_ms.append((t1 - t0) * 1000)
            svc_ms.append((t3 - t2) * 1000)
        if i == 10:
            body = json.loads(response.content)
            n = len(body["messages"])
            assert n == (20 if kind == "after" else 50), (kind, n)
    return {"view": view_ms, "reads": svc_ms}


_client_users: dict[int, Any] = {}


def client_user(client: Any) -> Any:
    return _client_users[id(client)]


def count_queries(client: Any, room: Any) -> dict[str, int]:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    out = {}
    for kind, p in (
        ("latest", {}),
        ("after", {"after": room.seq - 20}),
        ("before", {"before": room.seq // 2}),
    ):
        with CaptureQueriesContext(connection) as ctx:
            client.get(f"/api/rooms/{room.slug}/messages", p)
        out[kind] = len(ctx.captured_queries)
    return out


def explain(room: Any) -> dict[str, str]:
    """EXPLAIN ANALYZE of the three page queries (evidence for the index use)."""
    from chat.models import Message

    qs = Message.objects.for_room(room).with_author()
    queries = {
        "latest": qs.order_by("-posted_seq")[:51],
        "after": qs.after(room.seq - 20).filter(seq__lte=room.seq),
        "before": qs.filter(posted_seq__lt=room.seq // 2).order_by("-posted_seq")[:51],
    }
    out = {}
    for kind, q in queries.items():
        plan = q.explain(analyze=True)
        lines = plan.splitlines()
        out[kind] = " | ".join(
            line.strip() for line in lines if "Index" in line or "Execution" in line
        )
    return out


def post_throughput(threads: int, seconds: float, publish: bool) -> dict[str, Any]:
    """`threads` writers posting into one room for `seconds`; messages/s and per-post latency."""
    from django.conf import settings
    from django.db import connection

    from chat import fanout, writepath
    from chat.models import Room

    room, _ = Room.objects.get_or_create(slug=POST_SLUG, defaults={"title": "Bench posting"})
    writers = users("bench-writer", threads)
    saved = settings.CHAT_FANOUT_BACKENDS
    if not publish:
        settings.CHAT_FANOUT_BACKENDS = []
    fanout.backends.cache_clear()
    latencies: list[list[float]] = [[] for _ in range(threads)]
    errors = [0] * threads
    barrier = threading.Barrier(threads + 1)
    stop = threading.Event()
    tag = uuid.uuid4().hex[:8]

    def writer(i: int) -> None:
        user = writers[i]
        try:
            r = Room.objects.get(pk=room.pk)
            barrier.wait()
            n = 0
            while not stop.is_set() and n < 20_000:
                t0 = time.perf_counter()
                try:
                    writepath.post_message(user, r, f"throughput {i} {n}", f"{tag}-{i}-{n}")
                except Exception:
                    errors[i] += 1
                latencies[i].append((time.perf_counter() - t0) * 1000)
                n += 1
        finally:
            connection.close()

    pool = [threading.Thread(target=writer, args=(i,)) for i in range(threads)]
    for t in pool:
        t.start()
    seq_before = Room.objects.get(pk=room.pk).seq
    barrier.wait()
    t0 = time.perf_counter()
    time.sleep(seconds)
    stop.set()
    for t in pool:
        t.join()
    elapsed = time.perf_counter() - t0
    seq_after = Room.objects.get(pk=room.pk).seq
    settings.CHAT_FANOUT_BACKENDS = saved
    fanout.backends.cache_clear()
    flat = [x for lat in latencies for x in lat]
    posted = seq_after - seq_before
    return {
        "posted": posted,
        "seconds": elapsed,
        "rate": posted / elapsed,
        "p50": common.percentile(flat, 50),
        "p99": common.percentile(flat, 99),
        "errors": sum(errors),
        "gap_free": _gap_free(room.pk, seq_before, seq_after),
    }


def _gap_free(room_id: int, lo: int, hi: int) -> bool:
    from chat.models import Message

    seqs = list(
        Message.objects.filter(room_id=room_id, seq__gt=lo, seq__lte=hi).values_list(
            "seq", flat=True
        )
    )
    return sorted(seqs) == list(range(lo + 1, hi + 1))


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument(
        "--requests", type=int, default=200, help="requests per page kind per run (≥ 200)"
    )
    ap.add_argument("--threads", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=5.0, help="posting duration per run")
    ap.add_argument("--messages", type=int, default=N_MESSAGES)
    ap.add_argument("--json", help="write the results here (used by bench/run.py)")
    args = ap.parse_args()

    common.ensure_database()
    common.setup_django()
    from django.conf import settings
    from django.test import Client

    from chat.models import Room

    print(f"database: {settings.DATABASES['default']['NAME']}  redis: {settings.REDIS_URL}")
    room, fill_s = fill(args.messages)
    print(
        f"room {room.slug}: seq {room.seq:,}"
        + (f" (filled in {fill_s:.1f} s)" if fill_s else " (reused)")
    )

    reader = users("bench-reader", 1)[0]
    client = Client(HTTP_HOST="127.0.0.1")
    client.force_login(reader)
    _client_users[id(client)] = reader
    queries = count_queries(client, room)
    plans = explain(room)

    kinds = ("latest", "after", "before")
    per_run: dict[str, list[dict[str, float]]] = {k: [] for k in kinds}
    posts: list[dict[str, Any]] = []
    posts_nopub: list[dict[str, Any]] = []
    for run in range(args.runs):
        room = Room.objects.get(pk=room.pk)
        for kind in kinds:
            ms = time_reads(client, room, kind, args.requests)
            per_run[kind].append(
                {
                    "n": len(ms["view"]),
                    "view_p50": common.percentile(ms["view"], 50),
                    "view_p99": common.percentile(ms["view"], 99),
                    "svc_p50": common.percentile(ms["reads"], 50),
                    "svc_p99": common.percentile(ms["reads"], 99),
                }
            )
        posts.append(post_throughput(args.threads, args.seconds, publish=True))
        posts_nopub.append(post_throughput(args.threads, args.seconds, publish=False))
        print(f"run {run + 1}/{args.runs} done", flush=True)

    labels = {"latest": "latest 50", "after": "after=seq-20", "before": "before≈500k (50)"}
    print()
    print(f"History reads on a {room.seq:,}-message room, ms per request (server-side, in-process)")
    rows = []
    for kind in kinds:
        for i, r in enumerate(per_run[kind]):
            rows.append(
                [
                    f"{labels[kind]} run {i + 1}",
                    r["n"],
                    r["view_p50"],
                    r["view_p99"],
                    r["svc_p50"],
                    r["svc_p99"],
                ]
            )
        rows.append(
            [
                f"{labels[kind]} MEDIAN",
                per_run[kind][0]["n"],
                *(
                    common.median(r[c] for r in per_run[kind])
                    for c in ("view_p50", "view_p99", "svc_p50", "svc_p99")
                ),
            ]
        )
    print(
        common.table(
            ["page", "requests", "view p50", "view p99", "reads p50", "reads p99"], rows, 2
        )
    )
    print(f"SQL queries per view request: {queries}")
    for kind, plan in plans.items():
        print(f"plan {kind}: {plan}")

    print()
    print(
        f"Posting: {args.threads} writer threads, one room, post_message, {args.seconds:g} s each"
    )
    rows = []
    for label, series in (("publish to Redis (as shipped)", posts), ("publish off", posts_nopub)):
        for i, p in enumerate(series):
            rows.append(
                [
                    f"{label} run {i + 1}",
                    p["posted"],
                    p["rate"],
                    p["p50"],
                    p["p99"],
                    p["errors"],
                    p["gap_free"],
                ]
            )
        rows.append(
            [
                f"{label} MEDIAN",
                "",
                common.median(p["rate"] for p in series),
                common.median(p["p50"] for p in series),
                common.median(p["p99"] for p in series),
                sum(p["errors"] for p in series),
                all(p["gap_free"] for p in series),
            ]
        )
    print(
        common.table(["writers", "posted", "msg/s", "p50 ms", "p99 ms", "errors", "gap-free"], rows)
    )

    budgets = [
        common.budget(
            f"history {labels[k]} p99 (view)",
            common.median(r["view_p99"] for r in per_run[k]),
            10,
            "max",
            "ms",
        )
        for k in kinds
    ]
    budgets.append(
        common.budget(
            f"posting {args.threads} threads (Redis publish on)",
            common.median(p["rate"] for p in posts),
            500,
            "min",
            "msg/s",
        )
    )
    print()
    common.print_budgets(budgets)
    common.write_json(
        args.json,
        {
            "budgets": budgets,
            "reads": per_run,
            "posts": posts,
            "posts_nopub": posts_nopub,
            "queries": queries,
        },
    )
    return 0 if all(b["ok"] for b in budgets) else 1


if __name__ == "__main__":
    sys.exit(main())
