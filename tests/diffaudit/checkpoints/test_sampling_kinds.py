"""One sampling loop for every kind, checked against diffusers' own LDMPipeline, DiTPipeline and DDPMPipeline
on the same tiny components, scheduler, steps and per-sample generators; and the latent kinds through the
pipeline's sample, features and irs stages."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from diffusers.pipelines.ddpm.pipeline_ddpm import DDPMPipeline
from diffusers.pipelines.deprecated.latent_diffusion_uncond.pipeline_latent_diffusion_uncond import LDMPipeline
from diffusers.pipelines.dit.pipeline_dit import DiTPipeline
from diffusers.schedulers.scheduling_ddim import DDIMScheduler
from diffusers.schedulers.scheduling_ddpm import DDPMScheduler

from diffaudit.checkpoints import Checkpoint, load_checkpoint, make_scheduler
from diffaudit.checkpoints.sampling import as_denoiser, decode_latents, denoise, model_output, sample_batches
from diffaudit.datasets import Dataset, write_builtin_dataset
from diffaudit.pipeline import run
from diffaudit.spec import EvaluationSpec
from diffaudit.store import LocalStore
from tests.diffaudit.checkpoints.tiny_kinds import IMAGE_SIZE, save_adm, save_dit, save_ldm

CPU = torch.device("cpu")
SEEDS = [5, 6, 7]
STEPS = 4


@pytest.fixture(scope="module")
def loaded(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Checkpoint]:
    root = tmp_path_factory.mktemp("sampling-kinds")
    folders = {
        "ldm": save_ldm(root / "ldm"),
        "ldm-kl": save_ldm(root / "ldm-kl", autoencoder="vae"),
        "dit": save_dit(root / "dit"),
        "dit-1000": save_dit(root / "dit-1000", num_classes=1000),  # DiTPipeline's null class is label 1000
        "adm": save_adm(root / "adm"),
    }
    return {name: load_checkpoint(folder, CPU) for name, folder in folders.items()}


def generators() -> list[torch.Generator]:
    return [torch.Generator("cpu").manual_seed(s) for s in SEEDS]


def ours(checkpoint: Checkpoint, scheduler: Any, labels: list[int] | None = None, scale: float = 1.0) -> np.ndarray:
    """Our loop's images in [0, 1], NHWC float, as the pipelines return them."""
    class_labels = None if labels is None else torch.tensor(labels)
    with torch.inference_mode():
        x = denoise(
            checkpoint.denoiser,
            scheduler,
            seeds=SEEDS,
            steps=STEPS,
            class_labels=class_labels,
            device=CPU,
            guidance_scale=scale,
        )
        if checkpoint.autoencoder is not None:
            x = decode_latents(checkpoint.autoencoder, x)
    return (x / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy()


def ddim(checkpoint: Checkpoint) -> Any:
    return make_scheduler("ddim", checkpoint.scheduler_config)


@pytest.mark.parametrize("name", ["ldm", "ldm-kl"])
def test_latent_unet_matches_ldm_pipeline(loaded: dict[str, Checkpoint], name: str) -> None:
    checkpoint = loaded[name]
    pipeline = LDMPipeline(
        vqvae=checkpoint.autoencoder,  # type: ignore[arg-type]  # LDMPipeline decodes an AutoencoderKL alike
        unet=checkpoint.denoiser,  # type: ignore[arg-type]
        scheduler=DDIMScheduler.from_config(checkpoint.scheduler_config),
    )
    theirs = pipeline(batch_size=len(SEEDS), generator=generators(), num_inference_steps=STEPS, output_type="np")
    expected = np.asarray(theirs.images)  # type: ignore[union-attr]
    got = ours(checkpoint, ddim(checkpoint))
    assert got.shape == (len(SEEDS), IMAGE_SIZE, IMAGE_SIZE, 1)
    assert got.std() > 0.01  # the decoder's images, not a constant
    np.testing.assert_allclose(got, expected, atol=1e-5)


@pytest.mark.parametrize(("name", "scale"), [("dit", 1.0), ("dit-1000", 4.0)])
def test_dit_matches_dit_pipeline_with_and_without_guidance(
    loaded: dict[str, Checkpoint], name: str, scale: float
) -> None:
    checkpoint = loaded[name]
    pipeline = DiTPipeline(
        transformer=checkpoint.denoiser,  # type: ignore[arg-type]
        vae=checkpoint.autoencoder,  # type: ignore[arg-type]
        scheduler=DDIMScheduler.from_config(checkpoint.scheduler_config),
    )
    labels = [3, 0, 7]
    theirs = pipeline(
        class_labels=labels, guidance_scale=scale, generator=generators(), num_inference_steps=STEPS, output_type="np"
    )
    got = ours(checkpoint, ddim(checkpoint), labels, scale)
    assert got.std() > 0.01
    np.testing.assert_allclose(got, np.asarray(theirs.images), atol=1e-5)  # type: ignore[union-attr]


def test_guidance_changes_the_samples_and_needs_a_null_class(loaded: dict[str, Checkpoint]) -> None:
    checkpoint = loaded["dit"]
    plain, guided = (ours(checkpoint, ddim(checkpoint), [1, 2, 3], scale) for scale in (1.0, 3.0))
    assert np.abs(plain - guided).max() > 1e-3
    unet = as_denoiser(loaded["ldm"].denoiser)
    with pytest.raises(ValueError, match="null class"):
        model_output(unet, torch.zeros(1, 2, 8, 8), torch.tensor(1), torch.zeros(1, dtype=torch.long), 2.0)


def test_learned_variance_is_read_by_ddpm_as_ddpm_pipeline_does(loaded: dict[str, Checkpoint]) -> None:
    checkpoint = loaded["adm"]
    scheduler_config = checkpoint.scheduler_config
    pipeline = DDPMPipeline(unet=checkpoint.denoiser, scheduler=DDPMScheduler.from_config(scheduler_config))  # type: ignore[arg-type]
    theirs = pipeline(batch_size=len(SEEDS), generator=generators(), num_inference_steps=STEPS, output_type="np")
    got = ours(checkpoint, make_scheduler("ddpm", scheduler_config))
    np.testing.assert_allclose(got, np.asarray(theirs.images), atol=1e-5)  # type: ignore[union-attr]
    # every other solver steps with the noise prediction (the first in_channels), as diffusers' pipelines do
    for name in ("ddim", "dpmsolver++", "euler"):
        images = ours(checkpoint, make_scheduler(name, scheduler_config))
        assert images.shape == (len(SEEDS), IMAGE_SIZE, IMAGE_SIZE, 1) and np.isfinite(images).all()


@pytest.mark.parametrize("name", ["ldm", "dit"])
def test_latent_samples_do_not_depend_on_batches(loaded: dict[str, Checkpoint], name: str) -> None:
    checkpoint = loaded[name]
    labels = None if checkpoint.info.num_class_embeds is None else np.arange(5) % 10
    scale = 2.0 if name == "dit" else 1.0

    def draw(batch_size: int, start: int = 0) -> np.ndarray:
        batches = sample_batches(
            checkpoint.denoiser,
            make_scheduler("ddpm", checkpoint.scheduler_config),
            n=5,
            steps=3,
            seed=11,
            batch_size=batch_size,
            class_labels=labels,
            device=CPU,
            start=start,
            guidance_scale=scale,
            autoencoder=checkpoint.autoencoder,
        )
        return np.concatenate([images for _, images in batches])

    whole = draw(5)
    assert whole.dtype == np.uint8 and whole.shape == (5, IMAGE_SIZE, IMAGE_SIZE, 1)
    np.testing.assert_array_equal(draw(2), whole)
    np.testing.assert_array_equal(draw(2, start=2), whole[2:])  # resumed at sample 2


@pytest.mark.parametrize("kind", ["ldm", "dit"])
def test_sample_features_irs_run_on_latent_kinds(tmp_path: Path, kind: str) -> None:
    folder = save_ldm(tmp_path / "model") if kind == "ldm" else save_dit(tmp_path / "model")
    store = LocalStore(tmp_path / "store")
    write_builtin_dataset("digits", store, "datasets/digits")
    dataset = Dataset.open(store, "datasets/digits")
    sample: dict[str, Any] = {"n": 24, "steps": 2, "batch_size": 16}
    if kind == "dit":
        sample["guidance_scale"] = 1.5
    spec = EvaluationSpec(stages=("sample", "features", "irs"), sample=sample, irs={"early_rejection": False})
    results = run(spec, checkpoint_dir=folder, dataset=dataset, store=store, job_prefix="evaluations/k", device=CPU)
    stages = results["stages"]
    assert stages["sample"]["kind"] == ("latent-unet" if kind == "ldm" else "dit")
    assert stages["sample"]["guidance_scale"] == sample.get("guidance_scale", 1.0)
    images = np.load(tmp_path / "store/evaluations/k/sample/images.npy")
    assert images.shape == (24, IMAGE_SIZE, IMAGE_SIZE, 1) and images.dtype == np.uint8
    assert "irs" in stages and json.dumps(stages["irs"])


@pytest.mark.parametrize(("name", "channels"), [("ddpm", 2), ("ddim", 1)])
def test_a_step_hook_sees_the_output_the_scheduler_reads(
    loaded: dict[str, Checkpoint], name: str, channels: int
) -> None:
    checkpoint, seen = loaded["adm"], list[int]()

    def hook(
        scheduler: Any,
        model_input: torch.Tensor,
        t: torch.Tensor,
        model_output: torch.Tensor,
        class_labels: torch.Tensor | None,
        is_last: bool,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        seen.append(model_output.shape[1])
        return model_output, None

    scheduler = make_scheduler(name, checkpoint.scheduler_config)
    with torch.inference_mode():
        denoise(checkpoint.denoiser, scheduler, seeds=[0], steps=2, class_labels=None, device=CPU, guidance=hook)
    assert seen == [channels, channels]  # DDPM with a learned variance_type reads the variance itself
