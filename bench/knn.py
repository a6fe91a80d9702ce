"""Exact 1-NN throughput against this machine's single-precision matrix-multiply ceiling (issue 3).

50,000 queries in 50,000 references of dimension 2048 (float32). Prints the GFLOP/s achieved (2 x n_q x n_r x d
flops per search) and its ratio to the measured torch.mm throughput of a comparable shape (4096 x 2048 by
2048 x 4096, same threads; target >= 0.8). The machine is shared and its throughput drifts, so the queries go in
five chunks, each timed between two torch.mm measurements, and the ratio is per chunk (median printed). Also the
peak memory above the inputs. Torch threads are set to 2 here, deliberately. A few queries are re-checked against
float64 brute force.

Usage: .venv/bin/python bench/knn.py [--n 50000] [--dim 2048] [--budget-mb 1024]
"""

from __future__ import annotations

import argparse
import resource
import time

import numpy as np
import torch

from diffaudit.device import configure_threads, pick_device
from diffaudit.retrieval.knn import nearest_neighbours

THREADS = 2
CHUNKS = 5  # the machine is shared: each fifth of the queries is compared with torch.mm measured around it


def matmul_gflops(device: torch.device, repeats: int = 5) -> float:
    """Best-of-`repeats` torch.mm throughput for a 4096 x 2048 by 2048 x 4096 float32 product."""
    a = torch.randn(4096, 2048, device=device)
    b = torch.randn(2048, 4096, device=device)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        began = time.perf_counter()
        torch.mm(a, b)
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - began)
    return 2 * 4096 * 4096 * 2048 / best / 1e9


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def brute_force_nearest(query: np.ndarray, references: np.ndarray) -> int:
    best_idx, best = -1, np.inf
    for start in range(0, len(references), 4096):
        d = np.sqrt(((references[start : start + 4096].astype(np.float64) - query) ** 2).sum(1))
        i = int(np.argmin(d))
        if d[i] < best:
            best_idx, best = start + i, d[i]
    return best_idx


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=50_000)
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--budget-mb", type=int, default=1024)
    args = parser.parse_args()
    configure_threads(THREADS)
    device = pick_device()
    rng = np.random.default_rng(0)
    queries = rng.standard_normal((args.n, args.dim), dtype=np.float32)
    references = rng.standard_normal((args.n, args.dim), dtype=np.float32)
    baseline_mb = peak_rss_mb()
    budget = args.budget_mb * 2**20
    rows = []  # per chunk of queries: seconds, ceiling measured just before and just after
    found = []
    for start in range(0, args.n, args.n // CHUNKS):
        before = matmul_gflops(device)
        began = time.perf_counter()
        part = nearest_neighbours(queries[start : start + args.n // CHUNKS], references, 1, memory_budget_bytes=budget)
        rows.append((time.perf_counter() - began, before, matmul_gflops(device)))
        found.append(part.indices[:, 0])
    indices = np.concatenate(found)
    flops_per_chunk = 2 * (args.n // CHUNKS) * args.n * args.dim
    ratios = [flops_per_chunk / seconds / 1e9 / ((b + a) / 2) for seconds, b, a in rows]
    elapsed = sum(seconds for seconds, _, _ in rows)
    achieved = 2 * args.n * args.n * args.dim / elapsed / 1e9
    checked = rng.choice(args.n, 10, replace=False)
    agree = all(brute_force_nearest(queries[i], references) == indices[i] for i in checked)
    print(f"device {device}, torch threads {torch.get_num_threads()}, budget {args.budget_mb} MB")
    print(f"exact 1-NN of {args.n:,} in {args.n:,} (d={args.dim}): {elapsed:.1f} s, {achieved:.1f} GFLOP/s")
    for i, ((seconds, before, after), ratio) in enumerate(zip(rows, ratios, strict=True)):
        print(
            f"  queries chunk {i}: {flops_per_chunk / seconds / 1e9:.1f} GFLOP/s; torch.mm before {before:.1f}, "
            f"after {after:.1f} GFLOP/s; ratio {ratio:.2f}"
        )
    print(f"ratio to torch.mm (median over chunks): {float(np.median(ratios)):.2f} (target >= 0.8)")
    print(f"peak memory above the inputs: {peak_rss_mb() - baseline_mb:.0f} MB (RSS; inputs {baseline_mb:.0f} MB)")
    if device.type == "cuda":
        print(f"peak CUDA memory: {torch.cuda.max_memory_allocated() / 2**20:.0f} MB")
    print(f"10 random queries re-checked against float64 brute force: {'all agree' if agree else 'MISMATCH'}")


if __name__ == "__main__":
    main()
