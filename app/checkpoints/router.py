from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, File, Form, Response, UploadFile, status

from app.auth import CurrentProject
from app.checkpoints import service
from app.checkpoints.schemas import MAX_STEP, RUN_NAME_PATTERN, CheckpointOut, CheckpointPage, CheckpointUploadOut
from app.dependencies import ResourceId, SessionDep, SettingsDep, StoreDep
from app.errors import COMMON_RESPONSES, NOT_FOUND_RESPONSE, BadRequest, ErrorResponse, Invalid
from app.pagination import PageDep
from app.uploads import spool_upload


def run_step(run: str | None, step: int | None) -> service.RunStep | None:
    """The run and step of an upload: both or neither."""
    if (run is None) != (step is None):
        raise Invalid("send `run` and `step` together (a checkpoint of a run needs its training step), or neither")
    return None if run is None or step is None else service.RunStep(run, step)


router = APIRouter(prefix="/v1/checkpoints", tags=["checkpoints"], responses=COMMON_RESPONSES)


@router.post(
    "",
    summary="Upload a checkpoint zip, or register a folder on the server",
    description=(
        "Multipart form with either `file`: a zip of a diffusers `save_pretrained` folder (a pipeline folder "
        "with `unet/` and `scheduler/`, or a flat UNet folder with `scheduler_config.json`), or `path`: an "
        "absolute folder on the server under DIFFAUDIT_SERVER_PATHS. Weights must be safetensors. Of a zip, only "
        "the files a checkpoint consists of are extracted (configs, safetensors weights, model_index.json); the "
        "others are listed in `ignored_files`. The checkpoint is validated completely, its size bounded "
        "(DIFFAUDIT_MAX_CHECKPOINT_PARAMETERS, DIFFAUDIT_MAX_IMAGE_SIDE), before anything is built or stored. "
        "Uploading the same content again returns the existing checkpoint with 200. With `run` and `step` the "
        "checkpoint is that step of a training run (GET /v1/runs); a run has one checkpoint per step (409 otherwise)."
    ),
    response_model=CheckpointUploadOut,
    status_code=status.HTTP_201_CREATED,
    responses={
        200: {"model": CheckpointUploadOut, "description": "the same checkpoint was already stored in this project"},
        400: {"model": ErrorResponse, "description": "the zip is corrupt, or an entry escapes its folder"},
        403: {"model": ErrorResponse, "description": "server paths are not allowed, or the path is outside them"},
        409: {
            "model": ErrorResponse,
            "description": "the run already has a checkpoint at this step, or the content is already another step",
        },
        413: {"model": ErrorResponse, "description": "the upload is larger than DIFFAUDIT_MAX_UPLOAD_BYTES"},
    },
)
def create_checkpoint(
    project: CurrentProject,
    session: SessionDep,
    store: StoreDep,
    settings: SettingsDep,
    response: Response,
    file: Annotated[UploadFile | None, File(description="zip of the checkpoint folder")] = None,
    path: Annotated[str | None, Form(description="absolute folder on the server (instead of file)")] = None,
    name: Annotated[str | None, Form(description="display name; defaults to the file or folder name")] = None,
    run: Annotated[
        str | None,
        Form(pattern=RUN_NAME_PATTERN, description="training run: letters, digits, '.', '_', '-' (at most 100)"),
    ] = None,
    step: Annotated[int | None, Form(ge=0, le=MAX_STEP, description="training step in the run (with `run`)")] = None,
) -> CheckpointUploadOut:
    if (file is None) == (path is None):
        raise BadRequest("send exactly one of `file` (a zip upload) or `path` (a folder on the server)")
    place = run_step(run, step)
    ignored: list[str] = []
    if file is not None:
        with tempfile.TemporaryDirectory(prefix="diffaudit-upload-") as tmp:
            zip_path = spool_upload(file, Path(tmp), settings.max_upload_bytes)
            default_name = Path(file.filename or "checkpoint").stem
            checkpoint, created, ignored = service.upload_checkpoint(
                session, project, store, settings, zip_path, name or default_name, place
            )
    else:
        assert path is not None
        checkpoint, created = service.register_server_path(session, project, store, settings, path, name, place)
    if not created:
        response.status_code = status.HTTP_200_OK
    body = CheckpointOut.model_validate(checkpoint).model_dump()
    return CheckpointUploadOut(**body, ignored_files=ignored)


@router.get(
    "",
    summary="List this project's checkpoints, newest first",
    description="Paginated with `limit` (1-200, default 50) and `offset`; ordered newest first, then by id.",
    response_model=CheckpointPage,
)
def list_checkpoints(project: CurrentProject, session: SessionDep, page: PageDep) -> CheckpointPage:
    items, total = service.list_checkpoints(session, project, page)
    return CheckpointPage.of(items, total, page)


@router.get("/{checkpoint_id}", summary="One checkpoint", response_model=CheckpointOut, responses=NOT_FOUND_RESPONSE)
def get_checkpoint(checkpoint_id: ResourceId, project: CurrentProject, session: SessionDep) -> CheckpointOut:
    return CheckpointOut.model_validate(service.get_checkpoint(session, project, checkpoint_id))
