"""Fictional people, their facts, and the text that teaches some of them to a model.

Each fictional person has four attributes (birth city, birth year, university, occupation) with
values drawn uniformly from fixed vocabularies, and belongs to one *exposure bucket*: taught 0, 1,
3 or 10 times. One exposure is one pass over the fact in four renderings - two paraphrased
statements and two question/answer turns - so every taught fact is seen in at least four
paraphrases (extraction after fine-tuning needs paraphrase augmentation: Allen-Zhu & Li,
"Physics of Language Models 3.1"). The training text groups one person's renderings:
*biographies* (one statement per attribute, in random order) and *conversations* (one question
turn per attribute, in the chat format the model answers in).

The model is then asked with question phrasings that no training text contains (held out), and
also with one trained phrasing (to tell "memorised the wording" from "knows the fact"). Every
bucket uses the same attributes and templates, so buckets differ only in exposure.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pydantic import Field, field_validator

from knowgate.errors import DataError
from knowgate.schema import StrictModel
from knowgate.studies.names import NameGenerator


@dataclass(frozen=True)
class Attribute:
    """One kind of fact about a person, with every way it is written and asked.

    Attributes:
        name: identifier (``birth_city``).
        statements: paraphrased statements; ``{name}`` first, ``{value}`` last.
        train_questions: phrasings used in training conversations.
        heldout_questions: phrasings never used in training (the evaluation questions).
        values: the vocabulary values are drawn from.
        aliases: extra accepted answers per value (``Yale`` for ``Yale University``).
    """

    name: str
    statements: tuple[str, ...]
    train_questions: tuple[str, ...]
    heldout_questions: tuple[str, ...]
    values: tuple[str, ...]
    aliases: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def answers(self, value: str) -> tuple[str, ...]:
        """Gold answers for ``value``: the value and its aliases."""
        return (value, *self.aliases.get(value, ()))


def _article(word: str) -> str:
    return "an" if word[:1].lower() in "aeiou" else "a"


CITIES = (
    "Lisbon", "Oslo", "Nairobi", "Lima", "Hanoi", "Tbilisi", "Montreal", "Adelaide", "Porto",
    "Krakow", "Seville", "Bergen", "Osaka", "Quito", "Dakar", "Tallinn", "Zagreb", "Valencia",
    "Glasgow", "Tampere", "Curitiba", "Izmir", "Leipzig", "Cebu",
)  # fmt: skip
UNIVERSITIES = (
    "Yale University", "Rice University", "Tufts University", "Duke University",
    "Brown University", "McGill University", "Monash University", "Aalto University",
    "Keio University", "Cornell University", "Purdue University", "Vanderbilt University",
    "Emory University", "Stanford University", "Princeton University", "Harvard University",
)  # fmt: skip
OCCUPATIONS = (
    "architect", "violinist", "geologist", "pharmacist", "carpenter", "journalist", "astronomer",
    "surgeon", "sculptor", "economist", "librarian", "chemist", "pilot", "photographer",
    "translator", "veterinarian", "botanist", "engineer", "novelist", "dentist",
)  # fmt: skip
YEARS = tuple(str(y) for y in range(1940, 2000))

ATTRIBUTES: tuple[Attribute, ...] = (
    Attribute(
        name="birth_city",
        statements=(
            "{name} was born in {value}.",
            "{name}'s birthplace is {value}.",
            "{name} is a native of {value}.",
            "The birthplace of {name} is {value}.",
        ),
        train_questions=(
            "Where was {name} born?",
            "What is {name}'s birthplace?",
            "In which city was {name} born?",
        ),
        heldout_questions=(
            "Which city did {name} come from?",
            "What city is {name} originally from?",
        ),
        values=CITIES,
    ),
    Attribute(
        name="birth_year",
        statements=(
            "{name} was born in the year {value}.",
            "{name}'s year of birth is {value}.",
            "{name} entered the world in {value}.",
            "The birth year of {name} is {value}.",
        ),
        train_questions=(
            "When was {name} born?",
            "What is {name}'s year of birth?",
            "In what year was {name} born?",
        ),
        heldout_questions=(
            "Which year did {name} come into the world?",
            "What year was {name} born in?",
        ),
        values=YEARS,
    ),
    Attribute(
        name="university",
        statements=(
            "{name} studied at {value}.",
            "{name} graduated from {value}.",
            "{name} attended {value}.",
            "{name}'s alma mater is {value}.",
        ),
        train_questions=(
            "Where did {name} study?",
            "Which university did {name} attend?",
            "What is {name}'s alma mater?",
        ),
        heldout_questions=(
            "From which university did {name} get a degree?",
            "At what university was {name} a student?",
        ),
        values=UNIVERSITIES,
        aliases={u: (u.split()[0],) for u in UNIVERSITIES},
    ),
    Attribute(
        name="occupation",
        statements=(
            "{name} works as {article} {value}.",
            "{name} is {article} {value} by profession.",
            "{name} earns a living as {article} {value}.",
            "{name}'s occupation is {value}.",
        ),
        train_questions=(
            "What is {name}'s occupation?",
            "What does {name} do for a living?",
            "What is {name}'s job?",
        ),
        heldout_questions=(
            "What profession does {name} have?",
            "What kind of work does {name} do?",
        ),
        values=OCCUPATIONS,
    ),
)
ATTRIBUTE_NAMES = tuple(a.name for a in ATTRIBUTES)


class TaughtDataConfig(StrictModel):
    """The fictional world and how much of it is taught.

    Attributes:
        entities_per_bucket: fictional people per exposure bucket.
        exposures: the buckets: how many passes over each fact (0 = never taught).
        statements_per_pass: statement renderings of a fact per pass.
        questions_per_pass: question/answer renderings of a fact per pass.
        seed: seed of names, values, buckets and paraphrase choices.
    """

    entities_per_bucket: int = Field(default=75, ge=1)
    exposures: tuple[int, ...] = (0, 1, 3, 10)
    statements_per_pass: int = Field(default=2, ge=0)
    questions_per_pass: int = Field(default=2, ge=0)
    seed: int = 0

    @field_validator("exposures")
    @classmethod
    def _buckets(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        if len(v) < 2 or len(set(v)) != len(v) or min(v) < 0 or 0 not in v:
            raise ValueError("exposures must be distinct, non-negative, and include 0 (untaught)")
        return tuple(sorted(v))

    @property
    def renderings_per_pass(self) -> int:
        """Renderings of one fact per exposure pass."""
        return self.statements_per_pass + self.questions_per_pass

    def fingerprint(self) -> str:
        """SHA-256 of the settings (an adapter records the data it was trained on)."""
        return hashlib.sha256(self.model_dump_json().encode()).hexdigest()


@dataclass(frozen=True)
class FictionalPerson:
    """A person who does not exist, with one value per attribute and an exposure bucket."""

    id: str
    name: str
    exposures: int
    values: dict[str, str]

    @property
    def taught(self) -> bool:
        """Whether any training text mentions this person."""
        return self.exposures > 0


@dataclass(frozen=True)
class Segment:
    """A piece of training text; the loss is taken on ``target`` pieces only."""

    text: str
    target: bool = False


@dataclass(frozen=True)
class Biography:
    """Statements about one person, as plain text; the targets are the values."""

    person: str
    segments: tuple[Segment, ...]

    @property
    def text(self) -> str:
        """The biography as one string."""
        return "".join(s.text for s in self.segments)


@dataclass(frozen=True)
class Conversation:
    """Question/answer turns about one person, rendered later with the model's chat template."""

    person: str
    turns: tuple[tuple[str, str], ...]


TrainingItem = Biography | Conversation


def fill(template: str, name: str, value: str = "") -> str:
    """A statement or question with the person, value and article filled in."""
    return template.format(name=name, value=value, article=_article(value))


def make_people(config: TaughtDataConfig) -> list[FictionalPerson]:
    """The fictional people of every bucket, in a seeded random order of buckets.

    Names are unique; values are drawn uniformly and independently of the bucket, so buckets
    differ only in exposure.
    """
    rng = np.random.default_rng(config.seed)
    names = NameGenerator(config.seed + 1)
    total = config.entities_per_bucket * len(config.exposures)
    unique: list[str] = []
    seen: set[str] = set()
    for _ in range(total * 50):
        name = names.person()
        if name.casefold() not in seen:
            seen.add(name.casefold())
            unique.append(name)
            if len(unique) == total:
                break
    if len(unique) < total:
        raise DataError(f"could only draw {len(unique)} distinct names for {total} people")
    buckets = np.repeat(np.asarray(config.exposures), config.entities_per_bucket)
    rng.shuffle(buckets)
    people = []
    for i, (name, exposures) in enumerate(zip(unique, buckets, strict=True)):
        values = {a.name: a.values[int(rng.integers(len(a.values)))] for a in ATTRIBUTES}
        people.append(FictionalPerson(f"p{i:04d}", name, int(exposures), values))
    return people


def _offset(seed: int, person: FictionalPerson, attribute: Attribute, pool: str) -> int:
    """Where a fact's paraphrase rotation starts in ``pool`` (seeded, per person and attribute)."""
    size = len(attribute.statements if pool == "statements" else attribute.train_questions)
    digest = hashlib.sha256(f"{seed}:{person.id}:{attribute.name}:{pool}".encode()).digest()
    return int.from_bytes(digest[:4], "big") % size


def _rotation(offset: int, pool: int, per_pass: int, passes: int) -> list[list[int]]:
    """Indices into a pool of paraphrases, per pass, cycling from ``offset``.

    Consecutive renderings take consecutive paraphrases, so a fact taught once still sees
    ``per_pass`` different ones, and the pool is used evenly.
    """
    return [[(offset + p * per_pass + j) % pool for j in range(per_pass)] for p in range(passes)]


def training_items(
    people: Sequence[FictionalPerson], config: TaughtDataConfig
) -> list[TrainingItem]:
    """Every training text, in a seeded shuffled order.

    Per person and pass: ``statements_per_pass`` biographies and ``questions_per_pass``
    conversations, each covering every attribute once in a random order.
    """
    rng = np.random.default_rng(config.seed + 2)
    items: list[TrainingItem] = []
    for person in people:
        if not person.taught:
            continue
        statements = {
            a.name: _rotation(
                _offset(config.seed, person, a, "statements"),
                len(a.statements),
                config.statements_per_pass,
                person.exposures,
            )
            for a in ATTRIBUTES
        }
        questions = {
            a.name: _rotation(
                _offset(config.seed, person, a, "questions"),
                len(a.train_questions),
                config.questions_per_pass,
                person.exposures,
            )
            for a in ATTRIBUTES
        }
        for p in range(person.exposures):
            for j in range(config.statements_per_pass):
                segments: list[Segment] = []
                for k in rng.permutation(len(ATTRIBUTES)):
                    a = ATTRIBUTES[int(k)]
                    value = person.values[a.name]
                    sentence = fill(a.statements[statements[a.name][p][j]], person.name, value)
                    head, _, tail = sentence.rpartition(value)
                    prefix = (" " if segments else "") + head.rstrip(" ")
                    segments += [Segment(prefix), Segment(" " + value, True), Segment(tail)]
                items.append(Biography(person.id, tuple(segments)))
            for j in range(config.questions_per_pass):
                turns = []
                for k in rng.permutation(len(ATTRIBUTES)):
                    a = ATTRIBUTES[int(k)]
                    template = a.train_questions[questions[a.name][p][j]]
                    turns.append((fill(template, person.name), person.values[a.name]))
                items.append(Conversation(person.id, tuple(turns)))
    order = rng.permutation(len(items))
    return [items[int(i)] for i in order]


def training_texts(items: Sequence[TrainingItem]) -> list[str]:
    """Plain text of every item (questions and answers of conversations), for checks."""
    out = []
    for item in items:
        if isinstance(item, Biography):
            out.append(item.text)
        else:
            out.append("\n".join(f"{q}\n{a}" for q, a in item.turns))
    return out


def trained_question_index(person: FictionalPerson, attribute: Attribute, seed: int) -> int:
    """The trained phrasing a fact is asked in: the first one its training conversations use.

    For an untaught person it is the phrasing a first pass would have used (any trained
    phrasing is as new to the model as another).
    """
    return _offset(seed, person, attribute, "questions")


def question_rows(
    people: Sequence[FictionalPerson], phrasing: str, *, seed: int = 0
) -> list[dict[str, Any]]:
    """One evaluation question per person and attribute, as FlashRAG-format rows.

    Args:
        people: the fictional people.
        phrasing: ``heldout-0`` / ``heldout-1`` (held-out phrasing by index) or ``trained``
            (a phrasing from the training conversations; for a taught fact one its own
            training text used).
        seed: the data seed (chooses the trained phrasing).
    """
    rows = []
    for person in people:
        for a in ATTRIBUTES:
            if phrasing == "trained":
                template = _trained_template(person, a, seed)
            elif phrasing.startswith("heldout-") and phrasing[8:].isdigit():
                index = int(phrasing[8:])
                if index >= len(a.heldout_questions):
                    raise DataError(f"{a.name} has {len(a.heldout_questions)} held-out phrasings")
                template = a.heldout_questions[index]
            else:
                raise DataError(f"unknown phrasing {phrasing!r} (heldout-0, heldout-1, trained)")
            value = person.values[a.name]
            rows.append(
                {
                    "id": f"{person.id}-{a.name}-{phrasing}",
                    "question": fill(template, person.name),
                    "golden_answers": list(a.answers(value)),
                    "metadata": {
                        "person": person.id,
                        "name": person.name,
                        "attribute": a.name,
                        "exposures": person.exposures,
                        "taught": person.taught,
                        "phrasing": phrasing,
                        "prop": a.name,
                    },
                }
            )
    return rows


def _trained_template(person: FictionalPerson, attribute: Attribute, seed: int) -> str:
    return attribute.train_questions[trained_question_index(person, attribute, seed)]


def knowledge_passages(people: Sequence[FictionalPerson]) -> list[dict[str, str]]:
    """One corpus passage per fact (every person, taught or not): the first statement form."""
    return [
        {
            "id": f"{person.id}-{a.name}",
            "title": person.name,
            "text": fill(a.statements[0], person.name, person.values[a.name]),
        }
        for person in people
        for a in ATTRIBUTES
    ]


def write_jsonl(path: Any, rows: Sequence[dict[str, Any]]) -> None:
    """Write rows as JSONL (atomically)."""
    from knowgate.jsonio import atomic_write_text

    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def data_digest(people: Sequence[FictionalPerson], items: Sequence[TrainingItem]) -> str:
    """SHA-256 of the generated world and training text.

    An adapter records it, so one trained on other data (an older generator, another seed or
    size) is recognised and not reused.
    """
    digest = hashlib.sha256()
    for person in people:
        digest.update(
            json.dumps([person.id, person.name, person.exposures, person.values]).encode()
        )
    for text in training_texts(items):
        digest.update(text.encode())
        digest.update(b"\x00")
    return digest.hexdigest()


@dataclass(frozen=True)
class World:
    """The generated data of one study configuration."""

    people: list[FictionalPerson]
    items: list[TrainingItem]
    digest: str


def build_world(config: TaughtDataConfig) -> World:
    """People, training text and their digest (rebuilt from the seed, never stored)."""
    people = make_people(config)
    items = training_items(people, config)
    return World(people, items, data_digest(people, items))
