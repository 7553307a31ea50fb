"""``knowgate ask``: route one question and show the decision, the answer and the trace."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from knowgate.cli.app import app
from knowgate.cli.common import print_json, user_errors, with_status

if TYPE_CHECKING:
    from knowgate.config import RouterConfig
    from knowgate.routing import QueryRouter, RoutedAnswer


# Router options shared by the commands that build a router (ask, serve).
ConfigOption = Annotated[Path | None, typer.Option("--config", "-c", help="Router YAML config.")]
KbOption = Annotated[
    Path | None, typer.Option("--kb", help="Knowledge-base directory to retrieve from.")
]
PolicyOption = Annotated[Path | None, typer.Option("--policy", help="Fitted policy JSON.")]
ModeOption = Annotated[str | None, typer.Option("--mode", help="Gate mode: pre or draft.")]
ModelOption = Annotated[str | None, typer.Option("--model", "-m", help="Model source override.")]
ThresholdOption = Annotated[
    float | None, typer.Option("--threshold", help="p_known threshold override.")
]
KOption = Annotated[int | None, typer.Option("-k", help="Passages per retrieving request.")]


def build_config(
    config_file: Path | None,
    *,
    model: str | None = None,
    kb: Path | None = None,
    policy: Path | None = None,
    mode: str | None = None,
    threshold: float | None = None,
    k: int | None = None,
) -> RouterConfig:
    """The config file (or defaults) with command-line overrides applied and re-validated."""
    from knowgate.config import RouterConfig, load_config

    base = load_config(config_file).model_dump()
    if model is not None and model != base["model"]["source"]:
        base["model"]["source"] = model
        base["model"]["remote"] = None  # a new source replaces a served model's section
    if kb is not None:
        base["retrieval"]["knowledge_base"] = kb
    if k is not None:
        base["retrieval"]["k"] = k
    if policy is not None:
        base["policy"] = {**base["policy"], "path": policy, "name": None, "params": {}}
    if threshold is not None:
        base["policy"]["threshold"] = threshold
    if mode is not None:
        base["gate"]["mode"] = mode
    return RouterConfig.from_dict(base, source="command line")


def load_router(config: RouterConfig, **kwargs: Any) -> QueryRouter:
    """Build the configured router with a spinner (model load, policy, knowledge base).

    A config with an ``experiment`` section gives an ExperimentRouter, which assigns arms and
    logs every request.
    """
    from knowgate.experiments import router_from_config

    return with_status(
        f"loading {config.model.source}, policy and knowledge base...",
        lambda: router_from_config(config, **kwargs),
    )


def print_routed(routed: RoutedAnswer, out: Console) -> None:
    """Human-readable view of one routed answer."""
    d = routed.decision
    verdict = "[yellow]retrieved[/]" if routed.passages else "[green]closed-book[/]"
    p_known = "n/a" if d.p_known is None else f"{d.p_known:.3f}"
    threshold = "n/a" if d.threshold is None else f"{d.threshold:.3f}"
    out.print(f"[bold]answer[/]   {routed.answer}")
    out.print(
        f"[bold]decision[/] {verdict}: p_known {p_known} vs threshold {threshold} "
        f"({d.mode} gate, {d.policy})"
    )
    out.print(f"[bold]reason[/]   {d.reason}")
    if routed.retrieval_error:
        out.print(f"[bold red]retrieval[/] {routed.retrieval_error}")
    if routed.passages:
        table = Table(show_header=True, box=None)
        table.add_column("#")
        table.add_column("score", justify="right")
        table.add_column("passage")
        for p in routed.passages:
            score = "" if p.score is None else f"{p.score:.3f}"
            snippet = " ".join(p.text.split())[:90]
            table.add_row(str(p.rank), score, f"[bold]{p.title}[/] [dim]({p.id})[/] {snippet}")
        out.print(table)
    calls = ", ".join(f"{k} {v}" for k, v in routed.calls.items())
    timings = ", ".join(f"{k} {v:.0f}" for k, v in routed.timings_ms.items())
    out.print(f"[dim]calls: {calls} | timings (ms): {timings}[/]")


@app.command()
def ask(
    question: str = typer.Argument(..., help="The question to answer."),
    kb: KbOption = None,
    policy: PolicyOption = None,
    mode: ModeOption = None,
    model: ModelOption = None,
    threshold: ThresholdOption = None,
    k: KOption = None,
    config_file: ConfigOption = None,
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Answer a question, retrieving only when the model does not know."""
    with user_errors():
        config = build_config(
            config_file, model=model, kb=kb, policy=policy, mode=mode, threshold=threshold, k=k
        )
        config.limits.check_queries([question])  # before the model loads
        router = load_router(config)
        routed = router.route(question)
    if as_json:
        print_json(routed.to_dict())
    else:
        print_routed(routed, Console())
