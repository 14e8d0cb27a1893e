"""Full-text search on PostgreSQL (chat/search.py): a stored, generated tsvector of each body and
the GIN index the search reads. Other databases get nothing here: chat/search.py falls back to a
plain substring match there.

The model does not declare the column. A generated column is written by the database alone, and
declaring it (GeneratedField) would put a PostgreSQL-only expression into a model every database
loads; chat/search.py names it in the one query that reads it. The `simple` configuration lowercases
and splits words but stems nothing and drops no stop words: it is the same for every language a
room speaks, and a search for "running" finds "running", not a guess at English roots.

Adding a stored column rewrites the table once. On a large table run this migration in a quiet
hour (about 10 s per million rows on a small machine).
"""

from __future__ import annotations

from typing import Any

from django.db import migrations

COLUMN = "search_vector"
INDEX = "message_search"

FORWARD = [
    f"""ALTER TABLE chat_message ADD COLUMN {COLUMN} tsvector
        GENERATED ALWAYS AS (to_tsvector('simple'::regconfig, body)) STORED""",
    # Partial: hidden, deleted and erased messages are never found, so they are not indexed, and
    # the search's WHERE repeats this predicate so that the planner may use the index.
    f"""CREATE INDEX {INDEX} ON chat_message USING gin ({COLUMN})
        WHERE NOT deleted AND NOT hidden""",
    f"""COMMENT ON INDEX {INDEX} IS
        'Serves chat.search.search: websearch_to_tsquery(''simple'', q) over visible messages'""",
]
BACKWARD = [
    f"DROP INDEX IF EXISTS {INDEX}",
    f"ALTER TABLE chat_message DROP COLUMN IF EXISTS {COLUMN}",
]


def forward(apps: Any, schema_editor: Any) -> None:
    if schema_editor.connection.vendor != "postgresql":
        return
    for statement in FORWARD:
        schema_editor.execute(statement)


def backward(apps: Any, schema_editor: Any) -> None:
    if schema_editor.connection.vendor != "postgresql":
        return
    for statement in BACKWARD:
        schema_editor.execute(statement)


class Migration(migrations.Migration):
    dependencies = [
        ("chat", "0009_replies_reactions"),
    ]

    operations = [migrations.RunPython(forward, backward, elidable=False)]
