"""Load a diffusers UNet2DModel checkpoint safely: safetensors only, every check explicit.

Accepted layouts:
- a pipeline folder written by `DDPMPipeline.save_pretrained` (model_index.json optional):
  unet/config.json, unet/diffusion_pytorch_model.safetensors, scheduler/scheduler_config.json;
- a flat folder: config.json, diffusion_pytorch_model.safetensors, scheduler_config.json.

Nothing is allocated before it is bounded: the configs' fields are checked first (configs.py), the
model is then built on torch's meta device (no memory) and run once there on one image of its size,
which proves it can run and counts its parameters against the limit; the weights file's tensor
names and shapes are compared with the model's from the safetensors header alone. Only then are
the weights read with `safetensors` and put into the model with `load_state_dict(strict=True)`,
so nothing is silently skipped, initialised at random or unpickled (UNet2DModel.from_pretrained
would fall back on .bin files and tolerate some missing keys).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import torch
from diffusers.models.unets.unet_2d import UNet2DModel
from safetensors import SafetensorError
from safetensors.torch import load_file

from diffaudit.checkpoints.configs import InvalidCheckpoint, check_scheduler_fields, check_unet_2d_config

PICKLE_SUFFIXES = (".bin", ".ckpt", ".pt", ".pth", ".pkl")
WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
UNET_CONFIG_NAME = "config.json"
SCHEDULER_CONFIG_NAME = "scheduler_config.json"
MODEL_INDEX_NAME = "model_index.json"
# The files a checkpoint consists of, at the top of its folder or one folder down; an upload keeps only these.
CHECKPOINT_FILE_NAMES = frozenset({MODEL_INDEX_NAME, UNET_CONFIG_NAME, SCHEDULER_CONFIG_NAME, WEIGHTS_NAME})
DOWNLOADS_SETTING = "DIFFAUDIT_ALLOW_DOWNLOADS"
MAX_NAMES_SHOWN = 5
MAX_HEADER_BYTES = 100_000_000  # safetensors' own limit on the JSON header
DEFAULT_MAX_PARAMETERS = 1_000_000_000
DEFAULT_MAX_IMAGE_SIDE = 1024


@dataclass(frozen=True)
class CheckpointLimits:
    """Resource bounds a checkpoint must keep before it is built (the service passes its settings)."""

    max_parameters: int = DEFAULT_MAX_PARAMETERS
    max_image_side: int = DEFAULT_MAX_IMAGE_SIDE


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

    def name(self, path: Path) -> str:
        """A file's path inside the checkpoint, as messages show it."""
        return path.relative_to(self.root).as_posix()


def pickle_files_message(names: Sequence[str]) -> str:
    return (
        f"checkpoint contains pickle-based file(s) {list(names[:MAX_NAMES_SHOWN])}, which can run code when loaded; "
        "only safetensors weights are accepted. Convert it: load it with diffusers "
        "(e.g. UNet2DModel.from_pretrained(folder) or DDPMPipeline.from_pretrained(folder)) and call "
        "save_pretrained(new_folder, safe_serialization=True), then upload new_folder without the pickle files."
    )


def checkpoint_members(paths: Sequence[PurePosixPath]) -> list[PurePosixPath]:
    """The entries of a checkpoint zip that a checkpoint consists of; refuses pickle files by name.

    Kept: configs, safetensors weights and model_index.json (CHECKPOINT_FILE_NAMES), at the top of
    the checkpoint folder or one folder down, below one folder wrapping all of them if there is one.
    """
    pickles = sorted(p.as_posix() for p in paths if p.suffix in PICKLE_SUFFIXES)
    if pickles:
        raise InvalidCheckpoint(pickle_files_message(pickles))
    candidates = [p for p in paths if p.name in CHECKPOINT_FILE_NAMES]
    wrapped = len({p.parts[0] for p in candidates}) == 1 and all(len(p.parts) > 1 for p in candidates)
    max_depth = 3 if wrapped else 2
    return [p for p in candidates if len(p.parts) <= max_depth]


def locate_files(path: Path) -> CheckpointFiles:
    """The checkpoint's files in the pipeline layout or the flat layout; refuses pickle files."""
    if not path.is_dir():
        raise InvalidCheckpoint("the checkpoint folder does not exist or is not a folder")
    pickles = sorted(p.relative_to(path).as_posix() for p in path.rglob("*") if p.suffix in PICKLE_SUFFIXES)
    if pickles:
        raise InvalidCheckpoint(pickle_files_message(pickles))
    if (path / "unet" / UNET_CONFIG_NAME).is_file():
        unet_dir, scheduler_config = path / "unet", path / "scheduler" / SCHEDULER_CONFIG_NAME
    elif (path / UNET_CONFIG_NAME).is_file():
        unet_dir, scheduler_config = path, path / SCHEDULER_CONFIG_NAME
    else:
        raise InvalidCheckpoint(
            f"no UNet config in the checkpoint: expected unet/{UNET_CONFIG_NAME} (a diffusers pipeline folder) "
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
        digest.update(files.name(path).encode() + b"\0")
        with path.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def square_sample_size(config: dict[str, Any], name: str, max_side: int | None) -> int:
    """UNet2DModel's sample_size as one int (square images only), at most `max_side` when given."""
    size = config.get("sample_size")
    if isinstance(size, list | tuple) and len(size) == 2 and size[0] == size[1]:
        size = size[0]
    if not isinstance(size, int) or isinstance(size, bool) or size < 1:
        raise InvalidCheckpoint(
            f"{name}: sample_size must be a positive integer (square images), found {json.dumps(size)}"
        )
    if max_side is not None and size > max_side:
        raise InvalidCheckpoint(
            f"{name}: sample_size {size:,} is larger than this server's limit of {max_side:,} pixels on a side"
        )
    return size


def unet_skeleton(config: dict[str, Any], sample_size: int, name: str) -> UNet2DModel:
    """The UNet2DModel on the meta device (no memory), after one forward pass there on one image.

    The pass runs shapes only; it refuses configs that build but cannot run (e.g. a sample_size the
    down- and up-sampling path cannot return to, or class conditioning without num_class_embeds).
    """
    what = f"{name} does not describe a UNet2DModel that can run on {sample_size}x{sample_size} images"
    labels = None if config.get("num_class_embeds") is None else torch.zeros(1, dtype=torch.long)
    try:
        with torch.device("meta"), torch.no_grad():
            unet = UNet2DModel.from_config(config)
            image = torch.empty(1, unet.config["in_channels"], sample_size, sample_size)
            unet(image, torch.zeros(1, dtype=torch.long), class_labels=labels)
    except (TypeError, ValueError, KeyError, IndexError, ZeroDivisionError, RuntimeError) as exc:
        raise InvalidCheckpoint(f"{what}: {exc}") from exc
    return unet.eval()


def check_parameter_count(num_parameters: int, limits: CheckpointLimits | None) -> None:
    if limits is not None and num_parameters > limits.max_parameters:
        raise InvalidCheckpoint(
            f"the UNet has {num_parameters:,} parameters, more than this server's limit of "
            f"{limits.max_parameters:,}; upload a smaller model"
        )


def read_safetensors_shapes(files: CheckpointFiles) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape from the weights file's JSON header, without reading any tensor."""
    unreadable = f"{files.name(files.weights)} is not a readable safetensors file"
    size = files.weights.stat().st_size
    with files.weights.open("rb") as f:
        header_bytes = int.from_bytes(f.read(8), "little")
        if size < 8 or header_bytes > min(size - 8, MAX_HEADER_BYTES):
            raise InvalidCheckpoint(f"{unreadable}: its header length is invalid")
        try:
            header = json.loads(f.read(header_bytes))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise InvalidCheckpoint(f"{unreadable}: its header is not JSON") from exc
    if not isinstance(header, dict):
        raise InvalidCheckpoint(f"{unreadable}: its header is not a JSON object")
    shapes: dict[str, tuple[int, ...]] = {}
    for key, entry in header.items():
        if key == "__metadata__":
            continue
        shape = entry.get("shape") if isinstance(entry, dict) else None
        if not isinstance(shape, list) or not all(
            isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in shape
        ):
            raise InvalidCheckpoint(f"{unreadable}: tensor {key!r} has no valid shape")
        shapes[key] = tuple(shape)
    return shapes


def check_weights_match(expected: dict[str, tuple[int, ...]], found: dict[str, tuple[int, ...]]) -> None:
    """The weights' tensor names and shapes are the model's, or InvalidCheckpoint naming the differences."""
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    mismatched = sorted(
        f"{k}: weights {found[k]} vs config {expected[k]}"
        for k in set(expected) & set(found)
        if found[k] != expected[k]
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


def read_weights(files: CheckpointFiles) -> dict[str, torch.Tensor]:
    """The safetensors state dict, refusing NaN or infinite values."""
    name = files.name(files.weights)
    try:
        state = load_file(files.weights)
    except SafetensorError as exc:
        raise InvalidCheckpoint(f"{name} is not a readable safetensors file: {exc}") from exc
    for key, tensor in state.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise InvalidCheckpoint(f"{name}: tensor {key!r} contains NaN or infinite values")
    return state


def load_weights(skeleton: UNet2DModel, state: dict[str, torch.Tensor]) -> UNet2DModel:
    """The meta-device model with the weights as its tensors (cast to the model's dtypes), strictly."""
    dtypes = {key: tensor.dtype for key, tensor in skeleton.state_dict().items()}
    skeleton.load_state_dict({key: tensor.to(dtypes[key]) for key, tensor in state.items()}, strict=True, assign=True)
    return skeleton


def check_scheduler_config(config: dict[str, Any], name: str) -> None:
    """The scheduler config's fields are in range and build the schedulers the sampler uses."""
    from diffaudit.checkpoints.schedulers import make_scheduler

    check_scheduler_fields(config, name)
    try:
        make_scheduler("ddim", config)
    except (TypeError, ValueError, KeyError, NotImplementedError) as exc:
        raise InvalidCheckpoint(f"{name} does not describe a usable noise schedule: {exc}") from exc


def read_checkpoint(path: Path, limits: CheckpointLimits | None) -> Checkpoint:
    """Every check, each before anything it bounds is allocated, then the model with its weights (on the CPU)."""
    files = locate_files(path)
    unet_config = read_json_object(files.unet_config, files.root)
    scheduler_config = read_json_object(files.scheduler_config, files.root)
    unet_name = files.name(files.unet_config)
    check_unet_2d_config(unet_config, unet_name)
    sample_size = square_sample_size(unet_config, unet_name, None if limits is None else limits.max_image_side)
    check_scheduler_config(scheduler_config, files.name(files.scheduler_config))
    skeleton = unet_skeleton(unet_config, sample_size, unet_name)
    num_parameters = sum(p.numel() for p in skeleton.parameters())
    check_parameter_count(num_parameters, limits)
    expected = {key: tuple(tensor.shape) for key, tensor in skeleton.state_dict().items()}
    check_weights_match(expected, read_safetensors_shapes(files))
    unet = load_weights(skeleton, read_weights(files))
    info = CheckpointInfo(
        content_hash=content_hash(files),
        num_parameters=num_parameters,
        sample_size=sample_size,
        in_channels=int(unet.config["in_channels"]),
        out_channels=int(unet.config["out_channels"]),
        num_class_embeds=unet.config["num_class_embeds"],
        prediction_type=str(scheduler_config.get("prediction_type", "epsilon")),
        num_train_timesteps=int(scheduler_config.get("num_train_timesteps", 1000)),
        scheduler_class=scheduler_config.get("_class_name"),
    )
    return Checkpoint(unet=unet.eval(), scheduler_config=scheduler_config, info=info)


def validate_checkpoint_dir(path: Path, limits: CheckpointLimits | None = None) -> CheckpointInfo:
    """Check a checkpoint folder completely (layout, configs, limits, weights) and describe it.

    `limits` default to CheckpointLimits(); the service passes the server's.
    """
    return read_checkpoint(path, limits or CheckpointLimits()).info


def load_checkpoint(path: Path, device: torch.device, limits: CheckpointLimits | None = None) -> Checkpoint:
    """The validated checkpoint with its UNet in eval mode on `device`.

    Without `limits`, parameters and image size are not bounded (a stored checkpoint was bounded
    when it was uploaded); every other check runs.
    """
    checkpoint = read_checkpoint(path, limits)
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
