"""get_or_compute: computed once per key, then read from the store."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from diffaudit.common.cache import get_or_compute
from diffaudit.common.splits import split_hash
from diffaudit.store import ArtifactStore, LocalStore


def test_computed_once_then_read_from_the_cache(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    calls: list[int] = []

    def compute() -> bytes:
        calls.append(1)
        return b"value"

    def save(cache: ArtifactStore, key: str, value: bytes) -> None:
        cache.put_bytes(key, value)

    def load(cache: ArtifactStore, key: str) -> str:
        return cache.get_bytes(key).decode()

    assert get_or_compute(store, "k/v.bin", compute, save, load) == ("value", False)
    assert get_or_compute(store, "k/v.bin", compute, save, load) == ("value", True)
    assert calls == [1]


def test_split_hash_depends_on_the_indices_not_their_dtype() -> None:
    assert split_hash(np.arange(5, dtype=np.int32)) == split_hash(np.arange(5, dtype=np.int64))
    assert split_hash(np.arange(5)) != split_hash(np.arange(1, 6))
