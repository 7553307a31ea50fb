"""Demonstration selection rules, pools, the pool-score cache and the config (no model).

Expected orders are worked out by hand from the similarities, densities and levels each test
writes down, not read back from the code.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest

from knowgate.errors import ConfigError, DataError, InputError
from knowgate.models.config import ModelConfig, PromptConfig
from knowgate.prompting import (
    Demonstration,
    DemonstrationConfig,
    DemonstrationPool,
    DemonstrationSelector,
    difficulty_levels,
    select,
    sgicl,
)
from knowgate.prompting.scores import PoolScores, load_or_score, load_scores, save_scores
from knowgate.prompting.selection import most_similar, query_rng


# ---------------------------------------------------------------------------------- levels
def test_levels_cut_distinct_values_into_equal_counts_densest_first() -> None:
    density = np.array([0.10, 0.50, 0.30, 0.90, 0.70, 0.20, 0.80, 0.40, 0.60, 1.00])
    # sorted dense -> sparse: 1.0 .9 | .8 .7 | .6 .5 | .4 .3 | .2 .1  -> levels 1..5
    expected = np.array([5, 3, 4, 1, 2, 5, 2, 4, 3, 1])
    np.testing.assert_array_equal(difficulty_levels(density, density, 5), expected)


def test_levels_of_ties_are_shared_and_queries_outside_the_range_are_clipped() -> None:
    reference = np.array([0.5, 0.5, 0.5, 0.5, 0.1, 0.9])
    # 0.5 has 1 denser value and 5 denser-or-equal: mid-rank 3 of 6 -> floor(3 * 2 / 6) + 1 = 2
    assert difficulty_levels([0.5], reference, 2).tolist() == [2]
    assert difficulty_levels([0.95, 0.9, 0.1, 0.0], reference, 2).tolist() == [1, 1, 2, 2]
    with pytest.raises(InputError):
        difficulty_levels([0.5], [], 5)
    with pytest.raises(InputError):
        difficulty_levels([np.nan], reference, 5)


# ------------------------------------------------------------------------- simple strategies
SIM = np.array([0.1, 0.9, 0.5, 0.8, 0.3, 0.7])
DENSITY = np.array([0.06, 0.02, 0.05, 0.09, 0.04, 0.03])


def _config(strategy: str, k: int = 3, **extra) -> DemonstrationConfig:
    return DemonstrationConfig(strategy=strategy, k=k, pool=Path("pool.jsonl"), **extra)


def _select(config: DemonstrationConfig, query_level: int = 1, usable=None, key="q") -> list:
    levels = difficulty_levels(DENSITY, DENSITY, config.levels)
    return select(
        config,
        similarity=SIM,
        density=DENSITY,
        pool_levels=levels,
        query_level=query_level,
        query_key=key,
        usable=usable,
    ).tolist()


def test_similarity_shows_the_k_most_similar_with_the_most_similar_last() -> None:
    # top 3 by similarity: 1 (0.9), 3 (0.8), 5 (0.7)
    assert _select(_config("similarity")) == [5, 3, 1]
    usable = np.array([True, False, True, True, True, True])
    assert _select(_config("similarity"), usable=usable) == [2, 5, 3]


def test_density_orders_follow_the_pool_densities() -> None:
    # the same top 3 (1, 3, 5) with densities 0.02, 0.09, 0.03
    assert _select(_config("sparse_to_dense")) == [1, 5, 3]
    assert _select(_config("dense_to_sparse")) == [3, 5, 1]


def test_shuffled_is_a_seeded_permutation_of_the_same_set() -> None:
    first = _select(_config("shuffled"), key="who wrote hamlet?")
    assert sorted(first) == [1, 3, 5]
    assert _select(_config("shuffled"), key="who wrote hamlet?") == first  # per query, stable
    orders = {
        tuple(_select(_config("shuffled", seed=s), key="who wrote hamlet?")) for s in range(20)
    }
    assert len(orders) > 1  # the seed matters


def test_random_draws_k_distinct_usable_examples_per_query() -> None:
    usable = np.array([True, True, False, True, True, True])
    drawn = _select(_config("random"), usable=usable, key="a")
    assert len(set(drawn)) == 3 and 2 not in drawn
    assert _select(_config("random"), usable=usable, key="a") == drawn
    draws = {tuple(_select(_config("random"), usable=usable, key=f"q{i}")) for i in range(20)}
    assert len(draws) > 1


def test_too_few_usable_examples_and_fixed_are_errors() -> None:
    with pytest.raises(InputError, match="fewer than 3"):
        most_similar(SIM, 3, np.array([True, False, False, False, False, True]))
    with pytest.raises(InputError, match="does not select"):
        select(
            DemonstrationConfig(),
            similarity=SIM,
            density=DENSITY,
            pool_levels=np.ones(6, dtype=np.int64),
            query_level=1,
            query_key="q",
        )


def test_query_rng_does_not_depend_on_call_order() -> None:
    a = query_rng(0, "x").integers(0, 1_000_000, size=3)
    query_rng(0, "y").integers(0, 10)
    assert query_rng(0, "x").integers(0, 1_000_000, size=3).tolist() == a.tolist()


# -------------------------------------------------------------------------------- SG-ICL rule
# Ten pool examples; similarity falls with the index; levels are given directly.
SG_SIM = np.linspace(1.0, 0.1, 10)
SG_LEVELS = np.array([4, 2, 3, 2, 4, 5, 3, 1, 2, 4])
SG_DENSITY = np.array([0.30, 0.70, 0.50, 0.72, 0.31, 0.10, 0.52, 0.90, 0.71, 0.32])


def _sgicl(query_level: int, k: int = 2, levels: int = 5, direction: str = "easy_to_hard", **kw):
    return sgicl(
        SG_SIM,
        SG_DENSITY,
        SG_LEVELS,
        query_level,
        k=k,
        candidates=kw.get("candidates", 10),
        levels=levels,
        direction=direction,  # type: ignore[arg-type]
        usable=kw.get("usable"),
    ).tolist()


def test_sgicl_hard_query_takes_one_easier_and_one_same_level_example_easy_first() -> None:
    # level 4 (>= 2*5//3 = 3: "hard"): most similar level-3 example is 2, level-4 is 0;
    # easy -> hard puts the denser (2: 0.50) before the sparser (0: 0.30)
    assert _sgicl(4) == [2, 0]
    assert _sgicl(4, direction="hard_to_easy") == [0, 2]
    # level 3 is "hard" too in their code (medium only below 3): level 2 and level 3
    assert _sgicl(3) == [1, 2]


def test_sgicl_medium_query_takes_same_level_examples() -> None:
    # level 2 (< 3): the two most similar level-2 examples, 1 (0.70) and 3 (0.72), densest first
    assert _sgicl(2) == [3, 1]
    # level 1 is "medium" with 5 levels (the easy branch needs level < 5 // 3 = 1: never)
    # only one level-1 example (7): filled with the most similar remaining candidate (0)
    assert _sgicl(1) == [7, 0]


def test_sgicl_easy_branch_exists_with_more_levels_and_k_generalises() -> None:
    # 6 levels: easy = 2, so a level-1 query takes ceil(k/2) from level 1 and floor(k/2) from 2
    assert _sgicl(1, k=2, levels=6) == [7, 1]
    # k = 4, hard query of level 4: two from level 3 (2, 6) and two from level 4 (0, 4)
    assert _sgicl(4, k=4) == [6, 2, 4, 0]
    # candidates limit the search: among the 3 most similar (0, 1, 2) a level-4 query finds
    # level 3 -> 2, level 4 -> 0; a level-5 query finds no level 4 or 5 beyond 0 and fills with 1
    assert _sgicl(4, candidates=3) == [2, 0]
    assert _sgicl(5, candidates=3) == [1, 0]


def test_sgicl_never_shows_an_unusable_example() -> None:
    usable = np.ones(10, dtype=bool)
    usable[2] = False
    assert _sgicl(4, usable=usable) == [6, 0]


# ---------------------------------------------------------------------------------- the pool
def _write_pool(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_pool_loads_normalises_and_hashes_its_content(tmp_path) -> None:
    path = _write_pool(
        tmp_path / "p.jsonl",
        [
            {"question": " Who  wrote\nHamlet? ", "answer": "Shakespeare"},
            {"question": "b", "answer": "c"},
        ],
    )
    pool = DemonstrationPool.load(path)
    assert pool[0] == Demonstration("Who wrote Hamlet?", "Shakespeare")
    assert pool.index_of("who wrote   HAMLET?") == 0 and pool.index_of("x") is None
    pool.save(tmp_path / "copy.jsonl")
    again = DemonstrationPool.load(tmp_path / "copy.jsonl")
    assert again.content_hash == pool.content_hash
    other = DemonstrationPool([Demonstration("Who wrote Hamlet?", "Marlowe"), pool[1]])
    assert other.content_hash != pool.content_hash


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ([{"question": "a", "answer": "b"}, {"question": " A ", "answer": "c"}], "repeats"),
        ([{"question": "a", "answer": "b", "id": 1}], "expected keys"),
        ([{"question": "a", "answer": "  "}], "empty"),
        ([{"question": 3, "answer": "b"}], "must be a string"),
    ],
)
def test_bad_pools_are_rejected(tmp_path, rows, message) -> None:
    with pytest.raises(DataError, match=message):
        DemonstrationPool.load(_write_pool(tmp_path / "p.jsonl", rows))


def test_missing_pool_file_is_a_data_error(tmp_path) -> None:
    with pytest.raises(DataError, match="not found"):
        DemonstrationPool.load(tmp_path / "none.jsonl")


# ---------------------------------------------------------------------------- the score cache
MATERIAL = {"format": 1, "model": {"model_id": "m"}, "pool": {"sha256": "ab" * 32, "size": 3}}


def _scores() -> PoolScores:
    emb = np.eye(3, 4, dtype=np.float32)
    return PoolScores(np.array([0.1, 0.2, 0.3]), emb)


def test_scores_round_trip_and_reject_another_key(tmp_path, caplog) -> None:
    path = tmp_path / "s.npz"
    save_scores(path, MATERIAL, _scores())
    loaded = load_scores(path, MATERIAL, 3)
    assert loaded is not None
    np.testing.assert_array_equal(loaded.density, [0.1, 0.2, 0.3])
    assert [p.name for p in tmp_path.iterdir()] == ["s.npz"]  # no temporary file left
    other = {**MATERIAL, "model": {"model_id": "other"}}
    with caplog.at_level(logging.WARNING):
        assert load_scores(path, other, 3) is None
    assert "key material differs" in caplog.text
    assert load_scores(path, MATERIAL, 4) is None  # another pool length


@pytest.mark.parametrize(
    "bad",
    [
        PoolScores(np.array([0.1, np.nan, 0.3]), np.eye(3, 4, dtype=np.float32)),
        PoolScores(np.array([0.1, 2.0, 0.3]), np.eye(3, 4, dtype=np.float32)),
        PoolScores(np.array([0.1, 0.2, 0.3]), 2 * np.eye(3, 4, dtype=np.float32)),
    ],
)
def test_invalid_cached_scores_are_not_used(tmp_path, bad) -> None:
    path = tmp_path / "s.npz"
    save_scores(path, MATERIAL, bad)
    assert load_scores(path, MATERIAL, 3) is None


def test_a_corrupt_cache_file_is_recomputed(tmp_path) -> None:
    calls = []

    def density(questions):
        calls.append(list(questions))
        return np.array([0.1, 0.2, 0.3])

    def embed(texts):
        return np.eye(len(texts), 4, dtype=np.float32)

    questions = ["a", "b", "c"]
    _, computed = load_or_score(questions, MATERIAL, tmp_path, density_fn=density, embed_fn=embed)
    assert computed and calls == [questions]
    _, computed = load_or_score(questions, MATERIAL, tmp_path, density_fn=density, embed_fn=embed)
    assert not computed and len(calls) == 1  # read from the cache
    (cached,) = tmp_path.iterdir()
    cached.write_bytes(b"not an npz archive")
    _, computed = load_or_score(questions, MATERIAL, tmp_path, density_fn=density, embed_fn=embed)
    assert computed and len(calls) == 2


# ------------------------------------------------------------------------------ the selector
def _selector(tmp_path: Path, strategy: str, density, **extra) -> DemonstrationSelector:
    questions = ["Who wrote Hamlet?", "Who painted Guernica?", "Who wrote Faust?", "What is 2+2?"]
    pool = DemonstrationPool([Demonstration(q, f"a{i}") for i, q in enumerate(questions)])
    emb = np.array([[1, 0, 0], [0, 1, 0], [0.8, 0.6, 0], [0, 0, 1]], dtype=np.float32)
    config = DemonstrationConfig(strategy=strategy, pool=tmp_path / "p.jsonl", **extra)
    return DemonstrationSelector(
        config,
        pool,
        PoolScores(np.asarray(density, dtype=np.float64), emb),
        density_fn=lambda qs: np.full(len(qs), 0.5),
        embed_fn=lambda qs: np.tile(np.array([[1, 0, 0]], dtype=np.float32), (len(qs), 1)),
        score_material=MATERIAL,
    )


def test_selector_never_shows_the_question_itself(tmp_path) -> None:
    sel = _selector(tmp_path, "similarity", [0.1, 0.2, 0.3, 0.4], k=2)
    # the query embeds like "Who wrote Hamlet?" (similarity 1.0) but is that very question
    (shots,) = sel.select(["who wrote  hamlet?"])
    assert [s.question for s in shots] == ["Who painted Guernica?", "Who wrote Faust?"]
    (shots,) = sel.select(["Who wrote Macbeth?"])
    assert [s.question for s in shots] == ["Who wrote Faust?", "Who wrote Hamlet?"]


def test_selector_order_follows_the_pool_densities_it_was_given(tmp_path) -> None:
    q = ["Who wrote Macbeth?"]
    # the 3 most similar: Hamlet (1.0), Faust (0.8), then Guernica and 2+2 tie at 0 (pool order)
    up = _selector(tmp_path, "sparse_to_dense", [0.3, 0.1, 0.2, 0.9], k=3).select(q)[0]
    assert [s.answer for s in up] == ["a1", "a2", "a0"]  # 0.1, 0.2, 0.3
    flipped = _selector(tmp_path, "sparse_to_dense", [0.1, 0.3, 0.2, 0.9], k=3).select(q)[0]
    assert [s.answer for s in flipped] == ["a0", "a2", "a1"]


def test_selector_needs_a_pool_larger_than_k(tmp_path) -> None:
    with pytest.raises(ConfigError, match="more than k"):
        _selector(tmp_path, "similarity", [0.1, 0.2, 0.3, 0.4], k=4)


# ---------------------------------------------------------------------------------- config
def test_fixed_is_the_default_and_needs_no_pool() -> None:
    assert PromptConfig().demonstrations.strategy == "fixed"
    assert not PromptConfig().demonstrations.selects


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"strategy": "sgicl"}, "needs a pool"),
        ({"strategy": "sgicl", "pool": "p.jsonl", "k": 8, "candidates": 4}, "at least k"),
        ({"strategy": "nearest"}, "strategy"),
        ({"strategy": "random", "pool": "p.jsonl", "k": 0}, "k"),
        ({"strategy": "random", "pool": "p.jsonl", "shots": 2}, "unknown key"),
    ],
)
def test_invalid_demonstration_sections(section, message) -> None:
    with pytest.raises(ConfigError, match=message):
        ModelConfig.from_dict({"prompt": {"demonstrations": section}})


def test_router_yaml_resolves_the_pool_against_its_directory(tmp_path) -> None:
    from knowgate.config import load_config

    (tmp_path / "cfg").mkdir()
    path = tmp_path / "cfg" / "router.yaml"
    path.write_text(
        "model:\n  source: gemma3-270m\n  prompt:\n    style: few_shot\n    demonstrations:\n"
        "      strategy: sgicl\n      k: 2\n      pool: ../pools/p.jsonl\n"
        "      direction: hard_to_easy\n"
    )
    demo = load_config(path).model.prompt.demonstrations
    assert demo.pool == (tmp_path / "pools" / "p.jsonl").resolve()
    assert (demo.strategy, demo.k, demo.direction) == ("sgicl", 2, "hard_to_easy")
