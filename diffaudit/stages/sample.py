"""The `sample` stage: N samples from the checkpoint with the spec's scheduler.

Each batch is stored as `sample/batches/{start:08d}.npy` as soon as it is drawn, so a job
killed mid-stage resumes at its first missing batch; since sample i depends only on seed + i,
the result equals an uninterrupted run. At the end the batches are assembled into
`sample/images.npy` (N, H, W, C) uint8 through a memory map (memory does not grow with N),
with `sample/labels.npy` for class-conditional models and `sample/grid.png` (the first 64).
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from diffaudit.checkpoints import Checkpoint, class_labels_for, make_scheduler, sample_batches
from diffaudit.imaging import image_grid, png_bytes
from diffaudit.pipeline import Queue, StageContext
from diffaudit.stages.irs import early_rejection_monitor
from diffaudit.store import load_array, save_array

IMAGES_KEY = "sample/images.npy"
LABELS_KEY = "sample/labels.npy"
GRID_KEY = "sample/grid.png"
BATCHES_PREFIX = "sample/batches"
GRID_SAMPLES = 64

# Called with (index of the batch's first sample, uint8 NHWC images) for every batch in order,
# including batches kept from an interrupted run; may raise diffaudit.pipeline.Rejected.
OnBatch = Callable[[int, np.ndarray], None]


def batch_key(start: int) -> str:
    return f"{BATCHES_PREFIX}/{start:08d}.npy"


def first_missing_batch(ctx: StageContext, n: int, batch_size: int) -> int:
    """The first sample of the first batch not yet stored (n when all are)."""
    return next((start for start in range(0, n, batch_size) if not ctx.job.exists(batch_key(start))), n)


def draw_samples(ctx: StageContext, on_batch: OnBatch | None = None) -> dict[str, Any]:
    """Draw (or resume drawing) the spec's samples batch by batch, store them, and summarise."""
    spec = ctx.spec.sample
    checkpoint: Checkpoint = ctx.checkpoint
    labels = class_labels_for(spec.n, checkpoint.info.num_class_embeds, spec.class_label)
    resume_at = first_missing_batch(ctx, spec.n, spec.batch_size)
    for start in range(0, resume_at, spec.batch_size):
        ctx.check_cancelled()
        if on_batch is not None:
            on_batch(start, load_array(ctx.job, batch_key(start), mmap=False))
    ctx.report(resume_at, spec.n)
    started = time.perf_counter()
    batches = sample_batches(
        checkpoint.unet,
        make_scheduler(spec.scheduler, checkpoint.scheduler_config),
        n=spec.n,
        steps=spec.steps,
        seed=spec.seed,
        batch_size=spec.batch_size,
        class_labels=labels,
        device=ctx.device,
        start=resume_at,
        check_cancelled=ctx.check_cancelled,
    )
    for start, images in batches:
        save_array(ctx.job, batch_key(start), images)
        if on_batch is not None:
            on_batch(start, images)
        ctx.report(start + len(images), spec.n)
        ctx.check_cancelled()
    seconds = time.perf_counter() - started
    assemble_images(ctx, spec.n, spec.batch_size)
    if labels is not None:
        save_array(ctx.job, LABELS_KEY, labels)
    ctx.job.put_bytes(GRID_KEY, png_bytes(image_grid(np.asarray(load_array(ctx.job, IMAGES_KEY)[:GRID_SAMPLES]))))
    ctx.job.delete_prefix(BATCHES_PREFIX)
    drawn = spec.n - resume_at
    speed = f", {drawn / seconds:.1f} images/s" if drawn else ""
    summary: dict[str, Any] = {
        "headline": f"{spec.n} samples with {spec.scheduler} ({spec.steps} steps){speed}",
        "n": spec.n,
        "scheduler": spec.scheduler,
        "steps": spec.steps,
        "seed": spec.seed,
        "images_per_second": round(drawn / seconds, 3) if drawn else None,
        "conditional": labels is not None,
    }
    if labels is not None:
        classes, counts = np.unique(labels, return_counts=True)
        summary["class_counts"] = {str(c): int(k) for c, k in zip(classes, counts, strict=True)}
    return summary


def assemble_images(ctx: StageContext, n: int, batch_size: int) -> None:
    """Copy the stored batches, in order, into one (N, H, W, C) uint8 array through a memory map."""
    first = load_array(ctx.job, batch_key(0))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "images.npy"
        images = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(n, *first.shape[1:]))
        for start in range(0, n, batch_size):
            batch = load_array(ctx.job, batch_key(start))
            images[start : start + len(batch)] = batch
        images.flush()
        del images
        ctx.job.put_file(IMAGES_KEY, path)


class SampleStage:
    name = "sample"
    queue: Queue = "gpu"

    def run(self, ctx: StageContext) -> dict[str, Any]:
        return draw_samples(ctx, early_rejection_monitor(ctx))
