"""A/B tests on top of the router: each request's unit picks its arm, and every request is logged.

The :class:`ExperimentRouter` wraps a :class:`~knowgate.routing.Router` and an
:class:`~knowgate.experiments.Experiment`: it assigns each request's unit (user, session) to an
arm by the sticky hash, asks the router to decide with that arm's policy
(``route_batch(queries, policies=...)``), puts the assignment into ``extra["experiment"]`` and
logs the batch to the :class:`~knowgate.experiments.DecisionLog` in one transaction. It offers
the same :class:`~knowgate.routing.QueryRouter` interface as the router, so the HTTP app and the
LangChain adapters serve either.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from knowgate.config import RouterConfig, load_config
from knowgate.errors import ConfigError, InputError
from knowgate.experiments.assignment import Assignment
from knowgate.experiments.decision_log import DecisionLog
from knowgate.experiments.experiment import Experiment
from knowgate.models import LanguageModel
from knowgate.policy import Policy
from knowgate.routing import (
    AnswerGenerator,
    GateResult,
    QueryRouter,
    RoutedAnswer,
    Router,
    TextSink,
)


class ExperimentRouter:
    """Routes every request with its unit's arm, and logs it.

    Args:
        router: answers the requests (model, retriever, gate mode, limits); its own policy is
            not used for experiment traffic.
        experiment: the arms; each arm's policy is checked against the router.
        decision_log: where every routed request is logged; the experiment is registered on
            construction, which fails if its definition changed after it logged traffic.
            ``None`` assigns arms without logging.

    Raises:
        ConfigError: an arm's policy cannot decide for this router (e.g. draft features under a
            pre-generation gate).
        ExperimentError: the log holds traffic of a different definition of the experiment.
    """

    def __init__(
        self,
        router: Router,
        experiment: Experiment,
        decision_log: DecisionLog | None = None,
    ) -> None:
        """Check every arm against the router and register the experiment in the log."""
        if not isinstance(router, Router):
            raise ConfigError(f"router must be a knowgate Router, got {type(router).__name__}")
        if not isinstance(experiment, Experiment):
            raise ConfigError(
                f"experiment must be a knowgate Experiment, got {type(experiment).__name__}"
            )
        for policy in experiment.arms.values():
            router.check_policy(policy)
        if decision_log is not None:
            decision_log.register(experiment)
        self.router = router
        self.experiment = experiment
        self.decision_log = decision_log

    @classmethod
    def from_config(
        cls,
        config: RouterConfig | str | Path,
        *,
        model: LanguageModel | None = None,
        retriever: Any | None = None,
        generator: AnswerGenerator | None = None,
    ) -> ExperimentRouter:
        """Build the router and the experiment of a config with an ``experiment`` section.

        Components passed as arguments are used instead of loading them from the config.

        Raises:
            ConfigError: the config has no ``experiment`` section, or is invalid.
            ExperimentError: an arm names no policy, or the log holds another definition.
            PolicyError: an arm's policy cannot be loaded.
        """
        if not isinstance(config, RouterConfig):
            config = load_config(config)
        spec = config.experiment
        if spec is None:
            raise ConfigError("the config has no experiment section; build a Router instead")
        router = Router.from_config(
            config.model_copy(update={"experiment": None}),
            model=model,
            retriever=retriever,
            generator=generator,
        )
        experiment = Experiment.from_spec(
            spec, model_id=router.model.model_id, force=config.policy.force
        )
        log = DecisionLog(spec.decision_log) if spec.decision_log is not None else None
        try:
            return cls(router, experiment, log)
        except BaseException:
            if log is not None:
                log.close()
            raise

    # ------------------------------------------------------------------------------ routing
    def assign(self, unit_ids: Sequence[str | int | None]) -> list[Assignment]:
        """The arm of each unit (``None``: a random id, recorded as such)."""
        return [self.experiment.assign(u) for u in unit_ids]

    def route(
        self,
        query: str,
        *,
        threshold: float | None = None,
        metadata: Mapping[str, Any] | None = None,
        unit_id: str | int | None = None,
    ) -> RoutedAnswer:
        """Answer one query with the arm of ``unit_id`` (see :meth:`route_batch`)."""
        return self.route_batch(
            [query],
            threshold=threshold,
            metadata=[metadata] if metadata else None,
            unit_ids=[unit_id],
        )[0]

    def route_batch(
        self,
        queries: Sequence[str],
        *,
        threshold: float | None = None,
        metadata: Sequence[Mapping[str, Any] | None] | None = None,
        unit_ids: Sequence[str | int | None] | None = None,
        thresholds: Sequence[float | None] | None = None,
        request_ids: Sequence[str] | None = None,
        streams: Sequence[TextSink | None] | None = None,
    ) -> list[RoutedAnswer]:
        """Answer many queries, each with its unit's arm, and log them in one transaction.

        Args:
            queries: the questions.
            threshold: refused: it would change the arms' policies (set thresholds in the arms'
                definitions).
            metadata: per-query metadata for question-only features.
            unit_ids: per-query units (users, sessions); ``None`` entries, or no list, get
                random ids, recorded as such.
            thresholds: refused unless every entry is ``None`` (as ``threshold``).
            request_ids: the request id of each query (logged as such); default: fresh ids.
            streams: per query, a sink for its answer's text as it is decoded.

        Raises:
            InputError: a threshold override, bad queries, or mismatched lengths.
            ExperimentError: a unit id is invalid, or the decision log cannot be written.
        """
        if threshold is not None or any(t is not None for t in thresholds or ()):
            raise InputError(
                f"a threshold override would change the policies of experiment "
                f"{self.experiment.name!r}; set thresholds in the arms' definitions"
            )
        ids = self._unit_ids(queries, unit_ids)
        assignments = self.assign(ids)
        policies = [self.experiment.arms[a.arm] for a in assignments]
        routed = self.router.route_batch(
            queries,
            policies=policies,
            metadata=metadata,
            request_ids=request_ids,
            streams=streams,
        )
        for answer, assignment in zip(routed, assignments, strict=True):
            answer.extra["experiment"] = assignment.to_dict()
        if self.decision_log is not None:
            self.decision_log.record(routed, assignments)
        return routed

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
    ) -> GateResult:
        """Decide for one query with the arm of ``unit_id``, without answering it.

        The decision is not logged: the answer is written elsewhere (e.g. by the LLM of a chain
        around ``GatedRetriever``), so there is no answer, latency or outcome to log. The
        assignment is in ``extra["experiment"]`` for callers that log it themselves.

        Raises:
            InputError: a threshold override, or a bad query.
            ExperimentError: the unit id is invalid.
        """
        if threshold is not None:
            raise InputError(
                f"a threshold override would change the policies of experiment "
                f"{self.experiment.name!r}; set thresholds in the arms' definitions"
            )
        (assignment,) = self.assign([unit_id])
        policy: Policy = self.experiment.arms[assignment.arm]
        result = self.router.gate(query, metadata=metadata, policy=policy)
        result.extra["experiment"] = assignment.to_dict()
        return result

    def describe(self) -> dict[str, Any]:
        """The router's description plus the experiment and whether a decision log is kept."""
        return {
            **self.router.describe(),
            "policy": None,
            "experiment": self.experiment.name,
            "arms": {arm: policy.policy_id for arm, policy in self.experiment.arms.items()},
            "decision_log": self.decision_log is not None,
        }

    def close(self) -> None:
        """Close the decision log (the router stays usable on its own)."""
        if self.decision_log is not None:
            self.decision_log.close()

    def __repr__(self) -> str:
        log = self.decision_log.path if self.decision_log is not None else "no log"
        return f"<ExperimentRouter {self.experiment!r} on {self.router.model.model_id}, {log}>"

    @staticmethod
    def _unit_ids(
        queries: Sequence[str], unit_ids: Sequence[str | int | None] | None
    ) -> list[str | int | None]:
        n = len(queries) if isinstance(queries, Sequence) and not isinstance(queries, str) else 1
        if unit_ids is None:
            return [None] * n
        if isinstance(unit_ids, str) or not isinstance(unit_ids, Sequence) or len(unit_ids) != n:
            raise InputError(f"unit_ids must be a list with one entry per query ({n})")
        return list(unit_ids)


def router_from_config(
    config: RouterConfig | str | Path | None = None,
    *,
    model: LanguageModel | None = None,
    retriever: Any | None = None,
    generator: AnswerGenerator | None = None,
) -> QueryRouter:
    """The router a config describes: an :class:`ExperimentRouter` when it has an ``experiment``
    section, else a plain :class:`~knowgate.routing.Router` (``None``: the defaults).
    """  # noqa: D205
    if not isinstance(config, RouterConfig):
        config = load_config(config)
    kwargs: dict[str, Any] = {"model": model, "retriever": retriever, "generator": generator}
    if config.experiment is not None:
        return ExperimentRouter.from_config(config, **kwargs)
    return Router.from_config(config, **kwargs)
