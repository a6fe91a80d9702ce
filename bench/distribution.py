"""Distribution metrics at scale: FID + KID + precision/recall + density/coverage, diffaudit against the references.

Features: seeded float32 arrays with structure (a 10-component mixture in a 64-d latent space, mapped to `dim`
dimensions by a random linear map, rectified like pooled activations, plus noise); the generated set drops two
components and is slightly shifted and widened, so every metric lies strictly inside its range. Both sides run in
their own child process on the same arrays (regenerated from the seed), with the torch (and BLAS) thread count set
deliberately; the time excludes making the arrays, the peak memory is the child's maximum resident set (arrays
included).

- diffaudit: diffaudit.metrics.frechet (FID), kid (100 subsets of 1,000), prdc (k = 3, all four metrics in one
  blocked pass after two exact k-NN searches).
- reference: torch-fidelity 0.4's FID (np.cov, eigenvalues of S1 S2), KID (same subsets, float32 as it computes on
  its features) and precision/recall (`calculate_precision_recall_part`, its memory-saving path: the full path holds
  N x N matrices); prdc's density and coverage (three dense N x N float32 matrices: 30 GB at 50,000, so prdc runs only
  when that fits in --prdc-max-gb, and it is skipped otherwise).

Usage: .venv/bin/python bench/distribution.py [--n 50000] [--dim 2048] [--threads 2] [--rounds 1] [--no-reference]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from typing import Any

import numpy as np

LATENT, COMPONENTS, BLOCK = 64, 10, 5000


def features(n: int, dim: int, seed: int, generated: bool) -> np.ndarray:
    """n structured float32 rows (see the module docstring); the map is shared by both sets, the draws are not."""
    shared = np.random.default_rng(seed)
    mix = (shared.standard_normal((LATENT, dim)) / np.sqrt(LATENT)).astype(np.float32)
    centres = shared.standard_normal((COMPONENTS, LATENT)).astype(np.float32) * 2
    rng = np.random.default_rng(seed + (2 if generated else 1))
    components = COMPONENTS - 2 if generated else COMPONENTS
    scale, shift = (1.15, 0.05) if generated else (1.0, 0.0)
    out = np.empty((n, dim), np.float32)
    for start in range(0, n, BLOCK):
        rows = min(BLOCK, n - start)
        latent = centres[rng.integers(0, components, rows)] + scale * rng.standard_normal((rows, LATENT))
        block = np.maximum(latent.astype(np.float32) @ mix + shift, 0)
        out[start : start + rows] = block + 0.05 * rng.standard_normal((rows, dim)).astype(np.float32)
    return out


def ours(real: np.ndarray, fake: np.ndarray) -> dict[str, Any]:
    from diffaudit.metrics.frechet import feature_moments, frechet_distance
    from diffaudit.metrics.kid import kernel_inception_distance
    from diffaudit.metrics.prdc import ball_memberships

    times: dict[str, float] = {}
    values: dict[str, Any] = {}
    start = time.perf_counter()
    values["fid"] = frechet_distance(feature_moments(real), feature_moments(fake))
    times["fid"] = time.perf_counter() - start
    start = time.perf_counter()
    kid = kernel_inception_distance(real, fake, subsets=100, subset_size=1000, seed=0)
    values["kid_mean"], values["kid_std"] = kid.mean, kid.std
    times["kid"] = time.perf_counter() - start
    start = time.perf_counter()
    balls = ball_memberships(real, fake, k=3)
    values.update(precision=balls.precision, recall=balls.recall, density=balls.density, coverage=balls.coverage)
    times["prdc"] = time.perf_counter() - start
    return {"times": times, "values": values}


def reference(real: np.ndarray, fake: np.ndarray, prdc_max_gb: float) -> dict[str, Any]:
    import torch
    from threadpoolctl import threadpool_limits
    from torch_fidelity.metric_fid import fid_features_to_statistics, fid_statistics_to_metric
    from torch_fidelity.metric_kid import kid_features_to_metric
    from torch_fidelity.metric_prc import calculate_precision_recall_part

    fake_t, real_t = torch.from_numpy(fake), torch.from_numpy(real)  # torch-fidelity: input 1 is the generated set
    times: dict[str, float] = {}
    values: dict[str, Any] = {}
    start = time.perf_counter()
    stats = fid_features_to_statistics(fake_t), fid_features_to_statistics(real_t)
    values["fid"] = fid_statistics_to_metric(*stats, False)["frechet_inception_distance"]
    times["fid"] = time.perf_counter() - start
    start = time.perf_counter()
    kid = kid_features_to_metric(fake_t, real_t, kid_subsets=100, kid_subset_size=1000, rng_seed=0, verbose=False)
    values["kid_mean"], values["kid_std"] = kid["kernel_inception_distance_mean"], kid["kernel_inception_distance_std"]
    times["kid"] = time.perf_counter() - start
    start = time.perf_counter()
    values["precision"], values["recall"] = calculate_precision_recall_part(fake_t, real_t, 3, 10000)
    times["precision_recall"] = time.perf_counter() - start
    dense_gb = 3 * 4 * len(real) * len(fake) / 1e9
    if dense_gb <= prdc_max_gb:
        from prdc import compute_prdc

        start = time.perf_counter()
        with threadpool_limits(1):  # prdc runs 8 sklearn threads itself; one BLAS thread each
            result = compute_prdc(real, fake, 3)
        values["density"], values["coverage"] = float(result["density"]), float(result["coverage"])
        times["density_coverage"] = time.perf_counter() - start
    else:
        values["prdc_skipped"] = f"prdc needs {dense_gb:.0f} GB of N x N float32 matrices"
    return {"times": times, "values": values}


def run_part(args: argparse.Namespace) -> None:
    import torch
    from threadpoolctl import threadpool_limits

    from diffaudit.device import configure_threads

    configure_threads(args.threads)
    real, fake = features(args.n, args.dim, args.seed, False), features(args.n, args.dim, args.seed, True)
    with threadpool_limits(args.threads):
        result = ours(real, fake) if args.part == "ours" else reference(real, fake, args.prdc_max_gb)
    result["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9
    result["inputs_gb"] = (real.nbytes + fake.nbytes) / 1e9
    result["torch_threads"] = torch.get_num_threads()
    print(json.dumps(result))


def child(args: argparse.Namespace, part: str) -> dict[str, Any]:
    command = [sys.executable, __file__, "--part", part, "--n", str(args.n), "--dim", str(args.dim)]
    command += ["--threads", str(args.threads), "--seed", str(args.seed), "--prdc-max-gb", str(args.prdc_max_gb)]
    done = subprocess.run(command, check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def report(name: str, result: dict[str, Any]) -> float:
    total = sum(result["times"].values())
    parts = ", ".join(f"{key} {value:.1f} s" for key, value in result["times"].items())
    print(f"{name}: {total:.1f} s ({parts}); peak RSS {result['peak_rss_gb']:.2f} GB "
          f"(inputs {result['inputs_gb']:.2f} GB); torch threads {result['torch_threads']}")  # fmt: skip
    print(f"  values: {json.dumps(result['values'])}")
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=50_000, help="rows per side")
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--threads", type=int, default=2, help="torch and BLAS threads of each side")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--prdc-max-gb", type=float, default=8.0, help="run prdc only if its N x N matrices fit")
    parser.add_argument("--no-reference", action="store_true", help="time diffaudit only")
    parser.add_argument("--rounds", type=int, default=1, help="alternating runs of each side; the best time counts")
    parser.add_argument("--part", choices=("ours", "reference"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.part:
        run_part(args)
        return
    print(f"{args.n:,} x {args.dim:,} float32 features per side, k = 3, KID 100 x 1,000, {args.threads} threads")
    ours_best, ref_best = float("inf"), float("inf")
    for _ in range(args.rounds):  # alternating, so that a change in the machine's load hits both sides
        ours_best = min(ours_best, report("diffaudit", child(args, "ours")))
        if not args.no_reference:
            ref_best = min(
                ref_best, report("reference (torch-fidelity FID/KID/PR + prdc D/C)", child(args, "reference"))
            )
    if not args.no_reference:
        print(f"speed ratio reference / diffaudit (best of {args.rounds}): {ref_best / ours_best:.2f} (target >= 1)")


if __name__ == "__main__":
    main()
