"""The diverse-samples (DS) detector of the novelty stage, shared with the augmentation stage (which tests extra
samples with it): "The deficit of new information in diffusion models", Sec. 3.5, Algorithms 1-2.

Extractors (the features stage's first, then novelty.extractors), the training rows under each, the t-SNE settings,
and the fixed-mode training embedding, cached in the shared cache under the dataset content, the training split,
the features and the t-SNE settings (one boundary per dataset, the same for every checkpoint).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from diffaudit.common.cache import get_or_compute
from diffaudit.common.splits import split_hash
from diffaudit.errors import InvalidInput
from diffaudit.features.cache import training_features
from diffaudit.features.extractors import Extractor
from diffaudit.metrics.novelty import (
    FIXED_FORMAT,
    FixedEmbedding,
    TsneDetection,
    TsneParams,
    fit_fixed_embedding,
    tsne_diverse_samples,
)
from diffaudit.spec import NoveltySpec
from diffaudit.stages import artifacts
from diffaudit.stages.base import StageContext
from diffaudit.store import ArtifactStore, load_array, load_json, save_array, save_json

BH_LIMIT = 10_000  # openTSNE: Barnes-Hut below this many training points, FFT above


@dataclass(frozen=True)
class ExtractorRef:
    name: str
    weights: str | None
    from_features_stage: bool


def extractors_of(ctx: StageContext) -> list[ExtractorRef]:
    """The features stage's extractor first, then the requested ones (repeats dropped)."""
    refs = [ExtractorRef(ctx.spec.features.extractor, ctx.spec.features.weights, True)]
    for choice in ctx.spec.novelty.extractors:
        if all((r.name, r.weights) != (choice.name, choice.weights) for r in refs):
            refs.append(ExtractorRef(choice.name, choice.weights, False))
    return refs


def make_extractor(ctx: StageContext, ref: ExtractorRef) -> Extractor:
    """The extractor `ref` names, seeded with features.seed."""
    return artifacts.extractor_for(ctx, ref.name, ref.weights, ctx.spec.features.seed)


def tsne_params(spec: NoveltySpec, n_train: int) -> TsneParams:
    """t-SNE settings from the spec; threads = torch's deliberately configured count."""
    return TsneParams(
        perplexity=spec.perplexity,
        pca_dims=spec.pca_dims,
        n_iter=spec.n_iter,
        early_exaggeration_iter=spec.n_iter // 2,
        transform_iter=spec.transform_iter,
        negative_gradient_method="bh" if n_train < BH_LIMIT else "fft",
        n_jobs=torch.get_num_threads(),
    )


def training_rows(ctx: StageContext, ref: ExtractorRef, extractor: Extractor) -> tuple[np.ndarray, str]:
    """Features of the training split under the extractor, and a cache name for them."""
    dataset = ctx.dataset
    if ref.from_features_stage:
        everything, name = artifacts.dataset_features(ctx), artifacts.dataset_features_name(ctx)
    else:
        if dataset.info.kind == "features":
            raise InvalidInput(
                "novelty.extractors needs an image dataset: this dataset holds features, so only the "
                "features stage's extractor applies; remove novelty.extractors"
            )
        everything = training_features(dataset, extractor, ctx.cache, ctx.spec.features.batch_size)
        name = extractor.cache_key()
    return np.asarray(everything[dataset.train_indices()], dtype=np.float32), name


def fixed_embedding_prefix(ctx: StageContext, features_name: str, seeds: tuple[int, ...], params: TsneParams) -> str:
    """Cache folder of the fixed embedding: dataset content, training split, features and t-SNE settings."""
    split = split_hash(ctx.dataset.train_indices())
    settings = {k: v for k, v in dataclasses.asdict(params).items() if k != "n_jobs"}
    what = {"format": FIXED_FORMAT, "seeds": list(seeds), "params": settings, "train_split": split}
    digest = hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:32]
    safe_name = features_name.replace("/", "_").replace(":", "_")
    return f"tsne/{ctx.dataset.info.content_hash}/{safe_name}/{digest}"


def cached_fixed_embedding(
    cache: ArtifactStore, prefix: str, train: np.ndarray, seeds: tuple[int, ...], params: TsneParams, device: Any
) -> tuple[FixedEmbedding, bool]:
    """The fixed embedding from the cache, or fitted and stored there (meta.json last: it marks completeness)."""

    def save(cache: ArtifactStore, meta_key: str, fixed: FixedEmbedding) -> None:
        arrays = fixed.to_arrays()
        for name, array in arrays.items():
            save_array(cache, f"{prefix}/{name}.npy", array)
        save_json(cache, meta_key, {**fixed.metadata(), "arrays": sorted(arrays)})

    def load(cache: ArtifactStore, meta_key: str) -> FixedEmbedding:
        metadata = load_json(cache, meta_key)
        arrays = {name: load_array(cache, f"{prefix}/{name}.npy", mmap=False) for name in metadata["arrays"]}
        return FixedEmbedding.restore(arrays, metadata, train)

    return get_or_compute(
        cache, f"{prefix}/meta.json", lambda: fit_fixed_embedding(train, seeds, params, device=device), save, load
    )


def detect(
    train: np.ndarray, generated: np.ndarray, spec: NoveltySpec, params: TsneParams, fixed: FixedEmbedding | None
) -> TsneDetection:
    """The t-SNE + Quickhull detection (Algorithms 1-2) with the spec's seeds and mode."""
    seeds = tuple(range(spec.seeds))
    return tsne_diverse_samples(train, generated, mode=spec.mode, seeds=seeds, params=params, fixed=fixed)
