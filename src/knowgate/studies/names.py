"""Seeded generators of plausible names for things that do not exist.

Fabricated people, places and titles stand in for real entities in identical question templates
(the real-vs-fabricated study) and name the fictional people whose facts a model is taught (the
taught-facts study). Names are built from syllables and word lists with a numpy generator, so a
seed always gives the same names. Nothing here guarantees that a name is unknown to the world;
callers filter against the real data they compare with (PopQA).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import numpy as np

Kind = Literal["person", "city", "country", "title"]
KINDS: tuple[Kind, ...] = ("person", "city", "country", "title")

FIRST_NAMES = (
    "Adele", "Ahmed", "Aiko", "Alma", "Anders", "Anton", "Beatrix", "Bruno", "Camille", "Carlos",
    "Celia", "Dario", "Dmitri", "Edith", "Elena", "Emil", "Farah", "Felix", "Greta", "Hana",
    "Hector", "Ingrid", "Ivan", "Jonas", "Julia", "Kasper", "Kenji", "Lars", "Leona", "Lucia",
    "Magnus", "Marta", "Matteo", "Mira", "Nadia", "Nils", "Oskar", "Paula", "Petra", "Rafael",
    "Rosa", "Samir", "Sofia", "Stefan", "Tamara", "Tomas", "Ursula", "Viktor", "Yara", "Zoran",
    "Agnes", "Boris", "Clara", "Dora", "Erik", "Flora", "Gustav", "Helga", "Igor", "Jana",
    "Karl", "Lena", "Milan", "Nora", "Otto", "Pia", "Rolf", "Selma", "Teodor", "Vera",
)  # fmt: skip
_ONSETS = (
    "b", "br", "c", "d", "dr", "f", "g", "gr", "h", "k", "kr", "l", "m", "n", "p", "pr", "r",
    "s", "st", "t", "tr", "v", "w", "z", "th", "sh", "bl", "pl", "fr", "qu",
)  # fmt: skip
_VOWELS = ("a", "e", "i", "o", "u", "a", "e", "o", "ai", "ea", "ou", "ie")
_CODAS = ("", "", "n", "r", "l", "s", "m", "nd", "rt", "ck", "ld", "rn", "st", "v", "z")
_SURNAME_ENDINGS = (
    "son", "ley", "ton", "ford", "wick", "er", "ini", "ova", "ez", "berg", "sky", "ard", "ell",
    "ane", "ham", "quist", "ovic", "aro", "elli", "mann",
)  # fmt: skip
_CITY_ENDINGS = (
    "ford", "holm", "ville", "burg", "stad", "mouth", "bridge", "field", "grad", "ona", "heim",
    "dale", "port", "wick", "ino", "ach",
)  # fmt: skip
_COUNTRY_ENDINGS = ("ia", "stan", "land", "ora", "ovia", "eria", "any", "ador", "istan", "onia")
_ADJECTIVES = (
    "Silent", "Hollow", "Crimson", "Distant", "Broken", "Golden", "Quiet", "Burning", "Hidden",
    "Last", "Frozen", "Wandering", "Velvet", "Iron", "Paper", "Bitter", "Restless", "Pale",
    "Northern", "Secret", "Winter", "Glass", "Lonely", "Wild", "Forgotten", "Shallow", "Copper",
)  # fmt: skip
_NOUNS = (
    "Harbor", "Orchard", "Lantern", "River", "Garden", "Mirror", "Tide", "Bridge", "Letter",
    "Meadow", "Stranger", "Crown", "Summer", "Signal", "Archive", "Compass", "Island", "Engine",
    "Shadow", "Window", "Season", "Voyage", "Kingdom", "Theory", "Passage", "Festival", "Hours",
    "Valley", "Promise", "Chorus", "Cathedral", "Frontier", "Ledger", "Dunes", "Ember",
)  # fmt: skip


class NameGenerator:
    """Plausible invented names of each :data:`Kind`, reproducible from a seed."""

    def __init__(self, seed: int) -> None:
        """Start a generator; the same seed yields the same sequence of names."""
        self._rng = np.random.default_rng(seed)

    def _pick(self, options: tuple[str, ...]) -> str:
        return options[int(self._rng.integers(len(options)))]

    def _syllable(self) -> str:
        return self._pick(_ONSETS) + self._pick(_VOWELS) + self._pick(_CODAS)

    def _stem(self, syllables: int) -> str:
        return "".join(self._syllable() for _ in range(syllables))

    def surname(self) -> str:
        """An invented surname: one or two syllables and a common surname ending."""
        return (self._stem(int(self._rng.integers(1, 3))) + self._pick(_SURNAME_ENDINGS)).title()

    def person(self) -> str:
        """A real first name and an invented surname (``Marta Drellquist``)."""
        return f"{self._pick(FIRST_NAMES)} {self.surname()}"

    def city(self) -> str:
        """An invented town name (``Kelvaford``)."""
        return (self._stem(int(self._rng.integers(1, 3))) + self._pick(_CITY_ENDINGS)).title()

    def country(self) -> str:
        """An invented country or region name (``Brastovia``)."""
        return (self._stem(int(self._rng.integers(1, 3))) + self._pick(_COUNTRY_ENDINGS)).title()

    def title(self) -> str:
        """An invented title of a film, book or work, in one of several common shapes."""
        shape = int(self._rng.integers(6))
        adjective, noun = self._pick(_ADJECTIVES), self._pick(_NOUNS)
        if shape == 0:
            return f"The {adjective} {noun}"
        if shape == 1:
            return f"{noun} of {self.city()}"
        if shape == 2:
            return f"{adjective} {noun}"
        if shape == 3:
            return f"The {noun} of {self.surname()}"
        if shape == 4:
            return self.city()
        return f"{self.surname()}'s {noun}"

    def make(self, kind: Kind) -> str:
        """One name of ``kind``."""
        maker: dict[str, Callable[[], str]] = {
            "person": self.person,
            "city": self.city,
            "country": self.country,
            "title": self.title,
        }
        return maker[kind]()

    def choice(self, n: int) -> int:
        """A random index below ``n`` (tie-breaking for callers that share this generator)."""
        return int(self._rng.integers(n))
