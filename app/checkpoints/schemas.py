from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from app.pagination import Page


class CheckpointOut(BaseModel):
    """A validated checkpoint."""

    model_config = ConfigDict(
        from_attributes=True,
        json_schema_extra={
            "examples": [
                {
                    "id": "ck_3f2a9c01d4e5b6a7c8d9",
                    "name": "digits-ddpm",
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
