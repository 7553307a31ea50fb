"""Answer scoring: In-Accuracy (alias containment), exact match and token F1, echo-guarded.

Every label knowgate publishes (the closed-book *knows*, every policy's accuracy) comes from
``score_answer``. Answers and aliases are compared in the normal form of ``knowgate.text``
(SQuAD's normalisation with accents folded, acronyms joined and the letter A kept apart from the
article). On top of containment, three rules keep wrong answers from counting as right:

1. **Whole words.** An alias counts where its words occur in the answer as a contiguous run of
   whole words (Mallen et al. 2023 score PopQA by containment; whole words keep the alias "pol"
   out of "political").
2. **Echo guard.** Small instruct models restate the question, and an alias inside the restated
   part is not knowledge ("What is the capital of Tartu County?" -> "The capital of Tartu County
   is Tartu County." does not know "Tartu"). An occurrence is an *echo* when it lies inside a
   run of answer words that also occurs in the question and holds, besides the occurrence, at
   least one word that is not a function word. So "Mexico City is the capital of Mexico." for
   "What is the capital of Mexico?" is right through its first "Mexico" (the question never
   says "Mexico City"), while its last "Mexico" (inside the copied "is the capital of Mexico") is
   an echo. An answer that is exactly the alias is never an echo, and neither is an alias that
   only shares function words with the question around it: "The answer is Mexico." for "What
   is Mexico City the capital of?" is right although "is Mexico" occurs in the question, while
   "Mexico City" is an echo there. Question words (what, who, which, ...) count as content
   here: an answer repeats "what is number 0" only when it restates the question.
3. **Short or common aliases.** An alias that is a single word of at most two characters (not a
   number: "IN", "UK", "W", "U2") or made only of function words ("AND" for Andorra, "The Who")
   collides with ordinary words ("Kyoto is in Japan"). It counts only where the answer sets it
   apart: as the whole answer, as a whole clause segment (the text between two clause marks
   ``, ; . ! ? :``, a spaced dash or a line break, or the start or end of the answer: "IN,
   India", "Answer: IN", "Born in London, UK."), as the whole rest of a clause after "the answer
   is" ("The answer is No."), or as a whole quoted or bracketed span ('"IN"', "(UK)"). A short
   word alone between clause marks or after an answer marker is a name or a code, not prose.
   Numbers are exempt: "11" in "There are 11 players" is not a common word.

Exact match is SQuAD's (the normalised answer equals a normalised alias) and token F1 is SQuAD's
bag-of-words F1, best over the aliases; an alias that the answer mentions only where rule 2 or 3
rejects it scores F1 0, so an echo cannot earn the partial credit the label denies.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Sequence
from dataclasses import dataclass

from knowgate.errors import InputError
from knowgate.text import (
    FUNCTION_WORDS,
    TokenizedText,
    normalize_answer,
    token_f1,
    tokenize_answer,
)

__all__ = ["AnswerScore", "normalize_answer", "score_answer", "token_f1"]

# Function words that do not make a copied run an echo; question words do ("What is X?" -> "What
# is X?" restates the question, "The answer is X." does not).
_QUESTION_WORDS = frozenset(
    {"what", "who", "whom", "whose", "which", "where", "when", "why", "how"}
)
_ECHO_NEUTRAL = FUNCTION_WORDS - _QUESTION_WORDS
# Clause marks: a short alias alone between two of them is set apart from the prose.
_CLAUSE_MARK = re.compile(r"[,;.!?:\n\u2013\u2014]| - ")
# "The answer is X": X up to the next clause mark is set apart like "Answer: X".
_ANSWER_IS = re.compile(r"\banswers?\s+(?:is|was|are|were)\s+", re.IGNORECASE)
# Quoted or bracketed spans. A single quote opens only after a space or a bracket (not inside
# "John's") and closes only before a space, punctuation or the end.
_DELIMITED = re.compile(
    r"\"([^\"\n]+)\"|“([^”\n]+)”|«([^»\n]+)»|„([^“\n]+)“|\(([^()\n]+)\)|\[([^\[\]\n]+)\]"
    r"|(?:(?<=^)|(?<=[\s(\[]))['‘]([^'’\n]+)['’](?=$|[\s.,;:!?)\]])"
)


@dataclass(frozen=True)
class AnswerScore:
    """How one answer scores against its gold aliases.

    Attributes:
        in_accuracy: some alias occurs in the answer where it counts (see the module doc).
        exact_match: the normalised answer equals a normalised alias.
        f1: best token F1 over the aliases (0 for an alias the answer only echoes).
        matched_alias: the first alias (in gold order) that made ``in_accuracy`` true, if any.
        echo_aliases: aliases that occur in the question, whether or not the answer has them.
        echo_rejected: the answer is incorrect and mentions an alias, but only as an echo of
            the question.
        short_alias_rejected: the answer is incorrect and mentions a short or common alias, but
            only as a bare word in running text.
    """

    in_accuracy: bool
    exact_match: bool
    f1: float
    matched_alias: str | None = None
    echo_aliases: tuple[str, ...] = ()
    echo_rejected: bool = False
    short_alias_rejected: bool = False


def _occurs(haystack: Sequence[str], phrase: Sequence[str]) -> bool:
    """Whether the word sequence ``phrase`` occurs contiguously in ``haystack``."""
    n = len(phrase)
    return any(haystack[i : i + n] == phrase for i in range(len(haystack) - n + 1))


def _positions(haystack: Sequence[str], phrase: Sequence[str]) -> list[int]:
    """Start indices of every occurrence of ``phrase`` in ``haystack``."""
    n = len(phrase)
    return [i for i in range(len(haystack) - n + 1) if haystack[i : i + n] == phrase]


def _is_echo(words: Sequence[str], start: int, length: int, question: Sequence[str]) -> bool:
    """Whether ``words[start:start+length]`` lies in a copy of the question with a content word.

    A copied run that holds a content word left of the occurrence also holds the nearest such
    word and everything up to the occurrence, and every part of a copied run is copied too; so
    it is enough to try the run from the nearest content word on the left, and the one to the
    nearest content word on the right.
    """
    end = start + length
    left = start - 1
    while left >= 0 and words[left] in _ECHO_NEUTRAL:
        left -= 1
    if left >= 0 and _occurs(question, words[left:end]):
        return True
    right = end
    while right < len(words) and words[right] in _ECHO_NEUTRAL:
        right += 1
    return right < len(words) and _occurs(question, words[start : right + 1])


def _is_short_or_common(alias_words: Sequence[str]) -> bool:
    """Aliases that collide with ordinary words: short letter codes and function words."""
    if all(word in FUNCTION_WORDS for word in alias_words):
        return True
    if len(alias_words) != 1:
        return False
    word = alias_words[0]
    return len(word) <= 2 and not word.isdigit()


def _delimited_spans(answer: TokenizedText) -> set[tuple[int, int]]:
    """Token ranges the answer sets apart as an answer (rule 3 of the module doc)."""
    tokens, folded = answer.tokens, answer.folded
    starts = [token.start for token in tokens]
    ends = [token.end for token in tokens]
    spans = {(0, len(tokens))}

    def add(begin: int, stop: int) -> None:
        first, last = bisect.bisect_left(starts, begin), bisect.bisect_right(ends, stop)
        if first < last:
            spans.add((first, last))

    marks = [(mark.start(), mark.end()) for mark in _CLAUSE_MARK.finditer(folded)]
    segment_start = 0
    for mark_start, mark_end in marks:
        add(segment_start, mark_start)
        segment_start = mark_end
    add(segment_start, len(folded))
    for match in _ANSWER_IS.finditer(folded):
        stop = next((start for start, _ in marks if start >= match.end()), len(folded))
        add(match.end(), stop)
    for match in _DELIMITED.finditer(folded):
        group = next(i for i in range(1, len(match.groups()) + 1) if match.group(i) is not None)
        add(match.start(group), match.end(group))
    return spans


def _check_inputs(
    answer: object, golden_answers: object, question: object
) -> tuple[str, tuple[str, ...], str | None]:
    if not isinstance(answer, str):
        raise InputError(f"answer must be a str, got {type(answer).__name__}: {answer!r:.80}")
    if question is not None and not isinstance(question, str):
        raise InputError(
            f"question must be a str or None, got {type(question).__name__}: {question!r:.80}"
        )
    if isinstance(golden_answers, str):
        golden_answers = [golden_answers]
    if not isinstance(golden_answers, Sequence) or not golden_answers:
        raise InputError(
            f"golden_answers must be a non-empty list of alias strings, got {golden_answers!r:.80}"
        )
    for i, alias in enumerate(golden_answers):
        if not isinstance(alias, str):
            raise InputError(
                f"golden_answers[{i}] must be a str, got {type(alias).__name__}: {alias!r:.80}"
            )
    return answer, tuple(golden_answers), question


def score_answer(
    answer: str, golden_answers: Sequence[str] | str, question: str | None = None
) -> AnswerScore:
    """Score ``answer`` against ``golden_answers``; pass ``question`` to enable the echo guard.

    Args:
        answer: the model's answer, as generated.
        golden_answers: the accepted aliases (a single string is one alias). Aliases that
            normalise to nothing (a flag emoji) are skipped.
        question: the question asked; without it no occurrence is an echo.

    Returns:
        The labels and why they are what they are.

    Raises:
        InputError: an argument has the wrong type, or ``golden_answers`` is empty.
    """
    answer, aliases, question = _check_inputs(answer, golden_answers, question)
    tokenized = tokenize_answer(answer)
    words = tokenized.words
    question_words = normalize_answer(question).split() if question else []
    delimited: set[tuple[int, int]] | None = None  # computed on the first short alias
    in_acc = exact = saw_echo = saw_bare_short = False
    best_f1 = 0.0
    matched: str | None = None
    echoes: list[str] = []
    for alias in aliases:
        alias_words = normalize_answer(alias).split()
        if not alias_words:
            continue
        if _occurs(question_words, alias_words):
            echoes.append(alias)
        short = _is_short_or_common(alias_words)
        occurrences = _positions(words, alias_words)
        counted = False
        for start in occurrences:
            if _is_echo(words, start, len(alias_words), question_words):
                saw_echo = True
                continue
            if short:
                if delimited is None:
                    delimited = _delimited_spans(tokenized)
                if (start, start + len(alias_words)) not in delimited:
                    saw_bare_short = True
                    continue
            counted = True
        exact = exact or words == alias_words
        if occurrences and not counted:
            continue  # mentioned only where it does not count: no partial credit either
        best_f1 = max(best_f1, token_f1(" ".join(words), " ".join(alias_words)))
        if counted and not in_acc:
            in_acc, matched = True, alias
    return AnswerScore(
        in_accuracy=in_acc,
        exact_match=exact,
        f1=best_f1,
        matched_alias=matched,
        echo_aliases=tuple(echoes),
        echo_rejected=saw_echo and not in_acc,
        short_alias_rejected=saw_bare_short and not in_acc,
    )
