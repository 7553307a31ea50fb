"""Controlled familiarity studies: does activation sparsity track what a model knows?

Two experiments remove the question-template confound of PopQA:

- :mod:`knowgate.studies.fabricated`: real vs fabricated entities in identical templates;
- :mod:`knowgate.studies.taught`: fictional facts taught to the model with a LoRA adapter
  (0, 1, 3 or 10 exposures) vs never taught.

Shared pieces: seeded generators (:mod:`.names`, :mod:`.fabricated_data`, :mod:`.taught_data`),
LoRA fine-tuning (:mod:`.finetune`), separation statistics with cluster-bootstrap intervals
(:mod:`.statistics`) and signal tables, probes and plots (:mod:`.analysis`). Submodules are
imported directly; this package imports nothing heavy.
"""
