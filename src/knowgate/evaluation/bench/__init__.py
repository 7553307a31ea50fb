"""The benchmark (``knowgate bench``): every gating policy scored on both cached branches.

- :mod:`~knowgate.evaluation.bench.table`: the two branches row-aligned (:class:`BenchTable`),
  written as the both-branch file ``knowgate ab replay`` reads.
- :mod:`~knowgate.evaluation.bench.policies`: the policy families and their held-out
  predictions (one :data:`POLICY_FAMILIES` entry adds a family).
- :mod:`~knowgate.evaluation.bench.policy_results`, :mod:`~knowgate.evaluation.bench.curves`,
  :mod:`~knowgate.evaluation.bench.popularity`: the numbers.
- :mod:`~knowgate.evaluation.bench.leave_one_dataset_out`: the shipped recipe on unseen datasets.
- :mod:`~knowgate.evaluation.bench.null_check`: the main policies on permuted labels.
- :mod:`~knowgate.evaluation.bench.summary`: the typed summary;
  :mod:`~knowgate.evaluation.bench.runner` computes it, :mod:`~knowgate.evaluation.bench.report`
  writes it.

Submodules are imported directly; this package imports nothing heavy on its own.
"""
