from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field

from app.pagination import Page

RUN_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$"
MAX_STEP = 2**63 - 1  # the largest BIGINT


class CheckpointOut(BaseModel):
    """A validated checkpoint."""

    model_config = ConfigDict(
        from_attributes=True,
        json_schema_extra={
            "examples": [
                {
                    "id": "ck_3f2a9c01d4e5b6a7c8d9",
                    "name": "digits-ddpm",
                    "run": "digits-2026-12",
                    "step": 20000,
                    "content_hash": "9b1c...e0",
                    "num_parameters": 1843201,
                    "sample_size": 16,
                    "in_channels": 1,
                    "out_channels": 1,
                    "num_class_embeds": 10,
                    "conditioning": "class",
                    "source": "upload",
                    "info": {"prediction_type": "epsilon", "num_train_timesteps": 1000},
                    "created_at": "2026-01-01T12:00:00Z",
                }
            ]
        },
    )

    id: str
    name: str
    run: str | None = Field(
        validation_alias=AliasChoices("run_name", "run"), description="the training run it belongs to, if any"
    )
    step: int | None = Field(description="its training step in that run")
    content_hash: str = Field(description="sha256 of the UNet config, weights and scheduler config")
    num_parameters: int
    sample_size: int
    in_channels: int
    out_channels: int
    num_class_embeds: int | None = Field(description="number of classes of a class-conditional UNet, else null")
    conditioning: Literal["class", "none"]
    source: Literal["upload", "server_path"]
    info: dict[str, Any]
    created_at: datetime


class CheckpointUploadOut(CheckpointOut):
    """The checkpoint an upload created or found, and what of the zip was left out."""

    ignored_files: list[str] = Field(
        default_factory=list,
        description="entries of the zip a checkpoint does not consist of (only configs, safetensors weights and "
        "model_index.json are kept); they were neither extracted nor stored",
    )


class CheckpointPage(Page[CheckpointOut]):
    """One page of checkpoints."""
