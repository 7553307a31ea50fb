"""The benchmark: every gating policy scored on both cached branches of real questions.

- :mod:`~knowgate.evaluation.bench.retrieval_branch`: answers with retrieval through the router
  (cached, resumable); the closed-book half is :mod:`knowgate.evaluation.closed_book`.
- :mod:`~knowgate.evaluation.bench.both_branches`: the two branches row-aligned, and the
  ``both_branches.jsonl`` replay cache (``knowgate ab replay``).
- :mod:`~knowgate.evaluation.bench.held_out`: every policy cross-fitted.
- :mod:`~knowgate.evaluation.bench.operating_rules`: where to cut p(known) with both branches known.
- :mod:`~knowgate.evaluation.bench.policy_metrics`, :mod:`~knowgate.evaluation.bench.curves`,
  :mod:`~knowgate.evaluation.bench.popularity_analysis`: the numbers.
- :mod:`~knowgate.evaluation.bench.runner` and :mod:`~knowgate.evaluation.bench.report`: run it,
  write it (``knowgate bench``).

Submodules are imported directly; this package imports nothing heavy on its own.
"""
