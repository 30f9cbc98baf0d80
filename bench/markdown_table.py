"""Rewrite the generated part of a Markdown document, keeping the prose around it."""

from __future__ import annotations

from pathlib import Path


def write_between_markers(path: Path, name: str, content: str, title: str = "") -> None:
    """Put ``content`` between ``<!-- name -->`` and ``<!-- /name -->`` in ``path``.

    A document without the markers gets the block appended (a new one starts with ``title``).
    """
    start, end = f"<!-- {name} -->", f"<!-- /{name} -->"
    text = path.read_text(encoding="utf-8") if path.exists() else (f"# {title}\n" if title else "")
    block = f"{start}\n{content.rstrip()}\n{end}"
    if start in text and end in text:
        before, rest = text.split(start, 1)
        text = before + block + rest.split(end, 1)[1]
    else:
        text = text.rstrip() + f"\n\n{block}\n"
    path.write_text(text, encoding="utf-8")
