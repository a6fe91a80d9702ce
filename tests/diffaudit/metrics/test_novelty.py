"""Diverse-sample detection: hull test, both t-SNE modes, seeds bookkeeping, k-NN support, report, plot."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from scipy.spatial import Delaunay

from diffaudit.metrics.novelty import (
    FixedEmbedding,
    TsneDetection,
    TsneParams,
    detector_agreement,
    fit_fixed_embedding,
    jaccard,
    joint_affinities_to_training,
    knn_radii,
    majority,
    novelty_report,
    outside_hull,
    outside_knn_balls,
    perplexity_calibration,
    seed_summary,
    training_hull,
    tsne_diverse_samples,
)
from diffaudit.plots.novelty import tsne_plot_png

torch.set_num_threads(1)
SMALL = TsneParams(n_iter=250, early_exaggeration_iter=125, negative_gradient_method="bh", neighbors="exact")
N_CLUSTERS, PER_CLUSTER, DIM = 4, 60, 16


@pytest.fixture(scope="module")
def data() -> dict[str, np.ndarray]:
    """Clustered training set; generated = fresh draws from the same clusters plus one far-away cluster."""
    rng = np.random.default_rng(0)
    centers = rng.normal(0, 4, (N_CLUSTERS, DIM))
    train = np.concatenate([c + rng.normal(0, 1, (PER_CLUSTER, DIM)) for c in centers])
    same = np.concatenate([c + rng.normal(0, 1, (25, DIM)) for c in centers])
    far = centers[0] + 30.0 + rng.normal(0, 0.5, (15, DIM))
    return {"train": train, "same": same, "far": far, "generated": np.concatenate([same, far])}


@pytest.fixture(scope="module")
def fixed(data: dict[str, np.ndarray]) -> FixedEmbedding:
    return fit_fixed_embedding(data["train"], seeds=(0, 1, 2), params=SMALL)


@pytest.fixture(scope="module")
def joint(data: dict[str, np.ndarray]) -> TsneDetection:
    return tsne_diverse_samples(data["train"], data["generated"], mode="joint", seeds=(0, 1, 2), params=SMALL)


def test_outside_hull_matches_delaunay() -> None:
    rng = np.random.default_rng(1)
    train = rng.normal(size=(300, 2))
    queries = rng.uniform(-4, 4, size=(5000, 2))
    hull = training_hull(train)
    expected = Delaunay(train).find_simplex(queries) < 0
    np.testing.assert_array_equal(outside_hull(hull, queries, block_size=777), expected)
    assert 0 < expected.sum() < len(queries)
    assert not outside_hull(hull, train).any()  # the training points, hull vertices included, are inside


def test_jaccard_majority_and_seed_summary_on_hand_made_sets() -> None:
    masks = np.array([[1, 1, 0, 0], [1, 0, 1, 0], [1, 1, 1, 0]], dtype=bool)
    summary = seed_summary(masks, (0, 1, 2))
    assert summary["count_per_seed"] == [2, 2, 3]
    assert summary["count_mean"] == pytest.approx(7 / 3)
    assert summary["count_std"] == pytest.approx(np.std([2, 2, 3], ddof=1))
    assert summary["jaccard"] == pytest.approx({"0-1": 1 / 3, "0-2": 2 / 3, "1-2": 2 / 3})
    assert summary["majority_indices"] == [0, 1, 2]
    assert summary["majority_count"] == 3
    assert majority(masks[:2]).tolist() == [True, False, False, False]  # 1 of 2 seeds is no majority
    assert jaccard(np.zeros(3, bool), np.zeros(3, bool)) == 1.0


def test_detector_agreement_matches_sklearn_kappa() -> None:
    from sklearn.metrics import cohen_kappa_score

    a = np.array([1, 1, 0, 0, 0, 1, 0, 0, 0, 0], dtype=bool)
    b = np.array([1, 0, 0, 0, 1, 1, 0, 0, 0, 0], dtype=bool)
    agreement = detector_agreement(a, b)
    assert (agreement["both"], agreement["only_first"], agreement["only_second"], agreement["neither"]) == (2, 1, 1, 6)
    assert agreement["jaccard"] == pytest.approx(0.5)
    assert agreement["cohen_kappa"] == pytest.approx(cohen_kappa_score(a, b))
    assert detector_agreement(np.zeros(5, bool), np.zeros(5, bool))["cohen_kappa"] == 1.0


def test_knn_balls_on_hand_computed_line() -> None:
    train = np.array([[0.0], [1.0], [3.0], [7.0]])
    np.testing.assert_allclose(knn_radii(train, k=1), [1.0, 1.0, 2.0, 4.0])
    # 0.5 is in the ball of 0; 5 is on the ball of 3 (|5 - 3| = 2, '<=' counts); 12 is 5 > 4 from 7
    generated = np.array([[0.5], [5.0], [12.0]])
    assert outside_knn_balls(train, generated, k=1).tolist() == [False, False, True]
    # every candidate missed but a farther, larger ball holds the point: the fallback scan must find it
    assert outside_knn_balls(train, np.array([[10.5]]), k=1, candidates=1).tolist() == [False]


def test_knn_radii_match_sklearn(data: dict[str, np.ndarray]) -> None:
    from sklearn.neighbors import NearestNeighbors

    distances, _ = NearestNeighbors(n_neighbors=4).fit(data["train"]).kneighbors(data["train"])
    np.testing.assert_allclose(knn_radii(data["train"], k=3), distances[:, 3])


def test_knn_support_flags_far_cluster_and_not_training_points(data: dict[str, np.ndarray]) -> None:
    outside = outside_knn_balls(data["train"], data["generated"], k=3)
    assert outside[len(data["same"]) :].all()
    assert not outside_knn_balls(data["train"], data["train"], k=3).any()  # identical sets: nothing outside


def test_joint_mode_finds_far_cluster(data: dict[str, np.ndarray], joint: TsneDetection) -> None:
    n_same = len(data["same"])
    assert majority(joint.outside)[n_same:].all()
    assert majority(joint.outside)[:n_same].mean() < 0.15  # draws from the training clusters are mostly inside


def test_fixed_mode_keeps_training_draws_inside(data: dict[str, np.ndarray], fixed: FixedEmbedding) -> None:
    detection = tsne_diverse_samples(data["train"], data["same"], mode="fixed", fixed=fixed)
    assert detection.outside.shape == (3, len(data["same"]))
    assert majority(detection.outside).mean() < 0.15


def test_fixed_mode_finds_far_cluster(data: dict[str, np.ndarray], fixed: FixedEmbedding) -> None:
    detection = tsne_diverse_samples(data["train"], data["far"], mode="fixed", fixed=fixed)
    assert majority(detection.outside).all()


def test_fixed_mode_flags_in_distribution_draws_no_more_than_joint(
    data: dict[str, np.ndarray], fixed: FixedEmbedding, joint: TsneDetection
) -> None:
    detection = tsne_diverse_samples(data["train"], data["same"], mode="fixed", fixed=fixed)
    joint_rate = majority(joint.outside)[: len(data["same"])].mean()
    assert majority(detection.outside).mean() <= joint_rate


def test_opentsne_transform_alone_misses_the_far_cluster(data: dict[str, np.ndarray], fixed: FixedEmbedding) -> None:
    """Why the fixed mode does not use openTSNE's `transform` as it is: per-point normalised affinities."""
    from openTSNE import TSNE

    reduced = fixed.reduce(data["train"])
    embedding = TSNE(perplexity=30, n_iter=250, negative_gradient_method="bh", neighbors="exact", random_state=0).fit(
        reduced
    )
    placed = np.asarray(embedding.transform(fixed.reduce(data["far"])))
    assert outside_hull(training_hull(np.asarray(embedding)), placed).mean() < 0.5


def test_perplexity_calibration_reaches_the_perplexity() -> None:
    rng = np.random.default_rng(3)
    sq = rng.uniform(0.5, 30.0, size=(20, 40)) ** 2
    precision, log_norm = perplexity_calibration(sq, perplexity=7.0)
    p = np.exp(-sq * precision[:, None] - log_norm[:, None])
    np.testing.assert_allclose(p.sum(axis=1), 1.0, rtol=1e-9)
    entropy = -np.sum(p * np.log(p), axis=1)
    np.testing.assert_allclose(np.exp(entropy), 7.0, rtol=1e-6)


def test_joint_affinities_halve_for_far_points() -> None:
    # one training point j whose two neighbours are at squared distances 1 and 3, calibrated to perplexity 1.5
    train_precision, train_log_norm = perplexity_calibration(np.array([[1.0, 3.0]]), perplexity=1.5)
    beta = train_precision[0]
    neighbours = np.zeros((3, 2), dtype=np.int64)  # every new point lists training point 0 (twice)
    sq = np.array([[1.0, 1.0], [1.0, 2.0], [1e4, 1e4 + 1]])  # two points near j, one far away
    rows = joint_affinities_to_training(sq, neighbours, train_precision, train_log_norm, perplexity=1.5)

    def seen_from_j(d2: float) -> float:  # j's conditional of picking a point at squared distance d2 (Eq. 1)
        return np.exp(-beta * d2) / (np.exp(-beta) + np.exp(-3 * beta))

    # own conditionals sum to 1; equidistant neighbours share them equally
    np.testing.assert_allclose(rows[0], [(0.5 + seen_from_j(1.0)) / 2] * 2)
    np.testing.assert_allclose(rows[1].sum(), (1 + seen_from_j(1.0) + seen_from_j(2.0)) / 2)
    np.testing.assert_allclose(rows[2].sum(), 0.5)  # the far point: only its own half


def test_fixed_mode_boundary_and_placement_identical_after_restore(
    data: dict[str, np.ndarray], fixed: FixedEmbedding
) -> None:
    arrays = {name: np.array(a) for name, a in fixed.to_arrays().items()}
    metadata = json.loads(json.dumps(fixed.metadata()))
    restored = FixedEmbedding.restore(arrays, metadata, data["train"])
    first = tsne_diverse_samples(data["train"], data["generated"], mode="fixed", fixed=fixed)
    second = tsne_diverse_samples(data["train"], data["generated"], mode="fixed", fixed=restored)
    for seed_index in range(3):
        np.testing.assert_array_equal(
            training_hull(first.train_2d[seed_index]).equations, training_hull(second.train_2d[seed_index]).equations
        )
    np.testing.assert_allclose(first.generated_2d, second.generated_2d, atol=1e-9)
    np.testing.assert_array_equal(first.outside, second.outside)
    assert not np.array_equal(fixed.train_embeddings[0], fixed.train_embeddings[1])  # seeds differ


def test_restore_refuses_other_training_set(data: dict[str, np.ndarray], fixed: FixedEmbedding) -> None:
    with pytest.raises(ValueError, match="do not match"):
        FixedEmbedding.restore(fixed.to_arrays(), fixed.metadata(), data["train"][:-1])


def test_report_is_json_and_consistent(data: dict[str, np.ndarray], joint: TsneDetection) -> None:
    report = novelty_report(data["train"], data["generated"], joint, n_rounds=3)
    report = json.loads(json.dumps(report))
    tsne = report["tsne"]
    assert tsne["majority_count"] == len(tsne["majority_indices"]) == int(majority(joint.outside).sum())
    support = report["knn_support"]
    assert set(range(len(data["same"]), len(data["generated"]))) <= set(support["indices"])
    agreement = report["agreement"]
    assert agreement["both"] + agreement["only_first"] == tsne["majority_count"]
    assert agreement["both"] + agreement["only_second"] == support["count"]
    assert report["information"]["kl_generated_train"] > report["information"]["kl_generated_train_se"]


def test_plot_is_png(joint: TsneDetection) -> None:
    png = tsne_plot_png(joint, seed_index=1)
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
