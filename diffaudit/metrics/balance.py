"""Class balance of generated samples against the training data (thesis the thesis, Ch. 4).

The thesis observes that diffusion models generate some classes far more often than their training share (e.g. MNIST
label 8 at 20-40% instead of 10%, Sec. 4.3). Given training labels and the labels of generated samples (from a
classifier or the model's conditioning), this compares the class shares:

- a chi-square goodness-of-fit test of the generated counts against the training shares (scipy.stats.chisquare);
- per class, ratio = generated share / training share, with Goodman's (1965) simultaneous confidence intervals for
  multinomial proportions (chi-square quantile at 1 - (1 - confidence) / C, C classes: the intervals hold jointly at
  the stated confidence) divided by the training share. The training shares are treated as the fixed reference
  distribution the model should reproduce;
- over-produced classes (ratio interval entirely above 1) and under-produced classes (entirely below 1).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.stats import chi2, chisquare

from diffaudit.errors import InvalidInput


def goodman_intervals(counts: np.ndarray, confidence: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """Goodman's simultaneous intervals for multinomial proportions: (A + 2n_i -+ sqrt(A(A + 4n_i(n-n_i)/n))) /
    (2(n + A)), A the chi-square (1 df) quantile at 1 - (1 - confidence) / C (Goodman 1965, Technometrics 7:247)."""
    counts = np.asarray(counts, dtype=np.float64)
    n = counts.sum()
    a = chi2.ppf(1 - (1 - confidence) / counts.size, 1)
    half = np.sqrt(a * (a + 4 * counts * (n - counts) / n))
    return (a + 2 * counts - half) / (2 * (n + a)), (a + 2 * counts + half) / (2 * (n + a))


def class_balance(train_labels: np.ndarray, gen_labels: np.ndarray, confidence: float = 0.95) -> dict[str, Any]:
    """Generated vs training class shares, chi-square test, per-class ratio intervals, over/under-produced classes."""
    train_labels, gen_labels = np.asarray(train_labels), np.asarray(gen_labels)
    classes, train_counts = np.unique(train_labels, return_counts=True)
    unknown = np.setdiff1d(np.unique(gen_labels), classes)
    if unknown.size:
        raise InvalidInput(f"generated labels {unknown.tolist()} do not occur in the training labels")
    if gen_labels.size == 0:
        raise ValueError("no generated labels")
    gen_counts = np.array([(gen_labels == c).sum() for c in classes])
    train_share = train_counts / train_counts.sum()
    gen_share = gen_counts / gen_counts.sum()
    expected = train_share * gen_counts.sum()
    test = chisquare(gen_counts, expected)
    lower, upper = goodman_intervals(gen_counts, confidence)
    ratio, ratio_lower, ratio_upper = gen_share / train_share, lower / train_share, upper / train_share
    status = np.where(ratio_lower > 1, "over", np.where(ratio_upper < 1, "under", "ok"))
    per_class = [
        {
            "class": classes[i].item(),
            "train_count": int(train_counts[i]),
            "train_share": float(train_share[i]),
            "generated_count": int(gen_counts[i]),
            "generated_share": float(gen_share[i]),
            "ratio": float(ratio[i]),
            "ratio_lower": float(ratio_lower[i]),
            "ratio_upper": float(ratio_upper[i]),
            "status": str(status[i]),
        }
        for i in range(classes.size)
    ]
    return {
        "n_train": int(train_counts.sum()),
        "n_generated": int(gen_counts.sum()),
        "confidence": confidence,
        "interval": "goodman-simultaneous",
        "chi_square": {
            "statistic": float(test.statistic),
            "dof": int(classes.size - 1),
            "p_value": float(test.pvalue),
            "min_expected": float(expected.min()),
            "valid": bool(expected.min() >= 5),
        },
        "per_class": per_class,
        "over_produced": [p["class"] for p in per_class if p["status"] == "over"],
        "under_produced": [p["class"] for p in per_class if p["status"] == "under"],
    }
