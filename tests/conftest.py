"""Shared fixtures: real models are loaded once per test session."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The shared evaluation data (``../shared/data``); tests using it skip when it is absent."""
    if not (SHARED_DATA / "qa").is_dir():
        pytest.skip(f"shared evaluation data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def smollm():
    """The default packaged model (SmolLM2-135M-Instruct), loaded once."""
    from knowgate.models import LanguageModel

    return LanguageModel.load("smollm2-135m")


@pytest.fixture(scope="session")
def gemma():
    """The second packaged model (Gemma-3-270M base), loaded once."""
    from knowgate.models import LanguageModel

    return LanguageModel.load("gemma3-270m")
