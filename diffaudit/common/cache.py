"""Get-or-compute in the shared, content-addressed cache: what is stored under a key is computed once.

`key` marks completeness: `save` must write it last (after any companion entries), so a reader that finds the key
finds everything. Concurrent jobs may both compute; the stores' atomic writes make the last one win, with equal
content.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from diffaudit.store import ArtifactStore

T = TypeVar("T")
Saved = TypeVar("Saved")


def get_or_compute(
    cache: ArtifactStore,
    key: str,
    compute: Callable[[], Saved],
    save: Callable[[ArtifactStore, str, Saved], None],
    load: Callable[[ArtifactStore, str], T],
) -> tuple[T, bool]:
    """(the value stored under `key`, computed and saved first if absent; whether it was already there)."""
    hit = cache.exists(key)
    if not hit:
        save(cache, key, compute())
    return load(cache, key), hit
