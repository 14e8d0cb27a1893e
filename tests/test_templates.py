"""Templates: what Django would silently show as text."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import ROOT


def test_no_template_comment_spans_lines() -> None:
    # `{# … #}` is a one-line comment: one left open on its line is rendered as page text.
    open_comments = [
        f"{path.relative_to(ROOT)}:{number}"
        for path in sorted((ROOT / "templates").rglob("*.html"))
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if line.count("{#") > line.count("#}")
    ]
    assert open_comments == []
    assert any(Path(ROOT / "templates").rglob("*.html"))
