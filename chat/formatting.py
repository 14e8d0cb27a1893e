"""Message bodies as HTML: a markdown subset rendered on the server, then sanitized.

`body` stays the source (edits, the API and search read it); `html` is derived from it once, when
the message is written, and stored beside it. Measured on this machine: 0.03 ms for a short line,
0.6 ms for 200 characters of markdown with links and a mention, so a page of 100 such messages
would cost 60 ms per read if rendered per event, and every resume and long-poll answer again.

Two layers, each enough on its own: markdown-it-py parses with raw HTML disabled and its link
validator (no `javascript:`, `vbscript:`, `file:` or `data:` links), and nh3 (ammonia) then keeps only
an allowlist of tags, attributes, classes and URL schemes, and sets every link's `rel` and `target`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any

import nh3
from markdown_it import MarkdownIt
from markdown_it.rules_core import StateCore
from markdown_it.token import Token

# The markdown subset: emphasis, strikethrough, inline code, fences, quotes, lists, links. Headings,
# tables, images, horizontal rules and indented code stay plain text (a chat line that starts with
# "#" or four spaces means nothing special).
RULES = [
    "emphasis",
    "strikethrough",
    "backticks",
    "fence",
    "blockquote",
    "list",
    "link",
    "autolink",
    "newline",
    "escape",
    "entity",
]
OPTIONS = {"html": False, "breaks": True, "typographer": False}
_md = MarkdownIt("zero", {**OPTIONS, "linkify": True}).enable([*RULES, "linkify"])
# The fuzzy linkifier also takes bare domains ("example.com"); a chat line names many.
_md.linkify.set({"fuzzy_link": True, "fuzzy_email": False})
# The same without the linkifier, for text in which it could find nothing: it scans every text
# token with many expressions, and was most of a post's rendering time (bench/fanout.py at
# 320 posts/s: p99 256 ms with it on every body, 87 ms with no rendering at all).
_md_plain = MarkdownIt("zero", {**OPTIONS, "linkify": False}).enable(RULES)
# What the linkifier can link: a scheme ("://"), or a dot before at least two letters (a domain's
# top level, "www." included); it links no bare IPs and no emails (fuzzy_email is off).
_MAYBE_LINK = re.compile(r"://|[\w-]\.[^\W\d_]{2,}")

# Kept in step with chat.notify.MENTION (a test checks): the names the write path found are those
# this drawing turns into chips, and nothing else does.
MENTION = re.compile(r"(?<![\w@.+-])@([\w.@+-]{1,150})")

TAGS = {
    "p",
    "br",
    "strong",
    "em",
    "s",
    "del",
    "code",
    "pre",
    "blockquote",
    "ul",
    "ol",
    "li",
    "a",
    "span",
}
ATTRIBUTES = {"a": {"href"}, "span": {"data-user"}, "ol": {"start"}}
CLASSES = {"span": {"mention"}}
SCHEMES = {"http", "https", "mailto"}
REL = "nofollow noopener noreferrer"


def _mentions_rule(names: set[str]):  # type: ignore[no-untyped-def]
    def rule(state: StateCore) -> None:
        for block in state.tokens:
            if block.type != "inline" or not block.children:
                continue
            children: list[Token] = []
            inside_link = 0
            for token in block.children:
                if token.type == "link_open":
                    inside_link += 1
                elif token.type == "link_close":
                    inside_link -= 1
                if token.type != "text" or inside_link:
                    children.append(token)
                    continue
                children.extend(_split_mentions(token, names))
            block.children = children

    return rule


def _split_mentions(token: Token, names: set[str]) -> Iterable[Token]:
    text = token.content
    at = 0
    for match in MENTION.finditer(text):
        name = match.group(1)
        # "@bob." mentions bob: the write path tries the name without trailing punctuation too.
        for option in (name, name.rstrip(".-+@")):
            if option in names:
                break
        else:
            continue
        start = match.start()
        if start > at:
            yield _text(text[at:start])
        chip = Token("mention", "span", 0)
        chip.content = option
        yield chip
        at = start + 1 + len(option)
    if at < len(text):
        yield _text(text[at:])


def _text(content: str) -> Token:
    token = Token("text", "", 0)
    token.content = content
    return token


def _escape(text: str) -> str:
    return (
        text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")
    )


def _mention(self: Any, tokens: Sequence[Token], idx: int, options: Any, env: Any) -> str:
    name = _escape(tokens[idx].content)
    return f'<span class="mention" data-user="{name}">@{name}</span>'


for _renderer in (_md, _md_plain):
    _renderer.add_render_rule("mention", _mention)


def sanitize(html: str) -> str:
    return nh3.clean(
        html,
        tags=TAGS,
        attributes=ATTRIBUTES,
        allowed_classes=CLASSES,
        url_schemes=SCHEMES,
        link_rel=REL,
        set_tag_attribute_values={"a": {"target": "_blank"}},
        strip_comments=True,
        # A relative link points into this site (or, percent-encoded, at nothing): links go out.
        url_relative="deny",
    )


# The most UTF-8 bytes of markup a body may grow to. Links and mentions grow several times (a
# 4,000-character list of bare domains became 65 KB), and an event goes to a serverless client
# as one API Gateway post of at most 32 KB (chat/apigateway.py drops a larger one, on every
# resume too): body and html must fit in it together.
MAX_HTML = 16 * 1024


def plain(body: str) -> str:
    """The body as text in one paragraph, line breaks kept: never larger than the escaped text."""
    return "<p>" + _escape(body).replace("\n", "<br>\n") + "</p>"


# A one-line body of words, digits and the plainest punctuation, not starting with a list's
# number: markdown changes nothing in it and nothing in it needs escaping, so its html is the text
# in a paragraph. Parsing and sanitizing such a line cost more of a post's CPU than writing it.
_PLAIN = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9 ,.?!']*[A-Za-z0-9,.?!'])?")
_LIST_START = re.compile(r"\d+\.")


def render(body: str, mentions: Iterable[str] = ()) -> str:
    """The sanitized HTML of a message body; `mentions` are the names the write path found in it
    (those who may read the room, and "room" for @room)."""
    if not body:
        return ""
    if _PLAIN.fullmatch(body) and not _LIST_START.match(body) and not _MAYBE_LINK.search(body):
        return f"<p>{body}</p>"
    names = set(mentions)
    env: dict[str, Any] = {}
    md = _md if _MAYBE_LINK.search(body) else _md_plain
    tokens = md.parse(body, env)
    if names:
        state = StateCore(body, md, env)
        state.tokens = tokens
        _mentions_rule(names)(state)
    html = sanitize(md.renderer.render(tokens, md.options, env)).strip()
    if len(html.encode()) > MAX_HTML:
        # Too much markup to send: the text alone, which always fits beside the body.
        return plain(body)
    return html
