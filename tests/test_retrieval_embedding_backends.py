"""The embedding backend setting: validation, the manifest, and ONNX against torch.

The ONNX tests export the packaged all-MiniLM-L6-v2 once per session into a temporary cache
(about half a minute on two cores), so they are marked slow.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from knowgate.checkpoint_cache import CACHE_ENV_VAR
from knowgate.errors import ConfigError, KnowledgeBaseError, MissingPackageError
from knowgate.retrieval import KnowledgeBase, KnowledgeBaseConfig
from knowgate.retrieval.embedder import Embedder
from test_retrieval_support import TINY_DOCS

DIMENSION = 384  # all-MiniLM-L6-v2's, so a session that has loaded the model can load these bases


def random_unit_vectors(texts: list[str]) -> np.ndarray:
    """Stand-in embeddings: the manifest tests need vectors, not meaningful ones."""
    vectors = np.random.default_rng(0).normal(size=(len(texts), DIMENSION)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def saved_base(directory: Path, backend: str) -> Path:
    config = KnowledgeBaseConfig(embedding_backend=backend, mode="bm25")
    kb = KnowledgeBase.build(list(TINY_DOCS), config, progress=False, encode=random_unit_vectors)
    kb.save(directory)
    return directory


def read_manifest_json(directory: Path) -> dict:
    return json.loads((directory / "manifest.json").read_text())


def write_manifest_json(directory: Path, data: dict) -> None:
    (directory / "manifest.json").write_text(json.dumps(data))


# ---------------------------------------------------------------------------- the setting


def test_backend_defaults_to_torch_and_accepts_the_onnx_backends() -> None:
    assert KnowledgeBaseConfig().embedding_backend == "torch"
    for backend in ("torch", "onnx", "onnx-int8"):
        assert KnowledgeBaseConfig(embedding_backend=backend).embedding_backend == backend


def test_unknown_backend_is_a_config_error_naming_the_field() -> None:
    with pytest.raises(ConfigError, match="embedding_backend"):
        KnowledgeBaseConfig.from_dict({"embedding_backend": "tensorrt"})


def test_onnx_backend_on_a_gpu_device_is_rejected() -> None:
    with pytest.raises(ConfigError, match="CPU only"):
        KnowledgeBaseConfig.from_dict({"embedding_backend": "onnx", "device": "cuda"})
    assert KnowledgeBaseConfig(embedding_backend="onnx", device=None).device is None
    assert KnowledgeBaseConfig(embedding_backend="torch", device="cuda").device == "cuda"


# ---------------------------------------------------------------------------- the manifest


def test_backend_round_trips_through_the_manifest(tmp_path: Path) -> None:
    directory = saved_base(tmp_path / "kb", "onnx-int8")
    manifest = read_manifest_json(directory)
    assert manifest["embedding_backend"] == "onnx-int8"
    assert manifest["config"]["embedding_backend"] == "onnx-int8"
    kb = KnowledgeBase.load(directory)
    assert kb.config.embedding_backend == "onnx-int8"
    assert kb.describe()["embedding_backend"] == "onnx-int8"


def test_loading_with_another_backend_warns_and_keeps_the_bases(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    directory = saved_base(tmp_path / "kb", "onnx")
    with caplog.at_level(logging.WARNING, logger="knowgate.retrieval.knowledge_base"):
        kb = KnowledgeBase.load(directory, KnowledgeBaseConfig(embedding_backend="torch"))
    assert kb.config.embedding_backend == "onnx"
    assert "embedding_backend 'onnx'" in caplog.text
    assert "asks for 'torch'" in caplog.text


def test_loading_with_the_same_backend_does_not_warn(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    directory = saved_base(tmp_path / "kb", "onnx")
    with caplog.at_level(logging.WARNING, logger="knowgate.retrieval.knowledge_base"):
        KnowledgeBase.load(directory, KnowledgeBaseConfig(embedding_backend="onnx", mode="bm25"))
    assert "embedding_backend" not in caplog.text


@pytest.mark.parametrize(
    ("edited", "message"),
    [
        ("torch", "embedding_backend 'torch' disagrees"),  # valid, but not the config's
        ("tensorrt", "invalid manifest.*embedding_backend"),  # not a backend at all
    ],
)
def test_edited_manifest_backend_is_reported(tmp_path: Path, edited: str, message: str) -> None:
    directory = saved_base(tmp_path / "kb", "onnx")
    data = read_manifest_json(directory)
    data["embedding_backend"] = edited
    write_manifest_json(directory, data)
    with pytest.raises(KnowledgeBaseError, match=message):
        KnowledgeBase.load(directory)


def test_base_saved_before_the_setting_existed_reads_as_torch(tmp_path: Path) -> None:
    directory = saved_base(tmp_path / "kb", "torch")
    data = read_manifest_json(directory)
    del data["embedding_backend"]
    del data["config"]["embedding_backend"]
    write_manifest_json(directory, data)
    assert KnowledgeBase.load(directory).config.embedding_backend == "torch"


# ---------------------------------------------------------------------------- missing extra


def test_missing_onnxruntime_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # makes `import onnxruntime` fail
    embedder = Embedder("all-MiniLM-L6-v2", backend="onnx")
    with pytest.raises(MissingPackageError, match=r"pip install 'knowgate\[onnx\]'"):
        embedder.encode(["a question"])


def test_missing_exporter_names_the_extra(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    monkeypatch.setenv(CACHE_ENV_VAR, str(tmp_path))  # an empty cache: the export must run
    monkeypatch.setitem(sys.modules, "onnxscript", None)
    embedder = Embedder("all-MiniLM-L6-v2", backend="onnx")
    with pytest.raises(
        MissingPackageError, match=r"(?s)'onnxscript'.*pip install 'knowgate\[onnx\]'"
    ):
        embedder.encode(["a question"])


# ---------------------------------------------------------------------------- ONNX against torch

# Each query is written to be answered by exactly one of TINY_DOCS (its id on the right), so
# the expected neighbour is known without running any embedder.
LABELLED_QUERIES = (
    ("What is the capital of France?", "paris"),
    ("Which city is Germany's capital?", "berlin"),
    ("Who created the Python programming language?", "python"),
    ("How do plants make sugar from sunlight?", "photosynthesis"),
    ("What is the highest mountain on Earth?", "everest"),
    ("Which composer was born in Salzburg?", "mozart"),
    ("What is the largest planet in the Solar System?", "jupiter"),
    ("Which hormone regulates blood sugar?", "insulin"),
)

# Texts of every kind the knowledge base embeds: a one-character text, a question, a passage,
# and one past the model's 256-token limit (truncated by the tokenizer).
VARIED_TEXTS = [
    "x",
    "Who was the composer of Easy Living?",
    TINY_DOCS[2].text,
    " ".join(["The quick brown fox jumps over the lazy dog."] * 60),
]


@pytest.fixture(scope="module")
def onnx_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A private export cache for this module's ONNX tests (exports once, reused by each)."""
    pytest.importorskip("onnxruntime")
    cache = tmp_path_factory.mktemp("onnx-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(CACHE_ENV_VAR, str(cache))
        yield cache


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.mark.slow
def test_onnx_embeddings_equal_torch_to_rounding(onnx_cache: Path) -> None:
    """The float32 export computes the same function as torch, with other kernels.

    Their results differ by float32 rounding (relative 1e-6 per operation), so the cosine of
    the two embeddings of a text is 1 to about six digits; 0.9999 leaves a wide margin, and is
    far above what a wrong export gives (a mis-traced attention mask puts padded texts' cosines
    below 0.9).
    """
    torch_vectors = Embedder("all-MiniLM-L6-v2").encode(VARIED_TEXTS)
    onnx_vectors = Embedder("all-MiniLM-L6-v2", backend="onnx").encode(VARIED_TEXTS)
    assert onnx_vectors.shape == (len(VARIED_TEXTS), DIMENSION)
    np.testing.assert_allclose(np.linalg.norm(onnx_vectors, axis=1), 1.0, atol=1e-5)
    assert cosines(onnx_vectors, torch_vectors).min() > 0.9999


@pytest.mark.slow
def test_onnx_int8_embeddings_stay_close_to_torch(onnx_cache: Path) -> None:
    """int8 weights carry a rounding error of up to half a quantisation step (1/254 of a
    channel's range); through six layers that moves an embedding by a few degrees, a cosine
    near 0.99. 0.97 (about 14 degrees) allows for that and still fails a broken quantisation,
    which scatters the vectors.
    """
    torch_vectors = Embedder("all-MiniLM-L6-v2").encode(VARIED_TEXTS)
    int8_vectors = Embedder("all-MiniLM-L6-v2", backend="onnx-int8").encode(VARIED_TEXTS)
    np.testing.assert_allclose(np.linalg.norm(int8_vectors, axis=1), 1.0, atol=1e-5)
    assert cosines(int8_vectors, torch_vectors).min() > 0.97


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["onnx", "onnx-int8"])
def test_onnx_base_finds_the_labelled_neighbours(
    onnx_cache: Path, backend: str, tmp_path: Path
) -> None:
    """Same top-1 as torch, the hand-labelled passage, for all eight queries; the float32
    export also keeps torch's top 3 (in order), since its scores agree to rounding."""
    questions = [q for q, _ in LABELLED_QUERIES]
    torch_kb = KnowledgeBase.build(
        list(TINY_DOCS), KnowledgeBaseConfig(mode="dense"), progress=False
    )
    config = KnowledgeBaseConfig(mode="dense", embedding_backend=backend)
    KnowledgeBase.build(list(TINY_DOCS), config, progress=False).save(tmp_path / "kb")
    onnx_kb = KnowledgeBase.load(tmp_path / "kb")  # queries are embedded with the saved backend
    assert onnx_kb.config.embedding_backend == backend
    torch_hits = torch_kb.search_batch(questions, k=3)
    onnx_hits = onnx_kb.search_batch(questions, k=3)
    for (question, expected), ours, theirs in zip(
        LABELLED_QUERIES, onnx_hits, torch_hits, strict=True
    ):
        assert ours[0].id == expected == theirs[0].id, question
        if backend == "onnx":
            assert [p.id for p in ours] == [p.id for p in theirs], question


@pytest.mark.slow
def test_damaged_export_is_rebuilt(onnx_cache: Path) -> None:
    reference = Embedder("all-MiniLM-L6-v2", backend="onnx-int8").encode(VARIED_TEXTS)
    [exported] = [
        path
        for path in (onnx_cache / "embeddings").glob("*/model.onnx")
        if path.stat().st_size < 80 * 2**20  # the int8 file (the float32 one is ~87 MiB)
    ]
    size = exported.stat().st_size
    with exported.open("r+b") as fh:  # truncate to half: a crash mid-write
        fh.truncate(size // 2)
    again = Embedder("all-MiniLM-L6-v2", backend="onnx-int8").encode(VARIED_TEXTS)
    assert exported.stat().st_size == size
    np.testing.assert_array_equal(again, reference)
