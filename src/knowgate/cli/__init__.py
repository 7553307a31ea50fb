"""Command-line interface: ``knowgate --help`` lists the commands."""

from knowgate.cli import signals as _signals  # noqa: F401  (registers the command)
from knowgate.cli.app import app


def main() -> None:
    """Entry point of the ``knowgate`` script."""
    app()


__all__ = ["app", "main"]
