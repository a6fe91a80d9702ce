"""Bearer-token authentication: every /v1 endpoint runs as the token's project."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from app.dependencies import get_session
from app.errors import Unauthorized
from app.models import Project
from app.tokens.service import project_for_token

bearer = HTTPBearer(auto_error=False, description="a project token from `diffaudit token create --project NAME`")


def current_project(
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
    session: Annotated[Session, Depends(get_session)],
) -> Project:
    if credentials is None:
        raise Unauthorized(
            "missing bearer token: send 'Authorization: Bearer <token>' "
            "(create one with `diffaudit token create --project NAME`)"
        )
    project = project_for_token(session, credentials.credentials)
    if project is None:
        raise Unauthorized("invalid bearer token: it is unknown to this server; create a new one")
    return project


CurrentProject = Annotated[Project, Depends(current_project)]
