"""Bad uploads: the corpus of the hardening issue posted to a real API process, which must refuse each at the door.

Each bad checkpoint and dataset (configs with negative, zero or enormous channel counts, 1e10 training
steps, 100,000-pixel or `true` image sizes, [1024, 2048] and [4096, 8192] configs with a small weights
file or none, a negative-shape or lying .npz header) must get a 4xx; a valid checkpoint zipped with a
1 GiB junk file must be accepted with the junk left out (not stored), and twenty identical dataset
uploads must make one dataset. Prints each upload's answer and the API process's peak resident
memory above idle (target: under 500 MB).

    .venv/bin/python bench/bad_uploads.py
"""

from __future__ import annotations

import io
import json
import tempfile
import time
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from api_server import api_server, peak_rss_mb

ROOT = Path(__file__).resolve().parent.parent
TARGET_MB = 500
JUNK_MIB = 1024
IDENTICAL_DATASETS = 20


def save_tiny_checkpoint(folder: Path) -> Path:
    """A 16x16 greyscale UNet2DModel (41k parameters) and its DDPM scheduler, pipeline layout."""
    import torch
    from diffusers.models.unets.unet_2d import UNet2DModel
    from diffusers.schedulers.scheduling_ddpm import DDPMScheduler

    torch.manual_seed(0)
    unet = UNet2DModel(
        sample_size=16,
        in_channels=1,
        out_channels=1,
        layers_per_block=1,
        block_out_channels=(8, 16),
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
        norm_num_groups=4,
    )
    unet.save_pretrained(folder / "unet", safe_serialization=True)
    DDPMScheduler(num_train_timesteps=1000).save_pretrained(folder / "scheduler")
    return folder


def checkpoint_zip(
    base: Path,
    unet: dict[str, Any] | None = None,
    scheduler: dict[str, Any] | None = None,
    weights: bool = True,
    junk_mib: int = 0,
) -> bytes:
    """The base checkpoint zipped with config fields replaced, optionally without weights or with a junk file."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(p for p in base.rglob("*") if p.is_file()):
            name = path.relative_to(base).as_posix()
            changes = {"unet/config.json": unet, "scheduler/scheduler_config.json": scheduler}.get(name)
            if name.endswith(".safetensors") and not weights:
                continue
            if changes:
                zf.writestr(name, json.dumps({**json.loads(path.read_text()), **changes}))
            else:
                zf.write(path, name)
        if junk_mib:
            with zf.open("junk.dat", "w") as junk:
                for _ in range(junk_mib):
                    junk.write(bytes(2**20))
    return buffer.getvalue()


def npz_with_header(shape: tuple[int, ...], data: bytes) -> bytes:
    """An .npz whose images.npy has a hand-written header (np.savez cannot write a wrong one)."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "|u1", "fortran_order": False, "shape": shape})
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        zf.writestr("images.npy", header.getvalue() + data)
    return buffer.getvalue()


def images_npz() -> bytes:
    buffer = io.BytesIO()
    images = np.random.default_rng(0).integers(0, 256, (200, 16, 16, 1), dtype=np.uint8)
    np.savez(buffer, images=images, labels=np.arange(200) % 10)
    return buffer.getvalue()


def corpus(base: Path) -> dict[str, tuple[str, bytes]]:
    """name -> (endpoint, upload) of every bad upload."""

    def unet(weights: bool = True, **changes: Any) -> tuple[str, bytes]:
        return "/v1/checkpoints", checkpoint_zip(base, unet=changes, weights=weights)

    return {
        "block_out_channels [-8, 16]": unet(block_out_channels=[-8, 16]),
        "norm_num_groups 0": unet(norm_num_groups=0),
        "block_out_channels [100000, 200000]": unet(block_out_channels=[100000, 200000]),
        "num_train_timesteps 1e10": ("/v1/checkpoints", checkpoint_zip(base, scheduler={"num_train_timesteps": 1e10})),
        "[1024, 2048], small weights": unet(block_out_channels=[1024, 2048]),
        "[1024, 2048], no weights": unet(weights=False, block_out_channels=[1024, 2048]),
        "[4096, 8192], small weights": unet(block_out_channels=[4096, 8192]),
        "[4096, 8192], no weights": unet(weights=False, block_out_channels=[4096, 8192]),
        "sample_size 100000": unet(sample_size=100000),
        "sample_size true": unet(sample_size=True),
        "npz, negative shape": ("/v1/datasets", npz_with_header((-5, 16, 16), bytes(256))),
        "npz, header declaring 40 GB": ("/v1/datasets", npz_with_header((10**7, 64, 64), bytes(256))),
    }


def post(client: httpx.Client, endpoint: str, data: bytes, name: str) -> tuple[int, dict[str, Any], float]:
    started = time.perf_counter()
    response = client.post(endpoint, files={"file": (name, data)})
    return response.status_code, response.json(), time.perf_counter() - started


def answer(body: dict[str, Any]) -> str:
    if "error" in body:
        return f"{body['error']['code']}: {body['error']['message']}"[:150]
    return f"id {body['id']}" + (f", ignored_files {body['ignored_files']}" if "ignored_files" in body else "")


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def run(url: str, token: str, tmp: Path, server_pid: int, check: Callable[[str, bool], None]) -> None:
    base = save_tiny_checkpoint(tmp / "tiny")
    client = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=600)
    print("| upload | status | seconds | answer |")
    print("|---|---|---|---|")
    for name, (endpoint, data) in corpus(base).items():
        status, body, seconds = post(client, endpoint, data, "upload.npz" if "npz" in name else "upload.zip")
        print(f"| {name} ({len(data) / 1024:.0f} KB) | {status} | {seconds:.2f} | {answer(body)} |")
        check(f"{name}: 4xx", 400 <= status < 500)

    junk_zip = checkpoint_zip(base, junk_mib=JUNK_MIB)
    status, body, seconds = post(client, "/v1/checkpoints", junk_zip, "with-junk.zip")
    stored = folder_bytes(tmp / "artifacts" / "checkpoints")
    print(f"| valid checkpoint + {JUNK_MIB} MiB junk.dat ({len(junk_zip) / 2**20:.1f} MB) | {status} | {seconds:.2f} | "
          f"{answer(body)}; {stored / 1024:.0f} KB stored |")  # fmt: skip
    check("junk zip: accepted, junk.dat left out and not stored", status == 201 and body.get("ignored_files") == [
        "junk.dat"] and stored < 2**20)  # fmt: skip

    data = images_npz()
    answers = [post(client, "/v1/datasets", data, f"copy{i}.npz") for i in range(IDENTICAL_DATASETS)]
    ids = {body["id"] for _, body, _ in answers}
    statuses = sorted({status for status, _, _ in answers})
    listed = client.get("/v1/datasets", params={"limit": 200}).json()["items"]
    own = [d for d in listed if not d["builtin"]]
    print(f"| {IDENTICAL_DATASETS} identical dataset uploads | {statuses} | "
          f"{sum(s for _, _, s in answers):.2f} | {len(ids)} id(s), {len(own)} dataset(s) listed |")  # fmt: skip
    check("identical datasets: one dataset", len(ids) == 1 and len(own) == 1)


def main() -> None:
    failures: list[str] = []

    def check(what: str, ok: bool) -> None:
        if not ok:
            failures.append(what)

    with tempfile.TemporaryDirectory() as tmp_name, api_server(Path(tmp_name)) as server:
        idle_mb = peak_rss_mb(server.pid)
        run(server.url, server.token, Path(tmp_name), server.pid, check)
        peak_mb = peak_rss_mb(server.pid)

    above = peak_mb - idle_mb
    print(f"API process peak memory: {peak_mb:.0f} MB, idle {idle_mb:.0f} MB: {above:.0f} MB above idle "
          f"(target < {TARGET_MB} MB)")  # fmt: skip
    if above >= TARGET_MB:
        failures.append(f"peak memory {above:.0f} MB above idle")
    if failures:
        raise SystemExit("FAILED: " + "; ".join(failures))


if __name__ == "__main__":
    main()
