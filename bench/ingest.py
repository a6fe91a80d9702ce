"""Ingest: upload a generated dataset of 50,000 RGB 32x32 images, validate it, extract features.

Phases, each with images/s and the peak resident memory of the process doing the work
(target < 2 GB):
1. upload + validation + storage: the zip is POSTed to a real API server (SQLite, local store),
   which streams it to disk, decodes every image in batches and writes the canonical arrays;
2. feature extraction: training features of the stored dataset with the default extractor
   (random-cnn), computed in batches into the content-addressed cache.

    .venv/bin/python bench/ingest.py [--n 50000] [--threads 2]
"""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np
from api_server import api_server, peak_rss_mb
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent


def make_zip(path: Path, n: int, size: int = 32, classes: int = 10, seed: int = 0) -> None:
    """n RGB PNG images in one folder per class: smooth random blobs, distinct per image."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
        for i in range(n):
            cy, cx = rng.uniform(4, size - 4, 2)
            colour = rng.uniform(0, 255, 3)
            blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / rng.uniform(8, 40))
            image = (blob[..., None] * colour + rng.normal(0, 8, (size, size, 3))).clip(0, 255).astype(np.uint8)
            buffer = io.BytesIO()
            Image.fromarray(image).save(buffer, format="PNG")
            zf.writestr(f"class{i % classes}/{i:06d}.png", buffer.getvalue())


EXTRACT = """
import json, resource, sys, time
from diffaudit.datasets import Dataset
from diffaudit.device import configure_threads
from diffaudit.features import create_extractor
from diffaudit.features.cache import training_features
from diffaudit.store import LocalStore, ScopedStore
configure_threads(int(sys.argv[3]))
store = LocalStore(sys.argv[1])
dataset = Dataset.open(store, sys.argv[2])
extractor = create_extractor("random-cnn")
start = time.perf_counter()
features = training_features(dataset, extractor, ScopedStore(store, "cache"), batch_size=256)
seconds = time.perf_counter() - start
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"seconds": seconds, "shape": list(features.shape), "peak_mb": peak}))
"""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=50_000)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    from diffaudit.client import Client

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        archive = tmp / "images.zip"
        started = time.perf_counter()
        make_zip(archive, args.n)
        print(f"generated {args.n} PNG images 32x32 RGB in {time.perf_counter() - started:.1f} s "
              f"({archive.stat().st_size / 2**20:.0f} MB zip)")  # fmt: skip

        with api_server(tmp, args.threads) as server:
            idle_mb = peak_rss_mb(server.pid)
            started = time.perf_counter()
            dataset = Client(server.url, server.token, timeout=3600).push_dataset(archive, name="bench")
            upload_seconds = time.perf_counter() - started
            upload_peak = peak_rss_mb(server.pid)

        extract = subprocess.run(
            [sys.executable, "-c", EXTRACT, str(tmp / "artifacts"), f"datasets/{dataset['id']}", str(args.threads)],
            cwd=ROOT, check=True, capture_output=True, text=True,
        )  # fmt: skip
        result = json.loads(extract.stdout.strip().splitlines()[-1])

    print(f"torch threads: {args.threads}")
    print("| phase | images/s | peak memory (MB) |")
    print("|---|---|---|")
    print(f"| upload + validate + store (API process) | {args.n / upload_seconds:.0f} | {upload_peak:.0f} "
          f"(idle server: {idle_mb:.0f}) |")  # fmt: skip
    print(f"| feature extraction, random-cnn (worker process) | {args.n / result['seconds']:.0f} | "
          f"{result['peak_mb']:.0f} |")  # fmt: skip
    print(f"dataset {dataset['id']}: {dataset['count']} images, shape {dataset['item_shape']}; features "
          f"{result['shape']}; target peak < 2048 MB per process")  # fmt: skip


if __name__ == "__main__":
    main()
