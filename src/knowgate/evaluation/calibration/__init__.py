"""The calibration study (``knowgate calibrate``): which signals predict closed-book correctness.

- :mod:`~knowgate.evaluation.calibration.study`: every feature and fused feature set, cross-fitted;
  the typed :class:`~knowgate.evaluation.calibration.study.CalibrationSummary`.
- :mod:`~knowgate.evaluation.calibration.report`: ``report.md`` / ``report.json`` and the plots,
  rendered from that summary.
"""
