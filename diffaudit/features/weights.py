"""Weights files: read only from the operator's weights folder, hashed, loaded as plain state dicts.

A spec names weights relative to the folder (`weights_dir`, the worker's DIFFAUDIT_WEIGHTS_DIR setting);
nothing outside it is read, and nothing is downloaded. `.safetensors` is preferred; `.pth`/`.pt`/`.bin` go
through `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Any

import torch
from torch import nn

from diffaudit.errors import InvalidInput

HUB_PREFIX = "hf-hub:"
DOWNLOADS_SETTING = "DIFFAUDIT_ALLOW_DOWNLOADS"
WEIGHTS_DIR_SETTING = "DIFFAUDIT_WEIGHTS_DIR"
WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")


class InvalidWeights(InvalidInput):
    """The weights cannot be used (missing, unreadable, remote, or not for this model); the message says what to fix."""


def seeded(build: Callable[[], nn.Module], seed: int) -> nn.Module:
    """Call `build` with the CPU torch RNG seeded, leaving the global RNG state untouched."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


def local_weights_path(weights: str | Path, *, weights_dir: Path | None = None) -> Path:
    """The file named `weights` inside the operator's weights folder, or InvalidWeights saying what is wrong.

    Names are relative to `weights_dir` (None: no weights files are allowed). An absolute name, a '..', a symlink
    leaving the folder and a missing file get the same message, which never tells whether a file exists elsewhere.
    """
    text = str(weights)
    if text.startswith(HUB_PREFIX) or re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", text):
        raise InvalidWeights(
            f"weights {text!r} is a remote reference; weights are read only from the worker's weights folder "
            f"(for a timm hub model use the extractor 'timm:hf-hub:<repo>' with {DOWNLOADS_SETTING}=1)"
        )
    if PurePosixPath(text).suffix.lower() not in WEIGHT_SUFFIXES:
        raise InvalidWeights(f"weights {text!r} has an unknown format; use one of {list(WEIGHT_SUFFIXES)}")
    unavailable = InvalidWeights(
        f"weights {text!r} is not a file of the weights folder; name a file relative to that folder (the operator "
        f"provides the folder with {WEIGHTS_DIR_SETTING}; without it no weights files can be used)"
    )
    name = PurePosixPath(text)
    if weights_dir is None or name.is_absolute() or "\\" in text or any(part == ".." for part in name.parts):
        raise unavailable
    try:
        root = weights_dir.resolve()
        path = (root / name).resolve()
        if not path.is_relative_to(root) or not path.is_file():
            raise unavailable
    except (OSError, ValueError) as exc:  # a name the file system cannot take (too long, a NUL byte, a loop)
        raise unavailable from exc
    return path


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from .safetensors (safetensors) or .pth/.pt/.bin (torch.load, weights_only=True)."""
    try:
        state_dict = _load_tensors(path)
    except Exception as exc:  # a damaged or foreign file can fail in many ways; all mean the same to the user
        raise InvalidWeights(
            f"weights file {path.name!r} is not a readable {path.suffix} weights file ({type(exc).__name__}); "
            f"save weights with safetensors.torch.save_file(model.state_dict(), path)"
        ) from exc
    if not isinstance(state_dict, dict) or not all(isinstance(v, torch.Tensor) for v in state_dict.values()):
        raise InvalidWeights(
            f"weights file {path.name!r} holds a {type(state_dict).__name__} that is not a state dict of tensors; "
            f"save model.state_dict() itself, not a training checkpoint around it"
        )
    return state_dict


def _load_tensors(path: Path) -> Any:
    if path.suffix.lower() == ".safetensors":
        from safetensors.torch import load_file

        return load_file(path, device="cpu")
    return torch.load(path, map_location="cpu", weights_only=True)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def state_dict_sha256(network: nn.Module) -> str:
    """sha256 over parameter names, dtypes, shapes and values (for weights that did not come from a local file)."""
    digest = hashlib.sha256()
    for key, tensor in sorted(network.state_dict().items()):
        digest.update(f"{key}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def short_message(exc: BaseException, limit: int = 400) -> str:
    """An exception's text on one line, cut at `limit` characters (state-dict errors list every key)."""
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[:limit] + " ..."
