"""``knowgate ab``: A/B test reports, outcome feedback and offline replay of gating policies."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from knowgate.cli.app import app
from knowgate.cli.common import print_json, user_errors

if TYPE_CHECKING:
    from knowgate.experiments import Outcome
    from knowgate.policy import Policy

ab_app = typer.Typer(
    help="A/B tests of gating policies: report, record feedback, replay offline.",
    no_args_is_help=True,
)
app.add_typer(ab_app, name="ab")

_PARAMETER_FREE = ("always", "never", "oracle")


@ab_app.command()
def report(
    log: Path = typer.Option(..., "--log", help="Decision log (SQLite) the router wrote."),
    experiment: str | None = typer.Option(
        None, "--experiment", "-e", help="Experiment name (optional if the log holds one)."
    ),
    label_source: str | None = typer.Option(
        None, "--label-source", help="Use only outcomes from this source (default: latest)."
    ),
    alpha: float = typer.Option(0.05, help="Significance level."),
    margin: float = typer.Option(
        0.02, help="Accuracy margin within which a cheaper arm wins (0.02 = 2 pp)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Per-arm retrieval rate, accuracy and latency with intervals, tests and a verdict."""
    from knowgate.errors import ExperimentError
    from knowgate.experiments import DecisionLog, build_report

    with user_errors(), DecisionLog(log, create=False) as db:
        if experiment is None:
            names = [e["name"] for e in db.experiments()]
            if len(names) != 1:
                raise ExperimentError(
                    f"{log} holds {len(names)} experiments ({', '.join(names) or 'none'}); "
                    "name one with --experiment"
                )
            experiment = names[0]
        result = build_report(db, experiment, alpha=alpha, margin=margin, label_source=label_source)
    if as_json:
        print_json(result.to_dict())
    else:
        typer.echo(result.to_text())


def _outcomes_from_file(path: Path, default_source: str) -> list[Outcome]:
    from knowgate.errors import ExperimentError
    from knowgate.experiments import Outcome
    from knowgate.jsonio import iter_jsonl

    if not path.is_file():
        raise ExperimentError(f"outcome file not found: {path}")
    out = []
    allowed = {"request_id", "correct", "score", "label_source"}
    lines = path.read_text(encoding="utf-8").splitlines()
    for _, where, row in iter_jsonl(lines, path, ExperimentError):
        if not isinstance(row, dict):
            raise ExperimentError(f"{where}: expected a JSON object")
        unknown = sorted(set(row) - allowed)
        if unknown:
            raise ExperimentError(f"{where}: unknown key(s) {unknown}; allowed: {sorted(allowed)}")
        if "request_id" not in row:
            raise ExperimentError(f"{where}: missing request_id")
        out.append(
            Outcome(
                row["request_id"],
                row.get("correct"),
                row.get("score"),
                row.get("label_source", default_source),
            )
        )
    return out


@ab_app.command()
def feedback(
    log: Path = typer.Option(..., "--log", help="Decision log (SQLite)."),
    request_id: str | None = typer.Option(None, "--request-id", help="The logged request."),
    correct: bool | None = typer.Option(
        None, "--correct/--wrong", help="Whether the answer was right."
    ),
    score: float | None = typer.Option(None, "--score", help="A graded score (e.g. F1, rating)."),
    source: str = typer.Option("feedback", "--source", help="Who labelled it."),
    file: Path | None = typer.Option(
        None,
        "--file",
        help="JSONL of outcomes: request_id, correct and/or score, optional label_source.",
    ),
) -> None:
    """Record outcomes for logged requests (one on the command line, or many from a file)."""
    from knowgate.errors import ExperimentError
    from knowgate.experiments import DecisionLog, Outcome

    with user_errors():
        if (file is None) == (request_id is None):
            raise ExperimentError(
                "give either --request-id (with --correct/--wrong, --score) or --file"
            )
        if file is not None:
            if correct is not None or score is not None:
                raise ExperimentError("--correct/--wrong and --score go with --request-id")
            outcomes = _outcomes_from_file(file, source)
        else:
            outcomes = [Outcome(str(request_id), correct, score, source)]
        with DecisionLog(log, create=False) as db:
            n = db.record_outcomes(outcomes)
    typer.echo(f"recorded {n} outcome(s) in {log}")


def _load_replay_policy(spec: str, force: bool) -> tuple[str, Policy]:
    from knowgate.errors import PolicyError
    from knowgate.policy import build_policy, load_policy

    path = Path(spec)
    if path.suffix == ".json" or path.exists():
        return path.stem, load_policy(path, force=force)
    if spec in _PARAMETER_FREE:
        return spec, build_policy(spec)
    raise PolicyError(
        f"--policy {spec!r}: not a policy file, nor one of {', '.join(_PARAMETER_FREE)}"
    )


@ab_app.command()
def replay(
    cache: Path = typer.Option(
        ..., "--cache", help="Benchmark cache directory (holding both_branches.jsonl) or file."
    ),
    policy: list[str] = typer.Option(
        ...,
        "--policy",
        "-p",
        help="Policy JSON (repeat; the first is the control), or always / never / oracle.",
    ),
    alpha: float = typer.Option(0.05, help="Significance level."),
    margin: float = typer.Option(
        0.02, help="Accuracy margin within which a cheaper policy wins (0.02 = 2 pp)."
    ),
    force_policy: bool = typer.Option(
        False, "--force-policy", help="Replay policies fitted for another model."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Judge candidate policies on cached both-branch results (paired, exact, no traffic)."""
    from knowgate.experiments import read_both_branches
    from knowgate.experiments import replay as run_replay
    from knowgate.experiments.replay import cache_path

    with user_errors():
        policies: dict[str, Any] = {}
        for spec in policy:
            label, loaded = _load_replay_policy(spec, force_policy)
            base, i = label, 2
            while label in policies:
                label, i = f"{base}-{i}", i + 1
            policies[label] = loaded
        records = read_both_branches(cache)
        result = run_replay(
            records,
            policies,
            alpha=alpha,
            margin=margin,
            force=force_policy,
            cache=str(cache_path(cache)),
        )
    if as_json:
        print_json(result.to_dict())
    else:
        typer.echo(result.to_text())
