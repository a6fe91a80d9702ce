"""What a stage reads from another: a missing artifact or result is a defect, never the user's mistake."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from diffaudit.datasets import Dataset, write_builtin_dataset
from diffaudit.errors import InvalidInput
from diffaudit.spec import EvaluationSpec
from diffaudit.stages import artifacts
from diffaudit.stages.base import StageContext
from diffaudit.stages.memorization import MemorizationStage
from diffaudit.store import ArtifactNotFound, LocalStore, ScopedStore, save_array


@pytest.fixture
def ctx(tmp_path: Path) -> StageContext:
    store = LocalStore(tmp_path)
    write_builtin_dataset("digits", store, "datasets/digits")
    return StageContext(
        spec=EvaluationSpec(stages=["memorization"], memorization={"n_neighbours": 5000}),
        checkpoint_dir=tmp_path / "no-checkpoint",
        dataset=Dataset.open(store, "datasets/digits"),
        job=ScopedStore(store, "evaluations/a"),
        cache=ScopedStore(store, "cache"),
        device=torch.device("cpu"),
        results={},
    )


def test_a_missing_artifact_or_stage_result_is_a_defect_not_invalid_input(ctx: StageContext) -> None:
    with pytest.raises(ArtifactNotFound) as missing:
        artifacts.samples(ctx)
    assert not isinstance(missing.value, InvalidInput)
    with pytest.raises(artifacts.MissingStageResult) as no_result:
        artifacts.dataset_features(ctx)
    assert not isinstance(no_result.value, InvalidInput)
    assert artifacts.sample_labels(ctx) is None and artifacts.samples_before_rejection(ctx) is None


def test_a_spec_the_data_cannot_satisfy_is_invalid_input(ctx: StageContext) -> None:
    save_array(ctx.job, artifacts.SAMPLES_KEY, np.zeros((4, 16, 16, 1), dtype=np.uint8))
    with pytest.raises(InvalidInput, match="n_neighbours"):
        MemorizationStage().run(ctx)


def test_typed_summaries_read_the_features_stage(ctx: StageContext) -> None:
    ctx.results["features"] = {"training_features_key": None, "extractor": "pixels", "cache_key": "pixels"}
    assert artifacts.features_summary(ctx).training_features_key is None
    assert artifacts.dataset_features_name(ctx) == "dataset-features"
    ctx.results["features"] = {"training_features_key": "features/h/k.npy", "extractor": "pixels", "cache_key": "k"}
    assert artifacts.dataset_features_name(ctx) == "k"
