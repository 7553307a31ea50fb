"""Settings of the taught-facts study, shared by the study and its analysis."""

from __future__ import annotations

from pydantic import Field

from knowgate.models.config import DEFAULT_MODEL
from knowgate.schema import StrictModel
from knowgate.studies.finetune import LoraTrainingConfig
from knowgate.studies.taught_data import TaughtDataConfig

COMPARISONS = {
    "taught_vs_untaught": "taught (any exposure) vs never taught, held-out phrasings",
    "known_vs_unknown": "answered correctly vs not, held-out phrasings",
    "taught_wrong_vs_untaught": "taught but answered wrongly vs never taught (familiar, not known)",
    "within_taught_known_vs_unknown": "among taught facts: answered correctly vs not",
    "base_taught_vs_untaught": "the base model (never fine-tuned): taught vs untaught people",
}
"""The comparisons the study reports, and what each one asks."""


class TaughtStudyConfig(StrictModel):
    """Everything the taught-facts study depends on.

    Attributes:
        model: the base model (packaged name, hub id, local directory).
        data: the fictional world and the exposure buckets.
        training: LoRA fine-tuning settings and budget.
        folds: cross-fitting folds of probes and feature-set comparisons.
        n_boot: cluster-bootstrap resamples of every interval.
        probe_c: inverse regularisation of the hidden-state probes.
        base_control: also run the held-out questions through the base model.
    """

    model: str = DEFAULT_MODEL
    data: TaughtDataConfig = TaughtDataConfig()
    training: LoraTrainingConfig = LoraTrainingConfig()
    folds: int = Field(default=5, ge=2)
    n_boot: int = Field(default=1000, ge=0)
    probe_c: float = Field(default=0.1, gt=0)
    base_control: bool = True
