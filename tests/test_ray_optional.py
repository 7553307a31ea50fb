"""Without Ray installed, the core works and every --ray path says how to install it."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from knowgate.cli import app
from knowgate.errors import MissingPackageError
from knowgate.integrations.ray import require_ray

HINT = "pip install 'knowgate[ray]'"


@pytest.fixture
def no_ray(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make ``import ray`` fail as it does where Ray is not installed."""
    for name in [m for m in sys.modules if m == "ray" or m.startswith("ray.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "ray", None)


def test_require_ray_names_the_extra(no_ray: None) -> None:
    with pytest.raises(MissingPackageError, match=HINT.replace("[", r"\[").replace("]", r"\]")):
        require_ray("data")


def test_index_build_with_ray_but_no_ray(no_ray: None, tmp_path: Path) -> None:
    corpus = tmp_path / "c.jsonl"
    corpus.write_text('{"id": "a", "title": "A", "text": "alpha"}\n')
    result = CliRunner().invoke(
        app, ["index", "build", str(corpus), "--out", str(tmp_path / "kb"), "--ray"]
    )
    assert result.exit_code == 2
    assert HINT in " ".join(result.output.split())
    assert not (tmp_path / "kb").exists()


def test_serve_with_ray_but_no_ray(no_ray: None) -> None:
    result = CliRunner().invoke(app, ["serve", "--ray", "--model", "smollm2-135m"])
    assert result.exit_code == 2
    assert HINT in " ".join(result.output.split())


@pytest.mark.parametrize("command", ["calibrate", "bench"])
def test_calibrate_and_bench_with_ray_but_no_ray(
    no_ray: None, tmp_path: Path, command: str
) -> None:
    data = tmp_path / "qa.jsonl"
    data.write_text('{"id": "a", "question": "q?", "golden_answers": ["a"]}\n')
    args = [command, "--data", str(data), "--out", str(tmp_path / "out"), "--ray"]
    if command == "bench":
        args += ["--kb", str(tmp_path / "kb")]  # not read: Ray is checked first
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2
    assert HINT in " ".join(result.output.split())
    assert not (tmp_path / "out").exists()
