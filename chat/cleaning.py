"""One cleaning function per kind of field, for every entry point (the JSON API, both WebSocket
transports, long-poll, the pages).

Each takes a value as a client sent it (a JSON value, or a query-string string) and returns it clean
or raises `ChatError("bad_request", ...)` (`too_large` for text over its limit, `not_found` for a
name that cannot exist) with a detail naming the field. None of them raises anything else, whatever
the input, so a transport never turns hostile input into a 500.

Why here and not in each transport: a value one entry point accepts must never be refused by another,
nor by the database behind it. PostgreSQL refuses NUL in text, and a lone surrogate (U+D800–U+DFFF,
which JSON can carry as `"\\ud800"`) cannot be encoded as UTF-8 on the way to the database or back to
a socket; both are refused everywhere, SQLite included, so that all deployments agree. Numbers from
query strings are ASCII digits only: `str.isdigit()` also accepts `"²"` and `"١٢"`, which `int()`
refuses or reads differently.

Details never echo the value: it may be huge or unencodable.
"""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime
from typing import Any

from django.utils import timezone
from django.utils.dateparse import parse_datetime
from django.utils.translation import gettext as _

from chat.errors import ChatError

# Cursors, ids and limits fit a signed 64-bit column with room to spare.
MAX_INT = 2**62
# Enough digits for MAX_INT; longer strings are refused before int() sees them (Python refuses
# over 4,300 digits with its own ValueError).
_MAX_DIGITS = 19
CLIENT_ID_MAX = 64
SLUG_MAX = 50
USERNAME_MAX = 150
# Far enough for any ban, and converting to UTC cannot overflow a year-9999 datetime.
MAX_UNTIL = datetime(9000, 1, 1, tzinfo=UTC)

# What no text may hold: NUL (PostgreSQL refuses it) and lone surrogates (not encodable).
_FORBIDDEN = re.compile("[\x00\ud800-\udfff]")
# What no identifier or single line may hold besides: every C0 and C1 control, DEL, and the
# Unicode line and paragraph separators.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")
_ROOM_SLUG = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,48}[a-z0-9])?", re.ASCII)
# A date first (no bare numbers, week dates or basic forms), then only what times and offsets use:
# fromisoformat() stops reading at a NUL and would accept what follows it.
_ISO_TIME = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}(?:[T ][0-9:.,]+)?(?:Z|[+-][0-9:]+)?", re.ASCII)
_DECIMAL = re.compile(r"[0-9]{1,6}(?:\.[0-9]{1,6})?", re.ASCII)


def _refuse(field: str, what: str, code: str = "bad_request") -> ChatError:
    return ChatError(code, f"`{field}` {what}")


# --- text ---


def _string(
    value: Any, field: str, max_length: int, refused: re.Pattern[str], why: str, required: bool
) -> str:
    if not isinstance(value, str):
        raise _refuse(field, _("must be a string."))
    if len(value) > max_length:
        raise _refuse(
            field, _("is at most %(limit)s characters.") % {"limit": max_length}, "too_large"
        )
    if refused.search(value):
        raise _refuse(field, why)
    if required and not value.strip():
        raise _refuse(field, _("cannot be empty."))
    return value


def clean_text(
    value: Any,
    field: str,
    *,
    max_length: int,
    required: bool = True,
    strip: bool = False,
) -> str:
    """Free text that may span lines (a message body, a reason): a str of at most `max_length`
    characters with no NUL and no lone surrogate. `required` refuses text that is empty or only
    whitespace; `strip` returns it without surrounding whitespace (the limit applies before)."""
    why = _("cannot contain NUL or unpaired surrogate characters.")
    value = _string(value, field, max_length, _FORBIDDEN, why, required)
    return value.strip() if strip else value


def clean_body(
    value: Any, *, max_length: int, attachment: bool = False, field: str = "body"
) -> str:
    """A message body as written (not stripped). With an attachment it may be empty or absent
    (None becomes ""): a file needs no caption."""
    if attachment and value is None:
        return ""
    return clean_text(value, field, max_length=max_length, required=not attachment)


def clean_line(value: Any, field: str, *, max_length: int, required: bool = True) -> str:
    """A short single line (a room title): stripped, at most `max_length` characters, and no
    control character at all (tabs and newlines included): it is shown in headers, lists and the
    admin, where a line break or an escape sequence would only deceive."""
    why = _("must be one line without control characters.")
    return _string(value, field, max_length, _CONTROL, why, required).strip()


# --- identifiers ---


def clean_identifier(value: Any, field: str, *, max_length: int) -> str:
    """A name a client chose or gives back (a client_id): a non-empty str of at most
    `max_length` characters with no control characters. Too long is refused, never cut: a cut
    name is another name."""
    if not isinstance(value, str) or not value:
        raise _refuse(
            field,
            _("must be a non-empty string of at most %(limit)s characters.")
            % {"limit": max_length},
        )
    if len(value) > max_length:
        raise _refuse(
            field,
            _("must be a non-empty string of at most %(limit)s characters.")
            % {"limit": max_length},
        )
    if _CONTROL.search(value):
        raise _refuse(field, _("cannot contain control or unpaired surrogate characters."))
    return value


def clean_client_id(value: Any, field: str = "client_id") -> str | None:
    """The sender's idempotency key: absent (None or "") or an identifier of up to 64 characters."""
    if value is None or value == "":
        return None
    return clean_identifier(value, field, max_length=CLIENT_ID_MAX)


def clean_slug(value: Any, field: str = "room") -> str:
    """The slug of a room to look up. A string that cannot be a room's slug (too long, other
    characters) is `not_found`, like a room that does not exist, and is never cut to fit."""
    if not isinstance(value, str) or not value:
        raise _refuse(field, _("must be a room slug."))
    if _CONTROL.search(value):
        raise _refuse(field, _("cannot contain control or unpaired surrogate characters."))
    if len(value) > SLUG_MAX or not _ROOM_SLUG.fullmatch(value):
        raise ChatError("not_found", _("There is no such room."))
    return value


# Slugs that name pages and endpoints beside the rooms' own (/api/rooms/directory): a room with
# one of these names could never be reached there.
RESERVED_SLUGS = frozenset({"directory"})


def clean_new_slug(value: Any, field: str = "slug") -> str:
    """The slug of a room being made: exactly what clean_slug() will find later (no trailing
    newline, which a `$`-anchored pattern would let through), and not a reserved name."""
    if not isinstance(value, str) or len(value) > SLUG_MAX or not _ROOM_SLUG.fullmatch(value):
        raise _refuse(
            field,
            _("is 1–50 lowercase letters, digits and dashes, not starting or ending with a dash."),
        )
    if value in RESERVED_SLUGS:
        raise _refuse(
            field, _("cannot be %(name)r: that name is taken by the site.") % {"name": value}
        )
    return value


def clean_username(value: Any, field: str = "user") -> str:
    """A username to look up; one too long to exist is `not_found`."""
    if not isinstance(value, str) or not value:
        raise _refuse(field, _("must be a username."))
    if _CONTROL.search(value):
        raise _refuse(field, _("cannot contain control or unpaired surrogate characters."))
    if len(value) > USERNAME_MAX:
        raise ChatError("not_found", _("There is no such user."))
    return value


# --- numbers ---


def clean_int(value: Any, field: str, *, lo: int, hi: int) -> int:
    """An integer in lo..hi: a JSON integer, or a string of ASCII digits (a query string).
    Refused: booleans (True is an int in Python), floats (1.0 included), signs, spaces,
    exponents and every non-ASCII digit."""
    number: int | None = None
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif (
        isinstance(value, str)
        and 0 < len(value) <= _MAX_DIGITS
        and value.isascii()
        and value.isdigit()  # ASCII only here, so exactly 0-9
    ):
        number = int(value)
    if number is None or not lo <= number <= hi:
        raise _refuse(field, _("must be an integer from %(lo)s to %(hi)s.") % {"lo": lo, "hi": hi})
    return number


def clean_cursor(value: Any, field: str) -> int:
    """A stream cursor (`after`, `before`, a read `seq`): 0 or more."""
    return clean_int(value, field, lo=0, hi=MAX_INT)


def clean_id(value: Any, field: str = "id") -> int:
    """A row id (a message, a restriction): 1 or more."""
    return clean_int(value, field, lo=1, hi=MAX_INT)


def clean_limit(value: Any, field: str, lo: int, hi: int, default: int) -> int:
    """A page size or similar bound: `default` when absent (None or "")."""
    if value is None or value == "":
        return default
    return clean_int(value, field, lo=lo, hi=hi)


def clean_seconds(value: Any, field: str, *, cap: float, default: float) -> float:
    """A duration in seconds (a long-poll `timeout`): a JSON number or an ASCII decimal string
    from 0 to an hour, capped at `cap`; `default` when absent."""
    if value is None or value == "":
        return float(default)
    seconds: float | None = None
    if isinstance(value, int) and not isinstance(value, bool):
        seconds = float(value) if 0 <= value <= 3600 else None  # float() of a huge int overflows
    elif isinstance(value, float):
        seconds = value if math.isfinite(value) else None
    elif isinstance(value, str) and _DECIMAL.fullmatch(value):
        seconds = float(value)
    if seconds is None or not 0 <= seconds <= 3600:
        raise _refuse(field, _("must be a number of seconds from 0 to 3600."))
    return min(seconds, float(cap))


# --- times and flags ---


def clean_until(value: Any, field: str = "until") -> datetime | None:
    """An end time in ISO 8601 (`2030-01-31T12:00`, an offset or Z optional), aware and in the
    future; None for absent (None or ""). A naive time is in the current time zone. Bare numbers
    (epoch seconds?) and ISO week or basic forms are refused: they are too easy to misread."""
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        parsed: datetime | None = value  # from the admin's form or the code itself
    elif not isinstance(value, str) or len(value) > 64 or not _ISO_TIME.fullmatch(value):
        raise _refuse(field, _("must be an ISO 8601 date and time."))
    else:
        try:
            parsed = parse_datetime(value)
        except ValueError:  # a month 13, an offset of 99 hours
            parsed = None
    if parsed is None:
        raise _refuse(field, _("must be an ISO 8601 date and time."))
    if timezone.is_naive(parsed):
        parsed = timezone.make_aware(parsed)
    try:
        in_utc = parsed.astimezone(UTC)
    except (OverflowError, ValueError):
        in_utc = MAX_UNTIL
    if in_utc >= MAX_UNTIL:
        raise _refuse(field, _("is too far in the future."))
    if in_utc <= timezone.now():
        raise _refuse(field, _("must be in the future."))
    return parsed


def echo(value: Any, max_length: int = 100) -> str | None:
    """A frame's own `client_id` or `room`, to label an error reply: as sent when it is a short
    clean string, else None. Never echo what cannot be encoded back onto the socket (a lone
    surrogate closed it) or what would make the reply huge."""
    if isinstance(value, str) and len(value) <= max_length and not _CONTROL.search(value):
        return value
    return None


def clean_bool(value: Any, field: str, default: bool | None = None) -> bool:
    """Strictly true or false: not 0/1, not "true". With a default, None means the default."""
    if value is None and default is not None:
        return default
    if not isinstance(value, bool):
        raise _refuse(field, _("must be true or false."))
    return value
