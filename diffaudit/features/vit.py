"""DINOv2 and CLIP image encoders through timm, from a local weights file or a seeded random initialisation.

DINOv2 (Oquab et al., "DINOv2: Learning Robust Visual Features without Supervision", arXiv 2304.07193), as FD-DINOv2
uses it (Stein et al., "Exposing flaws of generative model evaluation metrics and their unfair treatment of diffusion
models", arXiv 2306.04675; its code, dgm-eval, dgm_eval/models/dinov2.py): images resized to 224 x 224 with PIL's
bicubic filter (no crop), /255, ImageNet mean/std; features = the DINOv2 hub model's output, the CLS token after the
final LayerNorm (timm's vit_*_patch14_dinov2 with num_classes=0). The released weights hold 37 x 37 position
embeddings (518 px); the hub model interpolates them at run time to the 16 x 16 grid of a 224 px input (bicubic,
antialias=False, scale factor (16 + 0.1) / 37: DINOv2's `interpolate_pos_encoding`), and `dinov2_position_embedding`
does the same once at load time (timm's own resampling at load uses antialias=True and the exact size, which gives
different embeddings).

CLIP (Radford et al., "Learning Transferable Visual Models From Natural Language Supervision", arXiv 2103.00020):
CLIP's own preprocessing (bicubic resize of the shorter side to 224, centre crop 224, /255, CLIP mean/std);
features = the image embedding, the final LayerNorm of the CLS token times the image projection (timm's head, CLIP's
`encode_image`), not normalised. OpenAI's weights need QuickGELU (the `-openai` names); open_clip's LAION-2B and
DataComp weights (dgm-eval's defaults) use GELU (`clip-vitb16`, `clip-vitl14`). The activation cannot be read from
a file: choose the name that matches the weights.

Weights files are converted by timm's own `checkpoint_filter_fn` (DINOv2's, OpenAI's and open_clip's key names as
well as timm's) and loaded strictly; their sha256 is the extractor's `weights_sha256`. Without weights the network is
timm's seeded random initialisation (DINOv2's LayerScale set to 1, see `random_vit`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from diffaudit.features.extractors import IMAGENET_MEAN, IMAGENET_STD, NetworkExtractor
from diffaudit.features.weights import InvalidWeights, file_sha256, read_state_dict, seeded, short_message

VIT_INPUT_SIZE = 224
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
DINOV2_INTERPOLATE_OFFSET = 0.1  # DINOv2's hub models: interpolate_offset=0.1, interpolate_antialias=False
DINOV2_LAYER = "CLS token after the final LayerNorm (timm num_classes=0), the DINOv2 hub model's output"
CLIP_LAYER = "image embedding: final LayerNorm of the CLS token times the image projection (CLIP's encode_image)"


@dataclass(frozen=True)
class VitModel:
    """A timm vision transformer, the layer used as features, its preprocessing and the weights files that fit it."""

    architecture: str  # timm model name
    dim: int
    projection: bool  # True: keep timm's head (CLIP's image projection); False: num_classes=0 (the CLS token)
    mean: tuple[float, ...]
    std: tuple[float, ...]
    resize: str  # a mode of diffaudit.features.preprocess.RESIZE_MODES
    layer: str
    weights: str  # which files fit, for messages and docs/extractors.md

    @property
    def dinov2(self) -> bool:
        return self.architecture.endswith("_dinov2")


def _dinov2(architecture: str, dim: int, hub_name: str) -> VitModel:
    return VitModel(
        architecture,
        dim,
        projection=False,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        resize="bicubic-pil",
        layer=DINOV2_LAYER,
        weights=f"DINOv2's {hub_name}_pretrain.pth, or timm's {architecture}.lvd142m model.safetensors",
    )


def _clip(architecture: str, dim: int, weights: str) -> VitModel:
    return VitModel(
        architecture,
        dim,
        projection=True,
        mean=CLIP_MEAN,
        std=CLIP_STD,
        resize="bicubic-pil-center-crop",
        layer=CLIP_LAYER,
        weights=weights,
    )


VIT_MODELS: dict[str, VitModel] = {
    "dinov2-vits14": _dinov2("vit_small_patch14_dinov2", 384, "dinov2_vits14"),
    "dinov2-vitb14": _dinov2("vit_base_patch14_dinov2", 768, "dinov2_vitb14"),
    "dinov2-vitl14": _dinov2("vit_large_patch14_dinov2", 1024, "dinov2_vitl14"),
    "dinov2-vitg14": _dinov2("vit_giant_patch14_dinov2", 1536, "dinov2_vitg14"),
    "clip-vitb16": _clip(
        "vit_base_patch16_clip_224",
        512,
        "open_clip's ViT-B-16 open_clip_pytorch_model.bin (e.g. laion2b_s34b_b88k), or timm's "
        "vit_base_patch16_clip_224.laion2b model.safetensors",
    ),
    "clip-vitl14": _clip(
        "vit_large_patch14_clip_224",
        768,
        "open_clip's ViT-L-14 open_clip_pytorch_model.bin (e.g. datacomp_xl_s13b_b90k), or timm's "
        "vit_large_patch14_clip_224.datacompxl model.safetensors",
    ),
    "clip-vitb16-openai": _clip(
        "vit_base_patch16_clip_quickgelu_224",
        512,
        "timm's vit_base_patch16_clip_224.openai model.safetensors, or the state dict of OpenAI's ViT-B/16 "
        "(torch.jit.load('ViT-B-16.pt').state_dict() saved with safetensors)",
    ),
    "clip-vitl14-openai": _clip(
        "vit_large_patch14_clip_quickgelu_224",
        768,
        "timm's vit_large_patch14_clip_224.openai model.safetensors, or the state dict of OpenAI's ViT-L/14 "
        "(torch.jit.load('ViT-L-14.pt').state_dict() saved with safetensors)",
    ),
}


def build_vit(model: VitModel) -> nn.Module:
    """The timm network of `model` at 224 px, randomly initialised from the global torch RNG."""
    import timm

    num_classes = model.dim if model.projection else 0
    return timm.create_model(model.architecture, pretrained=False, num_classes=num_classes, img_size=VIT_INPUT_SIZE)


def dinov2_position_embedding(pos_embed: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """DINOv2's position embeddings (1, 1 + M*M, D) for a grid of patches, as its `interpolate_pos_encoding`
    computes them (bicubic, antialias=False, scale factor (grid + 0.1) / M; the class token's kept)."""
    n_patches = pos_embed.shape[1] - 1
    m = math.isqrt(n_patches)
    if m * m != n_patches:
        raise ValueError(f"position embeddings of {n_patches} patches are not a square grid")
    if (m, m) == grid:
        return pos_embed
    scale = ((grid[0] + DINOV2_INTERPOLATE_OFFSET) / m, (grid[1] + DINOV2_INTERPOLATE_OFFSET) / m)
    patches = pos_embed[:, 1:].float().reshape(1, m, m, -1).permute(0, 3, 1, 2)
    patches = F.interpolate(patches, scale_factor=scale, mode="bicubic", antialias=False)
    if tuple(patches.shape[2:]) != grid:
        raise ValueError(f"interpolated position embeddings have grid {tuple(patches.shape[2:])}, expected {grid}")
    patches = patches.permute(0, 2, 3, 1).reshape(1, grid[0] * grid[1], -1)
    return torch.cat([pos_embed[:, :1], patches.to(pos_embed.dtype)], dim=1)


def load_vit_weights(name: str, model: VitModel, network: nn.Module, path: Path) -> None:
    """Load a weights file into `network` through timm's conversion, strictly; InvalidWeights if it does not fit."""
    from timm.models.vision_transformer import checkpoint_filter_fn

    raw = read_state_dict(path)
    try:
        state = checkpoint_filter_fn(dict(raw), network)  # type: ignore[arg-type]
        if model.dinov2 and "pos_embed" in raw:
            side = math.isqrt(network.state_dict()["pos_embed"].shape[1] - 1)  # the network's square patch grid
            state["pos_embed"] = dinov2_position_embedding(raw["pos_embed"], (side, side))
        network.load_state_dict(state, strict=True)
    except Exception as exc:  # timm's conversion and the strict load fail in many ways; all mean a foreign file
        raise InvalidWeights(
            f"weights file {path.name!r} does not fit {name} (timm's {model.architecture}): {short_message(exc)}. "
            f"Give {model.weights}"
        ) from exc


def random_vit(model: VitModel) -> nn.Module:
    """timm's random initialisation, with DINOv2's LayerScale factors set to 1 instead of timm's 1e-5: at 1e-5 every
    block's contribution vanishes and the CLS token is nearly the same for every image (relative spread ~1e-5)."""
    from timm.layers import LayerScale

    network = build_vit(model)
    for module in network.modules():
        if isinstance(module, LayerScale):
            nn.init.ones_(module.gamma)
    return network


def create_vit_extractor(name: str, path: Path | None, seed: int, device: torch.device) -> NetworkExtractor:
    """The DINOv2 or CLIP extractor `name`: weights from the local file `path`, or (path=None) seeded at random."""
    model = VIT_MODELS[name]
    if path is None:
        network = seeded(lambda: random_vit(model), seed)
    else:
        network = build_vit(model)
        load_vit_weights(name, model, network, path)
    return NetworkExtractor(
        name=name,
        network=network,
        dim=model.dim,
        layer=model.layer,
        input_size=VIT_INPUT_SIZE,
        mean=model.mean,
        std=model.std,
        weights_sha256=None if path is None else file_sha256(path),
        seed=seed,
        device=device,
        resize=model.resize,
    )
