"""A stored dataset: canonical arrays under a prefix of an ArtifactStore, read memory-mapped.

Layout under `<prefix>/`:
  images.npy    (N, H, W, C) uint8, C in {1, 3}      -- kind "images"
  features.npy  (N, D) float32                        -- kind "features"
  labels.npy    (N,) int64, optional; index into DatasetInfo.class_names
  heldout.npy   (N,) bool; True for items held out of training
  meta.json     DatasetInfo, written last: its presence means the dataset is complete
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Literal

import numpy as np

from diffaudit.errors import InvalidInput
from diffaudit.store import ArtifactStore, load_array, load_json

DatasetKind = Literal["images", "features"]
META_FILE = "meta.json"
LABELS_FILE = "labels.npy"
HELDOUT_FILE = "heldout.npy"


class InvalidDataset(InvalidInput):
    """The dataset cannot be accepted or read; the message says what to fix."""


def array_file(kind: DatasetKind) -> str:
    """The file holding the main array of a dataset of this kind."""
    return f"{kind}.npy"


@dataclass(frozen=True)
class DatasetInfo:
    kind: DatasetKind
    count: int
    item_shape: tuple[int, ...]  # (H, W, C) for images, (D,) for features
    content_hash: str  # sha256 of the canonical arrays and class names (not of the held-out split)
    class_names: list[str] | None  # label index -> name
    class_counts: dict[str, int] | None
    heldout_count: int

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "count": self.count,
            "item_shape": list(self.item_shape),
            "content_hash": self.content_hash,
            "class_names": self.class_names,
            "class_counts": self.class_counts,
            "heldout_count": self.heldout_count,
        }

    @classmethod
    def from_json(cls, value: dict[str, Any]) -> DatasetInfo:
        return cls(
            kind=value["kind"],
            count=int(value["count"]),
            item_shape=tuple(int(s) for s in value["item_shape"]),
            content_hash=value["content_hash"],
            class_names=value["class_names"],
            class_counts=value["class_counts"],
            heldout_count=int(value["heldout_count"]),
        )


class Dataset:
    """A complete stored dataset; arrays are memory-mapped, so opening it costs no memory."""

    def __init__(self, store: ArtifactStore, prefix: str, info: DatasetInfo) -> None:
        self.store = store
        self.prefix = prefix.strip("/")
        self.info = info

    @classmethod
    def open(cls, store: ArtifactStore, prefix: str) -> Dataset:
        key = f"{prefix.strip('/')}/{META_FILE}"
        if not store.exists(key):
            raise InvalidDataset(f"no complete dataset under '{prefix}' (meta.json is missing); ingest it again")
        return cls(store, prefix, DatasetInfo.from_json(load_json(store, key)))

    def _load(self, name: str) -> np.ndarray:
        return load_array(self.store, f"{self.prefix}/{name}")

    @cached_property
    def images(self) -> np.ndarray:
        """(N, H, W, C) uint8, memory-mapped."""
        if self.info.kind != "images":
            raise InvalidDataset("this dataset holds features, not images")
        return self._load(array_file("images"))

    @cached_property
    def features(self) -> np.ndarray:
        """(N, D) float32, memory-mapped."""
        if self.info.kind != "features":
            raise InvalidDataset("this dataset holds images, not features")
        return self._load(array_file("features"))

    @cached_property
    def labels(self) -> np.ndarray | None:
        """(N,) int64 class indices, or None for an unlabelled dataset."""
        return self._load(LABELS_FILE) if self.info.class_names is not None else None

    @cached_property
    def heldout(self) -> np.ndarray:
        """(N,) bool, True for held-out items."""
        return self._load(HELDOUT_FILE)

    def train_indices(self) -> np.ndarray:
        return np.flatnonzero(~np.asarray(self.heldout))

    def heldout_indices(self) -> np.ndarray:
        return np.flatnonzero(np.asarray(self.heldout))

    def iter_images(self, batch_size: int, indices: np.ndarray | None = None) -> Iterator[np.ndarray]:
        """uint8 (B, H, W, C) batches, in order, of all images or of `indices`."""
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        images = self.images
        if indices is None:
            for start in range(0, len(images), batch_size):
                yield np.array(images[start : start + batch_size])
            return
        for start in range(0, len(indices), batch_size):
            yield images[np.asarray(indices[start : start + batch_size])]
