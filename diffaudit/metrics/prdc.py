"""Precision, recall, density and coverage from k-nearest-neighbour balls, blocked: no N x N matrix.

Precision and recall: Kynkaanniemi et al., "Improved Precision and Recall Metric for Assessing Generative Models",
arXiv 1904.06991, Eqs. 1-2 (k = 3). Density and coverage: Naeem et al., "Reliable Fidelity and Diversity Metrics for
Generative Models", arXiv 2002.09797, Sec. 3.2. Every ball is closed (distance <= radius), so a set against itself
has coverage 1 (a strict '<' makes it 0 wherever duplicates give radius 0) and ties count as inside.

Radii are exact float64 distances to the k-th nearest other row of the same set: the (k + 1)-th nearest row of the
set itself (its own row at distance 0 first), from diffaudit.retrieval.knn's exact blocked search. Ball memberships
come from one blocked pass over (generated, real) pairs: squared distances in float32 with one matrix product per
tile (rows centred on the real mean), and every pair whose float32 value lies within a rounding bound of a radius is
decided again from its exact float64 distance, so each membership is the one brute force in float64 gives.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from diffaudit.errors import InvalidInput
from diffaudit.retrieval.knn import nearest_neighbours

PRDC_K = 3  # Kynkaanniemi et al. 2019 and Naeem et al. 2020 both use k = 3 for 2,048-d Inception features
TILE_ROWS = 2048  # generated and real rows per tile: a 2048 x 2048 float32 tile and its masks, ~30 MB
UNIT_ROUNDOFF_FP32 = 2.0**-24


@dataclass(frozen=True)
class BallMemberships:
    """Per-row terms whose means are the four metrics (the bootstrap resamples them).

    fake_in_real: generated row inside some real ball (precision); fake_ball_counts: number of real balls holding
    the generated row (density, divided by k); real_in_fake: real row inside some generated ball (recall);
    real_covered: the real row's own ball holds some generated row (coverage).
    """

    fake_in_real: np.ndarray
    fake_ball_counts: np.ndarray
    real_in_fake: np.ndarray
    real_covered: np.ndarray
    k: int

    @property
    def precision(self) -> float:
        """Kynkaanniemi et al., arXiv 1904.06991, Eqs. 1-2: share of generated rows inside the real manifold."""
        return float(self.fake_in_real.mean())

    @property
    def recall(self) -> float:
        """Kynkaanniemi et al., arXiv 1904.06991, Eqs. 1-2: share of real rows inside the generated manifold."""
        return float(self.real_in_fake.mean())

    @property
    def density(self) -> float:
        """Naeem et al., arXiv 2002.09797, Sec. 3.2, density: (1 / kM) sum_j sum_i 1[Y_j in B(X_i, NND_k(X_i))]."""
        return float(self.fake_ball_counts.mean() / self.k)

    @property
    def coverage(self) -> float:
        """Naeem et al., arXiv 2002.09797, Sec. 3.2, coverage: share of real balls B(X_i, NND_k(X_i)) holding a
        generated row."""
        return float(self.real_covered.mean())


def knn_radii(features: np.ndarray, k: int = PRDC_K) -> np.ndarray:
    """Exact float64 distance from each row to its k-th nearest other row of the same set (NND_k)."""
    if len(features) <= k:
        raise InvalidInput(f"k-NN radii with k = {k} need more than {k} rows, got {len(features)}")
    return nearest_neighbours(features, features, k=k + 1).distances[:, k]


def ball_memberships(real: np.ndarray, fake: np.ndarray, k: int = PRDC_K) -> BallMemberships:
    """Every ball membership behind precision, recall, density and coverage (real: X_i, fake: Y_j)."""
    real, fake = np.asarray(real), np.asarray(fake)
    if real.ndim != 2 or fake.ndim != 2 or real.shape[1] != fake.shape[1]:
        raise InvalidInput(f"need 2-D feature arrays of equal width, got {real.shape} and {fake.shape}")
    real_radii, fake_radii = knn_radii(real, k), knn_radii(fake, k)
    precision = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")  # the rounding bound holds for full float32 products only
    try:
        return _memberships(real, fake, real_radii, fake_radii, k)
    finally:
        torch.set_float32_matmul_precision(precision)


def _memberships(
    real: np.ndarray, fake: np.ndarray, real_radii: np.ndarray, fake_radii: np.ndarray, k: int
) -> BallMemberships:
    offset = real.mean(0, dtype=np.float64)
    real_t = _centred(real, offset)
    real_sq = torch.linalg.vector_norm(real_t, dim=1, dtype=torch.float64) ** 2
    real_norm_max = float(real_sq.max().sqrt())
    fake_in_real = np.zeros(len(fake), bool)
    fake_counts = np.zeros(len(fake), np.int64)
    real_in_fake = np.zeros(len(real), bool)
    real_covered = np.zeros(len(real), bool)
    for f0 in range(0, len(fake), TILE_ROWS):
        f_t = _centred(fake[f0 : f0 + TILE_ROWS], offset)
        f_sq = torch.linalg.vector_norm(f_t, dim=1, dtype=torch.float64) ** 2
        margin = _rounding_bound(f_sq.sqrt(), real_norm_max, real.shape[1])
        for r0 in range(0, len(real), TILE_ROWS):
            r_t, r_sq = real_t[r0 : r0 + TILE_ROWS], real_sq[r0 : r0 + TILE_ROWS]
            approx = torch.addmm(r_sq.float()[None, :] + f_sq.float()[:, None], f_t, r_t.T, alpha=-2.0)
            tile = _Tile(approx, margin, fake, real, f0, r0)
            in_real = tile.inside(torch.from_numpy(real_radii[r0 : r0 + len(r_t)])[None, :])
            in_fake = tile.inside(torch.from_numpy(fake_radii[f0 : f0 + len(f_t)])[:, None])
            fake_in_real[f0 : f0 + len(f_t)] |= in_real.any(1).numpy()
            fake_counts[f0 : f0 + len(f_t)] += in_real.sum(1).numpy()
            real_covered[r0 : r0 + len(r_t)] |= in_real.any(0).numpy()
            real_in_fake[r0 : r0 + len(r_t)] |= in_fake.any(0).numpy()
    return BallMemberships(fake_in_real, fake_counts, real_in_fake, real_covered, k)


@dataclass(frozen=True)
class _Tile:
    """Approximate squared distances of generated rows f0.. to real rows r0.., with a per-generated-row margin."""

    approx: torch.Tensor
    margin: torch.Tensor
    fake: np.ndarray
    real: np.ndarray
    f0: int
    r0: int

    def inside(self, radii: torch.Tensor) -> torch.Tensor:
        """distance <= radius for every pair of the tile (radii broadcast over it).

        Pairs whose approximate value is within the margin of the squared radius are decided from the exact float64
        distance, computed as diffaudit.retrieval.knn computes the radii.
        """
        threshold = radii.square()
        gap = self.approx.double() - threshold
        inside = gap <= 0
        unsure = (gap.abs() <= self.margin[:, None]).nonzero().numpy()
        if len(unsure):
            a, b = unsure[:, 0], unsure[:, 1]
            diff = self.fake[self.f0 + a].astype(np.float64) - self.real[self.r0 + b].astype(np.float64)
            exact = np.sqrt((diff**2).sum(1))
            inside[a, b] = torch.from_numpy(exact <= radii.expand(gap.shape)[a, b].numpy())
        return inside


def _centred(rows: np.ndarray, offset: np.ndarray) -> torch.Tensor:
    """float32 rows minus the float64 offset, shifted in float64 one tile at a time (one rounding per value)."""
    return torch.cat(
        [
            torch.from_numpy((rows[s : s + TILE_ROWS].astype(np.float64) - offset).astype(np.float32))
            for s in range(0, len(rows), TILE_ROWS)
        ]
    )


def _rounding_bound(f_norm: torch.Tensor, r_norm_max: float, dim: int) -> torch.Tensor:
    """Bound on |float32 - exact| squared distance per generated row: 2 gamma_d |f| max|r| + 8u (|f| + max|r|)^2.

    Terms: the float32 dot product (gamma_d |f||r|, doubled), rounding the centred inputs to float32 and the squared
    norms, and the two additions (each within u (|f| + |r|)^2); 8u covers them with room to spare.
    """
    u = UNIT_ROUNDOFF_FP32
    gamma = dim * u / (1 - dim * u)
    return 2 * gamma * f_norm * r_norm_max + 8 * u * (f_norm + r_norm_max) ** 2
