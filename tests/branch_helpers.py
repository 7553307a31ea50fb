"""A fake model runner for the branch runners' tests (no torch, fast)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from knowgate.models.config import ModelConfig, PromptConfig
from knowgate.signals import ForwardCapture, PositionStates, TokenStats

N_LAYERS = 4


@dataclass
class _Draft:
    text: str
    stats: TokenStats
    stop_reason: str = "eos"
    seconds: float = 0.01


@dataclass
class _Prefill:
    captures: list
    prompt_tokens: list
    answers: list
    seconds: float = 0.02


@dataclass
class _Layout:
    num_layers: int = N_LAYERS


class _Model:
    def state_dict(self):
        return {}


def _stats(value: float, n: int = 1) -> TokenStats:
    return TokenStats.from_lists([value] * n, [-0.5] * n, [0.3] * n, [1.5] * n)


def _capture(number: int) -> ForwardCapture:
    """Synthetic activations whose values encode the question number and the position."""
    rng = np.random.default_rng(number)

    def states(offset: float) -> PositionStates:
        hidden = rng.normal(size=(N_LAYERS, 8)).astype(np.float32) + offset
        return PositionStates(hidden, rng.normal(size=(N_LAYERS, 12)).astype(np.float32))

    end = states(100.0 * number)
    return ForwardCapture(
        layers=tuple(range(N_LAYERS)),
        num_layers=N_LAYERS,
        hidden=end.hidden,
        mlp=end.mlp,
        next_token=_stats(float(number)),
        positions={"question_end": states(1.0), "question_mean": states(2.0)},
        question_states=rng.normal(size=(3, 8)).astype(np.float32),
    )


class FakeLM:
    """Answers correctly for even question numbers; counts the prompts it runs."""

    def __init__(self, model_id="fake-lm", system_prompt="Answer briefly."):
        self.model_id = model_id
        self.config = ModelConfig(source=model_id, prompt=PromptConfig(system_prompt=system_prompt))
        self.layers = tuple(range(N_LAYERS))
        self.layout = _Layout()
        self.model = _Model()
        self.prompts_run: list[str] = []
        self.questions_seen: list[str] = []

    def format_prompt(self, question, passages=None):
        return f"{self.config.prompt.system_prompt}\nQ: {question}\nA:"

    def prefill(self, prompts, *, questions=None):
        assert questions is not None and len(questions) == len(prompts)
        self.prompts_run.extend(prompts)
        self.questions_seen.extend(questions)
        numbers = [int(p.split("number ")[1].split("?")[0]) for p in prompts]
        answers = [f"answer {n}" if n % 2 == 0 else "no idea" for n in numbers]
        return _Prefill([_capture(n) for n in numbers], [len(p.split()) for p in prompts], answers)

    def decode(self, pre, *, max_new_tokens=None):
        return [_Draft(a, _stats(0.25, 2)) for a in pre.answers]
