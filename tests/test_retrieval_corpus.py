"""Reading corpora: JSONL(.gz), text and Markdown folders, duplicates, empties and bad input."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from knowgate.errors import DataError, InputError
from knowgate.retrieval import Document, KnowledgeBaseConfig
from knowgate.retrieval.corpus import collect_documents


def write_jsonl(path: Path, rows: list[object]) -> Path:
    text = "".join(json.dumps(r) + "\n" for r in rows)
    if path.name.endswith(".gz"):
        with gzip.open(path, "wt", encoding="utf-8") as fh:
            fh.write(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def test_jsonl_and_gz_are_read_with_titles_and_counts(tmp_path: Path) -> None:
    plain = write_jsonl(
        tmp_path / "a.jsonl",
        [
            {"id": "a1", "title": "A", "text": "alpha"},
            {"id": "a2", "text": "no title here"},
            {"id": "a3", "title": "Empty", "text": "   "},
        ],
    )
    packed = write_jsonl(tmp_path / "b.jsonl.gz", [{"id": 7, "title": "B", "text": "beta"}])
    docs, report = collect_documents([plain, str(packed)], KnowledgeBaseConfig())
    assert [(d.id, d.title, d.text) for d in docs] == [
        ("a1", "A", "alpha"),
        ("a2", "", "no title here"),
        ("7", "B", "beta"),
    ]
    assert report.added == 3 and report.skipped_empty == 1 and report.skipped_duplicates == 0
    assert report.files == [str(plain), str(packed)]


def test_duplicate_ids_fail_by_default_naming_both_places(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "dup.jsonl",
        [{"id": "x", "text": "one"}, {"id": "y", "text": "two"}, {"id": "x", "text": "three"}],
    )
    with pytest.raises(DataError, match=r"duplicate document id 'x' in .*dup.jsonl:3.*dup.jsonl:1"):
        collect_documents(path, KnowledgeBaseConfig())


def test_duplicate_ids_can_be_skipped_and_counted(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "dup.jsonl",
        [{"id": "x", "text": "one"}, {"id": "x", "text": "two"}, {"id": "x", "text": "three"}],
    )
    docs, report = collect_documents(path, KnowledgeBaseConfig(on_duplicate="skip"))
    assert [d.text for d in docs] == ["one"]
    assert report.skipped_duplicates == 2


def test_existing_ids_count_as_duplicates(tmp_path: Path) -> None:
    docs = [Document("old", "", "text"), Document("new", "", "text")]
    with pytest.raises(DataError, match="existing knowledge base"):
        collect_documents(docs, KnowledgeBaseConfig(), existing_ids={"old"})


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", "not valid JSON"),
        ('["a", "list"]', "expected a JSON object"),
        ('{"title": "t", "text": "x"}', "'id' must be a non-empty string"),
        ('{"id": "a", "text": 3}', "'text' must be a string"),
        ('{"id": "a", "title": 5, "text": "x"}', "'title' must be a string"),
    ],
)
def test_malformed_rows_name_file_and_line(tmp_path: Path, line: str, message: str) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"id": "ok", "text": "fine"}\n' + line + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=message) as info:
        collect_documents(path, KnowledgeBaseConfig())
    assert "bad.jsonl:2" in str(info.value)


def test_markdown_folder_becomes_titled_chunks(tmp_path: Path) -> None:
    folder = tmp_path / "docs"
    (folder / "guide").mkdir(parents=True)
    (folder / "guide" / "setup.md").write_text(
        "# Setup\n\nInstall it.\n\n## Verify\n\nRun the tests.\n"
    )
    (folder / "notes.txt").write_text("Plain notes.\n\nSecond paragraph.")
    (folder / ".hidden").mkdir()
    (folder / ".hidden" / "secret.md").write_text("# Hidden\n\nnot indexed")
    (folder / "image.png").write_bytes(b"\x89PNG")
    docs, report = collect_documents(folder, KnowledgeBaseConfig())
    assert [(d.id, d.title) for d in docs] == [
        ("docs/guide/setup.md#0", "Setup"),
        ("docs/guide/setup.md#1", "Setup › Verify"),
        ("docs/notes.txt#0", "notes"),
    ]
    assert docs[1].metadata["section"] == "Setup › Verify"
    assert docs[1].metadata["source"].endswith("setup.md")
    assert len(report.files) == 2


def test_missing_unsupported_and_empty_sources(tmp_path: Path) -> None:
    config = KnowledgeBaseConfig()
    with pytest.raises(DataError, match="not found"):
        collect_documents(tmp_path / "nope.jsonl", config)
    (tmp_path / "data.csv").write_text("a,b\n")
    with pytest.raises(DataError, match="unsupported corpus file"):
        collect_documents(tmp_path / "data.csv", config)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="holds no corpus files"):
        collect_documents(tmp_path / "empty", config)
    with pytest.raises(InputError, match="unsupported corpus source"):
        collect_documents([42], config)  # type: ignore[list-item]
    with pytest.raises(InputError, match="mapping"):
        collect_documents({"id": "x"}, config)  # type: ignore[arg-type]


def test_truncated_gzip_is_a_data_error(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "c.jsonl.gz", [{"id": str(i), "text": "x" * 50} for i in range(50)]
    )
    path.write_bytes(path.read_bytes()[:-20])
    with pytest.raises(DataError, match="cannot read"):
        collect_documents(path, KnowledgeBaseConfig())


def test_document_rejects_bad_fields() -> None:
    with pytest.raises(DataError):
        Document("", "t", "x")
    with pytest.raises(DataError):
        Document("id", "t", None)  # type: ignore[arg-type]
