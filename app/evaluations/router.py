from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Response, status
from fastapi.responses import FileResponse

from app.auth import CurrentProject
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
