"""The typed view of stage summaries that other stages, the gate and the CLI read (pydantic, no torch: light to
import). A stage returns its summary as JSON-able data; these models read the fields others rely on and keep the
rest (extra fields allowed)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict


class StageSummary(BaseModel):
    """What every stage's summary has: a one-line headline (the CLI prints it)."""

    model_config = ConfigDict(extra="allow", frozen=True)

    headline: str = ""
    seconds: float | None = None  # the stage's run time, added by the pipeline


class FeaturesSummary(StageSummary):
    """The features stage's summary, as the stages after it read it."""

    training_features_key: str | None  # None: the dataset holds its own features
    extractor: str | None = None
    cache_key: str | None = None  # the extractor's cache key


Number = int | float  # kept as computed (an int stays an int in the JSON the gate writes)


class IRSQuantities(BaseModel):
    """IRS_inf with its bounds and the counts behind it (diffaudit.metrics.irs.irs_summary)."""

    model_config = ConfigDict(extra="allow", frozen=True)

    irs_inf: Number
    irs_inf_lower: Number
    irs_inf_upper: Number
    n_learned: int
    n_sample: int
    n_train: int
    s_hat: Number


class IRSSummary(StageSummary):
    """The irs stage's summary, as the gate reads it."""

    passed: bool
    target: Number
    k_min: int
    decision: dict[str, Any]
    synthetic: IRSQuantities
    adjusted: dict[str, Any] = {}


Interval = tuple[float, float] | None  # a bootstrap interval; None without replicates


class DistributionSummary(StageSummary):
    """The distribution stage's summary, as the gate reads it (diffaudit.metrics.distribution's keys)."""

    fid: float
    kid_mean: float
    kid_std: float
    precision: float
    recall: float
    density: float
    coverage: float
    vendi: float
    n_real: int
    n_fake: int
    k: int
    intervals: dict[str, Interval]
    warnings: list[str] = []
    fid_per_class: dict[str, float] | None = None


class MembershipMeasures(BaseModel):
    """One membership score's measures (diffaudit.metrics.membership.membership_measures)."""

    model_config = ConfigDict(extra="allow", frozen=True)

    auc: float
    tpr_at_1pct_fpr: float
    tpr_at_0_1pct_fpr: float
    smallest_measurable_fpr: float
    n_members: int
    n_nonmembers: int


class MembershipSummary(StageSummary):
    """The membership stage's summary: measures per score, the most exposed training images, what it shows."""

    n_members: int
    n_nonmembers: int
    scores: dict[str, MembershipMeasures]
    most_exposed: list[dict[str, Any]]
    statement: str
