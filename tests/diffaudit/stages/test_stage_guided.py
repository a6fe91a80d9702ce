"""The `guided` stage on the tiny demo model: artifacts, summaries, baseline parity, resume, refusals."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from diffaudit.datasets import Dataset, IngestLimits, ingest_dataset, write_builtin_dataset
from diffaudit.metrics.density import compare_distributions, summarize
from diffaudit.pipeline import run
from diffaudit.spec import EvaluationSpec
from diffaudit.store import LocalStore, load_array

TINY = {
    "n": 12,
    "steps": 4,
    "batch_size": 8,
    "classifier_steps": 6,
    "discriminator_steps": 6,
    "discriminator_samples": 16,
}


def tiny_spec(**guided: Any) -> EvaluationSpec:
    return EvaluationSpec.model_validate(
        {"stages": ["guided"], "sample": {"n": 8, "steps": 2}, "guided": {**TINY, **guided}}
    )


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> tuple[LocalStore, Dataset]:
    store = LocalStore(tmp_path_factory.mktemp("guided"))
    write_builtin_dataset("digits", store, "datasets/digits")
    return store, Dataset.open(store, "datasets/digits")


GRID = tiny_spec(alphas=[0.0, 2.0], betas=[0.0, 2.0], grid=True)


@pytest.fixture(scope="module")
def grid_job(tiny_demo_model: Path, digits: tuple[LocalStore, Dataset]) -> dict[str, Any]:
    """One small grid job (alpha, beta in {0, 2}) shared by the tests of this module."""
    store, dataset = digits
    summary: dict[str, Any] = run_job(GRID, tiny_demo_model, store, dataset)["stages"]["guided"]
    return summary


def run_job(spec: EvaluationSpec, model: Path, store: LocalStore, dataset: Dataset, job: str = "jobs/a") -> Any:
    return run(spec, checkpoint_dir=model, dataset=dataset, store=store, job_prefix=job)


def test_guided_stage_reports_every_set_and_zero_guidance_is_the_baseline(
    grid_job: dict[str, Any], digits: tuple[LocalStore, Dataset]
) -> None:
    store, dataset = digits
    summary = grid_job
    job = store.root / "jobs/a/guided"

    for name in ["histograms.png", "memorization.png", "fig3.png"]:
        assert (job / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    names = ["alpha0_beta0", "alpha0_beta2", "alpha2_beta0", "alpha2_beta2"]
    assert [p["set"] for p in summary["pairs"]] == names
    baseline = load_array(store, "jobs/a/guided/baseline/images.npy")
    assert baseline.shape == (12, 16, 16, 1)
    # Algorithm 1 with alpha = beta = 0 is the baseline sampler, bit for bit; any guidance changes the samples.
    np.testing.assert_array_equal(load_array(store, "jobs/a/guided/alpha0_beta0/images.npy"), baseline)
    assert not np.array_equal(load_array(store, "jobs/a/guided/alpha2_beta2/images.npy"), baseline)
    np.testing.assert_array_equal(load_array(store, "jobs/a/guided/labels.npy"), np.arange(12) % 10)

    # The summaries are the stored per-sample metrics, summarised and compared.
    sets = summary["sets"]
    assert set(sets) == {"real", "baseline", *names}
    for name in ["baseline", "alpha2_beta0"]:
        for metric in ["hardness", "avg_knn", "lof"]:
            values = load_array(store, f"jobs/a/guided/{name}/{metric}.npy")
            assert len(values) == 12
            assert sets[name][metric] == pytest.approx(summarize(values))
        assert 0.0 <= sets[name]["precision"] <= 1.0
    assert len(load_array(store, "jobs/a/guided/real/hardness.npy")) == len(dataset.heldout_indices())
    guided = sets["alpha2_beta0"]
    expected = compare_distributions(
        load_array(store, "jobs/a/guided/baseline/hardness.npy"),
        load_array(store, "jobs/a/guided/alpha2_beta0/hardness.npy"),
    )
    assert guided["versus_baseline"]["hardness"] == pytest.approx(expected)
    assert guided["precision_ratio"] == pytest.approx(guided["precision"] / sets["baseline"]["precision"])
    assert sets["alpha0_beta0"]["versus_baseline"]["avg_knn"]["cohens_d"] == 0.0

    # Table 1 ranges start at the 50th, 75th and 90th percentiles of the held-out real hardness.
    real = load_array(store, "jobs/a/guided/real/hardness.npy")
    np.testing.assert_allclose([row["low"] for row in summary["cost"]], np.percentile(real, [50, 75, 90]))
    assert summary["cost"][-1]["high"] is None
    first = load_array(store, "jobs/a/guided/baseline/hardness.npy")
    assert summary["cost"][0]["baseline_acceptance"] == pytest.approx(
        np.mean((first >= summary["cost"][0]["low"]) & (first < summary["cost"][0]["high"]))
    )
    memorization = summary["memorization"]
    assert memorization["set"] == "alpha0_beta0"
    assert memorization["ratio"] == pytest.approx(
        memorization["guided_to_train_mean"] / memorization["heldout_to_train_mean"]
    )
    assert summary["classifier"]["cache_hit"] is False and summary["discriminator"]["cache_hit"] is False
    assert set(summary["classifier"]["heldout_accuracy"]) == {"t0", "t250", "t500"}
    assert "alpha=0, beta=0" in summary["headline"]


def test_resume_reuses_the_cached_networks_and_gives_the_same_samples(
    tiny_demo_model: Path, digits: tuple[LocalStore, Dataset], grid_job: dict[str, Any]
) -> None:
    store, dataset = digits
    guided = load_array(store, "jobs/a/guided/alpha2_beta2/images.npy", mmap=False)
    # Lose the summary and one guided set: the stage reruns, the networks come from the cache.
    (store.root / "jobs/a/guided/result.json").unlink()
    store.delete_prefix("jobs/a/guided/alpha2_beta2")
    second = run_job(GRID, tiny_demo_model, store, dataset)["stages"]["guided"]
    assert second["classifier"]["cache_hit"] is True and second["discriminator"]["cache_hit"] is True
    assert second["classifier"]["cache_key"] == grid_job["classifier"]["cache_key"]
    np.testing.assert_array_equal(load_array(store, "jobs/a/guided/alpha2_beta2/images.npy"), guided)
    assert second["sets"]["alpha2_beta2"]["hardness"] == grid_job["sets"]["alpha2_beta2"]["hardness"]
    assert second["sets"]["baseline"] == grid_job["sets"]["baseline"]


def test_class_conditional_checkpoint_with_an_unlabelled_dataset_is_refused(
    tiny_demo_model: Path, digits: tuple[LocalStore, Dataset]
) -> None:
    store, labelled = digits
    path = store.root / "unlabelled.npz"
    np.savez(path, images=np.asarray(labelled.images[:200]))
    ingest_dataset(path, store, "datasets/unlabelled", IngestLimits(), heldout_fraction=0.2)
    unlabelled = Dataset.open(store, "datasets/unlabelled")
    with pytest.raises(ValueError, match=r"class-conditional.*no labels"):
        run_job(tiny_spec(), tiny_demo_model, store, unlabelled, job="jobs/b")


def test_pairs_need_as_many_alphas_as_betas() -> None:
    with pytest.raises(ValueError, match="same length"):
        tiny_spec(alphas=[0.1, 0.2], betas=[0.5])
    assert len(tiny_spec(alphas=[0.1, 0.2], betas=[0.5], grid=True).guided.alphas) == 2


def test_unconditional_checkpoint_is_guided_by_the_unlabelled_hardness(
    make_tiny_checkpoint: Any, tmp_path: Path
) -> None:
    """No labels: no classifier; the discriminator's embedding carries L_g1 with one Gaussian (issue: unlabelled)."""
    from sklearn.datasets import load_digits

    store = LocalStore(tmp_path / "store")
    images = (load_digits().images * (255 / 16)).round().astype(np.uint8)[:300, :, :, None]  # 8x8 grey, no labels
    np.savez(tmp_path / "unlabelled.npz", images=images)
    ingest_dataset(tmp_path / "unlabelled.npz", store, "datasets/unlabelled", IngestLimits(), heldout_fraction=0.2)
    unlabelled = Dataset.open(store, "datasets/unlabelled")
    checkpoint = make_tiny_checkpoint(tmp_path / "unconditional")  # 8x8 grey, no class embeddings

    spec = tiny_spec(alphas=[0.0, 2.0], betas=[0.0, 0.0])
    summary = run_job(spec, checkpoint, store, unlabelled)["stages"]["guided"]

    assert summary["class_guided"] is False
    assert summary["classifier"]["source"].startswith("none")
    assert not store.exists("jobs/a/guided/labels.npy")
    baseline = load_array(store, "jobs/a/guided/baseline/images.npy", mmap=False)
    np.testing.assert_array_equal(load_array(store, "jobs/a/guided/alpha0_beta0/images.npy", mmap=False), baseline)
    guided = load_array(store, "jobs/a/guided/alpha2_beta0/images.npy", mmap=False)
    assert not np.array_equal(guided, baseline)  # alpha alone moved the samples: L_g1 came from the discriminator
    assert set(summary["sets"]) == {"real", "baseline", "alpha0_beta0", "alpha2_beta0"}
    assert np.isfinite(summary["sets"]["alpha2_beta0"]["hardness"]["mean"])


def test_an_uploaded_classifier_is_named_in_the_summary_without_its_path(
    tiny_demo_model: Path, digits: tuple[LocalStore, Dataset], grid_job: dict[str, Any], tmp_path: Path
) -> None:
    """The classifier comes from the operator's weights folder; the summary names it, never the worker's path."""
    store, dataset = digits
    weights_dir = tmp_path / "allowed"
    weights_dir.mkdir()
    (weights_dir / "classifier.safetensors").write_bytes(
        store.get_bytes(f"cache/{grid_job['classifier']['cache_key']}")
    )
    spec = tiny_spec(classifier_weights="classifier.safetensors")
    results = run(
        spec, checkpoint_dir=tiny_demo_model, dataset=dataset, store=store, job_prefix="jobs/u", weights_dir=weights_dir
    )
    classifier = results["stages"]["guided"]["classifier"]
    assert classifier["source"] == "uploaded" and classifier["weights"] == "classifier.safetensors"
    assert str(tmp_path) not in json.dumps(results)
