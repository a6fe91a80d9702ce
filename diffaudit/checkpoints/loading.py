"""Load a diffusers UNet2DModel checkpoint safely: safetensors only, every check explicit.

Accepted layouts:
- a pipeline folder written by `DDPMPipeline.save_pretrained` (model_index.json optional):
  unet/config.json, unet/diffusion_pytorch_model.safetensors, scheduler/scheduler_config.json;
- a flat folder: config.json, diffusion_pytorch_model.safetensors, scheduler_config.json.

The model is built from its config and the weights are read with `safetensors` and loaded
with `load_state_dict(strict=True)`, so nothing is silently skipped, initialised at random or
unpickled (UNet2DModel.from_pretrained would fall back on .bin files and tolerate some
missing keys).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers.models.unets.unet_2d import UNet2DModel
from safetensors import SafetensorError
from safetensors.torch import load_file

from diffaudit.errors import InvalidInput

PICKLE_SUFFIXES = (".bin", ".ckpt", ".pt", ".pth", ".pkl")
WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
UNET_CONFIG_NAME = "config.json"
SCHEDULER_CONFIG_NAME = "scheduler_config.json"
DOWNLOADS_SETTING = "DIFFAUDIT_ALLOW_DOWNLOADS"
MAX_NAMES_SHOWN = 5


class InvalidCheckpoint(InvalidInput):
    """The checkpoint cannot be used; the message tells the user what to fix."""


@dataclass(frozen=True)
class CheckpointInfo:
    """What the checks established about a checkpoint, JSON-able."""

    content_hash: str
    num_parameters: int
    sample_size: int
    in_channels: int
    out_channels: int
    num_class_embeds: int | None
    prediction_type: str
    num_train_timesteps: int
    scheduler_class: str | None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CheckpointInfo:
        return cls(**data)


@dataclass
class Checkpoint:
    """A loaded checkpoint: the UNet (eval mode, on its device) and the scheduler config it was trained with."""

    unet: UNet2DModel
    scheduler_config: dict[str, Any]
    info: CheckpointInfo


@dataclass(frozen=True)
class CheckpointFiles:
    """The three files a checkpoint is made of, wherever the layout puts them."""

    root: Path
    unet_config: Path
    weights: Path
    scheduler_config: Path


def locate_files(path: Path) -> CheckpointFiles:
    """The checkpoint's files in the pipeline layout or the flat layout; refuses pickle files."""
    if not path.is_dir():
        raise InvalidCheckpoint(f"checkpoint folder {path} does not exist or is not a folder")
    pickles = sorted(p.relative_to(path).as_posix() for p in path.rglob("*") if p.suffix in PICKLE_SUFFIXES)
    if pickles:
        raise InvalidCheckpoint(
            f"checkpoint contains pickle-based file(s) {pickles[:MAX_NAMES_SHOWN]}, which can run code when loaded; "
            "only safetensors weights are accepted. Convert it: load it with diffusers "
            "(e.g. UNet2DModel.from_pretrained(folder) or DDPMPipeline.from_pretrained(folder)) and call "
            "save_pretrained(new_folder, safe_serialization=True), then upload new_folder without the pickle files."
        )
    if (path / "unet" / UNET_CONFIG_NAME).is_file():
        unet_dir, scheduler_config = path / "unet", path / "scheduler" / SCHEDULER_CONFIG_NAME
    elif (path / UNET_CONFIG_NAME).is_file():
        unet_dir, scheduler_config = path, path / SCHEDULER_CONFIG_NAME
    else:
        raise InvalidCheckpoint(
            f"no UNet config in {path}: expected unet/{UNET_CONFIG_NAME} (a diffusers pipeline folder) "
            f"or {UNET_CONFIG_NAME} (a flat UNet folder)"
        )
    weights = unet_dir / WEIGHTS_NAME
    if not weights.is_file():
        raise InvalidCheckpoint(
            f"missing weights {weights.relative_to(path).as_posix()}: the UNet weights must be one safetensors file "
            "(save with save_pretrained(folder, safe_serialization=True))"
        )
    return CheckpointFiles(
        root=path, unet_config=unet_dir / UNET_CONFIG_NAME, weights=weights, scheduler_config=scheduler_config
    )


def read_json_object(path: Path, root: Path) -> dict[str, Any]:
    """A JSON file that must hold an object; errors name the file and the JSON error."""
    name = path.relative_to(root).as_posix()
    if not path.is_file():
        raise InvalidCheckpoint(f"missing {name}")
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidCheckpoint(f"{name} is not valid JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise InvalidCheckpoint(f"{name} must hold a JSON object, found {type(value).__name__}")
    return value


def content_hash(files: CheckpointFiles) -> str:
    """sha256 over the sorted relative paths and bytes of the files the model is made of."""
    digest = hashlib.sha256()
    for path in sorted((files.unet_config, files.weights, files.scheduler_config)):
        digest.update(path.relative_to(files.root).as_posix().encode() + b"\0")
        with path.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def square_sample_size(config: dict[str, Any]) -> int:
    """UNet2DModel's sample_size as one int (square images only)."""
    size = config.get("sample_size")
    if isinstance(size, (list, tuple)) and len(size) == 2 and size[0] == size[1]:
        size = size[0]
    if not isinstance(size, int) or size < 1:
        raise InvalidCheckpoint(f"config.json: sample_size must be a positive int (square images), found {size!r}")
    return size


def build_unet(config: dict[str, Any]) -> UNet2DModel:
    """An UNet2DModel with random weights from the config, or InvalidCheckpoint saying why not."""
    class_name = config.get("_class_name")
    if class_name != UNet2DModel.__name__:
        raise InvalidCheckpoint(
            f"config.json describes a {class_name!r}, not a 'UNet2DModel': only unconditional or "
            "class-conditional pixel-space UNet2DModel checkpoints are supported"
        )
    if config.get("out_channels") != config.get("in_channels"):
        raise InvalidCheckpoint(
            f"config.json: out_channels ({config.get('out_channels')}) must equal in_channels "
            f"({config.get('in_channels')}); models predicting a learned variance are not supported"
        )
    try:
        return UNet2DModel.from_config(config)
    except (TypeError, ValueError, KeyError) as exc:
        raise InvalidCheckpoint(f"config.json does not describe a valid UNet2DModel: {exc}") from exc


def read_weights(files: CheckpointFiles) -> dict[str, torch.Tensor]:
    """The safetensors state dict, refusing NaN or infinite values."""
    name = files.weights.relative_to(files.root).as_posix()
    try:
        state = load_file(files.weights)
    except (SafetensorError, OSError) as exc:
        raise InvalidCheckpoint(f"{name} is not a readable safetensors file: {exc}") from exc
    for key, tensor in state.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise InvalidCheckpoint(f"{name}: tensor {key!r} contains NaN or infinite values")
    return state


def load_weights(unet: UNet2DModel, state: dict[str, torch.Tensor]) -> None:
    """load_state_dict(strict=True), reporting missing/unexpected keys and shape mismatches by name."""
    expected = unet.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = sorted(
        f"{k}: weights {tuple(state[k].shape)} vs config {tuple(expected[k].shape)}"
        for k in set(expected) & set(state)
        if state[k].shape != expected[k].shape
    )
    problems = [
        f"{len(names)} {what} (first: {names[:MAX_NAMES_SHOWN]})"
        for what, names in (
            ("missing keys", missing),
            ("unexpected keys", unexpected),
            ("shape mismatches", mismatched),
        )
        if names
    ]
    if problems:
        raise InvalidCheckpoint(
            "weights do not match config.json: " + "; ".join(problems) + ". Check that config.json and the "
            "safetensors file come from the same model."
        )
    unet.load_state_dict(state, strict=True)


def check_scheduler_config(config: dict[str, Any]) -> None:
    """The scheduler config must build the schedulers the sampler uses."""
    from diffaudit.checkpoints.schedulers import make_scheduler

    try:
        make_scheduler("ddim", config)
    except (TypeError, ValueError, KeyError, NotImplementedError) as exc:
        raise InvalidCheckpoint(f"scheduler_config.json does not describe a usable noise schedule: {exc}") from exc


def read_checkpoint(path: Path) -> Checkpoint:
    """Every check, then the model with its weights (on the CPU)."""
    files = locate_files(path)
    unet_config = read_json_object(files.unet_config, files.root)
    scheduler_config = read_json_object(files.scheduler_config, files.root)
    sample_size = square_sample_size(unet_config)
    check_scheduler_config(scheduler_config)
    unet = build_unet(unet_config)
    load_weights(unet, read_weights(files))
    info = CheckpointInfo(
        content_hash=content_hash(files),
        num_parameters=sum(p.numel() for p in unet.parameters()),
        sample_size=sample_size,
        in_channels=int(unet.config["in_channels"]),
        out_channels=int(unet.config["out_channels"]),
        num_class_embeds=unet.config["num_class_embeds"],
        prediction_type=str(scheduler_config.get("prediction_type", "epsilon")),
        num_train_timesteps=int(scheduler_config.get("num_train_timesteps", 1000)),
        scheduler_class=scheduler_config.get("_class_name"),
    )
    return Checkpoint(unet=unet.eval(), scheduler_config=scheduler_config, info=info)


def validate_checkpoint_dir(path: Path) -> CheckpointInfo:
    """Check a checkpoint folder completely (layout, configs, weights) and describe it."""
    return read_checkpoint(path).info


def load_checkpoint(path: Path, device: torch.device) -> Checkpoint:
    """The validated checkpoint with its UNet in eval mode on `device`."""
    checkpoint = read_checkpoint(path)
    checkpoint.unet.to(device)  # type: ignore[arg-type]  # diffusers wraps Module.to; mypy misreads it
    return checkpoint


def resolve_checkpoint(ref: str, *, allow_downloads: bool, cache_dir: Path) -> Path:
    """A local checkpoint folder, or a Hugging Face hub id downloaded (json + safetensors only) when allowed."""
    local = Path(ref).expanduser()
    if local.is_dir():
        return local
    if local.exists() or ref.startswith((".", "/", "~")):
        raise InvalidCheckpoint(f"checkpoint {ref!r} is not a folder")
    if not allow_downloads:
        raise InvalidCheckpoint(
            f"checkpoint {ref!r} is not a local folder, and downloading it from the Hugging Face hub is disabled; "
            f"set {DOWNLOADS_SETTING}=true to allow downloads, or give the path of a local folder"
        )
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError

    try:
        return Path(snapshot_download(ref, allow_patterns=["*.json", "*.safetensors"], cache_dir=cache_dir))
    except (RepositoryNotFoundError, RevisionNotFoundError) as exc:
        raise InvalidCheckpoint(
            f"checkpoint {ref!r} is neither a local folder nor a Hugging Face hub model: {exc}"
        ) from exc
