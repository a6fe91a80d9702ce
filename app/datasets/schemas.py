from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from app.pagination import Page


class DatasetOut(BaseModel):
    """A validated, stored dataset."""

    model_config = ConfigDict(
        from_attributes=True,
        json_schema_extra={
            "examples": [
                {
                    "id": "digits",
                    "name": "digits",
                    "builtin": True,
                    "kind": "images",
                    "count": 1797,
                    "item_shape": [16, 16, 1],
                    "content_hash": "5d0e...7a",
                    "class_names": ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"],
                    "class_counts": {"0": 178, "1": 182},
                    "heldout_count": 360,
                    "created_at": "2026-01-01T12:00:00Z",
                }
            ]
        },
    )

    id: str
    name: str
    builtin: bool = Field(description="built-in datasets are visible to every project")
    kind: Literal["images", "features"]
    count: int
    item_shape: list[int] = Field(description="(H, W, C) for images, (D,) for features")
    content_hash: str
    class_names: list[str] | None
    class_counts: dict[str, Any] | None
    heldout_count: int
    created_at: datetime


class DatasetPage(Page[DatasetOut]):
    """One page of datasets (the built-ins first)."""
