"""Streaming an answer's text while it is decoded.

The decode loop hands out token ids (:data:`~knowgate.models.language_model.TokenCallback`);
a client wants text. :class:`AnswerStream` turns one answer's tokens into text pieces whose
concatenation is always a prefix of the answer's final ``Draft.text``, so a streaming client
never has to take anything back: the same stop rules apply (a stop token ends the answer, the
text is cut at the first newline when the config stops at newlines, and stripped), and text
that may still change is held back - trailing whitespace (stripped if the answer ends there) and
an incomplete multi-byte character (decoded as U+FFFD until its last byte arrives).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from knowgate.models.language_model import LanguageModel

REPLACEMENT = "\ufffd"


class AnswerStream:
    """Text deltas of one answer, from its generated token ids.

    Args:
        tokenizer: the model's tokenizer (``decode(ids, skip_special_tokens=True)``).
        stop_ids: token ids that end the answer.
        stop_at_newline: cut the text at its first newline, as the draft does.
        sink: receives each new piece of text.
    """

    def __init__(
        self,
        tokenizer: Any,
        stop_ids: set[int],
        stop_at_newline: bool,
        sink: Callable[[str], None],
    ) -> None:
        """Start an empty answer."""
        self._tokenizer = tokenizer
        self._stop_ids = stop_ids
        self._stop_at_newline = stop_at_newline
        self._sink = sink
        self._ids: list[int] = []
        self.sent = ""
        self.finished = False

    @classmethod
    def for_model(cls, model: LanguageModel, sink: Callable[[str], None]) -> AnswerStream:
        """A stream with the model's tokenizer and its configured stop rules."""
        stop_at_newline = model.config.generation.stop_at_newline
        stop_ids = {int(t) for t in model.stop_token_ids(stop_at_newline).tolist()}
        return cls(model.tokenizer, stop_ids, stop_at_newline, sink)

    def push(self, token_id: int) -> None:
        """Take the next generated token; send the text it makes final, if any."""
        if self.finished:
            return
        if token_id in self._stop_ids:
            self.finished = True
            return
        self._ids.append(int(token_id))
        text = self._tokenizer.decode(self._ids, skip_special_tokens=True)
        if self._stop_at_newline and "\n" in text:
            text = text.split("\n", 1)[0]
            self.finished = True
        visible = text.rstrip(REPLACEMENT).strip()
        if len(visible) > len(self.sent) and visible.startswith(self.sent):
            delta = visible[len(self.sent) :]
            self.sent = visible
            self._sink(delta)
