"""Frechet distance between Gaussian fits of two feature sets (FID on Inception pool features), and per class.

Heusel et al., "GANs Trained by a Two Time-Scale Update Rule Converge to a Local Nash Equilibrium",
arXiv 1706.08500, Eq. 6: d^2 = |mu_1 - mu_2|^2 + tr(S_1 + S_2 - 2 (S_1 S_2)^(1/2)).

The trace term tr (S_1 S_2)^(1/2) is the sum of the square roots of the eigenvalues of S_1 S_2, which are those of
the symmetric positive semi-definite S_1^(1/2) S_2 S_1^(1/2). Computed through two symmetric eigendecompositions
(S_1 for its PSD square root, then that product) it is real by construction and needs no non-symmetric matrix square
root (scipy.linalg.sqrtm, whose results change across SciPy versions and turn complex on singular covariances).
Eigenvalues below the numerical rank tolerance are set to zero in both, so a covariance of fewer samples than
dimensions (singular by construction) contributes no rounding noise: the square root of a rounding error of
eps * |S| would add sqrt(eps * |S|) per null direction. Moments are accumulated in float64 over row blocks, so memory
stays at a few d x d matrices beside the inputs.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from diffaudit.errors import InvalidInput

MOMENT_BLOCK_ROWS = 4096


@dataclass(frozen=True)
class Moments:
    """Sample mean (d,) and unbiased covariance (d, d), float64, of `count` feature rows (weighted rows: sum of
    weights)."""

    mean: np.ndarray
    covariance: np.ndarray
    count: int


def feature_moments(features: np.ndarray, weights: np.ndarray | None = None) -> Moments:
    """Mean and covariance (divisor count - 1) of the rows, each row counted `weights[i]` times (default once).

    Accumulated in float64 over blocks of MOMENT_BLOCK_ROWS rows, centred on the mean first (two passes).
    """
    x = checked_features(features, "features")
    w = np.ones(len(x)) if weights is None else np.asarray(weights, dtype=np.float64)
    count = float(w.sum())
    if count < 2:
        raise InvalidInput(f"a covariance needs at least 2 rows, got {count:g}")
    total = torch.zeros(x.shape[1], dtype=torch.float64)
    for rows, row_weights in _blocks(x, w):
        total += row_weights @ rows
    mean = total / count
    scatter = torch.zeros((x.shape[1], x.shape[1]), dtype=torch.float64)
    for rows, row_weights in _blocks(x, w):
        centred = rows - mean
        scatter.addmm_(centred.T, centred * row_weights[:, None])
    covariance = (scatter + scatter.T) / (2 * (count - 1))
    return Moments(mean.numpy(), covariance.numpy(), round(count))


def frechet_distance(first: Moments, second: Moments) -> float:
    """d^2 = |mu_1 - mu_2|^2 + tr S_1 + tr S_2 - 2 tr (S_1 S_2)^(1/2) (Heusel et al., arXiv 1706.08500, Eq. 6)."""
    if first.mean.shape != second.mean.shape:
        raise InvalidInput(f"feature dimensions differ: {first.mean.shape[0]} and {second.mean.shape[0]}")
    diff = first.mean - second.mean
    s1, s2 = np.asarray(first.covariance, np.float64), np.asarray(second.covariance, np.float64)
    value = float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * trace_sqrt_product(s1, s2))
    return max(value, 0.0)  # a true distance is >= 0; rounding can leave -1e-12 on identical moments


def trace_sqrt_product(s1: np.ndarray, s2: np.ndarray) -> float:
    """tr (S_1 S_2)^(1/2) for PSD S_1, S_2: the sum of the square roots of the eigenvalues of S_1^(1/2) S_2 S_1^(1/2)"""
    root1 = psd_sqrt(torch.from_numpy(s1))
    values = _significant_eigenvalues(root1 @ torch.from_numpy(s2) @ root1)
    return float(values.sqrt().sum())


def psd_sqrt(matrix: torch.Tensor) -> torch.Tensor:
    """The symmetric PSD square root of a symmetric matrix, eigenvalues below the rank tolerance set to zero."""
    values, vectors = torch.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * _above_tolerance(values).sqrt()) @ vectors.T


def _significant_eigenvalues(matrix: torch.Tensor) -> torch.Tensor:
    """Eigenvalues of a symmetric PSD matrix, those below the rank tolerance set to zero."""
    return _above_tolerance(torch.linalg.eigvalsh((matrix + matrix.T) / 2))


def _above_tolerance(values: torch.Tensor) -> torch.Tensor:
    """Eigenvalues above d * eps * max |eigenvalue| (numpy.linalg.matrix_rank's tolerance), the others zero: the null
    space of a singular covariance stays exactly null and negative rounding never reaches a square root."""
    tolerance = values.abs().max() * len(values) * torch.finfo(values.dtype).eps
    return torch.where(values > tolerance, values, torch.zeros_like(values))


def fid(real: np.ndarray, fake: np.ndarray) -> float:
    """Frechet distance between the Gaussian fits of two feature sets (FID on Inception-v3 pool features)."""
    return frechet_distance(feature_moments(real), feature_moments(fake))


def per_class_fid(
    real: np.ndarray, real_labels: np.ndarray, fake: np.ndarray, fake_labels: np.ndarray
) -> dict[int, float]:
    """FID of each class that has at least 2 real and 2 generated rows, keyed by label."""
    real_labels, fake_labels = np.asarray(real_labels), np.asarray(fake_labels)
    if real_labels.shape != (len(real),) or fake_labels.shape != (len(fake),):
        raise InvalidInput("need one label per row of real and of fake")
    classes = np.intersect1d(real_labels, fake_labels)
    return {
        int(c): fid(real[real_labels == c], fake[fake_labels == c])
        for c in classes
        if (real_labels == c).sum() >= 2 and (fake_labels == c).sum() >= 2
    }


def checked_features(features: np.ndarray, name: str) -> np.ndarray:
    """`features` as a 2-D finite float array, or InvalidInput naming `name`."""
    x = np.asarray(features)
    if x.ndim != 2 or not np.issubdtype(x.dtype, np.floating):
        raise InvalidInput(f"{name} must be a 2-D float array (rows, dim), got {x.dtype} {x.shape}")
    if not np.all(np.isfinite(x)):
        raise InvalidInput(f"{name} contain non-finite values; recompute them")
    return x


def _blocks(x: np.ndarray, w: np.ndarray) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Float64 tensors of consecutive row blocks of x and of their weights."""
    for start in range(0, len(x), MOMENT_BLOCK_ROWS):
        stop = start + MOMENT_BLOCK_ROWS
        yield torch.from_numpy(x[start:stop].astype(np.float64)), torch.from_numpy(w[start:stop])
