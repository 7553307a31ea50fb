"""``knowgate ask`` and ``knowgate demo`` from the command line."""

from __future__ import annotations

import json
import os
import re
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
QUESTION = "When was knowgate released?"
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
    assert "knowgate (kg)" in result.output  # the passage's title and id


def _no_model(config, **kwargs):
    raise AssertionError("a bad query must be refused before any model is loaded")


@pytest.mark.parametrize(
    ("question", "message"), [("", "query is empty"), ("  \n ", "query is empty")]
)
def test_ask_refuses_a_bad_query_before_loading_the_model(monkeypatch, question, message) -> None:
    monkeypatch.setattr("knowgate.cli.ask.load_router", _no_model)
    result = runner.invoke(app, ["ask", question])
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
    too_long = runner.invoke(app, ["ask", "x" * 4001])
    assert too_long.exit_code == 2 and "4001 characters; the limit is 4000" in too_long.output


def test_ask_empty_query_fails_fast_in_a_fresh_process() -> None:
    # A fresh interpreter, as `knowgate ask ""` runs: it must exit 2 without importing torch.
    code = (
        "import sys\n"
        "from knowgate.cli import main\n"
        "sys.argv = ['knowgate', 'ask', '']\n"
        "try:\n    main()\n"
        "except SystemExit as exc:\n    code = exc.code\n"
        "print('exit', code, 'torch' in sys.modules)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT
    )
    assert proc.stdout.strip().splitlines()[-1] == "exit 2 False", proc.stderr[-2000:]
    assert "query is empty" in proc.stderr


def test_ask_bad_policy_file_is_a_clean_error(smollm, monkeypatch) -> None:
    monkeypatch.setattr(
        "knowgate.cli.ask.load_router",
        lambda config, **kw: Router.from_config(config, model=smollm),
    )
    result = runner.invoke(app, ["ask", "q", "--policy", "/no/such/policy.json"])
    assert result.exit_code == 2 and "policy.json" in result.output


def _cli(
    *args: str, timeout: int = 900, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "200", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "knowgate", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        env=env,
    )


#: The policy shipped for the default model, read as a file (not through knowgate).
SHIPPED = json.loads(
    (ROOT / "src/knowgate/resources/policies/smollm2-135m.json").read_text(encoding="utf-8")
)


def assert_quiet(stderr: str) -> None:
    """No DEBUG log lines and no library weight-loading progress bars on stderr."""
    assert "DEBUG" not in stderr, stderr[-2000:]
    for bar in ("Loading weights", "de-quantizing GGUF", "Writing model shards"):
        assert bar not in stderr, stderr[-2000:]


def test_ask_threshold_override_pins_the_branch(smollm, kb_dir: Path, monkeypatch) -> None:
    """The shipped policy decides by default; thresholds 0 and 1 fix its decision.

    p_known is a probability, so ``p_known < 0`` never holds (closed-book), and the fused
    policy's convention makes a threshold of 1 retrieve always: either way the branch is known
    before the model runs, whatever p_known this question gets.
    """
    monkeypatch.setattr(
        "knowgate.cli.ask.load_router",
        lambda config, **kw: Router.from_config(config, model=smollm),
    )

    def ask(*extra: str) -> dict:
        result = runner.invoke(app, ["ask", QUESTION, "--kb", str(kb_dir), "--json", *extra])
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout)

    shipped = ask()
    d = shipped["decision"]
    assert (d["policy"], d["threshold"], d["mode"]) == (
        SHIPPED["policy_id"],
        SHIPPED["threshold"],
        "pre",
    )
    assert 0.0 <= d["p_known"] <= 1.0 and d["retrieve"] is (d["p_known"] < d["threshold"])

    closed = ask("--threshold", "0")
    c = closed["decision"]
    assert (c["retrieve"], c["threshold"]) == (False, 0.0)
    assert c["p_known"] == pytest.approx(d["p_known"], abs=1e-6)  # the same signals
    assert c["policy"].startswith("fused-v1:smollm2-135m:") and c["policy"] != d["policy"]
    # the answer is decoded from the gate's own prefill: one LM call, no retriever
    assert closed["calls"] == {"lm": 1, "retriever": 0} and closed["passages"] == []

    rag = ask("--threshold", "1")
    r = rag["decision"]
    assert (r["retrieve"], r["threshold"]) == (True, 1.0)
    assert r["p_known"] == pytest.approx(d["p_known"], abs=1e-6)  # the same signals
    # the gate's prefill, then the answer with the knowledge base's only passage
    assert rag["calls"] == {"lm": 2, "retriever": 1}
    assert [(p["id"], p["title"], p["rank"]) for p in rag["passages"]] == [("kg", "knowgate", 1)]


@pytest.mark.slow
def test_ask_json_subprocess(kb_dir: Path) -> None:
    # A threshold of 1 retrieves always (see above), so the retrieval path runs end to end.
    proc = _cli("ask", QUESTION, "--kb", str(kb_dir), "--json", "--threshold", "1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_quiet(proc.stderr)
    data = json.loads(proc.stdout)
    d = data["decision"]
    assert data["model"] == "smollm2-135m" and data["query"] == QUESTION
    # The shipped fused policy decides, cutting at the override (its id names the threshold).
    assert d["policy"].startswith("fused-v1:smollm2-135m:") and d["policy"] != SHIPPED["policy_id"]
    assert (d["threshold"], d["mode"], d["retrieve"]) == (1.0, "pre", True)
    assert 0.0 <= d["p_known"] <= 1.0
    assert set(SHIPPED["required_features"]) <= set(data["features"])
    assert data["calls"] == {"lm": 2, "retriever": 1}
    assert [(p["id"], p["title"], p["rank"]) for p in data["passages"]] == [("kg", "knowgate", 1)]
    assert data["answer"]


SUMMARY = re.compile(
    r"summary: retrieval rate ([\d.]+) \((\d+)/(\d+) retriever calls; retrieved per kind: "
    r"general (\d+)/3, knowgate (\d+)/4; always-retrieve RAG: 7/7\), LM calls (\d+) "
)


@pytest.mark.slow
def test_demo_first_run_is_quiet_and_names_the_sources(tmp_path) -> None:
    # A fresh cache: the newcomer's first run (knowledge base built, GGUF model dequantized).
    proc = _cli("demo", env={"KNOWGATE_CACHE_DIR": str(tmp_path), "COLUMNS": "600"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_quiet(proc.stderr)
    assert "knowledge base:" in proc.stdout and "(built from" in proc.stdout
    summary = SUMMARY.search(" ".join(proc.stdout.split()))
    assert summary is not None, proc.stdout[-3000:]
    rate, retrieved, total, general, knowgate, lm_calls = summary.groups()
    assert int(total) == 7 and int(retrieved) == int(general) + int(knowgate)
    assert float(rate) == pytest.approx(int(retrieved) / 7, abs=0.005)
    # The shipped policy reads signals: one LM call per question, one more per retrieval.
    assert int(lm_calls) == 7 + int(retrieved)
    rows = [line for line in proc.stdout.splitlines() if line.startswith("│")]
    cells = [[c.strip() for c in row.strip("│").split("│")] for row in rows]
    assert len(cells) == 7 and all(len(c) == 7 for c in cells)
    for question, kind, decision, _, answer, source, _ in cells:
        assert kind in ("general", "knowgate") and answer, question
        if decision == "retrieve":  # each passage as "title (id)", ids of the docs/ base
            for used in source.split("; "):
                assert re.fullmatch(r".+ \(docs/[\w.-]+\.md#\d+\)", used), source
        else:
            assert decision == "closed-book" and source == "-", question
    assert sum(c[2] == "retrieve" for c in cells) == int(retrieved)
