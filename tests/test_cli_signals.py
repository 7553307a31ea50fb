"""``knowgate signals``: pretty and JSON output, for both packaged models."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from knowgate.cli import app
from knowgate.signals import feature_names

runner = CliRunner()
MODEL_FEATURES = set(feature_names(family="sparsity")) | set(feature_names(family="uncertainty"))


def test_help_lists_commands() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    assert "signals" in result.output


@pytest.mark.parametrize("fixture", ["smollm", "gemma"])
def test_signals_json_in_process(fixture, request, monkeypatch) -> None:
    lm = request.getfixturevalue(fixture)
    monkeypatch.setattr("knowgate.cli.signals.load_language_model", lambda source: lm)
    result = runner.invoke(app, ["signals", "What is the capital of France?", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert set(data) == {"answer", "features", "model", "timings_ms"}
    assert set(data["features"]) == MODEL_FEATURES
    assert data["model"] == lm.model_id
    assert "paris" in data["answer"].lower()
    assert data["timings_ms"]["total"] > 0


def test_signals_pretty_table(smollm, monkeypatch) -> None:
    monkeypatch.setattr("knowgate.cli.signals.load_language_model", lambda source: smollm)
    result = runner.invoke(app, ["signals", "Who wrote Hamlet?"])
    assert result.exit_code == 0, result.output
    assert "hidden_hoyer_last" in result.output and "answer" in result.output


def test_unknown_model_is_a_clean_error() -> None:
    result = runner.invoke(app, ["signals", "hi", "--model", "no-such-model"])
    assert result.exit_code == 2
    assert "unknown model" in result.output and "smollm2-135m" in result.output


@pytest.mark.slow
def test_signals_json_subprocess() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "knowgate", "signals", "What is the capital of France?", "--json"],
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    )
    data = json.loads(proc.stdout)
    assert data["model"] == "smollm2-135m"
    assert "paris" in data["answer"].lower()
    assert set(data["features"]) == MODEL_FEATURES
