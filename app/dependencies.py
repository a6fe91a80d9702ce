"""Request-scoped dependencies: the settings, a database session and the artifact store of the app."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Path, Query, Request
from sqlalchemy.orm import Session

from app.settings import Settings
from diffaudit.store import ArtifactStore


def get_settings_dep(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def get_session(request: Request) -> Iterator[Session]:
    with request.app.state.sessionmaker() as session:
        yield session


def get_store(request: Request) -> ArtifactStore:
    store: ArtifactStore = request.app.state.store
    return store


# Resource ids are `<prefix>_<hex>` (app.models.new_id) or a built-in's name: anything else (a NUL byte, which
# PostgreSQL cannot compare, or a 10 kB string) is a 422 before it reaches the database.
ID_PATTERN = r"^[A-Za-z0-9_-]+$"
ID_MAX_LENGTH = 32
ResourceId = Annotated[str, Path(pattern=ID_PATTERN, max_length=ID_MAX_LENGTH, description="the resource's id")]
IdFilter = Annotated[
    str | None, Query(pattern=ID_PATTERN, max_length=ID_MAX_LENGTH, description="only items with this id")
]

SettingsDep = Annotated[Settings, Depends(get_settings_dep)]
SessionDep = Annotated[Session, Depends(get_session)]
StoreDep = Annotated[ArtifactStore, Depends(get_store)]
