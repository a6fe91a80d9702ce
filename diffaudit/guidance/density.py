"""The density report of guided sampling (Sehwag et al., "Generating High Fidelity Data from Low-density Regions
using Diffusion Models", arXiv 2203.17260, Sec. 4.2 and Fig. 7): hardness (Eq. 3), AvgkNN, LOF and precision of
image sets in the features of an extractor independent of the guidance networks.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from diffaudit.features.extractors import Extractor
from diffaudit.metrics.density import (
    ClassGaussians,
    avg_knn_distance,
    compare_distributions,
    local_outlier_factor,
    precision,
    summarize,
)

METRICS = ("hardness", "avg_knn", "lof")


class DensityReport:
    """Density metrics in the features of an extractor independent of the guidance networks (Sec. 4.2, Fig. 7).

    Training features are the reference of AvgkNN, LOF and precision; their class Gaussians (Ledoit-Wolf) give the
    hardness of Eq. 3 (one Gaussian when unlabelled).
    """

    def __init__(self, extractor: Extractor, train: np.ndarray, gaussians: ClassGaussians, batch_size: int) -> None:
        self.extractor = extractor
        self.train = train
        self.gaussians = gaussians
        self.batch_size = batch_size
        self.values: dict[str, dict[str, np.ndarray]] = {}
        self.features: dict[str, np.ndarray] = {}

    @classmethod
    def fit(
        cls, extractor: Extractor, train: np.ndarray, train_labels: np.ndarray | None, batch_size: int
    ) -> DensityReport:
        """From the training features (the reference) and their labels (None: one Gaussian)."""
        train = np.asarray(train, dtype=np.float64)
        return cls(extractor, train, ClassGaussians.fit(train, train_labels), batch_size)

    def embed(self, images: np.ndarray) -> np.ndarray:
        return np.concatenate(
            [self.extractor(images[i : i + self.batch_size]) for i in range(0, len(images), self.batch_size)]
        ).astype(np.float64)

    def measure(self, name: str, images: np.ndarray, labels: np.ndarray | None) -> dict[str, Any]:
        """Hardness, AvgkNN and LOF of every image (kept in `values[name]`), summarised; precision."""
        features = self.embed(images)
        values = {
            "hardness": self.gaussians.hardness_score(features, labels),
            "avg_knn": avg_knn_distance(features, self.train),
            "lof": local_outlier_factor(features, self.train),
        }
        self.values[name], self.features[name] = values, features
        return {
            **{metric: summarize(array) for metric, array in values.items()},
            "precision": precision(features, self.train),
        }

    def versus_baseline(self, name: str) -> dict[str, dict[str, float]]:
        """Effect size and p-values of each metric, guided set `name` versus the baseline samples."""
        return {
            metric: compare_distributions(self.values["baseline"][metric], self.values[name][metric])
            for metric in METRICS
        }
