"""A checkpoint's configs are checked and its size bounded before anything is allocated."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import torch
from diffusers.models.unets.unet_2d import UNet2DModel
from diffusers.schedulers.scheduling_ddpm import DDPMScheduler

from diffaudit.archive import ArchiveLimits, extract_selected
from diffaudit.checkpoints import (
    CheckpointLimits,
    InvalidCheckpoint,
    checkpoint_members,
    load_checkpoint,
    validate_checkpoint_dir,
)

UNET_CONFIG = {
    "sample_size": 8,
    "in_channels": 1,
    "out_channels": 1,
    "block_out_channels": [8, 16],
    "layers_per_block": 1,
    "norm_num_groups": 4,
    "down_block_types": ["DownBlock2D", "AttnDownBlock2D"],
    "up_block_types": ["AttnUpBlock2D", "UpBlock2D"],
    "attention_head_dim": 4,
}


def save_checkpoint(folder: Path) -> UNet2DModel:
    """A tiny pipeline-layout checkpoint with seeded random weights; returns its UNet."""
    torch.manual_seed(0)
    unet = UNet2DModel(**UNET_CONFIG).eval()
    unet.save_pretrained(folder / "unet", safe_serialization=True)
    DDPMScheduler(num_train_timesteps=100).save_pretrained(folder / "scheduler")
    return unet


def edit_json(path: Path, **changes: Any) -> None:
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    save_checkpoint(tmp_path / "ckpt")
    return tmp_path / "ckpt"


UNET_CASES: dict[str, tuple[dict[str, Any], str]] = {
    "negative channels": ({"block_out_channels": [-8, 16]}, "block_out_channels is [-8, 16]; it must be a list"),
    "zero norm groups": ({"norm_num_groups": 0}, "norm_num_groups is 0; it must be an integer from 1"),
    "channels beyond any model": ({"block_out_channels": [100000, 200000]}, "each an integer from 1 to 65,536"),
    "channels not divisible by the groups": ({"block_out_channels": [6, 16]}, "divisible by norm_num_groups (4)"),
    "a boolean for channels": ({"in_channels": True, "out_channels": True}, "in_channels is true"),
    "a boolean for the image size": ({"sample_size": True}, "sample_size must be a positive integer"),
    "a string for the layers": ({"layers_per_block": "2"}, 'layers_per_block is "2"'),
    "an unknown block": ({"down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D"]}, "down_block_types is"),
    "attention heads wider than the block": ({"attention_head_dim": 32}, "attention_head_dim (32) is larger"),
    "an image size the UNet cannot return to": ({"sample_size": 9}, "that can run on 9x9 images"),
    "class embedding without classes": ({"class_embed_type": "timestep"}, "that can run on 8x8 images"),
}


@pytest.mark.parametrize("case", list(UNET_CASES))
def test_bad_unet_configs_are_refused_naming_the_field(folder: Path, no_real_model: None, case: str) -> None:
    changes, message = UNET_CASES[case]
    edit_json(folder / "unet/config.json", **changes)
    with pytest.raises(InvalidCheckpoint, match=r"unet/config\.json") as err:
        validate_checkpoint_dir(folder)
    assert message in str(err.value)


SCHEDULER_CASES: dict[str, tuple[dict[str, Any], str]] = {
    "1e10 training steps": (
        {"num_train_timesteps": 1e10},
        "num_train_timesteps is 10000000000.0; it must be an integer",
    ),
    "a boolean for the steps": ({"num_train_timesteps": True}, "num_train_timesteps is true"),
    "a negative beta": ({"beta_start": -0.1}, "beta_start is -0.1"),
    "betas of another length": (
        {"trained_betas": [0.1, 0.2]},
        "trained_betas has 2 values for num_train_timesteps 100",
    ),
}


@pytest.mark.parametrize("case", list(SCHEDULER_CASES))
def test_bad_scheduler_configs_are_refused_naming_the_field(folder: Path, case: str) -> None:
    changes, message = SCHEDULER_CASES[case]
    edit_json(folder / "scheduler/scheduler_config.json", **changes)
    with pytest.raises(InvalidCheckpoint, match="does not describe a usable noise schedule") as err:
        validate_checkpoint_dir(folder)
    assert message in str(err.value)


@pytest.mark.parametrize(
    ("channels", "message"),
    [([1024, 2048], "shape mismatches"), ([4096, 8192], "parameters, more than this server's limit of 1,000,000,000")],
)
def test_huge_configs_with_small_weights_are_refused_before_building(
    folder: Path, no_real_model: None, channels: list[int], message: str
) -> None:
    edit_json(folder / "unet/config.json", block_out_channels=channels)
    with pytest.raises(InvalidCheckpoint) as err:
        validate_checkpoint_dir(folder)
    assert message in str(err.value)


def test_parameters_are_counted_and_bounded_before_building(folder: Path, no_real_model: None) -> None:
    limit = 1000
    with pytest.raises(
        InvalidCheckpoint, match=r"the UNet has [\d,]+ parameters, more than this server's limit of 1,000"
    ):
        validate_checkpoint_dir(folder, CheckpointLimits(max_parameters=limit))


def test_image_size_is_bounded(folder: Path) -> None:
    edit_json(folder / "unet/config.json", sample_size=100000)
    with pytest.raises(InvalidCheckpoint, match="sample_size 100,000 is larger than this server's limit of 64"):
        validate_checkpoint_dir(folder, CheckpointLimits(max_image_side=64))


def test_weights_are_compared_from_the_header_without_reading_them(
    folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_tensor_reads(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("tensors were read before their names and shapes were compared")

    monkeypatch.setattr("diffaudit.checkpoints.loading.load_file", no_tensor_reads)
    edit_json(folder / "unet/config.json", block_out_channels=[8, 24], attention_head_dim=8)
    with pytest.raises(InvalidCheckpoint, match="shape mismatches"):
        validate_checkpoint_dir(folder)


def test_a_weights_file_with_a_broken_header_is_refused(folder: Path) -> None:
    weights = folder / "unet/diffusion_pytorch_model.safetensors"
    weights.write_bytes((10**12).to_bytes(8, "little") + b"{}")
    with pytest.raises(InvalidCheckpoint, match="not a readable safetensors file: its header length is invalid"):
        validate_checkpoint_dir(folder)


def test_the_loaded_unet_computes_what_the_saved_one_does(tmp_path: Path) -> None:
    saved = save_checkpoint(tmp_path / "ckpt")
    loaded = load_checkpoint(tmp_path / "ckpt", torch.device("cpu")).unet
    assert not any(t.is_meta for t in [*loaded.parameters(), *loaded.buffers()])
    assert all(p.dtype == torch.float32 for p in loaded.parameters())
    x, t = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(1)), torch.tensor([3, 70])
    with torch.no_grad():
        assert torch.equal(loaded(x, t).sample, saved(x, t).sample)


def test_only_checkpoint_files_are_kept_from_a_zip() -> None:
    paths = [
        PurePosixPath(p)
        for p in (
            "model/model_index.json",
            "model/unet/config.json",
            "model/unet/diffusion_pytorch_model.safetensors",
            "model/scheduler/scheduler_config.json",
            "model/junk.dat",
            "model/unet/notes.txt",
            "model/a/b/config.json",
            "README.md",
        )
    ]
    kept = {p.as_posix() for p in checkpoint_members(paths)}
    assert kept == {
        "model/model_index.json",
        "model/unet/config.json",
        "model/unet/diffusion_pytorch_model.safetensors",
        "model/scheduler/scheduler_config.json",
    }
    flat = [PurePosixPath(p) for p in ("config.json", "diffusion_pytorch_model.safetensors", "x/y/config.json")]
    assert [p.as_posix() for p in checkpoint_members(flat)] == ["config.json", "diffusion_pytorch_model.safetensors"]
    with pytest.raises(InvalidCheckpoint, match=r"pickle-based file\(s\) \['junk/optimizer.pt'\]"):
        checkpoint_members([*paths, PurePosixPath("junk/optimizer.pt")])


def test_entries_left_out_are_never_decompressed(folder: Path, tmp_path: Path) -> None:
    archive = tmp_path / "upload.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            zf.write(path, path.relative_to(folder).as_posix())
        zf.writestr("junk.dat", b"\0" * (4 << 20))  # more than the byte limit below, declared in the directory
    limits = ArchiveLimits(max_total_bytes=1 << 20)
    extraction = extract_selected(archive, tmp_path / "out", limits, checkpoint_members)
    assert extraction.left_out == ["junk.dat"]
    assert not (tmp_path / "out/junk.dat").exists()
    assert validate_checkpoint_dir(tmp_path / "out").num_parameters > 0
