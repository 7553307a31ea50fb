"""An external answer writer: a bigger or hosted model that answers instead of the local one.

The local model always gates; with a generator it no longer writes the answers. The router
hands the generator one :class:`GenerationRequest` per query - the prompt parts the local model's
prompt configuration would use - and takes back the answer text. Adapters for other libraries'
models live in :mod:`knowgate.integrations` (LangChain chat models and LLMs:
``knowgate.integrations.langchain.LangChainGenerator``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from knowgate.routing.trace import PassageTrace


@dataclass(frozen=True)
class GenerationRequest:
    """What a generator needs to answer one query.

    Attributes:
        query: the user's question.
        passages: the retrieved passages (empty when the gate answered closed-book).
        system_prompt: the model config's system prompt for this case (closed-book or RAG).
        context: the passages as the local model's prompts write them (numbered, each cut to
            ``prompt.max_passage_chars``); empty when closed-book.
    """

    query: str
    passages: tuple[PassageTrace, ...]
    system_prompt: str
    context: str


@runtime_checkable
class AnswerGenerator(Protocol):
    """Writes answers for the router (see :class:`GenerationRequest`)."""

    def answer(self, request: GenerationRequest) -> str:
        """The answer text for one request."""
        ...
