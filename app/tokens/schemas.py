from __future__ import annotations

from pydantic import BaseModel, Field


class CurrentToken(BaseModel):
    """The project the presented token belongs to."""

    project_id: str = Field(examples=["pr_0f3a9c01d4e5b6a7c8d9"])
    project_name: str = Field(examples=["vision-team"])
