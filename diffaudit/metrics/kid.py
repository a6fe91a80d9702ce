"""Kernel Inception Distance: the unbiased squared MMD with a cubic polynomial kernel, averaged over subsets.

Binkowski et al., "Demystifying MMD GANs", arXiv 1801.01401: kernel k(x, y) = (x.y / d + 1)^3 (Sec. 4, KID), the
unbiased MMD^2 estimate of Sec. 2 over random subsets. Subsets are drawn as torch-fidelity draws them (numpy
RandomState(seed); per subset, `subset_size` generated rows then `subset_size` reference rows, each without
replacement), and the estimator is torch-fidelity's "unbiased" one (the within-set sums drop their diagonals, the
cross sum keeps it), so equal seeds give torch-fidelity's subsets and values. The inner products x.y are computed in
the features' precision (float32 features: float32 products, as torch-fidelity; float64 features: float64) and the
kernel and its sums in float64, one subset at a time: memory is three subset_size x subset_size matrices, whatever
the number of rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from diffaudit.errors import InvalidInput

KID_DEGREE = 3
KID_COEF0 = 1.0


@dataclass(frozen=True)
class KidResult:
    """Mean and (population) standard deviation of the per-subset MMD^2 estimates, and the estimates."""

    mean: float
    std: float
    subset_values: np.ndarray


def kernel_inception_distance(
    real: np.ndarray, fake: np.ndarray, *, subsets: int = 100, subset_size: int = 1000, seed: int = 0
) -> KidResult:
    """KID of generated `fake` against `real` features over `subsets` random subsets of `subset_size` rows each."""
    if real.ndim != 2 or fake.ndim != 2 or real.shape[1] != fake.shape[1]:
        raise InvalidInput(f"need 2-D feature arrays of equal width, got {real.shape} and {fake.shape}")
    if subsets < 1 or subset_size < 2:
        raise InvalidInput(f"need subsets >= 1 and subset_size >= 2, got {subsets} and {subset_size}")
    if min(len(real), len(fake)) < subset_size:
        raise InvalidInput(
            f"KID subset size {subset_size} exceeds the number of rows (real {len(real)}, generated {len(fake)}); "
            f"lower the subset size"
        )
    rng = np.random.RandomState(seed)
    values = np.empty(subsets)
    for i in range(subsets):
        x = fake[rng.choice(len(fake), subset_size, replace=False)]
        y = real[rng.choice(len(real), subset_size, replace=False)]
        values[i] = unbiased_mmd2(_as_tensor(x), _as_tensor(y))
    return KidResult(float(values.mean()), float(values.std()), values)


def polynomial_kernel(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """k(x, y) = (x.y / d + 1)^3 for every row pair (Binkowski et al., arXiv 1801.01401, Sec. 4)."""
    inner = (x @ y.T).double().mul_(1 / x.shape[1]).add_(KID_COEF0)
    return inner.pow_(KID_DEGREE)


def unbiased_mmd2(x: torch.Tensor, y: torch.Tensor) -> float:
    """MMD^2 of equal-size samples: within-set kernel means without the diagonal, minus twice the cross mean
    (Binkowski et al., arXiv 1801.01401, Sec. 2; the cross term over all m^2 pairs, as torch-fidelity)."""
    m = x.shape[0]
    k_xx, k_yy, k_xy = polynomial_kernel(x, x), polynomial_kernel(y, y), polynomial_kernel(x, y)
    within = (k_xx.sum() - k_xx.diagonal().sum() + k_yy.sum() - k_yy.diagonal().sum()) / (m * (m - 1))
    return float(within - 2 * k_xy.sum() / (m * m))


def _as_tensor(rows: np.ndarray) -> torch.Tensor:
    """float32 rows as they are, any other float rows as float64."""
    dtype = np.float32 if rows.dtype == np.float32 else np.float64
    return torch.from_numpy(np.ascontiguousarray(rows, dtype=dtype))
