"""The answer normal form (knowgate.text): expected forms are worked out by hand from the rules."""

import ast
from pathlib import Path

import pytest

import knowgate.text
from knowgate.errors import InputError
from knowgate.text import FUNCTION_WORDS, fold_text, normalize_answer, tokenize_answer


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # SQuAD basics: case, punctuation, articles, whitespace.
        ("The Beatles!", "beatles"),
        ("  an   Apple, a day ", "apple day"),
        ("It is a city.", "it is city"),
        ("", ""),
        ("?!", ""),
        # Accents and case folding.
        ("Beyoncé", "beyonce"),
        ("Straße", "strasse"),
        ("N'Djamena", "n djamena"),
        ("poli\u00adtician", "politician"),  # a soft hyphen is invisible, not a word break
        ("🇮🇳", ""),  # a flag is a symbol
        ("R&B", "r b"),
        # Acronyms and initials are joined, never split into letters.
        ("U.S.A.", "usa"),
        ("U.S.A", "usa"),
        ("U. S. A.", "usa"),
        ("U.S.", "us"),
        ("the U.S", "us"),
        ("L.A.", "la"),
        ("Washington, D.C.", "washington dc"),
        ("J.R.R. Tolkien", "jrr tolkien"),
        ("J. R. R. Tolkien", "jrr tolkien"),
        ("A. A. Milne", "aa milne"),
        ("George H. W. Bush", "george hw bush"),
        ("11 p.m. to 3 a.m.", "11 pm to 3 am"),
        ("C.Dickens", "c dickens"),  # one initial glued to a name is not an acronym
        # The letter A is kept; the article a is dropped.
        ("Vitamin A", "vitamin a"),
        ("vitamin a.", "vitamin a"),
        ("Vitamin A deficiency", "vitamin a deficiency"),
        ("Plan A is good", "plan a is good"),
        ("Paul A. Edwards", "paul a edwards"),
        ("adenine (A)", "adenine a"),
        ("Texas A&M", "texas a m"),
        ("Roc-A-Fella Records", "roc a fella records"),
        ("Sana'a is the capital", "sana a is capital"),
        ("US of A", "us of a"),
        ("A Tale of Two Cities", "tale of two cities"),
        ('"A Tale of Two Cities"', "tale of two cities"),
        ("(A Tale of Two Cities)", "tale of two cities"),
        ("Answer: A Tale of Two Cities", "answer tale of two cities"),
        ("Fiction. A Tale of Two Cities", "fiction tale of two cities"),
        ("Title\nA Tale of Two Cities", "title tale of two cities"),
        ("He wrote A Tale of Two Cities", "he wrote a tale of two cities"),
        ("A TALE OF TWO CITIES", "tale of two cities"),  # all capitals: a capital says nothing
        ("VITAMIN A", "vitamin a"),
    ],
)
def test_normal_form(text: str, expected: str) -> None:
    assert normalize_answer(text) == expected


@pytest.mark.parametrize(
    ("left", "right"),
    [
        ("U.S.A.", "USA"),
        ("U. S. A.", "usa"),
        ("L.A.", "LA"),
        ("D.C.", "DC"),
        ("J.S. Bach", "J. S. Bach"),
        ("George H. W. Bush", "George HW Bush"),
        ("A Tale of Two Cities", "Tale of Two Cities"),
        ("A Tale of Two Cities", "the tale of two cities"),
        ("the Beatles", "Beatles"),
        ("Beyoncé", "BEYONCE"),
        ("Vitamin A", "vitamin a"),
        ("Vitamin A", "VITAMIN A"),
    ],
)
def test_equal_answers_have_one_normal_form(left: str, right: str) -> None:
    assert normalize_answer(left) == normalize_answer(right)


@pytest.mark.parametrize(
    ("left", "right"),
    [
        ("Vitamin A", "vitamin C"),
        ("Vitamin A", "vitamin"),
        ("L.A.", "L"),
        ("U.S.A.", "U.S."),
        ("Plan A", "Plan B"),
        ("Texas A&M", "Texas M"),
    ],
)
def test_different_answers_stay_apart(left: str, right: str) -> None:
    assert normalize_answer(left) != normalize_answer(right)


@pytest.mark.parametrize(
    "text",
    [
        "Answer: IN (India).",
        "The U.S.A. and the U.K., i.e. two countries",
        '  Beyoncé\'s   "A Tale"\n(Vitamin A) ',
        "Sana'a - Roc-A-Fella, A&M",
    ],
)
def test_tokens_point_at_their_words(text: str) -> None:
    tokenized = tokenize_answer(text)
    assert tokenized.folded == fold_text(text)
    assert tokenized.words == normalize_answer(text).split()
    for token in tokenized.tokens:
        assert tokenized.folded[token.start : token.end].casefold() == token.text
    starts = [token.start for token in tokenized.tokens]
    assert starts == sorted(starts)


def test_fold_keeps_case_and_punctuation_but_joins_acronyms() -> None:
    assert fold_text("Beyoncé lives in the U.S.A., not L. A.") == (
        "Beyonce lives in the USA., not LA."
    )


def test_function_words_are_lower_case_words() -> None:
    assert {"in", "and", "who", "the", "us", "it", "he"} <= FUNCTION_WORDS
    assert all(
        word == normalize_answer(word) or word in ("a", "an", "the") for word in FUNCTION_WORDS
    )
    assert not {"fire", "bill", "system", "india", "politician"} & FUNCTION_WORDS


@pytest.mark.parametrize("bad", [None, 3, b"Paris", ["Paris"]])
def test_non_text_is_refused_with_its_type(bad: object) -> None:
    with pytest.raises(InputError, match=f"must be a str, got {type(bad).__name__}"):
        normalize_answer(bad)  # type: ignore[arg-type]


def test_text_module_is_on_the_ground_floor() -> None:
    """knowgate.signals imports it, so it may import nothing of knowgate but errors."""
    tree = ast.parse(Path(knowgate.text.__file__).read_text(encoding="utf-8"))
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            imported.add(node.module or "")
    assert {name for name in imported if name.split(".")[0] == "knowgate"} == {"knowgate.errors"}
