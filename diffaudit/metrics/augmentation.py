"""Generated samples as training data: Table 2 of "The deficit of new information in diffusion models" (Sec. 4).

The paper trains one classifier on (a) the original images (OI), (b) the original images with the
minority class topped up by vanilla-generated samples (VGS) until it has as many images as the
majority class, and (c) the same with the VGS replaced by the same number of diverse samples
(DS), and reports per-class and overall accuracy on the test split. This module is the pure
part: the evaluation, and the bookkeeping of which images go into each training set. The small
classifier and its training are diffaudit.models.classifier; the stage supplies the data.

Choices the paper leaves open, made here:
- the classifier is diffaudit.models.classifier's small seeded CNN, not a ResNet50 (it has to
  run in seconds on a CPU);
- "vanilla-generated samples" are generated samples the novelty stage did not flag as DS, so
  that (b) and (c) differ only in whether the added samples are diverse;
- with several classes the minority class is topped up to the largest other class.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from diffaudit.errors import InvalidInput

CONDITIONS = ("original", "generated", "diverse")  # paper Table 2: OI Acc, VGS Acc, DS Acc


# --- evaluation ---------------------------------------------------------------------------


def confusion_matrix(true: np.ndarray, predicted: np.ndarray, num_classes: int) -> np.ndarray:
    """(num_classes, num_classes) counts: row = true class, column = predicted class."""
    flat = np.asarray(true, dtype=np.int64) * num_classes + np.asarray(predicted, dtype=np.int64)
    return np.bincount(flat, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def per_class_accuracy(confusion: np.ndarray) -> np.ndarray:
    """Share of each class's test images predicted correctly (the paper's per-class Acc); NaN if absent."""
    totals = confusion.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(totals > 0, np.diag(confusion) / totals, np.nan)


def overall_accuracy(confusion: np.ndarray) -> float:
    """Share of all test images predicted correctly (the paper's OVERALL row)."""
    return float(np.trace(confusion) / confusion.sum())


def spread(values: list[float]) -> dict[str, Any]:
    """Mean, sample standard deviation (0 for one value) and the values over seeds."""
    array = np.asarray(values, dtype=np.float64)
    return {
        "mean": float(np.mean(array)),
        "std": float(np.std(array, ddof=1)) if len(array) > 1 else 0.0,
        "per_seed": [float(v) for v in array],
    }


# --- which images go into each training set -------------------------------------------------


def class_counts(labels: np.ndarray, num_classes: int) -> np.ndarray:
    return np.bincount(np.asarray(labels, dtype=np.int64), minlength=num_classes)


def keep_fraction_of_class(labels: np.ndarray, class_index: int, fraction: float, seed: int) -> np.ndarray:
    """Keep mask: all images of other classes, a seeded random round(fraction * n) (at least 1) of this class."""
    labels = np.asarray(labels)
    members = np.flatnonzero(labels == class_index)
    if len(members) == 0:
        raise InvalidInput(f"class {class_index} has no training images")
    kept = np.random.default_rng(seed).choice(members, size=max(1, round(fraction * len(members))), replace=False)
    keep = labels != class_index
    keep[kept] = True
    return keep


def find_minority(counts: np.ndarray, imbalance_ratio: float) -> int | None:
    """The smallest class if it has fewer than imbalance_ratio times the images of the largest, else None."""
    smallest = int(np.argmin(counts))
    return smallest if counts[smallest] < imbalance_ratio * counts.max() else None


def top_up_count(counts: np.ndarray, minority: int) -> int:
    """Images the minority class lacks to match the largest other class (paper Sec. 4, Table 2)."""
    others = np.delete(counts, minority)
    return max(0, int(others.max()) - int(counts[minority]))


@dataclass(frozen=True)
class Additions:
    """Indices into the generated samples added in conditions (b) and (c), one entry per class."""

    generated: np.ndarray  # ordinary (non-DS) samples: condition (b)
    diverse: np.ndarray  # DS: condition (c)
    wanted: np.ndarray  # (num_classes,) how many each class asked for
    added: np.ndarray  # (num_classes,) how many each class got, in both conditions


def choose_additions(labels: np.ndarray, outside: np.ndarray, wanted: np.ndarray, seed: int) -> Additions:
    """For each class c, min(wanted[c], #DS of c, #ordinary of c) DS and as many ordinary samples, seeded."""
    labels, outside = np.asarray(labels), np.asarray(outside, dtype=bool)
    rng = np.random.default_rng(seed)
    generated, diverse, added = [], [], np.zeros(len(wanted), dtype=np.int64)
    for c, want in enumerate(wanted):
        ds = np.flatnonzero((labels == c) & outside)
        ordinary = np.flatnonzero((labels == c) & ~outside)
        added[c] = min(int(want), len(ds), len(ordinary))
        diverse.append(rng.choice(ds, size=added[c], replace=False))
        generated.append(rng.choice(ordinary, size=added[c], replace=False))
    return Additions(
        generated=np.sort(np.concatenate(generated)).astype(np.int64),
        diverse=np.sort(np.concatenate(diverse)).astype(np.int64),
        wanted=np.asarray(wanted, dtype=np.int64),
        added=added,
    )
