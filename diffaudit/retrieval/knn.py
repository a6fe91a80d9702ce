"""Exact k-nearest-neighbour search, blocked so memory stays bounded, identical to brute force.

Brute force is defined as: the float64 distance of every (query, reference) pair, Euclidean
sqrt(sum_i (q_i - r_i)^2) or cosine 1 - q.r / (|q| |r|) (supplement Eqs. 10-11), sorted ascending with ties broken by
the lowest reference index.

Method: (1) screening, blocked over queries and references, in float32 on the GPU when present with the expansion
|q|^2 - 2 q.r + |r|^2 (one matrix multiply per block; references are centred first, which leaves Euclidean distances
unchanged and shrinks the rounding), keeping the M = 2k + 6 best approximate candidates per query; (2) a rounding
bound delta_q on each approximate squared distance (standard dot-product error analysis: |fl(q.r) - q.r| <=
gamma_d sum|q_i r_i|, gamma_d = d u / (1 - d u), u = 2^-24, plus the float32 rounding of inputs and of the sum);
(3) when the M-th approximate value exceeds the k-th by more than 2 delta_q, every reference that can be among the
true k nearest (ties included) is a candidate, so the exact float64 distances of the candidates give brute force's
answer; (4) the rare queries that fail (3) (many near-ties) get a second blocked pass that collects every reference
within the k-th approximate value + 2 delta_q and ranks them exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from diffaudit.device import pick_device

METRICS = ("euclidean", "cosine")
DEFAULT_MEMORY_BUDGET = 256 * 2**20
UNIT_ROUNDOFF_FP32 = 2.0**-24


@dataclass(frozen=True)
class Neighbours:
    """indices[i, j]: the j-th nearest reference of query i; distances[i, j]: its float64 distance."""

    indices: np.ndarray
    distances: np.ndarray


def nearest_neighbours(
    queries: np.ndarray,
    references: np.ndarray,
    k: int = 1,
    metric: str = "euclidean",
    memory_budget_bytes: int = DEFAULT_MEMORY_BUDGET,
    device: torch.device | str | None = None,
) -> Neighbours:
    """Exact k nearest references of every query, as brute force returns them (ties: lowest index)."""
    queries, references = _validated(queries, references, k, metric)
    dev = torch.device(device) if device is not None else pick_device()
    space = _ScreeningSpace(references, metric)
    block_q, block_r = _block_sizes(len(queries), len(references), queries.shape[1], k, memory_budget_bytes)
    n_keep = min(len(references), 2 * k + 6)
    indices = np.empty((len(queries), k), np.int64)
    distances = np.empty((len(queries), k), np.float64)
    for start in range(0, len(queries), block_q):
        q_raw = queries[start : start + block_q]
        q_block = space.tensor(q_raw, dev)
        approx, cand = _screen(q_block, space, n_keep, block_r, dev)
        limit = approx[:, k - 1] + 2 * _rounding_bound(q_block, space.norm_max(block_r), queries.shape[1])
        idx, dist = _exact_among(q_raw, references, cand.cpu().numpy(), k, metric, memory_budget_bytes)
        failing = (approx[:, -1] <= limit).cpu().numpy() & (len(references) > n_keep)
        for i in np.flatnonzero(
            failing
        ):  # near-ties beyond the kept candidates: rank every reference within the limit exactly
            within = _within_limit(q_block[i : i + 1], float(limit[i]), space, block_r, dev)
            idx[i], dist[i] = _exact_among_chunked(q_raw[i], references, within, k, metric, memory_budget_bytes)
        indices[start : start + block_q], distances[start : start + block_q] = idx, dist
    return Neighbours(indices, distances)


def _validated(queries: np.ndarray, references: np.ndarray, k: int, metric: str) -> tuple[np.ndarray, np.ndarray]:
    queries, references = np.asarray(queries), np.asarray(references)
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    if queries.ndim != 2 or references.ndim != 2 or queries.shape[1] != references.shape[1]:
        raise ValueError(f"need 2-D arrays of equal width, got {queries.shape} and {references.shape}")
    if not 1 <= k <= references.shape[0]:
        raise ValueError(f"need 1 <= k <= number of references ({references.shape[0]}), got k={k}")
    for name, array in (("queries", queries), ("references", references)):
        if not np.all(np.isfinite(array)):
            raise ValueError(f"{name} contain non-finite values")
        if metric == "cosine" and np.any(~np.any(array != 0, axis=1)):
            raise ValueError(f"{name} contain all-zero rows, for which the cosine distance is undefined")
    return queries, references


class _ScreeningSpace:
    """Maps rows to float32 vectors whose squared Euclidean distances rank like the metric.

    Euclidean: rows minus the references' mean (distances unchanged, rounding smaller). Cosine: rows divided by
    their norm, since 1 - cos(q, r) = |q/|q| - r/|r||^2 / 2 (supplement Eq. 10).
    """

    def __init__(self, references: np.ndarray, metric: str) -> None:
        self.references = references
        self.metric = metric
        self.offset = references.mean(0, dtype=np.float64) if metric == "euclidean" else None
        self._norm_max: float | None = None

    def rows(self, rows: np.ndarray) -> np.ndarray:
        rows = rows.astype(np.float64)
        if self.offset is not None:
            return (rows - self.offset).astype(np.float32)
        return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)

    def tensor(self, rows: np.ndarray, dev: torch.device) -> torch.Tensor:
        return torch.from_numpy(self.rows(rows)).to(dev)

    def reference_blocks(self, block_r: int, dev: torch.device):
        for start in range(0, len(self.references), block_r):
            yield start, self.tensor(self.references[start : start + block_r], dev)

    def norm_max(self, block_r: int) -> float:
        """Largest norm of a mapped reference (float32 values, measured in float64)."""
        if self._norm_max is None:
            self._norm_max = max(
                float(np.sqrt((self.rows(self.references[s : s + block_r]).astype(np.float64) ** 2).sum(1)).max())
                for s in range(0, len(self.references), block_r)
            )
        return self._norm_max


def _block_sizes(n_queries: int, n_refs: int, dim: int, k: int, budget: int) -> tuple[int, int]:
    """Query and reference block sizes whose working memory fits the budget (at least one row of each).

    Per reference row: the float64 staging, the float32 block and its squared norms (3 x 4 x dim bytes); per query
    row: its float32 and float64 copies (12 x dim), a float32 tile row with its top-k workspace (12 x block_r), and
    the float64 re-check of its 2k + 6 candidates (24 x (2k + 6) x dim).
    """
    block_r = max(1, min(n_refs, 4096))
    while block_r > 1 and 3 * 4 * block_r * dim > budget // 2:
        block_r //= 2
    per_query = 12 * dim + 12 * block_r + 24 * (2 * k + 6) * dim
    block_q = max(1, min(n_queries, (budget - 3 * 4 * block_r * dim) // per_query))
    return block_q, block_r


def _approx_squared(q_block: torch.Tensor, r_block: torch.Tensor) -> torch.Tensor:
    """|r|^2 - 2 q.r in float32 with one matrix multiply; adding |q|^2 gives the squared distance."""
    r_sq = (r_block.double() ** 2).sum(1).float()
    return torch.addmm(r_sq.unsqueeze(0), q_block, r_block.T, beta=1.0, alpha=-2.0)


def _screen(
    q_block: torch.Tensor, space: _ScreeningSpace, n_keep: int, block_r: int, dev: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """The n_keep smallest approximate squared distances per query (ascending, float64) and their indices."""
    best = torch.full((q_block.shape[0], 0), math.inf, device=dev)
    best_idx = torch.zeros((q_block.shape[0], 0), dtype=torch.int64, device=dev)
    for start, r_block in space.reference_blocks(block_r, dev):
        partial = _approx_squared(q_block, r_block)
        vals, idx = torch.topk(partial, min(n_keep, partial.shape[1]), dim=1, largest=False, sorted=False)
        merged, merged_idx = torch.cat([best, vals], 1), torch.cat([best_idx, idx + start], 1)
        best, order = torch.topk(merged, min(n_keep, merged.shape[1]), dim=1, largest=False, sorted=True)
        best_idx = torch.gather(merged_idx, 1, order)
    return best.double() + (q_block.double() ** 2).sum(1, keepdim=True), best_idx


def _rounding_bound(q_block: torch.Tensor, r_norm_max: float, dim: int) -> torch.Tensor:
    """Bound on |approximate - exact| squared distance: (2 gamma_d + 8u) (|q| + max|r|)^2 (see module docstring)."""
    u = UNIT_ROUNDOFF_FP32
    gamma = dim * u / (1 - dim * u)
    return (2 * gamma + 8 * u) * (q_block.double().norm(dim=1) + r_norm_max) ** 2


def _within_limit(
    q_row: torch.Tensor, limit: float, space: _ScreeningSpace, block_r: int, dev: torch.device
) -> np.ndarray:
    """Indices of every reference whose approximate squared distance to the query is at most limit."""
    q_sq = float((q_row.double() ** 2).sum())
    found = [
        start + np.flatnonzero(((_approx_squared(q_row, r_block)[0].double() + q_sq) <= limit).cpu().numpy())
        for start, r_block in space.reference_blocks(block_r, dev)
    ]
    return np.concatenate(found)


def _exact_distances(q: np.ndarray, r: np.ndarray, metric: str) -> np.ndarray:
    """Brute-force float64 distance of each pair q[i], r[i, j] (q shaped (n, d), r shaped (n, m, d))."""
    q64 = q.astype(np.float64)[:, None, :]
    r64 = r.astype(np.float64)
    if metric == "euclidean":
        return np.sqrt(((q64 - r64) ** 2).sum(-1))
    dots = (q64 * r64).sum(-1)
    return 1.0 - dots / (np.sqrt((q64**2).sum(-1)) * np.sqrt((r64**2).sum(-1)))


def _rank(dist: np.ndarray, idx: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the k smallest distances, ties broken by the lowest index."""
    order = np.lexsort((idx, dist), axis=-1)[:, :k]
    return np.take_along_axis(idx, order, 1), np.take_along_axis(dist, order, 1)


def _exact_among(
    queries: np.ndarray, references: np.ndarray, cand: np.ndarray, k: int, metric: str, budget: int
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k of each query among its candidate references (cand shaped (n, m))."""
    rows = max(1, budget // (24 * cand.shape[1] * queries.shape[1]))
    idx_out = np.empty((len(queries), k), np.int64)
    dist_out = np.empty((len(queries), k), np.float64)
    for start in range(0, len(queries), rows):
        c = cand[start : start + rows]
        dist = _exact_distances(queries[start : start + rows], references[c], metric)
        idx_out[start : start + rows], dist_out[start : start + rows] = _rank(dist, c, k)
    return idx_out, dist_out


def _exact_among_chunked(
    query: np.ndarray, references: np.ndarray, cand: np.ndarray, k: int, metric: str, budget: int
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k of one query among any number of candidates, a chunk at a time."""
    chunk = max(k, budget // (24 * references.shape[1]))
    best_idx, best_dist = np.zeros(0, np.int64), np.zeros(0, np.float64)
    for start in range(0, cand.size, chunk):
        c = cand[start : start + chunk]
        dist = _exact_distances(query[None], references[c][None], metric)[0]
        top_idx, top_dist = _rank(np.concatenate([best_dist, dist])[None], np.concatenate([best_idx, c])[None], k)
        best_idx, best_dist = top_idx[0], top_dist[0]
    return best_idx, best_dist
