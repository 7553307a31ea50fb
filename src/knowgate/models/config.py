"""Configuration of a language model: where it comes from, how prompts look, how it decodes."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator

from knowgate.prompting.config import DemonstrationConfig
from knowgate.schema import StrictModel

DEFAULT_MODEL = "smollm2-135m"

DEFAULT_SYSTEM_PROMPT = (
    "Answer the question with a short phrase: a name, place, date or number. "
    "Do not write a full sentence."
)
DEFAULT_SELF_REPORT_TEMPLATE = (
    "Can you answer this question correctly from memory, without looking anything up? "
    "Answer yes or no.\nQuestion: {question}"
)
DEFAULT_RAG_SYSTEM_PROMPT = (
    "Answer the question with a short phrase: a name, place, date or number. "
    "Use the context passages when they help. Do not write a full sentence."
)


class FewShotExample(StrictModel):
    """One worked question/answer pair shown before the real question."""

    question: str
    answer: str


DEFAULT_FEW_SHOT: tuple[FewShotExample, ...] = (
    FewShotExample(question="What is the capital of France?", answer="Paris"),
    FewShotExample(question="Who wrote Romeo and Juliet?", answer="William Shakespeare"),
    FewShotExample(question="What is Albert Einstein's occupation?", answer="physicist"),
    FewShotExample(question="In what country is Kyoto?", answer="Japan"),
)


class PromptConfig(StrictModel):
    """How a question (and, when retrieving, its passages) becomes a prompt.

    Attributes:
        style: ``chat`` uses the tokenizer's chat template with a short-answer system prompt;
            ``few_shot`` writes a ``Q:/A:`` few-shot prompt (for base models such as
            Gemma-3-270M); ``auto`` picks ``chat`` when the tokenizer has a template.
        system_prompt: system message for closed-book chat prompts.
        rag_system_prompt: system message for chat prompts that carry passages.
        few_shot_examples: worked examples for ``few_shot`` prompts.
        passage_template: how one passage is written into the context; fields ``index``,
            ``title`` and ``text``.
        max_passage_chars: passages are cut to this many characters, so k passages fit the
            context window of small models.
        self_report_template: the question for the self-routing peer ("can you answer this from
            memory?"), with a ``{question}`` field; the model's P(yes) is the signal.
        demonstrations: how ``few_shot`` prompts choose their examples: ``fixed`` (default) shows
            ``few_shot_examples``; other strategies pick them per question from a pool
            (:class:`knowgate.prompting.DemonstrationConfig`, docs/prompting.md).
    """

    style: Literal["auto", "chat", "few_shot"] = "auto"
    system_prompt: str = DEFAULT_SYSTEM_PROMPT
    rag_system_prompt: str = DEFAULT_RAG_SYSTEM_PROMPT
    few_shot_examples: tuple[FewShotExample, ...] = DEFAULT_FEW_SHOT
    passage_template: str = "[{index}] {title}: {text}"
    max_passage_chars: int = Field(default=800, ge=50)
    self_report_template: str = DEFAULT_SELF_REPORT_TEMPLATE
    demonstrations: DemonstrationConfig = DemonstrationConfig()

    @field_validator("self_report_template")
    @classmethod
    def _has_question(cls, v: str) -> str:
        try:
            formatted = v.format(question="\x00")
        except (KeyError, IndexError) as exc:
            raise ValueError(f"self_report_template may only use {{question}}: {exc}") from exc
        if "\x00" not in formatted:
            raise ValueError("self_report_template must contain {question}")
        return v

    @field_validator("passage_template")
    @classmethod
    def _known_fields(cls, v: str) -> str:
        try:
            v.format(index=1, title="t", text="x")
        except (KeyError, IndexError) as exc:
            raise ValueError(
                f"passage_template may only use {{index}}, {{title}}, {{text}}: {exc}"
            ) from exc
        return v


class GenerationConfig(StrictModel):
    """Greedy decoding settings for the closed-book draft (and the answer).

    Attributes:
        max_new_tokens: token limit of an answer.
        stop_at_newline: end the answer at the first token containing a newline (short answers;
            also stops few-shot prompts from running into the next ``Q:``).
        batch_size: prompts per forward pass in batched runs.
    """

    max_new_tokens: int = Field(default=16, ge=1, le=1024)
    stop_at_newline: bool = True
    batch_size: int = Field(default=8, ge=1, le=512)


class ModelConfig(StrictModel):
    """Which model to load and how to run it.

    Attributes:
        source: a packaged model name (``smollm2-135m``, ``gemma3-270m``), a Hugging Face hub id,
            a local model directory, or a ``.gguf`` file.
        dtype: weights dtype after loading (GGUF weights are dequantized to float32 first).
        device: torch device string.
        cache_dir: where dequantized GGUF checkpoints are cached; default ``$KNOWGATE_CACHE_DIR``
            or the user's cache directory.
        layers: decoder blocks whose activations are captured (``all`` or indices; negative
            indices count from the end).
        revision: hub revision (branch, tag or commit) for hub ids.
    """

    source: str = DEFAULT_MODEL
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    device: str = "cpu"
    cache_dir: Path | None = None
    layers: Literal["all"] | tuple[int, ...] = "all"
    revision: str | None = None
    prompt: PromptConfig = PromptConfig()
    generation: GenerationConfig = GenerationConfig()

    @field_validator("source")
    @classmethod
    def _nonempty_source(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("model source must not be empty")
        return v.strip()

    @field_validator("layers")
    @classmethod
    def _nonempty_layers(cls, v: str | tuple[int, ...]) -> str | tuple[int, ...]:
        if isinstance(v, tuple) and not v:
            raise ValueError("layers must be 'all' or a non-empty list of block indices")
        return v
