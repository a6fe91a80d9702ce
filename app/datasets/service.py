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
    write_builtin_dataset,
)
from diffaudit.datasets import Dataset as StoredDataset
from diffaudit.datasets.ingest import PreparedDataset, prepared_dataset
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


def _row(dataset_id: str, project_id: str | None, name: str, info: DatasetInfo, heldout_hash: str | None) -> Dataset:
    return Dataset(
        id=dataset_id,
        project_id=project_id,
        name=name[:MAX_NAME],
        kind=info.kind,
        count=info.count,
        item_shape=list(info.item_shape),
        content_hash=info.content_hash,
        heldout_hash=heldout_hash,
        class_names=info.class_names,
        class_counts=info.class_counts,
        heldout_count=info.heldout_count,
        info=info.to_json(),
    )


def _existing(session: Session, project: Project, prepared: PreparedDataset) -> Dataset | None:
    """The project's dataset with the same content and the same held-out split, if there is one."""
    query = select(Dataset).where(
        Dataset.project_id == project.id,
        Dataset.content_hash == prepared.info.content_hash,
        Dataset.heldout_hash == prepared.heldout_hash,
    )
    return session.scalar(query)


def upload_dataset(
    session: Session,
    project: Project,
    store: ArtifactStore,
    settings: Settings,
    path: Path,
    name: str,
    heldout_fraction: float,
    seed: int,
) -> tuple[Dataset, bool]:
    """Validate an uploaded .zip or .npz, then store and record it; nothing stays behind on failure.

    The same content with the same held-out split as a dataset of the project is that dataset:
    returns (dataset, created), created False for an existing one (nothing new is stored).
    """
    with prepared_dataset(path, ingest_limits(settings), heldout_fraction=heldout_fraction, seed=seed) as prepared:
        existing = _existing(session, project, prepared)
        if existing is not None:
            return existing, False
        row = _row(new_id("ds"), project.id, name, prepared.info, prepared.heldout_hash)
        prefix = store_prefix(row.id)
        try:
            prepared.put(store, prefix)
            session.add(row)
            session.commit()
        except IntegrityError:  # the same dataset was recorded concurrently: drop ours, return theirs
            session.rollback()
            store.delete_prefix(prefix)
            existing = _existing(session, project, prepared)
            if existing is None:
                raise
            return existing, False
        except BaseException:
            session.rollback()
            store.delete_prefix(prefix)
            raise
    return row, True


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
        session.add(_row(name, None, name, info, heldout_hash=None))
        try:
            session.commit()
        except IntegrityError:  # another process recorded it first
            session.rollback()
