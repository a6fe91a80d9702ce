"""The `irs` stage: Image Retrieval Score with bounds and a verdict (Dombrowski et al., "Image Retrieval Score"
supplementary material, Eq. 9, Sec. 7 and Fig. 7, Sec. 11).

The quantities come from diffaudit.metrics.irs, the decision rules from diffaudit.metrics.early_rejection, the split
and the early-rejection monitor of sampling from diffaudit.stages.early_rejection.

- References are the training split's features (the features stage's training features indexed with the split's
  training indices); queries are the generated features; the held-out split's features give the adjusted
  IRS_inf,a. A seeded held-out split (datasets without one) is recorded in `irs/heldout_indices.npy` and the
  summary.
- The target IRS_d applies to the unadjusted IRS_inf, as Eq. 9 does (Sec. 11: "does not account for measurement
  gap"); IRS_inf,a is reported beside it.
- Verdict: the spec's rule applied to the generated samples in order ("bound" when early rejection is off, which
  at the end is exactly Eq. 9's test N_learned <= k_min). A run the monitor let through therefore passes.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from diffaudit.imaging import image_grid, png_bytes
from diffaudit.metrics.early_rejection import make_rule
from diffaudit.metrics.irs import irs_per_class, irs_report, k_min, target_distinct
from diffaudit.plots.irs import distinct_curve_png
from diffaudit.retrieval.knn import nearest_neighbours
from diffaudit.stages import artifacts
from diffaudit.stages.base import Queue, StageContext
from diffaudit.stages.early_rejection import (
    CURVE_KEY,
    EARLY_KEY,
    distinct_trajectory,
    irs_split,
    verdict_rule_name,
)
from diffaudit.store import load_json, save_array

HELDOUT_KEY = "irs/heldout_indices.npy"
NEAREST_KEY = "irs/nearest_training.npy"  # position in the training split of each sample's nearest image
GRID_KEY = "irs/most_retrieved.png"
GRID_SAMPLES_PER_ROW = 8


# --- the stage ---------------------------------------------------------------------------------------


def most_retrieved_grid(
    images: np.ndarray, train_items: np.ndarray, samples: np.ndarray, gen_nn: np.ndarray, rows: int
) -> tuple[bytes, list[dict[str, int]]]:
    """Rows of (training image, then up to 8 samples that retrieved it), most retrieved first; and the counts.

    images: the dataset's images (memory-mapped); train_items: its item index of each training position.
    """
    counts = np.bincount(gen_nn, minlength=len(train_items))
    top = np.argsort(-counts, kind="stable")[: min(rows, int((counts > 0).sum()))]
    channels = max(images.shape[3], samples.shape[3])
    blank = np.full((1, *samples.shape[1:3], channels), 255, dtype=np.uint8)
    tiles = []
    for t in top:
        hits = np.flatnonzero(gen_nn == t)[:GRID_SAMPLES_PER_ROW]
        row = [_channels(images[train_items[t : t + 1]], channels), _channels(samples[hits], channels)]
        tiles += [*row, np.repeat(blank, GRID_SAMPLES_PER_ROW - len(hits), axis=0)]
    grid = image_grid(np.concatenate(tiles), ncols=1 + GRID_SAMPLES_PER_ROW)
    return png_bytes(grid), [{"item": int(train_items[t]), "retrieved_by": int(counts[t])} for t in top]


def _channels(images: np.ndarray, channels: int) -> np.ndarray:
    return np.repeat(images, channels // images.shape[3], axis=3)


def irs_headline(synthetic: dict[str, Any], target: float, passed: bool, adjusted: float) -> str:
    return (
        f"IRS_inf {synthetic['irs_inf']:.2f} [{synthetic['irs_inf_lower']:.2f}, {synthetic['irs_inf_upper']:.2f}] "
        f"(target {target}): {'pass' if passed else 'fail'}; N_learned {synthetic['n_learned']} of "
        f"{synthetic['n_sample']} samples, IRS_inf,a {adjusted:.2f}"
    )


class IRSStage:
    name = "irs"
    queue: Queue = "cpu"

    def run(self, ctx: StageContext) -> dict[str, Any]:
        spec = ctx.spec.irs
        split = irs_split(ctx.dataset, ctx.spec)
        save_array(ctx.job, HELDOUT_KEY, split.heldout)
        features = np.asarray(artifacts.dataset_features(ctx), dtype=np.float32)
        train, heldout = features[split.train], features[split.heldout]
        generated = np.asarray(artifacts.generated_features(ctx), dtype=np.float32)
        ctx.report(0, 2)
        gen_nn = nearest_neighbours(generated, train, 1, spec.metric, device=ctx.device).indices[:, 0]
        save_array(ctx.job, NEAREST_KEY, gen_nn)
        quantities = irs_report(train, generated, heldout, spec.metric, spec.alpha_e, gen_nn=gen_nn)
        ctx.report(1, 2)
        rule = make_rule(verdict_rule_name(ctx.spec), len(train), len(gen_nn), spec.target, spec.alpha_e)
        decision = rule.update(gen_nn)
        ctx.job.put_bytes(CURVE_KEY, distinct_curve_png(distinct_trajectory(gen_nn), rule, decision))
        summary: dict[str, Any] = {
            "headline": irs_headline(
                quantities["synthetic"], spec.target, not decision.reject, quantities["adjusted"]["irs_inf_a"]
            ),
            "verdict": "fail" if decision.reject else "pass",
            "passed": not decision.reject,
            "target": spec.target,
            "target_distinct": target_distinct(len(train), spec.target),
            "k_min": k_min(len(train), len(gen_nn), spec.target, spec.alpha_e),
            "below_target": quantities["synthetic"]["irs_inf"] < spec.target,
            "metric": spec.metric,
            "alpha_e": spec.alpha_e,
            "decision": decision.to_dict(),
            "heldout": split.describe(ctx.spec),
            **quantities,
        }
        labels = artifacts.class_labels(ctx, split.train)
        if labels is not None:
            summary["per_class"] = irs_per_class(train, generated, *labels, spec.metric, spec.alpha_e)
        if ctx.dataset.info.kind == "images":
            samples = artifacts.samples(ctx)
            grid, counts = most_retrieved_grid(ctx.dataset.images, split.train, samples, gen_nn, spec.grid_images)
            ctx.job.put_bytes(GRID_KEY, grid)
            summary["most_retrieved"] = counts
        if ctx.job.exists(EARLY_KEY):
            summary["early_rejection"] = load_json(ctx.job, EARLY_KEY)
        ctx.report(2, 2)
        return summary
