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
from knowgate.errors import ConfigError, InputError, KnowledgeBaseError, PolicyError, SignalError
from knowgate.models import (
    AnswerStream,
    Draft,
    LanguageModel,
    Prefill,
    RemoteDraft,
    RemoteModel,
    TokenCallback,
    load_backend,
)
from knowgate.policy import Decision, Policy, policy_from_spec
from knowgate.routing.generator import AnswerGenerator, GenerationRequest
from knowgate.routing.protocol import TextSink
from knowgate.routing.retrievers import PassageSource, as_passage_source
from knowgate.routing.trace import DecisionTrace, GateResult, PassageTrace, RoutedAnswer
from knowgate.signals import (
    SignalConfig,
    compute_features,
    compute_vectors,
    draft_features,
    feature_specs,
)
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
        model: the language model; it always gates, and answers unless ``generator`` is set. A
            local :class:`~knowgate.models.LanguageModel`, or a
            :class:`~knowgate.models.RemoteModel` behind an OpenAI-compatible server, which
            always gates on its draft (``gate.mode`` does not apply; see docs/remote.md).
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
        signal_config: which signals to compute for every request (default: the config's
            ``signals`` section); the router also computes whatever a policy reads.

    Raises:
        ConfigError: an unusable retriever, generator or policy.
        PolicyError: a policy fitted for another model (unless ``policy.force``).
    """

    def __init__(
        self,
        model: LanguageModel | RemoteModel,
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
        self.signal_config = signal_config or self.config.signals
        self._covering: dict[str, SignalConfig] = {}
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
        model: LanguageModel | RemoteModel | None = None,
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
        lm = model or load_backend(config.model)
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
        if isinstance(self.model, RemoteModel):
            self._check_served_policy(policy, self.model)
            return
        signals = self.signals_for([policy])
        recorded = policy.signal_config or {}
        eps = recorded.get("near_zero_eps")
        if (
            isinstance(eps, int | float)
            and float(eps) != signals.near_zero_eps
            and any("near_zero_fraction" in f for f in policy.required_features)
        ):
            raise ConfigError(
                f"policy {policy.policy_id} was fitted on mlp_near_zero_fraction with "
                f"near_zero_eps {eps}, but the router computes it with "
                f"{signals.near_zero_eps}; set signals.near_zero_eps to {eps}"
            )
        specs = feature_specs(signals)
        served_only = [
            f for f in policy.required_features if f in specs and "local" not in specs[f].backends
        ]
        if served_only:
            raise ConfigError(
                f"policy {policy.policy_id} needs {served_only}, which only a served model "
                f"provides (computed from a server's top-k log-probabilities or hidden state); "
                f"route it with a model openai:<base_url>#<model>"
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

    @staticmethod
    def _check_served_policy(policy: Policy, model: RemoteModel) -> None:
        """Refuse a policy that reads features the served model cannot provide."""
        provided = model.feature_names()
        missing = [
            f for f in policy.required_features if f not in provided and f not in QUESTION_FEATURES
        ]
        if missing:
            raise ConfigError(
                f"policy {policy.policy_id} needs {missing}, which the served model "
                f"{model.model_id} does not provide: a server returns its draft's token "
                f"log-probabilities (and, with remote.hidden_states, a last-layer hidden state), "
                f"not activations or full distributions. It provides {provided}. Fit a policy on "
                f"it with `knowgate calibrate --model {model.config.source}`."
            )

    def signals_for(self, policies: Sequence[Policy]) -> SignalConfig:
        """The router's signal configuration extended by what ``policies`` read.

        Raises:
            ConfigError: a policy reads something a live request does not have (an
                evaluation-only feature, one that needs extra model calls, an unknown name).
        """
        key = "\n".join(sorted({p.policy_id for p in policies}))
        if key not in self._covering:
            config = self.signal_config
            for policy in dict.fromkeys(policies):
                names = [*policy.required_features, *policy.required_vectors]
                try:
                    config = config.covering(names)
                except SignalError as exc:
                    raise ConfigError(
                        f"policy {policy.policy_id} needs features a live request does not "
                        f"have: {exc} (evaluation-only policies such as oracle, popularity, "
                        "sampling-consistency and self-routing cannot route)"
                    ) from exc
            self._covering[key] = config
        return self._covering[key]

    @property
    def mode(self) -> GateMode:
        """``pre`` or ``draft`` (see :class:`~knowgate.config.GateConfig`); a served model
        always gates on its draft (it cannot prefill without decoding)."""  # noqa: D205, D209
        if isinstance(self.model, RemoteModel):
            return "draft"
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
        thresholds: Sequence[float | None] | None = None,
        request_ids: Sequence[str] | None = None,
        streams: Sequence[TextSink | None] | None = None,
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
            thresholds: a threshold override per query (``None``: none), so requests with
                different thresholds share one batch; excludes ``threshold``.
            request_ids: the request id of each query (unique); default: fresh random ids.
            streams: per query, a sink for its answer's text as it is decoded (see
                :data:`~knowgate.routing.TextSink`), or ``None``.

        Raises:
            InputError: bad queries, or mismatched lengths of the per-query arguments.
            ConfigError: a policy that cannot decide for this router (see :meth:`check_policy`).
        """
        self._validate_queries(queries)
        n = len(queries)
        ids = per_query_ids(request_ids, n)
        sinks = per_query("streams", streams, n)
        if thresholds is not None and threshold is not None:
            raise InputError("give threshold or thresholds, not both")
        overrides = per_query("thresholds", thresholds, n)
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
        policies = [
            p if t is None else p.with_threshold(t)
            for p, t in zip(policies, overrides, strict=True)
        ]
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
                self._route_chunk(
                    list(queries[start:stop]),
                    policies[start:stop],
                    meta[start:stop],
                    ids[start:stop],
                    sinks[start:stop],
                )
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
        if isinstance(self.model, RemoteModel):
            return self._gate_served(query, policy, metadata, self.model)
        start = time.perf_counter()
        signals = self.signals_for([policy])
        pre = self._prefill([query], signals)
        features = self._features(query, pre.captures[0], metadata, signals)
        if self.mode == "draft":
            draft = self.model.decode(pre)[0]
            features.update(draft_features(draft.stats))
        else:
            self.model.decode(pre, rows=[])  # release the KV cache
        decision = policy.decide(self._inputs(features, pre.captures[0], signals))
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

    def _prefill(
        self,
        queries: Sequence[str],
        signals: SignalConfig,
        prompts: Sequence[str] | None = None,
    ) -> Prefill:
        """One prefill; the question's positions are located only when the signals need them.

        ``prompts`` are the queries' formatted prompts when the caller already has them (the
        batch path times the choice of demonstrations as its own stage). A local model only: a
        served one is routed by ``_gate_served`` / ``_route_served``.
        """
        model = self.model
        assert isinstance(model, LanguageModel)
        if prompts is None:
            prompts = model.format_prompts(queries)
        prompts = list(prompts)
        if signals.needs_question_text:
            return model.prefill(prompts, questions=list(queries))
        return model.prefill(prompts)

    @staticmethod
    def _features(
        query: str,
        capture: Any,
        metadata: Mapping[str, Any] | None,
        signals: SignalConfig,
    ) -> dict[str, float]:
        """The scalar features of one request (what its trace shows)."""
        return compute_features(capture, signals, question_text=query, metadata=metadata)

    @staticmethod
    def _inputs(features: dict[str, float], capture: Any, signals: SignalConfig) -> dict[str, Any]:
        """What the policy reads: the features plus vector signals (never in traces)."""
        if not signals.vectors:
            return features
        return {**features, **compute_vectors(capture, signals.vectors)}

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
        lm = self.model
        assert isinstance(lm, LanguageModel)  # a served model's server fits its own context

        def fits(count: int) -> bool:
            prompt = lm.format_prompt(query, passages[:count])
            return lm.count_tokens(prompt) <= lm.max_prompt_tokens

        if fits(len(passages)):
            return lm.format_prompt(query, passages), len(passages)
        low, high = 0, len(passages)  # fits(low) holds (no passages: the gate's prompt fitted)
        while high - low > 1:
            mid = (low + high) // 2
            low, high = (mid, high) if fits(mid) else (low, mid)
        return lm.format_prompt(query, passages[:low]), low

    def _generate(self, query: str, passages: list[PassageTrace]) -> str:
        cfg = self.model.config.prompt
        request = GenerationRequest(
            query=query,
            passages=tuple(passages),
            system_prompt=cfg.rag_system_prompt if passages else cfg.system_prompt,
            context=self.model.formatter.context_block(passages) if passages else "",
        )
        return self.generator.answer(request)  # type: ignore[union-attr]

    def _token_sink(
        self, streams: Sequence[TextSink | None], rows: Sequence[int]
    ) -> TokenCallback | None:
        """The ``on_token`` of a decode over requests ``rows``, feeding their answer streams."""
        lm = self.model
        assert isinstance(lm, LanguageModel)  # a served model's answers arrive whole
        texts = {
            j: AnswerStream.for_model(lm, sink)
            for j, i in enumerate(rows)
            if (sink := streams[i]) is not None
        }
        if not texts:
            return None

        def on_token(row: int, token: int) -> None:
            if row in texts:
                texts[row].push(token)

        return on_token

    def _route_chunk(
        self,
        queries: list[str],
        policies: list[Policy],
        metadata: list[Mapping[str, Any] | None],
        request_ids: list[str | None],
        streams: list[TextSink | None],
    ) -> list[RoutedAnswer]:
        if isinstance(self.model, RemoteModel):  # answers arrive whole (see TextSink)
            return self._route_served(queries, policies, metadata, request_ids, self.model)
        n = len(queries)
        rows = list(range(n))
        stages = _Stages(n)

        drafts: dict[int, Draft] = {}
        pre: Prefill | None = None
        # Policies that read no signal (always, never, random) decide before any forward pass:
        # always-retrieve is plain RAG, with no gate prefill spent on it - also when it shares a
        # batch with requests whose policies read signals (an experiment's arms, a server's
        # micro-batch), so each request costs what it costs alone.
        free = {
            i
            for i in rows
            if self.mode == "pre"
            and not (policies[i].required_features or policies[i].required_vectors)
        }
        gated = [i for i in rows if i not in free]
        signals = self.signals_for([policies[i] for i in gated]) if gated else self.signal_config
        features: list[dict[str, float]] = [{} for _ in rows]
        decisions: dict[int, Decision] = {}
        if free:
            t = time.perf_counter()
            for i in sorted(free):
                decisions[i] = policies[i].decide({})
            stages.add("policy", time.perf_counter() - t, sorted(free))
        prefill_rows = [i for i in rows if i not in free or not decisions[i].retrieve]
        pre_index = {row: j for j, row in enumerate(prefill_rows)}
        if prefill_rows:
            t = time.perf_counter()
            batch = [queries[i] for i in prefill_rows]
            prompts = self.model.format_prompts(batch)
            if self.model.demonstrations is not None:  # chosen per question: its own stage
                stages.add("demonstrations", time.perf_counter() - t, prefill_rows)
                t = time.perf_counter()
            pre = self._prefill(batch, signals, prompts)
            stages.add("prefill", time.perf_counter() - t, prefill_rows)

        if gated:
            assert pre is not None
            t = time.perf_counter()
            for i in gated:
                capture = pre.captures[pre_index[i]]
                features[i] = self._features(queries[i], capture, metadata[i], signals)
            stages.add("signals", time.perf_counter() - t, gated)

            if self.mode == "draft":  # every row is gated and prefilled, in order
                t = time.perf_counter()
                for i, d in zip(gated, self.model.decode(pre), strict=True):
                    drafts[i] = d
                    features[i].update(draft_features(d.stats))
                stages.add("decode", time.perf_counter() - t, gated)

            t = time.perf_counter()
            for i in gated:
                inputs = self._inputs(features[i], pre.captures[pre_index[i]], signals)
                decisions[i] = policies[i].decide(inputs)
            stages.add("policy", time.perf_counter() - t, gated)

        wants = [i for i in rows if decisions[i].retrieve]
        passages, errors, retriever_calls = self._retrieve(queries, wants, stages)

        closed = [i for i in rows if i not in passages]
        fallback: set[int] = set()
        if self.mode == "pre":
            t = time.perf_counter()
            need = [i for i in closed if i in pre_index] if self.generator is None else []
            if pre is not None:
                decoded = self.model.decode(
                    pre,
                    rows=[pre_index[i] for i in need],
                    on_token=self._token_sink(streams, need),
                )
                for i, d in zip(need, decoded, strict=True):
                    drafts[i] = d
            stages.add("decode", time.perf_counter() - t, need)
            missing = [i for i in closed if i not in drafts and self.generator is None]
            fallback.update(missing)
            if missing:  # retrieval failed for a signal-free policy: answer closed-book now
                t = time.perf_counter()
                outs = self.model.run(
                    [self.model.format_prompt(queries[i]) for i in missing],
                    on_token=self._token_sink(streams, missing),
                )
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
            selector = self.model.demonstrations
            missing_shots = [i for i in rag if i not in pre_index]
            if selector is not None and missing_shots:  # choose them in one batch
                selector.select([queries[i] for i in missing_shots])
                stages.add("demonstrations", time.perf_counter() - t, missing_shots)
                t = time.perf_counter()
            if rag:
                fitted = [self._fit_passages(queries[i], passages[i]) for i in rag]
                outs = self.model.run(
                    [p for p, _ in fitted], on_token=self._token_sink(streams, rag)
                )
                for i, (_, count), out in zip(rag, fitted, outs, strict=True):
                    answers[i] = out.answer
                    used_passages[i] = passages[i][:count]
                    lm_calls[i] += 1
                stages.add("answer_with_passages", time.perf_counter() - t, rag)

        return self._results(
            queries,
            [decisions[i] for i in rows],
            features,
            answers,
            used_passages,
            {"lm": lm_calls, "retriever": retriever_calls, "generator": generator_calls},
            stages,
            errors,
            request_ids,
        )

    def _retrieve(
        self, queries: Sequence[str], wants: list[int], stages: _Stages
    ) -> tuple[dict[int, list[PassageTrace]], dict[int, str], dict[int, int]]:
        """Passages for the rows ``wants``: ``(passages, fallback reasons, retriever calls)``.

        A missing retriever, a failing one, or one that finds nothing leaves the row without
        passages and records why (it is then answered closed-book).
        """
        passages: dict[int, list[PassageTrace]] = {}
        errors: dict[int, str] = {}
        retriever_calls = dict.fromkeys(range(len(queries)), 0)
        if wants and self.source is None:
            errors = dict.fromkeys(wants, "no retriever configured; answered closed-book")
        elif wants and self.source is not None:
            t = time.perf_counter()
            for i in wants:
                retriever_calls[i] = 1
            try:
                found = self.source.retrieve([queries[i] for i in wants], self.config.retrieval.k)
            except Exception as exc:  # any retriever failure falls back, visibly
                log.warning("retriever %s failed: %s", self.source.name, exc)
                errors = dict.fromkeys(wants, f"retriever failed ({type(exc).__name__}: {exc})")
            else:
                for i, hits in zip(wants, found, strict=True):
                    if hits:
                        passages[i] = hits
                    else:
                        errors[i] = "retriever returned no passages; answered closed-book"
            stages.add("retrieve", time.perf_counter() - t, wants)
        return passages, errors, retriever_calls

    def _results(
        self,
        queries: Sequence[str],
        decisions: Sequence[Decision],
        features: Sequence[dict[str, float]],
        answers: Mapping[int, str],
        used_passages: Mapping[int, list[PassageTrace]],
        calls: Mapping[str, Mapping[int, int]],
        stages: _Stages,
        errors: Mapping[int, str],
        request_ids: Sequence[str | None],
    ) -> list[RoutedAnswer]:
        """One :class:`RoutedAnswer` per query, with its calls and stage timings."""
        results = []
        for i in range(len(queries)):
            row_calls = {"lm": calls["lm"][i], "retriever": calls["retriever"][i]}
            if self.generator is not None:
                row_calls["generator"] = calls["generator"][i]
            timings = dict(stages.rows[i])
            timings["total"] = round(sum(timings.values()), 2)
            results.append(
                RoutedAnswer(
                    query=queries[i],
                    answer=answers[i],
                    decision=self._decision_trace(decisions[i]),
                    features=features[i],
                    passages=used_passages.get(i, []),
                    calls=row_calls,
                    timings_ms=timings,
                    model=self.model.model_id,
                    request_id=request_ids[i] or uuid.uuid4().hex,
                    retrieval_error=errors.get(i),
                )
            )
        return results

    # ------------------------------------------------------------------- a served model
    def _served_features(
        self, query: str, draft: RemoteDraft, metadata: Mapping[str, Any] | None, policy: Policy
    ) -> dict[str, float]:
        features = dict(draft.features)
        if any(f in QUESTION_FEATURES for f in policy.required_features):
            features.update(compute_question_features(query, metadata))
        return features

    @staticmethod
    def _served_decision(
        policy: Policy, features: dict[str, float], draft: RemoteDraft
    ) -> Decision:
        """The policy's decision; retrieve when the draft lacks a feature the policy reads.

        A served draft lacks features only when the server scored no token (the draft ended at
        once: no answer to keep) or returned no hidden state for it.
        """
        missing = [f for f in policy.required_features if f not in features]
        if missing:
            return Decision(
                retrieve=True,
                p_known=None,
                threshold=None,
                policy_id=policy.policy_id,
                reason=f"retrieved: {draft.missing_reason or 'features missing'} (no {missing})",
            )
        return policy.decide(features)

    def _gate_served(
        self,
        query: str,
        policy: Policy,
        metadata: Mapping[str, Any] | None,
        model: RemoteModel,
    ) -> GateResult:
        start = time.perf_counter()
        draft = model.draft([query])[0]
        features = self._served_features(query, draft, metadata, policy)
        decision = self._served_decision(policy, features, draft)
        total = (time.perf_counter() - start) * 1000.0
        return GateResult(
            self._decision_trace(decision), features, {"gate": round(total, 2)}, model.model_id
        )

    def _route_served(
        self,
        queries: list[str],
        policies: list[Policy],
        metadata: list[Mapping[str, Any] | None],
        request_ids: list[str | None],
        model: RemoteModel,
    ) -> list[RoutedAnswer]:
        """Route a chunk through a served model: one greedy draft with logprobs per gated query,
        the draft is the answer when the policy keeps it, else retrieve and ask again with the
        passages. Policies that read no signal decide first (always = plain RAG: one call).
        """  # noqa: D205
        n = len(queries)
        rows = list(range(n))
        stages = _Stages(n)
        drafts: dict[int, RemoteDraft] = {}
        features: list[dict[str, float]] = [{} for _ in rows]
        free = [i for i in rows if not policies[i].required_features]
        gated = [i for i in rows if policies[i].required_features]
        decisions: dict[int, Decision] = {}
        if free:
            t = time.perf_counter()
            for i in free:
                decisions[i] = policies[i].decide({})
            stages.add("policy", time.perf_counter() - t, free)
        if gated:
            t = time.perf_counter()
            for i, d in zip(gated, model.draft([queries[i] for i in gated]), strict=True):
                drafts[i] = d
            stages.add("draft", time.perf_counter() - t, gated)
            t = time.perf_counter()
            for i in gated:
                features[i] = self._served_features(queries[i], drafts[i], metadata[i], policies[i])
            stages.add("signals", time.perf_counter() - t, gated)
            t = time.perf_counter()
            for i in gated:
                decisions[i] = self._served_decision(policies[i], features[i], drafts[i])
            stages.add("policy", time.perf_counter() - t, gated)

        wants = [i for i in rows if decisions[i].retrieve]
        passages, errors, retriever_calls = self._retrieve(queries, wants, stages)
        lm_calls = {i: int(i in drafts) for i in rows}
        generator_calls = dict.fromkeys(rows, 0)
        answers: dict[int, str] = {}
        used_passages: dict[int, list[PassageTrace]] = {}
        if self.generator is not None:
            t = time.perf_counter()
            for i in rows:
                used_passages[i] = passages.get(i, [])
                answers[i] = self._generate(queries[i], used_passages[i])
                generator_calls[i] = 1
            stages.add("generate", time.perf_counter() - t, rows)
        else:
            closed = [i for i in rows if i not in passages]
            need = [i for i in closed if i not in drafts]  # signal-free, or retrieval failed
            if need:
                t = time.perf_counter()
                for i, d in zip(need, model.draft([queries[i] for i in need]), strict=True):
                    drafts[i] = d
                    lm_calls[i] += 1
                stages.add("draft", time.perf_counter() - t, need)
            for i in closed:
                answers[i] = drafts[i].text
            rag = sorted(passages)
            if rag:
                t = time.perf_counter()
                outs = model.answer([queries[i] for i in rag], [passages[i] for i in rag])
                for i, out in zip(rag, outs, strict=True):
                    answers[i] = out.text
                    used_passages[i] = passages[i]
                    lm_calls[i] += 1
                stages.add("answer_with_passages", time.perf_counter() - t, rag)
        return self._results(
            queries,
            [decisions[i] for i in rows],
            features,
            answers,
            used_passages,
            {"lm": lm_calls, "retriever": retriever_calls, "generator": generator_calls},
            stages,
            errors,
            request_ids,
        )


def per_query(name: str, values: Sequence[Any] | None, n: int) -> list[Any]:
    """A per-query argument as a list of ``n`` entries (``None``: ``n`` Nones).

    Raises:
        InputError: not a list, or not one entry per query.
    """
    if values is None:
        return [None] * n
    if isinstance(values, str) or not isinstance(values, Sequence) or len(values) != n:
        raise InputError(f"{name} must be a list with one entry per query ({n})")
    return list(values)


def per_query_ids(request_ids: Sequence[str] | None, n: int) -> list[str | None]:
    """Caller-given request ids, checked: non-empty distinct strings, one per query.

    Raises:
        InputError: naming the bad id.
    """
    ids = per_query("request_ids", request_ids, n)
    if request_ids is None:
        return ids
    for rid in ids:
        if not isinstance(rid, str) or not rid.strip():
            raise InputError(f"request ids must be non-empty strings, got {rid!r}")
    if len(set(ids)) != n:
        raise InputError("request ids must be distinct")
    return ids


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
