"""Generated samples as training data: the paper's Table 2 (000_9bfb40988b9fce7f, Sec. 4).

The paper trains one classifier on (a) the original images (OI), (b) the original images with the
minority class topped up by vanilla-generated samples (VGS) until it has as many images as the
majority class, and (c) the same with the VGS replaced by the same number of diverse samples
(DS), and reports per-class and overall accuracy on the test split. This module is the pure
part: the small classifier, its training and evaluation, and the bookkeeping of which images go
into each training set. The stage (diffaudit/stages/augmentation.py) supplies the data.

Choices the paper leaves open, made here:
- the classifier is a small seeded CNN (two conv blocks, average pooling to 4x4, one linear
  layer) trained with Adam for a fixed number of epochs, not a ResNet50: it has to run in seconds
  on a CPU for 16x16 images (about 0.5 s per epoch on the 1,438 training digits, 0.97 held-out
  accuracy after 3 epochs); images larger than CLASSIFIER_MAX_SIZE are downscaled first;
- "vanilla-generated samples" are generated samples the novelty stage did not flag as DS, so
  that (b) and (c) differ only in whether the added samples are diverse;
- with several classes the minority class is topped up to the largest other class.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

CONDITIONS = ("original", "generated", "diverse")  # paper Table 2: OI Acc, VGS Acc, DS Acc
CLASSIFIER_MAX_SIZE = 32
CLASSIFIER_WIDTH = 16
POOLED_SIZE = 4  # the second conv block's map is average-pooled to 4x4 before the linear layer

EpochFn = Callable[[int], None]  # called with the number of finished epochs; may raise to stop


# --- the classifier -----------------------------------------------------------------------


def small_cnn(in_channels: int, num_classes: int, width: int = CLASSIFIER_WIDTH) -> nn.Sequential:
    """Two 3x3 conv blocks (ReLU, 2x2 max-pool), average pooling to 4x4, one linear layer."""
    return nn.Sequential(
        nn.Conv2d(in_channels, width, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(width, 2 * width, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.AdaptiveAvgPool2d(POOLED_SIZE),
        nn.Flatten(),
        nn.Linear(2 * width * POOLED_SIZE * POOLED_SIZE, num_classes),
    )


def classifier_pixels(images: np.ndarray, batch_size: int = 1024) -> torch.Tensor:
    """uint8 NHWC images -> uint8 NCHW tensor, downscaled (bilinear, antialiased) to at most 32x32."""
    images = np.array(images, copy=True)  # a private, writable copy (inputs are often read-only memory maps)
    height, width = images.shape[1:3]
    scale = CLASSIFIER_MAX_SIZE / max(height, width)
    if scale >= 1:
        return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).contiguous()
    size = (max(1, round(height * scale)), max(1, round(width * scale)))
    out = []
    for start in range(0, len(images), batch_size):
        x = torch.from_numpy(np.array(images[start : start + batch_size])).permute(0, 3, 1, 2).float()
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
        out.append(x.round().clamp(0, 255).to(torch.uint8))
    return torch.cat(out)


def _network_input(pixels: torch.Tensor, device: torch.device) -> torch.Tensor:
    """uint8 NCHW -> float in [-1, 1] on the device."""
    return pixels.to(device).float() / 127.5 - 1.0


def train_classifier(
    pixels: torch.Tensor,
    labels: np.ndarray,
    num_classes: int,
    *,
    epochs: int,
    seed: int,
    device: torch.device,
    batch_size: int = 32,
    learning_rate: float = 3e-3,
    on_epoch: EpochFn | None = None,
) -> nn.Module:
    """Train small_cnn on (pixels, labels) with Adam; the seed fixes initialisation and batch order."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = small_cnn(pixels.shape[1], num_classes).to(device)
    order_rng = torch.Generator().manual_seed(seed)
    targets = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    optimizer = torch.optim.Adam(model.parameters(), lr=learning_rate)
    model.train()
    for epoch in range(epochs):
        order = torch.randperm(len(pixels), generator=order_rng)
        for start in range(0, len(order), batch_size):
            batch = order[start : start + batch_size]
            loss = F.cross_entropy(model(_network_input(pixels[batch], device)), targets[batch].to(device))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        if on_epoch is not None:
            on_epoch(epoch + 1)
    return model.eval()


def predict(model: nn.Module, pixels: torch.Tensor, device: torch.device, batch_size: int = 512) -> np.ndarray:
    """Predicted class of each image."""
    with torch.inference_mode():
        logits = [model(_network_input(pixels[s : s + batch_size], device)) for s in range(0, len(pixels), batch_size)]
    return torch.cat(logits).argmax(dim=1).cpu().numpy()


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
        raise ValueError(f"class {class_index} has no training images")
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
