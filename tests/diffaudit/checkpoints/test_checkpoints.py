"""Checkpoint validation and loading on real folders built with save_pretrained, then corrupted."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, get_args

import pytest
import torch
from diffusers.schedulers.scheduling_ddim import DDIMScheduler
from diffusers.schedulers.scheduling_dpmsolver_multistep import DPMSolverMultistepScheduler
from diffusers.schedulers.scheduling_pndm import PNDMScheduler
from safetensors.torch import load_file, save_file

from diffaudit.checkpoints import (
    SCHEDULERS,
    CheckpointInfo,
    InvalidCheckpoint,
    load_checkpoint,
    make_scheduler,
    resolve_checkpoint,
    validate_checkpoint_dir,
)
from diffaudit.spec import SchedulerName

MakeCheckpoint = Callable[..., Path]
TINY_SIZE, TINY_TRAIN_STEPS = 8, 100  # the tiny checkpoints of conftest.py
WEIGHTS = "unet/diffusion_pytorch_model.safetensors"


@pytest.fixture
def good(tmp_path: Path, make_tiny_checkpoint: MakeCheckpoint) -> Path:
    return make_tiny_checkpoint(tmp_path / "ckpt", num_class_embeds=3)


def edit_json(path: Path, **changes: Any) -> None:
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def test_good_pipeline_folder_is_described_and_loaded(good: Path, make_tiny_unet: Callable[..., Any]) -> None:
    info = validate_checkpoint_dir(good)
    expected = make_tiny_unet(num_class_embeds=3)
    assert info.sample_size == TINY_SIZE
    assert (info.in_channels, info.out_channels, info.num_class_embeds) == (1, 1, 3)
    assert info.num_parameters == sum(p.numel() for p in expected.parameters())
    assert (info.prediction_type, info.num_train_timesteps, info.scheduler_class) == (
        "epsilon",
        TINY_TRAIN_STEPS,
        "DDPMScheduler",
    )
    checkpoint = load_checkpoint(good, torch.device("cpu"))
    assert checkpoint.info == info
    assert not checkpoint.unet.training
    loaded = checkpoint.unet.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in expected.state_dict().items())
    assert checkpoint.scheduler_config["num_train_timesteps"] == TINY_TRAIN_STEPS


def test_flat_folder_is_accepted(
    tmp_path: Path, make_tiny_checkpoint: MakeCheckpoint, make_tiny_unet: Callable[..., Any]
) -> None:
    flat = make_tiny_checkpoint(tmp_path / "flat", flat=True)
    assert sorted(p.name for p in flat.iterdir()) == [
        "config.json",
        "diffusion_pytorch_model.safetensors",
        "scheduler_config.json",
    ]
    info = validate_checkpoint_dir(flat)
    assert info.num_class_embeds is None
    assert info.num_parameters == sum(p.numel() for p in make_tiny_unet().parameters())


def test_content_hash_is_stable_and_covers_the_weights(good: Path, tmp_path: Path) -> None:
    first = validate_checkpoint_dir(good).content_hash
    (good / "model_index.json").unlink()  # optional: not part of the model
    assert validate_checkpoint_dir(good).content_hash == first
    state = load_file(good / WEIGHTS)
    name = sorted(state)[0]
    state[name] = state[name] + 1.0
    save_file(state, good / WEIGHTS)
    assert validate_checkpoint_dir(good).content_hash != first


def test_info_round_trips_through_json(good: Path) -> None:
    info = validate_checkpoint_dir(good)
    assert CheckpointInfo.from_json(json.loads(json.dumps(info.to_json()))) == info


@pytest.mark.parametrize("name", ["unet/diffusion_pytorch_model.bin", "model.ckpt", "scheduler/x.pt", "a.pth", "b.pkl"])
def test_pickle_files_are_refused_with_conversion_advice(good: Path, name: str) -> None:
    (good / name).write_bytes(b"\x80\x04pickle")
    with pytest.raises(InvalidCheckpoint, match="pickle") as err:
        validate_checkpoint_dir(good)
    assert name in str(err.value)
    assert "save_pretrained" in str(err.value) and "safe_serialization=True" in str(err.value)


def test_unparseable_config_names_file_and_error(good: Path) -> None:
    (good / "unet/config.json").write_text('{"sample_size": 8,')
    with pytest.raises(InvalidCheckpoint, match=r"unet/config\.json is not valid JSON: .*line 1"):
        validate_checkpoint_dir(good)


def test_folder_without_config_is_refused(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(InvalidCheckpoint, match=r"expected unet/config\.json .* or config\.json"):
        validate_checkpoint_dir(tmp_path / "empty")
    with pytest.raises(InvalidCheckpoint, match="does not exist"):
        validate_checkpoint_dir(tmp_path / "nowhere")


def test_other_model_class_is_refused(good: Path) -> None:
    edit_json(good / "unet/config.json", _class_name="UNet2DConditionModel")
    with pytest.raises(InvalidCheckpoint, match="'UNet2DConditionModel', not a 'UNet2DModel'"):
        validate_checkpoint_dir(good)


def test_learned_variance_model_is_refused(good: Path) -> None:
    edit_json(good / "unet/config.json", out_channels=2)
    with pytest.raises(InvalidCheckpoint, match="out_channels"):
        validate_checkpoint_dir(good)


def test_invalid_architecture_is_refused(good: Path) -> None:
    edit_json(good / "unet/config.json", down_block_types=["DownBlock2D"])  # two up blocks, one down block
    with pytest.raises(InvalidCheckpoint, match="not describe a valid UNet2DModel"):
        validate_checkpoint_dir(good)


def test_missing_safetensors_is_refused(good: Path) -> None:
    (good / WEIGHTS).unlink()
    with pytest.raises(InvalidCheckpoint, match=r"missing weights unet/diffusion_pytorch_model\.safetensors"):
        validate_checkpoint_dir(good)


def test_corrupt_safetensors_is_refused(good: Path) -> None:
    (good / WEIGHTS).write_bytes(b"not a safetensors file")
    with pytest.raises(InvalidCheckpoint, match="not a readable safetensors file"):
        validate_checkpoint_dir(good)


def test_weights_of_another_shape_are_refused(good: Path) -> None:
    edit_json(good / "unet/config.json", block_out_channels=[8, 24])
    with pytest.raises(InvalidCheckpoint, match="shape mismatches") as err:
        validate_checkpoint_dir(good)
    assert "(16," in str(err.value) and "(24," in str(err.value)


def test_missing_and_unexpected_keys_are_named(good: Path) -> None:
    state = load_file(good / WEIGHTS)
    state["renamed.weight"] = state.pop("conv_in.weight")
    save_file(state, good / WEIGHTS)
    with pytest.raises(InvalidCheckpoint, match="1 missing keys") as err:
        validate_checkpoint_dir(good)
    assert "conv_in.weight" in str(err.value)
    assert "1 unexpected keys" in str(err.value) and "renamed.weight" in str(err.value)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_weights_are_refused_by_name(good: Path, bad: float) -> None:
    state = load_file(good / WEIGHTS)
    state["conv_out.bias"][0] = bad
    save_file(state, good / WEIGHTS)
    with pytest.raises(InvalidCheckpoint, match=r"'conv_out\.bias' contains NaN or infinite"):
        validate_checkpoint_dir(good)


def test_missing_scheduler_config_is_refused(good: Path) -> None:
    (good / "scheduler/scheduler_config.json").unlink()
    with pytest.raises(InvalidCheckpoint, match=r"missing scheduler/scheduler_config\.json"):
        validate_checkpoint_dir(good)


def test_unparseable_scheduler_config_is_refused(good: Path) -> None:
    (good / "scheduler/scheduler_config.json").write_text("[1, 2")
    with pytest.raises(InvalidCheckpoint, match=r"scheduler/scheduler_config\.json is not valid JSON"):
        validate_checkpoint_dir(good)
    (good / "scheduler/scheduler_config.json").write_text("[1, 2]")
    with pytest.raises(InvalidCheckpoint, match="must hold a JSON object, found list"):
        validate_checkpoint_dir(good)


def test_unusable_noise_schedule_is_refused(good: Path) -> None:
    edit_json(good / "scheduler/scheduler_config.json", beta_schedule="no-such-schedule")
    with pytest.raises(InvalidCheckpoint, match="usable noise schedule"):
        validate_checkpoint_dir(good)


def test_resolve_returns_local_folders(good: Path, tmp_path: Path) -> None:
    assert resolve_checkpoint(str(good), allow_downloads=False, cache_dir=tmp_path) == good
    with pytest.raises(InvalidCheckpoint, match="not a folder"):
        resolve_checkpoint(str(good / "model_index.json"), allow_downloads=True, cache_dir=tmp_path)


def test_resolve_refuses_hub_ids_unless_downloads_are_allowed(tmp_path: Path) -> None:
    with pytest.raises(InvalidCheckpoint, match="DIFFAUDIT_ALLOW_DOWNLOADS"):
        resolve_checkpoint("google/ddpm-cifar10-32", allow_downloads=False, cache_dir=tmp_path)


def test_resolve_downloads_only_json_and_safetensors(
    good: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[str, dict[str, Any]]] = []

    def fake_snapshot_download(repo_id: str, **kwargs: Any) -> str:
        calls.append((repo_id, kwargs))
        return str(good)

    monkeypatch.setattr("huggingface_hub.snapshot_download", fake_snapshot_download)
    path = resolve_checkpoint("someone/tiny-ddpm", allow_downloads=True, cache_dir=tmp_path / "hub")
    assert path == good
    assert calls == [
        ("someone/tiny-ddpm", {"allow_patterns": ["*.json", "*.safetensors"], "cache_dir": tmp_path / "hub"})
    ]
    assert validate_checkpoint_dir(path).num_class_embeds == 3


def test_scheduler_registry_covers_the_spec() -> None:
    assert sorted(SCHEDULERS) == sorted(get_args(SchedulerName))


def test_make_scheduler_keeps_the_checkpoints_noise_schedule(good: Path) -> None:
    config = load_checkpoint(good, torch.device("cpu")).scheduler_config
    training_betas = torch.linspace(config["beta_start"], config["beta_end"], TINY_TRAIN_STEPS)
    for name, (scheduler_class, _) in SCHEDULERS.items():
        scheduler = make_scheduler(name, config)
        assert type(scheduler) is scheduler_class
        assert scheduler.config["num_train_timesteps"] == TINY_TRAIN_STEPS
        assert torch.allclose(scheduler.betas, training_betas)  # type: ignore[attr-defined]
    assert type(make_scheduler("ddim", config)) is DDIMScheduler
    pndm = make_scheduler("pndm", config)
    assert isinstance(pndm, PNDMScheduler) and pndm.config["skip_prk_steps"] is True
    dpm = make_scheduler("dpmsolver++", config)
    assert isinstance(dpm, DPMSolverMultistepScheduler) and dpm.config["algorithm_type"] == "dpmsolver++"
    with pytest.raises(ValueError, match="unknown scheduler 'lms'"):
        make_scheduler("lms", config)
