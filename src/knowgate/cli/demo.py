"""``knowgate demo``: the main job on the embedded defaults.

Builds (or reuses) a small knowledge base from the project's own documentation in ``docs/``, then
routes a handful of questions: general knowledge the default model may answer closed-book, and
questions about knowgate itself that it cannot know. Prints each decision, p_known, answer,
the documents a retrieved answer came from, and timing, and a one-line summary.
"""

from __future__ import annotations

import hashlib
import time
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.console import Console
from rich.table import Table

from knowgate.cli.app import app
from knowgate.cli.common import console, user_errors, with_status
from knowgate.errors import ConfigError

if TYPE_CHECKING:
    from knowgate.routing import RoutedAnswer

#: (question, kind): "general" knowledge vs questions answered only by knowgate's docs.
DEMO_QUESTIONS: tuple[tuple[str, str], ...] = (
    ("What is the capital of France?", "general"),
    ("Who wrote Romeo and Juliet?", "general"),
    ("What is the largest planet in the solar system?", "general"),
    ("What is the default gate mode of knowgate?", "knowgate"),
    ("Which knowgate command fits and calibrates a gating policy?", "knowgate"),
    ("Which environment variable sets knowgate's model cache directory?", "knowgate"),
    ("Which embedding model does the knowgate knowledge base use by default?", "knowgate"),
)


def find_docs(explicit: Path | None) -> Path:
    """The documentation folder: ``--docs``, else ``./docs``, else the source tree's ``docs``."""
    candidates = (
        [explicit]
        if explicit
        else [Path.cwd() / "docs", Path(__file__).resolve().parents[3] / "docs"]
    )
    for path in candidates:
        if path.is_dir() and any(path.glob("*.md")):
            return path
    raise ConfigError(
        f"no documentation folder with Markdown files found (looked in "
        f"{', '.join(str(c) for c in candidates)}); pass --docs DIR"
    )


def docs_fingerprint(docs: Path) -> str:
    """Hash of the docs' names and contents: the demo base is rebuilt when they change."""
    digest = hashlib.sha256()
    for path in sorted(docs.rglob("*.md")):
        digest.update(str(path.relative_to(docs)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def sources(routed: RoutedAnswer) -> str:
    """The documents the answer's passages came from: ``title (id)``, best first."""
    if not routed.passages:
        return "-"
    return "; ".join(f"{p.title or p.id} ({p.id})" for p in routed.passages)


def demo_knowledge_base(docs: Path, cache_dir: Path) -> tuple[Path, bool]:
    """Directory of the docs knowledge base, building it when missing; ``(path, built)``."""
    from knowgate.errors import KnowledgeBaseError
    from knowgate.retrieval import KnowledgeBase

    target = cache_dir / "demo-kb" / docs_fingerprint(docs)
    if (target / "manifest.json").is_file():
        try:
            KnowledgeBase.load(target)
            return target, False
        except KnowledgeBaseError as exc:
            console.print(f"[yellow]rebuilding the demo knowledge base:[/] {exc}")
    kb = KnowledgeBase.build([docs], progress=True)
    kb.save(target)
    return target, True


@app.command()
def demo(
    docs: Path | None = typer.Option(None, "--docs", help="Markdown folder for the demo base."),
    model: str | None = typer.Option(None, "--model", "-m", help="Model source override."),
    mode: str | None = typer.Option(None, "--mode", help="Gate mode: pre or draft."),
) -> None:
    """Build a knowledge base from docs/ and route a few questions through the gate."""
    from knowgate.checkpoint_cache import default_cache_dir
    from knowgate.cli.ask import build_config
    from knowgate.routing import Router

    out = Console()
    with user_errors():
        start = time.perf_counter()
        docs_dir = find_docs(docs)
        config = build_config(None, model=model, mode=mode)
        cache = config.model.cache_dir or default_cache_dir()
        t = time.perf_counter()
        kb_dir, built = demo_knowledge_base(docs_dir, cache)
        out.print(
            f"knowledge base: {kb_dir} ({'built' if built else 'reused'} from {docs_dir} "
            f"in {time.perf_counter() - t:.1f} s)"
        )
        config = build_config(None, model=model, mode=mode, kb=kb_dir)
        t = time.perf_counter()
        router = with_status(
            f"loading {config.model.source} and its policy...",
            lambda: Router.from_config(config),
        )
        out.print(
            f"model: {router.model.model_id} ({router.model.architecture}), loaded in "
            f"{time.perf_counter() - t:.1f} s; policy: {router.policy.policy_id}; "
            f"gate: {router.mode}"
        )
        table = Table(title="knowgate demo", show_lines=True)
        for col in ("question", "kind", "decision", "p_known", "answer", "source", "ms"):
            table.add_column(col, overflow="fold")
        routed_all = []
        for question, kind in DEMO_QUESTIONS:
            routed = with_status(f"routing: {question}", partial(router.route, question))
            routed_all.append(routed)
            d = routed.decision
            decision = "retrieve" if d.retrieve else "closed-book"
            if routed.retrieval_error:
                decision += " (fallback: " + routed.retrieval_error + ")"
            p_known = "n/a" if d.p_known is None else f"{d.p_known:.3f} / {d.threshold:.3f}"
            ms = f"{routed.timings_ms['total']:.0f}"
            table.add_row(question, kind, decision, p_known, routed.answer, sources(routed), ms)
        out.print(table)
        n = len(routed_all)
        retrieved = sum(r.calls["retriever"] for r in routed_all)
        lm_calls = sum(r.calls["lm"] for r in routed_all)
        per_kind = []
        for kind in sorted({k for _, k in DEMO_QUESTIONS}):
            rows = [r for r, (_, k) in zip(routed_all, DEMO_QUESTIONS, strict=True) if k == kind]
            per_kind.append(f"{kind} {sum(r.decision.retrieve for r in rows)}/{len(rows)}")
        out.print(
            f"summary: retrieval rate {retrieved / n:.2f} ({retrieved}/{n} retriever calls; "
            f"retrieved per kind: {', '.join(per_kind)}; always-retrieve RAG: {n}/{n}), "
            f"LM calls {lm_calls} ({lm_calls / n:.2f} per question), "
            f"total {time.perf_counter() - start:.1f} s"
        )
