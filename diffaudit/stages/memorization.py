"""The `memorization` stage: which training images the model reproduces, and which it finds easy to reproduce.

1. Extraction test (Carlini et al. 2023; Hasegawa and Yasuda, Eq. 7) of every generated sample against the training
images, in
   pixel space and/or the features stage's feature space: the fraction flagged as copies, the flagged
   (generated, training) pairs side by side, and every copied training image with how often it was copied.
2. Nearest-neighbour distances generated -> training against held-out real -> training (Sehwag et al., Sec. 5), when the
   dataset has a held-out split.
3. Volume growth rate (Hasegawa and Yasuda, Algorithm 1, Eq. 13) of the training images under the checkpoint's
probability-flow
   ODE: a score per image (higher = easier to reproduce, Hasegawa and Yasuda, Fig. 2), the ranking, the top and
   bottom images
   (Hasegawa and Yasuda, Figs. 7-8), a histogram, a CSV (index,label,score,rank) and, on request, the curve log l_t.

Artifacts (under `memorization/`):
  {space}/extraction_score.npy, {space}/nearest_index.npy   Eq. 7 ratio and nearest training image (dataset
                                                            index) of every generated sample
  {space}/flagged_pairs.png, {space}/copied_training_images.png, {space}/copied_training_images.csv
  {space}/nn_generated.npy, {space}/nn_heldout.npy, {space}/nn_histogram.png
  volume_growth/{indices,scores}.npy, volume_growth/scores.csv, volume_growth/{top,bottom,histogram}.png,
  volume_growth/curve.npy and curve.png (return_curve)
Volume-growth scores are stored in chunks of CHUNK_IMAGES images as they are computed; an interrupted job skips
the finished chunks, and since image i's axes depend only on seed + i, the result equals an uninterrupted run.

After an early rejection (the sample stage stopped), `after_rejection` runs the cheap part on the samples drawn so
far: the extraction test and nearest-neighbour distances in pixel space (the features stage has not run), so that
the rejected model's most telling evidence, the training images it copies, is shown beside the rejection.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from diffaudit.checkpoints import Checkpoint
from diffaudit.datasets import Dataset
from diffaudit.errors import InvalidInput
from diffaudit.imaging import image_grid, png_bytes
from diffaudit.metrics.memorization import (
    Extraction,
    distance_summary,
    extraction_test,
    nearest_neighbour_comparison,
    nearest_neighbour_distances,
)
from diffaudit.metrics.volume_growth import volume_growth_dataset
from diffaudit.plots.memorization import curve_png, histogram_png
from diffaudit.spec import MemorizationSpec
from diffaudit.stages import artifacts
from diffaudit.stages.base import Queue, StageContext
from diffaudit.store import load_array, save_array, save_csv

PREFIX = "memorization"
GROWTH_PREFIX = f"{PREFIX}/volume_growth"
CHUNKS_PREFIX = f"{GROWTH_PREFIX}/chunks"
CHUNK_IMAGES = 1024  # volume-growth scores stored per chunk of this many training images
SUMMARY_LISTED = 10  # copied / top / bottom training images listed in the summary (the CSVs have all)
HISTOGRAM_BINS = 30


def spaces_of(space: str) -> tuple[str, ...]:
    return ("pixels", "features") if space == "both" else (space,)


def rows_of(array: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """array[indices], without a copy when the indices are all the rows in order."""
    return array if len(indices) == len(array) else array[indices]


def check_inputs(ctx: StageContext, spec: MemorizationSpec, samples: np.ndarray, spaces: tuple[str, ...]) -> None:
    """Refuse, with a message that says what to change, what the stage cannot compute."""
    dataset = ctx.dataset
    if dataset.info.kind != "images":
        raise InvalidInput("the memorization stage needs a dataset of images (volume growth runs the model on them)")
    if "features" in spaces and "features" not in ctx.results:
        raise InvalidInput(f"memorization.space {spec.space!r} uses the features stage: add 'features' to stages")
    if "pixels" in spaces and samples.shape[1:] != dataset.info.item_shape:
        raise InvalidInput(
            f"generated samples are {samples.shape[1:]} but the dataset's images are {dataset.info.item_shape}: "
            "pixel distances need equal shapes; set memorization.space to 'features'"
        )
    n_train = len(dataset.train_indices())
    if spec.n_neighbours > n_train:
        raise InvalidInput(f"memorization.n_neighbours ({spec.n_neighbours}) exceeds the {n_train} training images")


def vectors_in(ctx: StageContext, space: str, samples: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The samples and ALL dataset items (index with train/heldout indices) as rows of one space."""
    if space == "pixels":
        return samples, ctx.dataset.images
    return artifacts.generated_features(ctx), artifacts.dataset_features(ctx)


def pairs_grid(samples: np.ndarray, training: np.ndarray, extraction: Extraction, n_pairs: int) -> bytes | None:
    """The flagged samples, most certain copies first, each followed by the training image it copies."""
    flagged = np.flatnonzero(extraction.flagged)
    if flagged.size == 0:
        return None
    shown = flagged[np.argsort(extraction.score[flagged], kind="stable")][:n_pairs]
    pairs = np.stack([samples[shown], training[extraction.nearest_index[shown]]], axis=1)
    per_row = math.ceil(math.sqrt(len(shown)))
    return png_bytes(image_grid(pairs.reshape(-1, *samples.shape[1:]), ncols=2 * per_row))


def class_name(dataset: Dataset, index: int) -> str:
    labels, names = dataset.labels, dataset.info.class_names
    return "" if labels is None or names is None else names[int(labels[index])]


def extraction_in(ctx: StageContext, spec: MemorizationSpec, space: str, samples: np.ndarray) -> dict[str, Any]:
    """Extraction test (Hasegawa and Yasuda, Eq. 7) and nearest-neighbour comparison (Sehwag et al., Sec. 5) in one
    space; stores artifacts."""
    dataset, prefix = ctx.dataset, f"{PREFIX}/{space}"
    generated, items = vectors_in(ctx, space, samples)
    train_indices, heldout_indices = dataset.train_indices(), dataset.heldout_indices()
    training = rows_of(items, train_indices)
    found = extraction_test(
        generated,
        training,
        alpha=spec.alpha,
        n_neighbours=spec.n_neighbours,
        threshold=spec.threshold,
        device=ctx.device,
    )
    extraction = dataclasses.replace(found, nearest_index=train_indices[found.nearest_index])  # dataset indices
    save_array(ctx.job, f"{prefix}/extraction_score.npy", extraction.score)
    save_array(ctx.job, f"{prefix}/nearest_index.npy", extraction.nearest_index)
    images = dataset.images
    grid = pairs_grid(samples, images, extraction, spec.grid_pairs)
    if grid is not None:
        ctx.job.put_bytes(f"{prefix}/flagged_pairs.png", grid)
    copied, copies = extraction.copied_training_images()
    if copied.size:
        ctx.job.put_bytes(
            f"{prefix}/copied_training_images.png", png_bytes(image_grid(images[copied[: spec.grid_images]]))
        )
    rows = [[int(i), class_name(dataset, int(i)), int(c)] for i, c in zip(copied, copies, strict=True)]
    save_csv(ctx.job, f"{prefix}/copied_training_images.csv", ["index", "label", "copies"], rows)
    summary = extraction.summary()
    summary["copied_training_images"] = summary["copied_training_images"][:SUMMARY_LISTED]
    result: dict[str, Any] = {"extraction": summary}
    ctx.check_cancelled()

    generated_nn = extraction.nearest_distance
    save_array(ctx.job, f"{prefix}/nn_generated.npy", generated_nn)
    if heldout_indices.size == 0:
        result["nearest_neighbours"] = {
            "generated": distance_summary(generated_nn),
            "note": "the dataset has no held-out split: nothing to compare the generated samples' distances with",
        }
        return result
    heldout_nn = nearest_neighbour_distances(items[heldout_indices], training, device=ctx.device)
    save_array(ctx.job, f"{prefix}/nn_heldout.npy", heldout_nn)
    comparison = nearest_neighbour_comparison(generated_nn, heldout_nn, bins=HISTOGRAM_BINS)
    edges = np.asarray(comparison["histogram"]["edges"])
    ctx.job.put_bytes(
        f"{prefix}/nn_histogram.png",
        histogram_png(
            {"generated": generated_nn, "held-out real": heldout_nn},
            edges,
            f"L2 distance to the nearest training item ({space})",
            "Nearest-training-item distances (Sehwag et al., Sec. 5)",
        ),
    )
    result["nearest_neighbours"] = {k: v for k, v in comparison.items() if k != "histogram"}  # it is the PNG
    return result


def chunk_key(start: int, what: str) -> str:
    return f"{CHUNKS_PREFIX}/{start:08d}_{what}.npy"


def score_training_images(ctx: StageContext, spec: MemorizationSpec, indices: np.ndarray) -> tuple[np.ndarray, Any]:
    """Volume growth (Hasegawa and Yasuda, Algorithm 1) of the dataset images `indices`, chunk by chunk; finished
    chunks are skipped."""
    checkpoint: Checkpoint = ctx.checkpoint
    dataset, n = ctx.dataset, len(indices)
    item_shape = (checkpoint.info.sample_size, checkpoint.info.sample_size, checkpoint.info.in_channels)
    if dataset.info.item_shape != item_shape:
        raise InvalidInput(f"the checkpoint makes {item_shape} images but the dataset's are {dataset.info.item_shape}")
    labels = artifacts.conditioning_labels(ctx)
    options = {
        "n_axes": spec.n_axes,
        "sigma": spec.sigma,
        "n_steps": spec.n_steps,
        "measure": spec.measure,
        "seed": spec.seed,
        "return_curve": spec.return_curve,
    }
    ctx.report(0, n)
    for start in range(0, n, CHUNK_IMAGES):
        chunk = indices[start : start + CHUNK_IMAGES]
        if ctx.job.exists(chunk_key(start, "scores")):  # finished before an interruption
            ctx.report(start + len(chunk), n)
            continue

        def progress(done: int, _total: int, start: int = start) -> None:
            ctx.check_cancelled()
            ctx.report(start + done, n)

        growth = volume_growth_dataset(
            checkpoint.unet,
            checkpoint.scheduler_config,
            dataset.images[chunk],
            None if labels is None else labels[chunk],
            batch_size=spec.batch_size,
            first_index=start,
            progress=progress,
            **options,
        )
        if growth.curve is not None:
            save_array(ctx.job, chunk_key(start, "curve"), growth.curve)
        save_array(ctx.job, chunk_key(start, "scores"), growth.scores)  # written last: marks the chunk finished
    starts = range(0, n, CHUNK_IMAGES)
    scores = np.concatenate([load_array(ctx.job, chunk_key(s, "scores"), mmap=False) for s in starts])
    curve = (
        np.concatenate([load_array(ctx.job, chunk_key(s, "curve"), mmap=False) for s in starts])
        if spec.return_curve
        else None
    )
    return scores, curve


def ranking(scores: np.ndarray) -> np.ndarray:
    """Positions sorted by descending score (easiest to reproduce first), ties by position."""
    return np.argsort(-scores, kind="stable")


def volume_growth_in(ctx: StageContext, spec: MemorizationSpec) -> dict[str, Any]:
    """Volume growth of the training images: scores, ranking, grids, histogram, CSV, curve; stores artifacts."""
    dataset = ctx.dataset
    indices = dataset.train_indices()[: spec.max_images]
    scores, curve = score_training_images(ctx, spec, indices)
    order = ranking(scores)
    rank = np.empty(len(scores), dtype=np.int64)
    rank[order] = np.arange(1, len(scores) + 1)
    save_array(ctx.job, f"{GROWTH_PREFIX}/indices.npy", indices)
    save_array(ctx.job, f"{GROWTH_PREFIX}/scores.npy", scores)
    rows = [
        [int(indices[p]), class_name(dataset, int(indices[p])), repr(float(scores[p])), int(rank[p])] for p in order
    ]
    save_csv(ctx.job, f"{GROWTH_PREFIX}/scores.csv", ["index", "label", "score", "rank"], rows)
    images = dataset.images
    top, bottom = order[: spec.grid_images], order[::-1][: spec.grid_images]
    ctx.job.put_bytes(f"{GROWTH_PREFIX}/top.png", png_bytes(image_grid(images[indices[top]])))
    ctx.job.put_bytes(f"{GROWTH_PREFIX}/bottom.png", png_bytes(image_grid(images[indices[bottom]])))
    edges = np.histogram_bin_edges(scores, bins=HISTOGRAM_BINS)
    ctx.job.put_bytes(
        f"{GROWTH_PREFIX}/histogram.png",
        histogram_png({"training images": scores}, edges, "log volume growth (higher = easier to reproduce)", ""),
    )
    if curve is not None:
        save_array(ctx.job, f"{GROWTH_PREFIX}/curve.npy", curve)
        ctx.job.put_bytes(f"{GROWTH_PREFIX}/curve.png", curve_png(curve))
    ctx.job.delete_prefix(CHUNKS_PREFIX)

    def listed(positions: np.ndarray) -> list[dict[str, Any]]:
        return [{"index": int(indices[p]), "score": float(scores[p]), "rank": int(rank[p])} for p in positions]

    return {
        "n_scored": len(scores),
        "n_training_images": len(dataset.train_indices()),
        "n_axes": spec.n_axes,
        "sigma": spec.sigma,
        "n_steps": spec.n_steps,
        "measure": spec.measure,
        "seed": spec.seed,
        "higher_is_easier_to_reproduce": True,
        "score": distance_summary(scores),
        "top": listed(order[:SUMMARY_LISTED]),
        "bottom": listed(order[::-1][:SUMMARY_LISTED]),
    }


def headline(spaces: dict[str, dict[str, Any]], growth: dict[str, Any] | None) -> str:
    parts = []
    for space, result in spaces.items():
        extraction, neighbours = result["extraction"], result["nearest_neighbours"]
        text = (
            f"{extraction['fraction_flagged']:.1%} of {extraction['n_generated']} samples flagged as copies of "
            f"{extraction['n_copied_training_images']} training images ({space})"
        )
        if neighbours.get("mean_ratio") is not None:
            text += f", generated-to-training NN distance {neighbours['mean_ratio']:.2f}x held-out's"
        parts.append(text)
    if growth is None:
        return "; ".join(parts)
    best = growth["top"][0] if growth["top"] else None
    growth_text = f"volume growth of {growth['n_scored']} training images: mean {growth['score']['mean']:.3g}"
    if best is not None:
        growth_text += f", easiest to reproduce #{best['index']}"
    return "; ".join([*parts, growth_text])


class MemorizationStage:
    name = "memorization"
    queue: Queue = "gpu"

    def run(self, ctx: StageContext) -> dict[str, Any]:
        spec = ctx.spec.memorization
        samples = artifacts.samples(ctx)
        check_inputs(ctx, spec, samples, spaces_of(spec.space))
        spaces = {space: extraction_in(ctx, spec, space, samples) for space in spaces_of(spec.space)}
        growth = volume_growth_in(ctx, spec)
        return {"spaces": spaces, "volume_growth": growth, "headline": headline(spaces, growth)}

    def after_rejection(self, ctx: StageContext) -> dict[str, Any] | None:
        """The extraction test and nearest-neighbour distances in pixels of the samples drawn before an early
        rejection (no volume growth: it is the costly part); None when the dataset's images cannot be compared."""
        spec, samples = ctx.spec.memorization, artifacts.samples_before_rejection(ctx)
        if samples is None:
            return None
        try:
            check_inputs(ctx, spec, samples, ("pixels",))
        except InvalidInput as refused:
            return {"headline": f"not computed: {refused}", "samples": len(samples)}
        spaces = {"pixels": extraction_in(ctx, spec, "pixels", samples)}
        return {
            "headline": headline(spaces, None),
            "samples": len(samples),
            "spaces": spaces,
            "note": "on the samples drawn before the rejection, in pixel space; volume growth is not computed",
        }
