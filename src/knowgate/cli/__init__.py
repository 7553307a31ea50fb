"""Command-line interface: ``knowgate --help`` lists the commands."""

from knowgate.cli import ab as _ab  # noqa: F401  (registers the command)
from knowgate.cli import ask as _ask  # noqa: F401  (registers the command)
from knowgate.cli import bench as _bench  # noqa: F401  (registers the command)
from knowgate.cli import calibrate as _calibrate  # noqa: F401  (registers the command)
from knowgate.cli import demo as _demo  # noqa: F401  (registers the command)
from knowgate.cli import index as _index  # noqa: F401  (registers the command)
from knowgate.cli import serve as _serve  # noqa: F401  (registers the command)
from knowgate.cli import signals as _signals  # noqa: F401  (registers the command)
from knowgate.cli import study as _study  # noqa: F401  (registers the command)
from knowgate.cli.app import app


def main() -> None:
    """Entry point of the ``knowgate`` script."""
    app()


__all__ = ["app", "main"]
