"""Resumable sampling: draw samples batch by batch into a store, resume after an interruption, assemble them.

Each batch is stored as `<batches>/<start:08d>.npy` (the seconds it took in `<batches>_seconds/`) as soon as it is
drawn, so a job killed mid-way resumes at its first missing batch; since sample i depends only on seed + i, the result
equals an uninterrupted run. At the end the batches are copied, in order, into one (N, H, W, C) uint8 array
through a memory map (memory does not grow with N), stored under `images_key`, and the batches are deleted.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from diffaudit.checkpoints import sample_batches
from diffaudit.store import ArtifactStore, load_array, load_json, save_array, save_json

# Called with (index of the batch's first sample, uint8 NHWC images) for every batch in order, including
# batches kept from an interrupted run; it may raise to stop the drawing (e.g. diffaudit.stages.base.Rejected).
OnBatch = Callable[[int, np.ndarray], None]
ReportFn = Callable[[int, int], None]


def batch_key(batches_prefix: str, start: int) -> str:
    return f"{batches_prefix}/{start:08d}.npy"


@dataclass(frozen=True)
class Batches:
    """Where one set of samples is kept: its batches while drawn, its assembled images after."""

    store: ArtifactStore
    images_key: str
    batches_prefix: str

    def batch_key(self, start: int) -> str:
        return batch_key(self.batches_prefix, start)

    @property
    def seconds_prefix(self) -> str:
        return f"{self.batches_prefix}_seconds"

    def seconds_key(self, start: int) -> str:
        return f"{self.seconds_prefix}/{start:08d}.json"

    @property
    def total_seconds_key(self) -> str:
        return self.images_key.removesuffix(".npy") + "_seconds.json"

    def first_missing(self, n: int, batch_size: int) -> int:
        """The first sample of the first batch not yet stored (n when all are)."""
        return next((s for s in range(0, n, batch_size) if not self.store.exists(self.batch_key(s))), n)

    def drawn(self, n: int, batch_size: int) -> np.ndarray:
        """The samples stored so far (drawn before an interruption or a rejection), in order."""
        if self.store.exists(self.images_key):
            return load_array(self.store, self.images_key, mmap=False)
        starts = range(0, self.first_missing(n, batch_size), batch_size)
        return np.concatenate([load_array(self.store, self.batch_key(s), mmap=False) for s in starts])


@dataclass(frozen=True)
class Drawn:
    images: np.ndarray  # memory-mapped
    seconds: float  # drawing time over every run that drew a batch
    new: int  # samples drawn by this call (0 when every batch was kept)


def draw_resumable(
    where: Batches,
    *,
    unet: Any,
    scheduler: Any,
    n: int,
    steps: int,
    seed: int,
    batch_size: int,
    class_labels: np.ndarray | None,
    device: Any,
    guidance: Any = None,
    guidance_scale: float = 1.0,
    autoencoder: Any = None,
    on_batch: OnBatch | None = None,
    report: ReportFn = lambda done, total: None,
    check_cancelled: Callable[[], None] = lambda: None,
) -> Drawn:
    """Samples 0..n-1 (sample i from seed + i, class class_labels[i]) drawn or resumed, stored and assembled."""
    store = where.store
    if store.exists(where.images_key):  # assembled before an interruption: replay it for on_batch
        images = load_array(store, where.images_key)
        for start in range(0, n, batch_size):
            check_cancelled()
            if on_batch is not None:
                on_batch(start, np.asarray(images[start : start + batch_size]))
        return Drawn(images, float(load_json(store, where.total_seconds_key)["seconds"]), 0)
    resume_at = where.first_missing(n, batch_size)
    for start in range(0, resume_at, batch_size):
        check_cancelled()
        if on_batch is not None:
            on_batch(start, load_array(store, where.batch_key(start), mmap=False))
    report(resume_at, n)
    batches = sample_batches(
        unet,
        scheduler,
        n=n,
        steps=steps,
        seed=seed,
        batch_size=batch_size,
        class_labels=class_labels,
        device=device,
        start=resume_at,
        guidance=guidance,
        guidance_scale=guidance_scale,
        autoencoder=autoencoder,
        check_cancelled=check_cancelled,
    )
    started = time.perf_counter()
    for start, images in batches:
        save_json(store, where.seconds_key(start), {"seconds": time.perf_counter() - started})
        save_array(store, where.batch_key(start), images)
        if on_batch is not None:
            on_batch(start, images)
        report(start + len(images), n)
        check_cancelled()
        started = time.perf_counter()
    starts = range(0, n, batch_size)
    seconds = sum(float(load_json(store, where.seconds_key(s))["seconds"]) for s in starts)
    assemble(where, n, batch_size)
    save_json(store, where.total_seconds_key, {"seconds": seconds})
    store.delete_prefix(where.batches_prefix)
    store.delete_prefix(where.seconds_prefix)
    return Drawn(load_array(store, where.images_key), seconds, n - resume_at)


def assemble(where: Batches, n: int, batch_size: int) -> None:
    """Copy the stored batches, in order, into one (N, H, W, C) uint8 array through a memory map."""
    first = load_array(where.store, where.batch_key(0))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "images.npy"
        images = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(n, *first.shape[1:]))
        for start in range(0, n, batch_size):
            batch = load_array(where.store, where.batch_key(start))
            images[start : start + len(batch)] = batch
        images.flush()
        del images
        where.store.put_file(where.images_key, path)
