"""The one hash of a dataset split that cache keys depend on."""

from __future__ import annotations

import hashlib

import numpy as np


def split_hash(indices: np.ndarray) -> str:
    """sha256 (hex) of the split's item indices as int64: caches trained or fitted on a split are keyed by it."""
    return hashlib.sha256(np.ascontiguousarray(indices, dtype=np.int64).tobytes()).hexdigest()
