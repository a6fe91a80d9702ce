"""What stages hand to each other: the keys of the shared artifacts and typed accessors (typed summaries are in
diffaudit.stages.summaries).

A stage reads another stage's output only through this module, so every key is spelled once and no stage
decodes another's summary by hand. A missing artifact is a defect (a stage ran before its prerequisite), raised
as ArtifactNotFound or MissingStageResult, never as the user's mistake.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from diffaudit.errors import InvalidInput
from diffaudit.features.extractors import Extractor
from diffaudit.features.registry import create_extractor
from diffaudit.stages.base import StageContext
from diffaudit.stages.summaries import FeaturesSummary, StageSummary
from diffaudit.store import load_array

SAMPLES_KEY = "sample/images.npy"  # (N, H, W, C) uint8, sample i from seed + i
SAMPLE_LABELS_KEY = "sample/labels.npy"  # (N,) class of each sample, class-conditional models only
SAMPLE_BATCHES_PREFIX = "sample/batches"  # the batches drawn so far, until they are assembled
REJECTED_SAMPLES_KEY = "sample/drawn_before_rejection.npy"  # the samples drawn when early rejection stopped
GENERATED_FEATURES_KEY = "features/generated.npy"  # (N, D) float32 features of the samples
DS_KEY = "novelty/ds.npy"  # (N,) bool: diverse sample by the majority of the t-SNE seeds


class MissingStageResult(LookupError):
    """A stage asked for the summary of a stage that has not run in this job (a defect of the stage order)."""


def stage_result(ctx: StageContext, stage: str) -> dict[str, Any]:
    if stage not in ctx.results:
        raise MissingStageResult(f"stage {stage!r} has not run in this job")
    return ctx.results[stage]


def summary_of(ctx: StageContext, stage: str) -> StageSummary:
    return StageSummary.model_validate(stage_result(ctx, stage))


def features_summary(ctx: StageContext) -> FeaturesSummary:
    return FeaturesSummary.model_validate(stage_result(ctx, "features"))


def samples(ctx: StageContext, mmap: bool = True) -> np.ndarray:
    """The sample stage's images, (N, H, W, C) uint8."""
    return load_array(ctx.job, SAMPLES_KEY, mmap=mmap)


def sample_labels(ctx: StageContext) -> np.ndarray | None:
    """The class of each sample for a class-conditional model, None for an unconditional one."""
    return load_array(ctx.job, SAMPLE_LABELS_KEY) if ctx.job.exists(SAMPLE_LABELS_KEY) else None


def class_labels(ctx: StageContext, items: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """(labels of the dataset items `items`, label of each sample) when the dataset is labelled and the model
    class-conditional; None otherwise."""
    generated = sample_labels(ctx)
    if ctx.dataset.labels is None or generated is None:
        return None
    return np.asarray(ctx.dataset.labels)[items], np.asarray(generated)


def conditioning_labels(ctx: StageContext) -> np.ndarray | None:
    """The dataset's labels to condition a class-conditional checkpoint on (None for an unconditional one)."""
    n_classes = ctx.checkpoint.info.num_class_embeds
    if n_classes is None:
        return None
    if ctx.dataset.labels is None:
        raise InvalidInput("the checkpoint is class-conditional but the dataset has no labels to condition it on")
    labels = np.asarray(ctx.dataset.labels)
    if labels.size and int(labels.max()) >= n_classes:
        raise InvalidInput(
            f"the dataset has labels up to {int(labels.max())} but the checkpoint knows {n_classes} classes"
        )
    return labels


def samples_before_rejection(ctx: StageContext) -> np.ndarray | None:
    """The samples drawn before early rejection stopped the sample stage (None when it did not)."""
    return load_array(ctx.job, REJECTED_SAMPLES_KEY) if ctx.job.exists(REJECTED_SAMPLES_KEY) else None


def generated_features(ctx: StageContext) -> np.ndarray:
    """The features stage's features of the samples, (N, D) float32."""
    return load_array(ctx.job, GENERATED_FEATURES_KEY)


def dataset_features(ctx: StageContext) -> np.ndarray:
    """Features of EVERY dataset item under the features stage's extractor (index with the split's indices):
    the dataset's own (kind "features") or the cached training features."""
    key = features_summary(ctx).training_features_key
    return ctx.dataset.features if key is None else load_array(ctx.cache, key)


def dataset_features_name(ctx: StageContext) -> str:
    """A name of those features for cache keys: the extractor's cache key, or "dataset-features"."""
    summary = features_summary(ctx)
    return summary.cache_key if summary.training_features_key is not None and summary.cache_key else "dataset-features"


def diverse_samples(ctx: StageContext) -> np.ndarray:
    """The novelty stage's DS flag of every sample, (N,) bool."""
    return np.asarray(load_array(ctx.job, DS_KEY), dtype=bool)


def extractor_for(ctx: StageContext, name: str, weights: str | None, seed: int) -> Extractor:
    """An extractor of the registry on the job's device, with the job's download setting and weights folder."""
    return create_extractor(
        name,
        weights=weights,
        seed=seed,
        device=ctx.device,
        allow_downloads=ctx.allow_downloads,
        weights_dir=ctx.weights_dir,
    )


def features_extractor(ctx: StageContext) -> Extractor:
    """The features stage's extractor, as the spec describes it (the early-rejection monitor uses it too)."""
    spec = ctx.spec.features
    return extractor_for(ctx, spec.extractor, spec.weights, spec.seed)
