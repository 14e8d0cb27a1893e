"""Templates: what Django would silently show as text."""

from __future__ import annotations

from tests.conftest import ROOT

# The site's templates and the app's own (chat/templates/chat/).
TEMPLATE_DIRS = [ROOT / "templates", ROOT / "chat" / "templates"]


def test_no_template_comment_spans_lines() -> None:
    # `{# … #}` is a one-line comment: one left open on its line is rendered as page text.
    open_comments = [
        f"{path.relative_to(ROOT)}:{number}"
        for folder in TEMPLATE_DIRS
        for path in sorted(folder.rglob("*.html"))
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if line.count("{#") > line.count("#}")
    ]
    assert open_comments == []
    assert all(any(folder.rglob("*.html")) for folder in TEMPLATE_DIRS)
