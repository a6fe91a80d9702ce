"""Comparisons: two finished evaluations of one spec, compared sample by sample (paired bootstrap)."""

from __future__ import annotations

from fastapi import APIRouter

from app.auth import CurrentProject
from app.comparisons import service
from app.comparisons.schemas import ComparisonCreate, ComparisonOut
from app.dependencies import SessionDep, StoreDep
from app.errors import COMMON_RESPONSES, JSON_BODY_RESPONSES, NOT_FOUND_RESPONSE, ErrorResponse

router = APIRouter(prefix="/v1/comparisons", tags=["comparisons"], responses=COMMON_RESPONSES)


@router.post(
    "",
    summary="Compare a candidate evaluation with a baseline, sample by sample",
    description=(
        "Both evaluations must have succeeded with the same spec (seeds included) on the same dataset, so that "
        "sample i of both comes from the same seed; a 422 lists every field that differs. Per metric the answer "
        "holds both values, the difference (candidate minus baseline), its paired percentile bootstrap interval at "
        "1 - error_rate and a verdict: worse, not distinguishable or better. Computed on request, not stored."
    ),
    response_model=ComparisonOut,
    responses={
        **JSON_BODY_RESPONSES,
        **NOT_FOUND_RESPONSE,
        409: {"model": ErrorResponse, "description": "an evaluation has not succeeded"},
    },
)
def create_comparison(
    request: ComparisonCreate, project: CurrentProject, session: SessionDep, store: StoreDep
) -> ComparisonOut:
    return ComparisonOut.model_validate(service.compare(session, project, store, request))
