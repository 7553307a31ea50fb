"""Scale-out on Ray (``pip install 'knowgate[ray]'``): batch jobs on Ray Data, replicas on Serve.

Nothing else in knowgate imports Ray; these modules import it when they are imported, and a
missing Ray is a :class:`~knowgate.errors.MissingPackageError` that names the extra.

- :mod:`~knowgate.integrations.ray.runtime`: connect to a cluster, or start a local one.
- :mod:`~knowgate.integrations.ray.embedding`: embed a corpus in parallel actors (Ray Data),
  so ``knowgate index build --ray`` assembles the same knowledge base as the local path.
- :mod:`~knowgate.integrations.ray.batch`: answer the benchmark branches' uncached batches in
  parallel actors, one model each, so ``knowgate calibrate --ray`` and ``knowgate bench --ray``
  write the same resumable caches as the local path.
- :mod:`~knowgate.integrations.ray.serving`: the knowgate HTTP app as a Serve deployment, with
  replicas or autoscaling from config (``knowgate serve --ray``).

See docs/scaling.md.
"""

from knowgate.integrations.ray.runtime import RayRuntime, ray_runtime, require_ray

__all__ = ["RayRuntime", "ray_runtime", "require_ray"]
