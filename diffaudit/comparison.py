"""A/B comparison of two finished jobs of one spec, from their stored per-sample artifacts.

Which quantities are paired and where they come from (the statistics are diffaudit.metrics.comparison's):
- irs_inf: each sample's nearest training image (irs/nearest_training.npy), IRS_inf of the resampled samples;
- copy_rate_<space>: the extraction test's flags (score below the spec's threshold) of each sample;
- nn_distance_<space>: each sample's distance to its nearest training image (farther is better: less copying);
- volume_growth_mean: the volume-growth score of each training image scored by both, paired by image;
- ds_rate: whether each sample is a diverse sample (novelty/ds.npy).
A quantity appears when both jobs stored it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from diffaudit.metrics.comparison import (
    DEFAULT_ERROR_RATE,
    DEFAULT_REPLICATES,
    PairedDifference,
    paired_bootstrap,
    paired_by_key,
    paired_irs,
)
from diffaudit.spec import EvaluationSpec
from diffaudit.stages.artifacts import DS_KEY
from diffaudit.stages.irs import NEAREST_KEY
from diffaudit.stages.memorization import GROWTH_PREFIX, PREFIX
from diffaudit.store import ArtifactStore, load_array


def spec_differences(baseline: Any, candidate: Any, path: str = "") -> list[dict[str, Any]]:
    """Every field (dotted path) whose value differs between two JSON documents, with both values."""
    if isinstance(baseline, Mapping) and isinstance(candidate, Mapping):
        differences = []
        for key in sorted(set(baseline) | set(candidate)):
            field = f"{path}.{key}" if path else str(key)
            differences += spec_differences(baseline.get(key), candidate.get(key), field)
        return differences
    return [] if baseline == candidate else [{"field": path, "baseline": baseline, "candidate": candidate}]


def _both(baseline: ArtifactStore, candidate: ArtifactStore, key: str) -> tuple[np.ndarray, np.ndarray] | None:
    if not (baseline.exists(key) and candidate.exists(key)):
        return None
    return load_array(baseline, key, mmap=False), load_array(candidate, key, mmap=False)


def compare_jobs(
    spec: EvaluationSpec,
    baseline: ArtifactStore,
    candidate: ArtifactStore,
    baseline_results: Mapping[str, Any],
    *,
    error_rate: float = DEFAULT_ERROR_RATE,
    replicates: int = DEFAULT_REPLICATES,
    seed: int = 0,
) -> list[PairedDifference]:
    """Every paired quantity both jobs (of `spec`, artifacts in `baseline` and `candidate`) stored, compared."""
    found: list[PairedDifference] = []

    def add(metric: str, pair: tuple[np.ndarray, np.ndarray], higher_is_better: bool) -> None:
        found.append(
            paired_bootstrap(
                metric,
                *pair,
                higher_is_better=higher_is_better,
                error_rate=error_rate,
                replicates=replicates,
                seed=seed,
            )
        )

    stages = baseline_results.get("stages") or {}
    nearest = _both(baseline, candidate, NEAREST_KEY)
    if nearest is not None and "irs" in stages:
        n_train = int(stages["irs"]["synthetic"]["n_train"])
        found.append(paired_irs(*nearest, n_train, error_rate=error_rate, replicates=replicates, seed=seed))
    for space in sorted((stages.get("memorization") or {}).get("spaces") or {}):
        scores = _both(baseline, candidate, f"{PREFIX}/{space}/extraction_score.npy")
        if scores is not None:
            threshold = spec.memorization.threshold
            add(f"copy_rate_{space}", (scores[0] < threshold, scores[1] < threshold), False)
        distances = _both(baseline, candidate, f"{PREFIX}/{space}/nn_generated.npy")
        if distances is not None:
            add(f"nn_distance_{space}", distances, True)
    indices = _both(baseline, candidate, f"{GROWTH_PREFIX}/indices.npy")
    growth = _both(baseline, candidate, f"{GROWTH_PREFIX}/scores.npy")
    if indices is not None and growth is not None:
        add("volume_growth_mean", paired_by_key(indices[0], growth[0], indices[1], growth[1]), False)
    ds = _both(baseline, candidate, DS_KEY)
    if ds is not None:
        add("ds_rate", ds, True)
    return found
