"""Extraction test (Hasegawa and Yasuda Eq. 7, Carlini et al.) and nearest-neighbour distances (Sehwag et al. Sec.
5) against brute force."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from diffaudit.metrics.memorization import (
    Extraction,
    extraction_ratio,
    extraction_test,
    nearest_neighbour_comparison,
    nearest_neighbour_distances,
)

CPU = torch.device("cpu")


def brute_force_distances(queries: np.ndarray, reference: np.ndarray) -> np.ndarray:
    q = queries.reshape(len(queries), -1).astype(np.float64)
    r = reference.reshape(len(reference), -1).astype(np.float64)
    return np.sqrt(((q[:, None, :] - r[None, :, :]) ** 2).sum(axis=-1))


def test_extraction_ratio_by_hand() -> None:
    distances = np.array([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0], [0.0, 4.0, 8.0]])
    # 1 / (0.5 * 2) = 1; all-zero neighbourhood -> 0 (a copy); 0 / (0.5 * 4) = 0
    np.testing.assert_allclose(extraction_ratio(distances, alpha=0.5), [1.0, 0.0, 0.0])
    np.testing.assert_allclose(extraction_ratio(distances[:1], alpha=0.25), [2.0])


def test_extraction_test_matches_brute_force_and_flags_a_planted_copy() -> None:
    rng = np.random.default_rng(1)
    training = rng.normal(size=(40, 50)).astype(np.float32)
    generated = rng.normal(size=(12, 50)).astype(np.float32)
    generated[2] = training[11]  # exact copy
    generated[7] = training[3] + 0.01 * rng.normal(size=50).astype(np.float32)  # near copy
    result = extraction_test(generated, training, n_neighbours=10, memory_budget_bytes=2**16, device=CPU)

    full = np.sort(brute_force_distances(generated, training), axis=1)[:, :10]
    expected_score = full[:, 0] / (0.5 * full.mean(axis=1))
    np.testing.assert_allclose(result.score, expected_score, rtol=1e-9, atol=1e-12)
    np.testing.assert_array_equal(result.flagged, expected_score < 1.0)
    assert np.flatnonzero(result.flagged).tolist() == [2, 7]
    assert result.nearest_index[2] == 11 and result.nearest_index[7] == 3
    assert result.score[2] == 0.0 and result.nearest_distance[2] == 0.0
    assert result.fraction_flagged == pytest.approx(2 / 12)


def test_extraction_test_on_uint8_pixels() -> None:
    rng = np.random.default_rng(2)
    training = rng.integers(0, 256, size=(30, 16, 16, 1), dtype=np.uint8)
    generated = rng.integers(0, 256, size=(6, 16, 16, 1), dtype=np.uint8)
    generated[4] = training[17]
    result = extraction_test(generated, training, device=CPU, n_neighbours=20)
    assert np.flatnonzero(result.flagged).tolist() == [4]
    full = np.sort(brute_force_distances(generated, training), axis=1)[:, :20]
    np.testing.assert_allclose(result.score, full[:, 0] / (0.5 * full.mean(axis=1)), rtol=1e-9)
    assert result.nearest_index[4] == 17
    assert result.nearest_distance[4] == 0.0


def test_copied_training_images_counts_and_json_summary() -> None:
    result = Extraction(
        score=np.array([0.1, 0.2, 1.5, 0.3, 0.05]),
        nearest_index=np.array([11, 3, 5, 11, 7]),
        nearest_distance=np.ones(5),
        flagged=np.array([True, True, False, True, True]),
        alpha=0.5,
        n_neighbours=50,
        threshold=1.0,
    )
    indices, counts = result.copied_training_images()
    assert indices.tolist() == [11, 3, 7] and counts.tolist() == [2, 1, 1]
    summary = json.loads(json.dumps(result.summary()))
    assert summary["n_flagged"] == 4 and summary["fraction_flagged"] == pytest.approx(0.8)
    assert summary["copied_training_images"][0] == {"index": 11, "copies": 2}


def test_too_many_neighbours_is_refused() -> None:
    with pytest.raises(ValueError, match="k <= number of references"):
        extraction_test(np.zeros((2, 3)), np.zeros((4, 3)), n_neighbours=5, device=CPU)


def test_nearest_neighbour_distances_and_comparison() -> None:
    training = np.array([[0.0, 0.0], [10.0, 0.0]])
    generated = np.array([[1.0, 0.0], [10.0, 2.0], [0.0, 3.0]])
    held_out = np.array([[2.0, 0.0], [10.0, 4.0], [0.0, 6.0]])
    gen = nearest_neighbour_distances(torch.from_numpy(generated), training, device=CPU)
    held = nearest_neighbour_distances(held_out, training, device=CPU)
    np.testing.assert_allclose(gen, [1.0, 2.0, 3.0])
    np.testing.assert_allclose(held, [2.0, 4.0, 6.0])
    comparison = json.loads(json.dumps(nearest_neighbour_comparison(gen, held, bins=5)))
    assert comparison["generated"]["mean"] == pytest.approx(2.0)
    assert comparison["held_out"]["median"] == pytest.approx(4.0)
    assert comparison["held_out"]["quantiles"]["0.25"] == pytest.approx(3.0)
    assert comparison["mean_ratio"] == pytest.approx(0.5)
    assert comparison["histogram"]["edges"] == pytest.approx([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    assert comparison["histogram"]["generated"] == [1, 1, 1, 0, 0]
    assert comparison["histogram"]["held_out"] == [0, 1, 0, 1, 1]
