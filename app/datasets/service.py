"""Datasets: ingest into `datasets/<id>/` of the store, record; built-ins exist from the start."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import ColumnElement, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.checkpoints.service import archive_limits
from app.errors import NotFound
from app.models import Dataset, Project, new_id
from app.pagination import PageParams, fetch_page
from app.settings import Settings
from diffaudit.datasets import (
    BUILTIN_DATASETS,
    DatasetInfo,
    IngestLimits,
    InvalidDataset,
    ingest_dataset,
    write_builtin_dataset,
)
from diffaudit.datasets import Dataset as StoredDataset
from diffaudit.store import ArtifactStore

MAX_NAME = 200


def store_prefix(dataset_id: str) -> str:
    return f"datasets/{dataset_id}"


def ingest_limits(settings: Settings) -> IngestLimits:
    return IngestLimits(archive=archive_limits(settings), max_image_side=settings.max_image_side)


def _visible(project: Project) -> ColumnElement[bool]:
    return or_(Dataset.project_id == project.id, Dataset.project_id.is_(None))


def get_dataset(session: Session, project: Project, dataset_id: str) -> Dataset:
    dataset = session.get(Dataset, dataset_id)
    if dataset is None or dataset.project_id not in (None, project.id):
        raise NotFound(f"dataset {dataset_id!r} not found in this project (built-ins: {', '.join(BUILTIN_DATASETS)})")
    return dataset


def list_datasets(session: Session, project: Project, page: PageParams) -> tuple[list[Dataset], int]:
    """One page of the built-ins and the project's datasets, and how many there are in all.

    Built-ins are ordinary rows without a project: they come first and count in the total;
    within each group the newest come first, then by id.
    """
    query = (
        select(Dataset)
        .where(_visible(project))
        .order_by(Dataset.project_id.is_(None).desc(), Dataset.created_at.desc(), Dataset.id.desc())
    )
    return fetch_page(session, query, page)


def _row(dataset_id: str, project_id: str | None, name: str, info: DatasetInfo) -> Dataset:
    return Dataset(
        id=dataset_id,
        project_id=project_id,
        name=name[:MAX_NAME],
        kind=info.kind,
        count=info.count,
        item_shape=list(info.item_shape),
        content_hash=info.content_hash,
        class_names=info.class_names,
        class_counts=info.class_counts,
        heldout_count=info.heldout_count,
        info=info.to_json(),
    )


def upload_dataset(
    session: Session,
    project: Project,
    store: ArtifactStore,
    settings: Settings,
    path: Path,
    name: str,
    heldout_fraction: float,
    seed: int,
) -> Dataset:
    """Validate and store an uploaded .zip or .npz, then record it; nothing stays behind on failure."""
    dataset_id = new_id("ds")
    prefix = store_prefix(dataset_id)
    try:
        info = ingest_dataset(
            path, store, prefix, ingest_limits(settings), heldout_fraction=heldout_fraction, seed=seed
        )
        row = _row(dataset_id, project.id, name, info)
        session.add(row)
        session.commit()
    except BaseException:
        session.rollback()
        store.delete_prefix(prefix)
        raise
    return row


def _builtin_is_complete(session: Session, store: ArtifactStore, name: str) -> bool:
    if session.get(Dataset, name) is None:
        return False
    try:
        StoredDataset.open(store, store_prefix(name))
    except InvalidDataset:
        return False
    return True


def ensure_builtin_datasets(session: Session, store: ArtifactStore) -> None:
    """Write each built-in dataset's files and row unless both exist (idempotent, safe to race)."""
    for name in BUILTIN_DATASETS:
        if _builtin_is_complete(session, store, name):
            continue
        info = write_builtin_dataset(name, store, store_prefix(name))
        if session.get(Dataset, name) is not None:
            continue
        session.add(_row(name, None, name, info))
        try:
            session.commit()
        except IntegrityError:  # another process recorded it first
            session.rollback()
