"""Hardness of noisy samples during sampling: class Gaussians of a guidance network's embeddings at each timestep.

Sehwag et al. App. A.1: "To calculate the hardness score, we first extract training data features at each
timestep." The embedding of x_t depends on t, so the Gaussians of Eq. 3 are fitted separately for every
timestep the sampler visits, on training images noised to that timestep with the checkpoint's schedule.
Near t = T the features have very small variance, which makes the hardness and its gradient unstable; the
paper therefore uses an identity precision matrix while sampling (`precision="identity"`, the default):
H(x, y) = 1/2 [||f(x_t) - mu_y(t)||^2 + k ln 2 pi]. `precision="full"` keeps the shrunk covariances of
`ClassGaussians.fit` instead.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

import numpy as np
import torch

from diffaudit.metrics.density import ClassGaussians
from diffaudit.models.guidance import TimeConditionedCNN, add_noise

Precision = Literal["identity", "full"]
ProgressFn = Callable[[int, int], None]


@torch.no_grad()
def embed_noisy(
    network: TimeConditionedCNN,
    images: torch.Tensor,
    timestep: int,
    alphas_cumprod: torch.Tensor,
    *,
    generator: torch.Generator,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Embeddings f(x_t, t) of `images` noised to `timestep` (noise from `generator`), float64 on the CPU."""
    out = []
    for start in range(0, len(images), batch_size):
        x0 = images[start : start + batch_size]
        noise = torch.randn(x0.shape, generator=generator)
        t = torch.full((len(x0),), timestep, dtype=torch.int64)
        x_t = add_noise(x0, t, alphas_cumprod, noise).float().to(device)
        out.append(network.embed(x_t, t.to(device)).double().cpu())
    return torch.cat(out)


def balanced_subset(labels: np.ndarray, max_per_class: int, seed: int) -> np.ndarray:
    """Indices of at most `max_per_class` rows of each class, drawn without replacement, sorted."""
    rng = np.random.default_rng(seed)
    chosen = [rng.permutation(np.flatnonzero(labels == c))[:max_per_class] for c in range(int(labels.max()) + 1)]
    return np.sort(np.concatenate(chosen))


def fit_timestep_gaussians(
    network: TimeConditionedCNN,
    images: torch.Tensor,
    labels: torch.Tensor | None,
    timesteps: Sequence[int],
    alphas_cumprod: torch.Tensor,
    *,
    precision: Precision = "identity",
    max_per_class: int = 256,
    seed: int = 0,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
    progress: ProgressFn | None = None,
) -> dict[int, ClassGaussians]:
    """Class Gaussians of the network's embeddings of training images noised to each timestep (App. A.1).

    labels=None: one Gaussian over all images (the unlabelled hardness). At most `max_per_class` images per
    class are used (the class means converge long before the full dataset).
    """
    y = np.zeros(len(images), dtype=np.int64) if labels is None else np.asarray(labels, dtype=np.int64)
    subset = balanced_subset(y, max_per_class, seed)
    images, y = images[torch.from_numpy(subset)], y[subset]
    generator = torch.Generator().manual_seed(seed)
    gaussians = {}
    for i, t in enumerate(timesteps):
        features = embed_noisy(
            network, images, int(t), alphas_cumprod, generator=generator, batch_size=batch_size, device=device
        )
        gaussians[int(t)] = gaussians_of(features, y, precision)
        if progress is not None:
            progress(i + 1, len(timesteps))
    return gaussians


def gaussians_of(features: torch.Tensor, labels: np.ndarray, precision: Precision) -> ClassGaussians:
    """Class Gaussians with shrunk covariances, or with identity precision around the class means."""
    if precision == "full":
        return ClassGaussians.fit(features, labels)
    if precision != "identity":
        raise ValueError(f"precision must be 'identity' or 'full', got {precision!r}")
    y = torch.from_numpy(labels)
    means = torch.stack([features[y == c].mean(dim=0) for c in range(int(y.max()) + 1)])
    return ClassGaussians.identity(means)
