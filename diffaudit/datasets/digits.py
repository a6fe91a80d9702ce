"""The built-in `digits` dataset: scikit-learn's bundled 8x8 digits, upsampled to 16x16."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits

DIGITS_SIZE = 16


def load_digits16() -> tuple[np.ndarray, np.ndarray]:
    """All 1,797 digits as uint8 images (N, 16, 16, 1) and their labels (N,) int64.

    The 8x8 originals hold values 0..16; they are scaled to 0..255 and upsampled
    bilinearly (align_corners=False), which is deterministic on every platform.
    """
    bunch = load_digits()
    small = torch.from_numpy(bunch.images.astype(np.float32) / 16.0)[:, None]  # (N, 1, 8, 8)
    large = F.interpolate(small, size=(DIGITS_SIZE, DIGITS_SIZE), mode="bilinear", align_corners=False)
    images = (large.clamp(0, 1) * 255.0).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return np.ascontiguousarray(images), bunch.target.astype(np.int64)
