"""The router: one forward pass decides whether a query needs retrieval.

Flow per request (see docs/concepts.md)::

    query -> prompt -> prefill with capture hooks -> signals -> policy -> decision
      knows:        keep decoding from the same KV cache -> answer (1 LM call, 0 retrievals)
      doesn't know: retriever(query) -> prompt + passages -> answer (1 more LM call)

The model is shared under its lock (every forward pass of a ``LanguageModel`` is serialised), so
a ``Router`` may be used from many threads; throughput comes from ``route_batch``, which prefills
and decodes requests together.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from knowgate.config import GateMode, RouterConfig, load_config
from knowgate.errors import ConfigError, InputError, PolicyError
from knowgate.models import Draft, LanguageModel, Prefill
from knowgate.policy import Decision, Policy, build_policy, load_policy
from knowgate.routing.retrievers import PassageSource, as_passage_source
from knowgate.routing.trace import DecisionTrace, PassageTrace, RoutedAnswer
from knowgate.signals import SignalConfig, compute_features, feature_specs
from knowgate.signals.question import QUESTION_FEATURES, compute_question_features

if TYPE_CHECKING:  # experiments sit on top of the router; imported only for annotations
    from knowgate.experiments import DecisionLog, Experiment

log = logging.getLogger(__name__)


def bundled_policy_path(model_id: str) -> Path | None:
    """The policy fitted and shipped for a packaged model, if there is one."""
    candidate = resources.files("knowgate").joinpath(f"resources/policies/{model_id}.json")
    return Path(str(candidate)) if candidate.is_file() else None


@dataclass(frozen=True)
class GateResult:
    """The gate's verdict for one query, without generating an answer."""

    decision: DecisionTrace
    features: dict[str, float]
    timings_ms: dict[str, float]
    model: str


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
        policy: the gating policy.
        retriever: a :class:`~knowgate.retrieval.KnowledgeBase`, any LangChain ``BaseRetriever``,
            or an object with ``search(query, k)``. ``None``: retrieving requests are answered
            closed-book and their trace records ``retrieval_error``.
        config: the router config (gate mode, k, limits); model and policy given here win.
        generator: optional LangChain chat model / LLM that writes the answers instead of the
            local model. The gate then measures the *local* model's familiarity with the query,
            as a proxy for the generator's.
        signal_config: which signals to compute.
        experiment: an A/B experiment: each request's unit id picks the arm whose policy
            decides (see docs/experiments.md); the arm is in ``RoutedAnswer.extra``.
        decision_log: where experiment requests are logged (needs ``experiment``); the
            experiment is registered on construction, which fails if its definition changed
            after it logged traffic.
    """

    def __init__(
        self,
        model: LanguageModel,
        policy: Policy,
        retriever: Any | None = None,
        *,
        config: RouterConfig | None = None,
        generator: Any | None = None,
        signal_config: SignalConfig | None = None,
        experiment: Experiment | None = None,
        decision_log: DecisionLog | None = None,
    ) -> None:
        """Compose a router from ready components (see :meth:`from_config` to build them)."""
        self.config = config or RouterConfig(model=model.config)
        self.model = model
        self.generator = generator
        self.signal_config = signal_config or SignalConfig()
        self.source: PassageSource | None = (
            as_passage_source(retriever, self.config.retrieval.mode)
            if retriever is not None
            else None
        )
        self.policy = self._checked_policy(policy)
        if decision_log is not None and experiment is None:
            raise ConfigError("a decision log needs an experiment to log")
        if experiment is not None:
            for arm_policy in experiment.arms.values():
                self._validate_policy(arm_policy)
            if decision_log is not None:
                decision_log.register(experiment)
        self.experiment = experiment
        self.decision_log = decision_log

    # --------------------------------------------------------------------------- building
    @classmethod
    def from_config(
        cls,
        config: RouterConfig | str | Path | None = None,
        *,
        model: LanguageModel | None = None,
        retriever: Any | None = None,
        generator: Any | None = None,
    ) -> Router:
        """Build a router from a config object or YAML path (``None``: defaults).

        Components passed as arguments are used instead of loading them from the config.
        """
        if not isinstance(config, RouterConfig):
            config = load_config(config)
        lm = model or LanguageModel.load(config.model)
        policy = resolve_policy(config, lm.model_id)
        if retriever is None and config.retrieval.knowledge_base is not None:
            retriever = load_knowledge_base(
                config.retrieval.knowledge_base, config.retrieval.embedding_model
            )
        experiment = decision_log = None
        if config.experiment is not None:
            from knowgate.experiments import DecisionLog, Experiment

            experiment = Experiment.from_spec(
                config.experiment, model_id=lm.model_id, force=config.policy.force
            )
            if config.experiment.decision_log is not None:
                decision_log = DecisionLog(config.experiment.decision_log)
        return cls(
            lm,
            policy,
            retriever,
            config=config,
            generator=generator,
            experiment=experiment,
            decision_log=decision_log,
        )

    def _checked_policy(self, policy: Policy) -> Policy:
        self._validate_policy(policy)
        if self.config.policy.threshold is not None:
            policy = policy.with_threshold(self.config.policy.threshold)
        return policy

    def _validate_policy(self, policy: Policy) -> None:
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
            policy: per-request policy; checked like the default. It bypasses a configured
                experiment (the request is neither assigned nor logged).
            metadata: optional question metadata for question-only features.
            unit_id: the experiment unit (user, session) that picks the arm; ``None`` gets a
                random id, recorded as such. Ignored without an experiment.

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

        With an experiment configured (and no ``policy``/``policies``), each query's unit id
        picks its arm, the arm goes into ``RoutedAnswer.extra["experiment"]``, and the batch
        is logged to the decision log in one transaction.

        Args:
            queries: the questions.
            threshold: p_known threshold override for every query (not with an experiment:
                it would change the arms' policies).
            policy: one policy for every query instead of the router's (bypasses the
                experiment).
            policies: one policy per query; excludes ``policy`` (bypasses the experiment).
            metadata: per-query metadata for question-only features.
            unit_ids: per-query experiment unit ids (``None`` entries get random ids).

        Raises:
            InputError: bad queries, or mismatched lengths of the per-query arguments.
            ExperimentError: a unit id is invalid, or the decision log cannot be written.
        """
        self._validate_queries(queries)
        n = len(queries)
        if policies is not None and policy is not None:
            raise InputError("give policy or policies, not both")
        if unit_ids is not None and (
            isinstance(unit_ids, str) or not isinstance(unit_ids, Sequence) or len(unit_ids) != n
        ):
            raise InputError(f"unit_ids must be a list with one entry per query ({n})")
        assignments = None
        if self.experiment is not None and policy is None and policies is None:
            if threshold is not None:
                raise InputError(
                    f"a threshold override would change the policies of experiment "
                    f"{self.experiment.name!r}; set thresholds in the arms' definitions"
                )
            ids = list(unit_ids) if unit_ids is not None else [None] * n
            assignments = [self.experiment.assign(u) for u in ids]
        if assignments is not None and self.experiment is not None:
            arms = self.experiment.arms
            policies = [arms[a.arm] for a in assignments]  # validated at construction
        elif policies is None:
            base = self._checked_policy(policy) if policy is not None else self.policy
            policies = [base] * n
        else:
            if len(policies) != n:
                raise InputError(f"{len(policies)} policies for {n} queries")
            policies = [self._checked_policy(p) for p in policies]
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
        if assignments is not None:
            for routed, assignment in zip(out, assignments, strict=True):
                routed.extra["experiment"] = assignment.to_dict()
            if self.decision_log is not None:
                self.decision_log.record(out)
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
    ) -> GateResult:
        """Decide for one query without producing an answer (used by ``GatedRetriever``).

        In ``draft`` mode this includes the closed-book draft, whose probabilities the policy
        reads; in ``pre`` mode it is one prefill.
        """
        self._validate_queries([query])
        policy = self.policy.with_threshold(threshold) if threshold is not None else self.policy
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

    def as_runnable(self, *, output: Literal["answer", "routed"] = "answer") -> Any:
        """A LangChain Runnable that routes (see :mod:`knowgate.integrations.langchain`)."""
        from knowgate.integrations.langchain import KnowgateRunnable

        return KnowgateRunnable.configurable_for(self, output=output)

    # ---------------------------------------------------------------------------- internals
    def _validate_queries(self, queries: Sequence[str]) -> None:
        if isinstance(queries, str) or not isinstance(queries, Sequence):
            raise InputError("route_batch takes a list of query strings")
        if not queries:
            raise InputError("no queries given")
        limit = self.config.limits.max_query_chars
        for i, q in enumerate(queries):
            where = f"query {i}" if len(queries) > 1 else "query"
            if not isinstance(q, str):
                raise InputError(f"{where} must be a string, got {type(q).__name__}")
            if not q.strip():
                raise InputError(f"{where} is empty")
            if len(q) > limit:
                raise InputError(
                    f"{where} is {len(q)} characters; the limit is {limit} (limits.max_query_chars)"
                )

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
        from langchain_core.messages import HumanMessage, SystemMessage

        cfg = self.model.config.prompt
        if passages:
            context = self.model.formatter.context_block(passages)
            messages = [
                SystemMessage(cfg.rag_system_prompt),
                HumanMessage(f"Context:\n{context}\n\nQuestion: {query}"),
            ]
        else:
            messages = [SystemMessage(cfg.system_prompt), HumanMessage(query)]
        result = self.generator.invoke(messages)  # type: ignore[union-attr]
        content = getattr(result, "content", result)
        return str(content).strip()

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


def load_knowledge_base(directory: Path, embedding_model: str | None = None) -> Any:
    """Load a knowledge base, checking it was built with the configured embedding model."""
    from knowgate.errors import KnowledgeBaseError
    from knowgate.retrieval import KnowledgeBase

    kb = KnowledgeBase.load(directory)
    if embedding_model is not None and kb.embedding_model_id != embedding_model:
        raise KnowledgeBaseError(
            f"knowledge base {directory} was built with embedding model "
            f"{kb.embedding_model_id!r}, but the config asks for {embedding_model!r}; rebuild it "
            f"with `knowgate index build ... --model {embedding_model}` or fix "
            f"retrieval.embedding_model"
        )
    return kb


def resolve_policy(config: RouterConfig, model_id: str) -> Policy:
    """The policy a config asks for (path, registry name, or the model's bundled policy)."""
    spec = config.policy
    if spec.path is not None:
        return load_policy(spec.path, model_id=model_id, force=spec.force)
    if spec.name is not None:
        return build_policy(spec.name, **spec.params)
    bundled = bundled_policy_path(model_id)
    if bundled is not None:
        return load_policy(bundled, model_id=model_id, force=spec.force)
    log.warning(
        "no policy configured and none bundled for %s: retrieving for every query. Fit one with "
        "`knowgate calibrate --model %s`.",
        model_id,
        model_id,
    )
    return build_policy("always")
