"""The `sample` stage: N samples from the checkpoint with the spec's scheduler.

Any kind of checkpoint: a latent model's latents are decoded batch by batch, so the images are the decoded
ones; `guidance_scale` > 1 samples with classifier-free guidance (a model with a null class: DiT).

Samples are drawn batch by batch through diffaudit.common.batches (resumable: a job killed mid-stage resumes at its
first missing batch, with the same result) into `sample/images.npy` (N, H, W, C) uint8, with `sample/labels.npy`
for class-conditional models and `sample/grid.png` (the first 64). With the irs stage's early rejection, every
batch goes through the early-rejection monitor (diffaudit.stages.early_rejection); when it rejects, the samples
drawn so far are kept as `sample/drawn_before_rejection.npy` for the analyses that run after a rejection.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from diffaudit.checkpoints import Checkpoint, class_labels_for, make_scheduler
from diffaudit.common import batches
from diffaudit.common.batches import Batches, OnBatch, draw_resumable
from diffaudit.errors import InvalidInput
from diffaudit.imaging import image_grid, png_bytes
from diffaudit.stages.artifacts import (
    REJECTED_SAMPLES_KEY,
    SAMPLE_BATCHES_PREFIX,
    SAMPLE_LABELS_KEY,
    SAMPLES_KEY,
)
from diffaudit.stages.base import Queue, Rejected, StageContext
from diffaudit.stages.early_rejection import early_rejection_monitor
from diffaudit.store import save_array

GRID_KEY = "sample/grid.png"
GRID_SAMPLES = 64


def batch_key(start: int) -> str:
    """Where the batch starting at sample `start` is kept until the batches are assembled."""
    return batches.batch_key(SAMPLE_BATCHES_PREFIX, start)


def draw_samples(ctx: StageContext, on_batch: OnBatch | None = None) -> dict[str, Any]:
    """Draw (or resume drawing) the spec's samples batch by batch, store them, and summarise."""
    spec = ctx.spec.sample
    checkpoint: Checkpoint = ctx.checkpoint
    if spec.guidance_scale > 1 and checkpoint.info.null_class is None:
        raise InvalidInput(
            f"sample.guidance_scale {spec.guidance_scale:g} asks for classifier-free guidance, but this checkpoint "
            "has no null class (only a DiT has one); set it to 1"
        )
    labels = class_labels_for(spec.n, checkpoint.info.num_class_embeds, spec.class_label)
    where = Batches(ctx.job, SAMPLES_KEY, SAMPLE_BATCHES_PREFIX)
    try:
        drawn = draw_resumable(
            where,
            unet=checkpoint.denoiser,
            scheduler=make_scheduler(spec.scheduler, checkpoint.scheduler_config),
            guidance_scale=spec.guidance_scale,
            autoencoder=checkpoint.autoencoder,
            n=spec.n,
            steps=spec.steps,
            seed=spec.seed,
            batch_size=spec.batch_size,
            class_labels=labels,
            device=ctx.device,
            on_batch=on_batch,
            report=ctx.report,
            check_cancelled=ctx.check_cancelled,
        )
    except Rejected:
        save_array(ctx.job, REJECTED_SAMPLES_KEY, where.drawn(spec.n, spec.batch_size))
        raise
    if labels is not None:
        save_array(ctx.job, SAMPLE_LABELS_KEY, labels)
    ctx.job.put_bytes(GRID_KEY, png_bytes(image_grid(np.asarray(drawn.images[:GRID_SAMPLES]))))
    speed = drawn.new / drawn.seconds if drawn.new and drawn.seconds > 0 else None
    summary: dict[str, Any] = {
        "headline": f"{spec.n} samples with {spec.scheduler} ({spec.steps} steps)"
        + (f", guidance scale {spec.guidance_scale:g}" if spec.guidance_scale > 1 else "")
        + (f", {speed:.1f} images/s" if speed is not None else ""),
        "n": spec.n,
        "scheduler": spec.scheduler,
        "steps": spec.steps,
        "seed": spec.seed,
        "guidance_scale": spec.guidance_scale,
        "kind": checkpoint.info.kind,
        "images_per_second": round(speed, 3) if speed is not None else None,
        "conditional": labels is not None,
    }
    if labels is not None:
        classes, counts = np.unique(labels, return_counts=True)
        summary["class_counts"] = {str(c): int(k) for c, k in zip(classes, counts, strict=True)}
    return summary


class SampleStage:
    name = "sample"
    queue: Queue = "gpu"

    def run(self, ctx: StageContext) -> dict[str, Any]:
        return draw_samples(ctx, early_rejection_monitor(ctx))
