"""Checkpoints: validate, store under `checkpoints/<id>/`, record. Nothing half-written on failure."""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.errors import BadRequest, Conflict, Forbidden, NotFound
from app.models import Checkpoint, Project, new_id
from app.pagination import PageParams, fetch_page
from app.settings import Settings
from diffaudit.archive import ArchiveLimits, extract_selected
from diffaudit.checkpoints import CheckpointInfo, CheckpointLimits, checkpoint_members, validate_checkpoint_dir
from diffaudit.store import ArtifactStore

MAX_NAME = 200
MAX_LEFT_OUT_LOGGED = 20
logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunStep:
    """Where a checkpoint sits in a training run: the run's name and the training step."""

    run_name: str
    step: int


def store_prefix(checkpoint_id: str) -> str:
    return f"checkpoints/{checkpoint_id}"


def archive_limits(settings: Settings) -> ArchiveLimits:
    return ArchiveLimits(max_files=settings.max_archive_files, max_total_bytes=settings.max_archive_bytes)


def checkpoint_limits(settings: Settings) -> CheckpointLimits:
    return CheckpointLimits(max_parameters=settings.max_checkpoint_parameters, max_image_side=settings.max_image_side)


def unwrap_single_folder(root: Path) -> Path:
    """The folder itself, or its only entry when that is a folder (a zip of `model/...`)."""
    entries = list(root.iterdir())
    if len(entries) == 1 and entries[0].is_dir():
        return entries[0]
    return root


def get_checkpoint(session: Session, project: Project, checkpoint_id: str) -> Checkpoint:
    checkpoint = session.get(Checkpoint, checkpoint_id)
    if checkpoint is None or checkpoint.project_id != project.id:
        raise NotFound(f"checkpoint {checkpoint_id!r} not found in this project")
    return checkpoint


def list_checkpoints(session: Session, project: Project, page: PageParams) -> tuple[list[Checkpoint], int]:
    """One page of the project's checkpoints, newest first, and how many there are in all."""
    query = (
        select(Checkpoint)
        .where(Checkpoint.project_id == project.id)
        .order_by(Checkpoint.created_at.desc(), Checkpoint.id.desc())
    )
    return fetch_page(session, query, page)


def _existing(session: Session, project: Project, content_hash: str) -> Checkpoint | None:
    query = select(Checkpoint).where(Checkpoint.project_id == project.id, Checkpoint.content_hash == content_hash)
    return session.scalar(query)


def _run_step_taken(session: Session, project: Project, run: RunStep) -> Checkpoint | None:
    query = select(Checkpoint).where(
        Checkpoint.project_id == project.id, Checkpoint.run_name == run.run_name, Checkpoint.step == run.step
    )
    return session.scalar(query)


def _check_run_step(session: Session, project: Project, run: RunStep | None) -> None:
    """Refuse a run and step that another checkpoint of the project already has (409 naming them)."""
    if run is None:
        return
    taken = _run_step_taken(session, project, run)
    if taken is not None:
        raise Conflict(
            f"run {run.run_name!r} already has a checkpoint at step {run.step} ({taken.id}); "
            "use another step, or another run name",
            details={"run": run.run_name, "step": run.step, "checkpoint_id": taken.id},
        )


def _same_content(existing: Checkpoint, run: RunStep | None) -> Checkpoint:
    """The stored checkpoint of the same content, unless the upload places it elsewhere in a run (409)."""
    if run is not None and (existing.run_name, existing.step) != (run.run_name, run.step):
        place = f"run {existing.run_name!r} step {existing.step}" if existing.run_name else "no run"
        raise Conflict(
            f"this content is already checkpoint {existing.id} ({place}); "
            f"it cannot also be run {run.run_name!r} step {run.step}",
            details={"checkpoint_id": existing.id, "run": existing.run_name, "step": existing.step},
        )
    return existing


def _new_row(
    project: Project, name: str, info: CheckpointInfo, source_path: str | None, run: RunStep | None
) -> Checkpoint:
    return Checkpoint(
        id=new_id("ck"),
        project_id=project.id,
        name=name[:MAX_NAME],
        run_name=None if run is None else run.run_name,
        step=None if run is None else run.step,
        content_hash=info.content_hash,
        num_parameters=info.num_parameters,
        sample_size=info.sample_size,
        in_channels=info.in_channels,
        out_channels=info.out_channels,
        num_class_embeds=info.num_class_embeds,
        source_path=source_path,
        info=info.to_json(),
    )


def _record(
    session: Session, project: Project, row: Checkpoint, store: ArtifactStore, run: RunStep | None
) -> tuple[Checkpoint, bool]:
    """Commit the row; when the same content (or run step) was recorded concurrently, drop ours and return theirs
    (or refuse the run step)."""
    session.add(row)
    try:
        session.commit()
    except IntegrityError:
        session.rollback()
        store.delete_prefix(store_prefix(row.id))
        existing = _existing(session, project, row.content_hash)
        if existing is None:
            _check_run_step(session, project, run)
            raise
        return _same_content(existing, run), False
    return row, True


def _put_folder(store: ArtifactStore, prefix: str, folder: Path) -> None:
    """Copy every file of `folder` into the store; on failure remove what was copied."""
    try:
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            store.put_file(f"{prefix}/{path.relative_to(folder).as_posix()}", path)
    except BaseException:
        store.delete_prefix(prefix)
        raise


def upload_checkpoint(
    session: Session,
    project: Project,
    store: ArtifactStore,
    settings: Settings,
    zip_path: Path,
    name: str,
    run: RunStep | None = None,
) -> tuple[Checkpoint, bool, list[str]]:
    """Extract the checkpoint's files from an uploaded zip, validate, store and record them.

    Returns (checkpoint, created, the zip's entries left out because a checkpoint does not consist of them).
    """
    with tempfile.TemporaryDirectory(prefix="diffaudit-checkpoint-") as tmp:
        extracted = Path(tmp) / "x"
        extraction = extract_selected(zip_path, extracted, archive_limits(settings), checkpoint_members)
        if extraction.left_out:
            logger.info(
                "checkpoint upload %r: left out %d file(s) that are not part of a checkpoint: %s",
                name,
                len(extraction.left_out),
                extraction.left_out[:MAX_LEFT_OUT_LOGGED],
            )
        folder = unwrap_single_folder(extracted)
        info = validate_checkpoint_dir(folder, checkpoint_limits(settings))
        existing = _existing(session, project, info.content_hash)
        if existing is not None:
            return _same_content(existing, run), False, extraction.left_out
        _check_run_step(session, project, run)
        row = _new_row(project, name, info, source_path=None, run=run)
        _put_folder(store, store_prefix(row.id), folder)
    try:
        checkpoint, created = _record(session, project, row, store, run)
    except BaseException:
        store.delete_prefix(store_prefix(row.id))
        raise
    return checkpoint, created, extraction.left_out


def allowed_server_path(settings: Settings, path: str) -> Path:
    """The resolved folder, when it lies under one of DIFFAUDIT_SERVER_PATHS."""
    if not settings.server_paths:
        raise Forbidden(
            "registering server-side folders is disabled on this server; upload a zip instead, "
            "or ask the operator to set DIFFAUDIT_SERVER_PATHS"
        )
    requested = Path(path)
    if not requested.is_absolute():
        raise BadRequest(f"path {path!r} must be absolute")
    resolved = requested.resolve()
    roots = [root.resolve() for root in settings.server_paths]
    if not any(resolved.is_relative_to(root) for root in roots):
        raise Forbidden(
            f"path {path!r} is outside the folders this server may read (DIFFAUDIT_SERVER_PATHS); "
            "ask the operator which folders they are"
        )
    return resolved


def register_server_path(
    session: Session,
    project: Project,
    store: ArtifactStore,
    settings: Settings,
    path: str,
    name: str | None,
    run: RunStep | None = None,
) -> tuple[Checkpoint, bool]:
    """Validate a folder on the server and record it in place (its files are not copied)."""
    folder = allowed_server_path(settings, path)
    info = validate_checkpoint_dir(folder, checkpoint_limits(settings))
    existing = _existing(session, project, info.content_hash)
    if existing is not None:
        return _same_content(existing, run), False
    _check_run_step(session, project, run)
    row = _new_row(project, name or folder.name, info, source_path=str(folder), run=run)
    return _record(session, project, row, store, run)


def checkpoint_dir(store: ArtifactStore, checkpoint: Checkpoint) -> Path:
    """A local folder holding the checkpoint's files (fetched from the store into its cache if needed)."""
    if checkpoint.source_path is not None:
        return Path(checkpoint.source_path)
    prefix = store_prefix(checkpoint.id)
    keys = store.list(prefix + "/")
    if not keys:
        raise NotFound(f"the files of checkpoint {checkpoint.id} are missing from the artifact store")
    for key in keys:
        local = store.local_path(key)
    depth = len(keys[-1].split("/")) - len(prefix.split("/"))
    return local.parents[depth - 1]
