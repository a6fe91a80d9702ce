"""Memorization of training images by generated samples: the extraction test and nearest-neighbour distances.

Extraction test (Carlini et al., "Extracting Training Data from Diffusion Models", USENIX Security 2023,
Sec. 5.1; restated as Eq. 7 of Hasegawa and Yasuda, 003): a generated sample x^ copies its nearest training
image x when

    l(x^, x; S_x^) = l2(x^, x) / (alpha * mean_{y in S_x^} l2(x^, y))  <  threshold,

S_x^ being the n training images nearest to x^ (x included). 003 restates the formula but not the numbers;
the defaults alpha = 0.5 and n = 50 are Carlini et al.'s (Sec. 5.1, CIFAR-10). With threshold = 1 a sample
is a copy when its nearest training image is more than twice as close as its 50 nearest are on average.
Carlini et al. use l2 normalised by sqrt(dimension); the ratio does not depend on that factor.

Nearest-neighbour distances (Sehwag et al., 001, Sec. 5): if a model copied its training data, generated
samples would lie much closer to the training set than held-out real images do (001 finds 0.42 for its
samples against 0.29 for real validation images, in a classifier's feature space).

Both work on any arrays (N, ...) flattened to vectors: pixels or an extractor's features. Distances are
exact and computed in blocks, so memory grows with the block sizes, never with N_generated x N_train.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from diffaudit.device import pick_device

CARLINI_ALPHA = 0.5  # Carlini et al. 2023, Sec. 5.1
CARLINI_N_NEIGHBOURS = 50  # Carlini et al. 2023, Sec. 5.1
CARLINI_THRESHOLD = 1.0
SUMMARY_QUANTILES = (0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99)

ArrayLike = np.ndarray | torch.Tensor


def as_vectors(array: ArrayLike, start: int, stop: int, device: torch.device) -> torch.Tensor:
    """Rows start:stop of (N, ...) images or features as float64 vectors (rows, D) on `device`."""
    rows = array[start:stop]
    tensor = rows if isinstance(rows, torch.Tensor) else torch.from_numpy(np.asarray(rows))
    return tensor.reshape(tensor.shape[0], -1).to(device=device, dtype=torch.float64)


def blocked_knn(
    queries: ArrayLike,
    reference: ArrayLike,
    k: int,
    *,
    query_block: int = 1024,
    reference_block: int = 8192,
    device: torch.device | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact Euclidean k nearest reference vectors of every query: distances (Q, k) ascending and indices (Q, k).

    Blocks of queries and of the reference are converted to float64 on `device` only when used, squared
    distances are formed as |q|^2 + |r|^2 - 2 q.r and a running top k is kept, so memory is
    O((query_block + reference_block) * D + query_block * (reference_block + k)), whatever the array sizes.
    """
    device = device or pick_device()
    n_queries, n_reference = len(queries), len(reference)
    dim, reference_dim = int(np.prod(queries.shape[1:])), int(np.prod(reference.shape[1:]))
    if dim != reference_dim:
        raise ValueError(f"queries have dimension {dim} but the reference has {reference_dim}")
    if not 1 <= k <= n_reference:
        raise ValueError(f"k must be between 1 and the reference size {n_reference}, got {k}")
    distances, indices = [], []
    for q_start in range(0, n_queries, query_block):
        q = as_vectors(queries, q_start, q_start + query_block, device)
        q_squares = q.square().sum(dim=1, keepdim=True)
        best = torch.empty(q.shape[0], 0, dtype=torch.float64, device=device)
        best_index = torch.empty(q.shape[0], 0, dtype=torch.int64, device=device)
        for r_start in range(0, n_reference, reference_block):
            r = as_vectors(reference, r_start, r_start + reference_block, device)
            squared = (q_squares + r.square().sum(dim=1) - 2.0 * q @ r.T).clamp_min_(0.0)
            index = torch.arange(r_start, r_start + r.shape[0], device=device).expand(q.shape[0], -1)
            candidates, candidate_index = torch.cat([best, squared], dim=1), torch.cat([best_index, index], dim=1)
            best, position = candidates.topk(min(k, candidates.shape[1]), dim=1, largest=False, sorted=True)
            best_index = candidate_index.gather(1, position)
        distances.append(best.sqrt().cpu())
        indices.append(best_index.cpu())
    if not distances:
        return np.zeros((0, k)), np.zeros((0, k), dtype=np.int64)
    return torch.cat(distances).numpy(), torch.cat(indices).numpy()


def extraction_ratio(neighbour_distances: np.ndarray, alpha: float = CARLINI_ALPHA) -> np.ndarray:
    """Eq. 7 of 003 from each sample's ascending distances (G, n) to its n nearest training images.

    A sample whose n nearest are all at distance 0 (duplicated training images) gets 0: it is a copy.
    """
    nearest = neighbour_distances[:, 0]
    scale = alpha * neighbour_distances.mean(axis=1)
    return np.divide(nearest, scale, out=np.zeros_like(nearest), where=scale > 0)  # 003 Eq. 7


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
    query_block: int = 1024,
    reference_block: int = 8192,
    device: torch.device | None = None,
) -> Extraction:
    """Carlini et al.'s extraction test (003 Eq. 7) of every generated sample against the training set."""
    if alpha <= 0 or threshold <= 0:
        raise ValueError(f"alpha and threshold must be positive, got alpha={alpha}, threshold={threshold}")
    distances, indices = blocked_knn(
        generated, training, n_neighbours, query_block=query_block, reference_block=reference_block, device=device
    )
    score = extraction_ratio(distances, alpha)
    return Extraction(
        score=score,
        nearest_index=indices[:, 0],
        nearest_distance=distances[:, 0],
        flagged=score < threshold,
        alpha=alpha,
        n_neighbours=n_neighbours,
        threshold=threshold,
    )


def nearest_neighbour_distances(
    queries: ArrayLike,
    training: ArrayLike,
    *,
    query_block: int = 1024,
    reference_block: int = 8192,
    device: torch.device | None = None,
) -> np.ndarray:
    """L2 distance (Q,) from each query to its nearest training vector (001 Sec. 5)."""
    distances, _ = blocked_knn(
        queries, training, 1, query_block=query_block, reference_block=reference_block, device=device
    )
    return distances[:, 0]


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
    """001 Sec. 5: nearest-training-image distances of generated samples against held-out real images.

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
