"""The router: one forward pass decides whether a query needs retrieval.

Flow per request (see docs/concepts.md)::

    query -> prompt -> prefill with capture hooks -> signals -> policy -> decision
      knows:        keep decoding from the same KV cache -> answer (1 LM call, 0 retrievals)
      doesn't know: retriever(query) -> prompt + passages -> answer (1 more LM call)

The model is shared under its lock (every forward pass of a ``LanguageModel`` is serialised), so
a ``Router`` may be used from many threads; throughput comes from ``route_batch``, which prefills
and decodes requests together.

The router knows nothing of experiments, LangChain or HTTP: A/B tests sit on top of it
(:class:`knowgate.experiments.ExperimentRouter`), adapters beside them in
:mod:`knowgate.integrations`.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from knowgate.config import GateMode, RouterConfig, load_config
from knowgate.errors import ConfigError, InputError, KnowledgeBaseError, PolicyError
from knowgate.models import Draft, LanguageModel, Prefill
from knowgate.policy import Decision, Policy, policy_from_spec
from knowgate.routing.generator import AnswerGenerator, GenerationRequest
from knowgate.routing.retrievers import PassageSource, as_passage_source
from knowgate.routing.trace import DecisionTrace, GateResult, PassageTrace, RoutedAnswer
from knowgate.signals import SignalConfig, compute_features, feature_specs
from knowgate.signals.question import QUESTION_FEATURES, compute_question_features

if TYPE_CHECKING:
    from knowgate.retrieval import KnowledgeBase

log = logging.getLogger(__name__)


class _Stages:
    """Accumulates per-request stage times (batch stage time / participating requests)."""

    def __init__(self, n: int) -> None:
        self.rows: list[dict[str, float]] = [{} for _ in range(n)]

    def add(self, stage: str, seconds: float, rows: Sequence[int]) -> None:
        if not rows:
            return
        share = seconds * 1000.0 / len(rows)
        for i in rows:
            self.rows[i][stage] = round(self.rows[i].get(stage, 0.0) + share, 2)


class Router:
    """Model + policy + retriever: answers queries, retrieving only when the model does not know.

    Args:
        model: the local language model; it always gates, and answers unless ``generator`` is set.
        policy: the gating policy (the config's ``policy.threshold`` overrides its cut).
        retriever: a :class:`~knowgate.retrieval.KnowledgeBase`, an object with
            ``search(query, k)``, or a :class:`~knowgate.routing.PassageSource` (a LangChain
            retriever: ``knowgate.integrations.langchain.LangChainPassageSource``). ``None``:
            retrieving requests are answered closed-book and their trace records
            ``retrieval_error``.
        config: the router config (gate mode, k, limits); model and policy given here win. Its
            ``experiment`` section is not the router's: build it with
            :meth:`knowgate.experiments.ExperimentRouter.from_config`.
        generator: an :class:`~knowgate.routing.AnswerGenerator` that writes the answers instead
            of the local model (a LangChain chat model or LLM:
            ``knowgate.integrations.langchain.LangChainGenerator``). The gate then measures the
            *local* model's familiarity with the query, as a proxy for the generator's.
        signal_config: which signals to compute.

    Raises:
        ConfigError: an unusable retriever, generator or policy.
        PolicyError: a policy fitted for another model (unless ``policy.force``).
    """

    def __init__(
        self,
        model: LanguageModel,
        policy: Policy,
        retriever: Any | None = None,
        *,
        config: RouterConfig | None = None,
        generator: AnswerGenerator | None = None,
        signal_config: SignalConfig | None = None,
    ) -> None:
        """Compose a router from ready components (see :meth:`from_config` to build them)."""
        self.config = config or RouterConfig(model=model.config)
        self.model = model
        if generator is not None and not isinstance(generator, AnswerGenerator):
            raise ConfigError(
                f"cannot use {type(generator).__name__} as a generator: it needs an "
                f"answer(request) method; wrap a LangChain chat model or LLM in "
                f"knowgate.integrations.langchain.LangChainGenerator"
            )
        self.generator = generator
        self.signal_config = signal_config or SignalConfig()
        self.source: PassageSource | None = (
            as_passage_source(retriever, self.config.retrieval.mode)
            if retriever is not None
            else None
        )
        self.check_policy(policy)
        if self.config.policy.threshold is not None:
            policy = policy.with_threshold(self.config.policy.threshold)
        self.policy = policy

    # --------------------------------------------------------------------------- building
    @classmethod
    def from_config(
        cls,
        config: RouterConfig | str | Path | None = None,
        *,
        model: LanguageModel | None = None,
        retriever: Any | None = None,
        generator: AnswerGenerator | None = None,
    ) -> Router:
        """Build a router from a config object or YAML path (``None``: defaults).

        Components passed as arguments are used instead of loading them from the config.

        Raises:
            ConfigError: the config has an ``experiment`` section (build it with
                :meth:`knowgate.experiments.ExperimentRouter.from_config`), or is invalid.
        """
        if not isinstance(config, RouterConfig):
            config = load_config(config)
        if config.experiment is not None:
            raise ConfigError(
                f"the config defines experiment {config.experiment.name!r}, which a Router "
                f"does not run; build it with knowgate.experiments.ExperimentRouter.from_config"
            )
        lm = model or LanguageModel.load(config.model)
        # The constructor applies policy.threshold (to this policy or one passed in code).
        spec = config.policy.model_copy(update={"threshold": None})
        policy = policy_from_spec(spec, model_id=lm.model_id)
        if retriever is None and config.retrieval.knowledge_base is not None:
            retriever = load_knowledge_base(
                config.retrieval.knowledge_base, config.retrieval.embedding_model
            )
        return cls(lm, policy, retriever, config=config, generator=generator)

    def check_policy(self, policy: Policy) -> None:
        """Check that ``policy`` can decide for this router's requests.

        Raises:
            ConfigError: not a Policy, it reads features a live request does not have, or draft
                features under a pre-generation gate.
            PolicyError: it was fitted for another model (unless the config's ``policy.force``).
        """
        if not isinstance(policy, Policy):
            raise ConfigError(f"policy must be a knowgate Policy, got {type(policy).__name__}")
        if (
            policy.model_id is not None
            and policy.model_id != self.model.model_id
            and not self.config.policy.force
        ):
            raise PolicyError(
                f"policy {policy.policy_id} was fitted for model {policy.model_id!r}, but the "
                f"router runs {self.model.model_id!r}; its calibration does not transfer. Fit one "
                f"with `knowgate calibrate --model {self.model.model_id}`, or set policy.force."
            )
        specs = feature_specs(self.signal_config)
        unknown = [
            f for f in policy.required_features if f not in specs and f not in QUESTION_FEATURES
        ]
        if unknown:
            raise ConfigError(
                f"policy {policy.policy_id} needs {unknown}, which a live request does not have "
                f"(evaluation-only policies such as oracle and popularity cannot route)"
            )
        needs_draft = [
            f for f in policy.required_features if f in specs and specs[f].stage == "draft"
        ]
        if needs_draft and self.mode == "pre":
            raise ConfigError(
                f"policy {policy.policy_id} reads draft features {needs_draft}; a pre-generation "
                f"gate cannot see them. Use gate.mode: draft, or a policy fitted on prefill "
                f"features."
            )

    @property
    def mode(self) -> GateMode:
        """``pre`` or ``draft`` (see :class:`~knowgate.config.GateConfig`)."""
        return self.config.gate.mode

    # ------------------------------------------------------------------------------ public
    def route(
        self,
        query: str,
        *,
        threshold: float | None = None,
        policy: Policy | None = None,
        metadata: Mapping[str, Any] | None = None,
        unit_id: str | int | None = None,
    ) -> RoutedAnswer:
        """Answer one query, retrieving only if the policy judges the model not to know it.

        Args:
            query: the user's question.
            threshold: per-request override of the p_known threshold.
            policy: per-request policy instead of the router's; checked like it (and the
                config's ``policy.threshold`` overrides its cut, as it does the router's).
            metadata: optional question metadata for question-only features.
            unit_id: who asks (user, session); a Router answers everyone alike and ignores it
                (see :class:`~knowgate.routing.QueryRouter`).

        Raises:
            InputError: the query is empty, not a string, or too long.
        """
        return self.route_batch(
            [query],
            threshold=threshold,
            policy=policy,
            metadata=[metadata] if metadata else None,
            unit_ids=[unit_id] if unit_id is not None else None,
        )[0]

    def route_batch(
        self,
        queries: Sequence[str],
        *,
        threshold: float | None = None,
        policy: Policy | None = None,
        policies: Sequence[Policy] | None = None,
        metadata: Sequence[Mapping[str, Any] | None] | None = None,
        unit_ids: Sequence[str | int | None] | None = None,
    ) -> list[RoutedAnswer]:
        """Answer many queries; prefill, decode and retrieval run in batches.

        Args:
            queries: the questions.
            threshold: p_known threshold override for every query.
            policy: one policy for every query instead of the router's (the config's
                ``policy.threshold`` overrides its cut, as it does the router's).
            policies: one policy per query, used as given (an ExperimentRouter passes each
                request's arm); excludes ``policy``.
            metadata: per-query metadata for question-only features.
            unit_ids: who asks, per query; a Router answers everyone alike and ignores them
                (see :class:`~knowgate.routing.QueryRouter`).

        Raises:
            InputError: bad queries, or mismatched lengths of the per-query arguments.
            ConfigError: a policy that cannot decide for this router (see :meth:`check_policy`).
        """
        self._validate_queries(queries)
        n = len(queries)
        if policies is not None and policy is not None:
            raise InputError("give policy or policies, not both")
        if unit_ids is not None and (
            isinstance(unit_ids, str) or not isinstance(unit_ids, Sequence) or len(unit_ids) != n
        ):
            raise InputError(f"unit_ids must be a list with one entry per query ({n})")
        if policies is not None:
            if isinstance(policies, Policy) or len(policies) != n:
                raise InputError(f"policies must be a list with one policy per query ({n})")
            for p in dict.fromkeys(policies):
                self.check_policy(p)
            policies = list(policies)
        elif policy is not None:
            self.check_policy(policy)
            if self.config.policy.threshold is not None:
                policy = policy.with_threshold(self.config.policy.threshold)
            policies = [policy] * n
        else:
            policies = [self.policy] * n
        if threshold is not None:
            policies = [p.with_threshold(threshold) for p in policies]
        meta: list[Mapping[str, Any] | None] = (
            list(metadata) if metadata is not None else [None] * n
        )
        if len(meta) != n:
            raise InputError(f"{len(meta)} metadata entries for {n} queries")
        size = self.config.model.generation.batch_size
        out: list[RoutedAnswer] = []
        for start in range(0, n, size):
            stop = start + size
            out.extend(
                self._route_chunk(list(queries[start:stop]), policies[start:stop], meta[start:stop])
            )
        return out

    async def aroute(self, query: str, **kwargs: Any) -> RoutedAnswer:
        """Async :meth:`route` (runs in a worker thread; the model is CPU/GPU bound)."""
        return await asyncio.to_thread(self.route, query, **kwargs)

    async def aroute_batch(self, queries: Sequence[str], **kwargs: Any) -> list[RoutedAnswer]:
        """Async :meth:`route_batch`."""
        return await asyncio.to_thread(self.route_batch, queries, **kwargs)

    def gate(
        self,
        query: str,
        *,
        threshold: float | None = None,
        metadata: Mapping[str, Any] | None = None,
        unit_id: str | int | None = None,
        policy: Policy | None = None,
    ) -> GateResult:
        """Decide for one query without producing an answer (used by ``GatedRetriever``).

        In ``draft`` mode this includes the closed-book draft, whose probabilities the policy
        reads; in ``pre`` mode it is one prefill.

        Args:
            query: the user's question.
            threshold: per-request override of the threshold.
            metadata: optional question metadata for question-only features.
            unit_id: who asks; ignored (see :class:`~knowgate.routing.QueryRouter`).
            policy: the policy that decides instead of the router's, used as given (an
                ExperimentRouter passes the request's arm).

        Raises:
            InputError: the query is empty, not a string, or too long.
        """
        self._validate_queries([query])
        if policy is None:
            policy = self.policy
        else:
            self.check_policy(policy)
        if threshold is not None:
            policy = policy.with_threshold(threshold)
        start = time.perf_counter()
        pre = self.model.prefill([self.model.format_prompt(query)])
        features = self._features(query, pre.captures[0], metadata, policy)
        if self.mode == "draft":
            draft = self.model.decode(pre)[0]
            features.update(self._draft_features(pre.captures[0], draft))
        else:
            self.model.decode(pre, rows=[])  # release the KV cache
        decision = policy.decide(features)
        total = (time.perf_counter() - start) * 1000.0
        return GateResult(
            self._decision_trace(decision),
            features,
            {"gate": round(total, 2)},
            self.model.model_id,
        )

    def describe(self) -> dict[str, Any]:
        """Model, policy, gate mode and whether a knowledge base is set (``/health``)."""
        return {
            "model": self.model.model_id,
            "policy": self.policy.policy_id,
            "gate_mode": self.mode,
            "knowledge_base": self.source is not None,
        }

    # ---------------------------------------------------------------------------- internals
    def _validate_queries(self, queries: Sequence[str]) -> None:
        self.config.limits.check_queries(queries)

    def _features(
        self,
        query: str,
        capture: Any,
        metadata: Mapping[str, Any] | None,
        policy: Policy,
    ) -> dict[str, float]:
        features = compute_features(capture, self.signal_config)
        if any(f in QUESTION_FEATURES for f in policy.required_features):
            features.update(compute_question_features(query, metadata))
        return features

    def _draft_features(self, capture: Any, draft: Draft) -> dict[str, float]:
        full = compute_features(capture.with_draft(draft.stats), self.signal_config)
        specs = feature_specs(self.signal_config)
        return {k: v for k, v in full.items() if specs[k].stage == "draft"}

    def _decision_trace(self, decision: Decision) -> DecisionTrace:
        return DecisionTrace(
            retrieve=decision.retrieve,
            p_known=decision.p_known,
            threshold=decision.threshold,
            policy=decision.policy_id,
            mode=self.mode,
            reason=decision.reason,
        )

    def _fit_passages(self, query: str, passages: list[PassageTrace]) -> tuple[str, int]:
        """The RAG prompt with as many passages (best first) as the context allows.

        The prompt grows with every passage, so the largest count that fits is found by binary
        search (a few tokenizations even for long passage lists).
        """

        def fits(count: int) -> bool:
            prompt = self.model.format_prompt(query, passages[:count])
            return self.model.count_tokens(prompt) <= self.model.max_prompt_tokens

        if fits(len(passages)):
            return self.model.format_prompt(query, passages), len(passages)
        low, high = 0, len(passages)  # fits(low) holds (no passages: the gate's prompt fitted)
        while high - low > 1:
            mid = (low + high) // 2
            low, high = (mid, high) if fits(mid) else (low, mid)
        return self.model.format_prompt(query, passages[:low]), low

    def _generate(self, query: str, passages: list[PassageTrace]) -> str:
        cfg = self.model.config.prompt
        request = GenerationRequest(
            query=query,
            passages=tuple(passages),
            system_prompt=cfg.rag_system_prompt if passages else cfg.system_prompt,
            context=self.model.formatter.context_block(passages) if passages else "",
        )
        return self.generator.answer(request)  # type: ignore[union-attr]

    def _route_chunk(
        self,
        queries: list[str],
        policies: list[Policy],
        metadata: list[Mapping[str, Any] | None],
    ) -> list[RoutedAnswer]:
        n = len(queries)
        rows = list(range(n))
        stages = _Stages(n)

        drafts: dict[int, Draft] = {}
        pre: Prefill | None = None
        # Policies that read no signal (always, never, random) decide before any forward pass:
        # always-retrieve is plain RAG, with no gate prefill spent on it.
        signal_free = self.mode == "pre" and not any(p.required_features for p in policies)
        if signal_free:
            t = time.perf_counter()
            features: list[dict[str, float]] = [{} for _ in rows]
            decisions = [p.decide({}) for p in policies]
            stages.add("policy", time.perf_counter() - t, rows)
            prefill_rows = [i for i in rows if not decisions[i].retrieve]
        else:
            prefill_rows = rows
        pre_index = {row: j for j, row in enumerate(prefill_rows)}
        if prefill_rows:
            t = time.perf_counter()
            pre = self.model.prefill([self.model.format_prompt(queries[i]) for i in prefill_rows])
            stages.add("prefill", time.perf_counter() - t, prefill_rows)

        if not signal_free:
            assert pre is not None
            t = time.perf_counter()
            features = [
                self._features(q, c, m, p)
                for q, c, m, p in zip(queries, pre.captures, metadata, policies, strict=True)
            ]
            stages.add("signals", time.perf_counter() - t, rows)

            if self.mode == "draft":
                t = time.perf_counter()
                for i, d in enumerate(self.model.decode(pre)):
                    drafts[i] = d
                    features[i].update(self._draft_features(pre.captures[i], d))
                stages.add("decode", time.perf_counter() - t, rows)

            t = time.perf_counter()
            decisions = [p.decide(f) for p, f in zip(policies, features, strict=True)]
            stages.add("policy", time.perf_counter() - t, rows)

        wants = [i for i in rows if decisions[i].retrieve]
        passages: dict[int, list[PassageTrace]] = {}
        errors: dict[int, str] = {}
        retriever_calls = dict.fromkeys(rows, 0)
        if wants and self.source is None:
            errors = dict.fromkeys(wants, "no retriever configured; answered closed-book")
        elif wants:
            t = time.perf_counter()
            for i in wants:
                retriever_calls[i] = 1
            try:
                found = self.source.retrieve([queries[i] for i in wants], self.config.retrieval.k)  # type: ignore[union-attr]
            except Exception as exc:  # any retriever failure falls back, visibly
                log.warning("retriever %s failed: %s", self.source.name, exc)  # type: ignore[union-attr]
                errors = dict.fromkeys(wants, f"retriever failed ({type(exc).__name__}: {exc})")
            else:
                for i, hits in zip(wants, found, strict=True):
                    if hits:
                        passages[i] = hits
                    else:
                        errors[i] = "retriever returned no passages; answered closed-book"
            stages.add("retrieve", time.perf_counter() - t, wants)

        closed = [i for i in rows if i not in passages]
        fallback: set[int] = set()
        if self.mode == "pre":
            t = time.perf_counter()
            need = [i for i in closed if i in pre_index] if self.generator is None else []
            if pre is not None:
                decoded = self.model.decode(pre, rows=[pre_index[i] for i in need])
                for i, d in zip(need, decoded, strict=True):
                    drafts[i] = d
            stages.add("decode", time.perf_counter() - t, need)
            missing = [i for i in closed if i not in drafts and self.generator is None]
            fallback.update(missing)
            if missing:  # retrieval failed for a signal-free policy: answer closed-book now
                t = time.perf_counter()
                outs = self.model.run([self.model.format_prompt(queries[i]) for i in missing])
                for i, out in zip(missing, outs, strict=True):
                    drafts[i] = out.draft
                stages.add("decode", time.perf_counter() - t, missing)

        answers: dict[int, str] = {}
        used_passages: dict[int, list[PassageTrace]] = {}
        # One LM call = one prompt through the local model (prefill and its decode count once).
        lm_calls = {i: int(i in pre_index or i in fallback) for i in rows}
        generator_calls = dict.fromkeys(rows, 0)
        t = time.perf_counter()
        if self.generator is not None:
            for i in rows:
                used_passages[i] = passages.get(i, [])
                answers[i] = self._generate(queries[i], used_passages[i])
                generator_calls[i] = 1
            stages.add("generate", time.perf_counter() - t, rows)
        else:
            for i in closed:
                answers[i] = drafts[i].text
            rag = sorted(passages)
            if rag:
                fitted = [self._fit_passages(queries[i], passages[i]) for i in rag]
                outs = self.model.run([p for p, _ in fitted])
                for i, (_, count), out in zip(rag, fitted, outs, strict=True):
                    answers[i] = out.answer
                    used_passages[i] = passages[i][:count]
                    lm_calls[i] += 1
                stages.add("answer_with_passages", time.perf_counter() - t, rag)

        results = []
        for i in rows:
            calls = {"lm": lm_calls[i], "retriever": retriever_calls[i]}
            if self.generator is not None:
                calls["generator"] = generator_calls[i]
            timings = dict(stages.rows[i])
            timings["total"] = round(sum(timings.values()), 2)
            results.append(
                RoutedAnswer(
                    query=queries[i],
                    answer=answers[i],
                    decision=self._decision_trace(decisions[i]),
                    features=features[i],
                    passages=used_passages.get(i, []),
                    calls=calls,
                    timings_ms=timings,
                    model=self.model.model_id,
                    request_id=uuid.uuid4().hex,
                    retrieval_error=errors.get(i),
                )
            )
        return results


def load_knowledge_base(directory: Path, embedding_model: str | None = None) -> KnowledgeBase:
    """Load a knowledge base, checking it was built with the configured embedding model."""
    from knowgate.retrieval import KnowledgeBase  # imported on use: FAISS and friends are slow

    kb = KnowledgeBase.load(directory)
    if embedding_model is not None and kb.embedding_model_id != embedding_model:
        raise KnowledgeBaseError(
            f"knowledge base {directory} was built with embedding model "
            f"{kb.embedding_model_id!r}, but the config asks for {embedding_model!r}; rebuild it "
            f"with `knowgate index build ... --model {embedding_model}` or fix "
            f"retrieval.embedding_model"
        )
    return kb
