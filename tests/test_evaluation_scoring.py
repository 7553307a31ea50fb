"""The closed-book label. Every verdict below is worked out by hand from the rules in the module doc
of knowgate.evaluation.scoring (and what a careful reader would call right), not read off the code.
"""

import json

import pytest

import knowgate.text
from knowgate.errors import InputError
from knowgate.evaluation.scoring import normalize_answer, score_answer, token_f1
from knowgate.text import FUNCTION_WORDS

TARTU_Q = "What is the capital of Tartu County?"
MEXICO_Q = "What is the capital of Mexico?"
MEXICO_CITY_Q = "What is Mexico City the capital of?"
SMITH_Q = "Who is the father of John Smith Jr.?"
RANKIN_Q = "What is George Rankin's occupation?"
KYOTO_Q = "In which country is Kyoto?"


def test_scoring_re_exports_the_ground_floor_normal_form():
    assert normalize_answer is knowgate.text.normalize_answer
    assert normalize_answer("U.S.A.") == "usa"


# --- containment -------------------------------------------------------------------------------


def test_in_accuracy_is_alias_containment():
    s = score_answer("The capital of Romania is Bucharest.", ["Bucharest", "Little Paris"])
    assert s.in_accuracy and s.matched_alias == "Bucharest"
    assert not s.exact_match
    assert 0 < s.f1 < 1


def test_any_alias_counts_and_articles_punctuation_ignored():
    s = score_answer("the Ralph Reichenthal.", ["Ralph Rainger", "Ralph Reichenthal"])
    assert s.in_accuracy and s.exact_match and s.f1 == 1.0
    assert s.matched_alias == "Ralph Reichenthal"


def test_containment_is_whole_words():
    assert not score_answer("political scientist", ["pol", "politician"]).in_accuracy
    assert score_answer("He was a politician", ["pol", "politician"]).in_accuracy


def test_wrong_answer():
    s = score_answer("Djibouti", ["N'Djamena", "NDjamena"])
    assert not s.in_accuracy and not s.exact_match and s.f1 == 0.0
    assert s.matched_alias is None and not s.echo_rejected and not s.short_alias_rejected


def test_single_string_gold_is_accepted():
    assert score_answer("Paris", "Paris").in_accuracy


# --- echo guard --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("question", "answer", "aliases", "correct", "matched"),
    [
        # Restates the subject "Tartu County" twice and never says "Tartu" on its own.
        (TARTU_Q, "The capital of Tartu County is Tartu County.", ["Tartu"], False, None),
        # "... is Tartu.": the last "Tartu" is not part of any phrase of the question.
        (TARTU_Q, "The capital of Tartu County is Tartu.", ["Tartu"], True, "Tartu"),
        # The first "Mexico" starts "Mexico City", which the question never says.
        (MEXICO_Q, "Mexico City is the capital of Mexico.", ["Mexico"], True, "Mexico"),
        (MEXICO_Q, "Mexico City is the capital of Mexico.", ["Mexico City"], True, "Mexico City"),
        (MEXICO_Q, "The capital of Mexico is Mexico City.", ["Mexico City"], True, "Mexico City"),
        # Only the restated "capital of Mexico" holds the alias.
        (MEXICO_Q, "The capital of Mexico.", ["Mexico"], False, None),
        (MEXICO_CITY_Q, "Mexico City", ["Mexico"], False, None),
        (MEXICO_CITY_Q, "Mexico", ["Mexico"], True, "Mexico"),
        (MEXICO_CITY_Q, "Mexico City is the capital of Mexico.", ["Mexico"], True, "Mexico"),
        (MEXICO_CITY_Q, "It is the capital of Mexico.", ["Mexico"], True, "Mexico"),
        # "is Mexico" also occurs in the question, but shares only the function word "is".
        (MEXICO_CITY_Q, "The answer is Mexico.", ["Mexico"], True, "Mexico"),
        (SMITH_Q, "John Smith Jr.'s father is a famous baker.", ["John Smith"], False, None),
        # The bare alias as the whole answer is never an echo.
        (SMITH_Q, "John Smith", ["John Smith"], True, "John Smith"),
        # "George" only inside "George Rankin"; the answer is right through "politician".
        (RANKIN_Q, "George Rankin was a politician.", ["George", "politician"], True, "politician"),
        (RANKIN_Q, "George Rankin was a farmer.", ["George", "politician"], False, None),
        (
            "Who is the author of Hamlet?",
            "The author of Hamlet is William Shakespeare.",
            ["William Shakespeare", "Shakespeare"],
            True,
            "William Shakespeare",
        ),
        # A city-state: repeating the subject as the answer is right.
        (
            "What is the capital of Singapore?",
            "The capital of Singapore is Singapore.",
            ["Singapore"],
            True,
            "Singapore",
        ),
        (
            "What genre is Rock Band?",
            "Rock Band is a rhythm game.",
            ["rock music", "rock"],
            False,
            None,
        ),
        ("What genre is Rock Band?", "It is a rock game.", ["rock music", "rock"], True, "rock"),
        ("What is number 0?", "What is number 0?", ["number 0"], False, None),
        ("In what country is Paris?", "Paris is in France.", ["France"], True, "France"),
        # Without the question there is nothing to echo.
        (None, "The capital of Tartu County is Tartu County.", ["Tartu"], True, "Tartu"),
    ],
)
def test_echo_guard(question, answer, aliases, correct, matched):
    s = score_answer(answer, aliases, question)
    assert s.in_accuracy is correct
    assert s.matched_alias == matched


def test_echo_rejection_is_reported_and_earns_no_partial_credit():
    s = score_answer("John Smith Jr.'s father is a famous baker.", ["John Smith"], SMITH_Q)
    assert s.echo_rejected and not s.short_alias_rejected
    assert s.echo_aliases == ("John Smith",)
    assert s.f1 == 0.0
    unguarded = score_answer("John Smith Jr.'s father is a famous baker.", ["John Smith"])
    assert unguarded.in_accuracy and not unguarded.echo_rejected


def test_echo_aliases_lists_aliases_in_the_question_even_when_answered():
    s = score_answer("Mexico", ["Mexico", "Estados Unidos Mexicanos"], MEXICO_CITY_Q)
    assert s.echo_aliases == ("Mexico",)
    assert s.in_accuracy and not s.echo_rejected


# --- short and common aliases ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("answer", "correct"),
    [
        ("IN", True),
        ("in", True),
        ("IN.", True),
        ("Answer: IN", True),
        ("The code is (IN).", True),
        ('It is "IN".', True),
        ("It is 'IN'.", True),
        ("IN, i.e. India", True),
        ("IN - India", True),
        ("The answer is IN.", True),
        ("The answer is in the Kansai region.", False),
        ("Kyoto is in Japan", False),
        ("In Japan.", False),
        ("Kyoto is in Japan, in Asia.", False),
        ("Kyoto is in Japan; I mean in Honshu", False),
        ("It's in the Kansai region.", False),
    ],
)
def test_short_alias_counts_only_where_the_answer_sets_it_apart(answer, correct):
    s = score_answer(answer, ["IN"], KYOTO_Q)
    assert s.in_accuracy is correct
    assert s.short_alias_rejected is (not correct)


@pytest.mark.parametrize(
    ("question", "answer", "aliases", "correct"),
    [
        ("Where was Adele born?", "Born in London, UK.", ["UK"], True),
        ("Where is the band from?", "The UK-based band Muse.", ["UK"], False),
        ("Who was the 43rd US president?", "George W. Bush", ["W"], False),
        ("Who was the 43rd US president?", "W.", ["W"], True),
        ("What country is Andorra la Vella in?", "Salt and pepper.", ["AND"], False),
        ("What country is Andorra la Vella in?", "AND", ["AND"], True),
        ("Which country is Rome in?", "It is in Europe.", ["IT"], False),
        ("Which country is Houston in?", "Let us see, it is Canada.", ["US"], False),
        ("Which country is Houston in?", "U.S.", ["US"], True),
        ("Which band recorded My Generation?", "The Who", ["The Who"], True),
        ("Which band recorded My Generation?", "Who knows? Maybe the Beatles.", ["The Who"], False),
        ("Which band recorded My Generation?", "The band: The Who.", ["The Who"], True),
        ("Is Pluto a planet now?", "No, it is a dwarf planet.", ["no"], True),
        ("Is Pluto a planet now?", "There is no doubt that it is one.", ["no"], False),
        ("Is Pluto a planet now?", "The answer is no, it is not.", ["no"], True),
        # Numbers are not common words.
        ("How many players are on a football team?", "There are 11 players.", ["11"], True),
        # Longer acronyms are ordinary aliases.
        ("Where was Adele's label founded?", "The label was founded in the USA.", ["USA"], True),
    ],
)
def test_short_and_common_aliases(question, answer, aliases, correct):
    assert score_answer(answer, aliases, question).in_accuracy is correct


# --- normalisation in the label ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("answer", "aliases", "correct"),
    [
        ("U.S.A.", ["USA"], True),
        ("The answer is the U.S.A.", ["USA"], True),
        ("The answer is the U.S.", ["USA"], False),  # "us" is not "usa"
        ("L.A.", ["LA"], True),
        ("Los Angeles, L.A.", ["LA"], True),
        ("Vitamin C", ["Vitamin A"], False),
        ("It lacks vitamin A.", ["Vitamin A"], True),
        ("A Tale of Two Cities", ["Tale of Two Cities"], True),
        ("Charles Dickens wrote A Tale of Two Cities.", ["A Tale of Two Cities"], True),
        ("The Beatles", ["Beatles"], True),
        ("J. R. R. Tolkien", ["J.R.R. Tolkien"], True),
        ("Beyonce Knowles", ["Beyoncé"], True),
        ("Texas M", ["Texas A&M"], False),
    ],
)
def test_normalisation_in_the_label(answer, aliases, correct):
    assert score_answer(answer, aliases).in_accuracy is correct


# --- exact match and token F1 ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("answer", "aliases", "question", "exact", "f1"),
    [
        ("Paris", ["paris"], None, True, 1.0),
        ("U.S.A.", ["USA"], None, True, 1.0),
        ("the Ralph Reichenthal.", ["Ralph Rainger", "Ralph Reichenthal"], None, True, 1.0),
        ("Djibouti", ["N'Djamena", "NDjamena"], None, False, 0.0),
        # [william shakespeare wrote it] vs [william shakespeare]: P 2/4, R 1 -> 2/3.
        (
            "William Shakespeare wrote it",
            ["Shakespeare", "William Shakespeare"],
            None,
            False,
            2 / 3,
        ),
        # [vitamin a] vs [vitamin c]: one common word, P = R = 1/2.
        ("Vitamin A", ["vitamin C"], None, False, 0.5),
        # [answer in] vs [in]: P 1/2, R 1 -> 2/3.
        ("Answer: IN", ["IN"], KYOTO_Q, False, 2 / 3),
        # The alias is mentioned only where it does not count: no partial credit.
        ("Kyoto is in Japan", ["IN"], KYOTO_Q, False, 0.0),
        ("Mexico City", ["Mexico"], MEXICO_CITY_Q, False, 0.0),
        # Not mentioned at all: ordinary SQuAD partial credit, [paris is lovely] vs [paris
        # france]: one common word, P 1/3, R 1/2 -> 0.4.
        ("Paris is lovely", ["Paris, France"], None, False, 0.4),
    ],
)
def test_exact_match_and_f1(answer, aliases, question, exact, f1):
    s = score_answer(answer, aliases, question)
    assert s.exact_match is exact
    assert s.f1 == pytest.approx(f1)


def test_token_f1():
    assert token_f1("new york city", "new york") == pytest.approx(0.8)
    assert token_f1("", "") == 1.0 and token_f1("a", "") == 0.0


# --- properties --------------------------------------------------------------------------------

ALIAS_SETS = [
    (TARTU_Q, ["Tartu"]),
    (MEXICO_CITY_Q, ["Mexico"]),
    (SMITH_Q, ["John Smith"]),
    (KYOTO_Q, ["India", "IN"]),
    ("Where was Adele born?", ["United Kingdom", "UK"]),
    ("Which band recorded My Generation?", ["The Who"]),
    ("What country is Andorra la Vella in?", ["Andorra", "AND"]),
    ("Which country is Houston in?", ["U.S.A.", "U. S.", "US of A", "the United States"]),
    ("Which vitamin is retinol?", ["Vitamin A"]),
    ("Which novel opens in 1775?", ["A Tale of Two Cities"]),
    ("Which label did Jay-Z found?", ["Roc-A-Fella Records"]),
    ("What is the capital of Yemen?", ["Sana'a", "Sanaa"]),
    ("Who wrote The Hobbit?", ["J. R. R. Tolkien"]),
    ("How many players are on a football team?", ["11"]),
    ("Who sang Halo?", ["Beyoncé"]),
    ("What is the capital of Chad?", ["N'Djamena"]),
    ("Who was the 43rd US president?", ["W", "George W. Bush"]),
]


@pytest.mark.parametrize(("question", "aliases"), ALIAS_SETS)
@pytest.mark.parametrize(
    "dress",
    [
        lambda a: a,
        lambda a: f"{a}.",
        lambda a: f'"{a}"',
        lambda a: f"({a})",
        lambda a: f"  {a}\n",
        str.upper,
        str.lower,
    ],
    ids=["bare", "period", "quoted", "bracketed", "spaced", "upper", "lower"],
)
def test_the_alias_as_the_whole_answer_is_always_right(question, aliases, dress):
    for alias in aliases:
        s = score_answer(dress(alias), aliases, question)
        assert s.in_accuracy, dress(alias)
        assert s.exact_match and s.f1 == 1.0


WRONG_ANSWERS = [
    (TARTU_Q, ["Tartu"], "The capital of Tartu County is Tartu County"),
    (KYOTO_Q, ["IN"], "Kyoto is in Japan"),
    (MEXICO_CITY_Q, ["Mexico"], "Mexico City"),
    (SMITH_Q, ["John Smith"], "John Smith Jr.'s father is a baker"),
    ("Who wrote Hamlet?", ["William Shakespeare"], "Christopher Marlowe"),
    ("What is the capital of Peru?", ["Lima"], "Cusco"),
    ("Which vitamin is retinol?", ["Vitamin A"], "Vitamin C"),
    ("Where was Adele born?", ["UK"], "The UK-based singer"),
]
UNRELATED = [
    "I hope this helps.",
    "Thank you for asking!",
    "Let me know if you need more.",
    "Answer: unknown.",
    "(Not sure.)",
]


@pytest.mark.parametrize(("question", "aliases", "wrong"), WRONG_ANSWERS)
@pytest.mark.parametrize("tail", UNRELATED)
def test_an_unrelated_sentence_never_makes_a_wrong_answer_right(question, aliases, wrong, tail):
    assert not score_answer(wrong, aliases, question).in_accuracy
    assert not score_answer(f"{wrong}. {tail}", aliases, question).in_accuracy
    assert not score_answer(f"{wrong}\n{tail}", aliases, question).in_accuracy


# --- the same properties on the shared evaluation data -----------------------------------------


def _rows(shared_data, names=("popqa_random", "popqa_h2", "nq_1000")):
    for name in names:
        with (shared_data / "qa" / f"{name}.jsonl").open(encoding="utf-8") as fh:
            yield from (json.loads(line) for line in fh)


@pytest.mark.slow
def test_every_real_alias_as_the_whole_answer_is_right(shared_data):
    checked = 0
    for row in _rows(shared_data):
        for alias in row["golden_answers"]:
            if normalize_answer(alias):
                assert score_answer(alias, row["golden_answers"], row["question"]).in_accuracy, (
                    row["id"],
                    alias,
                )
                checked += 1
    assert checked > 5000


@pytest.mark.slow
def test_restating_the_question_and_its_subject_is_never_right(shared_data):
    """PopQA: "<question> <subject>" says nothing new when every alias in the subject is only a
    part of it next to another content word (the Tartu County loophole)."""
    checked = 0
    for row in _rows(shared_data, ("popqa_random", "popqa_h2")):
        subject = normalize_answer(row["metadata"]["subj"]).split()
        if normalize_answer(row["metadata"]["subj"]) not in normalize_answer(row["question"]):
            continue
        inside = [
            words
            for words in (normalize_answer(a).split() for a in row["golden_answers"])
            if words and any(subject[i : i + len(words)] == words for i in range(len(subject)))
        ]
        if any(all(w in FUNCTION_WORDS for w in subject if w not in words) for words in inside):
            continue  # the alias is the subject, or all else in it is function words
        answer = f"{row['question']} {row['metadata']['subj']}."
        s = score_answer(answer, row["golden_answers"], row["question"])
        assert not s.in_accuracy, (row["id"], answer, s.matched_alias)
        checked += 1
    assert checked > 1000


@pytest.mark.slow
def test_unrelated_sentence_on_real_wrong_answers(shared_data):
    """Another question's first alias is (almost always) a wrong answer; a tail never rights it."""
    rows = list(_rows(shared_data))
    tail = "I hope this helps."
    tail_words = set(normalize_answer(tail).split())
    checked = 0
    for row, other in zip(rows, rows[1:] + rows[:1], strict=True):
        gold_words = {w for a in row["golden_answers"] for w in normalize_answer(a).split()}
        wrong = other["golden_answers"][0]
        if (
            gold_words & tail_words
            or score_answer(wrong, row["golden_answers"], row["question"]).in_accuracy
        ):
            continue
        s = score_answer(f"{wrong}. {tail}", row["golden_answers"], row["question"])
        assert not s.in_accuracy, (row["id"], wrong)
        checked += 1
    assert checked > 2500


# --- bad input ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((None, ["Paris"]), "answer must be a str, got NoneType"),
        (("Paris", []), "golden_answers must be a non-empty list"),
        (("Paris", None), "golden_answers must be a non-empty list"),
        (("Paris", ["Paris", 3]), r"golden_answers\[1\] must be a str, got int"),
        (("Paris", ["Paris"], 5), "question must be a str or None, got int"),
    ],
)
def test_bad_input_is_named(args, message):
    with pytest.raises(InputError, match=message):
        score_answer(*args)
