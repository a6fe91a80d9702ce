"""Diverse samples (DS): generated samples outside the boundary of the training data.

"The deficit of new information in diffusion models", Sec. 3.5, Eq. 18 and Algorithms 1-2: deep features -> 2-D t-SNE ->
Quickhull boundary of the training points -> generated points outside it are DS. The hull is
scipy's Qhull (Barber et al. 1996, the paper's Algorithm 2); the point-in-hull test uses the
hull's facet equations, vectorised.

Two embedding modes:
- `joint`: one scikit-learn t-SNE of training and generated features together, per seed, with
  the authors' settings (`TSNE(n_components=2, random_state=seed)` on the raw features);
- `fixed`: openTSNE fitted once on the training features (optionally PCA-reduced), generated points placed
  into that embedding by openTSNE's partial optimisation, so every checkpoint compared against a
  dataset meets the same boundary. `FixedEmbedding` is the cacheable part.

Placement in the fixed mode. openTSNE's own `transform` gives each new point affinities to its
nearest training points normalised to sum 1 per point, so a point far outside the training
support is still pulled next to its nearest training points and lands inside the hull (measured:
0 of 15 planted far points found, tests). We keep openTSNE's optimiser and its transform
defaults but give the new points the affinities a joint t-SNE would give them to the training
points, p_ij = (p_{j|i} + p_{i|j}) / 2, with p_{i|j} from each training point's own perplexity
calibration (`joint_affinities_to_training`). A far point then gets half an attraction; an
in-distribution point is attracted like a training point. This finds the planted far cluster of
the tests (as the joint mode does) with no more in-distribution draws flagged than the joint mode.

It is still not a faithful stand-in for the joint mode: new points are placed one by one, with no
forces between them, so a cluster of generated samples never forms its own island. Measured on
the digits (random-CNN features, 1438 training points, 48 generated + 40 planted in 4 clusters of
10, about 6x the typical nearest-neighbour distance away): the joint mode flagged 40/40 planted
points on both seeds, the fixed mode 10 and 0, both flagged 0 of the ordinary samples. A lone
far point sits where half an attraction to its nearest training points balances the repulsion,
inside the map when those neighbours are inside (both modes miss it then). The stage's default
is nevertheless `fixed` (issue 4: one cached boundary per dataset); its summary carries a
`limitation` note, and the k-NN support detector (`outside_knn_balls`, Kynkaanniemi et al.
2019), which works in the original feature space and found all planted points, is reported
beside it. `joint` is the mode to use when the question is whether a model makes new clusters
(docs/novelty.md).
The tuning is also fragile: with exaggeration 1.0 instead of openTSNE's 1.5 about 20% of
in-distribution draws of a small planted set left the hull.

PCA: by default the fixed mode keeps every feature dimension (the PCA is then a rotation and
distances are exact). Truncating to the top components of the training features (`pca_dims`)
is faster but hides generated points that leave the training support in directions the training
set does not vary in: measured on the digits with random-CNN features, 16 planted far points
were all found with every dimension kept and none with 20 components.

A t-SNE result depends on its seed: every detection runs several seeds and the summary counts a
sample as DS when a strict majority of seeds say so.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from itertools import combinations
from typing import Any, Literal

import numpy as np
import torch
from scipy.sparse import csr_matrix
from scipy.spatial import ConvexHull

from diffaudit.metrics.entropy import information_estimates, pca_basis
from diffaudit.retrieval.knn import nearest_neighbours

EmbeddingMode = Literal["fixed", "joint"]
FIXED_FORMAT = 2  # version of the cached FixedEmbedding arrays
TRANSFORM_INIT_K = 25  # openTSNE transform's k: start at the median position of the 25 nearest training points
# openTSNE's `transform` defaults for the partial optimisation (learning rate, exaggeration, momentum, clipping)
OPENTSNE_TRANSFORM: dict[str, float] = {
    "learning_rate": 0.1,
    "exaggeration": 1.5,
    "momentum": 0.8,
    "max_grad_norm": 0.25,
}


@dataclass(frozen=True)
class TsneParams:
    """t-SNE settings. `pca_dims`, `n_iter`, `early_exaggeration_iter`, `transform_iter` and
    `neighbors` apply to the fixed (openTSNE) mode; `perplexity` and `n_jobs` to both."""

    perplexity: float = 30.0
    pca_dims: int | None = None  # None: keep every feature dimension (see module docstring)
    n_iter: int = 500
    early_exaggeration_iter: int = 250
    transform_iter: int = 250
    neighbors: str = "auto"  # openTSNE k-NN method: auto, exact, annoy
    negative_gradient_method: str = "fft"  # openTSNE: fft (large data) or bh (small data)
    n_jobs: int = 1


# --- boundary (Algorithm 2) and the point-in-hull test (Eq. 18) ---------------------------


def training_hull(points: np.ndarray) -> ConvexHull:
    """Quickhull boundary of the 2-D training points (paper Algorithm 2, via Qhull)."""
    return ConvexHull(np.asarray(points, dtype=np.float64))


def hull_margin(hull: ConvexHull, points: np.ndarray, block_size: int = 65536) -> np.ndarray:
    """Signed distance of each point outside the hull: max over facets of normal . x + offset (> 0 outside)."""
    normals, offsets = hull.equations[:, :-1], hull.equations[:, -1]  # Qhull's facet normals have unit length
    points = np.asarray(points, dtype=np.float64)
    margin = np.empty(len(points), dtype=np.float64)
    for start in range(0, len(points), block_size):
        margin[start : start + block_size] = np.max(points[start : start + block_size] @ normals.T + offsets, axis=1)
    return margin


def outside_hull(hull: ConvexHull, points: np.ndarray, tol: float = 1e-9, block_size: int = 65536) -> np.ndarray:
    """True for points outside the hull: some facet has normal . x + offset > tol."""
    return hull_margin(hull, points, block_size) > tol


def diverse_samples(train_2d: np.ndarray, generated_2d: np.ndarray) -> np.ndarray:
    """Mask of generated points whose t-SNE position is outside the training boundary (paper Eq. 18)."""
    return outside_hull(training_hull(train_2d), generated_2d)


# --- embeddings --------------------------------------------------------------------------


def joint_embedding(
    train_features: np.ndarray, generated_features: np.ndarray, seed: int, params: TsneParams = TsneParams()
) -> tuple[np.ndarray, np.ndarray]:
    """One scikit-learn t-SNE of both sets together (the authors' code), split back into the two sets."""
    from sklearn.manifold import TSNE

    both = np.concatenate([np.asarray(train_features), np.asarray(generated_features)]).astype(np.float32)
    tsne = TSNE(n_components=2, perplexity=params.perplexity, random_state=seed, n_jobs=params.n_jobs)
    positions = tsne.fit_transform(both).astype(np.float64)
    return positions[: len(train_features)], positions[len(train_features) :]


def _centered(embedding: np.ndarray) -> np.ndarray:
    """Shift so the bounding box is centred at 0, as openTSNE's transform does to its reference."""
    return embedding - (embedding.max(axis=0) + embedding.min(axis=0)) / 2


def perplexity_calibration(
    sq_distances: np.ndarray, perplexity: float, n_steps: int = 64
) -> tuple[np.ndarray, np.ndarray]:
    """Per row: the Gaussian precision beta with perplexity `perplexity` over the row's neighbours, and log Z.

    van der Maaten and Hinton 2008, Eq. 1: p_{j|i} = exp(-beta_i d_ij^2) / Z_i with beta_i chosen
    by bisection so that the entropy of p_{.|i} is log(perplexity) nats. Rows hold squared
    distances to each point's nearest neighbours (the point itself excluded).
    """
    sq = np.asarray(sq_distances, dtype=np.float64)
    shifted = sq - sq.min(axis=1, keepdims=True)  # exp stays finite; log Z is corrected below
    target = np.log(perplexity)
    low, high = np.zeros(len(sq)), np.full(len(sq), np.inf)
    scale = np.median(shifted, axis=1)
    beta = 1.0 / np.where(scale > 0, scale, 1.0)
    for _ in range(n_steps):
        weights = np.exp(-shifted * beta[:, None])
        p = weights / weights.sum(axis=1, keepdims=True)
        entropy = -np.sum(p * np.log(np.maximum(p, 1e-300)), axis=1)
        too_flat = entropy > target
        low, high = np.where(too_flat, beta, low), np.where(too_flat, high, beta)
        beta = np.where(np.isinf(high), beta * 2, (low + high) / 2)
    log_norm = -beta * sq.min(axis=1) + np.log(np.exp(-shifted * beta[:, None]).sum(axis=1))
    return beta, log_norm


def joint_affinities_to_training(
    sq_distances: np.ndarray,
    neighbours: np.ndarray,
    train_precision: np.ndarray,
    train_log_norm: np.ndarray,
    perplexity: float,
) -> np.ndarray:
    """Affinities of new points to their nearest training points as a joint t-SNE would have them.

    p_ij = (p_{j|i} + p_{i|j}) / 2 (van der Maaten and Hinton 2008, Sec. 3): p_{j|i} is the new
    point's own conditional (sums to 1, as in openTSNE's transform), p_{i|j} the training point's
    conditional of picking the new point, with the precision and normaliser it has in the
    training set. A far-away point gets p_{i|j} ~ 0, so only half an attraction against full
    repulsion, and is pushed out of the training map, as its own cluster would be in the joint mode.
    """
    own_precision, _ = perplexity_calibration(sq_distances, perplexity)
    own = np.exp(-(sq_distances - sq_distances.min(axis=1, keepdims=True)) * own_precision[:, None])
    own /= own.sum(axis=1, keepdims=True)
    seen_from_training = np.exp(-sq_distances * train_precision[neighbours] - train_log_norm[neighbours])
    return (own + seen_from_training) / 2


@dataclass
class FixedEmbedding:
    """openTSNE embeddings of the training features (one per seed), fitted once per dataset.

    Cached as plain arrays (`to_arrays`) and JSON (`metadata`), not pickled: the training
    embeddings (centred), the PCA basis and each training point's perplexity calibration
    (precision and log normaliser). `restore` needs the same training features, which the
    feature cache already holds. Generated points are placed with openTSNE's partial
    optimisation (its `transform` defaults) under `joint_affinities_to_training`.
    """

    train_embeddings: np.ndarray  # (n_seeds, n_train, 2)
    seeds: tuple[int, ...]
    pca_mean: np.ndarray
    pca_components: np.ndarray
    train_precision: np.ndarray  # (n_train,) beta_j of Eq. 1 in the PCA space
    train_log_norm: np.ndarray  # (n_train,) log Z_j
    params: TsneParams
    _reduced_train: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)), repr=False)
    _tsne: list[Any] = field(default_factory=list, repr=False)  # openTSNE TSNEEmbedding per seed

    def reduce(self, features: np.ndarray) -> np.ndarray:
        return (np.asarray(features, dtype=np.float64) - self.pca_mean) @ self.pca_components.T

    def n_neighbours(self) -> int:
        return min(len(self._reduced_train), int(3 * effective_perplexity(self.params, len(self._reduced_train))))

    def transform(self, generated_features: np.ndarray, device: torch.device | None = None) -> np.ndarray:
        """Positions (n_seeds, n_generated, 2) of generated points placed into each training embedding."""
        from openTSNE.tsne import PartialTSNEEmbedding

        k = self.n_neighbours()
        near = nearest_neighbours(self.reduce(generated_features), self._reduced_train, k=k, device=device)
        sq = np.asarray(near.distances, dtype=np.float64) ** 2
        perplexity = effective_perplexity(self.params, len(self._reduced_train))
        weights = joint_affinities_to_training(sq, near.indices, self.train_precision, self.train_log_norm, perplexity)
        rows = np.repeat(np.arange(len(sq)), k)
        affinities = csr_matrix(
            (weights.ravel(), (rows, near.indices.ravel())), shape=(len(sq), len(self._reduced_train))
        )
        placed = []
        for reference in self._tsne:
            start = np.median(np.asarray(reference)[near.indices[:, :TRANSFORM_INIT_K]], axis=1)  # openTSNE's "median"
            partial = PartialTSNEEmbedding(start, reference, P=affinities, **reference.gradient_descent_params)
            partial.optimize(n_iter=self.params.transform_iter, inplace=True, **OPENTSNE_TRANSFORM)
            placed.append(np.asarray(partial))
        return np.stack(placed).astype(np.float64)

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {
            "train_embeddings": self.train_embeddings,
            "pca_mean": self.pca_mean,
            "pca_components": self.pca_components,
            "train_precision": self.train_precision,
            "train_log_norm": self.train_log_norm,
        }

    def metadata(self) -> dict[str, Any]:
        return {"format": FIXED_FORMAT, "seeds": list(self.seeds), "params": dataclasses.asdict(self.params)}

    @classmethod
    def restore(
        cls, arrays: dict[str, np.ndarray], metadata: dict[str, Any], train_features: np.ndarray
    ) -> FixedEmbedding:
        """Rebuild from `to_arrays()`/`metadata()` and the same training features (no refit, no k-NN)."""
        if metadata.get("format") != FIXED_FORMAT:
            raise ValueError(f"unknown fixed-embedding format {metadata.get('format')!r}")
        fixed = cls(
            train_embeddings=np.asarray(arrays["train_embeddings"], dtype=np.float64),
            seeds=tuple(int(s) for s in metadata["seeds"]),
            pca_mean=np.asarray(arrays["pca_mean"], dtype=np.float64),
            pca_components=np.asarray(arrays["pca_components"], dtype=np.float64),
            train_precision=np.asarray(arrays["train_precision"], dtype=np.float64),
            train_log_norm=np.asarray(arrays["train_log_norm"], dtype=np.float64),
            params=TsneParams(**metadata["params"]),
        )
        if fixed.train_embeddings.shape[1] != len(train_features):
            raise ValueError("training features do not match the cached embedding (different number of rows)")
        fixed._reduced_train = fixed.reduce(train_features)
        fixed._tsne = [
            _reference_embedding(e, s, fixed.params) for e, s in zip(fixed.train_embeddings, fixed.seeds, strict=True)
        ]
        return fixed


def effective_perplexity(params: TsneParams, n_train: int) -> float:
    """The perplexity, lowered as openTSNE does when the training set has fewer than 3 * perplexity + 1 points."""
    return min(params.perplexity, (n_train - 1) / 3)


def _reference_embedding(embedding: np.ndarray, seed: int, params: TsneParams) -> Any:
    """An openTSNE TSNEEmbedding over stored positions: all a partial optimisation needs of its reference.

    Its own affinities are never used (the partial embedding brings its P), so they are an empty matrix.
    """
    from openTSNE import TSNEEmbedding
    from openTSNE.affinity import Affinities

    unused = Affinities()
    unused.P = csr_matrix((len(embedding), len(embedding)))
    return TSNEEmbedding(
        np.array(embedding),
        unused,
        negative_gradient_method=params.negative_gradient_method,
        n_jobs=params.n_jobs,
        random_state=seed,
    )


def fit_fixed_embedding(
    train_features: np.ndarray,
    seeds: tuple[int, ...] = (0, 1, 2),
    params: TsneParams = TsneParams(),
    device: torch.device | None = None,
) -> FixedEmbedding:
    """Fit openTSNE on the PCA-reduced training features once per seed, and calibrate each training point."""
    from openTSNE import TSNE

    mean, components = pca_basis(train_features, params.pca_dims or np.shape(train_features)[1])
    reduced = (np.asarray(train_features, dtype=np.float64) - mean) @ components.T
    perplexity = effective_perplexity(params, len(reduced))
    k = int(3 * perplexity)
    # the k + 1 nearest include the point itself (distance 0) first; drop it
    near = nearest_neighbours(reduced, reduced, k=k + 1, device=device)
    precision, log_norm = perplexity_calibration(np.asarray(near.distances[:, 1:], dtype=np.float64) ** 2, perplexity)
    embeddings = []
    for seed in seeds:
        tsne = TSNE(
            perplexity=params.perplexity,
            n_iter=params.n_iter,
            early_exaggeration_iter=params.early_exaggeration_iter,
            negative_gradient_method=params.negative_gradient_method,
            neighbors=params.neighbors,
            n_jobs=params.n_jobs,
            random_state=seed,
        )
        embeddings.append(_centered(np.asarray(tsne.fit(reduced))))
    fixed = FixedEmbedding(
        train_embeddings=np.stack(embeddings),
        seeds=tuple(seeds),
        pca_mean=mean,
        pca_components=components,
        train_precision=precision,
        train_log_norm=log_norm,
        params=params,
    )
    fixed._reduced_train = reduced
    fixed._tsne = [_reference_embedding(e, s, params) for e, s in zip(fixed.train_embeddings, fixed.seeds, strict=True)]
    return fixed


# --- detection over seeds ----------------------------------------------------------------


@dataclass
class TsneDetection:
    """t-SNE positions and DS masks, one row per seed."""

    mode: EmbeddingMode
    seeds: tuple[int, ...]
    train_2d: np.ndarray  # (n_seeds, n_train, 2)
    generated_2d: np.ndarray  # (n_seeds, n_generated, 2)
    outside: np.ndarray  # (n_seeds, n_generated) bool


def tsne_diverse_samples(
    train_features: np.ndarray,
    generated_features: np.ndarray,
    mode: EmbeddingMode = "joint",
    seeds: tuple[int, ...] = (0, 1, 2),
    params: TsneParams = TsneParams(),
    fixed: FixedEmbedding | None = None,
) -> TsneDetection:
    """Algorithm 1 for every seed. In fixed mode, pass the cached `fixed` embedding to reuse it."""
    if mode == "joint":
        pairs = [joint_embedding(train_features, generated_features, s, params) for s in seeds]
        train_2d = np.stack([t for t, _ in pairs])
        generated_2d = np.stack([g for _, g in pairs])
    elif mode == "fixed":
        if fixed is None:
            fixed = fit_fixed_embedding(train_features, seeds, params)
        seeds = fixed.seeds
        train_2d = fixed.train_embeddings
        generated_2d = fixed.transform(generated_features)
    else:
        raise ValueError(f"unknown embedding mode {mode!r}")
    outside = np.stack([diverse_samples(t, g) for t, g in zip(train_2d, generated_2d, strict=True)])
    return TsneDetection(mode, tuple(seeds), train_2d, generated_2d, outside)


def jaccard(a: np.ndarray, b: np.ndarray) -> float:
    """|A & B| / |A | B| of two masks; 1.0 when both are empty (the sets agree)."""
    union = int(np.sum(a | b))
    return 1.0 if union == 0 else int(np.sum(a & b)) / union


def majority(masks: np.ndarray) -> np.ndarray:
    """Samples flagged by a strict majority of the rows (seeds)."""
    return np.sum(masks, axis=0) * 2 > masks.shape[0]


def seed_summary(masks: np.ndarray, seeds: tuple[int, ...]) -> dict[str, Any]:
    """DS count per seed, mean and spread, pairwise Jaccard overlap, majority DS."""
    counts = np.sum(masks, axis=1)
    pairs = {f"{seeds[i]}-{seeds[j]}": jaccard(masks[i], masks[j]) for i, j in combinations(range(len(seeds)), 2)}
    agreed = majority(masks)
    return {
        "seeds": list(seeds),
        "count_per_seed": [int(c) for c in counts],
        "count_mean": float(np.mean(counts)),
        "count_std": float(np.std(counts, ddof=1)) if len(counts) > 1 else 0.0,
        "count_min": int(np.min(counts)),
        "count_max": int(np.max(counts)),
        "jaccard": pairs,
        "jaccard_mean": float(np.mean(list(pairs.values()))) if pairs else 1.0,
        "majority_count": int(np.sum(agreed)),
        "majority_rate": float(np.mean(agreed)),
        "majority_indices": [int(i) for i in np.flatnonzero(agreed)],
    }


# --- the second detector: k-NN support in feature space ------------------------------------


def knn_radii(train_features: np.ndarray, k: int = 3, device: torch.device | None = None) -> np.ndarray:
    """Distance from each training point to its k-th nearest other training point (exact, blocked)."""
    # the k + 1 nearest include the point itself at distance 0, so the last is its k-th other neighbour
    return nearest_neighbours(train_features, train_features, k=k + 1, device=device).distances[:, k]


def _inside_some_ball(
    train: np.ndarray, queries: np.ndarray, radii: np.ndarray, max_entries: int = 1 << 23
) -> np.ndarray:
    """Brute force: is each query within radii[j] of some training point j (float64, blocked)."""
    train_t, radii_t = torch.as_tensor(train, dtype=torch.float64), torch.as_tensor(radii, dtype=torch.float64)
    rows = max(1, max_entries // len(train))
    blocks = [torch.as_tensor(queries[s : s + rows], dtype=torch.float64) for s in range(0, len(queries), rows)]
    return torch.cat([(torch.cdist(b, train_t) <= radii_t).any(dim=1) for b in blocks]).numpy()


def outside_knn_balls(
    train_features: np.ndarray,
    generated_features: np.ndarray,
    k: int = 3,
    radii: np.ndarray | None = None,
    candidates: int = 32,
    device: torch.device | None = None,
) -> np.ndarray:
    """True for generated samples in no training k-NN ball (Kynkaanniemi et al. 2019's support; '<=' is inside).

    Exact: a sample's `candidates` nearest training points decide it, unless none of their balls
    holds it and the farthest candidate is within the largest radius; those few rows are checked
    against every ball.
    """
    train = np.asarray(train_features, dtype=np.float64)
    generated = np.asarray(generated_features, dtype=np.float64)
    if radii is None:
        radii = knn_radii(train, k, device)
    near = nearest_neighbours(generated, train, k=min(candidates, len(train)), device=device)
    inside = np.any(near.distances <= radii[near.indices], axis=1)
    unresolved = np.flatnonzero(~inside & (near.distances[:, -1] <= radii.max()))
    if len(unresolved):
        inside[unresolved] = _inside_some_ball(train, generated[unresolved], radii)
    return ~inside


def detector_agreement(a: np.ndarray, b: np.ndarray) -> dict[str, float | int]:
    """Counts of the 2x2 table, Jaccard of the flagged sets and Cohen's kappa of two masks."""
    a, b = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    observed = float(np.mean(a == b))
    expected = float(np.mean(a) * np.mean(b) + np.mean(~a) * np.mean(~b))
    # Cohen 1960: kappa = (p_o - p_e) / (1 - p_e); defined as 1 when both raters are constant and agree
    kappa = 1.0 if expected == 1.0 else (observed - expected) / (1.0 - expected)
    return {
        "both": int(np.sum(a & b)),
        "only_first": int(np.sum(a & ~b)),
        "only_second": int(np.sum(~a & b)),
        "neither": int(np.sum(~a & ~b)),
        "jaccard": jaccard(a, b),
        "cohen_kappa": float(kappa),
    }


# --- report and plot ----------------------------------------------------------------------


def novelty_report(
    train_features: np.ndarray,
    generated_features: np.ndarray,
    detection: TsneDetection,
    knn_k: int = 3,
    entropy_dims: int = 10,
    entropy_k: int = 3,
    n_rounds: int = 10,
    seed: int = 0,
    device: torch.device | None = None,
    support_ds: np.ndarray | None = None,
) -> dict[str, Any]:
    """JSON-able summary of a stage: t-SNE DS over seeds, k-NN support DS, their agreement, H and KL.

    `support_ds`: the k-NN support flags when the caller already has them (same k), else computed.
    """
    tsne_ds = majority(detection.outside)
    if support_ds is None:
        support_ds = outside_knn_balls(train_features, generated_features, knn_k, device=device)
    return {
        "n_train": len(train_features),
        "n_generated": len(generated_features),
        "tsne": {"mode": detection.mode, **seed_summary(detection.outside, detection.seeds)},
        "knn_support": {
            "k": knn_k,
            "count": int(np.sum(support_ds)),
            "rate": float(np.mean(support_ds)),
            "indices": [int(i) for i in np.flatnonzero(support_ds)],
        },
        "agreement": {"first": "tsne_majority", "second": "knn_support", **detector_agreement(tsne_ds, support_ds)},
        "information": information_estimates(
            train_features, generated_features, n_components=entropy_dims, k=entropy_k, n_rounds=n_rounds, seed=seed
        ),
    }
