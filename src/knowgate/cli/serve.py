"""``knowgate serve``: the router behind an HTTP API (FastAPI + uvicorn)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

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

if TYPE_CHECKING:
    from knowgate.config import RouterConfig
    from knowgate.integrations.serving import ServingConfig


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
    use_ray: bool = typer.Option(
        False,
        "--ray",
        help="Serve replicas on Ray Serve (pip install 'knowgate[ray]'); see docs/scaling.md.",
    ),
    replicas: int | None = typer.Option(
        None, "--replicas", min=1, help="With --ray: a fixed replica count (overrides config)."
    ),
    ray_config: Path | None = typer.Option(
        None, "--ray-config", help="With --ray: YAML of RayServeConfig (replicas, autoscaling)."
    ),
    ray_address: str | None = typer.Option(
        None, "--ray-address", help="With --ray: a running cluster (default: a local instance)."
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
        if use_ray:
            _serve_on_ray(config, settings, host, port, replicas, ray_config, ray_address)
            return
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


def _serve_on_ray(
    config: RouterConfig,
    settings: ServingConfig,
    host: str,
    port: int,
    replicas: int | None,
    ray_config: Path | None,
    ray_address: str | None,
) -> None:
    """Deploy the app on Ray Serve and block until Ctrl-C, then shut the deployment down."""
    import functools

    from knowgate.experiments import router_from_config
    from knowgate.integrations.ray import RayRuntime, ray_runtime, require_ray

    require_ray("serve")
    from knowgate.integrations.ray.serving import RayServeConfig, run

    deployment = RayServeConfig.from_yaml(ray_config) if ray_config else RayServeConfig()
    if replicas is not None:
        deployment = deployment.model_copy(update={"num_replicas": replicas, "autoscaling": None})
    scale = (
        f"autoscaling {deployment.autoscaling.min_replicas}-{deployment.autoscaling.max_replicas}"
        if deployment.autoscaling
        else f"{deployment.num_replicas} replica(s)"
    )
    with ray_runtime(RayRuntime(address=ray_address)):
        from ray import serve

        console.print(f"deploying knowgate on Ray Serve ({scale}); replicas load the model...")
        run(
            functools.partial(router_from_config, config),
            settings,
            deployment,
            host=host,
            port=port,
        )
        console.print(
            f"knowgate serving {config.model.source} on http://{host}:{port} via Ray Serve "
            f"({scale}; docs: /docs, OpenAI API: /v1). Ctrl-C stops it."
        )
        try:
            while True:
                time.sleep(1.0)
        except KeyboardInterrupt:
            console.print("stopping the deployment...")
        finally:
            serve.shutdown()
