"""Search: messages the user may read now that match a query, newest first.

On PostgreSQL the query is `websearch_to_tsquery('simple', q)` against the stored tsvector that
migration 0010 adds, through its partial GIN index (visible messages only). `simple` lowercases
and splits words and stems nothing: one configuration for every language a room speaks, and no
stop words dropped (in a chat, "to be or not" is a real search). Elsewhere (SQLite) the same
syntax is read here and matched as case-insensitive substrings: slower and looser, enough for one
machine.

The query syntax is websearch's: words are all required, `"a quoted phrase"` is a phrase, `-word`
excludes, `or` between two words (or groups) is either. Which rooms: those the user is in now (a
membership: a joined public room, a private room, a DM) and is not banned from; a room left or
removed from has no membership, so nothing of it is found. `room=` narrows to one of those rooms:
one the user may not read is refused as every room endpoint refuses it (get_room), and one they
may read but are not in (a public room never joined or left, a private room a moderator may read)
is `forbidden`: search never reaches past the rooms the user is in.

Results are ordered by message id, newest first; `before` is the id of the last result seen (the
answer's `next`), so paging never repeats or skips a message even while new ones arrive.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.postgres.search import SearchQuery, SearchVectorField
from django.db import connection
from django.db.models import Q, QuerySet
from django.db.models.expressions import RawSQL
from django.utils.html import escape
from django.utils.translation import gettext as _

from chat import access, cleaning, reads
from chat.errors import ChatError
from chat.models import Membership, Message, Room, username_lookup

# A query is a few words; anything longer is a paste, refused rather than cut.
QUERY_MAX = 256
LIMIT_MAX = 50
LIMIT_DEFAULT = 20
# The column and configuration of migration 0010 (chat/migrations/0010_search.py).
COLUMN = "search_vector"
CONFIG = "simple"

# What PostgreSQL's default parser reads as a word, near enough: letters and digits of every
# script. `_` is not a word character there ("foo_bar" is two words), so not here either.
_WORD = re.compile(r"[^\W_]+")
# websearch's pieces: a quoted phrase (an unclosed quote runs to the end), or a run of non-space.
_PIECE = re.compile(r'(-?)"([^"]*)"?|(\S+)')


@dataclass
class Clause:
    """One piece of a query: its words (a phrase when several) and whether it excludes."""

    words: list[str]
    negated: bool = False


@dataclass
class Parsed:
    """A query as websearch reads it: alternatives (split at `or`), each all of its clauses."""

    groups: list[list[Clause]] = field(default_factory=list)

    @property
    def terms(self) -> set[str]:
        """The words a result may have matched: what the highlight marks."""
        return {w for group in self.groups for c in group if not c.negated for w in c.words}


def words(text: str) -> list[str]:
    return [w.lower() for w in _WORD.findall(text)]


def parse(q: str) -> Parsed:
    """websearch_to_tsquery's reading of `q`, for the highlight and the SQLite fallback."""
    groups: list[list[Clause]] = [[]]
    for match in _PIECE.finditer(q):
        minus, phrase, bare = match.groups()
        if bare is not None:
            if bare.lower() == "or":
                if groups[-1]:
                    groups.append([])
                continue
            negated = bare.startswith("-")
            found = words(bare[1:] if negated else bare)
        else:
            negated, found = bool(minus), words(phrase)
        if found:
            groups[-1].append(Clause(found, negated))
    return Parsed([g for g in groups if g])


def clean_query(value: Any) -> tuple[str, Parsed]:
    q = cleaning.clean_text(value, "q", max_length=QUERY_MAX, strip=True)
    parsed = parse(q)
    if not any(not c.negated for group in parsed.groups for c in group):
        raise ChatError("bad_request", _("`q` needs at least one word to look for."))
    return q, parsed


def highlight(body: str, terms: set[str]) -> str:
    """The body as HTML-escaped text, with each matched word in `<mark>…</mark>`: every
    character of the message is escaped, so those two tags are the only markup in it."""
    out: list[str] = []
    last = 0
    for match in _WORD.finditer(body):
        if match.group().lower() in terms:
            out.append(escape(body[last : match.start()]))
            out.append(f"<mark>{escape(match.group())}</mark>")
            last = match.end()
    out.append(escape(body[last:]))
    return "".join(out)


def scope(user: Any, slug: Any) -> list[Room]:
    """The rooms searched: the one named (if the user is in it, or moderates it, and may read
    it), else every room the user is in now and not banned from."""
    if slug is not None:
        room = access.get_room(user, slug)
        # A room's moderators read it without being in it, and search it to moderate it.
        member = Membership.objects.filter(room=room, user=user).exists()
        if not member and not access.is_moderator(user, room):
            raise ChatError(
                "forbidden", _("Search covers the rooms you are in: join this one first.")
            )
        return [room]
    if access.site_banned(user):
        raise ChatError("forbidden", _("You are banned."))
    ids = Membership.objects.filter(user=user).values_list("room_id", flat=True)
    readable = reads.readable_rooms(user.pk, list(ids))
    return list(Room.objects.filter(pk__in=readable))


def _matching(qs: QuerySet[Message], q: str, parsed: Parsed) -> QuerySet[Message]:
    if connection.vendor == "postgresql":
        # The generated column is not on the model (see migration 0010): named here, once.
        vector = RawSQL(f'"{Message._meta.db_table}"."{COLUMN}"', [], SearchVectorField())
        query = SearchQuery(q, config=CONFIG, search_type="websearch")
        return qs.alias(vector=vector).filter(vector=query)
    either = Q(pk__in=[])
    for group in parsed.groups:
        every = Q()
        for clause in group:
            found = Q(body__icontains=" ".join(clause.words))
            every &= ~found if clause.negated else found
        either |= every
    return qs.filter(either)


def search(
    user: Any,
    q: Any,
    room: Any = None,
    author: Any = None,
    limit: Any = None,
    before: Any = None,
) -> dict[str, Any]:
    """`{"results": [...], "rooms": {slug: title}, "next": id or null}`; every argument as the
    client sent it (query-string strings, or None when absent)."""
    text, parsed = clean_query(q)
    size = cleaning.clean_limit(limit, "limit", 1, LIMIT_MAX, default=LIMIT_DEFAULT)
    cursor = None if before in (None, "") else cleaning.clean_id(before, "before")
    if author == "":
        author = None
    if author is not None:
        author = cleaning.clean_username(author, "author")
    rooms = scope(user, room if room != "" else None)
    # The predicate of the partial GIN index, so the planner may use it (and what is hidden,
    # deleted or erased is never found on any database).
    qs = Message.objects.filter(room__in=rooms, deleted=False, hidden=False)
    if author is not None:
        qs = qs.filter(**{f"author__{get_user_model().USERNAME_FIELD}": author})
    if cursor is not None:
        qs = qs.filter(pk__lt=cursor)
    rows = list(
        _matching(qs, text, parsed)
        .order_by("-pk")
        .values_list("pk", "room_id", "seq", username_lookup("author"), "created", "body")[
            : size + 1
        ]
    )
    more = len(rows) > size
    rows = rows[:size]
    by_id = {r.pk: r for r in rooms}
    terms = parsed.terms
    results = [
        {
            "room": by_id[room_id].slug,
            "seq": seq,
            "id": pk,
            "author": name,
            "created": created.isoformat(),
            "body": body,
            "highlight": highlight(body, terms),
        }
        for pk, room_id, seq, name, created, body in rows
    ]
    found = {by_id[room_id] for _hit, room_id, *_rest in rows}
    people = reads.dm_members([r for r in found if r.is_dm])
    titles = {
        r.slug: reads.dm_view(r, people.get(r.pk, []), user)["title"] if r.is_dm else r.title
        for r in sorted(found, key=lambda r: r.slug)
    }
    return {"results": results, "rooms": titles, "next": rows[-1][0] if more else None}
