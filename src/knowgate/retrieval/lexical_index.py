"""BM25 over the same documents as the dense index, via ``bm25s`` (Lù 2024).

``bm25s`` precomputes a sparse document-term score matrix, so a query is a sparse lookup and a
sum: milliseconds for corpora of this size. It has no incremental add, so an append re-indexes
all documents; tokenising ten thousand passages takes about a second. The matrix is saved as
``.npy`` arrays (loaded with ``allow_pickle=False``) and the vocabulary as JSON.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from knowgate.errors import KnowledgeBaseError
from knowgate.retrieval.config import Bm25Config

if TYPE_CHECKING:
    import bm25s

#: Files every saved BM25 index has (BM25L and BM25+ add a non-occurrence array).
BM25_REQUIRED_FILES = (
    "data.csc.index.npy",
    "indices.csc.index.npy",
    "indptr.csc.index.npy",
    "vocab.index.json",
    "params.index.json",
)


class LexicalIndex:
    """A BM25 index whose document ``i`` is document ``i`` of the knowledge base.

    Args:
        retriever: the ``bm25s`` index.
        config: the parameters it was built with (query tokenisation must match).
    """

    def __init__(self, retriever: bm25s.BM25, config: Bm25Config) -> None:
        self.retriever = retriever
        self.config = config

    @classmethod
    def build(cls, texts: Sequence[str], config: Bm25Config, *, progress: bool) -> LexicalIndex:
        """Tokenise and index ``texts``."""
        import bm25s

        tokens = bm25s.tokenize(
            list(texts), stopwords=_stopwords(config), show_progress=progress, leave=False
        )
        retriever = bm25s.BM25(k1=config.k1, b=config.b, method=config.method)
        retriever.index(tokens, show_progress=progress, leave_progress=False)
        return cls(retriever, config)

    def __len__(self) -> int:
        return int(self.retriever.scores["num_docs"])

    def search(self, queries: Sequence[str], k: int) -> list[list[tuple[int, float]]]:
        """Top-``k`` ``(row, score)`` per query; documents sharing no term with it are left out."""
        import bm25s

        k = max(1, min(k, len(self)))
        tokenized = bm25s.tokenize(
            list(queries), stopwords=_stopwords(self.config), return_ids=False, show_progress=False
        )
        results: list[list[tuple[int, float]]] = [[] for _ in queries]
        # bm25s needs at least one token per query; an all-stopword query matches nothing.
        rows = [i for i, toks in enumerate(tokenized) if toks]
        if not rows:
            return results
        ids, scores = self.retriever.retrieve(
            [tokenized[i] for i in rows], k=k, show_progress=False, n_threads=1
        )
        for row, doc_ids, doc_scores in zip(rows, ids, scores, strict=True):
            results[row] = [
                (int(d), float(s)) for d, s in zip(doc_ids, doc_scores, strict=True) if s > 0
            ]
        return results

    def save(self, directory: Path) -> list[Path]:
        """Write the index files into ``directory`` (no corpus copy); returns their paths."""
        directory.mkdir(parents=True, exist_ok=True)
        self.retriever.save(str(directory), allow_pickle=False, show_progress=False)
        for copy in ("corpus.jsonl", "corpus.mmindex.json"):  # never written without a corpus
            (directory / copy).unlink(missing_ok=True)
        return sorted(p for p in directory.iterdir() if p.is_file())

    @classmethod
    def load(cls, directory: Path, config: Bm25Config) -> LexicalIndex:
        """Load an index saved by :meth:`save` (no pickle)."""
        import bm25s

        try:
            retriever = bm25s.BM25.load(
                str(directory), allow_pickle=False, mmap=False, show_progress=False
            )
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise KnowledgeBaseError(f"{directory}: unreadable BM25 index: {exc}") from exc
        if not isinstance(retriever.scores.get("data"), np.ndarray):
            raise KnowledgeBaseError(f"{directory}: BM25 index has no score matrix")
        return cls(retriever, config)


def _stopwords(config: Bm25Config) -> str | list[str]:
    return "en" if config.stopwords == "en" else []
