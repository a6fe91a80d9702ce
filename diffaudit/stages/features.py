"""The `features` stage: embed the generated samples and (through the shared cache) the training set.

Reads the samples, writes `features/generated.npy` to the job, and makes sure the training-set features exist in
the content-addressed cache (diffaudit.features.cache), where later stages find them through
diffaudit.stages.artifacts (the summary's `training_features_key`). A dataset of kind "features" brings its own
training embeddings; the generated samples must then be embedded by the same extractor, which can only be checked
through the dimension.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from diffaudit.features.cache import ReportFn, extract_features, training_features, training_features_key
from diffaudit.features.extractors import check_feature_dims
from diffaudit.stages import artifacts
from diffaudit.stages.artifacts import GENERATED_FEATURES_KEY
from diffaudit.stages.base import Queue, StageContext


class FeaturesStage:
    name = "features"
    queue: Queue = "gpu"

    def run(self, ctx: StageContext) -> dict[str, Any]:
        spec = ctx.spec.features
        extractor = artifacts.features_extractor(ctx)
        samples = artifacts.samples(ctx)
        dataset = ctx.dataset
        user_features = dataset.info.kind == "features"
        if user_features:
            check_feature_dims(extractor, samples.shape[1:], dataset.info.item_shape[0])
        key = training_features_key(dataset, extractor)
        training_cache_hit = not user_features and ctx.cache.exists(key)
        total = len(samples) + (0 if user_features or training_cache_hit else dataset.info.count)

        if not ctx.job.exists(GENERATED_FEATURES_KEY):  # kept from an interrupted run of this job
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / "generated.npy"
                batches = (samples[i : i + spec.batch_size] for i in range(0, len(samples), spec.batch_size))
                extract_features(extractor, batches, len(samples), path, _progress(ctx, 0, total))
                ctx.job.put_file(GENERATED_FEATURES_KEY, path)
        generated = artifacts.generated_features(ctx)
        training_features(dataset, extractor, ctx.cache, spec.batch_size, _progress(ctx, len(samples), total))
        cached = "read from the cache" if training_cache_hit else "computed"
        return {
            "headline": f"{len(generated)} generated samples embedded with {extractor.name} "
            f"({generated.shape[1]}-d); training features {cached}",
            "extractor": extractor.name,
            "dim": int(generated.shape[1]),
            "weights_sha256": extractor.weights_sha256,
            "random_init": extractor.random_init,
            "preprocessing": extractor.preprocessing,
            "layer": extractor.layer,
            "cache_key": extractor.cache_key(),
            "training_features_key": None if user_features else key,
            "training_cache_hit": training_cache_hit,
            "n_generated": len(generated),
            "n_dataset": int(dataset.info.count),
        }


def _progress(ctx: StageContext, offset: int, total: int) -> ReportFn:
    """Report progress over the whole stage and stop if the job was cancelled."""

    def report(done: int, _count: int) -> None:
        ctx.check_cancelled()
        ctx.report(offset + done, total)

    return report
