"""Guiding losses of Sehwag et al. (Eqs. 4 and 6) and the gradient normalisation of App. A.4.

Both losses are computed from hardness scores H(x, c) of every class c (shape (N, C), see
`ClassGaussians.hardness_all_classes`) and are maximised by the sampler.
"""

from __future__ import annotations

from typing import Literal

import torch

from diffaudit.models.guidance import REAL

GradientNorm = Literal["linf", "l2"]


def hardness_guidance_loss(hardness: torch.Tensor, labels: torch.Tensor | None, tau: float = 1.0) -> torch.Tensor:
    """L_g1 per sample, shape (N,): log-softmax over classes of H/tau, taken at the sample's class.

    Sehwag et al. Eq. 4 (the denominator's x_j is a typo for x_i: all classes of the same sample).
    labels=None is the unlabelled case, a single Gaussian: a softmax over one class is constant, so the loss
    is the hardness itself, H(x)/tau (its numerator's logarithm).
    """
    if labels is None:
        if hardness.shape[1] != 1:
            raise ValueError(f"unlabelled hardness must have one class, got {hardness.shape[1]}")
        return hardness[:, 0] / tau
    # Sehwag et al. Eq. 4: L_g1(x, y) = log [exp(H(x, y)/tau) / sum_j exp(H(x, j)/tau)]
    return torch.log_softmax(hardness / tau, dim=1).gather(1, labels.long().view(-1, 1))[:, 0]


def discriminator_guidance_loss(hardness: torch.Tensor, tau: float = 1.0) -> torch.Tensor:
    """L_g2 per sample, shape (N,), from the discriminator's hardness H'(x, c), c in (synthetic, real).

    Sehwag et al. Eq. 6: L_g2(x) = -log [exp(H'(x, 1)/tau) / sum_j exp(H'(x, j)/tau)], class 1 = real.
    Maximising it lowers the hardness under the real class relative to the synthetic one.
    """
    if hardness.shape[1] != 2:
        raise ValueError(f"the discriminator's hardness must have 2 classes (synthetic, real), got {hardness.shape[1]}")
    return -torch.log_softmax(hardness / tau, dim=1)[:, REAL]


def normalize_gradient(gradient: torch.Tensor, norm: GradientNorm, eps: float = 1e-12) -> torch.Tensor:
    """Each sample's gradient divided by its l2 (Sehwag et al. Algorithm 1, u / ||u||) or l-infinity (App. A.4) norm.

    A sample whose gradient is exactly zero keeps a zero gradient.
    """
    flat = gradient.flatten(1)
    if norm == "linf":
        size = flat.abs().amax(dim=1)
    elif norm == "l2":
        size = flat.norm(dim=1)
    else:
        raise ValueError(f"norm must be 'linf' or 'l2', got {norm!r}")
    return gradient / size.clamp_min(eps).view(-1, *([1] * (gradient.dim() - 1)))
