"""Sticky hash assignment: stable across processes and restarts, splits within sampling error."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import pytest
from scipy.stats import binomtest, chisquare

from experiments_helpers import gate_policy, two_arm_experiment
from knowgate.errors import ExperimentError
from knowgate.experiments import BUCKETS, Experiment, bucket_of
from knowgate.experiments.assignment import bucket_ranges
from knowgate.policy import build_policy

UNITS = [f"user-{i}" for i in range(10_000)]

_CHILD = """
import json, sys
from experiments_helpers import two_arm_experiment
exp = two_arm_experiment(weights=[0.3, 0.7], salt="s1")
ids = json.loads(sys.stdin.read())
print(json.dumps({"hash": exp.config_hash, "arms": [exp.assign(u).arm for u in ids],
                  "buckets": [exp.assign(u).bucket for u in ids]}))
"""


def _in_fresh_process(ids: list[str], tests_dir: str) -> dict:
    # PYTHONHASHSEED differs per run: assignment must not depend on Python's hash().
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD],
        input=json.dumps(ids),
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tests_dir,
        env={"PYTHONHASHSEED": "random", "PYTHONPATH": tests_dir, "PATH": ""},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout)


def test_assignment_is_identical_across_processes_and_restarts(request) -> None:
    tests_dir = str(request.path.parent)
    ids = UNITS[:500]
    exp = two_arm_experiment(weights=[0.3, 0.7], salt="s1")
    here = {
        "arms": [exp.assign(u).arm for u in ids],
        "buckets": [exp.assign(u).bucket for u in ids],
    }
    first = _in_fresh_process(ids, tests_dir)
    restarted = _in_fresh_process(ids, tests_dir)  # a "restart": another fresh interpreter
    assert first["arms"] == here["arms"] == restarted["arms"]
    assert first["buckets"] == here["buckets"] == restarted["buckets"]
    assert first["hash"] == restarted["hash"] == exp.config_hash
    # Both arms actually occur, so the comparison above is not vacuous.
    assert set(here["arms"]) == {"control", "gate"}


def test_bucket_is_sha256_of_salt_dot_unit_mod_10000() -> None:
    # Independent computation of the documented scheme (Statsig's construction).
    for unit in ["u1", "42", "ünïcode-user", "x" * 300]:
        digest = hashlib.sha256(f"salt-a.{unit}".encode()).digest()
        assert bucket_of("salt-a", unit) == int.from_bytes(digest[:8], "big") % 10_000
    assert BUCKETS == 10_000


def test_same_unit_always_gets_the_same_arm_and_integer_ids_hash_as_decimal() -> None:
    exp = two_arm_experiment()
    assert {exp.assign("user-7").arm for _ in range(50)} == {exp.assign("user-7").arm}
    assert exp.assign(12345) == exp.assign("12345")
    assert exp.assign("user-7").unit_id_source == "given"


@pytest.mark.parametrize(
    "weights",
    [[1, 1], [0.2, 0.3, 0.5], [0.05, 0.95]],
    ids=["50-50", "20-30-50", "5-95"],
)
def test_split_ratios_are_within_sampling_error_on_10000_units(weights) -> None:
    arms = {f"arm{i}": build_policy("always" if i == 0 else "never") for i in range(len(weights))}
    if len(weights) == 3:
        arms["arm2"] = gate_policy()
    exp = Experiment("split", arms, weights, salt="split-test")
    counts = dict.fromkeys(arms, 0)
    for u in UNITS:
        counts[exp.assign(u).arm] += 1
    total = sum(weights)
    expected = [w / total * len(UNITS) for w in weights]
    observed = [counts[a] for a in arms]
    # Goodness of fit of the whole split, and each arm's share on its own (binomial).
    assert chisquare(observed, expected).pvalue > 0.001
    for a, w in zip(arms, weights, strict=True):
        assert binomtest(counts[a], len(UNITS), w / total).pvalue > 0.001
    # The bucket ranges themselves are exact to the bucket.
    for a, w in zip(arms, weights, strict=True):
        start, stop = exp.ranges[a]
        assert abs((stop - start) - w / total * BUCKETS) <= 1


def test_units_without_id_get_a_random_recorded_id() -> None:
    exp = two_arm_experiment()
    a, b = exp.assign(None), exp.assign(None)
    assert a.unit_id_source == b.unit_id_source == "random"
    assert a.unit_id != b.unit_id and a.unit_id.startswith("anon-")
    # The random id is a real unit: assigning it again gives the same arm.
    assert exp.assign(a.unit_id).arm == a.arm


def test_changing_weights_moves_only_units_whose_bucket_changes_owner() -> None:
    before = two_arm_experiment(weights=[0.5, 0.5], salt="s")
    after = two_arm_experiment(weights=[0.6, 0.4], salt="s")
    moved = [u for u in UNITS if before.assign(u).arm != after.assign(u).arm]
    # Exactly the units in buckets 5000..5999 move (gate -> control): about 10%.
    assert all(5000 <= before.assign(u).bucket < 6000 for u in moved)
    assert all(after.assign(u).arm == "control" for u in moved)
    assert 0.08 < len(moved) / len(UNITS) < 0.12


def test_a_new_salt_reshuffles_units_independently() -> None:
    a = two_arm_experiment(salt="one")
    b = two_arm_experiment(salt="two")
    agree = sum(a.assign(u).arm == b.assign(u).arm for u in UNITS)
    assert binomtest(agree, len(UNITS), 0.5).pvalue > 0.001


def test_config_hash_covers_name_salt_weights_and_policies() -> None:
    base = two_arm_experiment()
    assert base.config_hash == two_arm_experiment().config_hash
    assert base.salt == base.name  # the salt defaults to the name
    variants = [
        two_arm_experiment(name="other"),
        two_arm_experiment(salt="other-salt"),
        two_arm_experiment(weights=[0.4, 0.6]),
        two_arm_experiment(value=0.5),
    ]
    assert len({base.config_hash, *(v.config_hash for v in variants)}) == 5
    # Weights that give the same buckets are the same definition.
    assert two_arm_experiment(weights=[2, 2]).config_hash == base.config_hash
    assert two_arm_experiment(weights={"gate": 1, "control": 1}).config_hash == base.config_hash


def test_definition_is_json_and_names_every_arm() -> None:
    exp = two_arm_experiment(weights=[1, 3])
    d = json.loads(json.dumps(exp.definition()))
    assert d["config_hash"] == exp.config_hash
    assert [a["arm"] for a in d["arms"]] == ["control", "gate"]
    assert [a["weight"] for a in d["arms"]] == [0.25, 0.75]
    assert d["arms"][1]["policy"]["policy"] == "threshold"
    assert exp.control == "control"


@pytest.mark.parametrize(
    ("arms", "weights", "salt", "match"),
    [
        ({"a": build_policy("always")}, None, None, "at least two arms"),
        ({"a": build_policy("always"), "b": "never"}, None, None, "must be a knowgate Policy"),
        ({"a": build_policy("always"), "b": build_policy("never")}, [1], None, "1 weights"),
        (
            {"a": build_policy("always"), "b": build_policy("never")},
            [1, -1],
            None,
            "positive",
        ),
        (
            {"a": build_policy("always"), "b": build_policy("never")},
            [1, float("nan")],
            None,
            "finite",
        ),
        (
            {"a": build_policy("always"), "b": build_policy("never")},
            {"a": 1, "c": 1},
            None,
            "exactly the arms",
        ),
        ({"a": build_policy("always"), "b": build_policy("never")}, [1, 1e-9], None, "bucket"),
        ({"a": build_policy("always"), "b": build_policy("never")}, None, "", "salt"),
    ],
)
def test_invalid_definitions_are_refused(arms, weights, salt, match) -> None:
    with pytest.raises(ExperimentError, match=match):
        Experiment("bad", arms, weights, salt)


@pytest.mark.parametrize(
    ("unit", "match"),
    [
        ("", "empty"),
        ("  ", "empty"),
        (3.5, "string or an integer"),
        (True, "string or an integer"),
        ("x" * 600, "limit"),
    ],
)
def test_invalid_unit_ids_are_refused(unit, match) -> None:
    with pytest.raises(ExperimentError, match=match):
        two_arm_experiment().assign(unit)


def test_bucket_ranges_cover_every_bucket() -> None:
    ranges = bucket_ranges(["a", "b", "c"], [1, 1, 1])
    assert ranges == {"a": (0, 3333), "b": (3333, 6667), "c": (6667, 10_000)}
