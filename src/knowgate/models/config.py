"""Configuration of a language model: where it comes from, how prompts look, how it decodes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator, model_validator

from knowgate.prompting.config import DemonstrationConfig
from knowgate.schema import StrictModel

DEFAULT_MODEL = "smollm2-135m"
ADAPTER_CONFIG_FILE = "adapter_config.json"
"""A directory holding this file is a LoRA adapter (peft's format), not a full model."""
REMOTE_SCHEME = "openai:"
"""Model sources ``openai:<base_url>#<model name>`` name a model behind an OpenAI-compatible
server (see :class:`RemoteConfig`)."""

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


class RemoteConfig(StrictModel):
    """A model served behind an OpenAI-compatible ``/chat/completions`` endpoint.

    vLLM, SGLang, llama.cpp's servers and Ollama all serve one; knowgate gates such a model with
    the signals the server returns (see docs/remote.md).

    Attributes:
        base_url: the API root, e.g. ``http://127.0.0.1:8000/v1`` (requests go to
            ``{base_url}/chat/completions`` and ``{base_url}/models``).
        model: the served model's name (the request's ``model`` field).
        api_key_env: name of the environment variable holding the API key (sent as a bearer
            token); ``None`` sends none. The key itself never goes into a config or a cache.
        model_id: the identity recorded in traces, caches and fitted policies; default
            ``openai:<base_url>#<model>``. Set it to keep one identity across hosts serving the
            same weights.
        revision: what the served weights are (a checkpoint hash, a tag), if you know it; it
            keys the caches beside what the server's ``/models`` entry says (a server can swap
            weights behind the same name; see docs/remote.md).
        top_logprobs: alternatives requested per generated token (servers cap it, usually at 20);
            the ``*_topk_entropy`` features are over these.
        hidden_states: ask for the last-layer hidden state (SGLang's ``return_hidden_states``;
            the server must run with ``--enable-return-hidden-states``); it adds the
            ``served_hidden_*`` sparsity features.
        timeout_s: seconds to wait for one response.
        connect_timeout_s: seconds to wait for a connection.
        max_retries: retries of a request that failed in a way that is safe to retry (the
            connection was refused or could not be made, 429 rate limits, 502/503/504); never
            of a timed-out or malformed response.
        backoff_s: first wait before a retry; it doubles per retry (with jitter), and a
            ``Retry-After`` header wins when the server sends one.
        max_backoff_s: longest wait between retries.
        concurrency: requests in flight at once for a batch of questions.
        extra_body: extra fields merged into every request (server-specific sampling options).
    """

    base_url: str
    model: str = Field(min_length=1)
    api_key_env: str | None = None
    model_id: str | None = None
    revision: str | None = None
    top_logprobs: int = Field(default=20, ge=2, le=100)
    hidden_states: bool = False
    timeout_s: float = Field(default=60.0, gt=0)
    connect_timeout_s: float = Field(default=5.0, gt=0)
    max_retries: int = Field(default=3, ge=0, le=20)
    backoff_s: float = Field(default=0.5, ge=0)
    max_backoff_s: float = Field(default=8.0, ge=0)
    concurrency: int = Field(default=8, ge=1, le=256)
    extra_body: dict[str, Any] = Field(default_factory=dict)

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, v: str) -> str:
        v = v.strip().rstrip("/")
        parts = urlsplit(v)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(
                f"base_url must be an http(s) URL such as http://127.0.0.1:8000/v1, got {v!r}"
            )
        return v

    @field_validator("extra_body")
    @classmethod
    def _no_core_fields(cls, v: dict[str, Any]) -> dict[str, Any]:
        core = {"model", "messages", "logprobs", "top_logprobs", "max_tokens", "stream"}
        clash = sorted(core & set(v))
        if clash:
            raise ValueError(f"extra_body may not set {clash}: knowgate sets them itself")
        return v

    @property
    def source(self) -> str:
        """The ``openai:<base_url>#<model>`` source string naming this model."""
        return f"{REMOTE_SCHEME}{self.base_url}#{self.model}"

    @property
    def identity(self) -> str:
        """The model id (``model_id`` or :attr:`source`)."""
        return self.model_id or self.source

    @classmethod
    def parse_source(cls, source: str) -> dict[str, str]:
        """``openai:<base_url>#<model>`` as ``{"base_url", "model"}``.

        Raises:
            ValueError: not of that form.
        """
        body = source.strip().removeprefix(REMOTE_SCHEME)
        base_url, sep, model = body.rpartition("#")
        if not source.strip().startswith(REMOTE_SCHEME) or not sep or not base_url or not model:
            raise ValueError(
                f"a remote model source is openai:<base_url>#<model name> (e.g. "
                f"openai:http://127.0.0.1:8000/v1#Qwen/Qwen2.5-7B-Instruct), got {source!r}"
            )
        return {"base_url": base_url, "model": model}


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
        adapter: a LoRA adapter directory (peft format) applied to ``source`` and merged into
            its weights; the adapter's SHA-256 becomes part of the model id, so caches and fitted
            policies of a fine-tuned model never mix with the base model's. Needs the ``peft``
            package (``pip install 'knowgate[study]'``). ``source`` may also name the adapter
            directory itself: its ``adapter_config.json`` names the base model.
        remote: a model behind an OpenAI-compatible server instead of a local one (also set by
            a source ``openai:<base_url>#<model name>``); ``dtype``, ``device``, ``cache_dir``,
            ``layers`` and ``revision`` do not apply to it, and it takes no ``adapter``.
    """

    source: str = DEFAULT_MODEL
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    device: str = "cpu"
    cache_dir: Path | None = None
    layers: Literal["all"] | tuple[int, ...] = "all"
    revision: str | None = None
    adapter: Path | None = None
    prompt: PromptConfig = PromptConfig()
    generation: GenerationConfig = GenerationConfig()
    remote: RemoteConfig | None = None

    @model_validator(mode="before")
    @classmethod
    def _remote_source(cls, data: Any) -> Any:
        """Tie ``source`` and ``remote`` together: either names the served model."""
        if not isinstance(data, dict):
            return data
        source = data.get("source")
        remote = data.get("remote")
        from_source = isinstance(source, str) and source.strip().startswith(REMOTE_SCHEME)
        if remote is None:
            if from_source and isinstance(source, str):
                return {**data, "remote": RemoteConfig.parse_source(source)}
            return data
        config = remote if isinstance(remote, RemoteConfig) else RemoteConfig.model_validate(remote)
        if source is None or source == DEFAULT_MODEL:
            return {**data, "source": config.source, "remote": config}
        if from_source and isinstance(source, str):
            named = RemoteConfig.parse_source(source)
            if (named["base_url"].rstrip("/"), named["model"]) != (config.base_url, config.model):
                raise ValueError(
                    f"model.source {source!r} and model.remote ({config.source}) name different "
                    "served models; give one of them"
                )
            return {**data, "source": config.source, "remote": config}
        raise ValueError(
            f"model.source {source!r} is a local model but model.remote points at "
            f"{config.source}; give one of them"
        )

    @field_validator("source")
    @classmethod
    def _nonempty_source(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("model source must not be empty")
        return v.strip()

    @model_validator(mode="before")
    @classmethod
    def _adapter_as_source(cls, data: Any) -> Any:
        """``source: <adapter dir>`` means ``source: <its base>, adapter: <adapter dir>``."""
        if not isinstance(data, dict) or not isinstance(data.get("source"), str):
            return data
        directory = Path(data["source"].strip()).expanduser()
        if not (directory / ADAPTER_CONFIG_FILE).is_file() or (directory / "config.json").is_file():
            return data
        if data.get("adapter") is not None:
            raise ValueError(
                f"source {directory} is a LoRA adapter and adapter is also set; give one adapter"
            )
        return {**data, "source": adapter_base_model(directory), "adapter": directory}

    @field_validator("adapter")
    @classmethod
    def _adapter_directory(cls, v: Path | None) -> Path | None:
        if v is None:
            return None
        v = v.expanduser()
        if not (v / ADAPTER_CONFIG_FILE).is_file():
            raise ValueError(
                f"adapter {v} is not a LoRA adapter directory (no {ADAPTER_CONFIG_FILE})"
            )
        return v

    @model_validator(mode="after")
    def _adapter_is_local(self) -> ModelConfig:
        if self.adapter is not None and self.remote is not None:
            raise ValueError(
                f"adapter {self.adapter} is applied to local weights; a remote model "
                f"({self.remote.source}) cannot take one"
            )
        return self

    @field_validator("layers")
    @classmethod
    def _nonempty_layers(cls, v: str | tuple[int, ...]) -> str | tuple[int, ...]:
        if isinstance(v, tuple) and not v:
            raise ValueError("layers must be 'all' or a non-empty list of block indices")
        return v


def adapter_base_model(directory: Path) -> str:
    """The base model an adapter directory names (``base_model_name_or_path``).

    Raises:
        ValueError: the adapter config is unreadable or names no base model.
    """
    path = directory / ADAPTER_CONFIG_FILE
    try:
        base = json.loads(path.read_text(encoding="utf-8")).get("base_model_name_or_path")
    except (OSError, json.JSONDecodeError, AttributeError) as exc:
        raise ValueError(f"cannot read {path}: {exc}") from exc
    if not isinstance(base, str) or not base.strip():
        raise ValueError(
            f"{path} names no base model (base_model_name_or_path); pass the base as source "
            "and this directory as adapter"
        )
    return base.strip()
