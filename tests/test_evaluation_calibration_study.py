"""The calibration study on synthetic records whose signals are known by construction."""

from types import MappingProxyType

import numpy as np
import pytest

from knowgate.errors import ConfigError, DataError
from knowgate.evaluation.branches.closed_book import ClosedBookRecord
from knowgate.evaluation.calibration.report import write_report
from knowgate.evaluation.calibration.study import run_study
from knowgate.evaluation.datasets import QAExample
from knowgate.evaluation.labelled import build_table, resolve_features
from knowgate.evaluation.scoring import score_answer


def _records(n=400, seed=0):
    """Relation 'capital' is easy (80% correct), 'director' hard (10%).

    ``hidden_hoyer_last`` only recognises the relation (a template detector); ``draft_min_prob``
    tracks correctness within relations (knowledge); ``next_token_entropy`` is noise.
    """
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        relation = "capital" if i % 2 == 0 else "director"
        correct = rng.random() < (0.8 if relation == "capital" else 0.1)
        answer = "gold" if correct else "wrong"
        example = QAExample(
            id=f"q{i}",
            question=f"What is the {relation} of thing {i}?",
            golden_answers=("gold",),
            metadata=MappingProxyType({"prop": relation, "s_pop": float(10 ** rng.uniform(1, 6))}),
        )
        features = {
            "hidden_hoyer_last": float((relation == "capital") + rng.normal(0, 0.3)),
            "draft_min_prob": float(correct + rng.normal(0, 0.6)),
            "next_token_entropy": float(rng.normal()),
        }
        out.append(
            ClosedBookRecord(
                example=example,
                dataset="toy" if i < n // 2 else "toy2",
                answer=answer,
                stop_reason="eos",
                score=score_answer(answer, example.golden_answers, example.question),
                features=features,
                prompt_tokens=10,
                prefill_seconds=0.1,
                decode_seconds=0.1,
                batch_size=8,
            )
        )
    return out


@pytest.fixture(scope="module")
def study():
    table = build_table(_records())
    selected = resolve_features(table, ["prefill"])
    return table, selected, run_study(table, selected, n_splits=3, bootstrap_resamples=0)


def test_feature_groups(study):
    table, selected, _ = study
    assert selected == ["hidden_hoyer_last", "next_token_entropy"]
    assert resolve_features(table, ["draft"]) == ["draft_min_prob"]
    assert "question_relation_capital" in resolve_features(table, ["question"])
    assert resolve_features(table, ["next_token_entropy,draft"]) == [
        "next_token_entropy",
        "draft_min_prob",
    ]
    with pytest.raises(ConfigError, match="unknown feature"):
        resolve_features(table, ["prefil"])


def test_template_detector_is_exposed_by_within_relation_auroc(study):
    _, _, result = study
    singles = result.summary.single_features
    template, knowledge = singles["hidden_hoyer_last"], singles["draft_min_prob"]
    assert template.auroc_in_sample > 0.75 and template.auroc_held_out > 0.75
    assert abs(template.auroc_within_relation - 0.5) < 0.12
    assert knowledge.auroc_within_relation > 0.75
    assert template.direction == "higher_is_known"
    fused = result.summary.fused
    # The question-only baseline (which sees the relation) matches the template detector.
    assert fused["question-only"].auroc >= fused["sparsity (prefill)"].auroc - 0.03
    assert fused["uncertainty (prefill+draft)"].auroc_within_relation > 0.75


def test_breakdowns(study):
    _, _, result = study
    s = result.summary
    assert s.n_questions == 400
    assert set(s.datasets) == {"toy", "toy2"}
    assert set(s.per_relation) == {"capital", "director"}
    capital, prior = s.per_relation["capital"]
    assert prior.constant_answer is None  # no 'obj' metadata
    assert sum(v.n for v in s.per_popularity_bucket.values()) == 400
    assert capital.accuracy > 0.6 > s.per_relation["director"][0].accuracy
    assert "sparsity adds over uncertainty (prefill)" in s.comparisons


def test_report_files(study, tmp_path):
    table, _, result = study
    paths = write_report(table, result, tmp_path, extra={"model_id": "toy"})
    assert {p.name for p in paths} == {"report.json", "report.md", "reliability.png", "roc.png"}
    text = (tmp_path / "report.md").read_text()
    assert "## Fused feature sets" in text and "| capital |" in text
    assert (tmp_path / "roc.png").read_bytes()[:4] == b"\x89PNG"


def test_build_table_rejects_mixed_feature_sets():
    records = _records(n=10)
    odd = ClosedBookRecord(**{**records[5].__dict__, "features": {"next_token_entropy": 0.1}})
    broken = [*records[:5], odd]
    with pytest.raises(DataError, match="different feature set"):
        build_table(broken)
    with pytest.raises(DataError, match="no closed-book records"):
        build_table([])
