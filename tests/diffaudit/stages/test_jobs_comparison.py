"""diffaudit.comparison.compare_jobs on two real jobs of one spec: the artifacts the stages store are the ones it
pairs (here, because the comparison reads the stages' artifacts; not a stage itself)."""

from __future__ import annotations

from pathlib import Path

import pytest
from stage_jobs import SAMPLED, Job, copy_store, run_on_digits

from diffaudit.comparison import compare_jobs, spec_differences
from diffaudit.metrics.comparison import NOT_DISTINGUISHABLE
from diffaudit.spec import EvaluationSpec
from diffaudit.store import ScopedStore

SPEC = EvaluationSpec.model_validate(
    {
        "stages": ["features", "irs", "memorization", "novelty"],
        "sample": SAMPLED,
        "irs": {"early_rejection": False},  # the overfit model would be rejected before its other stages
        "memorization": {"space": "pixels", "max_images": 12, "batch_size": 4, "n_steps": 1},
        "novelty": {"seeds": 1},
    }
)


@pytest.fixture(scope="module")
def jobs(
    sampled_digits: Path, tmp_path_factory: pytest.TempPathFactory, tiny_overfit_model: Path, tiny_demo_model: Path
) -> tuple[Job, Job]:
    """The same spec with the demo model (baseline, reusing the shared samples) and the overfit one."""
    baseline_root = tmp_path_factory.mktemp("baseline") / "store"
    copy_store(sampled_digits, baseline_root)
    baseline = run_on_digits(SPEC, tiny_demo_model, baseline_root, "irs")
    candidate = run_on_digits(SPEC, tiny_overfit_model, tmp_path_factory.mktemp("candidate"), "irs")
    return baseline, candidate


def test_two_jobs_are_compared_on_every_paired_quantity(jobs: tuple[Job, Job]) -> None:
    baseline, candidate = jobs
    found = {d.metric: d for d in compare_jobs(SPEC, baseline.job, candidate.job, baseline.results, replicates=200)}
    assert set(found) == {"irs_inf", "copy_rate_pixels", "nn_distance_pixels", "volume_growth_mean", "ds_rate"}
    assert {d.n_pairs for name, d in found.items() if name != "volume_growth_mean"} == {SAMPLED["n"]}
    assert found["volume_growth_mean"].n_pairs == 12
    irs = baseline.results["stages"]["irs"]["synthetic"]
    assert found["irs_inf"].baseline == irs["irs_inf"]
    assert found["irs_inf"].candidate == candidate.results["stages"]["irs"]["synthetic"]["irs_inf"]
    copy = baseline.results["stages"]["memorization"]["spaces"]["pixels"]["extraction"]["fraction_flagged"]
    assert found["copy_rate_pixels"].baseline == pytest.approx(copy)
    for difference in found.values():
        assert difference.interval[0] <= difference.interval[1]


def test_a_job_against_itself_is_not_distinguishable(jobs: tuple[Job, Job]) -> None:
    baseline, _ = jobs
    twin = ScopedStore(baseline.store, "evaluations/a")
    for difference in compare_jobs(SPEC, baseline.job, twin, baseline.results, replicates=100):
        assert (difference.difference, difference.verdict) == (0.0, NOT_DISTINGUISHABLE), difference.metric


def test_spec_differences_name_every_field() -> None:
    other = SPEC.model_copy(update={"sample": SPEC.sample.model_copy(update={"seed": 5})})
    assert spec_differences(SPEC.model_dump(mode="json"), other.model_dump(mode="json")) == [
        {"field": "sample.seed", "baseline": 0, "candidate": 5}
    ]
    assert spec_differences({"a": {"b": 1}}, {"a": {}}) == [{"field": "a.b", "baseline": 1, "candidate": None}]
