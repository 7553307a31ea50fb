"""``knowgate index``: build, extend, inspect and search a knowledge base."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, cast

import typer
from rich.console import Console
from rich.table import Table

from knowgate.cli.app import app
from knowgate.cli.common import console, print_json, user_errors, with_status

if TYPE_CHECKING:
    from knowgate.retrieval import KnowledgeBase, KnowledgeBaseConfig, SearchMode

index_app = typer.Typer(
    help="Build, extend, inspect and search a knowledge base (FAISS + BM25).",
    no_args_is_help=True,
)
app.add_typer(index_app, name="index")

_CONFIG_HELP = "YAML file with KnowledgeBaseConfig settings (unknown keys are errors)."
_MODE_HELP = "Search mode: dense, bm25 or hybrid (default: the configured mode)."


def _config(
    config_file: Path | None,
    model: str | None = None,
    mode: str | None = None,
    skip_duplicates: bool = False,
) -> KnowledgeBaseConfig | None:
    """The configuration from a YAML file and command-line overrides (None when neither)."""
    from knowgate.retrieval import KnowledgeBaseConfig

    if config_file is None and model is None and mode is None and not skip_duplicates:
        return None
    data = KnowledgeBaseConfig.from_yaml(config_file).model_dump() if config_file else {}
    if model is not None:
        data["embedding_model"] = model
    if mode is not None:
        data["mode"] = mode
    if skip_duplicates:
        data["on_duplicate"] = "skip"
    return KnowledgeBaseConfig.from_dict(data, source=str(config_file or "command-line options"))


def _load(directory: Path, config: KnowledgeBaseConfig | None) -> KnowledgeBase:
    from knowgate.retrieval import KnowledgeBase

    return with_status(
        f"loading knowledge base {directory}...", lambda: KnowledgeBase.load(directory, config)
    )


@index_app.command("build")
def build(
    corpus: list[Path] = typer.Argument(
        ...,
        help="JSONL / JSONL.gz corpus files ({id, title, text}), text or Markdown files, "
        "or folders of them.",
    ),
    out: Path = typer.Option(..., "--out", "-o", help="Directory to write the knowledge base to."),
    config_file: Path | None = typer.Option(None, "--config", "-c", help=_CONFIG_HELP),
    model: str | None = typer.Option(
        None, "--model", "-m", help="Embedding model: hub id in the local cache, or a directory."
    ),
    mode: str | None = typer.Option(
        None, "--mode", help="Default search mode saved with the base."
    ),
    skip_duplicates: bool = typer.Option(
        False, "--skip-duplicates", help="Keep the first of repeated ids instead of failing."
    ),
    force: bool = typer.Option(False, "--force", "-f", help="Replace an existing base at --out."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
    use_ray: bool = typer.Option(
        False,
        "--ray",
        help="Embed in parallel Ray actors (pip install 'knowgate[ray]'); same base as local.",
    ),
    workers: int = typer.Option(2, "--workers", min=1, help="With --ray: embedding actors."),
    block_size: int = typer.Option(
        512, "--ray-block-size", min=1, help="With --ray: passages handed to an actor at once."
    ),
    ray_address: str | None = typer.Option(
        None, "--ray-address", help="With --ray: a running cluster (default: a local instance)."
    ),
) -> None:
    """Embed and index a corpus, then save it atomically to --out."""
    from knowgate.errors import KnowledgeBaseError
    from knowgate.retrieval import KnowledgeBase, KnowledgeBaseConfig

    with user_errors():
        if out.exists() and any(out.iterdir()) and not force:
            raise KnowledgeBaseError(
                f"{out} already exists; pass --force to replace it, or use "
                "`knowgate index add` to append documents"
            )
        config = _config(config_file, model, mode, skip_duplicates)
        start = time.perf_counter()
        if use_ray:
            from knowgate.integrations.ray import RayRuntime, ray_runtime, require_ray
            from knowgate.integrations.ray.embedding import RayEmbeddingConfig, ray_encoder

            require_ray("data")
            resolved = config or KnowledgeBaseConfig()
            encode = ray_encoder(
                resolved, RayEmbeddingConfig(workers=workers, block_size=block_size)
            )
            with ray_runtime(RayRuntime(address=ray_address)):
                kb = KnowledgeBase.build(corpus, resolved, progress=True, encode=encode)
        else:
            kb = KnowledgeBase.build(corpus, config, progress=True)
        kb.save(out)
        seconds = time.perf_counter() - start
    report = kb.last_ingest
    summary = {
        **kb.describe(),
        "out": str(out),
        "added": report.added if report else len(kb),
        "skipped_empty": report.skipped_empty if report else 0,
        "skipped_duplicates": report.skipped_duplicates if report else 0,
        "seconds": round(seconds, 2),
        "ray_workers": workers if use_ray else None,
    }
    if as_json:
        print_json(summary)
        return
    if report:
        console.print(report.summary())
    console.print(
        f"[bold green]saved[/] {len(kb)} passages to {out} "
        f"({kb.index_type} index, dim {kb.dimension}) in {seconds:.1f} s"
    )


@index_app.command("add")
def add(
    directory: Path = typer.Argument(..., help="An existing knowledge-base directory."),
    corpus: list[Path] = typer.Argument(..., help="Files or folders to append."),
    config_file: Path | None = typer.Option(None, "--config", "-c", help=_CONFIG_HELP),
    skip_duplicates: bool = typer.Option(
        False, "--skip-duplicates", help="Skip ids already in the base instead of failing."
    ),
) -> None:
    """Append documents to a base and save it again (atomically)."""
    with user_errors():
        kb = _load(directory, _config(config_file, skip_duplicates=skip_duplicates))
        report = kb.add(corpus, progress=True)
        kb.save(directory)
    console.print(report.summary())
    console.print(f"[bold green]saved[/] {len(kb)} passages to {directory}")


@index_app.command("info")
def info(
    directory: Path = typer.Argument(..., help="A knowledge-base directory."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Validate a base and summarise its manifest."""
    from knowgate.retrieval.manifest import read_manifest

    with user_errors():
        kb = _load(directory, None)
        manifest = read_manifest(directory)
    summary = {
        **kb.describe(),
        "format_version": manifest.format_version,
        "knowgate_version": manifest.knowgate_version,
        "updated_at": manifest.updated_at,
        "size_bytes": sum(f.bytes for f in manifest.files.values()),
        "files": {name: f.bytes for name, f in manifest.files.items()},
    }
    if as_json:
        print_json(summary)
        return
    table = Table(title=str(directory), show_header=False)
    table.add_column("key", style="bold")
    table.add_column("value")
    for key, value in summary.items():
        if key == "files":
            continue
        table.add_row(key, str(value))
    Console().print(table)


@index_app.command("search")
def search(
    directory: Path = typer.Argument(..., help="A knowledge-base directory."),
    query: str = typer.Argument(..., help="The search text."),
    k: int = typer.Option(5, "-k", "--k", min=1, help="Number of passages."),
    mode: str | None = typer.Option(None, "--mode", help=_MODE_HELP),
    as_json: bool = typer.Option(
        False, "--json", help="Print a JSON list of {id, title, text, score}."
    ),
) -> None:
    """Print the k best passages for a query."""
    with user_errors():
        kb = _load(directory, None)
        passages = kb.search(query, k=k, mode=_mode(mode))
    if as_json:
        print_json([p.to_json() for p in passages])
        return
    out = Console()
    if not passages:
        out.print("no passages found")
    for p in passages:
        out.print(f"[bold]{p.rank}. {p.title}[/] [dim]({p.id}, score {p.score:.4f})[/]")
        out.print(p.text if len(p.text) <= 400 else p.text[:400] + "...", highlight=False)
        out.print()


def _mode(mode: str | None) -> SearchMode | None:
    from knowgate.errors import InputError

    if mode is not None and mode not in ("dense", "bm25", "hybrid"):
        raise InputError(f"unknown mode {mode!r}; expected dense, bm25 or hybrid")
    return cast("SearchMode | None", mode)
