"""EvaluationSpec: prerequisites from each stage's sub-spec, and what is refused before a job exists."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from diffaudit.spec import MAX_SEED, EvaluationSpec

SEEDS = [
    {"sample": {"seed": "S"}},
    {"features": {"seed": "S"}},
    {"memorization": {"seed": "S"}},
    {"guided": {"seed": "S"}},
    {"guided": {"extractor_seed": "S"}},
    {"irs": {"seed": "S"}},
    {"balance": {"seed": "S"}},
]


def with_seed(template: dict[str, Any], seed: int) -> dict[str, Any]:
    return {stage: {field: seed for field in fields} for stage, fields in template.items()}


@pytest.mark.parametrize("space", ["features", "both"])
def test_memorization_in_feature_space_adds_the_features_stage(space: str) -> None:
    """Issue 11: space features gave stages (sample, memorization) and the job failed after sampling."""
    spec = EvaluationSpec(stages=["memorization"], memorization={"space": space})
    assert spec.stages == ("sample", "features", "memorization")
    assert EvaluationSpec(stages=["memorization"]).stages == ("sample", "memorization")


def test_prerequisites_are_closed_in_running_order() -> None:
    assert EvaluationSpec(stages=["augmentation"]).stages == ("sample", "features", "novelty", "augmentation")
    assert EvaluationSpec(stages=["balance", "irs"]).stages == ("sample", "features", "irs", "balance")
    assert EvaluationSpec().stages == ("sample", "features")


@pytest.mark.parametrize("stages", [[{}], [["sample"]], [None], [3], "sample", [], ["unknown"]])
def test_stage_lists_that_are_not_known_names_are_validation_errors(stages: Any) -> None:
    """Issue 12, item 6: [{}] and [["sample"]] raised TypeError (a 500 at the API)."""
    with pytest.raises(ValidationError, match="stage"):
        EvaluationSpec.model_validate({"stages": stages})


@pytest.mark.parametrize("template", SEEDS)
def test_every_seed_is_bounded_so_that_seed_plus_i_stays_valid(template: dict[str, Any]) -> None:
    """Issue 12, item 5: seed 2^64 was accepted and the job failed in torch."""
    for bad in (2**64, MAX_SEED + 1, -1):
        with pytest.raises(ValidationError):
            EvaluationSpec.model_validate(with_seed(template, bad))
    EvaluationSpec.model_validate(with_seed(template, MAX_SEED))


def test_the_largest_seed_plus_a_whole_job_is_a_valid_seed_everywhere() -> None:
    largest = MAX_SEED + 2 * 1_000_000 + 10_000_000  # + n samples + extra samples + every training image
    torch.Generator().manual_seed(largest)
    np.random.default_rng(largest)
    np.random.RandomState(largest)  # scikit-learn's random_state: below 2^32


def test_novelty_refuses_fewer_samples_than_its_estimators_need() -> None:
    """Issue 12, item 4: {"stages": ["novelty"], "sample": {"n": 1}} crashed in the stage."""
    with pytest.raises(ValidationError, match="at least 8 samples"):
        EvaluationSpec(stages=["novelty"], sample={"n": 7})
    with pytest.raises(ValidationError, match="at least 4 samples"):
        EvaluationSpec(stages=["augmentation"], sample={"n": 3}, novelty={"entropy_k": 1})
    assert EvaluationSpec(stages=["novelty"], sample={"n": 8}).sample.n == 8
    assert EvaluationSpec(stages=["irs"], sample={"n": 1}).sample.n == 1  # other stages take any n
