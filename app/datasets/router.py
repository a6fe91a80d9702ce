from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, File, Form, Response, UploadFile, status

from app.auth import CurrentProject
from app.datasets import service
from app.datasets.schemas import DatasetOut, DatasetPage
from app.dependencies import ResourceId, SessionDep, SettingsDep, StoreDep
from app.errors import COMMON_RESPONSES, NOT_FOUND_RESPONSE, ErrorResponse
from app.pagination import PageDep
from app.uploads import spool_upload

router = APIRouter(prefix="/v1/datasets", tags=["datasets"], responses=COMMON_RESPONSES)


@router.post(
    "",
    summary="Upload a dataset (.zip of images or .npz of arrays)",
    description=(
        "A zip of images, flat (unlabelled) or with one sub-folder per class; or an .npz with `images` "
        "(N,H,W[,C]) uint8 and optional `labels` (N,), or `features` (N,D) for your own embeddings. "
        "Everything is validated before anything is stored. Uploading the same content with the same held-out "
        "split (heldout_fraction and seed) again returns the existing dataset with 200."
    ),
    response_model=DatasetOut,
    status_code=status.HTTP_201_CREATED,
    responses={
        200: {"model": DatasetOut, "description": "the same dataset was already stored in this project"},
        400: {"model": ErrorResponse, "description": "the upload is not a readable zip"},
        413: {"model": ErrorResponse, "description": "the upload is larger than DIFFAUDIT_MAX_UPLOAD_BYTES"},
    },
)
def create_dataset(
    project: CurrentProject,
    session: SessionDep,
    store: StoreDep,
    settings: SettingsDep,
    response: Response,
    file: Annotated[UploadFile, File(description=".zip of images or .npz")],
    name: Annotated[str | None, Form(description="display name; defaults to the file name")] = None,
    heldout_fraction: Annotated[float, Form(ge=0.0, lt=1.0, description="share held out of training")] = 0.0,
    seed: Annotated[int, Form(ge=0, description="seed of the (stratified) held-out split")] = 0,
) -> DatasetOut:
    with tempfile.TemporaryDirectory(prefix="diffaudit-upload-") as tmp:
        path = spool_upload(file, Path(tmp), settings.max_upload_bytes)
        default_name = Path(file.filename or "dataset").stem
        dataset, created = service.upload_dataset(
            session, project, store, settings, path, name or default_name, heldout_fraction, seed
        )
    if not created:
        response.status_code = status.HTTP_200_OK
    return DatasetOut.model_validate(dataset)


@router.get(
    "",
    summary="List the built-in datasets and this project's datasets",
    description=(
        "Paginated with `limit` (1-200, default 50) and `offset`. The built-ins (`builtin: true`, such as "
        "`digits`) are listed first and counted in `total`, like the project's own datasets; within each "
        "group the newest come first, then by id."
    ),
    response_model=DatasetPage,
)
def list_datasets(project: CurrentProject, session: SessionDep, page: PageDep) -> DatasetPage:
    items, total = service.list_datasets(session, project, page)
    return DatasetPage.of(items, total, page)


@router.get("/{dataset_id}", summary="One dataset", response_model=DatasetOut, responses=NOT_FOUND_RESPONSE)
def get_dataset(dataset_id: ResourceId, project: CurrentProject, session: SessionDep) -> DatasetOut:
    return DatasetOut.model_validate(service.get_dataset(session, project, dataset_id))
