import json

import pytest

from knowgate.errors import DataError
from knowgate.evaluation.datasets import (
    DATA_DIR_ENV_VAR,
    default_data_dir,
    load_dataset,
    normalize_question,
)


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" if isinstance(r, dict) else r for r in rows))
    return path


ROW = {
    "id": "q1",
    "question": "What is George Rankin's occupation?",
    "golden_answers": ["politician", "political leader"],
    "metadata": {"prop": "occupation", "s_pop": 142, "evidence_ids": ["pq_0"]},
}


def test_loads_rows_and_metadata(tmp_path):
    path = _write(tmp_path / "mini.jsonl", [ROW, {**ROW, "id": "q2", "metadata": {}}, "\n"])
    ds = load_dataset(path)
    assert ds.name == "mini" and len(ds) == 2
    ex = ds[0]
    assert ex.golden_answers == ("politician", "political leader")
    assert ex.relation == "occupation" and ex.popularity == 142.0
    assert ds[1].relation is None and ds[1].popularity is None
    assert ex.group == "what is george rankin's occupation?"
    with pytest.raises(TypeError):
        ex.metadata["prop"] = "x"


def test_limit_keeps_the_full_file_hash(tmp_path):
    path = _write(tmp_path / "mini.jsonl", [{**ROW, "id": f"q{i}"} for i in range(5)])
    full, head = load_dataset(path), load_dataset(path, limit=2)
    assert len(head) == 2 and head.content_hash == full.content_hash
    changed = _write(tmp_path / "mini.jsonl", [{**ROW, "id": f"q{i}"} for i in range(6)])
    assert load_dataset(changed).content_hash != full.content_hash
    with pytest.raises(DataError, match="limit"):
        load_dataset(path, limit=0)


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ([], "empty"),
        (["{not json\n"], r"mini.jsonl:1: not valid JSON"),
        (["[1, 2]\n"], "expected a JSON object"),
        ([{"id": "a", "question": "q?"}], r"missing key\(s\) \['golden_answers'\]"),
        ([{**ROW, "question": "  "}], "'question' must be a non-empty string"),
        ([{**ROW, "golden_answers": []}], "non-empty list"),
        ([{**ROW, "golden_answers": [1]}], "only strings"),
        ([{**ROW, "golden_answers": [""]}], "only empty strings"),
        ([{**ROW, "metadata": [1]}], "'metadata' must be an object"),
        ([ROW, ROW], r"mini.jsonl:2: duplicate id 'q1' \(first on line 1\)"),
        ([{**ROW, "id": None}], "'id' must be a non-empty string"),
    ],
)
def test_malformed_files_are_rejected(tmp_path, rows, message):
    path = _write(tmp_path / "mini.jsonl", rows)
    with pytest.raises(DataError, match=message):
        load_dataset(path)


def test_missing_file_and_bare_names(tmp_path, monkeypatch):
    with pytest.raises(DataError, match="not found"):
        load_dataset(tmp_path / "nope.jsonl")
    monkeypatch.setenv(DATA_DIR_ENV_VAR, str(tmp_path))
    assert default_data_dir() == tmp_path
    with pytest.raises(DataError, match="KNOWGATE_DATA_DIR"):
        load_dataset("popqa_random")
    (tmp_path / "qa").mkdir()
    _write(tmp_path / "qa" / "popqa_random.jsonl", [ROW])
    assert len(load_dataset("popqa_random")) == 1


def test_not_utf8(tmp_path):
    path = tmp_path / "bin.jsonl"
    path.write_bytes(b"\xff\xfe\x00garbage\n")
    with pytest.raises(DataError, match="UTF-8"):
        load_dataset(path)


def test_default_data_dir_is_relative_to_cwd(tmp_path, monkeypatch):
    monkeypatch.delenv(DATA_DIR_ENV_VAR, raising=False)
    monkeypatch.chdir(tmp_path)
    assert default_data_dir() == tmp_path.parent / "shared" / "data"


def test_normalize_question():
    assert normalize_question("  Who  is X? ") == normalize_question("who is x?")


def test_shared_popqa_overlap_is_found(shared_data):
    a = load_dataset(shared_data / "qa" / "popqa_random.jsonl")
    b = load_dataset(shared_data / "qa" / "popqa_h2.jsonl")
    assert len(a) == len(b) == 1000
    assert len({e.group for e in a} & {e.group for e in b}) == 64
