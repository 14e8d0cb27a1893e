"""Message bodies drawn as HTML: the markdown subset, and a corpus of hostile inputs that must
render to nothing executable (the browser half is in tests/test_browser_messages.py)."""

from __future__ import annotations

import re
from html.parser import HTMLParser

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chat import formatting, notify

# Each would run script, load something or escape the allowlist if it got through.
HOSTILE = [
    "<script>window.pwned = 1</script>",
    "<img src=x onerror='window.pwned=1'>",
    "<svg onload=window.pwned=1>",
    '<a href="javascript:window.pwned=1">x</a>',
    "[click](javascript:window.pwned=1)",
    "[click](JaVaScRiPt:window.pwned=1)",
    "[click](java\tscript:window.pwned=1)",
    "[click](javascript&#58;window.pwned=1)",
    "[click](&#106;avascript:window.pwned=1)",
    "[click](%6Aavascript:window.pwned=1)",
    "[click](data:text/html;base64,PHNjcmlwdD53aW5kb3cucHduZWQ9MTwvc2NyaXB0Pg==)",
    "[click](vbscript:msgbox)",
    "[click](file:///etc/passwd)",
    "<javascript:window.pwned=1>",
    "![img](javascript:window.pwned=1)",
    '[x](https://example.com "title" onclick="window.pwned=1")',
    '[x](https://example.com"onmouseover="window.pwned=1)',
    "**<script>window.pwned=1</script>**",
    "`<script>window.pwned=1</script>`",
    "```html\n<script>window.pwned=1</script>\n```",
    "> <iframe src=javascript:window.pwned=1>",
    "- <style>body{display:none}</style>",
    "&lt;script&gt;window.pwned=1&lt;/script&gt;",
    "&#60;script&#62;window.pwned=1&#60;/script&#62;",
    "<<script>script>window.pwned=1<</script>/script>",
    "<!-- x --><script>window.pwned=1</script>",
    "[[x](javascript:window.pwned=1)](https://example.com)",
    "**_~~`[x](javascript:window.pwned=1)`~~_**",
    "*" * 500 + "x" + "_" * 500,
    "> " * 200 + "deep",
    "[" * 300 + "x" + "](javascript:1)" * 50,
    "<a href='https://example.com' onclick='window.pwned=1'>x</a>",
    "@<script>window.pwned=1</script>",
    "<form action=javascript:window.pwned=1><button>x</button></form>",
    "<math><mtext><table><mglyph><style><img src=x onerror=window.pwned=1>",
    "\u0000<script>window.pwned=1</script>",
    "https://example.com/<script>window.pwned=1</script>",
    'www.example.com/"onmouseover="window.pwned=1',
]

ALLOWED_TAGS = formatting.TAGS
ALLOWED_ATTRIBUTES = {"href", "target", "rel", "class", "data-user", "start"}


class Audit(HTMLParser):
    """Every tag and attribute in a piece of HTML, as a browser's tokenizer would see them."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))


def audit(html: str) -> list[tuple[str, dict[str, str | None]]]:
    parser = Audit()
    parser.feed(html)
    parser.close()
    return parser.tags


@pytest.mark.parametrize("source", HOSTILE)
def test_hostile_input_renders_to_nothing_executable(source: str) -> None:
    html = formatting.render(source, ["bob"])
    for tag, attrs in audit(html):
        assert tag in ALLOWED_TAGS, (tag, html)
        assert set(attrs) <= ALLOWED_ATTRIBUTES, (attrs, html)
        if tag == "a":
            # A link without href (a relative one was dropped) goes nowhere.
            href = attrs.get("href")
            assert href is None or re.match(r"^(https?:|mailto:)", href), html
            assert attrs["rel"] == "nofollow noopener noreferrer"
            assert attrs["target"] == "_blank"
        if "class" in attrs:
            assert (tag, attrs["class"]) == ("span", "mention")
    assert "<script" not in html.lower()


def test_it_renders_the_markdown_subset() -> None:
    html = formatting.render("**bold** _it_ ~~gone~~ `a < b`")
    assert html == "<p><strong>bold</strong> <em>it</em> <s>gone</s> <code>a &lt; b</code></p>"


def test_fenced_code_keeps_its_whitespace() -> None:
    html = formatting.render("```\nif x:\n    return  1\n```")
    assert html == "<pre><code>if x:\n    return  1\n</code></pre>"


def test_quotes_and_lists() -> None:
    html = formatting.render("> quoted\n\n- one\n- two\n\n3. three")
    assert "<blockquote>\n<p>quoted</p>\n</blockquote>" in html
    assert "<ul>\n<li>one</li>\n<li>two</li>\n</ul>" in html
    assert '<ol start="3">' in html


def test_urls_are_linked_with_rel_and_target() -> None:
    html = formatting.render(
        "see https://example.com/a?b=1&c=2 and [docs](https://docs.example.org)"
    )
    assert (
        '<a href="https://example.com/a?b=1&amp;c=2" target="_blank" '
        'rel="nofollow noopener noreferrer">https://example.com/a?b=1&amp;c=2</a>'
    ) in html
    assert '<a href="https://docs.example.org" target="_blank"' in html


def test_headings_and_raw_html_stay_text() -> None:
    assert formatting.render("# not a heading") == "<p># not a heading</p>"
    assert formatting.render("<b>x</b>") == "<p>&lt;b&gt;x&lt;/b&gt;</p>"


def test_only_found_mentions_become_chips() -> None:
    html = formatting.render("hi @bob and @nobody, `@bob` stays code", ["bob"])
    assert '<span class="mention" data-user="bob">@bob</span>' in html
    assert "@nobody" in html and 'data-user="nobody"' not in html
    assert "<code>@bob</code>" in html


def test_a_mention_followed_by_punctuation_is_still_one() -> None:
    html = formatting.render("thanks @bob.", ["bob"])
    assert html == '<p>thanks <span class="mention" data-user="bob">@bob</span>.</p>'


def test_the_mention_pattern_is_the_write_paths() -> None:
    assert formatting.MENTION.pattern == notify.MENTION.pattern


def test_an_empty_body_renders_empty() -> None:
    assert formatting.render("") == ""


@given(
    st.text(
        alphabet=st.sampled_from(list("abcxyz019 .:/-_@*~`[]()<>#!\n\u00e9\u0431\u4e2d")),
        max_size=60,
    )
)
@settings(max_examples=300, deadline=None)
def test_skipping_the_linkifier_never_changes_what_is_drawn(body: str) -> None:
    # The linkifier runs only where the pre-check says it could find something: wherever it
    # does not run, running it must give the same html.
    full = formatting._md
    tokens = full.parse(body, {})
    expected = formatting.sanitize(full.renderer.render(tokens, full.options, {})).strip()
    assert formatting.render(body) == (expected if body else "")


@given(
    st.text(alphabet=st.sampled_from(list("aZ09 ,.?!'")), min_size=1, max_size=40)
    | st.sampled_from(["1. one", "12. twelve", "ok.", "a.bc", "x  y", "Hi, bob!", "1.5 kg"])
)
@settings(max_examples=400, deadline=None)
def test_plain_lines_skip_markdown_and_draw_the_same(body: str) -> None:
    # A line the shortcut takes must draw exactly as markdown and the sanitizer draw it.
    full = formatting._md
    tokens = full.parse(body, {})
    expected = formatting.sanitize(full.renderer.render(tokens, full.options, {})).strip()
    assert formatting.render(body) == expected
