"""LangChain integration: every adapter between knowgate and LangChain lives here.

Depends only on ``langchain-core``. Knowgate in LangChain chains:

- :class:`KnowgateRunnable` routes a question (a string, or a dict with a question key) and
  returns the answer string or the full :class:`~knowgate.routing.RoutedAnswer`; it composes in
  LCEL and supports ``invoke/batch/ainvoke/abatch`` (``batch`` uses the router's batched path).
- :class:`GatedRetriever` wraps the retriever of an existing chain: it returns no documents when
  the local model knows the answer, so the chain's LLM answers closed-book; otherwise it returns
  the inner retriever's documents, tagged with the decision in their metadata.
- :class:`KnowledgeBaseRetriever` is a knowledge base as a LangChain retriever.
- :class:`LocalChatModel` exposes the local model as a LangChain chat model, so a complete chain
  runs offline (the examples use it; any other chat model works the same).

LangChain in the router:

- :class:`LangChainPassageSource` lets the router retrieve from any LangChain retriever.
- :class:`LangChainGenerator` lets a LangChain chat model or LLM write the router's answers.

The runnable and the gated retriever take any :class:`~knowgate.routing.QueryRouter`: a
:class:`~knowgate.routing.Router`, or an :class:`~knowgate.experiments.ExperimentRouter` running
an A/B test on top of one.

Both emit a ``knowgate_decision`` custom event (see ``on_custom_event`` in LangChain callbacks)
with the decision, p_known and threshold, and take the p_known threshold per request through the
configurable field ``threshold``::

    chain.invoke(q, config={"configurable": {"threshold": 0.4}})

With an :class:`~knowgate.experiments.ExperimentRouter`, both read the experiment unit (user,
session) from the run's config - ``metadata["unit_id"]`` or ``configurable["unit_id"]`` - so the
same user always gets the same arm::

    chain.invoke(q, config={"metadata": {"unit_id": "user-42"}})
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from langchain_core.callbacks import (
    CallbackManagerForChainRun,
    CallbackManagerForRetrieverRun,
    dispatch_custom_event,
)
from langchain_core.documents import Document
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.retrievers import BaseRetriever
from langchain_core.runnables import (
    ConfigurableField,
    RunnableConfig,
    RunnableSerializable,
    ensure_config,
)
from pydantic import ConfigDict, Field

from knowgate.errors import ConfigError, InputError
from knowgate.models import LanguageModel
from knowgate.retrieval import KnowledgeBase, SearchMode
from knowgate.routing import (
    GateResult,
    GenerationRequest,
    PassageTrace,
    QueryRouter,
    RoutedAnswer,
    finite_score,
)

DECISION_EVENT = "knowgate_decision"
UNIT_ID_KEY = "unit_id"
THRESHOLD_FIELD = ConfigurableField(
    id="threshold",
    name="p_known threshold",
    description="Retrieve when the calibrated p_known is below this value.",
)


def _event_payload(answer_or_gate: RoutedAnswer | GateResult, query: str) -> dict[str, Any]:
    d = answer_or_gate.decision
    payload = {
        "query": query,
        "retrieve": d.retrieve,
        "p_known": d.p_known,
        "threshold": d.threshold,
        "policy": d.policy,
        "mode": d.mode,
    }
    experiment = answer_or_gate.extra.get("experiment")
    if experiment:  # the A/B arm, when an ExperimentRouter routed it
        payload["experiment"] = experiment
    return payload


def unit_id_from_config(config: Mapping[str, Any] | None) -> Any:
    """A run's experiment unit: ``configurable["unit_id"]``, else ``metadata["unit_id"]``."""
    if not config:
        return None
    for section in ("configurable", "metadata"):
        block = config.get(section)
        if isinstance(block, Mapping) and block.get(UNIT_ID_KEY) is not None:
            return block[UNIT_ID_KEY]
    return None


def _emit(payload: dict[str, Any], callbacks: Any) -> None:
    # Outside a traced context there is no parent run and nobody to notify.
    with contextlib.suppress(RuntimeError):
        dispatch_custom_event(DECISION_EVENT, payload, config={"callbacks": callbacks})


class KnowgateRunnable(RunnableSerializable[Any, Any]):
    """Routes questions through a router inside LCEL chains.

    Attributes:
        router: a :class:`~knowgate.routing.Router` or an
            :class:`~knowgate.experiments.ExperimentRouter`.
        output: ``answer`` returns the answer string; ``routed`` the full RoutedAnswer.
        question_key: for dict inputs, the key holding the question.
        threshold: p_known threshold override (configurable per request as ``threshold``).
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    router: QueryRouter = Field(exclude=True)
    output: Literal["answer", "routed"] = "answer"
    question_key: str = "question"
    threshold: float | None = Field(default=None, ge=0.0, le=1.0)

    @classmethod
    def configurable_for(
        cls, router: QueryRouter, *, output: Literal["answer", "routed"] = "answer", **kwargs: Any
    ) -> Any:
        """A runnable whose threshold is overridable via ``configurable={"threshold": ...}``."""
        return cls(router=router, output=output, **kwargs).configurable_fields(
            threshold=THRESHOLD_FIELD
        )

    def _question(self, value: Any) -> str:
        if isinstance(value, str):
            return value
        if isinstance(value, Mapping):
            if self.question_key not in value:
                raise InputError(
                    f"input dict has no {self.question_key!r} key (keys: {sorted(value)})"
                )
            question = value[self.question_key]
            if not isinstance(question, str):
                raise InputError(f"input[{self.question_key!r}] must be a string")
            return question
        raise InputError(
            f"input must be a question string or a dict with {self.question_key!r}, "
            f"got {type(value).__name__}"
        )

    def _shape(self, routed: RoutedAnswer) -> Any:
        return routed if self.output == "routed" else routed.answer

    def _run_many(
        self,
        inputs: list[Any],
        run_manager: list[CallbackManagerForChainRun],
        config: list[RunnableConfig],
    ) -> list[Any]:
        queries = [self._question(v) for v in inputs]
        unit_ids = [unit_id_from_config(c) for c in config]
        routed = self.router.route_batch(queries, threshold=self.threshold, unit_ids=unit_ids)
        for r, manager in zip(routed, run_manager, strict=True):
            _emit(_event_payload(r, r.query), manager.get_child())
        return [self._shape(r) for r in routed]

    def invoke(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> Any:
        """Route one question."""
        return self._call_with_config(
            lambda value, run_manager, config: self._run_many([value], [run_manager], [config])[0],
            input,
            config,
            run_type="chain",
        )

    def batch(
        self,
        inputs: list[Any],
        config: RunnableConfig | list[RunnableConfig] | None = None,
        *,
        return_exceptions: bool = False,
        **kwargs: Any,
    ) -> list[Any]:
        """Route many questions in the router's batched path (one prefill per batch)."""
        if not inputs:
            return []
        return self._batch_with_config(
            self._run_many, inputs, config, return_exceptions=return_exceptions, run_type="chain"
        )

    async def ainvoke(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> Any:
        """Async :meth:`invoke` (the model runs in a worker thread)."""
        return await asyncio.to_thread(self.invoke, input, config, **kwargs)

    async def abatch(
        self,
        inputs: list[Any],
        config: RunnableConfig | list[RunnableConfig] | None = None,
        *,
        return_exceptions: bool = False,
        **kwargs: Any,
    ) -> list[Any]:
        """Async :meth:`batch`."""
        return await asyncio.to_thread(
            self.batch, inputs, config, return_exceptions=return_exceptions, **kwargs
        )


class GatedRetriever(BaseRetriever):
    """Drop-in replacement for a chain's retriever that retrieves only when the model does not know.

    Attributes:
        router: supplies the local model and policy (its own retriever is not used); an
            ExperimentRouter decides with the arm of the run's unit (``unit_id`` in the run
            config's ``metadata`` or ``configurable``).
        retriever: the inner retriever whose documents are returned when retrieving.
        threshold: p_known threshold override (configurable per request as ``threshold``).
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    router: QueryRouter = Field(exclude=True)
    retriever: BaseRetriever
    threshold: float | None = Field(default=None, ge=0.0, le=1.0)

    @classmethod
    def configurable_for(cls, router: QueryRouter, retriever: BaseRetriever, **kwargs: Any) -> Any:
        """A gated retriever whose threshold is overridable per request."""
        return cls(router=router, retriever=retriever, **kwargs).configurable_fields(
            threshold=THRESHOLD_FIELD
        )

    def invoke(
        self, input: str, config: RunnableConfig | None = None, **kwargs: Any
    ) -> list[Document]:
        """Gate ``input`` (with the arm of the run's unit, under an experiment), then retrieve."""
        config = ensure_config(config)
        return super().invoke(input, config, unit_id=unit_id_from_config(config), **kwargs)

    async def ainvoke(
        self, input: str, config: RunnableConfig | None = None, **kwargs: Any
    ) -> list[Document]:
        """Async :meth:`invoke` (the model runs in a worker thread)."""
        return await asyncio.to_thread(self.invoke, input, config, **kwargs)

    def _get_relevant_documents(
        self,
        query: str,
        *,
        run_manager: CallbackManagerForRetrieverRun,
        unit_id: str | int | None = None,
    ) -> list[Document]:
        gate = self.router.gate(query, threshold=self.threshold, unit_id=unit_id)
        payload = _event_payload(gate, query)
        _emit(payload, run_manager.get_child())
        if not gate.decision.retrieve:
            return []
        docs = self.retriever.invoke(query, config={"callbacks": run_manager.get_child()})
        tagged = []
        for doc in docs:
            meta = dict(doc.metadata or {})
            meta.update(
                {
                    "knowgate_retrieve": True,
                    "knowgate_p_known": gate.decision.p_known,
                    "knowgate_threshold": gate.decision.threshold,
                    "knowgate_policy": gate.decision.policy,
                }
            )
            tagged.append(Document(page_content=doc.page_content, metadata=meta, id=doc.id))
        return tagged


_ROLES = {"human": "user", "ai": "assistant", "system": "system"}


class LocalChatModel(BaseChatModel):
    """The local knowgate model as a LangChain chat model (greedy, short answers).

    Messages are rendered with the tokenizer's chat template; a base model without one gets the
    messages as ``role: content`` lines followed by ``assistant:``.

    Attributes:
        model: the local language model.
        max_new_tokens: answer length limit (default: the model config's).
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    model: LanguageModel = Field(exclude=True)
    max_new_tokens: int | None = Field(default=None, ge=1)

    @property
    def _llm_type(self) -> str:
        return "knowgate-local"

    def _render(self, messages: list[BaseMessage]) -> str:
        turns = [{"role": _ROLES.get(m.type, "user"), "content": str(m.content)} for m in messages]
        tokenizer = self.model.tokenizer
        if getattr(tokenizer, "chat_template", None):
            return str(
                tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)
            )
        lines = [f"{t['role']}: {t['content']}" for t in turns]
        return "\n".join([*lines, "assistant:"])

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: Any = None,
        **kwargs: Any,
    ) -> ChatResult:
        out = self.model.run([self._render(messages)], max_new_tokens=self.max_new_tokens)[0]
        text = out.answer
        for s in stop or []:
            text = text.split(s, 1)[0]
        message = AIMessage(content=text, response_metadata={"model": self.model.model_id})
        return ChatResult(generations=[ChatGeneration(message=message)])


class KnowledgeBaseRetriever(BaseRetriever):
    """Retrieves passages from a :class:`~knowgate.retrieval.KnowledgeBase`.

    Each LangChain document has the passage text as ``page_content``, the passage id as ``id``,
    and ``id``, ``title``, ``score``, ``rank`` (plus the passage's own metadata) as metadata.

    Attributes:
        knowledge_base: the base to search.
        k: passages per query; ``invoke(query, k=3)`` overrides it for one call.
        mode: ``dense``, ``bm25`` or ``hybrid``; ``None`` uses the base's configured mode.
            ``invoke(query, mode="bm25")`` overrides it for one call.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    knowledge_base: KnowledgeBase
    k: int = Field(default=5, ge=1)
    mode: SearchMode | None = None

    def _get_relevant_documents(
        self,
        query: str,
        *,
        run_manager: CallbackManagerForRetrieverRun,
        k: int | None = None,
        mode: SearchMode | None = None,
        **kwargs: Any,
    ) -> list[Document]:
        if kwargs:
            raise TypeError(f"unexpected retriever arguments: {', '.join(sorted(kwargs))}")
        passages = self.knowledge_base.search(
            query, k=self.k if k is None else k, mode=mode or self.mode
        )
        return [
            Document(
                id=p.id,
                page_content=p.text,
                metadata={
                    **p.metadata,
                    "id": p.id,
                    "title": p.title,
                    "score": p.score,
                    "rank": p.rank,
                },
            )
            for p in passages
        ]


class LangChainPassageSource:
    """A LangChain retriever as the router's passage source.

    Documents become passages: ``id`` and ``title`` from their metadata (the document's own id,
    else ``doc<rank>``, when the metadata has none), ``score`` from ``metadata["score"]`` when it
    is a finite number. The retriever's own ``k`` applies first, then the router's ``k`` cuts.

    Args:
        retriever: any LangChain ``BaseRetriever``.

    Raises:
        ConfigError: ``retriever`` is not a LangChain retriever.
    """

    def __init__(self, retriever: BaseRetriever) -> None:
        """Wrap ``retriever``."""
        if not isinstance(retriever, BaseRetriever):
            raise ConfigError(
                f"LangChainPassageSource needs a LangChain BaseRetriever, got "
                f"{type(retriever).__name__}"
            )
        self._retriever = retriever
        self.name = type(retriever).__name__

    def retrieve(self, queries: Sequence[str], k: int) -> list[list[PassageTrace]]:
        """Invoke the retriever for each query (its ``batch`` runs them concurrently)."""
        out = []
        for docs in self._retriever.batch(list(queries)):
            passages = []
            for i, doc in enumerate(docs[:k], start=1):
                meta = dict(doc.metadata or {})
                passages.append(
                    PassageTrace(
                        id=str(meta.get("id", doc.id or f"doc{i}")),
                        title=str(meta.get("title", "")),
                        text=doc.page_content,
                        score=finite_score(meta.get("score")),
                        rank=i,
                    )
                )
            out.append(passages)
        return out


class LangChainGenerator:
    """A LangChain chat model or LLM as the router's answer writer.

    It gets the messages the local model's chat prompt is built from: the config's system
    prompt (closed-book or RAG), then the question - after ``Context:`` and the numbered
    passages when the gate retrieved.

    Args:
        model: any LangChain chat model or LLM (anything with ``invoke(messages)``).
    """

    def __init__(self, model: Any) -> None:
        """Wrap ``model``."""
        if not callable(getattr(model, "invoke", None)):
            raise ConfigError(
                f"LangChainGenerator needs a LangChain chat model or LLM, got "
                f"{type(model).__name__}"
            )
        self.model = model

    @staticmethod
    def messages(request: GenerationRequest) -> list[BaseMessage]:
        """The chat messages for one request."""
        if request.context:
            user = f"Context:\n{request.context}\n\nQuestion: {request.query}"
        else:
            user = request.query
        return [SystemMessage(request.system_prompt), HumanMessage(user)]

    def answer(self, request: GenerationRequest) -> str:
        """The model's answer (a chat message's content, or an LLM's text), stripped."""
        result = self.model.invoke(self.messages(request))
        return str(getattr(result, "content", result)).strip()
