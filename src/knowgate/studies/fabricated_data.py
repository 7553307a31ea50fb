"""Real-vs-fabricated question pairs: one PopQA template, a real subject and an invented one.

Each pair is a PopQA question whose subject has high popularity (``s_pop``, monthly page views)
and a copy of it with the subject replaced by an invented name of the same kind (a person for
"What is X's occupation?", a title for "Who was the director of X?"). The two questions differ
only in the entity, so anything that separates them is about the entity, not the template - the
confound that makes pooled PopQA AUROCs measure the relation.

Fabricated names are drawn until one is found that no PopQA question, subject, answer or alias
contains and, when a token counter is given, whose question has as nearly as possible the same
number of tokens as the real one (rare invented names split into more tokens than famous ones;
the residual difference is reported as a baseline signal).
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from knowgate.errors import DataError
from knowgate.evaluation.datasets import QAExample, load_dataset, normalize_question
from knowgate.schema import StrictModel
from knowgate.studies.names import Kind, NameGenerator

POPQA_FILES = ("popqa_random", "popqa_h2")

TEMPLATE_KINDS: dict[str, Kind] = {
    "occupation": "person",
    "place of birth": "person",
    "father": "person",
    "director": "title",
    "screenwriter": "title",
    "producer": "title",
    "composer": "title",
    "genre": "title",
    "author": "title",
    "capital": "country",
    "capital of": "city",
}
"""PopQA relations used, and the kind of name that fits each one's subject."""

PERSON_RELATIONS = tuple(r for r, kind in TEMPLATE_KINDS.items() if kind == "person")

FABRICATED_ANSWER = "(fabricated entity: no answer)"
"""Gold answer of a fabricated question (the study never scores them; the file format needs one)."""


class FabricatedDataConfig(StrictModel):
    """Which PopQA questions are paired, and how.

    Attributes:
        datasets: PopQA files (names under ``<data dir>/qa`` or paths); duplicates across files
            (the same question text) are used once.
        relations: PopQA relations (templates) to use; each must be in :data:`TEMPLATE_KINDS`.
        min_popularity: smallest ``s_pop`` of a real subject ("popular").
        per_template: at most this many pairs per template (the most popular subjects first).
        candidates: invented names drawn per pair, of which the best token-length match is kept.
        names: ``invented`` names are built from syllables and word lists (their rare subword
            pieces are a surface cue); ``recombined`` names join the first name of one real
            PopQA person to the surname of another (real-name pieces, no real person; person
            templates only).
        seed: seed of the name generator.
    """

    datasets: tuple[str, ...] = POPQA_FILES
    relations: tuple[str, ...] = tuple(TEMPLATE_KINDS)
    min_popularity: int = Field(default=1000, ge=0)
    per_template: int = Field(default=80, ge=1)
    candidates: int = Field(default=30, ge=1)
    names: Literal["invented", "recombined"] = "invented"
    seed: int = 0

    @field_validator("relations")
    @classmethod
    def _known_relations(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        unknown = sorted(set(v) - set(TEMPLATE_KINDS))
        if unknown or not v:
            raise ValueError(
                f"relations must be a non-empty subset of {sorted(TEMPLATE_KINDS)}; "
                f"unknown: {unknown}"
            )
        return v

    @model_validator(mode="after")
    def _recombined_people_only(self) -> FabricatedDataConfig:
        others = [r for r in self.relations if r not in PERSON_RELATIONS]
        if self.names == "recombined" and others:
            raise ValueError(
                f"recombined names exist for people only; use relations {list(PERSON_RELATIONS)} "
                f"(not {others})"
            )
        return self


@dataclass(frozen=True)
class QuestionPair:
    """One template asked about a real entity and about a fabricated one.

    Attributes:
        index: the pair's number (its cluster in every bootstrap and fold).
        relation: the PopQA relation (the template's name).
        template: the question with the subject replaced by ``{subject}``.
        kind: the kind of name (person, city, country, title).
        real: the real subject.
        fabricated: the invented subject.
        real_answers: PopQA's gold aliases for the real question.
        popularity: ``s_pop`` of the real subject.
        source_id: the PopQA row id.
        token_difference: tokens of the fabricated question minus tokens of the real one
            (``None`` without a token counter).
    """

    index: int
    relation: str
    template: str
    kind: Kind
    real: str
    fabricated: str
    real_answers: tuple[str, ...]
    popularity: float
    source_id: str
    token_difference: int | None

    @property
    def real_question(self) -> str:
        """The PopQA question, as asked."""
        return self.template.format(subject=self.real)

    @property
    def fabricated_question(self) -> str:
        """The same template about the invented subject."""
        return self.template.format(subject=self.fabricated)


def _template(example: QAExample) -> str | None:
    subject = example.metadata.get("subj")
    if not isinstance(subject, str) or not subject or example.question.count(subject) != 1:
        return None
    return example.question.replace(subject, "{subject}")


def _aliases(raw: Any) -> list[str]:
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except json.JSONDecodeError:
            return [raw]
    return [a for a in raw if isinstance(a, str)] if isinstance(raw, list) else []


class PopQAVocabulary:
    """Every string PopQA knows (subjects, answers, aliases, question texts), for exclusion."""

    def __init__(self, examples: Iterable[QAExample]) -> None:
        """Index the strings of ``examples``."""
        names: set[str] = set()
        questions: list[str] = []
        for ex in examples:
            meta = ex.metadata
            for value in (meta.get("subj"), meta.get("obj"), *ex.golden_answers):
                if isinstance(value, str):
                    names.add(value.casefold())
            for key in ("s_aliases", "o_aliases"):
                names.update(a.casefold() for a in _aliases(meta.get(key)))
            questions.append(ex.question.casefold())
        self.names = names
        self._text = "\n".join(questions)

    def contains(self, name: str) -> bool:
        """Whether ``name`` is a PopQA string or occurs inside a PopQA question."""
        folded = name.casefold()
        return folded in self.names or folded in self._text


class RecombinedNames:
    """Names that join one real person's first name to another real person's surname.

    The pieces come from two-word PopQA person subjects (``Donald Trump`` gives ``Donald`` and
    ``Trump``), so a recombined name spells and tokenizes like a real one while naming nobody
    PopQA knows (``Donald Rankin``); callers still check it against every PopQA string.
    """

    def __init__(self, examples: Iterable[QAExample], seed: int) -> None:
        """Collect first names and surnames of the person subjects of ``examples``."""
        firsts: set[str] = set()
        lasts: set[str] = set()
        for ex in examples:
            subject = ex.metadata.get("subj")
            if TEMPLATE_KINDS.get(str(ex.relation)) != "person" or not isinstance(subject, str):
                continue
            parts = subject.split()
            if len(parts) == 2 and all(p.isalpha() and p[0].isupper() for p in parts):
                firsts.add(parts[0])
                lasts.add(parts[1])
        if not firsts or not lasts:
            raise DataError("no two-word person subjects to recombine names from")
        self._firsts, self._lasts = sorted(firsts), sorted(lasts)
        self._names = NameGenerator(seed)

    def make(self, kind: Kind) -> str:
        """A recombined person name (other kinds have no real pieces to recombine)."""
        if kind != "person":
            raise DataError(f"recombined names exist for people only, not {kind}")
        first = self._firsts[self._names.choice(len(self._firsts))]
        return f"{first} {self._lasts[self._names.choice(len(self._lasts))]}"

    def choice(self, n: int) -> int:
        """A random index below ``n``."""
        return self._names.choice(n)


def load_popqa(datasets: Sequence[str], data_dir: Path | None = None) -> list[QAExample]:
    """PopQA rows of ``datasets``, each question text once (the files share 64 questions)."""
    seen: set[str] = set()
    rows: list[QAExample] = []
    for name in datasets:
        for ex in load_dataset(name, data_dir=data_dir):
            key = normalize_question(ex.question)
            if key not in seen:
                seen.add(key)
                rows.append(ex)
    return rows


def select_real(examples: Sequence[QAExample], config: FabricatedDataConfig) -> list[QAExample]:
    """The most popular questions of each relation (at least ``min_popularity``), in order.

    Within a relation, rows are sorted by popularity (descending, then id); each subject is used
    once.
    """
    by_relation: dict[str, list[QAExample]] = defaultdict(list)
    for ex in examples:
        pop = ex.popularity
        if (
            ex.relation in config.relations
            and pop is not None
            and pop >= config.min_popularity
            and _template(ex) is not None
        ):
            by_relation[ex.relation].append(ex)
    chosen: list[QAExample] = []
    for relation in config.relations:
        rows = sorted(by_relation[relation], key=lambda e: (-(e.popularity or 0.0), e.id))
        subjects: set[str] = set()
        for ex in rows:
            subject = str(ex.metadata["subj"]).casefold()
            if subject in subjects:
                continue
            subjects.add(subject)
            chosen.append(ex)
            if len(subjects) >= config.per_template:
                break
    return chosen


def build_pairs(
    examples: Sequence[QAExample],
    config: FabricatedDataConfig,
    *,
    vocabulary: PopQAVocabulary,
    token_count: Callable[[str], int] | None = None,
    limit: int | None = None,
) -> list[QuestionPair]:
    """Pair each selected real question with a fabricated twin.

    Args:
        examples: PopQA rows (:func:`load_popqa`).
        config: selection and generation settings.
        vocabulary: strings a fabricated name must avoid (every PopQA file, not only the used).
        token_count: tokens of a question in the model's tokenizer; with it the fabricated
            question's length is matched to the real one's as closely as the candidates allow.
        limit: at most this many pairs per template (CI-sized runs; the design is unchanged).

    Raises:
        DataError: no PopQA question qualifies, or no fresh name could be drawn.
    """
    real = select_real(examples, config)
    if limit is not None:
        counts: dict[str, int] = defaultdict(int)
        kept = []
        for ex in real:
            if counts[str(ex.relation)] < limit:
                counts[str(ex.relation)] += 1
                kept.append(ex)
        real = kept
    if not real:
        raise DataError(
            f"no PopQA question of {list(config.relations)} has s_pop >= {config.min_popularity}"
        )
    names: NameGenerator | RecombinedNames = (
        RecombinedNames(examples, config.seed)
        if config.names == "recombined"
        else NameGenerator(config.seed)
    )
    used = {str(ex.metadata["subj"]).casefold() for ex in real}
    pairs: list[QuestionPair] = []
    for index, ex in enumerate(real):
        relation = str(ex.relation)
        template = _template(ex)
        assert template is not None  # select_real kept only templated rows
        kind = TEMPLATE_KINDS[relation]
        candidates: list[str] = []
        for _ in range(config.candidates * 20):
            name = names.make(kind)
            if name.casefold() not in used and not vocabulary.contains(name):
                candidates.append(name)
                if len(candidates) == config.candidates:
                    break
        if not candidates:
            raise DataError(f"could not draw a fresh {kind} name for {ex.question!r}")
        difference: int | None = None
        if token_count is not None:
            target = token_count(ex.question)
            gaps = [abs(token_count(template.format(subject=c)) - target) for c in candidates]
            best = [c for c, g in zip(candidates, gaps, strict=True) if g == min(gaps)]
            fabricated = best[names.choice(len(best))]
            difference = token_count(template.format(subject=fabricated)) - target
        else:
            fabricated = candidates[0]
        used.add(fabricated.casefold())
        pairs.append(
            QuestionPair(
                index=index,
                relation=relation,
                template=template,
                kind=kind,
                real=str(ex.metadata["subj"]),
                fabricated=fabricated,
                real_answers=ex.golden_answers,
                popularity=float(ex.popularity or 0.0),
                source_id=ex.id,
                token_difference=difference,
            )
        )
    return pairs


def pair_rows(pairs: Sequence[QuestionPair]) -> list[dict[str, Any]]:
    """Both questions of every pair as FlashRAG-format rows (real first, then fabricated)."""
    rows = []
    for pair in pairs:
        for is_real in (True, False):
            rows.append(
                {
                    "id": f"pair{pair.index:04d}-{'real' if is_real else 'fabricated'}",
                    "question": pair.real_question if is_real else pair.fabricated_question,
                    "golden_answers": list(pair.real_answers) if is_real else [FABRICATED_ANSWER],
                    "metadata": {
                        "pair": pair.index,
                        "relation": pair.relation,
                        "kind": pair.kind,
                        "subject": pair.real if is_real else pair.fabricated,
                        "real": is_real,
                        "s_pop": pair.popularity if is_real else None,
                        "source_id": pair.source_id,
                        "token_difference": pair.token_difference,
                    },
                }
            )
    return rows
