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
) -> None:
    """Serve the router over HTTP: POST /route, /route_batch, /feedback; GET /health, /docs."""
    from knowgate.integrations.serving import create_app

    with user_errors():
        config = build_config(
            config_file, model=model, kb=kb, policy=policy, mode=mode, threshold=threshold, k=k
        )
        router = load_router(config)
        api = create_app(router)
    import uvicorn

    served = router.describe()
    experiment = f", experiment {served['experiment']}" if served.get("experiment") else ""
    console.print(
        f"knowgate serving {served['model']}{experiment} on http://{host}:{port} (docs: /docs)"
    )
    uvicorn.run(api, host=host, port=port, log_level="info")
