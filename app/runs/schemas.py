from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field

from app.pagination import Page


class RunOut(BaseModel):
    """A training run: the checkpoints uploaded with its name."""

    name: str
    checkpoints: int = Field(description="number of checkpoints (steps) of the run")
    first_step: int
    last_step: int
    updated_at: datetime = Field(description="when its newest checkpoint was uploaded")


class RunPage(Page[RunOut]):
    """One page of runs, by name."""


class RunEvaluationOut(BaseModel):
    """An evaluation of one of the run's checkpoints."""

    id: str
    status: str
    spec_hash: str
    dataset_id: str
    created_at: datetime
    finished_at: datetime | None


class RunCheckpointOut(BaseModel):
    """One step of the run: its checkpoint and that checkpoint's evaluations, oldest first."""

    step: int
    checkpoint_id: str
    name: str
    content_hash: str
    created_at: datetime
    evaluations: list[RunEvaluationOut]


class RunDetail(BaseModel):
    """A run's checkpoints by step, and the specs of its finished evaluations (for the trajectory)."""

    name: str
    checkpoints: list[RunCheckpointOut]
    spec_hashes: list[str] = Field(description="spec hashes of the run's finished (succeeded or rejected) evaluations")


class TrajectoryPointOut(BaseModel):
    step: int
    value: float
    lower: float | None = Field(None, description="lower end of the number's interval, when its stage gives one")
    upper: float | None = None


class TrajectoryStepOut(BaseModel):
    """The evaluation a step's numbers come from (the newest finished one of the spec for that checkpoint)."""

    step: int
    checkpoint_id: str
    evaluation_id: str
    status: str


class Trajectory(BaseModel):
    """Every headline number of the run per step, for the evaluations of one spec, and the change points."""

    run: str
    spec_hash: str | None = Field(description="the spec the numbers share; null when the run has no finished job")
    dataset_id: str | None = Field(description="the dataset the jobs ran on")
    steps: list[TrajectoryStepOut]
    series: dict[str, list[TrajectoryPointOut]] = Field(
        description="per number (irs_inf, copy_rate_<space>, volume_growth_mean/median, ds_count, the FID family when "
        "the distribution stage ran), its points in step order"
    )
    copy_threshold: float
    copying_starts: int | None = Field(description="first step whose copy rate exceeds copy_threshold")
    diversity_drops: int | None = Field(
        description="first step whose IRS_inf upper bound lies below the previous step's lower bound"
    )
    plot: str = Field(description="path of the PNG plotting every series over the steps, change points marked")
