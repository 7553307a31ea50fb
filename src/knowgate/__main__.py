"""``python -m knowgate`` runs the CLI."""

from knowgate.cli import main

if __name__ == "__main__":
    main()
