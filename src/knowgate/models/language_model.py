"""A causal LM that reads every signal from the one forward pass its answer needs.

``prefill`` runs the prompt once with capture hooks on and returns the activations at the last
prompt token, the next-token distribution and the KV cache; ``decode`` continues greedily from
that same cache (no second prefill) and records, per generated token, the entropy, the chosen
token's log-probability and the top-1/top-2 margin. ``run`` does both. A pre-generation gate calls
``prefill``, decides, and calls ``decode`` only for the prompts it answers closed-book.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import inspect
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from numpy.typing import NDArray
from tqdm.auto import tqdm

from knowgate.errors import ConfigError, InputError, KnowgateError
from knowgate.models.architecture import BlockLayout, discover_layout, select_layers
from knowgate.models.config import DEFAULT_MODEL, ModelConfig, PromptConfig
from knowgate.models.hooks import PROMPT_END, QuestionSpans, capture_positions
from knowgate.models.loading import load_pretrained
from knowgate.models.prompts import PassageLike, PromptFormatter
from knowgate.prompting import DemonstrationSelector
from knowgate.prompting.config import SparsityPrompt
from knowgate.signals import (
    ForwardCapture,
    PositionStates,
    SignalConfig,
    TokenStats,
    TopKStats,
    compute_features,
)
from knowgate.signals.sparsity import l0_density

StopReason = Literal["eos", "newline", "length"]
DENSITY_MEMO_SIZE = 65536
SPARSITY_PROBE_QUESTION = "What is the capital of France?"
"""Rendered into the sparsity prompt whose hash keys pool scores (so prompt changes count)."""

TokenCallback = Callable[[int, int], None]
"""``on_token(row, token_id)``: one decode step's token for one row that had not finished.

Rows count in the order of the call's output (``decode``: the order of ``rows``; ``run``: the
order of ``prompts``); a row's stop token is passed too. Called under the model lock, between
forward passes: keep it fast.
"""


def summarize_logits(
    logits: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Greedy choice and distribution summary of ``[B, V]`` logits.

    Returns:
        ``(token, entropy, logprob, margin, logit_margin)``, each ``[B]``: the arg-max token, the
        entropy of the full distribution (nats), the chosen token's log-probability,
        p(top1) - p(top2), and logit(top1) - logit(top2).
    """
    logits = logits.float()
    logp = torch.log_softmax(logits, dim=-1)
    top = logits.topk(2, dim=-1)
    top_logp = logp.gather(-1, top.indices)
    entropy = -torch.special.xlogy(logp.exp(), logp.exp()).sum(dim=-1)
    p_top = top_logp.exp()
    return (
        top.indices[:, 0],
        entropy,
        top_logp[:, 0],
        p_top[:, 0] - p_top[:, 1],
        top.values[:, 0] - top.values[:, 1],
    )


@dataclass
class Draft:
    """A greedy closed-book generation.

    Attributes:
        text: the answer text (stop token removed, whitespace stripped).
        token_ids: every generated token, stop token included.
        stop_reason: ``eos``, ``newline`` or ``length``.
        stats: per-token summaries of the answer tokens (stop token excluded; when the answer is
            empty, the stop token's summary, so draft features are always defined).
        seconds: wall time of the decode steps (shared by the rows of a batch).
    """

    text: str
    token_ids: list[int]
    stop_reason: StopReason
    stats: TokenStats
    seconds: float = 0.0


@dataclass
class Prefill:
    """The state after one batched prefill: captures per prompt plus the KV cache to continue.

    A prefill can be decoded once (decoding extends its cache in place).
    """

    prompts: list[str]
    prompt_tokens: list[int]
    captures: list[ForwardCapture]
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    next_logits: torch.Tensor
    cache: Any
    seconds: float
    consumed: bool = False


@dataclass
class RunOutput:
    """One prompt's prefill captures and greedy draft."""

    prompt: str
    prompt_tokens: int
    capture: ForwardCapture
    draft: Draft
    prefill_seconds: float = 0.0
    _features: dict[str, float] | None = field(default=None, repr=False)

    @property
    def answer(self) -> str:
        """The draft's text."""
        return self.draft.text

    def features(self, config: SignalConfig | None = None) -> dict[str, float]:
        """Every named feature of this pass (memoised for the default config)."""
        if config is not None:
            return compute_features(self.capture, config)
        if self._features is None:
            self._features = compute_features(self.capture)
        return self._features


class LanguageModel:
    """A Hugging Face causal LM with capture hooks, prompt formatting and greedy decoding.

    All forward passes of one instance are serialised by a lock: hooks are registered on shared
    modules, so two concurrent prefills would otherwise see each other's activations. Use one
    instance per thread for parallelism, or batch requests (``run`` takes lists).
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        model_id: str,
        config: ModelConfig | None = None,
    ) -> None:
        """Wrap an already loaded model (see :meth:`load` for sources by name)."""
        self.config = config or ModelConfig(source=model_id)
        self.model = model
        self.tokenizer = tokenizer
        self.model_id = model_id
        self.layout: BlockLayout = discover_layout(model)
        self.layers = select_layers(self.config.layers, self.layout.num_layers)
        self.formatter = PromptFormatter(self.config.prompt, tokenizer)
        tokenizer.padding_side = "left"
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        self._lock = threading.RLock()
        self._stop_ids: dict[bool, torch.Tensor] = {}
        self._newline_ids: set[int] | None = None
        params = inspect.signature(model.forward).parameters
        self._accepts_logits_to_keep = "logits_to_keep" in params
        # transformers >= 5.2x names the KV cache argument ``cache``; older releases
        # ``past_key_values``.
        self._cache_kwarg = "cache" if "cache" in params else "past_key_values"
        self._device = next(model.parameters()).device
        self._density_memo: OrderedDict[str, float] = OrderedDict()
        self._selector: DemonstrationSelector | None = None

    @classmethod
    def load(cls, source: str | ModelConfig = DEFAULT_MODEL) -> LanguageModel:
        """Load a packaged model name, hub id, local directory or GGUF file."""
        config = source if isinstance(source, ModelConfig) else ModelConfig(source=source)
        model, tokenizer, resolved = load_pretrained(config)
        return cls(model, tokenizer, model_id=resolved.model_id, config=config)

    def with_prompt(self, prompt: PromptConfig) -> LanguageModel:
        """The same model with another prompt configuration (no reload).

        The two share the weights, the lock that serialises forward passes, the stop-token
        tables and the memo of sparsity-prompt densities; only prompts differ.
        """
        from knowgate.models.fingerprint import inherit_fingerprint

        sibling = copy.copy(self)
        sibling.config = self.config.model_copy(update={"prompt": prompt})
        sibling.formatter = PromptFormatter(prompt, self.tokenizer)
        sibling._selector = None
        inherit_fingerprint(self, sibling)
        return sibling

    # ----------------------------------------------------------------------------- properties
    @property
    def architecture(self) -> str:
        """``config.model_type`` of the wrapped model."""
        return self.layout.architecture

    @property
    def context_length(self) -> int:
        """Maximum sequence length (prompt + answer) the model accepts."""
        cfg = self.model.config
        for attr in ("max_position_embeddings", "n_positions", "max_sequence_length"):
            value = getattr(cfg, attr, None)
            if isinstance(value, int) and value > 0:
                return value
        return int(getattr(self.tokenizer, "model_max_length", 2048))

    @property
    def max_prompt_tokens(self) -> int:
        """Longest prompt that still leaves room for a full answer."""
        return self.context_length - self.config.generation.max_new_tokens

    # ------------------------------------------------------------------------------- prompts
    def format_prompt(self, question: str, passages: Sequence[PassageLike] | None = None) -> str:
        """Closed-book prompt, or retrieval-augmented prompt when ``passages`` are given.

        With a demonstration strategy other than ``fixed``, the few-shot examples are the
        question's chosen demonstrations (the same for its closed-book and retrieval prompts).
        """
        selector = self.demonstrations
        if selector is None:
            return self.formatter.format(question, passages)
        return self.formatter.format(question, passages, shots=selector.select([question])[0])

    def format_prompts(self, questions: Sequence[str]) -> list[str]:
        """Closed-book prompts of many questions (demonstrations chosen in one batch)."""
        if isinstance(questions, str):
            raise InputError("format_prompts() takes a list of questions")
        selector = self.demonstrations
        if selector is None:
            return [self.formatter.format(q) for q in questions]
        chosen = selector.select(questions)
        return [self.formatter.format(q, shots=s) for q, s in zip(questions, chosen, strict=True)]

    @property
    def demonstrations(self) -> DemonstrationSelector | None:
        """The demonstration selector (``None`` for the ``fixed`` strategy).

        Built on first use: the pool is loaded and scored (density and embedding of every
        example), from the cache under ``<cache_dir>/demonstrations/`` when it is there.

        Raises:
            ConfigError: a chat-style prompt, or the last decoder block is not captured.
        """
        config = self.config.prompt.demonstrations
        if not config.selects:
            return None
        if self._selector is None:
            with self._lock:
                if self._selector is None:
                    self._selector = self._build_selector()
        return self._selector

    def _build_selector(self) -> DemonstrationSelector:
        from knowgate.checkpoint_cache import default_cache_dir
        from knowgate.models.fingerprint import model_fingerprint
        from knowgate.retrieval.embedder import Embedder

        config = self.config.prompt.demonstrations
        if self.formatter.style != "few_shot":
            raise ConfigError(
                f"demonstration strategy {config.strategy!r} needs few-shot prompts; "
                f"{self.model_id} uses chat prompts (set prompt.style: few_shot, or "
                "strategy: fixed)"
            )
        last = self._last_layer_row()
        probe = self.formatter.sparsity_prompt(SPARSITY_PROBE_QUESTION, config.sparsity_prompt)
        identity = {
            "model_id": self.model_id,
            "model_fingerprint": model_fingerprint(self),
            "dtype": self.config.dtype,
            "layer": self.layers[last],
            "sparsity_prompt": config.sparsity_prompt,
            "sparsity_prompt_probe_sha256": hashlib.sha256(probe.encode()).hexdigest(),
        }
        embedder = Embedder(config.embedding_model)
        return DemonstrationSelector.build(
            config,
            identity=identity,
            cache_dir=(self.config.cache_dir or default_cache_dir()) / "demonstrations",
            density_fn=self.sparsity_density,
            embed_fn=embedder.encode,
            embedding_model_id=embedder.model_id,
        )

    def _last_layer_row(self) -> int:
        last = self.layout.num_layers - 1
        if last not in self.layers:
            raise ConfigError(
                f"demonstration selection reads the last decoder block ({last}), which is not "
                f"captured (layers: {list(self.layers)}); add -1 to model.layers"
            )
        return self.layers.index(last)

    def sparsity_density(
        self, questions: Sequence[str], kind: SparsityPrompt | None = None
    ) -> NDArray[np.float64]:
        """Each question's density on its sparsity prompt (memoised per prompt text).

        The density is :func:`knowgate.signals.sparsity.l0_density` of the model's last hidden
        state at the last prompt token *after the final norm* - what transformers returns as
        ``hidden_states[-1]``, the state Jin et al.'s SG-ICL code reads. (The block output
        before the norm, ``hidden_l0_density_last``, is dominated by a few massive activations
        in some models - Gemma-3 - and then takes only a handful of values.) The prompt is
        :meth:`PromptFormatter.sparsity_prompt` of ``kind`` (default: the demonstration config's
        ``sparsity_prompt``). Prompts not seen before are prefilled in batches of
        ``generation.batch_size``; nothing is decoded.

        Raises:
            ConfigError: the last block is not captured, or the model's final norm was not found.
        """
        kind = kind or self.config.prompt.demonstrations.sparsity_prompt
        prompts = [self.formatter.sparsity_prompt(q, kind) for q in questions]
        missing = [p for p in dict.fromkeys(prompts) if p not in self._density_memo]
        size = self.config.generation.batch_size
        for start in range(0, len(missing), size):
            chunk = missing[start : start + size]
            states = self.final_hidden_states(chunk)
            for prompt, state in zip(chunk, states, strict=True):
                self._density_memo[prompt] = float(l0_density(state))
        values = np.array([self._density_memo[p] for p in prompts], dtype=np.float64)
        while len(self._density_memo) > DENSITY_MEMO_SIZE:
            self._density_memo.popitem(last=False)
        return values

    def final_hidden_states(self, prompts: Sequence[str]) -> NDArray[np.float32]:
        """``[B, d]`` last hidden state at each prompt's last token, after the final norm.

        One prefill with capture hooks; the final norm is applied to the captured output of the
        last decoder block (equal to transformers' ``hidden_states[-1]`` at that token).

        Raises:
            ConfigError: the last block is not captured, or the model's final norm was not found.
        """
        row = self._last_layer_row()
        norm = self.layout.final_norm
        if norm is None:
            raise ConfigError(
                f"cannot find the final norm of architecture {self.architecture!r} (a module "
                "named norm, final_layernorm, ln_f, ... beside the decoder blocks)"
            )
        pre = self.prefill(prompts)
        pre.consumed = True  # nothing is decoded; the KV cache goes with the prefill
        hidden = np.stack([c.hidden[row] for c in pre.captures])
        param = next(norm.parameters(), None)
        dtype = param.dtype if param is not None else torch.float32
        with self._lock, torch.inference_mode():
            x = torch.from_numpy(hidden).to(device=self._device, dtype=dtype)[:, None, :]
            out = norm(x)[:, 0, :].float().cpu().numpy()
        return np.asarray(out, dtype=np.float32)

    def count_tokens(self, text: str) -> int:
        """Number of tokens ``text`` takes as a prompt."""
        return len(self.tokenizer(text, add_special_tokens=self._add_special(text)).input_ids)

    def _add_special(self, prompt: str) -> bool:
        bos = self.tokenizer.bos_token
        # Chat templates already write the BOS text; do not add a second one.
        return not (bos and prompt.startswith(bos))

    # ----------------------------------------------------------------------------- stopping
    def _newline_token_ids(self) -> set[int]:
        if self._newline_ids is None:
            # Decoding all 262k Gemma tokens one by one takes seconds; only tokens whose raw form
            # holds a newline in one of the usual spellings (literal, byte-level BPE "Ċ",
            # SentencePiece byte fallback "<0x0A>") can decode to one, so decode just those.
            raw = self.tokenizer.convert_ids_to_tokens(list(range(len(self.tokenizer))))
            marks = ("\n", "\r", "Ċ", "<0x0A>", "<0x0D>")
            candidates = [i for i, t in enumerate(raw) if t and any(m in t for m in marks)]
            texts = self.tokenizer.batch_decode([[i] for i in candidates])
            self._newline_ids = {i for i, t in zip(candidates, texts, strict=True) if "\n" in t}
        return self._newline_ids

    def _eos_ids(self) -> set[int]:
        ids: set[int] = set()
        for value in (
            self.tokenizer.eos_token_id,
            getattr(getattr(self.model, "generation_config", None), "eos_token_id", None),
        ):
            if isinstance(value, int):
                ids.add(value)
            elif isinstance(value, list | tuple):
                ids.update(int(v) for v in value)
        return ids

    def stop_token_ids(self, stop_at_newline: bool | None = None) -> torch.Tensor:
        """Token ids that end an answer: EOS, plus every token containing a newline if enabled."""
        flag = (
            self.config.generation.stop_at_newline if stop_at_newline is None else stop_at_newline
        )
        if flag not in self._stop_ids:
            ids = self._eos_ids() | (self._newline_token_ids() if flag else set())
            self._stop_ids[flag] = torch.tensor(sorted(ids), dtype=torch.long, device=self._device)
        return self._stop_ids[flag]

    # -------------------------------------------------------------------------------- passes
    def _encode(
        self, prompts: Sequence[str], *, offsets: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor, Any]:
        if not prompts:
            raise InputError("no prompts given")
        for p in prompts:
            if not isinstance(p, str):
                raise InputError(f"prompts must be strings, got {type(p).__name__}")
            if not p.strip():
                raise InputError("prompt is empty")
        kwargs: dict[str, Any] = {
            "return_tensors": "pt",
            "padding": True,
            "add_special_tokens": self._add_special(prompts[0]),
        }
        if offsets and getattr(self.tokenizer, "is_fast", False):
            kwargs["return_offsets_mapping"] = True
        enc = self.tokenizer(list(prompts), **kwargs)
        lengths = enc.attention_mask.sum(dim=1)
        longest = int(lengths.max())
        if longest > self.max_prompt_tokens:
            raise InputError(
                f"prompt is {longest} tokens; {self.model_id} accepts at most "
                f"{self.max_prompt_tokens} (context {self.context_length} minus "
                f"max_new_tokens {self.config.generation.max_new_tokens}). Shorten the query "
                f"or the passages."
            )
        mapping = enc.get("offset_mapping")
        return enc.input_ids.to(self._device), enc.attention_mask.to(self._device), mapping

    def _forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        position_ids: torch.Tensor,
        cache: Any,
    ) -> Any:
        kwargs: dict[str, Any] = {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "position_ids": position_ids,
            "use_cache": True,
        }
        if cache is not None:
            kwargs[self._cache_kwarg] = cache
        if self._accepts_logits_to_keep:
            kwargs["logits_to_keep"] = 1
        return self.model(**kwargs)

    def _question_spans(
        self,
        prompts: Sequence[str],
        questions: Sequence[str],
        attention_mask: torch.Tensor,
        offsets: Any,
    ) -> QuestionSpans:
        """Token positions of each question inside its (left-padded) prompt.

        The question is found as the last occurrence of its whitespace-normalised text in the
        prompt (few-shot examples come before it); a token belongs to it when its character span
        overlaps the question's.
        """
        if len(questions) != len(prompts):
            raise InputError(f"{len(questions)} questions for {len(prompts)} prompts")
        width = attention_mask.shape[1]
        mask = torch.zeros((len(prompts), width), dtype=torch.float32)
        for b, (prompt, question) in enumerate(zip(prompts, questions, strict=True)):
            text = " ".join(str(question).split())
            start = prompt.rfind(text) if text else -1
            if start < 0:
                raise KnowgateError(
                    f"question {text[:60]!r} does not occur in its prompt; question positions "
                    "need the prompt to contain the question text verbatim"
                )
            stop = start + len(text)
            pad = width - int(attention_mask[b].sum())
            if offsets is not None:
                for j, (lo, hi) in enumerate(offsets[b].tolist()):
                    if j >= pad and hi > start and lo < stop and hi > lo:
                        mask[b, j] = 1.0
            else:  # slow tokenizer: count the tokens before and through the question
                special = self._add_special(prompt)
                before = len(self.tokenizer(prompt[:start], add_special_tokens=special).input_ids)
                through = len(self.tokenizer(prompt[:stop], add_special_tokens=special).input_ids)
                mask[b, pad + before : pad + max(through, before + 1)] = 1.0
            if mask[b].sum() < 1:
                raise KnowgateError(f"no prompt token covers the question {text[:60]!r}")
        positions = torch.arange(width).expand(len(prompts), width)
        end = torch.where(mask > 0, positions, torch.full_like(positions, -1)).max(dim=1).values
        return QuestionSpans(end=end, mask=mask)

    def prefill(self, prompts: Sequence[str], *, questions: Sequence[str] | None = None) -> Prefill:
        """One forward pass over the prompts with capture hooks on.

        Args:
            prompts: the formatted prompts.
            questions: the question text inside each prompt; with them, activations are also
                captured at the question's last token and averaged over its tokens
                (:data:`knowgate.signals.POSITIONS`).

        Raises:
            InputError: a prompt is empty, not a string, or longer than the context allows.
            KnowgateError: a question does not occur in its prompt.
        """
        input_ids, attention_mask, offsets = self._encode(prompts, offsets=questions is not None)
        spans = (
            self._question_spans(prompts, questions, attention_mask.cpu(), offsets)
            if questions is not None
            else None
        )
        position_ids = (attention_mask.long().cumsum(dim=1) - 1).clamp(min=0)
        with self._lock, torch.inference_mode():
            start = time.perf_counter()
            with capture_positions(self.layout, self.layers, spans) as cap:
                out = self._forward(input_ids, attention_mask, position_ids, None)
            next_logits = out.logits[:, -1, :]
            stacked = {p: cap.stacked(self.layers, p) for p in cap.positions}
            _, entropy, logprob, margin, logit_margin = summarize_logits(next_logits)
            seconds = time.perf_counter() - start
        hidden, mlp = stacked[PROMPT_END]
        captures = [
            ForwardCapture(
                layers=self.layers,
                num_layers=self.layout.num_layers,
                hidden=hidden[b].numpy(),
                mlp=mlp[b].numpy(),
                next_token=TokenStats(
                    np.array([float(entropy[b])]),
                    np.array([float(logprob[b])]),
                    np.array([float(margin[b])]),
                    np.array([float(logit_margin[b])]),
                ),
                positions={
                    p: PositionStates(h[b].numpy(), m[b].numpy())
                    for p, (h, m) in stacked.items()
                    if p != PROMPT_END
                },
                question_states=cap.question_states[b].numpy() if cap.question_states else None,
            )
            for b in range(len(prompts))
        ]
        return Prefill(
            prompts=list(prompts),
            prompt_tokens=[int(n) for n in attention_mask.sum(dim=1)],
            captures=captures,
            input_ids=input_ids,
            attention_mask=attention_mask,
            next_logits=next_logits,
            cache=out.cache if hasattr(out, "cache") else out.past_key_values,
            seconds=seconds,
        )

    def _token_limit(self, max_new_tokens: int | None) -> int:
        """The decode budget: the configured one when ``None``; 0 is an error, not "default"."""
        if max_new_tokens is None:
            return self.config.generation.max_new_tokens
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int):
            raise InputError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}")
        if max_new_tokens < 1:
            raise InputError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
        return max_new_tokens

    def decode(
        self,
        prefill: Prefill,
        rows: Sequence[int] | None = None,
        *,
        max_new_tokens: int | None = None,
        stop_at_newline: bool | None = None,
        on_token: TokenCallback | None = None,
    ) -> list[Draft]:
        """Greedy decoding that continues from the prefill's KV cache.

        Args:
            prefill: the result of :meth:`prefill`; consumed by this call.
            rows: which prompts of the batch to continue (default: all); the others' cache rows
                are dropped, so no decode steps are spent on prompts that will retrieve.
            max_new_tokens: token limit (default from the config).
            stop_at_newline: override the config's newline stop.
            on_token: called with every generated token as it is chosen (streaming); see
                :data:`TokenCallback`.

        Returns:
            One :class:`Draft` per selected row, in the order of ``rows``.
        """
        if prefill.consumed:
            raise KnowgateError("this prefill was already decoded; its KV cache has moved on")
        batch = len(prefill.prompts)
        selected = list(range(batch)) if rows is None else list(rows)
        if not selected:
            prefill.consumed = True
            return []
        if any(not 0 <= r < batch for r in selected) or len(set(selected)) != len(selected):
            raise InputError(f"rows must be distinct indices in [0, {batch}), got {selected}")
        limit = self._token_limit(max_new_tokens)
        if stop_at_newline is None:
            stop_at_newline = self.config.generation.stop_at_newline
        stop_ids = self.stop_token_ids(stop_at_newline)
        with self._lock, torch.inference_mode():
            prefill.consumed = True
            start = time.perf_counter()
            cache = prefill.cache
            attention_mask = prefill.attention_mask
            logits = prefill.next_logits
            if selected != list(range(batch)):
                index = torch.tensor(selected, device=self._device)
                cache.reorder_cache(index)
                attention_mask = attention_mask[index]
                logits = logits[index]
            steps = self._decode_steps(
                cache, attention_mask, logits, limit, stop_ids, on_step=_per_row(on_token)
            )
            seconds = time.perf_counter() - start
        return self._assemble_drafts(steps, stop_ids, seconds, stop_at_newline)

    def _decode_steps(
        self,
        cache: Any,
        attention_mask: torch.Tensor,
        logits: torch.Tensor,
        limit: int,
        stop_ids: torch.Tensor,
        choose: Any = None,
        on_step: Callable[[torch.Tensor, torch.Tensor], None] | None = None,
    ) -> list[tuple[torch.Tensor, ...]]:
        """The decode loop: per step the token, its distribution summary and a finished flag.

        ``choose`` maps ``[B, V]`` logits to ``[B]`` tokens (default greedy, the arg-max).
        ``on_step(tokens, finished_before)`` sees each step's ``[B]`` tokens as soon as they are
        chosen (rows with ``finished_before`` set had already stopped).
        """
        positions = attention_mask.long().sum(dim=1, keepdim=True) - 1
        n = attention_mask.shape[0]
        finished = torch.zeros(n, dtype=torch.bool, device=self._device)
        steps: list[tuple[torch.Tensor, ...]] = []
        pad = self.tokenizer.pad_token_id
        for step in range(limit):
            token, entropy, logprob, margin, logit_margin = summarize_logits(logits)
            if choose is not None:
                token = choose(logits)
            steps.append((token, entropy, logprob, margin, logit_margin, finished.clone()))
            if on_step is not None:
                on_step(token, finished)
            finished = finished | torch.isin(token, stop_ids)
            if bool(finished.all()) or step == limit - 1:
                break
            feed = torch.where(finished, torch.full_like(token, pad), token)
            attention_mask = torch.cat(
                [
                    attention_mask,
                    torch.ones((n, 1), dtype=attention_mask.dtype, device=self._device),
                ],
                dim=1,
            )
            positions = positions + 1
            out = self._forward(feed[:, None], attention_mask, positions, cache)
            logits = out.logits[:, -1, :]
        return steps

    def sample(
        self,
        prompts: Sequence[str],
        *,
        k: int,
        temperature: float = 1.0,
        max_new_tokens: int | None = None,
        seed: int = 0,
    ) -> list[list[Draft]]:
        """``k`` answers per prompt sampled at ``temperature`` from one shared prefill.

        The prompt is run once; its KV cache is repeated ``k`` times and every copy decodes with
        multinomial sampling (seeded, so a run is reproducible). This is the expensive reference
        of the sampling-consistency peers (SelfCheckGPT, SeaKR): ``k`` extra decodes per query.

        Raises:
            InputError: ``k`` < 1 or ``temperature`` <= 0, or a bad prompt.
        """
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise InputError(f"k must be a positive integer, got {k!r}")
        if not temperature > 0:
            raise InputError(f"temperature must be > 0, got {temperature!r}")
        input_ids, attention_mask, _ = self._encode(prompts)
        position_ids = (attention_mask.long().cumsum(dim=1) - 1).clamp(min=0)
        limit = self._token_limit(max_new_tokens)
        stop_at_newline = self.config.generation.stop_at_newline
        stop_ids = self.stop_token_ids(stop_at_newline)
        generator = torch.Generator(device=self._device).manual_seed(seed)

        def choose(logits: torch.Tensor) -> torch.Tensor:
            probs = torch.softmax(logits.float() / temperature, dim=-1)
            return torch.multinomial(probs, 1, generator=generator)[:, 0]

        with self._lock, torch.inference_mode():
            start = time.perf_counter()
            out = self._forward(input_ids, attention_mask, position_ids, None)
            cache = out.cache if hasattr(out, "cache") else out.past_key_values
            cache.batch_repeat_interleave(k)
            steps = self._decode_steps(
                cache,
                attention_mask.repeat_interleave(k, dim=0),
                out.logits[:, -1, :].repeat_interleave(k, dim=0),
                limit,
                stop_ids,
                choose,
            )
            seconds = time.perf_counter() - start
        drafts = self._assemble_drafts(steps, stop_ids, seconds, stop_at_newline)
        return [drafts[i * k : (i + 1) * k] for i in range(len(prompts))]

    def next_token_probability(
        self, prompts: Sequence[str], words: Sequence[str]
    ) -> NDArray[np.float64]:
        """P(the next token spells one of ``words``) for each prompt, from one prefill.

        A word's tokens are the single-token encodings of its spellings with and without a
        leading space and in lower, title and upper case ("yes", " Yes", ...). Used by the
        self-routing peer: P(yes) to "can you answer this from memory?".

        Returns:
            ``[len(prompts), len(words)]`` probabilities.

        Raises:
            InputError: a word has no single-token spelling in this tokenizer.
        """
        ids = [self._single_token_ids(w) for w in words]
        input_ids, attention_mask, _ = self._encode(prompts)
        position_ids = (attention_mask.long().cumsum(dim=1) - 1).clamp(min=0)
        with self._lock, torch.inference_mode():
            out = self._forward(input_ids, attention_mask, position_ids, None)
            probs = torch.softmax(out.logits[:, -1, :].float(), dim=-1)
        return np.stack(
            [probs[:, sorted(i)].sum(dim=1).double().cpu().numpy() for i in ids], axis=1
        )

    def topk_logprobs(self, prompt: str, token_ids: Sequence[int], *, k: int = 20) -> TopKStats:
        """The top-``k`` log-probabilities along a given continuation of ``prompt``.

        One forward pass over the prompt and ``token_ids`` (teacher forcing): position ``j``
        holds the distribution after the prompt and ``token_ids[:j]``, its ``k`` largest
        log-probabilities and that of ``token_ids[j]``. This is what an OpenAI-compatible
        server returns with ``top_logprobs=k``, so
        :func:`~knowgate.signals.compute_served_features` gives a local model the features a
        served one has (e.g. to fit a policy here and use it on a server, or to compare both).
        Default runs do not compute it: it costs this extra pass.

        Raises:
            InputError: no tokens, or ``k`` < 2.
        """
        if not token_ids:
            raise InputError("topk_logprobs needs at least one continuation token")
        if k < 2:
            raise InputError(f"k must be at least 2, got {k}")
        input_ids, _, _ = self._encode([prompt])
        continuation = torch.tensor([list(token_ids)], dtype=torch.long, device=self._device)
        full = torch.cat([input_ids, continuation[:, :-1]], dim=1)
        with self._lock, torch.inference_mode():
            out = self.model(input_ids=full, attention_mask=torch.ones_like(full), use_cache=False)
            logp = torch.log_softmax(out.logits[0, input_ids.shape[1] - 1 :, :].float(), dim=-1)
            top = logp.topk(min(k, logp.shape[-1]), dim=-1).values
            chosen = logp.gather(-1, continuation[0][:, None])[:, 0]
        return TopKStats(chosen.double().cpu().numpy(), top.double().cpu().numpy())

    def _single_token_ids(self, word: str) -> set[int]:
        ids: set[int] = set()
        for form in {word.lower(), word.title(), word.upper()}:
            for text in (form, " " + form):
                encoded = self.tokenizer(text, add_special_tokens=False).input_ids
                if len(encoded) == 1:
                    ids.add(int(encoded[0]))
        if not ids:
            raise InputError(
                f"{word!r} has no single-token spelling in {self.model_id}'s tokenizer"
            )
        return ids

    def _assemble_drafts(
        self,
        steps: list[tuple[torch.Tensor, ...]],
        stop_ids: torch.Tensor,
        seconds: float,
        stop_at_newline: bool,
    ) -> list[Draft]:
        tokens, entropy, logprob, margin, logit_margin, done_before = (
            torch.stack([s[i] for s in steps], dim=1).cpu() for i in range(6)
        )
        stop_set = set(stop_ids.tolist())
        eos_set = self._eos_ids()
        drafts = []
        for b in range(tokens.shape[0]):
            live = (~done_before[b]).nonzero().flatten()
            length = int(live.numel())
            ids = tokens[b, :length].tolist()
            last = ids[-1] if ids else None
            if last in stop_set:
                reason: StopReason = "eos" if last in eos_set else "newline"
                content = length - 1
            else:
                reason, content = "length", length
            span = slice(0, content) if content > 0 else slice(0, length)
            stats = TokenStats(
                entropy[b, span].double().numpy(),
                logprob[b, span].double().numpy(),
                margin[b, span].double().numpy(),
                logit_margin[b, span].double().numpy(),
            )
            text = self.tokenizer.decode(ids[:content], skip_special_tokens=True)
            if stop_at_newline:
                text = text.split("\n", 1)[0]
            drafts.append(Draft(text.strip(), ids, reason, stats, seconds))
        return drafts

    def run(
        self,
        prompts: Sequence[str],
        *,
        max_new_tokens: int | None = None,
        batch_size: int | None = None,
        progress: bool = False,
        on_token: TokenCallback | None = None,
    ) -> list[RunOutput]:
        """Prefill with captures, then greedy drafts from the same cache, in batches.

        Left padding makes a batched run give the same signals as one-by-one runs (up to
        floating-point noise). ``on_token`` streams the generated tokens (see
        :data:`TokenCallback`; rows are indices into ``prompts``).
        """
        if isinstance(prompts, str):
            raise InputError("run() takes a list of prompts; wrap a single prompt in a list")
        self._token_limit(max_new_tokens)  # a bad budget fails before any forward pass
        size = batch_size or self.config.generation.batch_size
        outputs: list[RunOutput] = []
        batches = range(0, len(prompts), size)
        for start in tqdm(batches, desc="forward passes", unit="batch", disable=not progress):
            chunk = prompts[start : start + size]
            pre = self.prefill(chunk)
            shifted = None
            if on_token is not None:
                shifted = functools.partial(_shift_row, on_token, start)
            drafts = self.decode(pre, max_new_tokens=max_new_tokens, on_token=shifted)
            for i, draft in enumerate(drafts):
                outputs.append(
                    RunOutput(
                        prompt=chunk[i],
                        prompt_tokens=pre.prompt_tokens[i],
                        capture=pre.captures[i].with_draft(draft.stats),
                        draft=draft,
                        prefill_seconds=pre.seconds,
                    )
                )
        return outputs

    def ask(self, question: str, passages: Sequence[PassageLike] | None = None) -> RunOutput:
        """Format one question (optionally with passages) and run it."""
        if not isinstance(question, str):
            raise InputError(f"question must be a string, got {type(question).__name__}")
        if not question.strip():
            raise InputError("question is empty")
        return self.run([self.format_prompt(question, passages)])[0]


def _per_row(
    on_token: TokenCallback | None,
) -> Callable[[torch.Tensor, torch.Tensor], None] | None:
    """A decode-loop step hook that calls ``on_token`` for each row still generating."""
    if on_token is None:
        return None

    def on_step(tokens: torch.Tensor, finished: torch.Tensor) -> None:
        for row, (token, done) in enumerate(zip(tokens.tolist(), finished.tolist(), strict=True)):
            if not done:
                on_token(row, int(token))

    return on_step


def _shift_row(on_token: TokenCallback, offset: int, row: int, token: int) -> None:
    on_token(offset + row, token)


def load_model(source: str | ModelConfig = DEFAULT_MODEL) -> LanguageModel:
    """Load a language model by packaged name, hub id, local directory, GGUF file or config."""
    return LanguageModel.load(source)
