"""Built-in demo models: recipes, cache folder, atomic write (tiny training runs only)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import diffaudit.demo as demo
from diffaudit.checkpoints import validate_checkpoint_dir
from diffaudit.datasets.digits import load_digits16

WEIGHTS = "unet/diffusion_pytorch_model.safetensors"


def test_demo_model_is_a_valid_cached_pipeline_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = demo.ensure_demo_model("digits", tmp_path, progress=False, train_steps=2)
    assert folder == tmp_path / f"digits-r{demo.RECIPE_VERSION}-steps2"
    assert sorted(p.name for p in tmp_path.iterdir()) == [folder.name]  # no temporary folder left
    info = validate_checkpoint_dir(folder)
    assert (info.sample_size, info.in_channels, info.num_class_embeds) == (16, 1, 10)
    assert (info.scheduler_class, info.num_train_timesteps) == ("DDPMScheduler", 1000)

    def no_training(*args: object) -> None:
        raise AssertionError("a cached demo model must not be retrained")

    monkeypatch.setattr(demo, "train_demo", no_training)
    assert demo.ensure_demo_model("digits", tmp_path, progress=False, train_steps=2) == folder


def test_training_is_deterministic_and_changes_the_weights(tmp_path: Path) -> None:
    first = load_file(demo.ensure_demo_model("digits-overfit", tmp_path / "a", progress=False, train_steps=2) / WEIGHTS)
    again = load_file(demo.ensure_demo_model("digits-overfit", tmp_path / "b", progress=False, train_steps=2) / WEIGHTS)
    assert all(np.array_equal(first[k].numpy(), again[k].numpy()) for k in first)
    torch.manual_seed(demo.DEMO_MODELS["digits-overfit"].seed)
    initial = demo.demo_unet().state_dict()  # the initialisation training started from
    assert not np.array_equal(first["conv_in.weight"].numpy(), initial["conv_in.weight"].numpy())


def test_unknown_demo_model_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown demo model 'faces'"):
        demo.ensure_demo_model("faces", tmp_path)


def test_recipes_train_on_the_documented_images() -> None:
    images, labels = load_digits16()
    all_images, _ = demo.DEMO_MODELS["digits"].training_data()
    overfit_images, overfit_labels = demo.DEMO_MODELS["digits-overfit"].training_data()
    assert np.array_equal(all_images, images)
    assert np.array_equal(overfit_images, images[:64]) and np.array_equal(overfit_labels, labels[:64])
    assert set(overfit_labels.tolist()) == set(range(10))


def test_learning_rate_warms_up_then_decays_to_zero() -> None:
    steps, peak = 1100, 1.0
    assert demo.learning_rate_at(0, steps, peak) == pytest.approx(1 / demo.WARMUP_STEPS)
    assert demo.learning_rate_at(demo.WARMUP_STEPS - 1, steps, peak) == pytest.approx(1.0)
    assert demo.learning_rate_at(demo.WARMUP_STEPS, steps, peak) == pytest.approx(1.0)
    assert demo.learning_rate_at(demo.WARMUP_STEPS + 500, steps, peak) == pytest.approx(0.5)  # half-way: cos(pi/2)
    assert demo.learning_rate_at(steps, steps, peak) == pytest.approx(0.0, abs=1e-12)
    assert demo.learning_rate_at(demo.WARMUP_STEPS + 250, steps, peak) == pytest.approx(
        0.5 * (1 + math.cos(math.pi / 4))
    )


def test_model_space_maps_uint8_to_minus_one_one() -> None:
    images = np.array([0, 255, 51], dtype=np.uint8).reshape(3, 1, 1, 1)
    assert demo.to_model_space(images).ravel().tolist() == pytest.approx([-1.0, 1.0, -0.6])
