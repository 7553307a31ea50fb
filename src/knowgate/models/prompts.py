"""Prompt formatting: chat template with a short-answer system prompt, or few-shot Q:/A:.

Short answers matter twice: they make greedy drafts cheap, and they avoid the echo trap (a model
that restates the question can "contain" a gold alias that was already in the question).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from knowgate.models.config import PromptConfig


class PassageLike(Protocol):
    """Anything with a title and a text (knowledge-base passages, LangChain documents adapted)."""

    @property
    def title(self) -> str:  # noqa: D102
        ...

    @property
    def text(self) -> str:  # noqa: D102
        ...


@dataclass(frozen=True)
class PromptFormatter:
    """Turns questions (and passages) into model prompts."""

    config: PromptConfig
    tokenizer: Any

    @property
    def style(self) -> Literal["chat", "few_shot"]:
        """The style in effect (``auto`` resolved against the tokenizer)."""
        if self.config.style == "auto":
            has_template = bool(getattr(self.tokenizer, "chat_template", None))
            return "chat" if has_template else "few_shot"
        return self.config.style

    def context_block(self, passages: Sequence[PassageLike]) -> str:
        """Passages as numbered lines, each cut to ``max_passage_chars``."""
        lines = []
        limit = self.config.max_passage_chars
        for i, p in enumerate(passages, start=1):
            text = " ".join(p.text.split())
            if len(text) > limit:
                text = text[:limit].rsplit(" ", 1)[0] + " ..."
            lines.append(self.config.passage_template.format(index=i, title=p.title, text=text))
        return "\n".join(lines)

    def format(self, question: str, passages: Sequence[PassageLike] | None = None) -> str:
        """The prompt for ``question``; with ``passages`` it is the retrieval-augmented prompt."""
        question = " ".join(question.split())
        context = self.context_block(passages) if passages else None
        if self.style == "chat":
            return self._chat(question, context)
        return self._few_shot(question, context)

    def self_report(self, question: str) -> str:
        """The self-routing prompt: asks whether the model can answer ``question`` from memory.

        Chat models get it as the user message; base models as text ending in ``Answer:``, so
        the next token is the yes/no whose probability is read.
        """
        question = " ".join(question.split())
        text = self.config.self_report_template.format(question=question)
        if self.style == "chat":
            messages = [{"role": "user", "content": text}]
            return str(
                self.tokenizer.apply_chat_template(
                    messages, tokenize=False, add_generation_prompt=True
                )
            )
        return f"{text}\nAnswer:"

    def messages(
        self, question: str, passages: Sequence[PassageLike] | None = None
    ) -> list[dict[str, str]]:
        """The chat messages (system, user) of a chat prompt, before any chat template.

        A served model gets these as they are: its server applies its own chat template.
        """
        question = " ".join(question.split())
        context = self.context_block(passages) if passages else None
        return self._chat_messages(question, context)

    def _chat_messages(self, question: str, context: str | None) -> list[dict[str, str]]:
        system = self.config.rag_system_prompt if context else self.config.system_prompt
        user = f"Context:\n{context}\n\nQuestion: {question}" if context else question
        return [{"role": "system", "content": system}, {"role": "user", "content": user}]

    def _chat(self, question: str, context: str | None) -> str:
        messages = self._chat_messages(question, context)
        prompt = self.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True
        )
        return str(prompt)

    def _few_shot(self, question: str, context: str | None) -> str:
        shots = "".join(
            f"Q: {ex.question}\nA: {ex.answer}\n\n" for ex in self.config.few_shot_examples
        )
        if context:
            return f"{shots}Context:\n{context}\n\nQ: {question}\nA:"
        return f"{shots}Q: {question}\nA:"
