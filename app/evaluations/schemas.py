from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from app.dependencies import ID_MAX_LENGTH, ID_PATTERN
from app.pagination import Page
from diffaudit.spec import EvaluationSpec

EvaluationStatus = Literal["queued", "running", "succeeded", "rejected", "failed", "cancelled"]


class EvaluationCreate(BaseModel):
    """What to evaluate and how; the spec is validated (unknown fields are refused)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "checkpoint_id": "ck_3f2a9c01d4e5b6a7c8d9",
                    "dataset_id": "digits",
                    "spec": {"stages": ["sample", "features"], "sample": {"n": 256, "scheduler": "ddim", "steps": 50}},
                }
            ]
        },
    )

    checkpoint_id: str = Field(max_length=ID_MAX_LENGTH, pattern=ID_PATTERN)
    dataset_id: str = Field(max_length=ID_MAX_LENGTH, pattern=ID_PATTERN)
    spec: EvaluationSpec = Field(
        default=EvaluationSpec.model_validate({}), description="what to compute; omitted fields take their defaults"
    )


class StageOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    name: str
    position: int
    status: Literal["pending", "running", "done", "failed", "rejected", "cancelled", "skipped"] = Field(
        description="failed, rejected or cancelled: the stage was running when the job so ended; skipped: it never ran"
    )
    done: int = Field(description="units finished (e.g. samples drawn)")
    total: int = Field(description="units in the stage; 0 until the stage reports")
    started_at: datetime | None
    finished_at: datetime | None
    seconds: float | None = Field(description="time the stage took to compute")


class EvaluationOut(BaseModel):
    model_config = ConfigDict(
        from_attributes=True,
        json_schema_extra={
            "examples": [
                {
                    "id": "ev_9a8b7c6d5e4f3a2b1c0d",
                    "status": "running",
                    "checkpoint_id": "ck_3f2a9c01d4e5b6a7c8d9",
                    "dataset_id": "digits",
                    "spec": {"version": 1, "stages": ["sample", "features"]},
                    "spec_hash": "c0ffee...",
                    "error": None,
                    "cancel_requested": False,
                    "created_at": "2026-01-01T12:00:00Z",
                    "started_at": "2026-01-01T12:00:01Z",
                    "finished_at": None,
                    "stages": [
                        {
                            "name": "sample",
                            "position": 0,
                            "status": "running",
                            "done": 128,
                            "total": 256,
                            "started_at": "2026-01-01T12:00:01Z",
                            "finished_at": None,
                            "seconds": None,
                        }
                    ],
                }
            ]
        },
    )

    id: str
    status: EvaluationStatus
    checkpoint_id: str
    dataset_id: str
    spec: dict[str, Any]
    spec_hash: str
    error: str | None = Field(description="why the job failed or was rejected")
    cancel_requested: bool
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    stages: list[StageOut]


class EvaluationPage(Page[EvaluationOut]):
    """One page of evaluations."""


class ArtifactOut(BaseModel):
    path: str = Field(examples=["sample/grid.png"])
    media_type: str = Field(examples=["image/png"])
    url: str = Field(examples=["/v1/evaluations/ev_9a8b7c6d5e4f3a2b1c0d/artifacts/sample/grid.png"])


class ArtifactList(BaseModel):
    items: list[ArtifactOut]


SHARE_MAX_SECONDS = 30 * 24 * 3600


class ShareCreate(BaseModel):
    """How long the link to one report stays valid."""

    model_config = ConfigDict(extra="forbid")

    expires_in: int = Field(
        default=7 * 24 * 3600,
        ge=60,
        le=SHARE_MAX_SECONDS,
        description="seconds the link stays valid (max 30 days)",
    )


class ShareOut(BaseModel):
    url: str = Field(
        description="opens this one report, read-only, without a bearer header, until it expires",
        examples=["/v1/evaluations/ev_9a8b7c6d5e4f3a2b1c0d/report?token=1767270000.Zm9v"],
    )
    token: str
    expires_at: datetime
