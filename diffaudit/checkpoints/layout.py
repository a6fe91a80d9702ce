"""Which kind of checkpoint a folder holds, from its layout, and where each component's files are.

Kinds (each a diffusers `save_pretrained` layout, safetensors only):
- `pixel-unet`: a UNet2DModel denoising images (`unet/` + `scheduler/`, or a flat folder), including
  ADM-style learned variance (out_channels = 2 * in_channels);
- `latent-unet`: a UNet2DModel denoising the latents of an autoencoder: a VQModel in `vqvae/`
  (LDMPipeline's layout) or an AutoencoderKL in `vae/`;
- `dit`: a class-conditional DiTTransformer2DModel (or Transformer2DModel, as DiTPipeline saves it) in
  `transformer/`, with its autoencoder in `vae/`.

The components are model_index.json's entries when it lists any, the folders holding a config
otherwise. A component diffaudit does not use (text_encoder/, safety_checker/, ...) is refused by name:
silently ignoring it would audit a different model than the one the user trained.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKL
from diffusers.models.autoencoders.vq_model import VQModel
from diffusers.models.transformers.dit_transformer_2d import DiTTransformer2DModel
from diffusers.models.transformers.transformer_2d import Transformer2DModel
from diffusers.models.unets.unet_2d import UNet2DModel

from diffaudit.checkpoints.configs import InvalidCheckpoint

Kind = Literal["pixel-unet", "latent-unet", "dit"]
KINDS: tuple[Kind, ...] = ("pixel-unet", "latent-unet", "dit")
PICKLE_SUFFIXES = (".bin", ".ckpt", ".pt", ".pth", ".pkl")
WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
CONFIG_NAME = "config.json"
SCHEDULER_CONFIG_NAME = "scheduler_config.json"
MODEL_INDEX_NAME = "model_index.json"
SCHEDULER_FOLDER = "scheduler"
MAX_NAMES_SHOWN = 5
MAX_LABELS = 1_000_000
MAX_LABEL_CHARS = 200

AUTOENCODERS: tuple[type, ...] = (AutoencoderKL, VQModel)
# folder -> the classes it may hold
COMPONENT_CLASSES: dict[str, tuple[type, ...]] = {
    "unet": (UNet2DModel,),
    "transformer": (DiTTransformer2DModel, Transformer2DModel),
    "vae": AUTOENCODERS,
    "vqvae": AUTOENCODERS,
}
DENOISER_FOLDERS = ("unet", "transformer")
AUTOENCODER_FOLDERS = ("vae", "vqvae")


def supported_components() -> str:
    """The components diffaudit uses, for messages."""
    parts = [f"{folder}/ ({', '.join(c.__name__ for c in classes)})" for folder, classes in COMPONENT_CLASSES.items()]
    return "; ".join([*parts, f"{SCHEDULER_FOLDER}/ (a diffusers scheduler config)"])


@dataclass(frozen=True)
class ComponentFiles:
    """One model component: its folder ("" in a flat layout), config and weights."""

    folder: str
    config: Path
    weights: Path


@dataclass(frozen=True)
class Layout:
    """A checkpoint's kind and files."""

    root: Path
    kind: Kind
    denoiser: ComponentFiles
    autoencoder: ComponentFiles | None
    scheduler_config: Path
    model_index: dict[str, Any] | None

    def name(self, path: Path) -> str:
        """A file's path inside the checkpoint, as messages show it."""
        return path.relative_to(self.root).as_posix()

    def model_files(self) -> list[Path]:
        """The files the model is made of (what its content hash covers), sorted."""
        files = [self.denoiser.config, self.denoiser.weights, self.scheduler_config]
        if self.autoencoder is not None:
            files += [self.autoencoder.config, self.autoencoder.weights]
        return sorted(files)


def pickle_files_message(names: list[str]) -> str:
    return (
        f"checkpoint contains pickle-based file(s) {names[:MAX_NAMES_SHOWN]}, which can run code when loaded; "
        "only safetensors weights are accepted. Convert it: load it with diffusers "
        "(e.g. UNet2DModel.from_pretrained(folder) or DDPMPipeline.from_pretrained(folder)) and call "
        "save_pretrained(new_folder, safe_serialization=True), then upload new_folder without the pickle files."
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


def declared_components(model_index: dict[str, Any]) -> dict[str, str | None]:
    """model_index.json's components: folder -> class name (entries [library, class]; [null, null] is absent)."""
    components: dict[str, str | None] = {}
    for key, value in model_index.items():
        if key.startswith("_") or not isinstance(value, list) or len(value) != 2:
            continue
        if value[1] is not None:
            components[key] = value[1] if isinstance(value[1], str) else None
    return components


def folder_components(path: Path) -> dict[str, str | None]:
    """The folders holding a config, when there is no model_index.json (their class is read from the config)."""
    return {
        p.name: None
        for p in sorted(path.iterdir())
        if p.is_dir() and ((p / CONFIG_NAME).is_file() or (p / SCHEDULER_CONFIG_NAME).is_file())
    }


def check_known(components: dict[str, str | None]) -> None:
    """Refuse a component diffaudit does not use, or a class its folder cannot hold, naming it."""
    unused = sorted(set(components) - set(COMPONENT_CLASSES) - {SCHEDULER_FOLDER})
    if unused:
        raise InvalidCheckpoint(
            f"the checkpoint has component(s) {unused} that diffaudit does not use; it supports "
            f"{supported_components()}. Remove them (or upload a folder of the supported components only)"
        )
    for folder, class_name in components.items():
        classes = COMPONENT_CLASSES.get(folder, ())
        if class_name is not None and classes and class_name not in {c.__name__ for c in classes}:
            raise InvalidCheckpoint(
                f"model_index.json: {folder} is a {class_name!r}, which diffaudit does not support; it supports "
                f"{supported_components()}"
            )


def kind_of(denoiser: str, autoencoder: str | None) -> Kind:
    if denoiser == "unet":
        return "pixel-unet" if autoencoder is None else "latent-unet"
    if autoencoder is None:
        raise InvalidCheckpoint(
            "transformer/ holds a DiT, which denoises latents: add its AutoencoderKL in vae/ (DiTPipeline's layout)"
        )
    return "dit"


def only_one(found: list[str], what: str) -> str | None:
    if len(found) > 1:
        raise InvalidCheckpoint(f"the checkpoint has {len(found)} {what}s ({found}); keep one")
    return found[0] if found else None


def component_files(root: Path, folder: str) -> ComponentFiles:
    directory = root / folder
    weights = directory / WEIGHTS_NAME
    if not weights.is_file():
        raise InvalidCheckpoint(
            f"missing weights {weights.relative_to(root).as_posix()}: the {folder or 'UNet'} weights must be one "
            "safetensors file (save with save_pretrained(folder, safe_serialization=True))"
        )
    return ComponentFiles(folder=folder, config=directory / CONFIG_NAME, weights=weights)


def refuse_pickles(path: Path) -> None:
    pickles = sorted(p.relative_to(path).as_posix() for p in path.rglob("*") if p.suffix in PICKLE_SUFFIXES)
    if pickles:
        raise InvalidCheckpoint(pickle_files_message(pickles))


def detect_layout(path: Path) -> Layout:
    """The checkpoint's kind and files: model_index.json's components when present, else its folders."""
    if not path.is_dir():
        raise InvalidCheckpoint("the checkpoint folder does not exist or is not a folder")
    refuse_pickles(path)
    model_index = read_json_object(path / MODEL_INDEX_NAME, path) if (path / MODEL_INDEX_NAME).is_file() else None
    # model_index.json's components; its folders when it lists none (or is absent)
    components = (declared_components(model_index) if model_index is not None else {}) or folder_components(path)
    if not components and (path / CONFIG_NAME).is_file():  # a flat UNet folder
        return Layout(path, "pixel-unet", component_files(path, ""), None, path / SCHEDULER_CONFIG_NAME, None)
    check_known(components)
    denoiser = only_one([f for f in DENOISER_FOLDERS if f in components], "denoiser")
    autoencoder = only_one([f for f in AUTOENCODER_FOLDERS if f in components], "autoencoder")
    if denoiser is None:
        raise InvalidCheckpoint(
            f"no denoiser in the checkpoint: expected unet/{CONFIG_NAME} (a diffusers pipeline folder), "
            f"transformer/{CONFIG_NAME} (a DiT) or {CONFIG_NAME} (a flat UNet folder)"
        )
    return Layout(
        root=path,
        kind=kind_of(denoiser, autoencoder),
        denoiser=component_files(path, denoiser),
        autoencoder=None if autoencoder is None else component_files(path, autoencoder),
        scheduler_config=path / SCHEDULER_FOLDER / SCHEDULER_CONFIG_NAME,
        model_index=model_index,
    )


def component_class(config: dict[str, Any], folder: str, name: str) -> type:
    """The class a component's config names, when its folder may hold it; else InvalidCheckpoint listing them."""
    classes = COMPONENT_CLASSES[folder or "unet"]
    class_name = config.get("_class_name")
    for candidate in classes:
        if candidate.__name__ == class_name:
            return candidate
    expected = " or ".join(repr(c.__name__) for c in classes)
    raise InvalidCheckpoint(
        f"{name} describes a {class_name!r}, not a {expected}; diffaudit supports {supported_components()}"
    )


def read_id2label(model_index: dict[str, Any] | None, num_classes: int | None) -> dict[str, str] | None:
    """DiTPipeline's id2label of model_index.json (class index -> name), checked; None when absent."""
    labels = None if model_index is None else model_index.get("id2label")
    if labels is None:
        return None
    what = "model_index.json: id2label must map class indices to names"
    if not isinstance(labels, dict) or len(labels) > MAX_LABELS:
        raise InvalidCheckpoint(f'{what}, e.g. {{"0": "zero"}}')
    checked: dict[str, str] = {}
    for key, value in labels.items():
        if not (isinstance(key, str) and key.isdigit() and isinstance(value, str) and len(value) <= MAX_LABEL_CHARS):
            raise InvalidCheckpoint(f"{what} of at most {MAX_LABEL_CHARS} characters; found {key!r}: {value!r}"[:300])
        if num_classes is None or int(key) >= num_classes:
            raise InvalidCheckpoint(f"{what}: class {key} is not one of the model's {num_classes or 0} classes")
        checked[str(int(key))] = value
    return checked
