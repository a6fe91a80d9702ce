"""Memorization of training images by generated samples: the extraction test and nearest-neighbour distances.

Extraction test (Carlini et al., "Extracting Training Data from Diffusion Models", USENIX Security 2023,
Sec. 5.1; restated as Eq. 7 of Hasegawa and Yasuda): a generated sample x^ copies its nearest training
image x when

    l(x^, x; S_x^) = l2(x^, x) / (alpha * mean_{y in S_x^} l2(x^, y))  <  threshold,

S_x^ being the n training images nearest to x^ (x included). Hasegawa and Yasuda restate the formula but not the
numbers;
the defaults alpha = 0.5 and n = 50 are Carlini et al.'s (Sec. 5.1, CIFAR-10). With threshold = 1 a sample
is a copy when its nearest training image is more than twice as close as its 50 nearest are on average.
Carlini et al. use l2 normalised by sqrt(dimension); the ratio does not depend on that factor.

Nearest-neighbour distances (Sehwag et al., Sehwag et al., Sec. 5): if a model copied its training data, generated
samples would lie much closer to the training set than held-out real images do (Sehwag et al. find 0.42 for its
samples against 0.29 for real validation images, in a classifier's feature space).

Both work on any arrays (N, ...) flattened to vectors: pixels or an extractor's features. Distances come from
diffaudit.retrieval.knn (exact, blocked within a memory budget, never an N_generated x N_train matrix).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from diffaudit.retrieval.knn import DEFAULT_MEMORY_BUDGET, nearest_neighbours

CARLINI_ALPHA = 0.5  # Carlini et al. 2023, Sec. 5.1
CARLINI_N_NEIGHBOURS = 50  # Carlini et al. 2023, Sec. 5.1
CARLINI_THRESHOLD = 1.0
SUMMARY_QUANTILES = (0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99)

ArrayLike = np.ndarray | torch.Tensor


def as_vectors(array: ArrayLike) -> np.ndarray:
    """(N, ...) images or features as rows (N, D), without copying when the array is contiguous."""
    rows = array.detach().cpu().numpy() if isinstance(array, torch.Tensor) else np.asarray(array)
    return rows.reshape(rows.shape[0], -1)


def extraction_ratio(neighbour_distances: np.ndarray, alpha: float = CARLINI_ALPHA) -> np.ndarray:
    """Eq. 7 of Hasegawa and Yasuda from each sample's ascending distances (G, n) to its n nearest training images.

    A sample whose n nearest are all at distance 0 (duplicated training images) gets 0: it is a copy.
    """
    nearest = neighbour_distances[:, 0]
    scale = alpha * neighbour_distances.mean(axis=1)
    return np.divide(nearest, scale, out=np.zeros_like(nearest), where=scale > 0)  # Hasegawa and Yasuda, Eq. 7


@dataclass(frozen=True)
class Extraction:
    """The extraction test on G generated samples."""

    score: np.ndarray  # (G,) Eq. 7 ratio; below threshold = copy
    nearest_index: np.ndarray  # (G,) index of the nearest training image
    nearest_distance: np.ndarray  # (G,) L2 distance to it
    flagged: np.ndarray  # (G,) bool, score < threshold
    alpha: float
    n_neighbours: int
    threshold: float

    @property
    def fraction_flagged(self) -> float:
        return float(self.flagged.mean()) if self.flagged.size else 0.0

    def copied_training_images(self) -> tuple[np.ndarray, np.ndarray]:
        """Training images copied at least once and how often, most copied first (ties by index)."""
        indices, counts = np.unique(self.nearest_index[self.flagged], return_counts=True)
        order = np.lexsort((indices, -counts))
        return indices[order], counts[order]

    def summary(self) -> dict[str, Any]:
        """JSON-able summary: parameters, counts, and every copied training image with its copy count."""
        indices, counts = self.copied_training_images()
        return {
            "alpha": self.alpha,
            "n_neighbours": self.n_neighbours,
            "threshold": self.threshold,
            "n_generated": int(self.flagged.size),
            "n_flagged": int(self.flagged.sum()),
            "fraction_flagged": self.fraction_flagged,
            "n_copied_training_images": int(indices.size),
            "copied_training_images": [
                {"index": int(i), "copies": int(c)} for i, c in zip(indices, counts, strict=True)
            ],
            "score": distance_summary(self.score),
        }


def extraction_test(
    generated: ArrayLike,
    training: ArrayLike,
    *,
    alpha: float = CARLINI_ALPHA,
    n_neighbours: int = CARLINI_N_NEIGHBOURS,
    threshold: float = CARLINI_THRESHOLD,
    memory_budget_bytes: int = DEFAULT_MEMORY_BUDGET,
    device: torch.device | None = None,
) -> Extraction:
    """Carlini et al.'s extraction test (Hasegawa and Yasuda, Eq. 7) of every generated sample against the training
    set."""
    if alpha <= 0 or threshold <= 0:
        raise ValueError(f"alpha and threshold must be positive, got alpha={alpha}, threshold={threshold}")
    neighbours = nearest_neighbours(
        as_vectors(generated),
        as_vectors(training),
        n_neighbours,
        memory_budget_bytes=memory_budget_bytes,
        device=device,
    )
    score = extraction_ratio(neighbours.distances, alpha)
    return Extraction(
        score=score,
        nearest_index=neighbours.indices[:, 0],
        nearest_distance=neighbours.distances[:, 0],
        flagged=score < threshold,
        alpha=alpha,
        n_neighbours=n_neighbours,
        threshold=threshold,
    )


def nearest_neighbour_distances(
    queries: ArrayLike,
    training: ArrayLike,
    *,
    memory_budget_bytes: int = DEFAULT_MEMORY_BUDGET,
    device: torch.device | None = None,
) -> np.ndarray:
    """L2 distance (Q,) from each query to its nearest training vector (Sehwag et al., Sec. 5)."""
    neighbours = nearest_neighbours(
        as_vectors(queries), as_vectors(training), 1, memory_budget_bytes=memory_budget_bytes, device=device
    )
    return neighbours.distances[:, 0]


def distance_summary(values: np.ndarray) -> dict[str, Any]:
    """count, mean, std, min, max, median and quantiles of a 1-D array, JSON-able (None when empty)."""
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        return {"count": 0, "mean": None, "std": None, "min": None, "max": None, "median": None, "quantiles": {}}
    quantiles = np.quantile(values, SUMMARY_QUANTILES)
    return {
        "count": int(values.size),
        "mean": float(values.mean()),
        "std": float(values.std()),
        "min": float(values.min()),
        "max": float(values.max()),
        "median": float(np.median(values)),
        "quantiles": {str(q): float(v) for q, v in zip(SUMMARY_QUANTILES, quantiles, strict=True)},
    }


def nearest_neighbour_comparison(
    generated_distances: np.ndarray, held_out_distances: np.ndarray, *, bins: int = 30
) -> dict[str, Any]:
    """Sehwag et al., Sec. 5: nearest-training-image distances of generated samples against held-out real images.

    JSON-able: both summaries, the ratio of their means (well below 1 suggests copying), and histograms of
    both on shared bin edges.
    """
    generated, held_out = distance_summary(generated_distances), distance_summary(held_out_distances)
    edges = np.histogram_bin_edges(np.concatenate([generated_distances, held_out_distances]), bins=bins)
    return {
        "generated": generated,
        "held_out": held_out,
        "mean_ratio": generated["mean"] / held_out["mean"] if generated["count"] and held_out["mean"] else None,
        "histogram": {
            "edges": edges.tolist(),
            "generated": np.histogram(generated_distances, bins=edges)[0].tolist(),
            "held_out": np.histogram(held_out_distances, bins=edges)[0].tolist(),
        },
    }
