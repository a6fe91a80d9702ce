"""Preprocessing shared by every network extractor: uint8 images to three channels, then one named resize.

`rgb_tensor` is the one place where greyscale images become RGB: the single channel is repeated three times, so a
grey image and its three-channel copy give identical features under every RGB extractor. A resize mode names how the
RGB batch reaches the network's square input, as float32 values in [0, 1] (normalisation is the extractor's):

- "bilinear": float bilinear resize (align_corners=False, antialias=True) to size x size, no crop; skipped when the
  images already have that size (torchvision and timm extractors).
- "bilinear-no-antialias": float bilinear resize (align_corners=False, antialias=False) to size x size, always, as
  pytorch-fid (inception-fid).
- "bicubic-pil": bicubic resize of the uint8 values to size x size (antialias=True, the cubic kernel with a = -0.5 of
  PIL, rounded and clamped to uint8 as PIL's output is), no crop: dgm-eval's FD-DINOv2 transform
  `Resize((224, 224), InterpolationMode.BICUBIC)` on a PIL image, then `ToTensor()` (dgm_eval/models/dinov2.py).
- "bicubic-pil-center-crop": the same bicubic resize of the shorter side to size (the longer side scaled in proportion,
  truncated as torchvision's Resize(size)), then a centre crop size x size: CLIP's own preprocessing
  (Resize(n_px, BICUBIC), CenterCrop(n_px), ToTensor) and dgm-eval's CLIP transform.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF
from torchvision.transforms import InterpolationMode


def check_images(images: np.ndarray) -> None:
    """Refuse anything but a uint8 NHWC batch with 1 or 3 channels."""
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[3] not in (1, 3):
        raise ValueError(
            f"extractors take uint8 images of shape (batch, height, width, 1 or 3); got {images.dtype} {images.shape}"
        )


def rgb_tensor(images: np.ndarray, device: torch.device) -> torch.Tensor:
    """A uint8 NHWC batch (1 or 3 channels) as a uint8 (N, 3, H, W) tensor: greyscale repeated to three channels."""
    check_images(images)
    x = torch.from_numpy(np.array(images)).to(device).permute(0, 3, 1, 2)  # copy: the batch may be read-only
    if x.shape[1] == 1:
        x = x.repeat(1, 3, 1, 1)
    return x.contiguous()


def _bilinear(x: torch.Tensor, size: int) -> torch.Tensor:
    unit = x.float() / 255.0
    if unit.shape[2:] == (size, size):
        return unit
    return F.interpolate(unit, size=(size, size), mode="bilinear", align_corners=False, antialias=True)


def _bilinear_no_antialias(x: torch.Tensor, size: int) -> torch.Tensor:
    return F.interpolate(x.float() / 255.0, size=(size, size), mode="bilinear", align_corners=False)


def _bicubic_pil(x: torch.Tensor, size: int) -> torch.Tensor:
    resized = TF.resize(x, [size, size], interpolation=InterpolationMode.BICUBIC, antialias=True)
    return resized.float() / 255.0


def _bicubic_pil_center_crop(x: torch.Tensor, size: int) -> torch.Tensor:
    resized = TF.resize(x, [size], interpolation=InterpolationMode.BICUBIC, antialias=True)
    return TF.center_crop(resized, [size, size]).float() / 255.0


RESIZE_MODES: dict[str, Callable[[torch.Tensor, int], torch.Tensor]] = {
    "bilinear": _bilinear,
    "bilinear-no-antialias": _bilinear_no_antialias,
    "bicubic-pil": _bicubic_pil,
    "bicubic-pil-center-crop": _bicubic_pil_center_crop,
}

RESIZE_DESCRIPTIONS = {
    "bilinear": "bilinear resize (align_corners=False, antialias=True) to {size}x{size} without cropping",
    "bilinear-no-antialias": "bilinear resize (align_corners=False, antialias=False) to {size}x{size} as pytorch-fid",
    "bicubic-pil": "bicubic resize (antialias=True, rounded to uint8 as PIL) to {size}x{size} without cropping",
    "bicubic-pil-center-crop": (
        "bicubic resize (antialias=True, rounded to uint8 as PIL) of the shorter side to {size}, "
        "centre crop {size}x{size}"
    ),
}


def resized_unit_rgb(images: np.ndarray, resize: str, size: int, device: torch.device) -> torch.Tensor:
    """uint8 NHWC images -> float32 (N, 3, size, size) in [0, 1] on `device`, greyscale repeated, by `resize`."""
    return RESIZE_MODES[resize](rgb_tensor(images, device), size)
