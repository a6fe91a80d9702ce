"""Inception Score from classifier logits (or probabilities), over splits as torch-fidelity computes it.

Salimans et al., "Improved Techniques for Training GANs", arXiv 1606.03498, Sec. 4:
IS = exp(E_x KL(p(y|x) || p(y))), p(y) the mean of p(y|x) over the split. Rows are shuffled with numpy
RandomState(seed).permutation (torch-fidelity's default seed is 2020) and cut into `splits` consecutive splits;
mean and population standard deviation over the splits, in float64.
"""

from __future__ import annotations

import numpy as np
import torch

from diffaudit.errors import InvalidInput

IS_SPLITS = 10
IS_SEED = 2020


def inception_score(
    logits: np.ndarray | None = None,
    *,
    probabilities: np.ndarray | None = None,
    splits: int = IS_SPLITS,
    seed: int | None = IS_SEED,
) -> tuple[float, float]:
    """(mean, std) of the Inception Score over splits; give the logits or the class probabilities (rows sum to 1)."""
    if (logits is None) == (probabilities is None):
        raise InvalidInput("give exactly one of logits and probabilities")
    if probabilities is not None:
        log_p = torch.from_numpy(np.log(np.asarray(probabilities, dtype=np.float64)))
    else:
        log_p = torch.from_numpy(np.asarray(logits, dtype=np.float64)).log_softmax(dim=1)
    n = log_p.shape[0]
    if log_p.ndim != 2 or not 1 <= splits <= n:
        raise InvalidInput(f"need a 2-D (rows, classes) array with at least {splits} rows, got {tuple(log_p.shape)}")
    if seed is not None:
        log_p = log_p[torch.from_numpy(np.random.RandomState(seed).permutation(n))]
    scores = []
    for i in range(splits):
        chunk = log_p[i * n // splits : (i + 1) * n // splits]
        p = chunk.exp()
        marginal = p.mean(dim=0, keepdim=True)
        # Salimans et al., arXiv 1606.03498, Sec. 4: exp of the mean KL(p(y|x) || p(y))
        kl = torch.special.xlogy(p, p) - torch.special.xlogy(p, marginal)
        scores.append(float(kl.sum(dim=1).mean().exp()))
    return float(np.mean(scores)), float(np.std(scores))
