"""chat/cleaning.py: every cleaning function, given any JSON value with any Unicode in it, returns a
clean value of its type or refuses with a known ChatError code; never another exception."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import pytest
from django.utils import timezone
from hypothesis import given, settings
from hypothesis import strategies as st

from chat import cleaning
from chat.errors import ChatError

# Every code point, surrogates and NUL included (hypothesis leaves out Cs unless told).
any_char = st.characters(exclude_categories=())
any_text = st.text(any_char, max_size=80)
tricky_text = st.sampled_from(
    [
        "",
        " ",
        "\x00",
        "a\x00b",
        "\ud800",
        "x\udfff",
        "\t",
        "\n",
        "\r\n",
        "\x1b[31m",
        "\x7f",
        "\x85",
        "\u2028",
        "\u3000",
        "\u200b",
        "²",
        "١٢",
        "٣",
        "０",
        "+1",
        "-1",
        " 1",
        "1 ",
        "1.0",
        "1e3",
        "0x10",
        "1_000",
        "007",
        "9" * 19,
        "9" * 20,
        "1" * 5000,
        "x" * 4001,
        "general",
        "General",
        "a" * 51,
        "2030-01-01T00:00",
        "2030-13-45T99:00",
        "2030-01-01T00:00+99:00",
        "1700000000",
        "２０３０-01-01T00:00",
        "true",
        "null",
    ]
)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(),
    any_text,
    tricky_text,
)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(any_text, inner, max_size=3),
    max_leaves=6,
)
# Not a database test, but the suite's session fixtures expect the test database.
pytestmark = pytest.mark.django_db
CODES = {"bad_request", "too_large", "not_found"}
CHECK = settings(max_examples=300, deadline=None)


def _clean_or_refused(function: Callable[[Any], Any], value: Any) -> Any:
    """The cleaned value, or None after checking the refusal is a known, encodable error."""
    try:
        return function(value)
    except ChatError as exc:
        assert exc.code in CODES, (exc.code, value)
        assert exc.detail.encode("utf-8")  # transports send it as is
        return None


def _encodable(text: str) -> None:
    text.encode("utf-8")
    assert "\x00" not in text


CLEANERS: dict[str, Callable[[Any], Any]] = {
    "text": lambda v: cleaning.clean_text(v, "reason", max_length=500, strip=True),
    "text_optional": lambda v: cleaning.clean_text(v, "reason", max_length=500, required=False),
    "body": lambda v: cleaning.clean_body(v, max_length=4000),
    "body_attachment": lambda v: cleaning.clean_body(v, max_length=4000, attachment=True),
    "line": lambda v: cleaning.clean_line(v, "title", max_length=100),
    "client_id": cleaning.clean_client_id,
    "slug": cleaning.clean_slug,
    "username": cleaning.clean_username,
    "cursor": lambda v: cleaning.clean_cursor(v, "after"),
    "id": cleaning.clean_id,
    "limit": lambda v: cleaning.clean_limit(v, "limit", 1, 100, 50),
    "seconds": lambda v: cleaning.clean_seconds(v, "timeout", cap=25, default=25),
    "until": cleaning.clean_until,
    "bool": lambda v: cleaning.clean_bool(v, "private"),
}


def _check_clean(kind: str, value: Any, result: Any) -> None:
    if kind in ("text", "text_optional", "body", "body_attachment"):
        assert type(result) is str
        _encodable(result)
        assert len(result) <= (500 if kind.startswith("text") else 4000)
        if kind in ("text", "body"):
            assert result.strip()
        if kind == "text":
            assert result == result.strip()
        if kind.startswith("body") and value is not None:
            assert result == value  # a body is stored as written
    elif kind == "line":
        assert type(result) is str and result and result == result.strip()
        _encodable(result)
        assert not any(ord(c) < 32 or 0x7F <= ord(c) <= 0x9F for c in result)
    elif kind == "client_id":
        assert result is None or (type(result) is str and 1 <= len(result) <= 64)
        if result is not None:
            _encodable(result)
            assert result == value
        else:
            assert value in (None, "")
    elif kind == "slug":
        assert type(result) is str and result == value and len(result) <= 50
        assert result.isascii() and result == result.lower()
    elif kind == "username":
        assert type(result) is str and result == value
        _encodable(result)
    elif kind in ("cursor", "id", "limit"):
        assert type(result) is int
        low, high = {"cursor": (0, 2**62), "id": (1, 2**62), "limit": (1, 100)}[kind]
        assert low <= result <= high
        if isinstance(value, str) and value:
            assert value.isascii() and value.isdigit() and int(value) == result
        elif value not in (None, ""):
            assert type(value) is int and value == result
    elif kind == "seconds":
        assert type(result) is float and 0 <= result <= 25
    elif kind == "until":
        if value in (None, ""):
            assert result is None
        else:
            assert isinstance(result, datetime) and timezone.is_aware(result)
            assert result > timezone.now() and isinstance(value, str) and value.isascii()
    elif kind == "bool":
        assert type(result) is bool and result is value
    else:  # pragma: no cover
        raise AssertionError(kind)


@pytest.mark.parametrize("kind", sorted(CLEANERS))
def test_every_cleaner_returns_a_clean_value_or_refuses(kind: str) -> None:
    @CHECK
    @given(json_values)
    def check(value: Any) -> None:
        result = _clean_or_refused(CLEANERS[kind], value)
        if result is not None or (kind in ("client_id", "until") and value in (None, "")):
            _check_clean(kind, value, result)

    check()


@pytest.mark.parametrize("kind", ["text", "body", "line", "client_id", "slug", "username"])
def test_text_with_any_code_point_is_clean_or_refused(kind: str) -> None:
    """Strings built from every code point, NUL and lone surrogates in the middle of them."""

    @CHECK
    @given(any_text, any_char, any_text)
    def check(before: str, middle: str, after: str) -> None:
        value = before + middle + after
        result = _clean_or_refused(CLEANERS[kind], value)
        if result is not None:
            _check_clean(kind, value, result)
            assert not any(0xD800 <= ord(c) <= 0xDFFF for c in result)

    check()


# --- what each kind refuses, and what it keeps ---


@pytest.mark.parametrize("value", ["a\x00b", "\ud800", "lone \udc00 low", "\x00"])
@pytest.mark.parametrize("kind", ["text", "body", "body_attachment", "line", "client_id"])
def test_nul_and_lone_surrogates_are_refused_everywhere(kind: str, value: str) -> None:
    with pytest.raises(ChatError) as refused:
        CLEANERS[kind](value)
    assert refused.value.code == "bad_request"
    assert "`" in refused.value.detail  # names the field


def test_text_keeps_newlines_tabs_and_any_script() -> None:
    body = "line one\n\tline two — 日本語 🎉 \u200d"
    assert cleaning.clean_body(body, max_length=4000) == body
    assert cleaning.clean_text("  why?  ", "reason", max_length=500, strip=True) == "why?"


def test_text_length_and_emptiness() -> None:
    with pytest.raises(ChatError) as refused:
        cleaning.clean_body("x" * 4001, max_length=4000)
    assert refused.value.code == "too_large" and "`body`" in refused.value.detail
    assert cleaning.clean_body("x" * 4000, max_length=4000) == "x" * 4000
    for empty in ("", "   ", "\u3000\n"):
        with pytest.raises(ChatError) as refused:
            cleaning.clean_body(empty, max_length=4000)
        assert refused.value.code == "bad_request"
    assert cleaning.clean_body(None, max_length=4000, attachment=True) == ""
    assert cleaning.clean_body("", max_length=4000, attachment=True) == ""
    with pytest.raises(ChatError):
        cleaning.clean_body(None, max_length=4000)
    with pytest.raises(ChatError):
        cleaning.clean_body(5, max_length=4000, attachment=True)


@pytest.mark.parametrize("value", ["a\nb", "tab\there", "\x1b[2J", "a\u2028b", "\x85", "\x7f"])
def test_a_line_has_no_control_characters(value: str) -> None:
    with pytest.raises(ChatError) as refused:
        cleaning.clean_line(value, "title", max_length=100)
    assert refused.value.code == "bad_request" and "`title`" in refused.value.detail


def test_a_line_is_stripped_and_not_empty() -> None:
    assert cleaning.clean_line("  Café ☕  ", "title", max_length=100) == "Café ☕"
    with pytest.raises(ChatError):
        cleaning.clean_line("\u3000", "title", max_length=100)
    with pytest.raises(ChatError) as refused:
        cleaning.clean_line("x" * 101, "title", max_length=100)
    assert refused.value.code == "too_large"


def test_client_ids() -> None:
    assert cleaning.clean_client_id(None) is None
    assert cleaning.clean_client_id("") is None
    assert cleaning.clean_client_id("x" * 64) == "x" * 64
    assert cleaning.clean_client_id("idée-1 🎉") == "idée-1 🎉"
    for bad in ("x" * 65, 7, ["a"], {"a": 1}, True, "a\tb", "a\nb", "\x00"):
        with pytest.raises(ChatError) as refused:
            cleaning.clean_client_id(bad)
        assert refused.value.code == "bad_request" and "`client_id`" in refused.value.detail


def test_a_slug_that_cannot_exist_is_no_such_room_never_cut() -> None:
    assert cleaning.clean_slug("general") == "general"
    assert cleaning.clean_slug("a" * 50) == "a" * 50
    for impossible in ("a" * 51, "General", "ＧＥＮ", "-x", "a b", "é"):
        with pytest.raises(ChatError) as refused:
            cleaning.clean_slug(impossible)
        assert refused.value.code == "not_found"
    for bad in ("", None, 1, ["general"], "gen\x00eral", "\ud800"):
        with pytest.raises(ChatError) as refused:
            cleaning.clean_slug(bad)
        assert refused.value.code == "bad_request" and "`room`" in refused.value.detail


def test_usernames() -> None:
    assert cleaning.clean_username("bob") == "bob"
    with pytest.raises(ChatError) as refused:
        cleaning.clean_username("b" * 151)
    assert refused.value.code == "not_found"
    for bad in ("", None, 3, "bo\x00b", "\udfff"):
        with pytest.raises(ChatError) as refused:
            cleaning.clean_username(bad)
        assert refused.value.code == "bad_request"


@pytest.mark.parametrize(
    "value",
    [
        "²",
        "١٢",
        "٣",
        "０",
        "+1",
        " 1",
        "1 ",
        "1.0",
        "1e3",
        "0x1",
        "1_0",
        "",
        "-1",
        "9" * 20,
        "1" * 5000,
        True,
        False,
        1.0,
        float("nan"),
        -1,
        2**62 + 1,
        2**80,
        None,
        [1],
        {"n": 1},
    ],
)
def test_cursors_are_ascii_digits_or_json_integers_only(value: Any) -> None:
    with pytest.raises(ChatError) as refused:
        cleaning.clean_cursor(value, "after")
    assert refused.value.code == "bad_request" and "`after`" in refused.value.detail


def test_cursors_ids_and_limits_accept_plain_numbers() -> None:
    assert cleaning.clean_cursor("0", "after") == 0
    assert cleaning.clean_cursor("007", "after") == 7
    assert cleaning.clean_cursor(2**62, "after") == 2**62
    assert cleaning.clean_cursor("4611686018427387904", "after") == 2**62
    assert cleaning.clean_id(12) == 12
    with pytest.raises(ChatError):
        cleaning.clean_id(0)
    assert cleaning.clean_limit(None, "limit", 1, 100, 50) == 50
    assert cleaning.clean_limit("", "limit", 1, 100, 50) == 50
    assert cleaning.clean_limit("100", "limit", 1, 100, 50) == 100
    for bad in ("0", "101", 101, "²", 5.0):
        with pytest.raises(ChatError) as refused:
            cleaning.clean_limit(bad, "limit", 1, 100, 50)
        assert "`limit`" in refused.value.detail


def test_seconds() -> None:
    assert cleaning.clean_seconds(None, "timeout", cap=25, default=25) == 25
    assert cleaning.clean_seconds("0", "timeout", cap=25, default=25) == 0
    assert cleaning.clean_seconds("2.5", "timeout", cap=25, default=25) == 2.5
    assert cleaning.clean_seconds(600, "timeout", cap=25, default=25) == 25
    for bad in ("١", "nan", "inf", "-1", "1e3", " 1", True, float("inf"), 2**2000, 3601):
        with pytest.raises(ChatError) as refused:
            cleaning.clean_seconds(bad, "timeout", cap=25, default=25)
        assert "`timeout`" in refused.value.detail


@pytest.mark.parametrize(
    "value",
    [
        "2030-13-45T99:00",
        "2030-01-01T00:00+99:00",
        "2030-01-01T25:00",
        "1700000000",
        1700000000,
        1.5,
        True,
        ["2030-01-01"],
        "20300101",
        "2030-W01-1",
        "２０３０-01-01T00:00",
        "١٢٣٤-01-01T00:00",
        "2000-01-01T00:00",
        "9999-12-31T23:59:59-23:59",
        "2030-01-01T00:00\x00",
        "2030-01-01T00:00\ud800",
        "soon",
    ],
)
def test_until_refuses_what_is_not_a_future_iso_time(value: Any) -> None:
    with pytest.raises(ChatError) as refused:
        cleaning.clean_until(value)
    assert refused.value.code == "bad_request" and "`until`" in refused.value.detail


def test_until_accepts_iso_times_and_makes_them_aware() -> None:
    assert cleaning.clean_until(None) is None
    assert cleaning.clean_until("") is None
    later = timezone.now() + timedelta(days=2)
    naive = later.replace(tzinfo=None).isoformat(timespec="seconds")
    parsed = cleaning.clean_until(naive)
    assert parsed is not None and timezone.is_aware(parsed)
    assert abs((parsed - later).total_seconds()) < 1
    offset = cleaning.clean_until(f"{later.date().isoformat()}T10:00+05:30")
    assert offset is not None and offset.utcoffset() == timedelta(hours=5, minutes=30)
    assert cleaning.clean_until(f"{later.year + 1}-01-01") is not None


def test_booleans_are_strict() -> None:
    assert cleaning.clean_bool(True, "private") is True
    assert cleaning.clean_bool(None, "private", default=False) is False
    for bad in (1, 0, "true", "false", None, [], 1.0):
        with pytest.raises(ChatError) as refused:
            cleaning.clean_bool(bad, "private")
        assert refused.value.code == "bad_request" and "`private`" in refused.value.detail


def test_until_takes_a_datetime_from_the_admin_or_the_code() -> None:
    from datetime import timedelta

    from django.utils import timezone

    later = timezone.now() + timedelta(days=1)
    assert cleaning.clean_until(later) == later
    naive = timezone.make_naive(later)
    assert cleaning.clean_until(naive) == timezone.make_aware(naive)
    with pytest.raises(ChatError) as refused:
        cleaning.clean_until(timezone.now() - timedelta(seconds=1))
    assert refused.value.code == "bad_request" and "`until`" in refused.value.detail
