from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from app.dependencies import ID_MAX_LENGTH, ID_PATTERN
from diffaudit.metrics.comparison import DEFAULT_ERROR_RATE, DEFAULT_REPLICATES

MAX_REPLICATES = 10_000


class ComparisonCreate(BaseModel):
    """Two succeeded evaluations of the same spec and dataset: the baseline (A) and the candidate (B)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"baseline_evaluation_id": "ev_1a2b3c4d5e6f7a8b9c0d", "candidate_evaluation_id": "ev_..."}]
        },
    )

    baseline_evaluation_id: str = Field(max_length=ID_MAX_LENGTH, pattern=ID_PATTERN)
    candidate_evaluation_id: str = Field(max_length=ID_MAX_LENGTH, pattern=ID_PATTERN)
    error_rate: float = Field(
        DEFAULT_ERROR_RATE, gt=0, lt=0.5, description="a verdict other than 'not distinguishable' is wrong this often"
    )
    replicates: int = Field(DEFAULT_REPLICATES, ge=100, le=MAX_REPLICATES, description="bootstrap replicates")


class MetricComparison(BaseModel):
    metric: str = Field(description="irs_inf, copy_rate_<space>, nn_distance_<space>, volume_growth_mean, ds_rate")
    baseline: float
    candidate: float
    difference: float = Field(description="candidate minus baseline")
    interval: tuple[float, float] = Field(description="paired percentile bootstrap interval at 1 - error_rate")
    verdict: Literal["worse", "not distinguishable", "better"]
    higher_is_better: bool
    error_rate: float
    n_pairs: int = Field(description="samples (or training images, for volume growth) compared in pairs")


class ComparisonOut(BaseModel):
    """Per metric, the candidate against the baseline."""

    baseline_evaluation_id: str
    candidate_evaluation_id: str
    spec_hash: str
    dataset_id: str
    replicates: int
    seed: int = Field(description="seed of the bootstrap's resampling")
    metrics: list[MetricComparison]
