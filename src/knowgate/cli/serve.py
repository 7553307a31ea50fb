"""``knowgate serve``: the router behind an HTTP API (FastAPI + uvicorn)."""

from __future__ import annotations

import typer

from knowgate.cli.app import app
from knowgate.cli.ask import (
    ConfigOption,
    KbOption,
    KOption,
    ModelOption,
    ModeOption,
    PolicyOption,
    ThresholdOption,
    build_config,
    load_router,
)
from knowgate.cli.common import console, user_errors


@app.command()
def serve(
    config_file: ConfigOption = None,
    kb: KbOption = None,
    policy: PolicyOption = None,
    mode: ModeOption = None,
    model: ModelOption = None,
    threshold: ThresholdOption = None,
    k: KOption = None,
    host: str = typer.Option("127.0.0.1", "--host", help="Interface to bind (0.0.0.0: all)."),
    port: int = typer.Option(8000, "--port", min=1, max=65535, help="TCP port."),
    max_batch: int = typer.Option(
        8, "--max-batch", help="Most queries routed together; 1 turns micro-batching off."
    ),
    max_wait_ms: float = typer.Option(
        10.0, "--max-wait-ms", help="How long a request may wait for others to join its batch."
    ),
    max_queue: int = typer.Option(
        64, "--max-queue", help="Requests waiting for a batch; more get 429 with Retry-After."
    ),
    max_body_bytes: int = typer.Option(
        2 * 1024 * 1024, "--max-body-bytes", help="Larger request bodies get 413."
    ),
    timeout_s: float = typer.Option(
        120.0, "--timeout", help="Seconds a request may take from arrival to answer (then 504)."
    ),
    graceful_s: int = typer.Option(
        30,
        "--graceful-timeout",
        help="On SIGTERM/Ctrl-C, seconds to finish in-flight requests before closing.",
    ),
) -> None:
    """Serve the router over HTTP: knowgate's API, the OpenAI API (/v1), /metrics, /docs."""
    from knowgate.integrations.serving import ServingConfig, create_app

    with user_errors():
        settings = ServingConfig.from_dict(
            {
                "max_batch_size": max_batch,
                "max_wait_ms": max_wait_ms,
                "max_queue": max_queue,
                "max_body_bytes": max_body_bytes,
                "request_timeout_s": timeout_s,
            },
            source="serve options",
        )
        config = build_config(
            config_file, model=model, kb=kb, policy=policy, mode=mode, threshold=threshold, k=k
        )
        router = load_router(config)
        # An ExperimentRouter's decision log is closed (flushed) after the last request.
        close = getattr(router, "close", None)
        api = create_app(router, config=settings, close_on_shutdown=close)
    import uvicorn

    served = router.describe()
    experiment = f", experiment {served['experiment']}" if served.get("experiment") else ""
    batching = f"batches of up to {max_batch}" if max_batch > 1 else "no micro-batching"
    console.print(
        f"knowgate serving {served['model']}{experiment} on http://{host}:{port} "
        f"({batching}; docs: /docs, OpenAI API: /v1)"
    )
    uvicorn.run(api, host=host, port=port, log_level="info", timeout_graceful_shutdown=graceful_s)
