"""The distribution stage on the tiny demo model: the metric functions on the stage's arrays, per-class FID, spec
checks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from stage_jobs import JOB_PREFIX, SAMPLED, copy_store

from diffaudit.datasets import Dataset
from diffaudit.metrics.distribution import METRIC_KEYS, distribution_metrics
from diffaudit.pipeline import run
from diffaudit.spec import STAGE_ORDER, EvaluationSpec
from diffaudit.stages.distribution import FIGURE_KEY
from diffaudit.stages.summaries import DistributionSummary
from diffaudit.store import LocalStore, ScopedStore, load_array

N_SAMPLES = SAMPLED["n"]
BOOTSTRAP = {"bootstrap": 20, "moment_bootstrap": 3}


def distribution_spec(**distribution: Any) -> EvaluationSpec:
    return EvaluationSpec(
        stages=("distribution",),
        sample=SAMPLED,
        features={"extractor": "pixels"},
        distribution={**BOOTSTRAP, **distribution},
    )


@pytest.fixture(scope="module")
def evaluated(
    tmp_path_factory: pytest.TempPathFactory, sampled_digits: Path, tiny_demo_model: Path
) -> tuple[LocalStore, dict[str, Any]]:
    """sample (the shared sampled job), features (pixels) and distribution on the tiny class-conditional model."""
    store = copy_store(sampled_digits, tmp_path_factory.mktemp("distribution") / "store")
    spec = distribution_spec()
    dataset = Dataset.open(store, "datasets/digits")
    results = run(spec, checkpoint_dir=tiny_demo_model, dataset=dataset, store=store, job_prefix=JOB_PREFIX)
    return store, results


def test_the_stage_reports_the_metric_functions_on_generated_against_training_features(evaluated) -> None:
    store, results = evaluated
    assert results["spec"]["stages"] == ["sample", "features", "distribution"]
    summary = results["stages"]["distribution"]
    dataset, job = Dataset.open(store, "datasets/digits"), ScopedStore(store, JOB_PREFIX)
    features = load_array(ScopedStore(store, "cache"), results["stages"]["features"]["training_features_key"])
    train = dataset.train_indices()
    real, fake = np.asarray(features[train]), np.asarray(load_array(job, "features/generated.npy"))
    labels = np.asarray(dataset.labels)[train], load_array(job, "sample/labels.npy")
    expected = distribution_metrics(
        real, fake, kid_subset_size=N_SAMPLES, **BOOTSTRAP, real_labels=labels[0], fake_labels=labels[1]
    )
    for key in METRIC_KEYS:
        assert summary[key] == pytest.approx(expected[key], rel=1e-9), key
    assert summary["intervals"].keys() == expected["intervals"].keys()
    for key, interval in expected["intervals"].items():
        assert summary["intervals"][key] == pytest.approx(interval), key
    assert summary["n_real"] == len(train) == 1438 and summary["n_fake"] == N_SAMPLES
    assert summary["kid_subset_size"] == N_SAMPLES  # unset: 1000, capped at the 64 samples
    assert summary["warnings"] and "64 generated and 1,438 real" in summary["warnings"][0]
    # 64 samples over 10 classes: 6 or 7 per class, every class has a per-class FID
    assert sorted(summary["fid_per_class"], key=int) == [str(c) for c in range(10)]
    assert summary["fid_per_class"] == pytest.approx(expected["fid_per_class"])
    parsed = DistributionSummary.model_validate(summary)
    fid_interval = parsed.intervals["fid"]
    assert fid_interval is not None and fid_interval[0] <= parsed.fid <= fid_interval[1]
    assert summary["headline"].startswith(f"FID {summary['fid']:.3g} [")
    assert summary["extractor"] == "pixels" and summary["reference"] == "training split"
    assert job.get_bytes(FIGURE_KEY)[:4] == b"\x89PNG"


def test_per_class_fid_can_be_turned_off(evaluated, tmp_path: Path, tiny_demo_model: Path) -> None:
    store, _ = evaluated
    spec = distribution_spec(per_class=False, kid_subsets=5, bootstrap=0, moment_bootstrap=0)
    dataset = Dataset.open(store, "datasets/digits")
    results = run(spec, checkpoint_dir=tiny_demo_model, dataset=dataset, store=store, job_prefix="evaluations/b")
    summary = results["stages"]["distribution"]
    assert "fid_per_class" not in summary and summary["kid_subsets"] == 5
    assert summary["intervals"]["fid"] is None and summary["intervals"]["precision"] is None


def test_the_stage_runs_after_the_irs_verdict_and_needs_features() -> None:
    assert STAGE_ORDER.index("irs") < STAGE_ORDER.index("distribution") < STAGE_ORDER.index("memorization")
    assert EvaluationSpec(stages=("distribution",)).stages == ("sample", "features", "distribution")


@pytest.mark.parametrize(
    ("distribution", "field"),
    [({"kid_subset_size": 65}, "distribution.kid_subset_size 65"), ({"k": 64}, "distribution.k 64")],
)
def test_a_spec_with_fewer_samples_than_a_kid_subset_or_k_plus_one_is_refused(distribution, field) -> None:
    with pytest.raises(ValueError, match=field):  # pydantic wraps the InvalidInput
        EvaluationSpec(stages=("distribution",), sample={"n": N_SAMPLES}, distribution=distribution)
    EvaluationSpec(stages=("sample",), sample={"n": N_SAMPLES}, distribution=distribution)  # not asked for: fine


def test_the_inception_score_comes_from_the_extractors_classifier_head() -> None:
    """inception-fid features -> its fc logits -> IS over min(10, N) splits (torch-fidelity's formula, checked in
    tests/diffaudit/metrics/test_inception_score.py); extractors without a classifier head give none."""
    import torch

    from diffaudit.features.registry import create_extractor
    from diffaudit.metrics.inception_score import inception_score
    from diffaudit.stages.distribution import inception_score_summary

    extractor = create_extractor("inception-fid", seed=0, device=torch.device("cpu"))
    fake = np.abs(np.random.default_rng(0).standard_normal((40, 2048))).astype(np.float32)
    summary = inception_score_summary(extractor, fake)
    weight = extractor.network.fc.weight.detach().numpy()
    mean, std = inception_score(fake.astype(np.float64) @ weight.T.astype(np.float64), splits=10)
    assert summary == {"inception_score_mean": pytest.approx(mean), "inception_score_std": pytest.approx(std),
                       "inception_score_splits": 10}  # fmt: skip
    assert summary["inception_score_mean"] > 1.0  # random weights still spread 40 rows over several classes
    few = inception_score_summary(extractor, fake[:4])
    assert few is not None and few["inception_score_splits"] == 4
    assert inception_score_summary(create_extractor("pixels", seed=0, device=torch.device("cpu")), fake) is None
