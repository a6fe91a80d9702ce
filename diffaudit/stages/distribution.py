"""The `distribution` stage: the numbers other evaluation tools report, from the features diffaudit caches.

FID, KID, precision / recall (Kynkaanniemi et al., k = 3), density / coverage (Naeem et al.) and the Vendi score of
the generated features (the features stage's) against the training images' cached features (the dataset's training
split), each with a bootstrap interval and the sample sizes it used (diffaudit.metrics.distribution); FID per class
when the dataset is labelled and the model class-conditional. Artifacts: `distribution/metrics.png`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from diffaudit.features.extractors import Extractor
from diffaudit.features.inception_fid import INCEPTION_FID
from diffaudit.metrics.distribution import distribution_metrics
from diffaudit.metrics.inception_score import IS_SPLITS, inception_score
from diffaudit.plots.distribution import distribution_png
from diffaudit.spec import DistributionSpec
from diffaudit.stages import artifacts
from diffaudit.stages.base import Queue, StageContext

FIGURE_KEY = "distribution/metrics.png"
DEFAULT_KID_SUBSET_SIZE = 1000  # torch-fidelity's


def kid_subset_size(spec: DistributionSpec, n_real: int, n_fake: int) -> int:
    """The spec's subset size, or torch-fidelity's 1000 capped at the smaller side."""
    return spec.kid_subset_size or min(DEFAULT_KID_SUBSET_SIZE, n_real, n_fake)


def measure(
    spec: DistributionSpec, real: np.ndarray, fake: np.ndarray, labels: tuple[np.ndarray, np.ndarray] | None = None
) -> dict[str, Any]:
    """distribution_metrics of `fake` against `real` with the spec's settings ((real, fake) labels: FID per class);
    the stage and `diffaudit metrics` both measure through it."""
    return distribution_metrics(
        real,
        fake,
        k=spec.k,
        kid_subsets=spec.kid_subsets,
        kid_subset_size=kid_subset_size(spec, len(real), len(fake)),
        seed=spec.seed,
        bootstrap=spec.bootstrap,
        moment_bootstrap=spec.moment_bootstrap,
        level=spec.confidence,
        real_labels=None if labels is None else labels[0],
        fake_labels=None if labels is None else labels[1],
    )


def inception_score_summary(extractor: Extractor, fake: np.ndarray) -> dict[str, Any] | None:
    """The Inception Score (Salimans et al., arXiv 1606.03498, Sec. 4) of the generated features when the extractor
    has a classifier head (`logits_of_features`: inception-fid), over min(10, N) splits; None otherwise."""
    logits_of_features = getattr(extractor, "logits_of_features", None)
    if logits_of_features is None:
        return None
    splits = min(IS_SPLITS, len(fake))
    mean, std = inception_score(logits_of_features(fake), splits=splits)
    return {"inception_score_mean": mean, "inception_score_std": std, "inception_score_splits": splits}


def distribution_headline(metrics: dict[str, Any]) -> str:
    fid_low, fid_high = metrics["intervals"]["fid"] or (metrics["fid"], metrics["fid"])
    return (
        f"FID {metrics['fid']:.3g} [{fid_low:.3g}, {fid_high:.3g}], KID {metrics['kid_mean']:.3g} "
        f"+/- {metrics['kid_std']:.2g}; precision {metrics['precision']:.2f}, recall {metrics['recall']:.2f}, "
        f"density {metrics['density']:.2f}, coverage {metrics['coverage']:.2f}; Vendi {metrics['vendi']:.3g} "
        f"({metrics['n_fake']} generated vs {metrics['n_real']} training)"
    )


class DistributionStage:
    name = "distribution"
    queue: Queue = "cpu"

    def run(self, ctx: StageContext) -> dict[str, Any]:
        spec = ctx.spec.distribution
        train = ctx.dataset.train_indices()
        real = np.asarray(artifacts.dataset_features(ctx)[train], dtype=np.float32)
        fake = np.asarray(artifacts.generated_features(ctx), dtype=np.float32)
        ctx.report(0, 1)
        labels = artifacts.class_labels(ctx, train) if spec.per_class else None
        metrics = measure(spec, real, fake, labels)
        ctx.job.put_bytes(FIGURE_KEY, distribution_png(metrics))
        extractor = artifacts.features_summary(ctx).extractor
        inception = (
            inception_score_summary(artifacts.features_extractor(ctx), fake) if extractor == INCEPTION_FID else None
        )
        ctx.report(1, 1)
        return {
            "headline": distribution_headline(metrics),
            "reference": "training split",
            "extractor": extractor,
            **metrics,
            **(inception or {}),
        }
