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
import os
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np
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


def peak_rss_mb(pid: int) -> float:
    """The process's peak resident set size (VmHWM), in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM")


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
    from workers.cli import free_port, wait_until_healthy

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        archive = tmp / "images.zip"
        started = time.perf_counter()
        make_zip(archive, args.n)
        print(f"generated {args.n} PNG images 32x32 RGB in {time.perf_counter() - started:.1f} s "
              f"({archive.stat().st_size / 2**20:.0f} MB zip)")  # fmt: skip

        env = {k: v for k, v in os.environ.items() if not k.startswith("DIFFAUDIT_")}
        env.update(
            DIFFAUDIT_DATABASE_URL=f"sqlite:///{tmp}/bench.db",
            DIFFAUDIT_ARTIFACT_DIR=str(tmp / "artifacts"),
            DIFFAUDIT_TORCH_THREADS=str(args.threads),
        )
        cli = [sys.executable, "-m", "diffaudit.cli"]
        subprocess.run([*cli, "db", "upgrade"], env=env, cwd=ROOT, check=True, capture_output=True)
        token = subprocess.run(
            [*cli, "token", "create", "--project", "bench"], env=env, cwd=ROOT, check=True, capture_output=True,
            text=True,
        ).stdout.strip()  # fmt: skip
        port = free_port()
        log = tmp / "server.log"
        with log.open("wb") as out:
            server = subprocess.Popen(
                [*cli, "serve", "--port", str(port)], env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT
            )
        try:
            url = f"http://127.0.0.1:{port}"
            wait_until_healthy(url, server, log)
            idle_mb = peak_rss_mb(server.pid)
            started = time.perf_counter()
            dataset = Client(url, token, timeout=3600).push_dataset(archive, name="bench")
            upload_seconds = time.perf_counter() - started
            upload_peak = peak_rss_mb(server.pid)
        finally:
            server.terminate()
            server.wait(timeout=30)

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
