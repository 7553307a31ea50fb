"""Shared, cached objects for the retrieval tests (this module holds no tests).

Everything here is built once per test session: the embedding model itself is cached by
``knowgate.retrieval.embedder``, and the tiny knowledge base by ``lru_cache``.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

from knowgate.retrieval import Document, KnowledgeBase, KnowledgeBaseConfig

TINY_DOCS = (
    Document("paris", "Paris", "Paris is the capital and largest city of France."),
    Document("berlin", "Berlin", "Berlin is the capital of Germany and its largest city."),
    Document(
        "python",
        "Python (programming language)",
        "Python is a programming language created by Guido van Rossum in 1991.",
    ),
    Document(
        "photosynthesis",
        "Photosynthesis",
        "Plants turn sunlight, water and carbon dioxide into sugar and oxygen.",
    ),
    Document(
        "everest",
        "Mount Everest",
        "Mount Everest, in the Himalayas, is Earth's highest mountain above sea level.",
    ),
    Document(
        "mozart",
        "Wolfgang Amadeus Mozart",
        "Mozart was a prolific composer of the Classical period, born in Salzburg.",
    ),
    Document(
        "jupiter",
        "Jupiter",
        "Jupiter is the fifth planet from the Sun and the largest in the Solar System.",
    ),
    Document(
        "insulin",
        "Insulin",
        "Insulin is a hormone made by the pancreas that regulates blood sugar.",
    ),
)


@lru_cache(maxsize=1)
def tiny_kb() -> KnowledgeBase:
    """A knowledge base over :data:`TINY_DOCS` with the default (packaged) embedding model.

    Tests must not mutate it: they call :func:`fresh_tiny_kb` or save and load a copy.
    """
    return KnowledgeBase.build(list(TINY_DOCS), KnowledgeBaseConfig(), progress=False)


def fresh_tiny_kb(config: KnowledgeBaseConfig | None = None) -> KnowledgeBase:
    """A new base over :data:`TINY_DOCS` that a test may change (the model stays cached)."""
    return KnowledgeBase.build(list(TINY_DOCS), config or KnowledgeBaseConfig(), progress=False)


def projected_model_dir(directory: Path, out_dim: int) -> Path:
    """A real sentence-transformers model: all-MiniLM-L6-v2 plus a random Dense projection.

    The transformer files are symlinked from the packaged model (no copy of the weights); only
    the small Dense layer is written. Removing the Dense layer from ``modules.json`` (see
    :func:`drop_projection`) changes the model's dimension in place.
    """
    import torch
    from sentence_transformers.sentence_transformer.modules import Dense

    from knowgate.retrieval.embedder import packaged_model_dir

    source = packaged_model_dir()
    directory.mkdir(parents=True)
    for path in source.iterdir():
        if path.name != "modules.json":
            (directory / path.name).symlink_to(path)
    torch.manual_seed(0)
    dense = Dense(384, out_dim)
    (directory / "2_Dense").mkdir()
    dense.save(str(directory / "2_Dense"))
    modules = json.loads((source / "modules.json").read_text())
    modules = [m for m in modules if not m["type"].endswith("Normalize")]
    modules.append(
        {"idx": 2, "name": "2", "path": "2_Dense", "type": f"{type(dense).__module__}.Dense"}
    )
    (directory / "modules.json").write_text(json.dumps(modules))
    return directory


def drop_projection(directory: Path) -> None:
    """Turn a :func:`projected_model_dir` model back into plain 384-dimensional MiniLM."""
    modules = json.loads((directory / "modules.json").read_text())
    modules = [m for m in modules if m["path"] != "2_Dense"]
    (directory / "modules.json").write_text(json.dumps(modules))
