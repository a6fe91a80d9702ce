"""Exact k-NN: identical to float64 brute force, ties to the lowest index, whatever the blocking."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from diffaudit.retrieval import knn
from diffaudit.retrieval.knn import nearest_neighbours


def brute_force(queries, references, k, metric):
    """Every pair's float64 distance (supplement Eqs. 10-11), sorted by (distance, index)."""
    q = queries.astype(np.float64)[:, None, :]
    r = references.astype(np.float64)[None]
    if metric == "euclidean":
        dist = np.sqrt(((q - r) ** 2).sum(-1))
    else:
        dist = 1 - (q * r).sum(-1) / (np.sqrt((q**2).sum(-1)) * np.sqrt((r**2).sum(-1)))
    idx = np.broadcast_to(np.arange(references.shape[0]), dist.shape)
    order = np.lexsort((idx, dist), axis=-1)[:, :k]
    return order, np.take_along_axis(dist, order, 1)


def assert_brute_force(queries, references, k, metric, **kwargs):
    result = nearest_neighbours(queries, references, k, metric, device="cpu", **kwargs)
    expected_idx, expected_dist = brute_force(queries, references, k, metric)
    np.testing.assert_array_equal(result.indices, expected_idx)
    np.testing.assert_allclose(result.distances, expected_dist, rtol=1e-12, atol=1e-12)


def test_hand_computed_examples():
    result = nearest_neighbours(np.zeros((1, 2)), np.array([[1.0, 0], [0, 1], [3, 4]]), k=3, device="cpu")
    assert result.indices.tolist() == [[0, 1, 2]]  # distances 1, 1 (tie: lowest index first), 5
    assert result.distances.tolist() == [[1.0, 1.0, 5.0]]
    cosine = nearest_neighbours(np.array([[1.0, 0]]), np.array([[0, 1.0], [1, 1], [2, 0]]), 3, "cosine", device="cpu")
    assert cosine.indices.tolist() == [[2, 1, 0]]
    np.testing.assert_allclose(cosine.distances, [[0.0, 1 - 2**-0.5, 1.0]], atol=1e-15)


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
@pytest.mark.parametrize("k", [1, 3, 8])
def test_integer_features_with_exact_ties_and_duplicated_references(metric, k):
    rng = np.random.default_rng(k)
    references = rng.integers(0, 3, (200, 6)).astype(np.float32)
    references = np.concatenate([references, references[:60], references[::-1][:40]])  # duplicates at later indices
    queries = rng.integers(0, 3, (150, 6)).astype(np.float32)
    if metric == "cosine":
        references[~references.any(1)] = 1
        queries[~queries.any(1)] = 1
    assert_brute_force(queries, references, k, metric, memory_budget_bytes=2**14)  # many small blocks


def test_near_ties_beyond_float32_resolution_far_from_the_origin():
    rng = np.random.default_rng(0)
    base = rng.normal(size=32) + 1e3
    queries = base + rng.normal(size=(40, 32))
    # Six references within 1e-7 of each other (float32 cannot tell them apart at norm ~6e3), in shuffled order.
    near = base + rng.normal(size=(6, 32)) * 1e-7
    references = np.concatenate([rng.normal(size=(50, 32)) * 3 + 1e3, near, rng.normal(size=(50, 32)) + 1e3])
    references = references[rng.permutation(len(references))]
    for k in (1, 4):
        assert_brute_force(queries, references, k, "euclidean")


def test_many_near_ties_go_through_the_exhaustive_pass(monkeypatch):
    calls = []
    original = knn._within_limit

    def counting(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(knn, "_within_limit", counting)
    rng = np.random.default_rng(1)
    base = rng.normal(size=16)
    references = np.concatenate([base + rng.normal(size=(40, 16)) * 1e-9, rng.normal(size=(30, 16)) + 5])
    references = references[rng.permutation(len(references))]  # 40 near-tied references > the 2k + 6 kept
    queries = base + rng.normal(size=(5, 16))
    assert_brute_force(queries, references, 2, "euclidean", memory_budget_bytes=2**13)
    assert len(calls) == 5


def test_float64_inputs_and_memory_budgets_give_the_same_answer():
    rng = np.random.default_rng(2)
    references = rng.normal(size=(500, 40))
    queries = rng.normal(size=(120, 40))
    for budget in (2**16, 2**28):
        assert_brute_force(queries, references, 5, "euclidean", memory_budget_bytes=budget)
        assert_brute_force(queries, references, 2, "cosine", memory_budget_bytes=budget)


def test_block_sizes_fit_the_budget():
    for budget in (2**22, 2**26, 2**30):
        block_r = knn._reference_block_size(50_000, 2048, budget)
        block_q = knn._query_block_size(50_000, 2048, block_r, budget // 2)
        assert 12 * block_r * 2048 <= budget // 4 or block_r == 1
        assert 12 * 2048 * block_r + block_q * (12 * 2048 + 12 * block_r) <= budget // 2 or block_q == 1
    assert knn._reference_block_size(20, 8, 2**30) == 20
    assert knn._query_block_size(10, 8, 20, 2**30) == 10  # small inputs: one block each


def test_full_precision_products_during_the_search_only(monkeypatch):
    seen = []
    original = knn._approx_squared

    def recording(*args, **kwargs):
        seen.append(torch.get_float32_matmul_precision())
        return original(*args, **kwargs)

    monkeypatch.setattr(knn, "_approx_squared", recording)
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("medium")
    try:
        nearest_neighbours(np.eye(3), np.eye(3), device="cpu")
        assert seen and set(seen) == {"highest"} and torch.get_float32_matmul_precision() == "medium"
    finally:
        torch.set_float32_matmul_precision(previous)


def test_empty_queries_and_invalid_input():
    result = nearest_neighbours(np.zeros((0, 3)), np.ones((4, 3)), 2, device="cpu")
    assert result.indices.shape == (0, 2) and result.distances.shape == (0, 2)
    with pytest.raises(ValueError, match="k"):
        nearest_neighbours(np.ones((1, 3)), np.ones((2, 3)), k=3)
    with pytest.raises(ValueError, match="width"):
        nearest_neighbours(np.ones((1, 3)), np.ones((2, 4)))
    with pytest.raises(ValueError, match="non-finite"):
        nearest_neighbours(np.array([[np.nan, 0, 0]]), np.ones((2, 3)))
    with pytest.raises(ValueError, match="all-zero"):
        nearest_neighbours(np.ones((1, 3)), np.zeros((2, 3)), metric="cosine")
    with pytest.raises(ValueError, match="metric"):
        nearest_neighbours(np.ones((1, 3)), np.ones((2, 3)), metric="manhattan")
