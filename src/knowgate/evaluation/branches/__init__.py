"""The branch runners: each question answered once per branch, cached and resumable.

Every runner is a :class:`~knowgate.evaluation.branches.cache.BranchRunner` - key material,
answer a batch, parse a record, load without a model - over one append-only cache format:

- :mod:`~knowgate.evaluation.branches.closed_book`: the closed-book answer and every signal (the
  label of every gate; ``knowgate calibrate`` and ``knowgate bench`` share it);
- :mod:`~knowgate.evaluation.branches.retrieval`: the answer with retrieval, through the router;
- :mod:`~knowgate.evaluation.branches.peers`: the field's peer methods' extra model calls
  (sampled answers, the self-report prompt);
- :mod:`~knowgate.evaluation.branches.timing`: the closed-book stages re-timed in a benchmark run.
"""
