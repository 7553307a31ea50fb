"""Answer-text normalisation and tokenisation: one normal form for scoring and for signals.

The normal form is the SQuAD evaluation script's (case folded, punctuation removed, articles
dropped, whitespace collapsed) with repairs where SQuAD merges different answers or splits equal
ones:

- **Accents and case** are folded (NFKD, combining marks dropped, ``str.casefold``), so
  "Beyoncé" equals "Beyonce" and "Straße" equals "STRASSE".
- **Dotted acronyms and initials** are joined before punctuation goes: "U.S.A.", "U. S. A." and
  "USA" all become ``usa``; "J.R.R." and "J. R. R." become ``jrr``. SQuAD splits them into
  single letters and then drops the final "a" of "U.S.A." as an article ("u s").
- **The article "a" versus the letter A.** "an" and "the" are always dropped, "a" only where it
  reads as an article. It is the letter when it is glued to the previous word ("Roc-A-Fella",
  "Sana'a"), when punctuation (other than an opening bracket or quote) or the end of the text
  follows it ("Vitamin A", "A. Milne", "adenine (A)", "Texas A&M"), or when it is a capital A
  that opens neither the text, a line, a sentence, a quote nor a bracket, in text that is not
  all capitals ("Plan A is", "a grade of A for"). So "Vitamin A" stays ``vitamin a`` and does
  not match "vitamin C", while "A Tale of Two Cities" still equals "Tale of Two Cities".

Normalise raw text once: a kept letter "a" inside a normal form reads as an article if the
normal form is normalised again. This module is on the ground floor: it imports nothing from
knowgate but ``errors``.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from dataclasses import dataclass

from knowgate.errors import InputError

# Function words: pronouns, determiners, prepositions, conjunctions, auxiliaries. An alias made of
# them ("IN", "AND" for Andorra, "The Who") collides with ordinary English. Hand-listed because
# scikit-learn's ENGLISH_STOP_WORDS also holds content words ("fire", "bill", "system") that are
# real answers; it documents those known issues itself.
_FUNCTION_WORDS_BY_KIND = """
    a an the this that these those some any no not all each every both either neither
    i me my mine myself we us our ours you your yours he him his she her hers it its they them
    their theirs who whom whose which what where when why how there here
    in on at by for of to from with without within into onto upon about above below over under
    up down out off after before between through during against among near per via than
    and or but nor so if then yet as
    is am are was were be been being do does did has have had will would shall should can could
    may might must
    yes also too very just only
"""
FUNCTION_WORDS: frozenset[str] = frozenset(_FUNCTION_WORDS_BY_KIND.split())

_LETTER = r"[^\W\d_]"
# "U.S.A.", "U.S.A", "U.S", "e.g.": single letters joined by periods (no spaces).
_COMPACT_ACRONYM = re.compile(rf"(?<!\w)({_LETTER}(?:\.{_LETTER}(?!\w))+)(\.?)")
# "U. S. A.", "J. R. R.": spaced initials (two or more).
_SPACED_INITIALS = re.compile(rf"(?<!\w)({_LETTER}\.(?:\s+{_LETTER}\.(?!\w))+)")
# A capital "A" right after one of these opens a sentence, quote or bracket: it is an article.
_SENTENCE_OPENERS = frozenset('.!?:;"“”«»([{')
# Opening quotes and brackets: an "a" right after one is not glued to a word. Single quotes are
# left out on purpose, they also write apostrophes and the ayin of "Sana‘a".
_OPENING = frozenset('"“«„([{')


@dataclass(frozen=True)
class Token:
    """One normalised word and where it stands in the folded text.

    Attributes:
        text: the normal form (case folded, accents removed).
        start: offset of its first character in ``TokenizedText.folded``.
        end: offset one past its last character.
    """

    text: str
    start: int
    end: int


@dataclass(frozen=True)
class TokenizedText:
    """Folded text and its normalised tokens (articles already dropped).

    Attributes:
        folded: the input with accents removed and acronyms joined, punctuation and case kept, so
            callers can still see delimiters (commas, quotes, brackets) around tokens.
        tokens: the normalised words in order.
    """

    folded: str
    tokens: tuple[Token, ...]

    @property
    def words(self) -> list[str]:
        """The normalised words, without offsets."""
        return [token.text for token in self.tokens]


def _require_str(text: object, name: str) -> str:
    if not isinstance(text, str):
        raise InputError(f"{name} must be a str, got {type(text).__name__}: {text!r:.80}")
    return text


def _join_compact(match: re.Match[str]) -> str:
    return match.group(1).replace(".", "") + match.group(2)


def _join_spaced(match: re.Match[str]) -> str:
    return "".join(match.group(1).replace(".", "").split()) + "."


def fold_text(text: str) -> str:
    """Drop accents and join dotted acronyms; keep case and punctuation.

    Args:
        text: any answer, alias or question.

    Returns:
        The folded text, which ``tokenize_answer`` splits.

    Raises:
        InputError: ``text`` is not a string.
    """
    text = unicodedata.normalize("NFKD", _require_str(text, "text"))
    # Combining marks (accents) and invisible format characters (soft hyphen, zero-width joiner).
    text = "".join(ch for ch in text if unicodedata.category(ch) not in ("Mn", "Me", "Cf"))
    text = _COMPACT_ACRONYM.sub(_join_compact, text)
    return _SPACED_INITIALS.sub(_join_spaced, text)


def _is_separator(ch: str) -> bool:
    """Punctuation, symbols, separators and control characters all split words."""
    return unicodedata.category(ch)[0] in "PSZC"


def _is_letter_a(folded: str, start: int, end: int, *, mixed_case: bool) -> bool:
    """Whether the one-character word ``a``/``A`` at ``start`` is the letter, not the article."""
    before = folded[start - 1] if start > 0 else ""
    if before and not before.isspace() and before not in _OPENING:
        return True  # glued to the previous word: "Roc-A-Fella", "Sana'a"
    rest = folded[end:].lstrip()
    if not rest:
        return True  # an article is never last: "Vitamin A"
    following = unicodedata.category(rest[0])
    if _is_separator(rest[0]) and following not in ("Ps", "Pi"):
        return True  # "A.", "A,", "(A)", "A&M", "A's"
    if folded[start] != "A" or not mixed_case:
        return False  # in all-caps text a capital says nothing
    gap_start = len(folded[:start].rstrip())
    if gap_start == 0 or "\n" in folded[gap_start:start]:
        return False  # a capital A that opens the text or a line
    return folded[gap_start - 1] not in _SENTENCE_OPENERS


def tokenize_answer(text: str) -> TokenizedText:
    """Split text into normalised words with their positions (see the module doc for the rules).

    Args:
        text: any answer, alias or question.

    Returns:
        The folded text and its tokens; articles are left out.

    Raises:
        InputError: ``text`` is not a string.
    """
    folded = fold_text(text)
    spaced = "".join(" " if _is_separator(ch) else ch for ch in folded)
    mixed_case = any(ch.islower() for ch in folded)
    tokens: list[Token] = []
    for match in re.finditer(r"\S+", spaced):
        word = match.group().casefold()
        if word in ("an", "the"):
            continue
        if word == "a" and not _is_letter_a(
            folded, match.start(), match.end(), mixed_case=mixed_case
        ):
            continue
        tokens.append(Token(word, match.start(), match.end()))
    return TokenizedText(folded, tuple(tokens))


def normalize_answer(text: str) -> str:
    """The normal form used to compare answers: normalised words joined by single spaces.

    Args:
        text: any answer, alias or question.

    Returns:
        For example ``"U.S.A."`` -> ``"usa"``, ``"The Beatles!"`` -> ``"beatles"``,
        ``"Vitamin A"`` -> ``"vitamin a"``.

    Raises:
        InputError: ``text`` is not a string.
    """
    return " ".join(tokenize_answer(text).words)


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


def normalize_question(text: str) -> str:
    """Lower-cased, whitespace-collapsed question: the key that finds the same question twice.

    ``popqa_random`` and ``popqa_h2`` share 64 questions under different ids; cross-validation
    groups by this key so a question never sits on both sides of a split, and a demonstration
    pool never holds a question that is evaluated.
    """
    return " ".join(text.lower().split())
