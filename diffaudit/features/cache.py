"""Training-set features, computed once per (dataset content, extractor) and shared by every job.

The cache key is `features/<dataset content hash>/<extractor cache_key>.npy`: the extractor's
key covers its name, layer, weights hash (or seed) and preprocessing, so any job asking for the
same features of the same data finds them. Features are written batch by batch into a
memory-mapped temporary file and stored in one atomic `put_file`, so a reader never sees a
partial array and memory stays bounded by one batch.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from diffaudit.common.cache import get_or_compute
from diffaudit.features.extractors import Extractor
from diffaudit.store import ArtifactStore, load_array

ReportFn = Callable[[int, int], None]


def training_features_key(dataset: Any, extractor: Extractor) -> str:
    """The cache store key of the features of `dataset` (all items) under `extractor`."""
    return f"features/{dataset.info.content_hash}/{extractor.cache_key()}.npy"


def training_features(
    dataset: Any, extractor: Extractor, cache: ArtifactStore, batch_size: int, report: ReportFn | None = None
) -> np.ndarray:
    """Features of ALL dataset items (train and held-out; index with dataset.train_indices()), memory-mapped.

    A dataset of kind "features" holds the user's own embeddings: they are returned as they are.
    """
    if dataset.info.kind == "features":
        return np.asarray(dataset.features, dtype=np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "features.npy"

        def extracted() -> Path:
            extract_features(extractor, dataset.iter_images(batch_size), dataset.info.count, path, report)
            return path

        features, _ = get_or_compute(cache, training_features_key(dataset, extractor), extracted, put_file, load_array)
    return features


def put_file(store: ArtifactStore, key: str, path: Path) -> None:
    store.put_file(key, path)


def extract_features(
    extractor: Extractor,
    batches: Iterable[np.ndarray],
    count: int,
    out_path: Path,
    report: ReportFn | None = None,
) -> None:
    """Write the features of `count` images, arriving in `batches`, to `out_path` as a float32 .npy.

    `report(done, count)` is called after every batch (it may raise to stop the work).
    """
    if count < 1:
        raise ValueError("no images to extract features from")
    features: np.memmap | None = None
    done = 0
    for batch in batches:
        out = extractor(batch)
        if features is None:
            features = np.lib.format.open_memmap(out_path, mode="w+", dtype=np.float32, shape=(count, out.shape[1]))
        if done + len(out) > count:
            raise ValueError(f"more than the {count} images announced were given to the extractor")
        features[done : done + len(out)] = out
        done += len(out)
        if report is not None:
            report(done, count)
    if done != count:
        raise ValueError(f"{count} images were announced but {done} were given to the extractor")
    assert features is not None  # count > 0 and done == count imply at least one batch
    features.flush()
