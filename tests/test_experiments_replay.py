"""Offline replay on a synthetic both-branch cache whose answers are known."""

from __future__ import annotations

import json
import math

import pytest
from typer.testing import CliRunner

from experiments_helpers import both_branch_row, gate_policy, write_both_branches
from knowgate.cli import app
from knowgate.errors import DataError, PolicyError
from knowgate.experiments import CACHE_FILE, read_both_branches, replay
from knowgate.policy import build_policy


def make_cache(tmp_path, n: int = 200, **kw):
    """Questions i = 0..n-1 with p = i/n. Closed-book right iff p >= 0.7 (the top 30%);
    with retrieval right iff i % 10 != 0 (90%), except where closed-book is right."""
    rows = [
        both_branch_row(
            i,
            p=i / n,
            cb=i / n >= 0.7,
            rag=(i % 10 != 0) or i / n >= 0.7,
            cb_s=0.1,
            rag_s=0.3,
            **kw,
        )
        for i in range(n)
    ]
    return write_both_branches(tmp_path / "bench" / CACHE_FILE, rows).parent


def test_replay_gives_the_exact_paired_comparison(tmp_path) -> None:
    records = read_both_branches(make_cache(tmp_path))
    assert len(records) == 200 and records[0].model_id == "smollm2-135m"
    report = replay(
        records,
        {
            "always": build_policy("always"),
            "gate": gate_policy(0.7),
            "never": build_policy("never"),
        },
    )
    by = {p.label: p for p in report.policies}
    # always: wrong only where i % 10 == 0 below p = 0.7 (14 questions) -> 186 / 200.
    wrong_rag = sum(1 for i in range(200) if i % 10 == 0 and i / 200 < 0.7)
    assert by["always"].accuracy.value == pytest.approx((200 - wrong_rag) / 200)
    # gate at 0.7 retrieves exactly the closed-book-wrong questions: the oracle's accuracy.
    assert by["gate"].retrieval_rate.value == pytest.approx(0.7)
    assert by["gate"].accuracy.value == pytest.approx(report.references["oracle"]["accuracy"])
    assert by["gate"].wall_time_s.value == pytest.approx(0.7 * 0.3 + 0.3 * 0.1)
    assert by["gate"].total_time_s == pytest.approx(200 * (0.7 * 0.3 + 0.3 * 0.1))
    # always is plain RAG: the answer with passages without the gate's 0.05 s prefill
    assert by["always"].wall_time_s.value == pytest.approx(0.3 - 0.05)
    assert by["never"].wall_time_s.value == pytest.approx(0.1)
    assert by["never"].accuracy.value == pytest.approx(0.3)
    assert report.references["never"]["accuracy"] == pytest.approx(0.3)

    gate = {d.metric: d for d in report.comparisons["gate"]}
    # Same correctness on every question (gate is right exactly where always is): McNemar p = 1.
    assert gate["accuracy"].diff == 0 and gate["accuracy"].p_value == 1.0
    assert gate["retrieval_rate"].diff == pytest.approx(-0.3)
    # 60 discordant retrieve decisions, all one way: McNemar chi-square, p tiny.
    assert gate["retrieval_rate"].p_value < 1e-10
    assert gate["wall_time_s"].diff == pytest.approx((0.7 * 0.3 + 0.3 * 0.1) - 0.25)
    assert "score" in gate
    never = {d.metric: d for d in report.comparisons["never"]}
    # never vs always: every discordant pair is always-right & never-wrong (126 of them).
    b = sum(1 for i in range(200) if i / 200 < 0.7 and i % 10 != 0)
    assert never["accuracy"].diff == pytest.approx(-b / 200)
    assert never["accuracy"].p_value < 1e-10
    assert "gate wins on cost" in report.verdict
    assert "always wins on accuracy over never" in report.verdict
    text = report.to_text()
    assert "References on this cache" in text and "Verdict:" in text
    json.dumps(report.to_dict(), allow_nan=False)


def test_replay_counts_lm_calls_as_the_router_does(tmp_path) -> None:
    records = read_both_branches(make_cache(tmp_path))
    report = replay(
        records,
        {
            "always": build_policy("always"),
            "never": build_policy("never"),
            "gate": gate_policy(0.7),
            "oracle": build_policy("oracle"),
        },
    )
    calls = {p.label: p.lm_calls for p in report.policies}
    # Plain RAG and closed-book answer with one prompt each; a gate prefills every question
    # (one call) and answers again with passages for the 70% it retrieves for.
    assert calls["always"] == 1.0 and calls["never"] == 1.0
    assert calls["gate"] == pytest.approx(1.7) and calls["oracle"] == pytest.approx(1.7)
    assert "LM calls/q" in report.to_text()


def _always_vs_never(tmp_path, name, rows):
    cache = write_both_branches(tmp_path / name, rows)
    report = replay(
        read_both_branches(cache),
        {"always": build_policy("always"), "never": build_policy("never")},
    )
    return {d.metric: d for d in report.comparisons["never"]}["accuracy"]


def test_replay_paired_accuracy_is_agresti_min_by_hand(tmp_path) -> None:
    from scipy.stats import norm

    # 40 questions: closed-book right on i < 8, with retrieval right on i >= 3.
    # Discordant: never right & always wrong on i < 3 (3 pairs); the reverse on i >= 8 (32).
    rows = [both_branch_row(i, p=0.9, cb=i < 8, rag=i >= 3, model_id=None) for i in range(40)]
    acc = _always_vs_never(tmp_path, "a.jsonl", rows)
    assert acc.diff == pytest.approx((3 - 32) / 40)
    # Agresti & Min (2005): half a pair in each of the four cells, then Wald on n + 2 pairs.
    centre = (3 - 32) / 42
    se = math.sqrt(((3 + 32 + 1) / 42 - centre**2) / 42)
    z = norm.ppf(0.975)
    assert acc.se == pytest.approx(se)
    assert (acc.low, acc.high) == pytest.approx((centre - z * se, centre + z * se))
    assert acc.p_value == pytest.approx(2 * norm.sf(abs(centre) / se))
    assert acc.paired and acc.units == (40, 40)
    # No discordant pair: no evidence of a difference, and still an interval of honest width.
    same = [both_branch_row(i, p=0.9, cb=True, rag=True, model_id=None) for i in range(20)]
    acc = _always_vs_never(tmp_path, "b.jsonl", same)
    assert acc.diff == 0 and acc.p_value == pytest.approx(1.0)
    assert acc.high == pytest.approx(z * math.sqrt(1 / 22) / math.sqrt(22))


def test_replay_interval_and_p_value_never_disagree(tmp_path) -> None:
    # A borderline paired comparison (the old replay showed CI [-2.2, -0.2] beside p = 0.062):
    # 9 questions only always answers, 2 only never answers, out of 400.
    rows = [
        both_branch_row(i, p=0.9, cb=i < 2 or i >= 11, rag=i >= 2, model_id=None)
        for i in range(400)
    ]
    acc = _always_vs_never(tmp_path, "c.jsonl", rows)
    assert acc.diff == pytest.approx((2 - 9) / 400)
    assert (acc.p_value < 0.05) == (acc.high < 0 or acc.low > 0)


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda r: r.pop("retrieval_correct"), "retrieval_correct"),
        (lambda r: r.update(closed_book_correct="yes"), "closed_book_correct"),
        (lambda r: r.update(closed_book_correct=1), "closed_book_correct"),
        (lambda r: r["seconds"].update(retrieve=-1), "seconds.retrieve"),
        (lambda r: r.update(surprise=1), "surprise: unknown key"),
        (lambda r: r.update(features={"x": "high"}), "features.x"),
    ],
)
def test_rows_off_the_schema_are_reported_with_their_line(tmp_path, mutate, match) -> None:
    rows = [both_branch_row(i, p=0.5, cb=False, rag=True) for i in range(3)]
    mutate(rows[1])
    path = write_both_branches(tmp_path / CACHE_FILE, rows)
    with pytest.raises(DataError, match=f":2: .*{match}"):
        read_both_branches(path)


def test_cache_level_errors(tmp_path) -> None:
    with pytest.raises(DataError, match="not found"):
        read_both_branches(tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / CACHE_FILE).write_text("\n")
    with pytest.raises(DataError, match="empty"):
        read_both_branches(empty)
    dup = [both_branch_row(1, p=0.5, cb=False, rag=True)] * 2
    with pytest.raises(DataError, match="duplicate id 'q1'"):
        read_both_branches(write_both_branches(tmp_path / "d.jsonl", dup))
    mixed = [
        both_branch_row(1, p=0.5, cb=False, rag=True, model_id="a"),
        both_branch_row(2, p=0.5, cb=False, rag=True, model_id="b"),
    ]
    with pytest.raises(DataError, match="mixes rows of several models"):
        read_both_branches(write_both_branches(tmp_path / "m.jsonl", mixed))
    (tmp_path / "bad.jsonl").write_text("{not json\n")
    with pytest.raises(DataError, match="bad.jsonl:1: not valid JSON"):
        read_both_branches(tmp_path / "bad.jsonl")


def test_policies_that_cannot_replay_are_refused(tmp_path) -> None:
    records = read_both_branches(make_cache(tmp_path))
    other = build_policy(
        "threshold",
        feature="next_token_max_prob",
        direction="higher_is_known",
        value=0.5,
        model_id="gemma3-270m",
    )
    with pytest.raises(PolicyError, match="fitted for model 'gemma3-270m'"):
        replay(records, {"a": build_policy("always"), "b": other})
    assert replay(records, {"a": build_policy("always"), "b": other}, force=True).questions == 200
    missing = build_policy(
        "threshold", feature="hidden_hoyer_last", direction="higher_is_known", value=0.5
    )
    with pytest.raises(PolicyError, match="cannot be replayed.*hidden_hoyer_last"):
        replay(records, {"a": build_policy("always"), "b": missing})
    # The oracle reads the closed-book label that the replay supplies.
    report = replay(records, {"always": build_policy("always"), "oracle": build_policy("oracle")})
    assert report.policies[1].retrieval_rate.value == pytest.approx(0.7)


def test_cli_replay_with_policy_files_and_json(tmp_path) -> None:
    cache = make_cache(tmp_path, scores=False)
    gate_file = tmp_path / "gate.json"
    gate_policy(0.7).save(gate_file)
    runner = CliRunner()
    result = runner.invoke(
        app,
        ["ab", "replay", "--cache", str(cache), "--policy", "always", "--policy", str(gate_file)],
    )
    assert result.exit_code == 0, result.output
    assert "gate wins on cost" in result.output.replace("\n", " ")
    assert "mean score" not in result.output  # no scores in this cache
    result = runner.invoke(
        app, ["ab", "replay", "--cache", str(cache), "-p", "always", "-p", "always", "--json"]
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert [p["label"] for p in data["policies"]] == ["always", "always-2"]
    bad = runner.invoke(app, ["ab", "replay", "--cache", str(cache), "-p", "sometimes"])
    assert bad.exit_code == 2 and "not a policy file" in bad.output
    missing = runner.invoke(app, ["ab", "replay", "--cache", str(tmp_path / "nope"), "-p", "never"])
    assert missing.exit_code == 2 and "not found" in missing.output
