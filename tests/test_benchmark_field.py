"""The gate against the field, on synthetic both-branch data whose answers are known.

The synthetic questions (bench_helpers) get stored hidden states, per-layer sparsity and peer
signals that carry the latent knowledge value in known places (block 5 at the question's end;
``hidden_hoyer`` at block 6; ``sample_agreement``) and noise elsewhere (``self_report_p_yes``).
The benchmark must find those places on training folds only, score each peer at its own cost
on the questions its data exist for, and compare the methods on the questions they share.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from bench_helpers import (
    INFORMATIVE_SITE,
    REPORT_SECONDS,
    SAMPLE_SECONDS,
    SAMPLES,
    synthetic_records,
    with_arrays_and_peers,
)
from knowgate.evaluation.bench.policies import (
    FLARE_FIXED,
    HEADLINE,
    PROBE,
    PROBE_FUSED,
    SAMPLING,
    SELF_ROUTING_CUT,
    SELF_ROUTING_FIXED,
    UNSELECTED_HEADLINE,
)
from knowgate.evaluation.bench.report import write_report
from knowgate.evaluation.bench.runner import evaluate_benchmark
from knowgate.evaluation.bench.table import build_bench_table


@pytest.fixture(scope="module")
def table():
    closed, retrieval = synthetic_records(n=600)
    return with_arrays_and_peers(build_bench_table(closed, retrieval, model_id="smollm2-135m"))


@pytest.fixture(scope="module")
def result(table):
    return evaluate_benchmark(
        table,
        folds=3,
        bootstrap=60,
        families=["fused", "probe", "peers", "popularity", "single"],
    )


def test_peers_are_scored_where_their_data_exist_at_their_own_cost(result, table) -> None:
    policies = result.summary.policies
    seconds = table.branches.seconds
    peer_rows = table.peers.rows
    sampling = policies[SAMPLING]
    assert sampling.n == peer_rows.sum() and sampling.family == "peer"
    rate = sampling.retrieval_rate
    # a draft-stage gate plus K samples: LM calls 1 + K + rate; prefill + decode + samples,
    # then retrieval + the answer with passages where it retrieves
    assert sampling.lm_calls_per_question == pytest.approx(1 + SAMPLES + rate)
    expected = (
        seconds["prefill"][peer_rows]
        + seconds["decode"][peer_rows]
        + SAMPLE_SECONDS
        + held_out_retrieve(result, SAMPLING)[peer_rows]
        * (seconds["retrieve"] + seconds["answer_with_passages"])[peer_rows]
    ).mean()
    assert sampling.mean_seconds == pytest.approx(expected)
    assert sampling.extra_seconds == pytest.approx(SAMPLE_SECONDS)
    # self-routing decides before any closed-book pass: one extra short call, always 2 LM calls
    fixed = policies[SELF_ROUTING_FIXED]
    assert fixed.lm_calls_per_question == pytest.approx(2.0)
    p_yes = table.peers.features["self_report_p_yes"][peer_rows]
    assert fixed.retrieval_rate == pytest.approx(np.mean(p_yes < 0.5))
    assert fixed.extra_seconds == pytest.approx(REPORT_SECONDS)
    # FLARE's fixed rule is FlareChain's: retrieve when a draft token's probability < 0.2
    flare = result.held_out.policies[FLARE_FIXED]
    min_prob = table.labelled.features["draft_min_prob"]
    assert np.array_equal(flare.fixed_retrieve, min_prob < 0.2)
    assert policies[FLARE_FIXED].ranking.ece is None  # a fixed rule has no probability
    # the informative peer ranks, the noise one does not
    assert sampling.ranking.auroc > 0.75
    assert abs(policies[SELF_ROUTING_CUT].ranking.auroc - 0.5) < 0.1


def held_out_retrieve(result, name):
    from knowgate.evaluation.operating_rules import DEFAULT_RULE, RULES

    retrieve, _ = result.held_out.policies[name].decide(RULES[DEFAULT_RULE], result.table)
    return retrieve.astype(float)


def test_probe_finds_the_informative_state_in_every_fold(result) -> None:
    probe = result.summary.policies[PROBE]
    name = INFORMATIVE_SITE[0]
    assert len(probe.choices_per_fold) == 3
    assert all(c.startswith(f"{name}, C=") for c in probe.choices_per_fold)
    assert probe.ranking.auroc > 0.75 and probe.lm_calls_per_question == pytest.approx(
        1 + probe.retrieval_rate
    )
    stacked = result.summary.policies[PROBE_FUSED]
    assert all(c.startswith(name) and "combiner" in c for c in stacked.choices_per_fold)
    # the fused recipe records its choice per fold too; the unselected reference none
    assert len(result.summary.policies[HEADLINE].choices_per_fold) == 3
    assert result.summary.policies[UNSELECTED_HEADLINE].choices_per_fold == ()


def test_layer_study_points_at_the_informative_block_and_position(result) -> None:
    layers = result.summary.layers
    assert layers is not None
    metric, block, value = layers.best_sparsity["question_end"]
    assert (metric, block) == ("hidden_hoyer", 6) and value > 0.75
    assert all(v < 0.62 for v in layers.sparsity_auroc["mlp_gini"]["prompt_end"])
    assert layers.best_probe["question_end"][0] == 5
    assert layers.probe_auroc["question_end"][1] > 0.75
    assert max(layers.probe_auroc["prompt_end"]) < 0.62


def test_the_field_table_compares_methods_on_common_questions(result, table) -> None:
    field = result.summary.field_comparison
    assert field is not None and field.n == table.peers.rows.sum()
    groups = {name: row.group for name, row in field.rows.items()}
    assert groups[HEADLINE] == "knowgate" and groups[PROBE] == "knowgate"
    assert groups[SAMPLING] == "peer" and groups["question-only"] == "peer"
    assert groups["always"] == "baseline"
    assert "popularity (s_pop)" in field.not_in_table
    always = field.rows["always"]
    assert always.lm_calls == 1 and always.retrieval_calls == 1
    assert always.seconds_minus_always == pytest.approx(0.0)
    head = field.rows[HEADLINE]
    assert head.lm_calls == pytest.approx(1 + head.retrieval_calls)
    # a knowgate policy against the uninformative self-report: clearly better ranking
    versus = {(v.knowgate, v.peer): v for v in field.versus}
    against_noise = versus[(HEADLINE, SELF_ROUTING_CUT)]
    assert against_noise.auroc_difference.low > 0 and against_noise.auroc_verdict == "above"
    assert field.best_single_pass in field.rows
    assert set(result.field_curves) >= {"random", HEADLINE, SAMPLING}


def test_unseen_dataset_auroc_of_signals_and_policies(result) -> None:
    lodo = result.summary.leave_one_dataset_out_auroc
    assert lodo is not None and set(lodo.datasets) == {"popqa_like", "nq_like"}
    informative = lodo.signals["next_token_max_prob"]
    assert informative["popqa_like"].unseen > 0.75 and informative["nq_like"].unseen > 0.75
    noise = lodo.signals["mlp_hoyer_last"]
    assert abs(noise["mean"].unseen - 0.5) < 0.1
    assert lodo.policies[HEADLINE]["mean"].unseen > 0.75
    assert SAMPLING in lodo.policies and PROBE in lodo.policies


def test_report_writes_the_field_and_the_layers(result, tmp_path) -> None:
    written = {p.name for p in write_report(result, tmp_path)}
    assert {"curves_field.png", "layers.png", "summary.md", "results.json"} <= written
    md = (tmp_path / "summary.md").read_text()
    assert "## The gate against the field" in md and "## Where the signal lives" in md
    assert "leave one dataset out, AUROC" in md and "What each recipe chose" in md
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["field_comparison"]["rows"][SAMPLING]["lm_calls"] > 6
    assert data["policies"][PROBE]["choices_per_fold"]
