"""The studies' data generators: seeded, templates held fixed, held-out text really held out."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import pytest

from knowgate.errors import ConfigError
from knowgate.evaluation.datasets import load_dataset
from knowgate.studies.fabricated_data import (
    TEMPLATE_KINDS,
    FabricatedDataConfig,
    PopQAVocabulary,
    build_pairs,
    load_popqa,
    pair_rows,
)
from knowgate.studies.names import KINDS, NameGenerator
from knowgate.studies.taught_data import (
    ATTRIBUTES,
    Biography,
    Conversation,
    TaughtDataConfig,
    data_digest,
    knowledge_passages,
    make_people,
    question_rows,
    training_items,
    training_texts,
)

# ------------------------------------------------------------------------------- names


def test_names_are_seeded() -> None:
    for kind in KINDS:
        first = [NameGenerator(7).make(kind) for _ in range(1)]
        a, b = NameGenerator(7), NameGenerator(7)
        assert [a.make(kind) for _ in range(20)] == [b.make(kind) for _ in range(20)]
        assert first[0] == NameGenerator(7).make(kind)
    assert [NameGenerator(1).person() for _ in range(5)] != [
        NameGenerator(2).person() for _ in range(5)
    ]


def test_names_look_like_their_kind() -> None:
    names = NameGenerator(0)
    for _ in range(50):
        first, surname = names.person().split(" ")
        assert first[0].isupper() and surname[0].isupper() and surname[1:].islower()
        assert re.fullmatch(r"[A-Z][a-z]+", names.city())
        assert names.title()[0].isupper()


# ------------------------------------------------------------------------ fabricated pairs


def _popqa_file(tmp_path: Path) -> Path:
    rows = []
    subjects = {
        "occupation": ["Ada Lovelace", "Alan Turing", "Grace Hopper"],
        "director": ["Casablanca", "Vertigo", "Metropolis"],
        "capital": ["France", "Peru", "Kenya"],
    }
    templates = {
        "occupation": "What is {}'s occupation?",
        "director": "Who was the director of {}?",
        "capital": "What is the capital of {}?",
    }
    for relation, names in subjects.items():
        for i, subject in enumerate(names):
            rows.append(
                {
                    "id": f"{relation}-{i}",
                    "question": templates[relation].format(subject),
                    "golden_answers": [f"answer {relation} {i}"],
                    "metadata": {
                        "subj": subject,
                        "prop": relation,
                        "s_pop": 5000 - 1000 * i,
                        "obj": f"answer {relation} {i}",
                        "s_aliases": json.dumps([f"{subject} alias"]),
                    },
                }
            )
    rows.append(  # unpopular: never selected
        {
            "id": "rare",
            "question": "What is Obscure Person's occupation?",
            "golden_answers": ["x"],
            "metadata": {"subj": "Obscure Person", "prop": "occupation", "s_pop": 3},
        }
    )
    path = tmp_path / "popqa_toy.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_pairs_share_the_template_and_avoid_popqa(tmp_path: Path) -> None:
    path = _popqa_file(tmp_path)
    config = FabricatedDataConfig(
        datasets=(str(path),), relations=("occupation", "director", "capital"), min_popularity=2000
    )
    examples = load_popqa(config.datasets)
    vocabulary = PopQAVocabulary(examples)
    pairs = build_pairs(examples, config, vocabulary=vocabulary)
    assert Counter(p.relation for p in pairs) == {"occupation": 3, "director": 3, "capital": 3}
    by_id = {ex.id: ex for ex in examples}
    for pair in pairs:
        original = by_id[pair.source_id]
        assert pair.real_question == original.question
        assert pair.template.replace("{subject}", pair.fabricated) == pair.fabricated_question
        assert pair.real_question.replace(pair.real, pair.fabricated) == pair.fabricated_question
        assert pair.kind == TEMPLATE_KINDS[pair.relation]
        assert not vocabulary.contains(pair.fabricated)
    assert len({p.fabricated for p in pairs}) == len(pairs)
    again = build_pairs(examples, config, vocabulary=vocabulary)
    assert [p.fabricated for p in again] == [p.fabricated for p in pairs]
    other = build_pairs(examples, config.model_copy(update={"seed": 1}), vocabulary=vocabulary)
    assert [p.fabricated for p in other] != [p.fabricated for p in pairs]
    limited = build_pairs(examples, config, vocabulary=vocabulary, limit=1)
    assert Counter(p.relation for p in limited) == {"occupation": 1, "director": 1, "capital": 1}


def test_pairs_match_token_length_when_they_can(tmp_path: Path) -> None:
    path = _popqa_file(tmp_path)
    config = FabricatedDataConfig(
        datasets=(str(path),), relations=("occupation",), min_popularity=2000, candidates=30
    )
    examples = load_popqa(config.datasets)

    def characters(question: str) -> int:  # a stand-in tokenizer: one token per character
        return len(question)

    vocabulary = PopQAVocabulary(examples)
    matched = build_pairs(examples, config, vocabulary=vocabulary, token_count=characters)
    unmatched = build_pairs(examples, config, vocabulary=vocabulary)
    for pair in matched:
        assert pair.token_difference == len(pair.fabricated_question) - len(pair.real_question)
    gap = [abs(len(p.fabricated_question) - len(p.real_question)) for p in unmatched]
    assert max(abs(p.token_difference or 0) for p in matched) <= 1 < max(gap)


def test_pair_rows_load_as_a_dataset(tmp_path: Path) -> None:
    path = _popqa_file(tmp_path)
    config = FabricatedDataConfig(datasets=(str(path),), relations=("capital",), min_popularity=0)
    examples = load_popqa(config.datasets)
    pairs = build_pairs(examples, config, vocabulary=PopQAVocabulary(examples))
    out = tmp_path / "pairs.jsonl"
    out.write_text("".join(json.dumps(r) + "\n" for r in pair_rows(pairs)))
    dataset = load_dataset(out)
    assert len(dataset) == 2 * len(pairs)
    assert [ex.metadata["real"] for ex in dataset] == [True, False] * len(pairs)
    assert {ex.metadata["pair"] for ex in dataset} == {p.index for p in pairs}


def test_unknown_relation_is_refused() -> None:
    with pytest.raises(ConfigError, match="relations"):
        FabricatedDataConfig.from_dict({"relations": ["favourite colour"]})


@pytest.mark.slow
def test_default_pairs_on_shared_popqa(shared_data: Path) -> None:
    config = FabricatedDataConfig()
    examples = load_popqa(config.datasets, shared_data)
    vocabulary = PopQAVocabulary(examples)
    pairs = build_pairs(examples, config, vocabulary=vocabulary)
    assert len(pairs) >= 500
    assert len({p.relation for p in pairs}) >= 6
    assert min(p.popularity for p in pairs) >= config.min_popularity
    # fabricated names are absent from every PopQA file: subjects, answers, aliases, questions
    for name in ("popqa_random", "popqa_h2"):
        dataset = load_dataset(name, data_dir=shared_data)
        strings = " \n ".join(
            [ex.question for ex in dataset]
            + [a for ex in dataset for a in ex.golden_answers]
            + [str(ex.metadata.get(k, "")) for ex in dataset for k in ("subj", "obj")]
        ).casefold()
        for pair in pairs:
            assert pair.fabricated.casefold() not in strings, pair.fabricated


# ------------------------------------------------------------------------ taught facts


def test_world_is_seeded_and_balanced() -> None:
    config = TaughtDataConfig(entities_per_bucket=6)
    people = make_people(config)
    assert [(p.name, p.exposures, p.values) for p in people] == [
        (p.name, p.exposures, p.values) for p in make_people(config)
    ]
    assert Counter(p.exposures for p in people) == {0: 6, 1: 6, 3: 6, 10: 6}
    assert len({p.name for p in people}) == len(people)
    for person in people:
        for attribute in ATTRIBUTES:
            assert person.values[attribute.name] in attribute.values
    other = make_people(config.model_copy(update={"seed": 1}))
    assert [p.name for p in other] != [p.name for p in people]
    items = training_items(people, config)
    assert data_digest(people, items) == data_digest(
        make_people(config), training_items(people, config)
    )
    assert data_digest(people, items) != data_digest(other, training_items(other, config))


def test_templates_are_the_same_in_every_bucket() -> None:
    config = TaughtDataConfig(entities_per_bucket=8)
    people = make_people(config)
    names = {p.id: p.name for p in people}
    for phrasing in ("heldout-0", "heldout-1", "trained"):
        templates: dict[int, set[str]] = {}
        for row in question_rows(people, phrasing):
            template = row["question"].replace(names[row["metadata"]["person"]], "{name}")
            templates.setdefault(row["metadata"]["exposures"], set()).add(template)
        reference = templates[0]
        if phrasing != "trained":  # held-out: exactly one template per attribute everywhere
            assert len(reference) == len(ATTRIBUTES)
        for bucket, found in templates.items():
            assert found <= {
                t for a in ATTRIBUTES for t in (*a.train_questions, *a.heldout_questions)
            }
            if phrasing != "trained":
                assert found == reference, bucket


def test_exposure_counts_and_paraphrases() -> None:
    config = TaughtDataConfig(entities_per_bucket=5)
    people = make_people(config)
    items = training_items(people, config)
    per_person = Counter((type(i).__name__, i.person) for i in items)
    for person in people:
        assert per_person[("Biography", person.id)] == person.exposures * config.statements_per_pass
        assert (
            per_person[("Conversation", person.id)] == person.exposures * config.questions_per_pass
        )
    texts = training_texts(items)
    for person in people:
        mentions = sum(person.name in t for t in texts)
        assert mentions == person.exposures * config.renderings_per_pass
    # a fact taught once is still rendered in four different ways
    once = next(p for p in people if p.exposures == 1)
    for attribute in ATTRIBUTES:
        value = once.values[attribute.name]
        renderings: set[str] = set()
        for item in items:
            if item.person != once.id:
                continue
            if isinstance(item, Biography):
                text = item.text
                renderings |= {
                    s
                    for s in attribute.statements
                    if s.format(
                        name=once.name,
                        value=value,
                        article="a" if value[0] not in "aeiou" else "an",
                    )
                    in text
                }
            elif isinstance(item, Conversation):
                renderings |= {
                    q
                    for q in attribute.train_questions
                    for turn in item.turns
                    if turn == (q.format(name=once.name), value)
                }
        assert len(renderings) >= 4, (attribute.name, renderings)


def test_targets_are_the_values() -> None:
    people = make_people(TaughtDataConfig(entities_per_bucket=3))
    items = training_items(people, TaughtDataConfig(entities_per_bucket=3))
    by_id = {p.id: p for p in people}
    for item in items:
        person = by_id[item.person]
        if isinstance(item, Biography):
            targets = sorted(s.text.strip() for s in item.segments if s.target)
            assert targets == sorted(person.values.values())
        else:
            assert sorted(a for _, a in item.turns) == sorted(person.values.values())


def test_heldout_questions_never_appear_in_training_text() -> None:
    config = TaughtDataConfig(entities_per_bucket=10)
    people = make_people(config)
    texts = training_texts(training_items(people, config))
    corpus = "\n".join(texts)
    for phrasing in ("heldout-0", "heldout-1"):
        for row in question_rows(people, phrasing):
            assert row["question"] not in corpus
    for attribute in ATTRIBUTES:
        assert not set(attribute.heldout_questions) & set(attribute.train_questions)
        for template in attribute.heldout_questions:
            # the frame around the name occurs in no training text either
            for part in template.split("{name}"):
                if len(part.strip()) > 8:
                    assert part not in corpus, (template, part)
    untaught = [p for p in people if not p.taught]
    assert untaught and not any(p.name in corpus for p in untaught)


def test_trained_phrasing_was_used_for_taught_facts() -> None:
    config = TaughtDataConfig(entities_per_bucket=6)
    people = make_people(config)
    items = training_items(people, config)
    asked = {(i.person, q) for i in items if isinstance(i, Conversation) for q, _ in i.turns}
    for row in question_rows(people, "trained"):
        meta = row["metadata"]
        if meta["taught"]:
            assert (meta["person"], row["question"]) in asked


def test_passages_hold_every_fact() -> None:
    people = make_people(TaughtDataConfig(entities_per_bucket=2))
    passages = knowledge_passages(people)
    assert len(passages) == len(people) * len(ATTRIBUTES)
    assert len({p["id"] for p in passages}) == len(passages)
    for person in people:
        mine = [p["text"] for p in passages if p["title"] == person.name]
        for value in person.values.values():
            assert any(value in text for text in mine)


def test_bad_buckets_are_refused() -> None:
    with pytest.raises(ConfigError, match="exposures"):
        TaughtDataConfig.from_dict({"exposures": [1, 3]})
    with pytest.raises(ConfigError, match="exposures"):
        TaughtDataConfig.from_dict({"exposures": [0, 3, 3]})
