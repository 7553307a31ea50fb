"""The one outcome rule and the both-branch file, on a 4-question table worked by hand."""

from __future__ import annotations

import json

import numpy as np
import pytest

from knowgate.errors import DataError, InputError
from knowgate.evaluation.both_branches import (
    CACHE_FILE,
    BothBranchRecord,
    BranchOutcomes,
    StageSeconds,
    policy_outcome,
    read_both_branches,
    stage_of,
    write_both_branches,
)
from knowgate.experiments import replay
from knowgate.policy import build_policy

# closed-book right on rows 0 and 3, retrieval right on rows 0 and 1
CB = [True, False, False, True]
RAG = [True, True, False, False]
PREFILL = [0.1, 0.1, 0.2, 0.2]
SIGNALS = 0.01
DECODE = [0.3, 0.3, 0.4, 0.4]
RETRIEVE = 0.05
ANSWER = [1.0, 1.0, 1.2, 1.2]


def records() -> list[BothBranchRecord]:
    return [
        BothBranchRecord(
            id=f"q{i}",
            dataset="toy",
            model_id="m",
            closed_book_correct=CB[i],
            closed_book_score=float(CB[i]),
            retrieval_correct=RAG[i],
            retrieval_score=float(RAG[i]),
            seconds=StageSeconds(
                prefill=PREFILL[i],
                signals=SIGNALS,
                decode=DECODE[i],
                retrieve=RETRIEVE,
                answer_with_passages=ANSWER[i],
            ),
            # the gate below retrieves where next_token_max_prob < 0.5: rows 1 and 2
            features={"next_token_max_prob": [0.9, 0.2, 0.3, 0.8][i]},
        )
        for i in range(4)
    ]


@pytest.fixture
def branches() -> BranchOutcomes:
    return BranchOutcomes.from_records(records())


def test_always_is_plain_rag_with_one_lm_call(branches) -> None:
    out = policy_outcome(branches, np.ones(4, bool), stage="none")
    assert out.accuracy == pytest.approx(2 / 4)
    # retrieval 0.05 + answer 1.0 / 1.2; no prefill, no signals
    assert out.seconds == pytest.approx([1.05, 1.05, 1.25, 1.25])
    assert out.lm_calls_per_question == 1 and out.retrieval_rate == 1


def test_never_is_prefill_and_decode(branches) -> None:
    out = policy_outcome(branches, np.zeros(4, bool), stage="none")
    assert out.accuracy == pytest.approx(2 / 4)
    assert out.seconds == pytest.approx([0.4, 0.4, 0.6, 0.6])
    assert out.lm_calls_per_question == 1 and out.retrieval_rate == 0


def test_a_gate_pays_its_prefill_and_a_second_call_when_it_retrieves(branches) -> None:
    retrieve = np.array([False, True, True, False])
    out = policy_outcome(branches, retrieve, stage="prefill")
    # served: closed-book row 0 (right), retrieval rows 1 (right) and 2 (wrong), closed-book 3
    assert out.correct == pytest.approx([1, 1, 0, 1])
    assert out.seconds == pytest.approx(
        [0.1 + 0.01 + 0.3, 0.1 + 0.01 + 1.05, 0.2 + 0.01 + 1.25, 0.2 + 0.01 + 0.4]
    )
    assert out.mean_seconds == pytest.approx(3.64 / 4)
    assert out.lm_calls == pytest.approx([1, 2, 2, 1])
    assert out.score == pytest.approx([1, 1, 0, 1])
    # a draft gate decodes the closed-book draft before it decides
    draft = policy_outcome(branches, retrieve, stage="draft")
    assert draft.seconds == pytest.approx(
        [0.41, 0.1 + 0.01 + 0.3 + 1.05, 0.2 + 0.01 + 0.4 + 1.25, 0.61]
    )
    assert draft.lm_calls == pytest.approx([1, 2, 2, 1])


def test_random_gating_is_the_expected_outcome(branches) -> None:
    out = policy_outcome(branches, np.full(4, 0.5), stage="none")
    assert out.correct == pytest.approx([1.0, 0.5, 0.0, 0.5])
    assert out.seconds == pytest.approx([0.725, 0.725, 0.925, 0.925])
    assert out.lm_calls_per_question == 1 and out.retrieval_rate == 0.5


def test_extra_costs_are_added(branches) -> None:
    out = policy_outcome(
        branches, np.zeros(4, bool), stage="prefill", extra_lm_calls=5, extra_seconds=0.5
    )
    assert out.lm_calls == pytest.approx([6, 6, 6, 6])
    assert out.seconds == pytest.approx([0.91, 0.91, 1.11, 1.11])


def test_bad_decisions_are_refused(branches) -> None:
    with pytest.raises(InputError, match="3 decisions for 4 questions"):
        policy_outcome(branches, [True, False, True], stage="none")
    with pytest.raises(InputError, match=r"probabilities in \[0, 1\]"):
        policy_outcome(branches, [0, 1, 2, 0], stage="none")
    with pytest.raises(InputError, match="unknown gate stage"):
        policy_outcome(branches, [0, 1, 1, 0], stage="post")  # type: ignore[arg-type]


def test_stage_of_a_policy_follows_what_it_reads() -> None:
    assert stage_of([]) == "none"
    assert stage_of(["next_token_max_prob", "hidden_hoyer_last"]) == "prefill"
    assert stage_of(["next_token_max_prob", "draft_min_prob"]) == "draft"
    assert stage_of(["oracle_correct"]) == "prefill"  # a gate that reads the label
    assert stage_of(["s_pop"]) == "prefill"


def test_replay_uses_the_same_outcome_rule(tmp_path) -> None:
    write_both_branches(records(), tmp_path)
    read = read_both_branches(tmp_path)
    report = replay(
        read,
        {
            "always": build_policy("always"),
            "never": build_policy("never"),
            "gate": build_policy(
                "threshold", feature="next_token_max_prob", direction="higher_is_known", value=0.5
            ),
        },
    )
    by = {p.label: p for p in report.policies}
    assert by["always"].wall_time_s.value == pytest.approx(1.15)
    assert by["never"].wall_time_s.value == pytest.approx(0.5)
    assert by["gate"].wall_time_s.value == pytest.approx(3.64 / 4)
    assert by["gate"].accuracy.value == pytest.approx(0.75)
    assert by["gate"].retrieval_rate.value == pytest.approx(0.5)


def test_file_round_trip_and_per_dataset_files(tmp_path) -> None:
    rows = records()
    rows[3] = rows[3].model_copy(update={"id": "q3", "dataset": "other"})
    written = write_both_branches(rows, tmp_path)
    assert [p.relative_to(tmp_path).as_posix() for p in written] == [
        CACHE_FILE,
        f"datasets/toy/{CACHE_FILE}",
        f"datasets/other/{CACHE_FILE}",
    ]
    assert read_both_branches(tmp_path) == rows
    assert [r.id for r in read_both_branches(tmp_path / "datasets" / "other")] == ["q3"]
    with pytest.raises(DataError, match="no both-branch rows"):
        write_both_branches([], tmp_path)


def test_rows_with_request_totals_are_refused_with_a_clear_message(tmp_path) -> None:
    row = records()[0].model_dump(mode="json")
    del row["seconds"]
    row.update(closed_book_seconds=0.4, retrieval_seconds=1.2)
    path = tmp_path / CACHE_FILE
    path.write_text(
        json.dumps(records()[1].model_dump(mode="json")) + "\n" + json.dumps(row) + "\n"
    )
    with pytest.raises(DataError, match=r":2: .*request totals.*knowgate bench"):
        read_both_branches(path)


def test_stage_times_must_be_non_negative(tmp_path) -> None:
    row = records()[0].model_dump(mode="json")
    row["seconds"]["decode"] = -1
    path = tmp_path / CACHE_FILE
    path.write_text(json.dumps(row) + "\n")
    with pytest.raises(DataError, match=r":1: .*seconds.decode"):
        read_both_branches(path)
    row["seconds"].pop("signals")
    row["seconds"]["decode"] = 0.1
    path.write_text(json.dumps(row) + "\n")
    with pytest.raises(DataError, match="seconds.signals"):
        read_both_branches(path)


def test_branch_arrays_must_align() -> None:
    ones = np.ones(3)
    seconds = {k: ones for k in StageSeconds.model_fields}
    with pytest.raises(InputError, match="one length"):
        BranchOutcomes(ones, ones, ones, ones, ones, np.ones(2), seconds)
    with pytest.raises(InputError, match="stage times missing"):
        BranchOutcomes(ones, ones, ones, ones, ones, ones, {"prefill": ones})
