"""``knowgate index build | add | info | search`` end to end on a tiny corpus."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from knowgate.cli import app
from test_retrieval_support import TINY_DOCS, tiny_kb

runner = CliRunner()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tiny_kb()  # loads the embedding model once for the session
    path = tmp_path_factory.mktemp("corpus") / "tiny.jsonl"
    path.write_text("".join(json.dumps(d.to_json()) + "\n" for d in TINY_DOCS))
    return path


def test_build_info_search_json(corpus: Path, tmp_path: Path) -> None:
    out = tmp_path / "kb"
    result = runner.invoke(app, ["index", "build", str(corpus), "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["documents"] == len(TINY_DOCS) and summary["added"] == len(TINY_DOCS)

    result = runner.invoke(app, ["index", "info", str(out), "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    assert info["embedding_model_id"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert info["dimension"] == 384 and info["format_version"] == 1
    assert "index.faiss" in info["files"]

    result = runner.invoke(
        app, ["index", "search", str(out), "Who wrote music in Salzburg?", "-k", "2", "--json"]
    )
    assert result.exit_code == 0, result.output
    hits = json.loads(result.stdout)
    assert len(hits) == 2
    assert set(hits[0]) == {"id", "title", "text", "score"}
    assert hits[0]["id"] == "mozart"

    result = runner.invoke(app, ["index", "search", str(out), "Mozart", "--mode", "bm25"])
    assert result.exit_code == 0 and "Wolfgang Amadeus Mozart" in result.stdout


def test_build_refuses_existing_without_force_then_add(corpus: Path, tmp_path: Path) -> None:
    out = tmp_path / "kb"
    assert runner.invoke(app, ["index", "build", str(corpus), "--out", str(out)]).exit_code == 0
    again = runner.invoke(app, ["index", "build", str(corpus), "--out", str(out)])
    assert again.exit_code == 2 and "--force" in again.stderr

    extra = tmp_path / "extra.md"
    extra.write_text("# Rome\n\nRome is the capital of Italy.\n")
    added = runner.invoke(app, ["index", "add", str(out), str(extra)])
    assert added.exit_code == 0, added.output
    dup = runner.invoke(app, ["index", "add", str(out), str(extra)])
    assert dup.exit_code == 2 and "duplicate document id" in dup.stderr
    skipped = runner.invoke(app, ["index", "add", str(out), str(extra), "--skip-duplicates"])
    assert skipped.exit_code == 0 and "1 duplicate" in skipped.stderr
    info = json.loads(runner.invoke(app, ["index", "info", str(out), "--json"]).stdout)
    assert info["documents"] == len(TINY_DOCS) + 1


def test_user_errors_are_one_line_messages(tmp_path: Path) -> None:
    result = runner.invoke(app, ["index", "info", str(tmp_path / "missing")])
    assert result.exit_code == 2
    assert "error:" in result.stderr and "Traceback" not in result.output
    result = runner.invoke(app, ["index", "build", str(tmp_path / "nope.jsonl"), "-o", "x"])
    assert result.exit_code == 2 and "not found" in result.stderr
    config = tmp_path / "kb.yaml"
    config.write_text("mode: dense\nchunk_size: 3\n")
    result = runner.invoke(
        app, ["index", "build", str(tmp_path), "-o", str(tmp_path / "kb"), "-c", str(config)]
    )
    assert result.exit_code == 2 and "chunk_size: unknown key" in result.stderr
