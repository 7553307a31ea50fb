"""``knowgate signals``: the draft answer and every named feature of one question."""

from __future__ import annotations

import time

import typer
from rich.table import Table

from knowgate.cli.app import app
from knowgate.cli.common import (
    MODEL_HELP,
    console,
    load_language_model,
    print_json,
    user_errors,
)
from knowgate.models.config import DEFAULT_MODEL


@app.command()
def signals(
    question: str = typer.Argument(..., help="The question to run closed-book."),
    model: str = typer.Option(DEFAULT_MODEL, "--model", "-m", help=MODEL_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
    max_new_tokens: int = typer.Option(16, help="Token limit of the draft answer."),
) -> None:
    """Run one forward pass and print the draft answer and every named feature.

    A served model (``--model openai:<base_url>#<model>``) runs one greedy draft with logprobs
    and shows the features its server's response provides.
    """
    from knowgate.models import RemoteModel
    from knowgate.signals import compute_features, feature_specs

    with user_errors():
        t0 = time.perf_counter()
        lm = load_language_model(model)
        t1 = time.perf_counter()
        if isinstance(lm, RemoteModel):
            draft = lm.draft([question], max_new_tokens=max_new_tokens)[0]
            answer, stop_reason, features = draft.text, str(draft.stop_reason), draft.features
            t3 = time.perf_counter()
            stages = {"draft": round(draft.seconds * 1000, 1)}
        else:
            out = lm.run([lm.format_prompt(question)], max_new_tokens=max_new_tokens)[0]
            t2 = time.perf_counter()
            features = compute_features(out.capture)
            t3 = time.perf_counter()
            answer, stop_reason = out.answer, str(out.draft.stop_reason)
            stages = {
                "prefill": round(out.prefill_seconds * 1000, 1),
                "decode": round(out.draft.seconds * 1000, 1),
                "features": round((t3 - t2) * 1000, 1),
            }
    timings = {
        "load": round((t1 - t0) * 1000, 1),
        **stages,
        "total": round((t3 - t0) * 1000, 1),
    }
    if as_json:
        print_json(
            {
                "answer": answer,
                "features": features,
                "model": lm.model_id,
                "timings_ms": timings,
            }
        )
        return
    specs = feature_specs()
    table = Table(title=f"{len(features)} features", show_lines=False)
    table.add_column("feature")
    table.add_column("value", justify="right")
    table.add_column("family")
    table.add_column("stage")
    for name, value in features.items():
        spec = specs.get(name)
        table.add_row(name, f"{value:.4f}", spec.family if spec else "", spec.stage if spec else "")
    out_console = console.__class__()  # stdout
    out_console.print(f"[bold]model[/]   {lm.model_id} ({lm.architecture})")
    out_console.print(f"[bold]question[/] {question}")
    out_console.print(f"[bold]answer[/]  {answer!r}  (stop: {stop_reason})")
    out_console.print(table)
    out_console.print("timings (ms): " + ", ".join(f"{k} {v}" for k, v in timings.items()))
