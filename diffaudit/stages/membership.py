"""The `membership` stage: can the model's own behaviour tell its training images from images it never saw?

A seeded subset of `n_images` training images (the members) and as many held-out images (the non-members) are
scored with each chosen score of diffaudit.metrics.membership (volume growth, the denoising loss, PIA, SecMI; higher
= more likely a training image); for each score the stage reports ROC AUC, TPR at 1% and 0.1% FPR, the histograms
of both groups and the ROC curve, and for the first score the most exposed training images (highest scores) as a
grid and a CSV.

Artifacts (under `membership/`):
  members.npy, nonmembers.npy      dataset indices of the two subsets
  {score}/scores.npy               (n_members + n_nonmembers,) float64: members first, then non-members
  {score}/histogram.png, {score}/roc.png
  most_exposed.png, most_exposed.csv (index,label,score,rank) of the members, by the first score
Scores are stored batch by batch (common.batches.Batches) as they are computed; an interrupted job resumes at its
first missing batch, and since every score of an image depends only on the spec and the image's position, the result
equals an uninterrupted run.
"""

from __future__ import annotations

from math import prod
from typing import Any

import numpy as np

from diffaudit.checkpoints import Checkpoint
from diffaudit.common.batches import Batches
from diffaudit.errors import InvalidInput
from diffaudit.imaging import image_grid, png_bytes
from diffaudit.metrics.membership import (
    batched_scores,
    membership_measures,
    roc_curve_points,
    score_function,
    score_histograms,
    unet_calls_per_batch,
)
from diffaudit.plots.membership import histograms_png, roc_png
from diffaudit.spec import MembershipScore, MembershipSpec
from diffaudit.stages import artifacts
from diffaudit.stages.base import Queue, StageContext
from diffaudit.store import save_array, save_csv

PREFIX = "membership"
SUMMARY_LISTED = 10  # most exposed training images listed in the summary (the CSV has all members)
HISTOGRAM_BINS = 30
STATEMENT = (
    "A high score means the model treats the image the way it treats the images it was trained on; the AUC and "
    "the TPR at low FPR say how well the score separates this dataset's training split from its held-out split, "
    "which is only meaningful if the held-out images were really not used to train the model. A training image "
    "with a low score is NOT proof that it was not used: a score measures how much the model memorized an image, "
    "and models also learn from images they do not memorize. Conversely a high score on an image outside the "
    "training split can mean a near-duplicate was trained on."
)


def check_inputs(ctx: StageContext, spec: MembershipSpec) -> None:
    """Refuse, with a message that says what to change, what the stage cannot compute."""
    dataset, checkpoint = ctx.dataset, ctx.checkpoint
    if dataset.info.kind != "images":
        raise InvalidInput("the membership stage needs a dataset of images (it runs the model on them)")
    if dataset.heldout_indices().size == 0 or dataset.train_indices().size == 0:
        raise InvalidInput(
            "the membership stage compares training images with held-out images: upload the dataset with "
            "heldout_fraction > 0"
        )
    info = checkpoint.info
    item_shape = (info.sample_size, info.sample_size, info.in_channels)
    if dataset.info.item_shape != item_shape:
        raise InvalidInput(f"the checkpoint makes {item_shape} images but the dataset's are {dataset.info.item_shape}")
    if "volume_growth" in spec.scores and spec.vg_n_axes > prod(item_shape):
        raise InvalidInput(f"membership.vg_n_axes ({spec.vg_n_axes}) exceeds the image dimension {prod(item_shape)}")
    if spec.max_timestep() >= info.num_train_timesteps:
        raise InvalidInput(
            f"the chosen membership scores query timestep {spec.max_timestep()}, but the checkpoint has "
            f"{info.num_train_timesteps} training timesteps"
        )


def subsets(ctx: StageContext, spec: MembershipSpec) -> tuple[np.ndarray, np.ndarray]:
    """Equal-sized seeded subsets (sorted dataset indices) of the training and the held-out split."""
    train, heldout = ctx.dataset.train_indices(), ctx.dataset.heldout_indices()
    n = min(spec.n_images, len(train), len(heldout))
    rng = np.random.default_rng(spec.seed)
    return np.sort(rng.choice(train, size=n, replace=False)), np.sort(rng.choice(heldout, size=n, replace=False))


def scores_of(
    ctx: StageContext, spec: MembershipSpec, score: MembershipScore, indices: np.ndarray, done_before: int, total: int
) -> np.ndarray:
    """One score of the dataset images `indices`, batch by batch into the job's store; finished batches are kept."""
    checkpoint: Checkpoint = ctx.checkpoint
    where = Batches(ctx.job, f"{PREFIX}/{score}/scores.npy", f"{PREFIX}/{score}/batches")
    n, batch_size = len(indices), spec.batch_size
    if ctx.job.exists(where.images_key):
        return np.asarray(where.drawn(n, batch_size))
    labels = artifacts.conditioning_labels(ctx)
    score_fn = score_function(score, checkpoint.unet, checkpoint.scheduler_config, spec.score_options(score))
    for start in range(where.first_missing(n, batch_size), n, batch_size):
        ctx.check_cancelled()
        chunk = indices[start : start + batch_size]
        batch = batched_scores(
            score_fn,
            ctx.dataset.images[chunk],
            None if labels is None else labels[chunk],
            batch_size=batch_size,
            first_index=start,
        )
        save_array(ctx.job, where.batch_key(start), batch)
        ctx.report(done_before + start + len(chunk), total)
    scores = np.asarray(where.drawn(n, batch_size), dtype=np.float64)
    save_array(ctx.job, where.images_key, scores)
    ctx.job.delete_prefix(where.batches_prefix)
    return scores


def most_exposed(ctx: StageContext, spec: MembershipSpec, members: np.ndarray, scores: np.ndarray) -> list[Any]:
    """The members by descending score: grid of the first grid_images, CSV of all; the first few for the summary."""
    order = np.argsort(-scores, kind="stable")
    labels, names = ctx.dataset.labels, ctx.dataset.info.class_names

    def label(index: int) -> str:
        return "" if labels is None or names is None else names[int(labels[index])]

    ranked = [(rank, int(members[p]), float(scores[p])) for rank, p in enumerate(order, 1)]
    rows = [[index, label(index), repr(score), rank] for rank, index, score in ranked]
    save_csv(ctx.job, f"{PREFIX}/most_exposed.csv", ["index", "label", "score", "rank"], rows)
    ctx.job.put_bytes(
        f"{PREFIX}/most_exposed.png", png_bytes(image_grid(ctx.dataset.images[members[order[: spec.grid_images]]]))
    )
    return [
        {"index": index, "label": label(index), "score": score, "rank": rank}
        for rank, index, score in ranked[:SUMMARY_LISTED]
    ]


def measured(ctx: StageContext, spec: MembershipSpec, score: MembershipScore, scores: np.ndarray, n: int) -> Any:
    """Measures of one score, its histogram and ROC figures."""
    member_scores, nonmember_scores = scores[:n], scores[n:]
    measures = membership_measures(member_scores, nonmember_scores)
    histograms = score_histograms(member_scores, nonmember_scores, bins=HISTOGRAM_BINS)
    ctx.job.put_bytes(f"{PREFIX}/{score}/histogram.png", histograms_png(histograms, score, measures["auc"]))
    ctx.job.put_bytes(f"{PREFIX}/{score}/roc.png", roc_png(*roc_curve_points(member_scores, nonmember_scores), score))
    options = spec.score_options(score)
    return {
        **measures,
        "options": {k: list(v) if isinstance(v, tuple) else v for k, v in options.items()},
        "unet_calls_per_image": unet_calls_per_batch(score, options),
        "histogram": {
            "edges": histograms.edges.tolist(),
            "members": histograms.members.tolist(),
            "nonmembers": histograms.nonmembers.tolist(),
        },
    }


class MembershipStage:
    name = "membership"
    queue: Queue = "gpu"

    def run(self, ctx: StageContext) -> dict[str, Any]:
        spec = ctx.spec.membership
        check_inputs(ctx, spec)
        members, nonmembers = subsets(ctx, spec)
        save_array(ctx.job, f"{PREFIX}/members.npy", members)
        save_array(ctx.job, f"{PREFIX}/nonmembers.npy", nonmembers)
        indices, n = np.concatenate([members, nonmembers]), len(members)
        total = len(spec.scores) * len(indices)
        ctx.report(0, total)
        scores = {s: scores_of(ctx, spec, s, indices, k * len(indices), total) for k, s in enumerate(spec.scores)}
        results = {s: measured(ctx, spec, s, scores[s], n) for s in spec.scores}
        exposed = most_exposed(ctx, spec, members, scores[spec.scores[0]][:n])
        first = results[spec.scores[0]]
        return {
            "headline": (
                f"{spec.scores[0]} tells {n} training images from {n} held-out: AUC {first['auc']:.3f}, "
                f"TPR {first['tpr_at_1pct_fpr']:.0%} at 1% FPR"
            ),
            "n_members": n,
            "n_nonmembers": n,
            "seed": spec.seed,
            "higher_is_more_likely_member": True,
            "scores": results,
            "most_exposed": exposed,
            "statement": STATEMENT,
        }
