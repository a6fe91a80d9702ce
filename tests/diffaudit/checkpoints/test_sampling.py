"""The sampling loop, the `sample` stage and image grids, on tiny random UNets."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from diffaudit.checkpoints import load_checkpoint, make_scheduler
from diffaudit.checkpoints.sampling import class_labels_for, denoise, sample_batches, to_uint8_images
from diffaudit.errors import InvalidInput
from diffaudit.imaging import image_grid, png_bytes
from diffaudit.pipeline import Cancelled, Rejected, StageContext, get_stage
from diffaudit.spec import EvaluationSpec
from diffaudit.stages.artifacts import SAMPLE_BATCHES_PREFIX as BATCHES_PREFIX
from diffaudit.stages.sample import SampleStage, draw_samples
from diffaudit.store import LocalStore, ScopedStore, load_array

CPU = torch.device("cpu")
SCHEDULER_NAMES = ["ddpm", "ddim", "pndm", "dpmsolver++", "unipc", "deis", "euler", "euler-ancestral", "heun"]


@pytest.fixture
def unet(make_tiny_unet: Callable[..., Any]) -> Any:
    return make_tiny_unet()


@pytest.fixture
def scheduler_config(tmp_path: Path, make_tiny_checkpoint: Callable[..., Path]) -> dict[str, Any]:
    return load_checkpoint(make_tiny_checkpoint(tmp_path / "ckpt"), CPU).scheduler_config


def draw(unet: Any, config: dict[str, Any], name: str, **options: Any) -> np.ndarray:
    """All samples of sample_batches concatenated, checking the yielded start indices."""
    options = {"n": 8, "steps": 4, "seed": 0, "batch_size": 8, "class_labels": None, "device": CPU, **options}
    batches = list(sample_batches(unet, make_scheduler(name, config), **options))
    starts = list(range(options.get("start", 0), options["n"], options["batch_size"]))
    assert [start for start, _ in batches] == starts
    return np.concatenate([images for _, images in batches])


@pytest.mark.parametrize("name", SCHEDULER_NAMES)
def test_every_scheduler_runs(unet: Any, scheduler_config: dict[str, Any], name: str) -> None:
    images = draw(unet, scheduler_config, name, n=2, batch_size=2, steps=3)
    assert images.shape == (2, 8, 8, 1) and images.dtype == np.uint8
    assert len(np.unique(images)) > 2  # not a constant or saturated image


@pytest.mark.parametrize("name", ["ddpm", "euler-ancestral", "dpmsolver++", "pndm"])
def test_samples_do_not_depend_on_batch_boundaries(unet: Any, scheduler_config: dict[str, Any], name: str) -> None:
    whole = draw(unet, scheduler_config, name, batch_size=8)
    in_threes = draw(unet, scheduler_config, name, batch_size=3)
    assert np.abs(whole.astype(int) - in_threes.astype(int)).max() <= 1  # float noise of batched convolutions
    resumed = draw(unet, scheduler_config, name, batch_size=3, start=3)
    assert np.abs(whole[3:].astype(int) - resumed.astype(int)).max() <= 1


def test_seed_makes_samples_reproducible(unet: Any, scheduler_config: dict[str, Any]) -> None:
    first = draw(unet, scheduler_config, "ddpm", seed=5)
    assert np.array_equal(first, draw(unet, scheduler_config, "ddpm", seed=5))
    assert not np.array_equal(first, draw(unet, scheduler_config, "ddpm", seed=6))
    # sample i uses seed + i: seed 5 from index 1 on is seed 6 from index 0 on
    assert np.abs(first[1:].astype(int) - draw(unet, scheduler_config, "ddpm", seed=6, n=7).astype(int)).max() <= 1


def test_ddpm_matches_a_hand_rolled_loop(unet: Any, scheduler_config: dict[str, Any]) -> None:
    steps, seeds = 5, [3, 4]
    with torch.inference_mode():
        ours = denoise(
            unet, make_scheduler("ddpm", scheduler_config), seeds=seeds, steps=steps, class_labels=None, device=CPU
        )
        betas = torch.linspace(scheduler_config["beta_start"], scheduler_config["beta_end"], 100)
        alpha_bar = torch.cumprod(1.0 - betas, dim=0)
        generators = [torch.Generator().manual_seed(s) for s in seeds]
        x = torch.cat([torch.randn((1, 1, 8, 8), generator=g) for g in generators])
        for t in range(80, -1, -20):  # 'leading' spacing: 100 // 5 = 20
            eps = unet(x, t).sample
            a_t, a_prev = alpha_bar[t], alpha_bar[t - 20] if t >= 20 else torch.tensor(1.0)
            beta_t = 1 - a_t / a_prev
            x0 = ((x - (1 - a_t).sqrt() * eps) / a_t.sqrt()).clamp(-1, 1)  # Ho et al. 2020, Eq. 15 with clipping
            mean = a_prev.sqrt() * beta_t / (1 - a_t) * x0 + (1 - beta_t).sqrt() * (1 - a_prev) / (1 - a_t) * x  # Eq. 7
            x = mean
            if t > 0:
                variance = (1 - a_prev) / (1 - a_t) * beta_t  # beta-tilde, Eq. 7
                x = mean + variance.sqrt() * torch.cat([torch.randn((1, 1, 8, 8), generator=g) for g in generators])
    torch.testing.assert_close(ours, x, atol=1e-5, rtol=1e-5)


def test_class_labels_change_the_samples(make_tiny_unet: Callable[..., Any], scheduler_config: dict[str, Any]) -> None:
    conditional = make_tiny_unet(num_class_embeds=3)
    conditional.class_embedding.weight.data.normal_(0, 10)  # make the labels matter in a random model
    zeros, twos = (
        draw(conditional, scheduler_config, "ddim", n=2, batch_size=2, class_labels=np.full(2, c)) for c in (0, 2)
    )
    assert not np.array_equal(zeros, twos)


def test_pixels_map_minus_one_one_to_uint8() -> None:
    x = torch.tensor([-2.0, -1.0, 0.0, 0.5, 1.0, 3.0]).reshape(1, 1, 1, 6)
    assert to_uint8_images(x).ravel().tolist() == [0, 0, 128, 191, 255, 255]  # 127.5 -> 128, 191.25 -> 191


def test_class_labels_for() -> None:
    assert class_labels_for(5, 3, None).tolist() == [0, 1, 2, 0, 1]  # type: ignore[union-attr]
    assert class_labels_for(3, 3, 2).tolist() == [2, 2, 2]  # type: ignore[union-attr]
    assert class_labels_for(4, None, None) is None
    with pytest.raises(ValueError, match="unconditional"):
        class_labels_for(4, None, 1)
    with pytest.raises(ValueError, match="out of range"):
        class_labels_for(4, 3, 3)


# --- the `sample` stage ---------------------------------------------------------------------------


@pytest.fixture
def conditional_dir(tmp_path: Path, make_tiny_checkpoint: Callable[..., Path]) -> Path:
    return make_tiny_checkpoint(tmp_path / "conditional", num_class_embeds=3)


def stage_context(root: Path, checkpoint_dir: Path, cancel_after: int | None = None, **sample: Any) -> StageContext:
    spec = EvaluationSpec(stages=("sample",), sample={"n": 10, "batch_size": 4, "steps": 3, **sample})
    reports: list[tuple[int, int]] = []
    ctx = StageContext(
        spec=spec,
        checkpoint_dir=checkpoint_dir,
        dataset=None,  # type: ignore[arg-type]  # the sample stage does not read the dataset
        job=ScopedStore(LocalStore(root), "job"),
        cache=ScopedStore(LocalStore(root), "cache"),
        device=CPU,
        results={},
        report=lambda done, total: reports.append((done, total)),
        is_cancelled=lambda: cancel_after is not None and len(reports) > cancel_after,
    )
    ctx.reports = reports  # type: ignore[attr-defined]
    return ctx


def test_stage_is_registered() -> None:
    stage = get_stage("sample")
    assert isinstance(stage, SampleStage) and stage.name == "sample" and stage.queue == "gpu"


def test_sample_stage_stores_images_labels_and_grid(tmp_path: Path, conditional_dir: Path) -> None:
    ctx = stage_context(tmp_path, conditional_dir)
    summary = SampleStage().run(ctx)
    images = load_array(ctx.job, "sample/images.npy")
    assert images.shape == (10, 8, 8, 1) and images.dtype == np.uint8
    assert load_array(ctx.job, "sample/labels.npy").tolist() == [0, 1, 2, 0, 1, 2, 0, 1, 2, 0]
    expected = draw(
        ctx.checkpoint.unet, ctx.checkpoint.scheduler_config, "ddim", n=10, batch_size=4, steps=3,
        class_labels=np.arange(10) % 3,
    )  # fmt: skip
    assert np.array_equal(images, expected)
    grid = Image.open(io.BytesIO(ctx.job.get_bytes("sample/grid.png")))
    assert grid.mode == "L" and grid.size == (4 * 64 + 5, 3 * 64 + 4)  # 10 tiles of 8x8 scaled by 8: 4 columns, 3 rows
    assert ctx.job.list(BATCHES_PREFIX) == []
    assert ctx.reports == [(0, 10), (4, 10), (8, 10), (10, 10)]  # type: ignore[attr-defined]
    assert summary.pop("headline").startswith("10 samples with ddim (3 steps), ")
    assert {k: v for k, v in summary.items() if k != "images_per_second"} == {
        "n": 10,
        "scheduler": "ddim",
        "steps": 3,
        "seed": 0,
        "guidance_scale": 1.0,
        "kind": "pixel-unet",
        "conditional": True,
        "class_counts": {"0": 4, "1": 3, "2": 3},
    }
    assert summary["images_per_second"] > 0


def test_sample_stage_unconditional_has_no_labels(tmp_path: Path, make_tiny_checkpoint: Callable[..., Path]) -> None:
    ctx = stage_context(tmp_path, make_tiny_checkpoint(tmp_path / "plain"), n=3)
    summary = SampleStage().run(ctx)
    assert summary["conditional"] is False and "class_counts" not in summary
    assert not ctx.job.exists("sample/labels.npy")


def test_sample_stage_resumes_after_an_interruption(tmp_path: Path, conditional_dir: Path) -> None:
    interrupted = stage_context(tmp_path / "a", conditional_dir, cancel_after=2)  # cancelled after batch 4..7
    with pytest.raises(Cancelled):
        SampleStage().run(interrupted)
    assert interrupted.job.list(BATCHES_PREFIX) == [f"{BATCHES_PREFIX}/00000000.npy", f"{BATCHES_PREFIX}/00000004.npy"]
    resumed = stage_context(tmp_path / "a", conditional_dir)
    summary = SampleStage().run(resumed)
    assert resumed.reports == [(8, 10), (10, 10)]  # type: ignore[attr-defined]  # only the last batch is drawn
    assert summary["images_per_second"] > 0
    uninterrupted = stage_context(tmp_path / "b", conditional_dir)
    SampleStage().run(uninterrupted)
    assert np.array_equal(
        load_array(resumed.job, "sample/images.npy"), load_array(uninterrupted.job, "sample/images.npy")
    )


def test_on_batch_sees_every_batch_in_order_and_may_reject(tmp_path: Path, conditional_dir: Path) -> None:
    interrupted = stage_context(tmp_path, conditional_dir, cancel_after=1)
    with pytest.raises(Cancelled):
        SampleStage().run(interrupted)
    seen: list[tuple[int, int]] = []
    draw_samples(
        stage_context(tmp_path, conditional_dir), on_batch=lambda start, images: seen.append((start, len(images)))
    )
    assert seen == [(0, 4), (4, 4), (8, 2)]  # the kept batch 0 too

    def reject_at_second_batch(start: int, images: np.ndarray) -> None:
        if start == 4:
            raise Rejected("too few distinct images", {"start": start})

    ctx = stage_context(tmp_path / "c", conditional_dir)
    with pytest.raises(Rejected, match="too few"):
        draw_samples(ctx, on_batch=reject_at_second_batch)
    assert not ctx.job.exists("sample/images.npy")


# --- image grids ----------------------------------------------------------------------------------


def test_image_grid_tiles_upscales_and_pads() -> None:
    images = np.arange(3 * 2 * 2, dtype=np.uint8).reshape(3, 2, 2, 1) * 10
    grid = np.asarray(image_grid(images, ncols=2, scale=2, pad=1))
    assert grid.shape == (2 * 4 + 3, 2 * 4 + 3)
    assert np.array_equal(grid[1:5, 1:5], np.kron(images[0, :, :, 0], np.ones((2, 2), dtype=np.uint8)))
    assert np.array_equal(grid[1:5, 6:10], np.kron(images[1, :, :, 0], np.ones((2, 2), dtype=np.uint8)))
    assert np.array_equal(grid[6:10, 1:5], np.kron(images[2, :, :, 0], np.ones((2, 2), dtype=np.uint8)))
    assert (grid[0] == 255).all() and (grid[:, 5] == 255).all() and (grid[6:10, 6:10] == 255).all()


def test_image_grid_scales_small_images_automatically_and_keeps_colour() -> None:
    rgb = np.zeros((64, 16, 16, 3), dtype=np.uint8)
    rgb[:, :, :, 0] = 200
    grid = image_grid(rgb)
    assert grid.mode == "RGB" and grid.size == (8 * 64 + 9, 8 * 64 + 9)  # 16 px * 4, 8 columns
    assert grid.getpixel((1, 1)) == (200, 0, 0)
    with pytest.raises(ValueError, match="uint8"):
        image_grid(rgb.astype(np.float32))


def test_png_bytes_round_trip() -> None:
    images = np.random.default_rng(0).integers(0, 256, (4, 5, 5, 1), dtype=np.uint8)
    grid = image_grid(images, scale=1)
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(png_bytes(grid)))), np.asarray(grid))


def test_guidance_without_a_null_class_is_invalid_input(tmp_path: Path, conditional_dir: Path) -> None:
    ctx = stage_context(tmp_path, conditional_dir, guidance_scale=2.0)
    with pytest.raises(InvalidInput, match="no null class"):
        SampleStage().run(ctx)
