"""Datasets: ingest a zip of images or an .npz, store it canonically, read it memory-mapped."""

from diffaudit.datasets.dataset import Dataset, DatasetInfo, DatasetKind, InvalidDataset
from diffaudit.datasets.ingest import (
    BUILTIN_DATASETS,
    IngestLimits,
    choose_heldout,
    content_hash,
    ingest_dataset,
    write_builtin_dataset,
)

__all__ = [
    "BUILTIN_DATASETS",
    "Dataset",
    "DatasetInfo",
    "DatasetKind",
    "IngestLimits",
    "InvalidDataset",
    "choose_heldout",
    "content_hash",
    "ingest_dataset",
    "write_builtin_dataset",
]
