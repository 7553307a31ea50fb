"""The docs match the code: links resolve, CLI commands exist, BENCHMARKS.md is current."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import pytest

from knowgate.cli import app

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", ROOT / "BENCHMARKS.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")
COMMAND = re.compile(r"^\s*(?:\$ )?knowgate ((?:[a-z][a-z-]* ?){1,2})", re.MULTILINE)


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_relative_links_resolve(doc: Path) -> None:
    text = doc.read_text(encoding="utf-8")
    broken = [
        target
        for target in LINK.findall(text)
        if "://" not in target and not (doc.parent / target).exists()
    ]
    assert not broken, f"{doc.name}: links to missing files {broken}"


def _documented_commands() -> set[tuple[str, ...]]:
    found: set[tuple[str, ...]] = set()
    for doc in DOCS:
        for block in re.findall(r"```bash\n(.*?)```", doc.read_text(encoding="utf-8"), re.S):
            for words in COMMAND.findall(block):
                found.add(tuple(words.split()))
    return found


def test_documented_cli_commands_exist() -> None:
    import typer

    commands = _documented_commands()
    assert ("ask",) in {c[:1] for c in commands}  # the scan itself works
    root = typer.main.get_command(app)  # a click group (typer may vendor its own click)
    assert hasattr(root, "commands")
    for words in sorted(commands):
        command = root.commands.get(words[0])
        assert command is not None, f"documented command `knowgate {words[0]}` does not exist"
        if hasattr(command, "commands"):  # "knowgate index build": the subcommand must exist
            assert len(words) > 1 and words[1] in command.commands, (
                f"documented command `knowgate {' '.join(words)}` does not exist"
            )


def test_benchmarks_md_is_generated_from_the_results() -> None:
    spec = importlib.util.spec_from_file_location(
        "collect_benchmarks", ROOT / "benchmarks" / "collect_benchmarks.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("collect_benchmarks", module)
    spec.loader.exec_module(module)
    assert (ROOT / "BENCHMARKS.md").read_text(encoding="utf-8") == module.render(), (
        "BENCHMARKS.md is stale: run python benchmarks/collect_benchmarks.py"
    )
