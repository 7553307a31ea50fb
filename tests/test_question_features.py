import pytest

from knowgate.errors import SignalError
from knowgate.signals import feature_names, feature_specs
from knowgate.signals.question import QUESTION_FEATURES, compute_question_features


def test_popqa_question():
    f = compute_question_features(
        "What is George Rankin's occupation?", {"prop": "occupation", "s_pop": 142}
    )
    assert set(f) == set(QUESTION_FEATURES)
    assert f["question_num_tokens"] == 6  # What is George Rankin s occupation
    assert f["question_wh_what"] == 1.0 and f["question_wh_who"] == 0.0
    assert f["question_num_capitalized"] == 2
    assert f["question_num_digits"] == 0
    assert f["question_relation_occupation"] == 1.0
    assert sum(v for k, v in f.items() if k.startswith("question_relation_")) == 1.0


def test_nq_question_without_metadata():
    f = compute_question_features("who won the world cup in 2014")
    assert f["question_wh_who"] == 1.0
    assert f["question_num_digits"] == 4
    assert f["question_num_capitalized"] == 0
    assert f["question_relation_unknown"] == 1.0


def test_first_wh_word_and_relations():
    f = compute_question_features("In what country is Kyoto?", {"prop": "place of birth"})
    assert f["question_wh_what"] == 1.0
    assert f["question_relation_place_of_birth"] == 1.0
    g = compute_question_features("Name the band.", {"prop": "instrument"})
    assert g["question_wh_none"] == 1.0 and g["question_relation_other"] == 1.0


@pytest.mark.parametrize("bad", ["", "   ", None, 3])
def test_rejects_empty(bad):
    with pytest.raises(SignalError):
        compute_question_features(bad)


def test_registered_in_signals_registry():
    names = feature_names(family="question")
    assert names == list(QUESTION_FEATURES)
    assert all(feature_specs()[n].stage == "prefill" for n in names)
    assert "question_wh_who" in names and "question_relation_capital_of" in names
    assert not set(names) & set(feature_names(family="sparsity"))
