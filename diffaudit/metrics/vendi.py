"""Vendi score with the cosine kernel, from the d x d second moment of the normalised features (no N x N kernel).

Friedman and Dieng, "The Vendi Score: A Diversity Evaluation Metric for Machine Learning", arXiv 2210.02410, Sec. 3
(definition of the Vendi score):
VS = exp(-sum_i lambda_i log lambda_i), lambda_i the eigenvalues of K / n, K_ij = k(x_i, x_j). With the cosine kernel
K = X X^T for the row-normalised features X (n x d), and K / n has the same non-zero eigenvalues as X^T X / n
(d x d), which is accumulated in float64 over row blocks; 0 log 0 = 0.
"""

from __future__ import annotations

import numpy as np
import torch

from diffaudit.errors import InvalidInput

VENDI_BLOCK_ROWS = 4096


def vendi_score(features: np.ndarray, weights: np.ndarray | None = None) -> float:
    """Vendi score (cosine kernel) of the rows, each counted `weights[i]` times (default once)."""
    x = np.asarray(features)
    if x.ndim != 2 or len(x) == 0:
        raise InvalidInput(f"need a non-empty 2-D feature array, got shape {x.shape}")
    w = np.ones(len(x)) if weights is None else np.asarray(weights, dtype=np.float64)
    second_moment = torch.zeros((x.shape[1], x.shape[1]), dtype=torch.float64)
    for start in range(0, len(x), VENDI_BLOCK_ROWS):
        rows = torch.from_numpy(x[start : start + VENDI_BLOCK_ROWS].astype(np.float64))
        norms = torch.linalg.vector_norm(rows, dim=1, keepdim=True)
        if bool((norms == 0).any()):
            raise InvalidInput("features contain all-zero rows, for which the cosine kernel is undefined")
        unit = rows / norms
        second_moment.addmm_(unit.T, unit * torch.from_numpy(w[start : start + VENDI_BLOCK_ROWS])[:, None])
    eigenvalues = torch.linalg.eigvalsh(second_moment / w.sum()).clamp_min(0)
    return float(torch.exp(-torch.special.xlogy(eigenvalues, eigenvalues).sum()))
