"""``knowgate ask`` and ``knowgate demo`` from the command line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from knowgate.cli import app
from knowgate.cli.ask import build_config
from knowgate.errors import ConfigError
from knowgate.policy import build_policy
from knowgate.retrieval import Document, KnowledgeBase
from knowgate.routing import Router

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()


@pytest.fixture(scope="module")
def kb_dir(tmp_path_factory) -> Path:
    kb = KnowledgeBase.build(
        [Document(id="kg", title="knowgate", text="knowgate was released in 2026.")],
        progress=False,
    )
    path = tmp_path_factory.mktemp("kb") / "kb"
    kb.save(path)
    return path


def test_build_config_applies_overrides(kb_dir: Path, tmp_path: Path) -> None:
    cfg = build_config(None, kb=kb_dir, mode="draft", threshold=0.4, k=2, model="gemma3-270m")
    assert cfg.retrieval.knowledge_base == kb_dir and cfg.retrieval.k == 2
    assert cfg.gate.mode == "draft" and cfg.policy.threshold == 0.4
    assert cfg.model.source == "gemma3-270m"
    with pytest.raises(ConfigError, match="gate.mode"):
        build_config(None, mode="sideways")


@pytest.mark.parametrize("policy_name", ["always", "never"])
def test_ask_json_keys(smollm, kb_dir: Path, monkeypatch, policy_name: str) -> None:
    def fake_load_router(config, **kwargs):
        assert config.retrieval.knowledge_base == kb_dir
        return Router.from_config(
            config.model_copy(
                update={"policy": config.policy.model_copy(update={"name": policy_name})}
            ),
            model=smollm,
        )

    monkeypatch.setattr("knowgate.cli.ask.load_router", fake_load_router)
    result = runner.invoke(
        app, ["ask", "When was knowgate released?", "--kb", str(kb_dir), "--json"]
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert {"answer", "decision", "features", "passages", "calls", "timings_ms"} <= set(data)
    assert set(data["decision"]) >= {"retrieve", "p_known", "threshold", "policy", "mode"}
    assert set(data["calls"]) == {"lm", "retriever"}
    if policy_name == "always":
        assert data["decision"]["retrieve"] is True and data["calls"] == {"lm": 1, "retriever": 1}
        assert {"id", "title", "score"} <= set(data["passages"][0])
    else:
        assert data["passages"] == [] and data["calls"] == {"lm": 1, "retriever": 0}


def test_ask_pretty(smollm, kb_dir: Path, monkeypatch) -> None:
    monkeypatch.setattr(
        "knowgate.cli.ask.load_router",
        lambda config, **kw: Router(smollm, build_policy("always"), KnowledgeBase.load(kb_dir)),
    )
    result = runner.invoke(app, ["ask", "When was knowgate released?"])
    assert result.exit_code == 0, result.output
    assert "retrieved" in result.output and "p_known" in result.output


def test_ask_bad_input_is_a_clean_error(smollm, monkeypatch) -> None:
    monkeypatch.setattr(
        "knowgate.cli.ask.load_router", lambda config, **kw: Router(smollm, build_policy("never"))
    )
    result = runner.invoke(app, ["ask", "   "])
    assert result.exit_code == 2 and "query is empty" in result.output
    monkeypatch.setattr(
        "knowgate.cli.ask.load_router",
        lambda config, **kw: Router.from_config(config, model=smollm),
    )
    result = runner.invoke(app, ["ask", "q", "--policy", "/no/such/policy.json"])
    assert result.exit_code == 2 and "policy.json" in result.output


def _cli(*args: str, timeout: int = 900) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "knowgate", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        env=env,
    )


@pytest.mark.slow
def test_ask_json_subprocess(kb_dir: Path) -> None:
    proc = _cli("ask", "When was knowgate released?", "--kb", str(kb_dir), "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads(proc.stdout)
    assert data["model"] == "smollm2-135m"
    assert data["decision"]["policy"]  # the bundled policy (or the always fallback)
    assert data["calls"]["lm"] in (1, 2)


@pytest.mark.slow
def test_demo_runs_end_to_end() -> None:
    proc = _cli("demo")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "summary: retrieval rate" in proc.stdout
    assert proc.stdout.count("closed-book") + proc.stdout.count("retrieve") >= 7
