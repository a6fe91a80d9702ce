"""Neighbourhood density of embeddings: hardness score, AvgkNN, LOF, precision (Sehwag et al.).

Paper: "Generating High Fidelity Data from Low-density Regions using Diffusion Models",
Sec. 3.2.1 (Eq. 3), Sec. 4.2 (Fig. 7), Table 1.

- `ClassGaussians`: one Gaussian per class in an embedding space; `hardness_score` is the
  negative log-likelihood of Eq. 3. Covariances are Ledoit-Wolf shrunk, plus a 1e-6 relative ridge,
  so they are invertible even with fewer samples than dimensions; the Mahalanobis term and the log-determinant go
  through the Cholesky factor. Unlabelled data (labels=None) gets one Gaussian over all points
  (class 0). The same object, built with `ClassGaussians.identity`, is the identity-precision
  hardness the sampler uses (App. A.1, see diffaudit/guidance/hardness.py).
- `avg_knn_distance` (k = 5), `local_outlier_factor` (k = 20, scikit-learn's
  LocalOutlierFactor(novelty=True) fitted on the real features) and `precision`
  (Kynkaanniemi et al. 2019, k-NN support of the real features, '<=' so identical sets give 1).
- `summarize` (mean with a t interval) and `compare_distributions` (Cohen's d, Welch t and
  Mann-Whitney p-values) for baseline-versus-guided tables.
- `rejection_sampling_cost` for Table 1.

Memory stays bounded at any size: k-NN distances come from diffaudit.retrieval.knn's exact blocked search,
and precision's support test runs over blocks of generated rows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from scipy import stats
from sklearn.covariance import ledoit_wolf
from sklearn.neighbors import LocalOutlierFactor

from diffaudit.errors import InvalidInput
from diffaudit.retrieval.knn import nearest_neighbours

AVG_KNN_K = 5  # Sehwag et al. Sec. 4.2
LOF_K = 20  # Sehwag et al. App. A.1
PRECISION_K = 3  # Kynkaanniemi et al. 2019
RIDGE = 1e-6  # relative ridge added to the Ledoit-Wolf covariance
DISTANCE_BLOCK_ELEMENTS = 2**24  # precision: at most this many generated x real distances in memory at once


@dataclass(frozen=True)
class ClassGaussians:
    """Gaussians N(mu_y, Sigma_y) over embeddings, one per class, stored as means and Cholesky factors.

    means: (C, k); cholesky: (C, k, k) lower-triangular with Sigma_y = L L^T; log_dets: (C,) ln det Sigma_y.
    Tensors are float64 on the CPU after `fit`; `to` moves them for use inside the sampler.
    """

    means: torch.Tensor
    cholesky: torch.Tensor
    log_dets: torch.Tensor

    @property
    def num_classes(self) -> int:
        return int(self.means.shape[0])

    @property
    def dim(self) -> int:
        return int(self.means.shape[1])

    @classmethod
    def fit(
        cls, features: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor | None = None
    ) -> ClassGaussians:
        """Sample mean and Ledoit-Wolf shrunk covariance of each class 0..C-1 (labels=None: one class)."""
        x = _as_float64_numpy(features)
        y = np.zeros(len(x), dtype=np.int64) if labels is None else np.asarray(labels, dtype=np.int64)
        if y.shape != (len(x),):
            raise ValueError(f"labels must have shape ({len(x)},), got {y.shape}")
        num_classes = int(y.max()) + 1 if len(y) else 0
        means, factors, log_dets = [], [], []
        for c in range(num_classes):
            members = x[y == c]
            if len(members) < 2:
                raise InvalidInput(f"class {c} has {len(members)} embedding(s); a Gaussian needs at least 2")
            factor = np.linalg.cholesky(shrunk_covariance(members, c))
            means.append(members.mean(axis=0))
            factors.append(factor)
            log_dets.append(2.0 * np.log(np.diag(factor)).sum())  # ln det(L L^T) = 2 sum ln L_ii
        return cls(
            means=torch.from_numpy(np.stack(means)),
            cholesky=torch.from_numpy(np.stack(factors)),
            log_dets=torch.tensor(log_dets, dtype=torch.float64),
        )

    @classmethod
    def identity(cls, means: torch.Tensor) -> ClassGaussians:
        """Gaussians with the given means and identity covariance (identity precision, Sehwag et al. App. A.1)."""
        num_classes, dim = means.shape
        eye = torch.eye(dim, dtype=means.dtype, device=means.device)
        return cls(
            means=means,
            cholesky=eye.expand(num_classes, dim, dim),
            log_dets=torch.zeros(num_classes, dtype=means.dtype, device=means.device),
        )

    def to(self, device: torch.device | str, dtype: torch.dtype = torch.float32) -> ClassGaussians:
        return ClassGaussians(
            means=self.means.to(device, dtype),
            cholesky=self.cholesky.to(device, dtype),
            log_dets=self.log_dets.to(device, dtype),
        )

    def hardness_all_classes(self, features: torch.Tensor) -> torch.Tensor:
        """H(x, c) for every class c, shape (N, C); differentiable in `features` (Sehwag et al. Eq. 3)."""
        centred = features[:, None, :] - self.means[None]  # (N, C, k)
        # Solve L_c z = (f - mu_c) per class: z^T z = (f - mu_c)^T Sigma_c^{-1} (f - mu_c).
        whitened = torch.linalg.solve_triangular(self.cholesky, centred.permute(1, 2, 0), upper=False)  # (C, k, N)
        mahalanobis = whitened.pow(2).sum(dim=1).T  # (N, C)
        # Sehwag et al. Eq. 3: H = 1/2 [Mahalanobis + ln det Sigma_y + k ln 2 pi]
        return 0.5 * (mahalanobis + self.log_dets[None] + self.dim * math.log(2.0 * math.pi))

    def hardness_score(
        self, features: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor | None = None
    ) -> np.ndarray:
        """H(x_i, y_i) of Eq. 3 for each row (labels=None: class 0, the unlabelled Gaussian), as float64 (N,)."""
        x = torch.from_numpy(_as_float64_numpy(features))
        y = torch.zeros(len(x), dtype=torch.int64) if labels is None else torch.as_tensor(np.asarray(labels))
        gaussians = self.to("cpu", torch.float64)
        scores = [
            gaussians.hardness_all_classes(x[i : i + 4096]).gather(1, y[i : i + 4096, None].long())[:, 0]
            for i in range(0, len(x), 4096)
        ]
        return torch.cat(scores).numpy() if scores else np.zeros(0)


def shrunk_covariance(members: np.ndarray, label: int = 0) -> np.ndarray:
    """Ledoit-Wolf covariance plus a ridge of RIDGE x its mean variance, so it is positive definite.

    Ledoit-Wolf alone can be singular (shrinkage 0 with very few points); the ridge changes it by a relative
    1e-6 at most.
    """
    covariance, _ = ledoit_wolf(members, assume_centered=False)
    mean_variance = np.trace(covariance) / len(covariance)
    if mean_variance <= 0:
        raise InvalidInput(f"class {label}: its embeddings are all identical (zero covariance)")
    return covariance + RIDGE * mean_variance * np.eye(len(covariance))


def knn_distances(query: np.ndarray, reference: np.ndarray, k: int, *, exclude_self: bool = False) -> np.ndarray:
    """Euclidean distances (N, k) from each query row to its k nearest reference rows, ascending (exact, float64).

    exclude_self: query is reference, and each row itself is left out of its neighbours.
    Blocked, memory-bounded exact search of diffaudit.retrieval.knn.
    """
    take = k + 1 if exclude_self else k
    if take > len(reference):
        raise InvalidInput(f"k={k} needs at least {take} reference rows, got {len(reference)}")
    found = nearest_neighbours(np.asarray(query), np.asarray(reference), take)
    if not exclude_self:
        return found.distances
    # Drop each row's own entry (among duplicates it need not come first), or the farthest if ties pushed it out.
    is_self = found.indices == np.arange(len(query))[:, None]
    drop = np.where(is_self.any(axis=1), is_self.argmax(axis=1), k)
    keep = np.ones_like(is_self)
    keep[np.arange(len(query)), drop] = False
    return found.distances[keep].reshape(len(query), k)


def avg_knn_distance(query: np.ndarray, reference: np.ndarray, k: int = AVG_KNN_K) -> np.ndarray:
    """AvgkNN: mean distance from each query embedding to its k nearest reference (training) embeddings.

    Sehwag et al. Sec. 4.2 (k = 5); higher means a lower-density neighbourhood. The query rows must not be
    part of the reference set.
    """
    return knn_distances(query, reference, k).mean(axis=1)


def local_outlier_factor(query: np.ndarray, reference: np.ndarray, k: int = LOF_K) -> np.ndarray:
    """LOF of each query embedding relative to the reference (training) embeddings (Breunig et al. 2000).

    Sehwag et al. Sec. 4.2 / App. A.1 (k = 20). scikit-learn's LocalOutlierFactor in novelty mode, fitted on
    the reference; its score_samples is the negated LOF. About 1 inside a cluster, higher in sparser places.
    """
    model = LocalOutlierFactor(n_neighbors=k, novelty=True).fit(np.asarray(reference, dtype=np.float64))
    return -model.score_samples(np.asarray(query, dtype=np.float64))


def precision(generated: np.ndarray, real: np.ndarray, k: int = PRECISION_K) -> float:
    """Fraction of generated embeddings inside the k-NN support of the real ones (Kynkaanniemi et al. 2019).

    The support is the union of balls around each real embedding with radius its distance to its k-th nearest
    other real embedding; a generated point on a ball's surface counts as inside ('<='), so identical sets
    score 1.
    """
    if len(generated) == 0:
        return float("nan")
    radii = torch.from_numpy(knn_distances(real, real, k, exclude_self=True)[:, -1])
    g = torch.from_numpy(np.ascontiguousarray(generated, dtype=np.float64))
    r = torch.from_numpy(np.ascontiguousarray(real, dtype=np.float64))
    block = max(1, DISTANCE_BLOCK_ELEMENTS // max(1, len(r)))
    inside = [(torch.cdist(g[s : s + block], r) <= radii[None]).any(dim=1) for s in range(0, len(g), block)]
    return float(torch.cat(inside).double().mean())


def summarize(values: np.ndarray, confidence: float = 0.95) -> dict[str, float]:
    """Mean with a Student-t confidence interval, median, standard deviation and count of a 1-D sample."""
    v = np.asarray(values, dtype=np.float64)
    n = len(v)
    mean = float(v.mean()) if n else float("nan")
    sd = float(v.std(ddof=1)) if n > 1 else float("nan")
    half = float(stats.t.ppf(0.5 + confidence / 2, n - 1) * sd / math.sqrt(n)) if n > 1 else float("nan")
    median = float(np.median(v)) if n else float("nan")
    return {"n": n, "mean": mean, "ci_low": mean - half, "ci_high": mean + half, "median": median, "std": sd}


def cohens_d(baseline: np.ndarray, treated: np.ndarray) -> float:
    """Cohen's d: (mean treated - mean baseline) / pooled standard deviation."""
    a, b = np.asarray(baseline, dtype=np.float64), np.asarray(treated, dtype=np.float64)
    pooled = ((len(a) - 1) * a.var(ddof=1) + (len(b) - 1) * b.var(ddof=1)) / (len(a) + len(b) - 2)
    return float((b.mean() - a.mean()) / math.sqrt(pooled))


def compare_distributions(baseline: np.ndarray, treated: np.ndarray) -> dict[str, float]:
    """Effect size and two-sided p-values for 'treated differs from baseline' (e.g. guided vs baseline hardness)."""
    a, b = np.asarray(baseline, dtype=np.float64), np.asarray(treated, dtype=np.float64)
    return {
        "cohens_d": cohens_d(a, b),
        "welch_t_p": float(stats.ttest_ind(b, a, equal_var=False).pvalue),
        "mann_whitney_p": float(stats.mannwhitneyu(b, a, alternative="two-sided").pvalue),
    }


def acceptance_rate(scores: np.ndarray, low: float, high: float) -> float:
    """Fraction of samples whose score lies in [low, high)."""
    s = np.asarray(scores, dtype=np.float64)
    return float(((s >= low) & (s < high)).mean()) if len(s) else float("nan")


def rejection_sampling_cost(
    baseline_scores: np.ndarray,
    guided_scores: np.ndarray,
    ranges: list[tuple[float, float]],
    *,
    seconds_per_baseline_sample: float,
    seconds_per_guided_sample: float,
    num_wanted: int = 5000,
) -> list[dict[str, float]]:
    """Sehwag et al. Table 1: time to collect `num_wanted` samples whose score falls in each range.

    Either sampler draws until it has enough samples in range (rejection sampling), so its cost is
    num_wanted / acceptance_rate * seconds per sample; `reduction` = baseline cost / guided cost.
    """
    rows = []
    for low, high in ranges:
        rate_b, rate_g = acceptance_rate(baseline_scores, low, high), acceptance_rate(guided_scores, low, high)
        cost_b = num_wanted * seconds_per_baseline_sample / rate_b if rate_b > 0 else math.inf
        cost_g = num_wanted * seconds_per_guided_sample / rate_g if rate_g > 0 else math.inf
        rows.append(
            {
                "low": float(low),
                "high": float(high),
                "baseline_acceptance": rate_b,
                "guided_acceptance": rate_g,
                "baseline_seconds": cost_b,
                "guided_seconds": cost_g,
                "reduction": cost_b / cost_g if math.isfinite(cost_g) and cost_g > 0 else math.nan,
            }
        )
    return rows


def _as_float64_numpy(features: np.ndarray | torch.Tensor) -> np.ndarray:
    if isinstance(features, torch.Tensor):
        features = features.detach().cpu().numpy()
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"features must be 2-D (N, k), got shape {x.shape}")
    return x
