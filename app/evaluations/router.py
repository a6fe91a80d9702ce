from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Query, Response, status
from fastapi.responses import FileResponse, HTMLResponse
from fastapi.security import HTTPAuthorizationCredentials

from app.auth import CurrentProject, bearer, current_project
from app.dependencies import IdFilter, ResourceId, SessionDep, SettingsDep, StoreDep
from app.errors import COMMON_RESPONSES, JSON_BODY_RESPONSES, NOT_FOUND_RESPONSE, ErrorResponse
from app.evaluations import service
from app.evaluations.schemas import (
    ArtifactList,
    ArtifactOut,
    EvaluationCreate,
    EvaluationOut,
    EvaluationPage,
    EvaluationStatus,
    ShareCreate,
    ShareOut,
)
from app.pagination import PageDep
from app.queue import Enqueue, get_enqueue

router = APIRouter(prefix="/v1/evaluations", tags=["evaluations"], responses=COMMON_RESPONSES)


@router.post(
    "",
    summary="Start an evaluation of a checkpoint against a dataset",
    description=(
        "Validates the spec and the compatibility of checkpoint and dataset, stores the job as queued and "
        "sends it to the workers. With an `Idempotency-Key` header, repeating the request returns the same "
        "job (200); reusing the key for a different request is a 409."
    ),
    response_model=EvaluationOut,
    status_code=status.HTTP_201_CREATED,
    responses={
        **JSON_BODY_RESPONSES,
        200: {"model": EvaluationOut, "description": "the job created earlier with this Idempotency-Key"},
        404: {"model": ErrorResponse, "description": "no such checkpoint or dataset in this project"},
        409: {"model": ErrorResponse, "description": "the Idempotency-Key was used for a different request"},
        503: {"model": ErrorResponse, "description": "the broker is unreachable; the job is marked failed"},
    },
)
def create_evaluation(
    body: EvaluationCreate,
    project: CurrentProject,
    session: SessionDep,
    response: Response,
    settings: SettingsDep,
    enqueue: Annotated[Enqueue, Depends(get_enqueue)],
    idempotency_key: Annotated[str | None, Header(max_length=200)] = None,
) -> EvaluationOut:
    evaluation, created = service.create_evaluation(session, project, body, idempotency_key, enqueue, settings)
    if not created:
        response.status_code = status.HTTP_200_OK
    return EvaluationOut.model_validate(evaluation)


@router.get(
    "",
    summary="List this project's evaluations, newest first",
    description=(
        "Paginated with `limit` (1-200, default 50) and `offset`; ordered newest first, then by id. "
        "`total` counts the evaluations matching the filters."
    ),
    response_model=EvaluationPage,
)
def list_evaluations(
    project: CurrentProject,
    session: SessionDep,
    page: PageDep,
    status: EvaluationStatus | None = None,
    checkpoint_id: IdFilter = None,
    dataset_id: IdFilter = None,
) -> EvaluationPage:
    items, total = service.list_evaluations(
        session, project, page, status=status, checkpoint_id=checkpoint_id, dataset_id=dataset_id
    )
    return EvaluationPage.of(items, total, page)


@router.get(
    "/{evaluation_id}",
    summary="Status and per-stage progress of an evaluation",
    response_model=EvaluationOut,
    responses=NOT_FOUND_RESPONSE,
)
def get_evaluation(evaluation_id: ResourceId, project: CurrentProject, session: SessionDep) -> EvaluationOut:
    return EvaluationOut.model_validate(service.get_evaluation(session, project, evaluation_id))


@router.get(
    "/{evaluation_id}/results",
    summary="The versioned results document of a finished evaluation",
    response_model=dict[str, Any],
    responses={**NOT_FOUND_RESPONSE, 409: {"model": ErrorResponse, "description": "the job has no results yet"}},
)
def get_results(evaluation_id: ResourceId, project: CurrentProject, session: SessionDep) -> dict[str, Any]:
    return service.get_results(session, project, evaluation_id)


@router.post(
    "/{evaluation_id}/cancel",
    summary="Cancel an evaluation",
    description="A queued or running job ends cancelled at once; a worker running it stops at its next check "
    "(between denoising steps).",
    response_model=EvaluationOut,
    responses={**NOT_FOUND_RESPONSE, 409: {"model": ErrorResponse, "description": "the job already finished"}},
)
def cancel_evaluation(evaluation_id: ResourceId, project: CurrentProject, session: SessionDep) -> EvaluationOut:
    return EvaluationOut.model_validate(service.cancel_evaluation(session, project, evaluation_id))


@router.get(
    "/{evaluation_id}/artifacts",
    summary="List the files an evaluation produced",
    response_model=ArtifactList,
    responses=NOT_FOUND_RESPONSE,
)
def list_artifacts(
    evaluation_id: ResourceId, project: CurrentProject, session: SessionDep, store: StoreDep
) -> ArtifactList:
    paths = service.list_artifacts(session, project, store, evaluation_id)
    base = f"/v1/evaluations/{evaluation_id}/artifacts"
    return ArtifactList(items=[ArtifactOut(path=p, media_type=service.media_type(p), url=f"{base}/{p}") for p in paths])


@router.get(
    "/{evaluation_id}/artifacts/{path:path}",
    summary="Download one artifact (PNG grids, JSON, CSV, .npy arrays)",
    response_class=FileResponse,
    responses={**NOT_FOUND_RESPONSE, 200: {"content": {"image/png": {}, "application/json": {}, "text/csv": {}}}},
)
def get_artifact(
    evaluation_id: ResourceId, path: str, project: CurrentProject, session: SessionDep, store: StoreDep
) -> FileResponse:
    local = service.artifact_file(session, project, store, evaluation_id, path)
    return FileResponse(
        local, media_type=service.media_type(path), filename=local.name, content_disposition_type="inline"
    )


# The report is a page a person opens: no script, nothing fetched, framed by nobody.
REPORT_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; img-src data:; style-src 'unsafe-inline'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "private, no-store",
}


@router.get(
    "/{evaluation_id}/report",
    summary="The report of a finished evaluation: one self-contained HTML page",
    description=(
        "Verdict and evidence, a section per stage with its numbers and figures (embedded), the spec, checkpoint "
        "and dataset facts, timings. Authorised by the bearer header, or by `token` from "
        "POST /v1/evaluations/{id}/share (a link a browser can open)."
    ),
    response_class=Response,  # no media type of its own: the errors are documented as JSON, the page as HTML
    responses={
        **NOT_FOUND_RESPONSE,
        200: {"content": {"text/html": {"schema": {"type": "string"}}}, "description": "the report page"},
        403: {"model": ErrorResponse, "description": "the share token is expired or not for this report"},
        409: {"model": ErrorResponse, "description": "the job has not finished"},
        503: {"model": ErrorResponse, "description": "share tokens cannot be checked: no DIFFAUDIT_SHARE_SECRET"},
    },
)
def get_report(
    evaluation_id: ResourceId,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
    session: SessionDep,
    store: StoreDep,
    settings: SettingsDep,
    token: Annotated[str | None, Query(max_length=200, description="a share token instead of the bearer")] = None,
) -> HTMLResponse:
    if token is not None:
        page = service.shared_report(session, store, settings, evaluation_id, token)
    else:
        project = current_project(credentials, session)
        page = service.get_report(session, project, store, evaluation_id)
    return HTMLResponse(page, headers=REPORT_HEADERS)


@router.post(
    "/{evaluation_id}/share",
    summary="A link that opens this evaluation's report, read-only, until it expires",
    description="The link carries a signed token for this one report; it opens nothing else.",
    response_model=ShareOut,
    responses={
        **JSON_BODY_RESPONSES,
        **NOT_FOUND_RESPONSE,
        503: {"model": ErrorResponse, "description": "no DIFFAUDIT_SHARE_SECRET is set"},
    },
)
def share_evaluation(
    evaluation_id: ResourceId,
    project: CurrentProject,
    session: SessionDep,
    settings: SettingsDep,
    body: ShareCreate | None = None,
) -> ShareOut:
    expires_in = (body or ShareCreate()).expires_in
    token, expires = service.share_report(session, project, settings, evaluation_id, expires_in)
    url = f"/v1/evaluations/{evaluation_id}/report?token={token}"
    return ShareOut(url=url, token=token, expires_at=datetime.fromtimestamp(expires, UTC))
