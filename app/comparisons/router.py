"""Comparisons: two finished evaluations of one spec, compared sample by sample (paired bootstrap)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response
from fastapi.responses import HTMLResponse

from app.auth import CurrentProject
from app.comparisons import service
from app.comparisons.schemas import ComparisonCreate, ComparisonOut
from app.dependencies import ID_MAX_LENGTH, ID_PATTERN, SessionDep, StoreDep
from app.errors import COMMON_RESPONSES, JSON_BODY_RESPONSES, NOT_FOUND_RESPONSE, ErrorResponse
from app.evaluations.router import REPORT_HEADERS
from diffaudit.metrics.comparison import DEFAULT_ERROR_RATE
from diffaudit.report import render_comparison_page

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


EvaluationQuery = Annotated[str, Query(max_length=ID_MAX_LENGTH, pattern=ID_PATTERN)]


# A GET, not a POST: the page computes and stores nothing, so it is a link a person can open, reload and keep.
@router.get(
    "/report",
    summary="The comparison of a candidate evaluation with a baseline as one HTML page, worse metrics first",
    description="The same comparison as POST /v1/comparisons (same refusals), as a self-contained page: per metric "
    "both values, the difference, its interval and the verdict.",
    response_class=Response,  # errors are documented as JSON, the page as HTML
    responses={
        **NOT_FOUND_RESPONSE,
        200: {"content": {"text/html": {"schema": {"type": "string"}}}, "description": "the comparison page"},
        409: {"model": ErrorResponse, "description": "an evaluation has not succeeded"},
    },
)
def get_comparison_report(
    baseline_evaluation_id: EvaluationQuery,
    candidate_evaluation_id: EvaluationQuery,
    project: CurrentProject,
    session: SessionDep,
    store: StoreDep,
    error_rate: Annotated[float, Query(gt=0, lt=0.5)] = DEFAULT_ERROR_RATE,
) -> HTMLResponse:
    request = ComparisonCreate(
        baseline_evaluation_id=baseline_evaluation_id,
        candidate_evaluation_id=candidate_evaluation_id,
        error_rate=error_rate,
    )
    comparison = ComparisonOut.model_validate(service.compare(session, project, store, request))
    return HTMLResponse(render_comparison_page(comparison.model_dump(mode="json")), headers=REPORT_HEADERS)
