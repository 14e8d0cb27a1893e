"""Search over 1,000,000 messages on PostgreSQL: two-word queries, timed server-side.

The corpus: 50 rooms of 20,000 messages, one reader in all of them (so every query covers the
whole million), each body 8 words drawn from a vocabulary of 8,000 made-up words with a Zipf
distribution (the r-th word is r times rarer than the first), as words in real text are. It is
written by one INSERT … SELECT from generate_series with the search index dropped and rebuilt
after (about a minute here), and kept between runs.

Queries, two words each, drawn from three frequency bands:
  * typical: both words of rank 20–2,000 (each in about 0.1–6% of messages): what people type,
    and what the budget holds;
  * common: ranks 3–15 (each in 10–40%; tens of thousands of matches, newest 20 answered);
  * rare: ranks 2,000–8,000 (a few matches, or none).
Timed two ways, as bench/history.py does: "view" (the request through django.test.Client) and
"search" (chat.search.search() and json.dumps of its answer). Before the timed runs, one pass of
every band is run and discarded: right after a fill the index and table pages are not yet in
memory, and the first run measured the disk (p99 281 ms against 40 ms warm).

    .venv/bin/python bench/search.py [--runs 3] [--requests 200] [--json out.json]
"""

from __future__ import annotations

import argparse
import importlib
import math
import random
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common

ROOM_PREFIX = "bench-search-"
N_ROOMS = 50
N_MESSAGES = 1_000_000
WORDS_PER_MESSAGE = 8
SYLLABLES = "ka mi ro te su no ha ri lo ve da zu pe gi bo ny fa chi mu sel".split()
VOCABULARY = len(SYLLABLES) ** 3
BANDS = {"typical": (20, 2_000), "common": (3, 15), "rare": (2_000, VOCABULARY)}
BUDGET_MS = 50


def word(rank: int) -> str:
    """The word of this frequency rank (1 is the most frequent), as the SQL below builds it."""
    i = rank - 1
    n = len(SYLLABLES)
    return SYLLABLES[i % n] + SYLLABLES[(i // n) % n] + SYLLABLES[(i // n // n) % n]


def fill(n: int) -> tuple[list[Any], Any, float]:
    """The rooms with n messages in all, and their reader; reused when already filled."""
    from django.contrib.auth import get_user_model
    from django.db import connection, transaction

    from chat.models import Membership, Message, Room

    users = get_user_model()
    reader, _ = users.objects.get_or_create(username="bench-searcher")
    authors = [users.objects.get_or_create(username=f"bench-author{i}")[0] for i in range(10)]
    rooms = [
        Room.objects.get_or_create(slug=f"{ROOM_PREFIX}{i}", defaults={"title": f"Search {i}"})[0]
        for i in range(N_ROOMS)
    ]
    for room in rooms:
        Membership.objects.get_or_create(room=room, user=reader)
    per_room = n // N_ROOMS
    if all(room.seq == per_room for room in rooms):
        return rooms, reader, 0.0
    print(f"filling {N_ROOMS} rooms with {n:,} messages ...", flush=True)
    start = time.perf_counter()
    migration = importlib.import_module("chat.migrations.0010_search")
    with transaction.atomic(), connection.cursor() as cur:
        Message.objects.filter(room__in=rooms).delete()
        # Building a GIN index once is far cheaper than a million inserts into it.
        cur.execute(f"DROP INDEX IF EXISTS {migration.INDEX}")
        # Word r has probability ∝ 1/r: the rank is exp(U·ln V) for U uniform in [0, 1).
        # The inner generate_series refers to g so that each row draws its own words, and the
        # aggregate to j so that it aggregates the inner rows, not the outer ones.
        cur.execute(
            """
            WITH s AS (SELECT %(syllables)s::text[] AS a, cardinality(%(syllables)s::text[]) AS k),
            v AS (
                SELECT array_agg(a[1 + i %% k] || a[1 + (i / k) %% k] || a[1 + (i / k / k) %% k]
                                 ORDER BY i) AS words
                FROM s, generate_series(0, %(vocabulary)s - 1) AS i
            )
            INSERT INTO chat_message
                (room_id, author_id, body, client_id, created, edited, deleted, hidden,
                 posted_seq, seq, mentions, reactions)
            SELECT (%(rooms)s::bigint[])[1 + (g - 1) %% %(n_rooms)s],
                   (%(authors)s::bigint[])[1 + g %% 10],
                   (SELECT string_agg(
                        v.words[least(%(vocabulary)s,
                                      1 + floor(exp(random() * ln(%(vocabulary)s)))::int
                                      + 0 * j)], ' ')
                    FROM generate_series(1, %(per_message)s + 0 * g) AS j),
                   NULL, now() - make_interval(secs => %(n)s - g), NULL, false, false,
                   1 + (g - 1) / %(n_rooms)s, 1 + (g - 1) / %(n_rooms)s, '[]'::jsonb,
                   '[]'::jsonb
            FROM v, generate_series(1, %(n)s) AS g
            """,
            {
                "syllables": SYLLABLES,
                "vocabulary": VOCABULARY,
                "rooms": [r.pk for r in rooms],
                "authors": [a.pk for a in authors],
                "n_rooms": N_ROOMS,
                "per_message": WORDS_PER_MESSAGE,
                "n": n,
            },
        )
        # The foreign keys are deferred: checked now, since an index cannot be built on a table
        # with checks pending.
        cur.execute("SET CONSTRAINTS ALL IMMEDIATE")
        for statement in migration.FORWARD[1:]:
            cur.execute(statement)
        Room.objects.filter(pk__in=[r.pk for r in rooms]).update(seq=per_room)
    with connection.cursor() as cur:
        cur.execute("ANALYZE chat_message")
    for room in rooms:
        room.refresh_from_db()
    return rooms, reader, time.perf_counter() - start


def query(band: str, rng: random.Random) -> str:
    lo, hi = BANDS[band]
    # Log-uniform within the band: as many queries of rank 20 to 200 as of 200 to 2,000.
    ranks = {round(math.exp(rng.uniform(math.log(lo), math.log(hi)))) for _ in range(2)}
    while len(ranks) < 2:
        ranks.add(rng.randint(lo, hi))
    return " ".join(word(r) for r in ranks)


def time_band(client: Any, reader: Any, band: str, count: int, seed: int) -> dict[str, Any]:
    from chat import search
    from chat.fanout import encode

    rng = random.Random(seed)
    view_ms: list[float] = []
    svc_ms: list[float] = []
    found: list[int] = []
    for i in range(count + 10):
        q = query(band, rng)
        t0 = time.perf_counter()
        response = client.get("/api/search", {"q": q})
        t1 = time.perf_counter()
        assert response.status_code == 200, response.content[:200]
        t2 = time.perf_counter()
        answer = search.search(reader, q)
        encode(answer)
        t3 = time.perf_counter()
        if i >= 10:  # warm-up
            view_ms.append((t1 - t0) * 1000)
            svc_ms.append((t3 - t2) * 1000)
            found.append(len(answer["results"]))
    return {
        "n": len(view_ms),
        "view_p50": common.percentile(view_ms, 50),
        "view_p95": common.percentile(view_ms, 95),
        "view_p99": common.percentile(view_ms, 99),
        "svc_p50": common.percentile(svc_ms, 50),
        "svc_p99": common.percentile(svc_ms, 99),
        "full_pages": sum(1 for f in found if f == search.LIMIT_DEFAULT) / len(found),
    }


def explain(reader: Any) -> dict[str, str]:
    """EXPLAIN ANALYZE of one query per band (evidence for the index use)."""
    from django.contrib.postgres.search import SearchQuery, SearchVectorField
    from django.db.models.expressions import RawSQL

    from chat import search
    from chat.models import Message

    out = {}
    rng = random.Random(7)
    rooms = search.scope(reader, None)
    for band in BANDS:
        q = query(band, rng)
        vector = RawSQL(f'"chat_message"."{search.COLUMN}"', [], SearchVectorField())
        qs = (
            Message.objects.filter(room__in=rooms, deleted=False, hidden=False)
            .alias(vector=vector)
            .filter(vector=SearchQuery(q, config=search.CONFIG, search_type="websearch"))
            .order_by("-pk")[:21]
        )
        plan = qs.explain(analyze=True).splitlines()
        keep = ("Scan", "Execution", "BitmapAnd")
        out[f"{band} ({q})"] = " | ".join(
            line.strip() for line in plan if any(k in line for k in keep)
        )
    return out


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--requests", type=int, default=200, help="queries per band per run")
    ap.add_argument("--messages", type=int, default=N_MESSAGES)
    ap.add_argument("--json", help="write the results here (used by bench/run.py)")
    args = ap.parse_args()

    common.ensure_database()
    common.setup_django()
    from django.conf import settings
    from django.db import connection
    from django.test import Client

    print(f"database: {settings.DATABASES['default']['NAME']}")
    rooms, reader, fill_s = fill(args.messages)
    total = sum(r.seq for r in rooms)
    print(
        f"{len(rooms)} rooms, {total:,} messages"
        + (f" (filled in {fill_s:.1f} s)" if fill_s else " (reused)")
    )
    with connection.cursor() as cur:
        cur.execute("SELECT pg_size_pretty(pg_relation_size('message_search'))")
        print(f"index message_search: {cur.fetchone()[0]}")
    client = Client(HTTP_HOST="127.0.0.1")
    client.force_login(reader)
    plans = explain(reader)

    # Discarded: reads the pages the runs will use into memory (a seed no run uses).
    t0 = time.perf_counter()
    for band in BANDS:
        time_band(client, reader, band, args.requests, seed=-1)
    print(f"warm-up pass done in {time.perf_counter() - t0:.1f} s (not counted)", flush=True)

    per_run: dict[str, list[dict[str, Any]]] = {band: [] for band in BANDS}
    for run in range(args.runs):
        for band in BANDS:
            per_run[band].append(time_band(client, reader, band, args.requests, seed=run))
        print(f"run {run + 1}/{args.runs} done", flush=True)

    print()
    print(f"Two-word searches over {total:,} messages, ms per request (server-side, in-process)")
    rows = []
    for band, series in per_run.items():
        for i, r in enumerate(series):
            rows.append(
                [f"{band} run {i + 1}", r["n"], r["view_p50"], r["view_p99"], r["svc_p50"],
                 r["svc_p99"], r["full_pages"]]
            )  # fmt: skip
        rows.append(
            [f"{band} MEDIAN", "", *(common.median(r[k] for r in series)
             for k in ("view_p50", "view_p99", "svc_p50", "svc_p99", "full_pages"))]
        )  # fmt: skip
    headers = ["band", "queries", "view p50", "view p99", "search p50", "search p99", "full"]
    print(common.table(headers, rows, 2))
    for band, plan in plans.items():
        print(f"plan {band}: {plan}")

    budgets = [
        common.budget(
            "search, two typical words, 1M messages, p99 (view)",
            common.median(r["view_p99"] for r in per_run["typical"]),
            BUDGET_MS,
            "max",
            "ms",
        )
    ]
    print()
    common.print_budgets(budgets)
    common.write_json(
        args.json, {"budgets": budgets, "messages": total, "search": per_run, "plans": plans}
    )
    return 0 if all(b["ok"] for b in budgets) else 1


if __name__ == "__main__":
    sys.exit(main())
