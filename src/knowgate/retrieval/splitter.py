"""Cut Markdown and plain text into passages small enough to embed well.

Markdown is parsed with ``markdown-it-py`` (a CommonMark parser) rather than with regular
expressions, so a ``#`` inside a code fence is not mistaken for a heading and setext headings
count. Sections follow headings; blocks are packed into passages of at most
:attr:`SplitterConfig.chunk_words` words, and only a block longer than that is cut mid-way.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

from markdown_it import MarkdownIt
from markdown_it.token import Token

from knowgate.retrieval.config import SplitterConfig

TITLE_SEPARATOR = " › "
_BLANK_LINES = re.compile(r"\n\s*\n")


@dataclass(frozen=True)
class Chunk:
    """One passage cut from a file.

    Attributes:
        title: the document title, plus the heading path for Markdown sections.
        text: the passage text (block formatting kept; windows of long blocks are re-joined
            with single spaces).
        section: the heading path inside the file, empty for text before the first heading.
    """

    title: str
    text: str
    section: str = ""


@lru_cache(maxsize=1)
def _parser() -> MarkdownIt:
    return MarkdownIt("commonmark").enable("table")


def split_markdown(source: str, default_title: str, config: SplitterConfig) -> list[Chunk]:
    """Split a Markdown document into titled passages.

    Args:
        source: the Markdown text.
        default_title: the title when the document has no level-1 heading (the file name).
        config: passage size and heading handling.

    Returns:
        The passages in document order; sections without text produce none.
    """
    lines = source.splitlines()
    tokens = _parser().parse(source)
    doc_title = _first_h1(tokens) or default_title

    sections: list[tuple[tuple[str, ...], list[str]]] = [((), [])]
    path: list[tuple[int, str]] = []  # (heading level, heading text) of the open headings
    for i, token in enumerate(tokens):
        if token.level != 0 or token.nesting < 0 or token.map is None:
            continue
        start, end = token.map
        block = "\n".join(lines[start:end]).strip()
        if token.type == "heading_open":
            level = int(token.tag[1:])
            heading = _inline_text(tokens[i + 1]) if i + 1 < len(tokens) else ""
            if not config.split_on_headings:
                sections[-1][1].append(block)
                continue
            path = [(lv, h) for lv, h in path if lv < level]
            path.append((level, heading))
            sections.append((tuple(h for _, h in path), []))
        elif block:
            sections[-1][1].append(block)

    chunks: list[Chunk] = []
    for heading_path, blocks in sections:
        if not blocks:
            continue
        shown = list(heading_path)
        if shown and shown[0] == doc_title:
            shown = shown[1:]
        title = TITLE_SEPARATOR.join([doc_title, *shown])
        section = TITLE_SEPARATOR.join(heading_path)
        chunks.extend(Chunk(title, text, section) for text in pack_blocks(blocks, config))
    return chunks


def split_text(source: str, title: str, config: SplitterConfig) -> list[Chunk]:
    """Split plain text at blank lines and pack the paragraphs into passages."""
    blocks = [b.strip() for b in _BLANK_LINES.split(source) if b.strip()]
    return [Chunk(title, text) for text in pack_blocks(blocks, config)]


def pack_blocks(blocks: list[str], config: SplitterConfig) -> list[str]:
    """Greedily pack whole blocks into passages of at most ``chunk_words`` words.

    A block longer than ``chunk_words`` becomes overlapping word windows of its own, so no
    passage is longer than the limit and short blocks are never split.
    """
    limit, overlap = config.chunk_words, config.overlap_words
    passages: list[str] = []
    current: list[str] = []
    current_words = 0
    for block in blocks:
        n_words = len(block.split())
        if n_words == 0:
            continue
        if n_words > limit:
            if current:
                passages.append("\n\n".join(current))
                current, current_words = [], 0
            passages.extend(word_windows(block, limit, overlap))
            continue
        if current and current_words + n_words > limit:
            passages.append("\n\n".join(current))
            current, current_words = [], 0
        current.append(block)
        current_words += n_words
    if current:
        passages.append("\n\n".join(current))
    return passages


def word_windows(text: str, size: int, overlap: int) -> list[str]:
    """Windows of ``size`` words, each starting ``size - overlap`` words after the previous."""
    words = text.split()
    step = size - overlap
    windows = []
    for start in range(0, len(words), step):
        windows.append(" ".join(words[start : start + size]))
        if start + size >= len(words):
            break
    return windows


def _first_h1(tokens: list[Token]) -> str | None:
    for i, token in enumerate(tokens):
        if token.type == "heading_open" and token.tag == "h1" and i + 1 < len(tokens):
            text = _inline_text(tokens[i + 1])
            if text:
                return text
    return None


def _inline_text(token: Token) -> str:
    """The visible text of an inline token (markup such as backticks and emphasis removed)."""
    if token.type != "inline":
        return ""
    if not token.children:
        return token.content.strip()
    parts = [
        child.content
        for child in token.children
        if child.type in ("text", "code_inline", "html_inline")
    ]
    return "".join(parts).strip()
