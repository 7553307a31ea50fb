"""``knowgate study``: both experiments run end to end from the CLI on CI-sized limits."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from sklearn.metrics import roc_auc_score
from typer.testing import CliRunner

from knowgate.cli import app

runner = CliRunner()


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


@pytest.mark.slow
def test_fabricated_limit_run(tmp_path: Path, shared_data: Path, smollm, monkeypatch) -> None:
    monkeypatch.setattr("knowgate.cli.study.load_language_model", lambda _source: smollm)
    out = tmp_path / "fabricated"
    result = runner.invoke(
        app,
        [
            "study",
            "fabricated",
            "--limit",
            "1",
            "--out",
            str(out),
            "--data-dir",
            str(shared_data),
            "--cache-dir",
            str(tmp_path / "cache"),
            "--bootstrap",
            "50",
            "--no-progress",
        ],
    )
    assert result.exit_code == 0, result.output
    results = json.loads((out / "results.json").read_text())
    assert results["pairs"] == 11 and set(results["pairs_per_template"].values()) == {1}
    for name in ("summary.md", "separation.csv", "probes.csv", "auroc_by_layer.png"):
        assert (out / name).is_file(), name
    questions = [json.loads(line) for line in (out / "data" / "fabricated_pairs.jsonl").open()]
    assert len(questions) == 22
    by_pair: dict[int, list[dict]] = {}
    for q in questions:
        by_pair.setdefault(q["metadata"]["pair"], []).append(q)
    for real, fake in by_pair.values():
        meta_r, meta_f = real["metadata"], fake["metadata"]
        assert meta_r["real"] and not meta_f["real"]
        assert real["question"].replace(meta_r["subject"], meta_f["subject"]) == fake["question"]
    # one reported number, derived independently: the subject's token count as a signal
    labels = [q["metadata"]["real"] for q in questions]
    counts = [
        len(smollm.tokenizer(" " + q["metadata"]["subject"], add_special_tokens=False).input_ids)
        for q in questions
    ]
    row = next(
        r
        for r in _rows(out / "separation.csv")
        if r["name"] == "baseline_subject_tokens" and r["scope"] == "pooled"
    )
    assert float(row["auroc"]) == pytest.approx(roc_auc_score(labels, counts), abs=1e-4)
    assert float(row["auroc_low"]) <= float(row["auroc"]) <= float(row["auroc_high"])
    for head in results["headline"]:
        assert 0.0 <= head["auroc"] <= 1.0


@pytest.mark.slow
def test_taught_limit_run_trains_reuses_and_refuses(tmp_path: Path) -> None:
    out, cache = tmp_path / "taught", tmp_path / "cache"
    base = ["study", "taught", "--limit", "2", "--out", str(out), "--cache-dir", str(cache)]
    base += ["--bootstrap", "50", "--folds", "2", "--no-progress"]
    result = runner.invoke(app, [*base, "--train", "--steps", "2"])
    assert result.exit_code == 0, result.output
    results = json.loads((out / "results.json").read_text())
    assert results["people"] == 8 and results["facts"] == 32
    assert results["questions"] == {"heldout-0": 32, "heldout-1": 32, "trained": 32}
    assert results["adapter"]["report"]["steps"] == 2
    adapter = out / "adapter" / "smollm2-135m-taught"
    weights = adapter / "adapter_model.safetensors"
    assert weights.stat().st_size <= 5_000_000
    from safetensors import safe_open

    with safe_open(str(weights), framework="pt") as fh:
        dtypes = {str(fh.get_tensor(k).dtype) for k in fh.keys()}  # noqa: SIM118
    assert dtypes == {"torch.float16"}
    assert results["model_id"].startswith("smollm2-135m+smollm2-135m-taught@")
    for bucket in results["memorised_vs_known"]:
        assert sum(v for k, v in bucket.items() if k != "exposures") == 2 * 4
    assert (out / "kb" / "manifest.json").is_file()
    assert str(adapter) in results["bench_command"]
    accuracy = _rows(out / "accuracy.csv")
    assert {(r["model"], r["phrasing"]) for r in accuracy} >= {
        ("fine-tuned", "heldout-0"),
        ("fine-tuned", "trained"),
        ("base", "heldout-0"),
    }

    again = runner.invoke(app, [*base, "--no-kb"])  # --no-train: reuses the adapter in --out
    assert again.exit_code == 0, again.output
    second = json.loads((out / "results.json").read_text())
    assert second["model_id"] == results["model_id"]
    assert second["adapter_trained_in_this_run"] is False

    other = runner.invoke(app, [*base, "--no-kb", "--seed", "1"])
    assert other.exit_code == 2
    assert "no adapter trained on this study's data" in other.output
