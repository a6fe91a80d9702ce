"""The `novelty` stage on the tiny demo model: artifacts, counts, solver table, cache reuse, planted far cluster."""

from __future__ import annotations

import csv
import io
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from pydantic import ValidationError
from stage_jobs import Job, run_on_digits

from diffaudit.metrics.novelty import majority, outside_knn_balls
from diffaudit.pipeline import Cancelled, StageContext, run
from diffaudit.spec import EvaluationSpec
from diffaudit.stages import artifacts
from diffaudit.stages import novelty as stage
from diffaudit.store import ScopedStore, load_array, save_array

N = 48
NOVELTY = {
    "mode": "fixed",  # fast, and exercises the shared embedding cache; the joint mode is tested below
    "seeds": 3,
    "n_iter": 100,
    "transform_iter": 100,
    "n_rounds": 3,
    "solvers": [{"scheduler": "dpmsolver++", "steps": 4}],
    "extractors": [{"name": "pixels"}],
}
SPEC = EvaluationSpec(
    stages=("novelty",),
    sample={"n": N, "steps": 4, "batch_size": N},
    features={"extractor": "random-cnn"},
    novelty=NOVELTY,
)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def run_job(finished: Job, prefix: str, spec: EvaluationSpec = SPEC) -> dict[str, Any]:
    return run(spec, checkpoint_dir=finished.model, dataset=finished.dataset, store=finished.store, job_prefix=prefix)


@pytest.fixture(scope="module")
def finished(tiny_demo_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Job:
    return run_on_digits(SPEC, tiny_demo_model, tmp_path_factory.mktemp("novelty"), "novelty")


def test_counts_in_the_summary_match_the_stored_arrays(finished: Job) -> None:
    summary, job = finished.summary, finished.job
    outside = load_array(job, stage.OUTSIDE_KEY)
    assert outside.shape == (3, N)
    assert summary["tsne"]["count_per_seed"] == outside.sum(axis=1).tolist()
    ds = load_array(job, stage.DS_KEY)
    np.testing.assert_array_equal(ds, majority(outside))
    assert summary["tsne"]["majority_count"] == int(ds.sum())
    knn_outside = load_array(job, stage.KNN_OUTSIDE_KEY)
    assert summary["knn_support"]["count"] == int(knn_outside.sum())
    expected = outside_knn_balls(training_split(finished), load_array(job, artifacts.GENERATED_FEATURES_KEY), k=3)
    np.testing.assert_array_equal(knn_outside, expected)
    features = load_array(finished.store, "cache/" + finished.results["stages"]["features"]["training_features_key"])
    heldout = features[finished.dataset.heldout_indices()]
    assert summary["knn_support"]["heldout_n"] == len(heldout) > 0
    baseline = outside_knn_balls(training_split(finished), heldout, k=3).mean()
    assert summary["knn_support"]["heldout_rate"] == pytest.approx(baseline)
    assert load_array(job, stage.GENERATED_2D_KEY).shape == (3, N, 2)
    assert load_array(job, stage.TRAIN_2D_KEY).shape == (3, len(finished.dataset.train_indices()), 2)
    agreement = summary["agreement"]
    assert agreement["both"] + agreement["only_first"] == summary["tsne"]["majority_count"]
    assert f"{summary['tsne']['majority_count']} of {N}" in summary["headline"]


def test_plots_are_pngs(finished: Job) -> None:
    for key in (stage.TSNE_PNG_KEY, stage.FIGURE_KEY):
        png = finished.job.get_bytes(key)
        assert png[:8] == PNG_SIGNATURE and len(png) > 5_000


def test_zip_holds_every_ds_image_and_its_scores(finished: Job) -> None:
    images = load_array(finished.job, artifacts.SAMPLES_KEY)
    labels = load_array(finished.job, artifacts.SAMPLE_LABELS_KEY)
    ds = np.flatnonzero(load_array(finished.job, stage.DS_KEY))
    with zipfile.ZipFile(io.BytesIO(finished.job.get_bytes(stage.ZIP_KEY))) as archive:
        rows = list(csv.DictReader(io.StringIO(archive.read("scores.csv").decode())))
        assert sorted(int(r["sample_index"]) for r in rows) == ds.tolist()
        assert len(archive.namelist()) == len(ds) + 1
        for row in rows:
            i = int(row["sample_index"])
            decoded = np.asarray(Image.open(io.BytesIO(archive.read(row["file"]))))
            np.testing.assert_array_equal(decoded, images[i, :, :, 0])
            assert int(row["class_label"]) == labels[i]
            assert int(row["tsne_votes"]) >= 2 and float(row["hull_margin_mean"]) > -1e3
    votes = [int(r["tsne_votes"]) for r in rows]
    assert votes == sorted(votes, reverse=True)  # best first


def test_solver_table_has_one_row_per_solver_and_extractor(finished: Job) -> None:
    table = finished.summary["table"]
    assert [(r["scheduler"], r["steps"], r["extractor"]) for r in table] == [
        ("ddim", 4, "random-cnn"),
        ("ddim", 4, "pixels"),
        ("dpmsolver++", 4, "random-cnn"),
        ("dpmsolver++", 4, "pixels"),
    ]
    for row in table:
        assert row["n"] == N
        assert row["ds_rate"] == pytest.approx(row["ds_count"] / N)
        assert row["ds_count"] <= max(row["ds_count_per_seed"]) or row["ds_count"] == 0
        assert row["sampling_seconds"] is not None and row["sampling_seconds"] > 0
    primary = table[0]
    assert primary["ds_count"] == finished.summary["tsne"]["majority_count"]
    assert primary["knn_support_count"] == finished.summary["knn_support"]["count"]
    assert table[1]["random_init"] is False and table[0]["random_init"] is True  # pixels have no weights
    other = load_array(finished.job, f"{stage.SOLVERS_PREFIX}/dpmsolver++-4/sample/images.npy")
    assert other.shape == load_array(finished.job, artifacts.SAMPLES_KEY).shape
    assert not np.array_equal(other, load_array(finished.job, artifacts.SAMPLES_KEY))


def test_second_job_reuses_the_cached_fixed_embedding(finished: Job) -> None:
    assert finished.summary["fixed_embedding"] == {"random-cnn": {"cache_hit": False}, "pixels": {"cache_hit": False}}
    second = run_job(finished, "evaluations/b")["stages"]["novelty"]
    assert second["fixed_embedding"] == {"random-cnn": {"cache_hit": True}, "pixels": {"cache_hit": True}}
    job_b = ScopedStore(finished.store, "evaluations/b")
    np.testing.assert_array_equal(load_array(job_b, stage.TRAIN_2D_KEY), load_array(finished.job, stage.TRAIN_2D_KEY))
    # same samples, same boundary, same placement: the same DS
    np.testing.assert_allclose(
        load_array(job_b, stage.GENERATED_2D_KEY), load_array(finished.job, stage.GENERATED_2D_KEY), atol=1e-4
    )
    first_rows = finished.summary["table"]
    assert second["table"] == [{**r, **timing(s)} for r, s in zip(first_rows, second["table"], strict=True)]


def timing(row: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in row.items() if k.endswith("_seconds")}


def test_joint_mode_flags_planted_far_clusters(finished: Job) -> None:
    """40 generated feature vectors replaced by 4 clusters of 10 about 10 units from the training set."""
    prefix = "evaluations/planted"
    run_job(finished, prefix, EvaluationSpec(stages=("features",), sample=SPEC.sample, features=SPEC.features))
    job = ScopedStore(finished.store, prefix)
    train = training_split(finished)
    generated = np.array(load_array(job, artifacts.GENERATED_FEATURES_KEY))
    rng = np.random.default_rng(1)
    directions = rng.normal(size=(4, train.shape[1]))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    centres = train[rng.choice(len(train), 4)] + 10 * directions
    planted = np.concatenate([c + rng.normal(0, 0.3, (10, train.shape[1])) for c in centres])
    generated[-40:] = planted
    save_array(job, artifacts.GENERATED_FEATURES_KEY, generated.astype(np.float32))
    novelty = {**NOVELTY, "mode": "joint", "seeds": 1, "solvers": [], "extractors": []}
    spec = EvaluationSpec(stages=("novelty",), sample=SPEC.sample, features=SPEC.features, novelty=novelty)
    summary = run_job(finished, prefix, spec)["stages"]["novelty"]
    ds = load_array(job, stage.DS_KEY)
    # a t-SNE places whole clusters: seen 40/40 and (one cluster inside the hull) 30/40 on this data
    assert ds[-40:].sum() >= 30 and ds[:-40].sum() <= 1
    assert load_array(job, stage.KNN_OUTSIDE_KEY)[-40:].all()
    assert summary["mode"] == "joint" and summary["fixed_embedding"] is None and summary["limitation"] is None
    assert summary["tsne"]["majority_count"] == int(ds.sum())


def test_fixed_mode_states_its_limitation(finished: Job) -> None:
    assert finished.summary["mode"] == "fixed"
    assert "island" in finished.summary["limitation"]


def training_split(finished: Job) -> np.ndarray:
    key = finished.results["stages"]["features"]["training_features_key"]
    return np.asarray(load_array(finished.store, f"cache/{key}")[finished.dataset.train_indices()])


def test_cancelled_between_rows(finished: Job) -> None:
    ctx = StageContext(
        spec=SPEC,
        checkpoint_dir=finished.model,
        dataset=finished.dataset,
        job=finished.job,
        cache=ScopedStore(finished.store, "cache"),
        device=torch.device("cpu"),
        results=dict(finished.results["stages"]),
        is_cancelled=lambda: True,
    )
    with pytest.raises(Cancelled):
        stage.NoveltyStage().run(ctx)


def test_bad_requests_are_refused_by_the_spec() -> None:
    assert EvaluationSpec().novelty.mode == "fixed"  # the default: one cached boundary per dataset
    with pytest.raises(ValidationError):
        EvaluationSpec(novelty={"mode": "umap"})
    with pytest.raises(ValidationError):
        EvaluationSpec(novelty={"solvers": [{"scheduler": "ddim"}]})  # steps missing
    with pytest.raises(ValidationError):
        EvaluationSpec(novelty={"seeds": 0})
    assert stage.NoveltyStage.queue == "gpu" and stage.NoveltyStage.name == "novelty"


def test_resumed_stage_recomputes_only_the_rows_it_has_not_stored(
    finished: Job, monkeypatch: pytest.MonkeyPatch
) -> None:
    finished.job.delete_prefix("novelty/result.json")
    calls: list[int] = []
    detect = stage.detect

    def counted(*args: Any) -> Any:
        calls.append(1)
        return detect(*args)

    monkeypatch.setattr(stage, "detect", counted)
    summary = run_job(finished, "evaluations/a")["stages"]["novelty"]
    assert len(calls) == 1  # the job's own row, which also makes the artifacts; the other three were stored
    before, after = finished.summary["table"], summary["table"]
    assert after[1:] == before[1:]
    assert {**after[0], **timing(before[0])} == before[0]


def test_the_fewest_samples_the_spec_accepts_give_finite_estimates(finished: Job) -> None:
    """Issue 12, item 4: sample.n = 1 crashed (division by zero), 7 gave NaN spreads; 8 is the minimum."""
    smallest = EvaluationSpec(stages=("novelty",)).novelty.min_samples()
    spec = EvaluationSpec(
        stages=("novelty",),
        sample={"n": smallest, "steps": 2},
        features=SPEC.features,
        novelty={"seeds": 1, "n_iter": 50, "transform_iter": 10, "n_rounds": 2},
    )
    summary = run_job(finished, "evaluations/smallest", spec)["stages"]["novelty"]
    assert summary["n_generated"] == smallest == 8
    assert all(np.isfinite(value) for value in summary["information"].values() if isinstance(value, float))
    with pytest.raises(ValidationError, match=f"at least {smallest} samples"):
        EvaluationSpec(stages=("novelty",), sample={"n": smallest - 1})
