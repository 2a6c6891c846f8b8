"""Report content as a list of blocks, serialized to Markdown or to self-contained HTML."""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Heading:
    """Section title. Level 1 is the document title."""

    text: str
    level: int


@dataclass(frozen=True)
class Paragraph:
    """Plain text paragraph without inline markup."""

    text: str


@dataclass(frozen=True)
class BulletList:
    """Unordered list of plain text items."""

    items: tuple[str, ...]


@dataclass(frozen=True)
class Table:
    """Table of plain text cells, with one cell per header in every row."""

    headers: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]


@dataclass(frozen=True)
class Image:
    """PNG figure with its path relative to the report (``link``) and its path on disk (``file``)."""

    caption: str
    link: str
    file: Path


Block = Heading | Paragraph | BulletList | Table | Image

# Characters that start inline markup in CommonMark and GitHub Flavored Markdown.
_MARKDOWN_SPECIAL = "\\`*_[]<>|#"

_STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", Helvetica, Arial, sans-serif;
       max-width: 1200px; margin: 2em auto; padding: 0 1em; color: #1a1a1a; line-height: 1.45; }
h1 { border-bottom: 2px solid #ccc; padding-bottom: 0.2em; }
h2 { margin-top: 1.8em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: left; vertical-align: top; }
th { background: #f2f2f2; }
tbody tr:nth-child(even) { background: #fafafa; }
figure { margin: 1.5em 0; }
figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { font-size: 0.9em; color: #555; }
"""


def escape_markdown(text: str) -> str:
    """Escape the characters of ``text`` that Markdown would read as markup.

    Args:
        text: plain text.

    Returns:
        The text with a backslash before each markup character.
    """
    return "".join(f"\\{character}" if character in _MARKDOWN_SPECIAL else character for character in text)


def to_markdown(blocks: Sequence[Block]) -> str:
    """Serialize ``blocks`` as a Markdown document.

    Args:
        blocks: report content in reading order.

    Returns:
        Markdown text that ends with a newline.
    """
    parts = [_block_to_markdown(block) for block in blocks]
    return "\n\n".join(parts) + "\n"


def to_html(blocks: Sequence[Block], title: str) -> str:
    """Serialize ``blocks`` as one HTML page with inline CSS and base64-embedded PNG images.

    The page references no external file, script, font or URL, so it opens from disk offline.

    Args:
        blocks: report content in reading order.
        title: text of the ``<title>`` element.

    Returns:
        The HTML document.

    Raises:
        OSError: an image file cannot be read.
    """
    body = "\n".join(_block_to_html(block) for block in blocks)
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{html.escape(title)}</title>\n"
        f"<style>{_STYLE}</style>\n"
        f"</head>\n<body>\n{body}\n</body>\n</html>\n"
    )


def _block_to_markdown(block: Block) -> str:
    if isinstance(block, Heading):
        return f"{'#' * block.level} {escape_markdown(block.text)}"
    if isinstance(block, Paragraph):
        return escape_markdown(block.text)
    if isinstance(block, BulletList):
        return "\n".join(f"- {escape_markdown(item)}" for item in block.items)
    if isinstance(block, Table):
        header = "| " + " | ".join(escape_markdown(cell) for cell in block.headers) + " |"
        rule = "|" + "|".join("---" for _ in block.headers) + "|"
        lines = [header, rule]
        for row in block.rows:
            lines.append("| " + " | ".join(escape_markdown(cell) for cell in row) + " |")
        return "\n".join(lines)
    if isinstance(block, Image):
        # The caption is escaped, but the link is a relative path that this package writes.
        return f"![{escape_markdown(block.caption)}]({block.link})"
    raise TypeError(f"unsupported report block type {type(block).__name__}")


def _block_to_html(block: Block) -> str:
    if isinstance(block, Heading):
        return f"<h{block.level}>{html.escape(block.text)}</h{block.level}>"
    if isinstance(block, Paragraph):
        return f"<p>{html.escape(block.text)}</p>"
    if isinstance(block, BulletList):
        items = "\n".join(f"<li>{html.escape(item)}</li>" for item in block.items)
        return f"<ul>\n{items}\n</ul>"
    if isinstance(block, Table):
        header = "".join(f"<th>{html.escape(cell)}</th>" for cell in block.headers)
        rows = "\n".join(
            "<tr>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in row) + "</tr>" for row in block.rows
        )
        return f"<table>\n<thead><tr>{header}</tr></thead>\n<tbody>\n{rows}\n</tbody>\n</table>"
    if isinstance(block, Image):
        encoded = base64.b64encode(block.file.read_bytes()).decode("ascii")
        caption = html.escape(block.caption)
        return (
            f'<figure><img src="data:image/png;base64,{encoded}" alt="{caption}">'
            f"<figcaption>{caption}</figcaption></figure>"
        )
    raise TypeError(f"unsupported report block type {type(block).__name__}")
