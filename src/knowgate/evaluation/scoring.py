"""Answer scoring: In-Accuracy (alias containment), exact match and token F1, echo-guarded.

Normalisation follows the SQuAD evaluation script (lower-case, drop punctuation and the articles
a/an/the, collapse whitespace), plus Unicode folding so "Beyoncé" matches "Beyonce".
In-Accuracy counts an answer correct when any gold alias occurs in it as a whole-word phrase
(Mallen et al. 2023 score PopQA this way; whole words keep the alias "pol" out of "political").

**Echo guard.** Small instruct models often restate the question ("Who is the father of John
Smith Jr.?" -> "John Smith Jr.'s father is ..."), and an alias that already appears in the
question then "occurs" in the answer without any knowledge behind it. An alias that occurs in the
question only counts when the answer *is* that alias (normalised exact match), or when the answer
contains it more often than the question does ("Mexico City is the capital of Mexico").
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(text: str) -> str:
    """SQuAD-style normalisation with Unicode folding (accents dropped, any punctuation removed)."""
    text = unicodedata.normalize("NFKD", text.lower())
    chars = []
    for ch in text:
        category = unicodedata.category(ch)
        if category == "Mn":  # combining accent
            continue
        chars.append(" " if category.startswith("P") or category.startswith("S") else ch)
    text = _ARTICLES.sub(" ", "".join(chars))
    return " ".join(text.split())


def _count_phrase(haystack: list[str], phrase: list[str]) -> int:
    """Occurrences of the token sequence ``phrase`` in ``haystack`` (whole tokens)."""
    n = len(phrase)
    if n == 0 or n > len(haystack):
        return 0
    return sum(1 for i in range(len(haystack) - n + 1) if haystack[i : i + n] == phrase)


def token_f1(prediction: str, reference: str) -> float:
    """SQuAD token F1 between two already normalised strings."""
    pred, ref = prediction.split(), reference.split()
    if not pred or not ref:
        return float(pred == ref)
    common = Counter(pred) & Counter(ref)
    overlap = sum(common.values())
    if overlap == 0:
        return 0.0
    precision, recall = overlap / len(pred), overlap / len(ref)
    return 2 * precision * recall / (precision + recall)


@dataclass(frozen=True)
class AnswerScore:
    """How one answer scores against its gold aliases.

    Attributes:
        in_accuracy: some countable alias occurs in the answer (whole words, normalised).
        exact_match: the normalised answer equals a normalised alias.
        f1: best token F1 over the countable aliases.
        matched_alias: the alias that made ``in_accuracy`` true, if any.
        echo_aliases: aliases that already occur in the question (guarded, see module doc).
        echo_rejected: the answer contained an alias, but only as an echo of the question; the
            answer is scored incorrect.
    """

    in_accuracy: bool
    exact_match: bool
    f1: float
    matched_alias: str | None = None
    echo_aliases: tuple[str, ...] = ()
    echo_rejected: bool = False


def score_answer(
    answer: str, golden_answers: Sequence[str], question: str | None = None
) -> AnswerScore:
    """Score ``answer`` against ``golden_answers``; pass ``question`` to enable the echo guard."""
    if isinstance(golden_answers, str):
        golden_answers = [golden_answers]
    norm_answer = normalize_answer(answer)
    answer_tokens = norm_answer.split()
    question_tokens = normalize_answer(question).split() if question else []
    in_acc = exact = echo_rejected = False
    best_f1 = 0.0
    matched: str | None = None
    echoes: list[str] = []
    for alias in golden_answers:
        norm_alias = normalize_answer(alias)
        if not norm_alias:
            continue
        alias_tokens = norm_alias.split()
        is_exact = norm_answer == norm_alias
        in_question = _count_phrase(question_tokens, alias_tokens)
        if in_question:
            echoes.append(alias)
        in_answer = _count_phrase(answer_tokens, alias_tokens)
        countable = not in_question or is_exact or in_answer > in_question
        exact = exact or is_exact
        if not countable:
            echo_rejected = echo_rejected or in_answer > 0
            continue
        best_f1 = max(best_f1, token_f1(norm_answer, norm_alias))
        if in_answer and not in_acc:
            in_acc, matched = True, alias
    return AnswerScore(
        in_accuracy=in_acc,
        exact_match=exact,
        f1=best_f1,
        matched_alias=matched,
        echo_aliases=tuple(echoes),
        echo_rejected=echo_rejected and not in_acc,
    )
