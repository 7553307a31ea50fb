"""The knowledge base: documents + dense FAISS index + BM25 index, saved and loaded safely.

A base directory holds::

    manifest.json      format version, embedding model and backend, dimension, index, counts,
                       checksums
    documents.jsonl    one document per line; line i is FAISS row i and BM25 document i
    index.faiss        the FAISS index (FAISS binary format)
    bm25/              the BM25 score matrix (.npy, no pickle) and vocabulary (JSON)

Saving writes a sibling temporary directory and renames it into place; loading validates the
manifest, every checksum and every count before the base answers a query, and never re-embeds.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from knowgate._version import __version__
from knowgate.errors import InputError, KnowledgeBaseError
from knowgate.retrieval.config import KnowledgeBaseConfig, SearchMode
from knowgate.retrieval.corpus import IngestReport, Sources, collect_documents
from knowgate.retrieval.dense_index import DenseIndex
from knowgate.retrieval.document_store import read_documents, write_documents
from knowgate.retrieval.documents import Document, Passage
from knowgate.retrieval.embedder import Embedder, canonical_model_id
from knowgate.retrieval.fusion import reciprocal_rank_fusion
from knowgate.retrieval.lexical_index import BM25_REQUIRED_FILES, LexicalIndex
from knowgate.retrieval.manifest import (
    BM25_DIR,
    DOCUMENTS_FILE,
    FORMAT_NAME,
    FORMAT_VERSION,
    INDEX_FILE,
    MANIFEST_NAME,
    IndexRecord,
    Manifest,
    file_record,
    read_manifest,
    verify_files,
    write_manifest,
)

log = logging.getLogger(__name__)

_MODES = ("dense", "bm25", "hybrid")
_REQUIRED_FILES = (DOCUMENTS_FILE, INDEX_FILE, *(f"{BM25_DIR}/{n}" for n in BM25_REQUIRED_FILES))


class KnowledgeBase:
    """A searchable, persistent passage collection.

    Create one with :meth:`build` or :meth:`load`, not with the constructor.
    """

    def __init__(
        self,
        *,
        config: KnowledgeBaseConfig,
        documents: list[Document],
        dense: DenseIndex,
        lexical: LexicalIndex,
        embedder: Embedder,
        created_at: str,
    ) -> None:
        self.config = config
        self._documents = documents
        self._rows = {doc.id: row for row, doc in enumerate(documents)}
        self._dense = dense
        self._lexical = lexical
        self._embedder = embedder
        self._created_at = created_at
        self.last_ingest: IngestReport | None = None
        """What the last :meth:`build` or :meth:`add` read and skipped."""

    # ------------------------------------------------------------------ creation

    @classmethod
    def build(
        cls,
        sources: Sources,
        config: KnowledgeBaseConfig | None = None,
        *,
        progress: bool = True,
        encode: Callable[[list[str]], np.ndarray] | None = None,
    ) -> KnowledgeBase:
        """Embed and index a corpus.

        Args:
            sources: JSONL / JSONL.gz corpus files, text or Markdown files, folders of them,
                and/or :class:`Document` objects.
            config: embedding model, index and splitter settings (defaults if ``None``).
            progress: show progress bars while tokenising and embedding.
            encode: embeds the index texts (in order, one unit vector a text) instead of this
                process's embedder - e.g. on a Ray cluster
                (:func:`knowgate.integrations.ray.embedding.ray_encoder`). It must use
                ``config.embedding_model`` and ``config.embedding_backend``: the base records
                them and embeds queries with them. Everything else (ingest, index, BM25,
                manifest) is the local path's.

        Raises:
            KnowledgeBaseError: no non-empty documents were found, or ``encode`` returned the
                wrong number of vectors.
            DataError: a source is missing or malformed, or an id repeats.
        """
        config = config or KnowledgeBaseConfig()
        # Record the model as an id that means the same thing from any working directory.
        config = config.model_copy(
            update={"embedding_model": canonical_model_id(config.embedding_model)}
        )
        documents, report = collect_documents(sources, config)
        if not documents:
            raise KnowledgeBaseError(
                f"nothing to index: the sources hold no non-empty documents ({report.summary()})"
            )
        embedder = embedder_for(config)
        texts = _index_texts(documents, config)
        if encode is None:
            vectors = embedder.encode(texts, progress=progress)
        else:
            vectors = _checked_vectors(encode(texts), len(texts), embedder.model_id)
        dense = DenseIndex.create(int(vectors.shape[1]), config)
        dense.add(vectors)
        lexical = LexicalIndex.build(
            _index_texts(documents, config), config.bm25, progress=progress
        )
        kb = cls(
            config=config,
            documents=documents,
            dense=dense,
            lexical=lexical,
            embedder=embedder,
            created_at=_now(),
        )
        kb.last_ingest = report
        return kb

    def add(self, sources: Sources, *, progress: bool = True) -> IngestReport:
        """Append documents; the base stays valid and searchable (save it to persist).

        The new documents are embedded and added to the FAISS index (an exact index grows into
        HNSW past ``exact_search_max``, HNSW into IVF-PQ past ``hnsw_max``), and BM25 is
        re-indexed over all documents, since ``bm25s`` cannot add to an index. Ids already in
        the base follow ``on_duplicate``.

        Returns:
            What was added and skipped.
        """
        documents, report = collect_documents(sources, self.config, existing_ids=set(self._rows))
        self.last_ingest = report
        if not documents:
            return report
        vectors = self._encode(_index_texts(documents, self.config), progress=progress)
        all_documents = [*self._documents, *documents]
        lexical = LexicalIndex.build(
            _index_texts(all_documents, self.config), self.config.bm25, progress=progress
        )
        self._dense.add(vectors)
        for row, doc in enumerate(documents, start=len(self._documents)):
            self._rows[doc.id] = row
        self._documents = all_documents
        self._lexical = lexical
        return report

    # ------------------------------------------------------------------ persistence

    def save(self, directory: str | Path) -> None:
        """Write the base to ``directory`` atomically, replacing a base already there.

        Everything is written to a temporary sibling directory, checksummed, and renamed into
        place. Replacing an existing base takes two renames (old out, new in); a crash between
        them leaves the previous base beside the target as ``.NAME.old-*``, never a half-written
        base at the target.

        Raises:
            KnowledgeBaseError: ``directory`` exists and is not a knowledge base (it is not
                overwritten), or writing failed.
        """
        target = Path(directory).expanduser()
        if target.exists():
            if not target.is_dir():
                raise KnowledgeBaseError(f"cannot save to {target}: it exists and is not a folder")
            if any(target.iterdir()) and not (target / MANIFEST_NAME).is_file():
                raise KnowledgeBaseError(
                    f"refusing to save into {target}: the folder is not empty and is not a "
                    "knowledge base"
                )
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
        try:
            self._write(staging)
            _fsync_tree(staging)
            staging.chmod(0o755)  # mkdtemp makes it private; a saved base is an ordinary folder
            _replace_directory(staging, target)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        log.info("saved knowledge base (%d documents) to %s", len(self), target)

    def _write(self, directory: Path) -> None:
        write_documents(directory / DOCUMENTS_FILE, self._documents)
        self._dense.write(directory / INDEX_FILE)
        bm25_paths = self._lexical.save(directory / BM25_DIR)
        paths = [directory / DOCUMENTS_FILE, directory / INDEX_FILE, *bm25_paths]
        files = {p.relative_to(directory).as_posix(): file_record(p) for p in paths}
        dense = self._dense
        hnsw = dense.index_type == "hnsw"
        ivf = dense.ivf_params
        manifest = Manifest(
            format=FORMAT_NAME,
            format_version=FORMAT_VERSION,
            knowgate_version=__version__,
            created_at=self._created_at,
            updated_at=_now(),
            embedding_model_id=self.embedding_model_id,
            embedding_backend=self.config.embedding_backend,
            dimension=self.dimension,
            normalized=True,
            index=IndexRecord(
                type=dense.index_type,
                hnsw_m=self.config.hnsw.m if hnsw else None,
                hnsw_ef_construction=self.config.hnsw.ef_construction if hnsw else None,
                ivf_nlist=ivf[0] if ivf else None,
                pq_m=ivf[1] if ivf else None,
                pq_nbits=ivf[2] if ivf else None,
            ),
            document_count=len(self),
            config=self.config.model_dump(mode="json"),
            files=files,
        )
        write_manifest(directory, manifest)

    @classmethod
    def load(
        cls, directory: str | Path, config: KnowledgeBaseConfig | None = None
    ) -> KnowledgeBase:
        """Open a saved base, validating it completely before use.

        Args:
            directory: a folder written by :meth:`save`.
            config: runtime settings (mode, fusion, device, ...). ``None`` uses the settings the
                base was built with. Its embedding model must be the base's; index-defining
                settings (titles, embedding backend, BM25 and HNSW graph parameters) are taken
                from the base.

        Raises:
            KnowledgeBaseError: the manifest is missing, malformed or of an unknown version; a
                file is missing or fails its checksum; counts or dimensions disagree; or the
                configured embedding model is not the one the base was built with.
        """
        directory = Path(directory).expanduser()
        manifest = read_manifest(directory)
        verify_files(directory, manifest, _REQUIRED_FILES)
        saved = _saved_config(directory, manifest)
        config = _effective_config(saved, config, manifest, directory)

        dense = DenseIndex.read(directory / INDEX_FILE, config)
        if dense.dimension != manifest.dimension:
            raise KnowledgeBaseError(
                f"{directory}: the FAISS index has dimension {dense.dimension} but the manifest "
                f"says {manifest.dimension}; the base is inconsistent, rebuild it"
            )
        if dense.index_type != manifest.index.type:
            raise KnowledgeBaseError(
                f"{directory}: the FAISS index is {dense.index_type} but the manifest says "
                f"{manifest.index.type}"
            )
        recorded = (manifest.index.ivf_nlist, manifest.index.pq_m, manifest.index.pq_nbits)
        if dense.ivf_params is not None and dense.ivf_params != recorded:
            raise KnowledgeBaseError(
                f"{directory}: the IVF-PQ index has (nlist, m, nbits) {dense.ivf_params} but the "
                f"manifest says {recorded}; the base is inconsistent, rebuild it"
            )
        documents = read_documents(directory / DOCUMENTS_FILE)
        lexical = LexicalIndex.load(directory / BM25_DIR, config.bm25)
        counts = {
            DOCUMENTS_FILE: len(documents),
            INDEX_FILE: len(dense),
            BM25_DIR: len(lexical),
        }
        for name, count in counts.items():
            if count != manifest.document_count:
                raise KnowledgeBaseError(
                    f"{directory}: {name} holds {count} documents but the manifest says "
                    f"{manifest.document_count}; the base is inconsistent, rebuild it"
                )
        embedder = embedder_for(config)
        kb = cls(
            config=config,
            documents=documents,
            dense=dense,
            lexical=lexical,
            embedder=embedder,
            created_at=manifest.created_at,
        )
        if embedder.is_loaded:  # cheap now; otherwise checked on the first embedding
            kb._check_dimension(embedder.dimension)
        return kb

    # ------------------------------------------------------------------ search

    def search(self, query: str, k: int = 5, *, mode: SearchMode | None = None) -> list[Passage]:
        """The ``k`` best passages for ``query``, best first.

        Args:
            query: the question or search text.
            k: how many passages (fewer when the base is smaller, or when BM25 finds fewer
                documents sharing a term with the query).
            mode: override the configured mode for this call.

        Raises:
            InputError: the query is empty or not a string, or ``k`` is not a positive integer.
        """
        return self.search_batch([query], k, mode=mode)[0]

    def search_batch(
        self, queries: Sequence[str], k: int = 5, *, mode: SearchMode | None = None
    ) -> list[list[Passage]]:
        """:meth:`search` for many queries, embedding them in batches (much faster per query)."""
        if isinstance(queries, str):
            raise InputError("search_batch takes a list of queries; use search() for one")
        for i, query in enumerate(queries):
            if not isinstance(query, str) or not query.strip():
                raise InputError(f"query {i} is empty or not a string: {query!r}")
        if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
            raise InputError(f"k must be a positive integer, got {k!r}")
        mode = mode or self.config.mode
        if mode not in _MODES:
            raise InputError(f"unknown search mode {mode!r}; expected one of {', '.join(_MODES)}")
        if not queries:
            return []
        k = int(k)
        depth = max(k, self.config.fusion_depth) if mode == "hybrid" else k
        dense = self._dense_search(queries, depth) if mode != "bm25" else None
        lexical = self._lexical.search(queries, depth) if mode != "dense" else None
        results: list[list[Passage]] = []
        for i in range(len(queries)):
            if mode == "dense":
                assert dense is not None
                hits = dense[i][:k]
            elif mode == "bm25":
                assert lexical is not None
                hits = lexical[i][:k]
            else:
                assert dense is not None and lexical is not None
                hits = reciprocal_rank_fusion(
                    [[row for row, _ in dense[i]], [row for row, _ in lexical[i]]],
                    k,
                    rrf_k=self.config.rrf_k,
                )
            results.append(
                [self._passage(row, score, rank) for rank, (row, score) in enumerate(hits, start=1)]
            )
        return results

    # ------------------------------------------------------------------ inspection

    @property
    def embedding_model_id(self) -> str:
        """The embedding model the vectors came from."""
        return self._embedder.model_id

    @property
    def dimension(self) -> int:
        """Length of the embedding vectors."""
        return self._dense.dimension

    @property
    def index_type(self) -> str:
        """``flat`` (exact), ``hnsw`` or ``ivf_pq`` (chosen by size, see ``DenseIndex``)."""
        return self._dense.index_type

    @property
    def documents(self) -> Sequence[Document]:
        """All documents, in index order (read-only view)."""
        return tuple(self._documents)

    def get(self, doc_id: str) -> Document | None:
        """The document with id ``doc_id``, or ``None``."""
        row = self._rows.get(doc_id)
        return None if row is None else self._documents[row]

    def __len__(self) -> int:
        return len(self._documents)

    def __contains__(self, doc_id: object) -> bool:
        return doc_id in self._rows

    def __repr__(self) -> str:
        return (
            f"KnowledgeBase({len(self)} documents, model={self.embedding_model_id!r}, "
            f"dim={self.dimension}, index={self.index_type}, mode={self.config.mode})"
        )

    def describe(self) -> dict[str, Any]:
        """A summary for ``knowgate index info``."""
        return {
            "documents": len(self),
            "embedding_model_id": self.embedding_model_id,
            "embedding_backend": self.config.embedding_backend,
            "dimension": self.dimension,
            "normalized": True,
            "index_type": self.index_type,
            "hnsw": self.config.hnsw.model_dump() if self.index_type == "hnsw" else None,
            "ivf_pq": self.config.ivf_pq.model_dump() if self.index_type == "ivf_pq" else None,
            "mode": self.config.mode,
            "bm25": self.config.bm25.model_dump(),
            "created_at": self._created_at,
        }

    # ------------------------------------------------------------------ internals

    def _encode(self, texts: list[str], *, progress: bool = False) -> np.ndarray:
        vectors = self._embedder.encode(texts, progress=progress)
        self._check_dimension(int(vectors.shape[1]))
        return vectors

    def _check_dimension(self, model_dimension: int) -> None:
        if model_dimension != self.dimension:
            raise KnowledgeBaseError(
                f"embedding model {self.embedding_model_id!r} produces vectors of dimension "
                f"{model_dimension}, but the knowledge base holds vectors of dimension "
                f"{self.dimension}; the model changed since the base was built: rebuild the base"
            )

    def _dense_search(self, queries: Sequence[str], depth: int) -> list[list[tuple[int, float]]]:
        vectors = self._encode(list(queries))
        scores, ids = self._dense.search(vectors, depth)
        return [
            [(int(r), float(s)) for r, s in zip(row_ids, row_scores, strict=True) if r >= 0]
            for row_ids, row_scores in zip(ids, scores, strict=True)
        ]

    def _passage(self, row: int, score: float, rank: int) -> Passage:
        doc = self._documents[row]
        return Passage(doc.id, doc.title, doc.text, float(score), rank, doc.metadata)


def _index_texts(documents: Sequence[Document], config: KnowledgeBaseConfig) -> list[str]:
    """What gets embedded and BM25-indexed: the title (unless the text starts with it) + text."""
    if not config.index_titles:
        return [doc.text for doc in documents]
    return [
        doc.text if not doc.title or doc.text.startswith(doc.title) else f"{doc.title}\n{doc.text}"
        for doc in documents
    ]


def _checked_vectors(vectors: np.ndarray, count: int, model_id: str) -> np.ndarray:
    """Vectors from an outside encoder: one finite row a text, as float32."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if vectors.ndim != 2 or len(vectors) != count:
        raise KnowledgeBaseError(
            f"the encoder returned vectors of shape {vectors.shape} for {count} texts "
            f"(embedding model {model_id!r}); expected one row a text"
        )
    return vectors


def embedder_for(config: KnowledgeBaseConfig) -> Embedder:
    """The embedder a base with ``config`` uses (model, device, batch size, downloads)."""
    return Embedder(
        config.embedding_model,
        device=config.device,
        batch_size=config.batch_size,
        allow_download=config.allow_download,
        backend=config.embedding_backend,
    )


def _saved_config(directory: Path, manifest: Manifest) -> KnowledgeBaseConfig:
    try:
        return KnowledgeBaseConfig.model_validate(manifest.config)
    except ValueError as exc:
        raise KnowledgeBaseError(
            f"{directory / MANIFEST_NAME}: the recorded configuration is invalid: {exc}"
        ) from exc


def _effective_config(
    saved: KnowledgeBaseConfig,
    requested: KnowledgeBaseConfig | None,
    manifest: Manifest,
    directory: Path,
) -> KnowledgeBaseConfig:
    """Runtime settings from ``requested``; index-defining ones from the base."""
    if canonical_model_id(saved.embedding_model) != manifest.embedding_model_id:
        raise KnowledgeBaseError(
            f"{directory / MANIFEST_NAME}: embedding_model_id {manifest.embedding_model_id!r} "
            f"disagrees with the recorded configuration ({saved.embedding_model!r}); the manifest "
            "was edited or is corrupt"
        )
    if saved.embedding_backend != manifest.embedding_backend:
        raise KnowledgeBaseError(
            f"{directory / MANIFEST_NAME}: embedding_backend {manifest.embedding_backend!r} "
            f"disagrees with the recorded configuration ({saved.embedding_backend!r}); the "
            "manifest was edited or is corrupt"
        )
    if requested is None:
        return saved
    wanted = canonical_model_id(requested.embedding_model)
    if wanted != manifest.embedding_model_id:
        raise KnowledgeBaseError(
            f"knowledge base {directory} was built with embedding model "
            f"{manifest.embedding_model_id!r}, but the configuration asks for {wanted!r}. "
            "Query vectors from another model are meaningless against this index: rebuild the "
            f"base with {wanted!r}, or configure embedding_model: {manifest.embedding_model_id!r}."
        )
    hnsw = requested.hnsw.model_copy(
        update={"m": saved.hnsw.m, "ef_construction": saved.hnsw.ef_construction}
    )
    ivf_pq = requested.ivf_pq.model_copy(
        update={"nlist": saved.ivf_pq.nlist, "m": saved.ivf_pq.m, "nbits": saved.ivf_pq.nbits}
    )
    if requested.embedding_backend != saved.embedding_backend:
        log.warning(
            "%s was built with embedding_backend %r but the configuration asks for %r; queries "
            "are embedded with %r, as the base was, because the backends' vectors differ "
            "slightly (rebuild the base to change backend)",
            directory,
            saved.embedding_backend,
            requested.embedding_backend,
            saved.embedding_backend,
        )
    effective = requested.model_copy(
        update={
            "embedding_backend": saved.embedding_backend,
            "index_titles": saved.index_titles,
            "bm25": saved.bm25,
            "hnsw": hnsw,
            "ivf_pq": ivf_pq,
        }
    )
    differing = [
        name
        for name, ours, theirs in (
            ("index_titles", requested.index_titles, saved.index_titles),
            ("bm25", requested.bm25, saved.bm25),
            ("hnsw.m", requested.hnsw.m, saved.hnsw.m),
            ("hnsw.ef_construction", requested.hnsw.ef_construction, saved.hnsw.ef_construction),
            ("ivf_pq.nlist", requested.ivf_pq.nlist, saved.ivf_pq.nlist),
            ("ivf_pq.m", requested.ivf_pq.m, saved.ivf_pq.m),
            ("ivf_pq.nbits", requested.ivf_pq.nbits, saved.ivf_pq.nbits),
        )
        if ours != theirs
    ]
    if differing:
        log.warning(
            "%s: index-defining settings %s differ from the configuration; the base's values "
            "are used (rebuild to change them)",
            directory,
            ", ".join(differing),
        )
    return effective


def _replace_directory(staging: Path, target: Path) -> None:
    if not target.exists():
        os.rename(staging, target)
        return
    old = target.with_name(f".{target.name}.old-{uuid.uuid4().hex[:8]}")
    os.rename(target, old)
    try:
        os.rename(staging, target)
    except OSError:
        os.rename(old, target)
        raise
    shutil.rmtree(old, ignore_errors=True)


def _fsync_tree(directory: Path) -> None:
    """Flush file contents to disk before the rename makes them visible."""
    for path in sorted(directory.rglob("*")):
        if path.is_file():
            with path.open("rb") as fh:
                os.fsync(fh.fileno())


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
