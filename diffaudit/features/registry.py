"""The extractor registry: names -> extractors, with local weights or a seeded random init.

Weights are only ever read from local files (`.safetensors` preferred; `.pth`/`.pt`/`.bin`
through `torch.load(weights_only=True)`) inside the operator's weights folder (`weights_dir`, the
worker's DIFFAUDIT_WEIGHTS_DIR setting): a spec names them relative to it, and nothing outside it is
read. Their sha256 goes into the extractor's cache key. Without weights a network is initialised
from `seed` (the IRS supplement, Sec. 14, finds a randomly initialised Inception-v3 the most
diversity-preserving extractor). Nothing is downloaded, except a timm `hf-hub:` model when
the caller passes allow_downloads=True (the worker's DIFFAUDIT_ALLOW_DOWNLOADS setting).
DINOv2 and CLIP (diffaudit.features.vit) and inception-fid have their own modules; docs/extractors.md lists them all.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torchvision.models as tvm
from torch import nn

from diffaudit.device import pick_device
from diffaudit.errors import InvalidInput
from diffaudit.features.extractors import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    RANDOM_CNN_DIM,
    RANDOM_CNN_SIZE,
    Extractor,
    NetworkExtractor,
    PixelExtractor,
    random_cnn,
)
from diffaudit.features.inception_fid import FID_INPUT_SIZE, FID_POOL_DIM, INCEPTION_FID, create_inception_fid
from diffaudit.features.vit import VIT_INPUT_SIZE, VIT_MODELS, create_vit_extractor
from diffaudit.features.weights import (
    DOWNLOADS_SETTING,
    HUB_PREFIX,
    InvalidWeights,
    file_sha256,
    local_weights_path,
    read_state_dict,
    seeded,
    short_message,
    state_dict_sha256,
)

TIMM_PREFIX = "timm:"


class UnknownExtractor(InvalidInput):
    """No extractor has this name."""


@dataclass(frozen=True)
class TorchvisionModel:
    """A torchvision classifier and the layer of it used as the feature vector."""

    build: Callable[[], nn.Module]  # the full classifier, randomly initialised from the global torch RNG
    feature_network: Callable[[nn.Module], nn.Module]  # the full classifier cut at `layer`
    layer: str
    dim: int
    input_size: int = 224
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD


def _pooled_squeezenet(model: nn.Module) -> nn.Module:
    return nn.Sequential(model.get_submodule("features"), nn.AdaptiveAvgPool2d(1), nn.Flatten())


def _without_last_linear(model: nn.Module) -> nn.Module:
    classifier = model.get_submodule("classifier")
    assert isinstance(classifier, nn.Sequential)
    model.classifier = classifier[:-1]
    return model


def _without_head(attribute: str) -> Callable[[nn.Module], nn.Module]:
    def cut(model: nn.Module) -> nn.Module:
        setattr(model, attribute, nn.Identity())
        return model

    return cut


FC7_LAYER = "classifier without its last Linear: fc7 after ReLU"
TORCHVISION_MODELS: dict[str, TorchvisionModel] = {
    "squeezenet1_1": TorchvisionModel(
        lambda: tvm.squeezenet1_1(weights=None),
        _pooled_squeezenet,
        "features (after the last Fire module), global average pooled",
        512,
    ),
    "vgg16": TorchvisionModel(
        lambda: tvm.vgg16(weights=None),
        _without_last_linear,
        "classifier without its last Linear: fc7 after ReLU",
        4096,
    ),
    "alexnet": TorchvisionModel(
        lambda: tvm.alexnet(weights=None),
        _without_last_linear,
        "classifier without its last Linear: fc7 after ReLU",
        4096,
    ),
    "efficientnet_b7": TorchvisionModel(
        lambda: tvm.efficientnet_b7(weights=None),
        _without_head("classifier"),
        "avgpool: global average pool of the last conv stage (before dropout and the classifier)",
        2560,
    ),
    "inception_v3": TorchvisionModel(
        # aux_logits kept so torchvision's state dicts load strictly (the aux head does not run in eval mode);
        # transform_input=False because the [-1, 1] normalisation it performs is done here through mean/std.
        lambda: tvm.inception_v3(weights=None, aux_logits=True, init_weights=True, transform_input=False),
        _without_head("fc"),
        "avgpool: global average pool of Mixed_7c (before dropout and fc)",
        2048,
        input_size=299,
        mean=(0.5, 0.5, 0.5),
        std=(0.5, 0.5, 0.5),
    ),
    "resnet18": TorchvisionModel(
        lambda: tvm.resnet18(weights=None),
        _without_head("fc"),
        "avgpool: global average pool of layer4 (before fc)",
        512,
    ),
}


def available_extractors() -> list[str]:
    """Every fixed name; any timm model is also available as 'timm:<model_name>'."""
    return ["pixels", "random-cnn", *TORCHVISION_MODELS, INCEPTION_FID, *VIT_MODELS]


def create_extractor(
    name: str,
    *,
    weights: str | Path | None = None,
    seed: int = 0,
    device: torch.device | None = None,
    allow_downloads: bool = False,
    weights_dir: Path | None = None,
) -> Extractor:
    """The extractor called `name`, with weights named relative to `weights_dir` or (weights=None) seeded."""
    path = extractor_weights_path(name, weights, weights_dir=weights_dir, allow_downloads=allow_downloads)
    device = device or pick_device()
    if name == "pixels":
        return PixelExtractor()
    if name == "random-cnn":
        return NetworkExtractor(
            name=name,
            network=seeded(random_cnn, seed),
            dim=RANDOM_CNN_DIM,
            layer="last conv (no ReLU), 16 channels on a 4x4 grid, flattened",
            input_size=RANDOM_CNN_SIZE,
            mean=(0.5, 0.5, 0.5),
            std=(0.5, 0.5, 0.5),
            weights_sha256=None,
            seed=seed,
            device=device,
        )
    if name in TORCHVISION_MODELS:
        return _torchvision_extractor(name, path, seed, device)
    if name == INCEPTION_FID:
        return create_inception_fid(path, seed, device)
    if name in VIT_MODELS:
        return create_vit_extractor(name, path, seed, device)
    return _timm_extractor(name.removeprefix(TIMM_PREFIX), path, seed, device)


def extractor_weights_path(
    name: str, weights: str | Path | None, *, weights_dir: Path | None, allow_downloads: bool
) -> Path | None:
    """Check an extractor choice without building anything; returns its weights file (None without weights).

    Raises UnknownExtractor for a name no extractor has, InvalidWeights for weights it cannot use.
    """
    if name in ("pixels", "random-cnn"):
        _refuse_weights(name, weights)
        return None
    if name in TORCHVISION_MODELS or name == INCEPTION_FID or name in VIT_MODELS:
        return None if weights is None else local_weights_path(weights, weights_dir=weights_dir)
    if not name.startswith(TIMM_PREFIX):
        raise UnknownExtractor(
            f"unknown extractor {name!r}; choose one of {available_extractors()} or 'timm:<model_name>'"
        )
    import timm

    model_name = name.removeprefix(TIMM_PREFIX)
    if model_name.startswith(HUB_PREFIX):
        if not allow_downloads:
            raise InvalidWeights(
                f"{name} would download weights from the Hugging Face hub, and downloads are disabled; "
                f"set {DOWNLOADS_SETTING}=1 on the worker, or have the operator put the weights file in the "
                f"weights folder and use timm:<architecture> with that file as weights"
            )
        _refuse_weights(name, weights)
        return None
    if not timm.is_model(model_name):
        raise UnknownExtractor(f"timm has no model {model_name!r}; see timm.list_models()")
    return None if weights is None else local_weights_path(weights, weights_dir=weights_dir)


def extractor_dim(name: str, image_shape: tuple[int, ...]) -> int | None:
    """The feature dimension of a known extractor on images of shape (H, W, C), when known without building it
    (None for timm models)."""
    if name == "pixels":
        return math.prod(image_shape)
    if name == "random-cnn":
        return RANDOM_CNN_DIM
    if name in TORCHVISION_MODELS:
        return TORCHVISION_MODELS[name].dim
    if name == INCEPTION_FID:
        return FID_POOL_DIM
    if name in VIT_MODELS:
        return VIT_MODELS[name].dim
    return None


def extractor_input_size(name: str, image_shape: tuple[int, ...]) -> tuple[int, ...]:
    """The (H, W, C) shape a known extractor's network processes, from its registry entry (timm: its default
    pretrained config) without building it; `image_shape` for pixels and hub models."""
    if name == "random-cnn":
        return (RANDOM_CNN_SIZE, RANDOM_CNN_SIZE, 3)
    if name in TORCHVISION_MODELS:
        size = TORCHVISION_MODELS[name].input_size
        return (size, size, 3)
    if name == INCEPTION_FID:
        return (FID_INPUT_SIZE, FID_INPUT_SIZE, 3)
    if name in VIT_MODELS:
        return (VIT_INPUT_SIZE, VIT_INPUT_SIZE, 3)
    if name.startswith(TIMM_PREFIX) and not name.startswith(TIMM_PREFIX + HUB_PREFIX):
        from timm.models import get_pretrained_cfg

        cfg = get_pretrained_cfg(name.removeprefix(TIMM_PREFIX))
        if cfg is not None:
            channels, height, width = cfg.input_size
            return (height, width, channels)
    return image_shape


def _refuse_weights(name: str, weights: str | Path | None) -> None:
    if weights is not None:
        raise InvalidWeights(f"extractor {name!r} takes no weights; remove weights or choose a pretrained extractor")


def _torchvision_extractor(name: str, path: Path | None, seed: int, device: torch.device) -> Extractor:
    model = TORCHVISION_MODELS[name]
    state_dict = None if path is None else read_state_dict(path)  # a bad file is refused before the network is built
    network = seeded(model.build, seed)
    if path is not None and state_dict is not None:
        _load_strict(network, state_dict, f"weights file {path.name!r} does not fit torchvision's {name}")
    return NetworkExtractor(
        name=name,
        network=model.feature_network(network),
        dim=model.dim,
        layer=model.layer,
        input_size=model.input_size,
        mean=model.mean,
        std=model.std,
        weights_sha256=None if path is None else file_sha256(path),
        seed=seed,
        device=device,
    )


def _load_strict(network: nn.Module, state_dict: dict[str, torch.Tensor], problem: str) -> None:
    try:
        network.load_state_dict(state_dict, strict=True)
    except RuntimeError as exc:
        raise InvalidWeights(
            f"{problem}: {short_message(exc)}. Give the full state dict of that model (with its 1000-class head), "
            f"e.g. saved with safetensors.torch.save_file(model.state_dict(), path)"
        ) from exc


def _timm_extractor(model_name: str, path: Path | None, seed: int, device: torch.device) -> Extractor:
    import timm

    network: Any  # a timm model: pretrained_cfg, num_features and head_hidden_size are timm attributes
    weights_sha256 = None
    if model_name.startswith(HUB_PREFIX):
        network = timm.create_model(model_name, pretrained=True, num_classes=0)
        weights_sha256 = state_dict_sha256(network)
    elif path is None:
        network = seeded(lambda: timm.create_model(model_name, pretrained=False, num_classes=0), seed)
    else:
        network = _timm_from_file(model_name, path)
        weights_sha256 = file_sha256(path)
    cfg: dict[str, Any] = network.pretrained_cfg
    return NetworkExtractor(
        name=f"{TIMM_PREFIX}{model_name}",
        network=network,
        dim=int(getattr(network, "head_hidden_size", None) or network.num_features),
        layer="timm model with num_classes=0: its pooled pre-logits features",
        input_size=int(cfg["input_size"][-1]),
        mean=tuple(cfg["mean"]),
        std=tuple(cfg["std"]),
        weights_sha256=weights_sha256,
        seed=seed,
        device=device,
    )


def _timm_from_file(model_name: str, path: Path) -> nn.Module:
    """timm's own loading from a local file, after checking the file covers every weight of the model."""
    import timm

    state_dict = read_state_dict(path)
    skeleton = timm.create_model(model_name, pretrained=False, num_classes=0)
    missing = sorted(set(skeleton.state_dict()) - set(state_dict))
    if missing:
        raise InvalidWeights(
            f"weights file {path.name!r} lacks {len(missing)} weights of timm's {model_name} (e.g. {missing[:3]}); "
            f"give the state dict of timm.create_model({model_name!r})"
        )
    try:
        return timm.create_model(model_name, pretrained=True, num_classes=0, pretrained_cfg_overlay={"file": str(path)})
    except RuntimeError as exc:
        raise InvalidWeights(
            f"weights file {path.name!r} does not fit timm's {model_name}: {short_message(exc)}"
        ) from exc
