from __future__ import annotations

from fastapi import APIRouter

from app.auth import CurrentProject
from app.errors import COMMON_RESPONSES
from app.tokens.schemas import CurrentToken

router = APIRouter(prefix="/v1/tokens", tags=["tokens"], responses=COMMON_RESPONSES)


@router.get("/current", summary="The project of the presented token", response_model=CurrentToken)
def current_token(project: CurrentProject) -> CurrentToken:
    return CurrentToken(project_id=project.id, project_name=project.name)
