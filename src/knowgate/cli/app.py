"""The root Typer application; each command lives in its own module of this package."""

from __future__ import annotations

import logging

import typer

app = typer.Typer(
    name="knowgate",
    help="Adaptive retrieval: retrieve only when the model does not know.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)


@app.callback()
def _root(
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log progress details."),
) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
