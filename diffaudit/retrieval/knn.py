"""Exact k-nearest-neighbour search, blocked so memory stays bounded, identical to brute force.

Brute force is defined as: the float64 distance of every (query, reference) pair, Euclidean
sqrt(sum_i (q_i - r_i)^2) or cosine 1 - q.r / (|q| |r|) (supplement Eqs. 10-11), sorted ascending with ties broken by
the lowest reference index.

Method: (1) screening, blocked over queries and references, in float32 on the GPU when present with the expansion
|q|^2 - 2 q.r + |r|^2 (one matrix multiply per block; references are centred first, which leaves Euclidean distances
unchanged and shrinks the rounding), keeping the M = 2k + 6 best approximate candidates per query; (2) a rounding
bound delta_q on each approximate squared distance (standard dot-product error analysis: |fl(q.r) - q.r| <=
gamma_d sum|q_i r_i|, gamma_d = d u / (1 - d u), u = 2^-24, plus the float32 rounding of inputs and of the sum,
see _rounding_bound);
(3) when the M-th approximate value exceeds the k-th by more than 2 delta_q, every reference that can be among the
true k nearest (ties included) is a candidate, so the exact float64 distances of the candidates give brute force's
answer; (4) the rare queries that fail (3) (many near-ties) get a second blocked pass that collects every reference
within the k-th approximate value + 2 delta_q and ranks them exactly.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from diffaudit.device import pick_device
from diffaudit.errors import InvalidInput

METRICS = ("euclidean", "cosine")
DEFAULT_MEMORY_BUDGET = 2**30
RECHECK_CHUNK_BYTES = 2**26  # float64 re-check arrays stay small enough to be recycled by the allocator
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
    """Exact k nearest references of every query, as brute force returns them (ties: lowest index).

    Working memory (beyond the inputs) stays within about memory_budget_bytes: the mapped references are kept on the
    device when they take at most half of it, and otherwise re-made block by block. Float32 matrix products run at
    full precision ("highest": no TF32 or bfloat16 shortcuts, which the rounding bound does not cover) during the call.
    """
    queries, references = _validated(queries, references, k, metric)
    precision = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    try:
        return _search(queries, references, k, metric, memory_budget_bytes, device)
    finally:
        torch.set_float32_matmul_precision(precision)


def _search(
    queries: np.ndarray,
    references: np.ndarray,
    k: int,
    metric: str,
    memory_budget_bytes: int,
    device: torch.device | str | None,
) -> Neighbours:
    dev = torch.device(device) if device is not None else pick_device()
    dim = queries.shape[1]
    block_r = _reference_block_size(len(references), dim, memory_budget_bytes)
    space = _ScreeningSpace(references, metric, block_r, memory_budget_bytes // 2, dev)
    block_q = _query_block_size(len(queries), dim, block_r, memory_budget_bytes - space.resident_bytes)
    n_keep = min(len(references), 2 * k + 6)
    tile = torch.empty(min(block_q, len(queries)) * block_r, device=dev)
    indices = np.empty((len(queries), k), np.int64)
    distances = np.empty((len(queries), k), np.float64)
    for start in range(0, len(queries), block_q):
        q_raw = queries[start : start + block_q]
        q_block = space.tensor(q_raw)
        q_sq = _squared_norms(q_block)
        approx, cand = _screen(q_block, q_sq, space, n_keep, tile)
        limit = approx[:, k - 1] + 2 * _rounding_bound(q_sq, space.norm_max, dim)
        within = (approx <= limit.unsqueeze(1)).cpu().numpy()
        idx, dist = _exact_among(q_raw, references, cand.cpu().numpy(), within, k, metric, memory_budget_bytes)
        for i in np.flatnonzero(within[:, -1] & (len(references) > n_keep)):
            # near-ties beyond the kept candidates: rank every reference within the limit exactly
            found = _within_limit(q_block[i : i + 1], float(limit[i]), space)
            idx[i], dist[i] = _exact_among_chunked(q_raw[i], references, found, k, metric, memory_budget_bytes)
        indices[start : start + block_q], distances[start : start + block_q] = idx, dist
    return Neighbours(indices, distances)


def _validated(queries: np.ndarray, references: np.ndarray, k: int, metric: str) -> tuple[np.ndarray, np.ndarray]:
    queries, references = np.asarray(queries), np.asarray(references)
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    if queries.ndim != 2 or references.ndim != 2 or queries.shape[1] != references.shape[1]:
        raise ValueError(f"need 2-D arrays of equal width, got {queries.shape} and {references.shape}")
    if not 1 <= k <= references.shape[0]:
        raise InvalidInput(f"need 1 <= k <= number of references ({references.shape[0]}), got k={k}")
    for name, array in (("queries", queries), ("references", references)):
        if not np.all(np.isfinite(array)):
            raise InvalidInput(f"{name} contain non-finite values")
        if metric == "cosine" and np.any(~np.any(array != 0, axis=1)):
            raise InvalidInput(f"{name} contain all-zero rows, for which the cosine distance is undefined")
    return queries, references


class _ScreeningSpace:
    """Maps rows to float32 vectors whose squared Euclidean distances rank like the metric, on the device.

    Euclidean: rows minus a float32 copy of the references' mean (distances unchanged, rounding smaller; float32
    rows are shifted in float32, one rounding of the shifted value). Cosine: rows divided by their norm, since
    1 - cos(q, r) = |q/|q| - r/|r||^2 / 2 (supplement Eq. 10). Keeps every mapped reference's squared norm (float64)
    and, when they fit in `resident_budget` bytes, the mapped references themselves.
    """

    def __init__(
        self, references: np.ndarray, metric: str, block_r: int, resident_budget: int, dev: torch.device
    ) -> None:
        self.references, self.metric, self.block_r, self.dev = references, metric, block_r, dev
        self.offset = references.mean(0, dtype=np.float64).astype(np.float32) if metric == "euclidean" else None
        self.resident: torch.Tensor | None = None
        if 4 * references.size <= resident_budget:
            self.resident = torch.cat(
                [self.tensor(references[s : s + block_r]) for s in range(0, len(references), block_r)]
            )
        self.resident_bytes = 4 * references.size if self.resident is not None else 0
        self.sq_norms = torch.cat([_squared_norms(block) for _, block in self.reference_blocks()])
        self.norm_max = float(self.sq_norms.max().sqrt())

    def tensor(self, rows: np.ndarray) -> torch.Tensor:
        if self.offset is None:
            rows64 = rows.astype(np.float64)
            mapped = (rows64 / np.linalg.norm(rows64, axis=1, keepdims=True)).astype(np.float32)
        elif rows.dtype == np.float32:
            mapped = rows - self.offset
        else:
            mapped = (rows.astype(np.float64) - self.offset).astype(np.float32)
        return torch.from_numpy(np.ascontiguousarray(mapped)).to(self.dev)

    def reference_blocks(self) -> Iterator[tuple[int, torch.Tensor]]:
        for start in range(0, len(self.references), self.block_r):
            stop = start + self.block_r
            yield (
                start,
                self.resident[start:stop] if self.resident is not None else self.tensor(self.references[start:stop]),
            )


def _reference_block_size(n_refs: int, dim: int, budget: int) -> int:
    """Up to 4096 references per block, fewer when a block's staging copies (3 x 4 x dim bytes a row) need it."""
    block_r = max(1, min(n_refs, 4096))
    while block_r > 1 and 3 * 4 * block_r * dim > budget // 4:
        block_r //= 2
    return block_r


def _query_block_size(n_queries: int, dim: int, block_r: int, budget: int) -> int:
    """Queries per block: per row its float32 and staging copies (12 x dim) and a tile row with top-k workspace
    (12 x block_r), after the reference block's staging (12 x dim x block_r); at least one."""
    per_query = 12 * dim + 12 * block_r
    return max(1, min(n_queries, (budget - 12 * dim * block_r) // per_query))


def _squared_norms(rows: torch.Tensor) -> torch.Tensor:
    """Squared norms of float32 rows, accumulated in float64."""
    return torch.linalg.vector_norm(rows, dim=1, dtype=torch.float64) ** 2


def _approx_squared(
    q_block: torch.Tensor, r_block: torch.Tensor, r_sq: torch.Tensor, out: torch.Tensor | None = None
) -> torch.Tensor:
    """|r|^2 - 2 q.r in float32 with one matrix multiply (into `out` if given); adding |q|^2 gives the squared
    distance."""
    return torch.addmm(r_sq.float().unsqueeze(0), q_block, r_block.T, beta=1.0, alpha=-2.0, out=out)


def _screen(
    q_block: torch.Tensor, q_sq: torch.Tensor, space: _ScreeningSpace, n_keep: int, tile: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The n_keep smallest approximate squared distances per query (ascending, float64) and their indices.

    `tile` is a reused flat float32 buffer for the distance tiles (fresh large allocations cost page faults).
    """
    best = torch.full((q_block.shape[0], 0), math.inf, device=space.dev)
    best_idx = torch.zeros((q_block.shape[0], 0), dtype=torch.int64, device=space.dev)
    for start, r_block in space.reference_blocks():
        out = tile[: len(q_block) * len(r_block)].view(len(q_block), len(r_block))
        partial = _approx_squared(q_block, r_block, space.sq_norms[start : start + len(r_block)], out)
        vals, idx = torch.topk(partial, min(n_keep, partial.shape[1]), dim=1, largest=False, sorted=False)
        merged, merged_idx = torch.cat([best, vals], 1), torch.cat([best_idx, idx + start], 1)
        best, order = torch.topk(merged, min(n_keep, merged.shape[1]), dim=1, largest=False, sorted=True)
        best_idx = torch.gather(merged_idx, 1, order)
    return best.double() + q_sq.unsqueeze(1), best_idx


def _rounding_bound(q_sq: torch.Tensor, r_norm_max: float, dim: int) -> torch.Tensor:
    """Bound on |approximate - exact| squared distance: 2 gamma_d |q| max|r| + 4u (|q| + max|r|)^2.

    Terms: the float32 dot product, gamma_d sum|q_i r_i| <= gamma_d |q||r| (doubled); rounding |r|^2 to float32
    (u |r|^2) and the addition in addmm (u (|r|^2 + 2|q||r|)); the float32 rounding of the mapped inputs
    (2u (|q| + |r|)^2). Each is at most its share of the 4u term.
    """
    u = UNIT_ROUNDOFF_FP32
    gamma = dim * u / (1 - dim * u)
    q_norm = q_sq.sqrt()
    return 2 * gamma * q_norm * r_norm_max + 4 * u * (q_norm + r_norm_max) ** 2


def _within_limit(q_row: torch.Tensor, limit: float, space: _ScreeningSpace) -> np.ndarray:
    """Indices of every reference whose approximate squared distance to the query is at most limit."""
    q_sq = float(_squared_norms(q_row)[0])
    found = [
        start
        + np.flatnonzero(
            ((_approx_squared(q_row, block, space.sq_norms[start : start + len(block)])[0].double() + q_sq) <= limit)
            .cpu()
            .numpy()
        )
        for start, block in space.reference_blocks()
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
    queries: np.ndarray,
    references: np.ndarray,
    cand: np.ndarray,
    within: np.ndarray,
    k: int,
    metric: str,
    budget: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k of each query among its candidates cand[i, j] that are `within` the limit (the others cannot be
    among the k nearest)."""
    rows, cols = np.nonzero(within)
    dist = np.full(cand.shape, np.inf)
    chunk = max(1, min(budget, RECHECK_CHUNK_BYTES) // (24 * queries.shape[1]))
    for start in range(0, rows.size, chunk):
        r, c = rows[start : start + chunk], cols[start : start + chunk]
        dist[r, c] = _exact_distances(queries[r], references[cand[r, c]][:, None, :], metric)[:, 0]
    return _rank(dist, cand, k)


def _exact_among_chunked(
    query: np.ndarray, references: np.ndarray, cand: np.ndarray, k: int, metric: str, budget: int
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k of one query among any number of candidates, a chunk at a time."""
    chunk = max(k, min(budget, RECHECK_CHUNK_BYTES) // (24 * references.shape[1]))
    best_idx, best_dist = np.zeros(0, np.int64), np.zeros(0, np.float64)
    for start in range(0, cand.size, chunk):
        c = cand[start : start + chunk]
        dist = _exact_distances(query[None], references[c][None], metric)[0]
        top_idx, top_dist = _rank(np.concatenate([best_dist, dist])[None], np.concatenate([best_idx, c])[None], k)
        best_idx, best_dist = top_idx[0], top_dist[0]
    return best_idx, best_dist
