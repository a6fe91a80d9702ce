"""The small image classifier the augmentation and balance analyses train ("The deficit of new information in
diffusion models", Table 2, uses a ResNet50; this must run in seconds on a CPU).

A small seeded CNN (two conv blocks, average pooling to 4x4, one linear layer) trained with Adam for a fixed number
of epochs: about 0.5 s per epoch on the 1,438 training digits (16x16), 0.97 held-out accuracy after 3 epochs.
Images larger than CLASSIFIER_MAX_SIZE are downscaled first.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

CLASSIFIER_MAX_SIZE = 32
CLASSIFIER_WIDTH = 16
POOLED_SIZE = 4  # the second conv block's map is average-pooled to 4x4 before the linear layer

EpochFn = Callable[[int], None]  # called with the number of finished epochs; may raise to stop


def small_cnn(in_channels: int, num_classes: int, width: int = CLASSIFIER_WIDTH) -> nn.Sequential:
    """Two 3x3 conv blocks (ReLU, 2x2 max-pool), average pooling to 4x4, one linear layer."""
    return nn.Sequential(
        nn.Conv2d(in_channels, width, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(width, 2 * width, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.AdaptiveAvgPool2d(POOLED_SIZE),
        nn.Flatten(),
        nn.Linear(2 * width * POOLED_SIZE * POOLED_SIZE, num_classes),
    )


def classifier_pixels(images: np.ndarray, batch_size: int = 1024) -> torch.Tensor:
    """uint8 NHWC images -> uint8 NCHW tensor, downscaled (bilinear, antialiased) to at most 32x32."""
    images = np.array(images, copy=True)  # a private, writable copy (inputs are often read-only memory maps)
    height, width = images.shape[1:3]
    scale = CLASSIFIER_MAX_SIZE / max(height, width)
    if scale >= 1:
        return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).contiguous()
    size = (max(1, round(height * scale)), max(1, round(width * scale)))
    out = []
    for start in range(0, len(images), batch_size):
        x = torch.from_numpy(np.array(images[start : start + batch_size])).permute(0, 3, 1, 2).float()
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
        out.append(x.round().clamp(0, 255).to(torch.uint8))
    return torch.cat(out)


def _network_input(pixels: torch.Tensor, device: torch.device) -> torch.Tensor:
    """uint8 NCHW -> float in [-1, 1] on the device."""
    return pixels.to(device).float() / 127.5 - 1.0


def train_classifier(
    pixels: torch.Tensor,
    labels: np.ndarray,
    num_classes: int,
    *,
    epochs: int,
    seed: int,
    device: torch.device,
    batch_size: int = 32,
    learning_rate: float = 3e-3,
    on_epoch: EpochFn | None = None,
) -> nn.Module:
    """Train small_cnn on (pixels, labels) with Adam; the seed fixes initialisation and batch order."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = small_cnn(pixels.shape[1], num_classes).to(device)
    order_rng = torch.Generator().manual_seed(seed)
    targets = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    optimizer = torch.optim.Adam(model.parameters(), lr=learning_rate)
    model.train()
    for epoch in range(epochs):
        order = torch.randperm(len(pixels), generator=order_rng)
        for start in range(0, len(order), batch_size):
            batch = order[start : start + batch_size]
            loss = F.cross_entropy(model(_network_input(pixels[batch], device)), targets[batch].to(device))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        if on_epoch is not None:
            on_epoch(epoch + 1)
    return model.eval()


def predict(model: nn.Module, pixels: torch.Tensor, device: torch.device, batch_size: int = 512) -> np.ndarray:
    """Predicted class of each image."""
    with torch.inference_mode():
        logits = [model(_network_input(pixels[s : s + batch_size], device)) for s in range(0, len(pixels), batch_size)]
    return torch.cat(logits).argmax(dim=1).cpu().numpy()
