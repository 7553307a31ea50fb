"""Demonstration selection inside the language model, the closed-book cache key and the router.

A tiny random Qwen2 with SmolLM2's tokenizer stands in for a base model (few-shot prompts); the
packaged MiniLM embeds questions.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, Qwen2Config

from knowgate.errors import ConfigError
from knowgate.evaluation.branches.closed_book import cache_key_material
from knowgate.evaluation.datasets import load_dataset
from knowgate.models import LanguageModel, ModelConfig, PromptConfig
from knowgate.policy import build_policy
from knowgate.prompting import DemonstrationConfig, PoolScores, save_scores
from knowgate.routing import Router

POOL = [
    ("What is the capital of Peru?", "Lima"),
    ("What is the capital of Chile?", "Santiago"),
    ("Who wrote Hamlet?", "William Shakespeare"),
    ("Who wrote Faust?", "Goethe"),
    ("What sport does Lionel Messi play?", "association football"),
    ("In what country is Kyoto?", "Japan"),
]


@pytest.fixture(scope="module")
def tiny(smollm) -> LanguageModel:
    torch.manual_seed(0)
    cfg = Qwen2Config(
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        vocab_size=len(smollm.tokenizer),
    )
    model = AutoModelForCausalLM.from_config(cfg).eval()
    config = ModelConfig(source="tiny", prompt=PromptConfig(style="few_shot"))
    return LanguageModel(model, smollm.tokenizer, model_id="tiny-qwen2", config=config)


@pytest.fixture
def pool_file(tmp_path) -> Path:
    path = tmp_path / "pool.jsonl"
    path.write_text("".join(json.dumps({"question": q, "answer": a}) + "\n" for q, a in POOL))
    return path


def _with(lm: LanguageModel, pool: Path, cache: Path, **settings) -> LanguageModel:
    demo = DemonstrationConfig(pool=pool, cache_dir=cache, **settings)
    return lm.with_prompt(lm.config.prompt.model_copy(update={"demonstrations": demo}))


def _shots(prompt: str) -> list[str]:
    """The demonstration questions of a few-shot prompt, in order (the last Q: is the query)."""
    return [line[3:] for line in prompt.splitlines() if line.startswith("Q: ")][:-1]


def test_fixed_prompts_are_unchanged(tiny) -> None:
    expected = (
        "Q: What is the capital of France?\nA: Paris\n\n"
        "Q: Who wrote Romeo and Juliet?\nA: William Shakespeare\n\n"
        "Q: What is Albert Einstein's occupation?\nA: physicist\n\n"
        "Q: In what country is Kyoto?\nA: Japan\n\n"
        "Q: Who painted  the Mona Lisa?\nA:"
    ).replace("  ", " ")
    assert tiny.demonstrations is None
    assert tiny.format_prompt("Who painted  the Mona Lisa?") == expected
    assert tiny.format_prompts(["Who painted the Mona Lisa?"]) == [expected]


def test_similar_demonstrations_and_the_question_itself_is_never_shown(
    tiny, pool_file, tmp_path
) -> None:
    lm = _with(tiny, pool_file, tmp_path / "cache", strategy="similarity", k=2)
    prompt = lm.format_prompt("What is the capital of Bolivia?")
    assert sorted(_shots(prompt)) == [
        "What is the capital of Chile?",
        "What is the capital of Peru?",
    ]
    assert prompt.endswith("Q: What is the capital of Bolivia?\nA:")
    # a question that is in the pool gets other examples
    own = lm.format_prompts(["who wrote hamlet?"])[0]
    assert "Who wrote Hamlet?" not in _shots(own) and "Who wrote Faust?" in _shots(own)
    # retrieval prompts show the same demonstrations
    passage = type("P", (), {"title": "Bolivia", "text": "Sucre is the capital."})()
    rag = lm.format_prompt("What is the capital of Bolivia?", [passage])
    assert _shots(rag) == _shots(prompt) and "Sucre is the capital." in rag


def test_order_follows_the_cached_pool_densities(tiny, pool_file, tmp_path, monkeypatch) -> None:
    cache = tmp_path / "cache"
    first = _with(tiny, pool_file, cache, strategy="sparse_to_dense", k=3)
    selector = first.demonstrations  # scores the pool and writes the cache
    assert selector is not None
    (path,) = cache.glob("pool-*.npz")
    with np.load(path, allow_pickle=False) as archive:
        material = json.loads(str(archive["key"][()]))
        embeddings = archive["embeddings"]
    assert material["model"]["sparsity_prompt"] == "zero_shot"
    query = "Who wrote Macbeth?"
    chosen = sorted(_shots(first.format_prompt(query)))
    index = {q: i for i, (q, _) in enumerate(POOL)}
    for densities in ([0.1, 0.2, 0.3, 0.4, 0.5, 0.6], [0.6, 0.5, 0.4, 0.3, 0.2, 0.1]):
        save_scores(path, material, PoolScores(np.array(densities), embeddings))

        def no_pool_scoring(*args, **kwargs):
            raise AssertionError("the pool must be read from the cache, not scored again")

        monkeypatch.setattr(LanguageModel, "final_hidden_states", no_pool_scoring)
        again = _with(tiny, pool_file, cache, strategy="sparse_to_dense", k=3)
        shots = _shots(again.format_prompt(query))
        monkeypatch.undo()
        assert sorted(shots) == chosen  # the same three examples ...
        expected = sorted(chosen, key=lambda q: densities[index[q]])  # ... sparsest first
        assert shots == expected


def test_sgicl_reads_the_query_density_once(tiny, pool_file, tmp_path, monkeypatch) -> None:
    lm = _with(tiny, pool_file, tmp_path / "cache", strategy="sgicl", k=2, candidates=4)
    assert lm.demonstrations is not None
    calls = []
    original = LanguageModel.final_hidden_states

    def counting(self, prompts):
        calls.append(list(prompts))
        return original(self, prompts)

    monkeypatch.setattr(LanguageModel, "final_hidden_states", counting)
    prompts = lm.format_prompts(["Who wrote Macbeth?", "What is the capital of Bolivia?"])
    assert calls == [["Q: Who wrote Macbeth?\nA:", "Q: What is the capital of Bolivia?\nA:"]]
    assert all(len(_shots(p)) == 2 for p in prompts)
    lm.format_prompt("Who wrote Macbeth?")  # memoised
    assert len(calls) == 1
    density = lm.sparsity_density(["Who wrote Macbeth?"])
    states = original(lm, ["Q: Who wrote Macbeth?\nA:"])
    a = np.abs(states[0])
    assert density[0] == pytest.approx(float(np.mean(a > a.mean() + a.std())))


def test_chat_models_refuse_per_question_demonstrations(smollm, pool_file, tmp_path) -> None:
    lm = _with(smollm, pool_file, tmp_path / "cache", strategy="random", k=2)
    with pytest.raises(ConfigError, match="few-shot"):
        lm.format_prompt("Who wrote Macbeth?")


def test_closed_book_caches_are_keyed_by_the_demonstrations(tiny, pool_file, tmp_path) -> None:
    data = tmp_path / "d.jsonl"
    data.write_text(
        json.dumps({"id": "1", "question": "Who wrote Macbeth?", "golden_answers": ["x"]})
    )
    dataset = load_dataset(data)
    fixed = cache_key_material(tiny, dataset)
    assert "demonstrations" not in fixed
    keys = {}
    for settings in (
        {"strategy": "similarity", "k": 2},
        {"strategy": "similarity", "k": 3},
        {"strategy": "sgicl", "k": 2, "direction": "hard_to_easy"},
    ):
        material = cache_key_material(_with(tiny, pool_file, tmp_path / "c", **settings), dataset)
        demo = material["demonstrations"]
        assert demo["strategy"] == settings["strategy"] and demo["k"] == settings["k"]
        assert "pool" not in demo and len(demo["pool_sha256"]) == 64
        keys[json.dumps(settings)] = json.dumps(material, sort_keys=True)
    assert len(set(keys.values())) == 3


def test_the_router_answers_with_chosen_demonstrations(tiny, pool_file, tmp_path) -> None:
    lm = _with(tiny, pool_file, tmp_path / "cache", strategy="sgicl", k=2, candidates=4)
    lm = lm.with_prompt(lm.config.prompt)  # a sibling shares the weights and the lock
    assert lm.model is tiny.model and lm._lock is tiny._lock
    router = Router(
        lm,
        build_policy(
            "threshold", feature="next_token_max_prob", direction="higher_is_known", value=0.0
        ),
    )
    routed = router.route_batch(["Who wrote Macbeth?", "What is the capital of Bolivia?"])
    assert all(r.calls["lm"] == 1 for r in routed)
    assert all("demonstrations" in r.timings_ms and "prefill" in r.timings_ms for r in routed)


def test_bench_reads_the_model_section_of_a_config(tmp_path) -> None:
    from typer.testing import CliRunner

    from knowgate.cli import app

    config = tmp_path / "router.yaml"
    config.write_text(
        "model:\n  source: gemma3-270m\n  prompt:\n    demonstrations:\n      strategy: sgicl\n"
    )
    args = ["bench", "--config", str(config), "--data", "x", "--kb", "kb", "--out", "out"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code != 0
    assert "needs a pool" in result.output
