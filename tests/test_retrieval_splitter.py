"""The Markdown / text splitter: sections follow headings, passages respect the size limit."""

from __future__ import annotations

import pytest

from knowgate.errors import ConfigError
from knowgate.retrieval import SplitterConfig
from knowgate.retrieval.splitter import (
    TITLE_SEPARATOR,
    pack_blocks,
    split_markdown,
    split_text,
    word_windows,
)

MARKDOWN = """# Knowledge base

Intro paragraph about the base.

## Building

Run the build command.

```bash
# this is a shell comment, not a heading
knowgate index build docs --out kb
```

### Options

- one
- two

Searching
---------

Use `knowgate index search`.

## Empty section

## Last

Final words.
"""


def test_markdown_sections_get_heading_path_titles() -> None:
    chunks = split_markdown(MARKDOWN, "fallback", SplitterConfig())
    titles = [c.title for c in chunks]
    assert titles == [
        "Knowledge base",
        f"Knowledge base{TITLE_SEPARATOR}Building",
        f"Knowledge base{TITLE_SEPARATOR}Building{TITLE_SEPARATOR}Options",
        f"Knowledge base{TITLE_SEPARATOR}Searching",
        f"Knowledge base{TITLE_SEPARATOR}Last",
    ]
    building = chunks[1].text
    assert "Run the build command." in building
    assert "# this is a shell comment, not a heading" in building  # fence kept whole
    assert "- one\n- two" in chunks[2].text
    assert chunks[1].section == f"Knowledge base{TITLE_SEPARATOR}Building"


def test_markdown_without_h1_uses_file_title() -> None:
    chunks = split_markdown("Some text.\n\n## Part\n\nMore.", "my-notes", SplitterConfig())
    assert [c.title for c in chunks] == ["my-notes", f"my-notes{TITLE_SEPARATOR}Part"]


def test_split_on_headings_off_keeps_one_stream() -> None:
    config = SplitterConfig(split_on_headings=False, chunk_words=1000)
    chunks = split_markdown(MARKDOWN, "fallback", config)
    assert len(chunks) == 1
    assert chunks[0].title == "Knowledge base"
    assert "## Building" in chunks[0].text


def test_packing_respects_limit_and_keeps_short_blocks_whole() -> None:
    config = SplitterConfig(chunk_words=20, overlap_words=5)
    blocks = ["a " * 8, "b " * 8, "c " * 8, "d " * 50]
    passages = pack_blocks([b.strip() for b in blocks], config)
    assert all(len(p.split()) <= 20 for p in passages)
    assert passages[0] == ("a " * 8).strip() + "\n\n" + ("b " * 8).strip()
    assert passages[1] == ("c " * 8).strip()
    assert sum(p.count("d") for p in passages[2:]) >= 50  # long block fully covered


def test_word_windows_overlap() -> None:
    words = " ".join(str(i) for i in range(25))
    windows = word_windows(words, size=10, overlap=3)
    assert windows[0].split() == [str(i) for i in range(10)]
    assert windows[1].split()[:3] == ["7", "8", "9"]
    assert windows[-1].split()[-1] == "24"
    assert all(len(w.split()) <= 10 for w in windows)


def test_plain_text_splits_at_blank_lines() -> None:
    config = SplitterConfig(chunk_words=16, overlap_words=0)
    first = "First paragraph has quite a few words, ten in all."
    second = "Second paragraph, also ten words long, so no packing."
    chunks = split_text(f"{first}\n\n  \n{second}", "notes", config)
    assert [c.title for c in chunks] == ["notes", "notes"]
    assert [c.text for c in chunks] == [first, second]
    packed = split_text(f"{first}\n\n{second}", "notes", SplitterConfig(chunk_words=40))
    assert [c.text for c in packed] == [f"{first}\n\n{second}"]


def test_overlap_must_be_below_chunk_size() -> None:
    with pytest.raises(ConfigError, match="overlap_words"):
        SplitterConfig.from_dict({"chunk_words": 20, "overlap_words": 20})


def test_extensions_need_a_dot() -> None:
    with pytest.raises(ConfigError, match="dot"):
        SplitterConfig.from_dict({"text_extensions": ["txt"]})
