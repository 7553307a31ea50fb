"""The root Typer application; each command lives in its own module of this package."""

from __future__ import annotations

import logging
import os

import typer

app = typer.Typer(
    name="knowgate",
    help="Adaptive retrieval: retrieve only when the model does not know.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)

#: Environment variables that switch off third-party progress bars: Hugging Face's (transformers'
#: "Loading weights", "Writing model shards") and tqdm's default (transformers' GGUF
#: conversion). Bars that knowgate shows on purpose pass ``disable=`` and are unaffected.
QUIET_PROGRESS_ENV = {"HF_HUB_DISABLE_PROGRESS_BARS": "1", "TQDM_DISABLE": "1"}


def configure_output(verbose: bool) -> None:
    """Log warnings (``verbose``: info) to stderr, and hide library progress bars unless verbose.

    The level is set on the handler, not only on the root logger: libraries that set their own
    logger to DEBUG (bm25s does) would otherwise print DEBUG lines through it. Progress bars are
    switched off through environment variables, before the libraries are imported, and only where
    the user has not set them (``HF_HUB_DISABLE_PROGRESS_BARS=0`` brings transformers' back).
    """
    level = logging.INFO if verbose else logging.WARNING
    handler = logging.StreamHandler()
    handler.setLevel(level)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=level, handlers=[handler])
    if not verbose:
        for name, value in QUIET_PROGRESS_ENV.items():
            os.environ.setdefault(name, value)


@app.callback()
def _root(
    verbose: bool = typer.Option(
        False, "--verbose", "-v", help="Log progress details and show library progress bars."
    ),
) -> None:
    configure_output(verbose)
