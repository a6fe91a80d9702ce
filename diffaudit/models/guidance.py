"""Time-conditioned networks on noisy images (x_t, t): the guidance classifier and the real/synthetic discriminator.

Sehwag et al. Sec. 3.2 and Sec. 4: both guidance networks see the noisy image of the diffusion process and its
timestep. The classifier's penultimate layer is the embedding f(x_t) in which the hardness score of L_g1 is
computed (Eq. 4); the binary discriminator (class 0 synthetic, class 1 real) gives the embedding of H' in L_g2
(Eq. 6). Both are trained here with the checkpoint's own noise schedule: x_t = sqrt(abar_t) x_0 +
sqrt(1 - abar_t) eps, t uniform over the training timesteps.

`TimeConditionedCNN` is small on purpose (width 16: about 29k parameters): the forward and backward passes of
the classifier and the discriminator at every sampling step must together cost at most half the UNet's forward
pass (bench/guidance.py; at width 32 they cost 0.55-0.8 of it on the demo UNet). Networks are saved as
safetensors with their constructor arguments in the metadata, so a user can upload one.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from torch import nn

from diffaudit.errors import InvalidInput

SYNTHETIC, REAL = 0, 1  # Sehwag et al. Eq. 6: class zero is synthetic, class one is real
ProgressFn = Callable[[int, int], None]


def alphas_cumprod_from_config(scheduler_config: dict[str, Any]) -> torch.Tensor:
    """abar_t for t = 0..T-1 of the checkpoint's training noise schedule (float64), from its scheduler config."""
    return DDPMScheduler.from_config(scheduler_config).alphas_cumprod.to(torch.float64)


def add_noise(
    x0: torch.Tensor, timesteps: torch.Tensor, alphas_cumprod: torch.Tensor, noise: torch.Tensor
) -> torch.Tensor:
    """Forward process q(x_t | x_0): x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps (Ho et al. 2020, Eq. 4)."""
    abar = alphas_cumprod.to(x0.device)[timesteps.to(x0.device).long()].to(x0.dtype).view(-1, 1, 1, 1)
    return abar.sqrt() * x0 + (1.0 - abar).sqrt() * noise


def timestep_embedding(timesteps: torch.Tensor, dim: int, max_period: float = 10_000.0) -> torch.Tensor:
    """Sinusoidal embedding of (possibly fractional) timesteps, shape (N, dim) (Vaswani et al. 2017)."""
    half = dim // 2
    frequencies = torch.exp(-math.log(max_period) * torch.arange(half, device=timesteps.device) / half)
    angles = timesteps.float()[:, None] * frequencies[None]
    return torch.cat([angles.cos(), angles.sin()], dim=1)


class TimeConditionedBlock(nn.Module):
    """GroupNorm -> SiLU -> shift by the time embedding -> 3x3 convolution."""

    def __init__(self, in_channels: int, out_channels: int, time_dim: int, stride: int) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(min(8, in_channels), in_channels)
        self.time_shift = nn.Linear(time_dim, in_channels)
        self.conv = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1)

    def forward(self, h: torch.Tensor, time: torch.Tensor) -> torch.Tensor:
        return self.conv(F.silu(self.norm(h)) + self.time_shift(time)[:, :, None, None])


class TimeConditionedCNN(nn.Module):
    """Small CNN classifier on (x_t, t); `embed` gives the penultimate layer, `forward` the logits."""

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 10,
        width: int = 16,
        embedding_dim: int = 64,
    ) -> None:
        super().__init__()
        self.config = {
            "in_channels": in_channels,
            "num_classes": num_classes,
            "width": width,
            "embedding_dim": embedding_dim,
        }
        time_dim = 4 * width
        self.time_mlp = nn.Sequential(nn.Linear(width, time_dim), nn.SiLU(), nn.Linear(time_dim, time_dim))
        self.conv_in = nn.Conv2d(in_channels, width, 3, padding=1)
        self.blocks = nn.ModuleList(
            [
                TimeConditionedBlock(width, width, time_dim, stride=2),
                TimeConditionedBlock(width, 2 * width, time_dim, stride=2),
                TimeConditionedBlock(2 * width, 2 * width, time_dim, stride=1),
            ]
        )
        self.to_embedding = nn.Linear(2 * width, embedding_dim)
        self.head = nn.Linear(embedding_dim, num_classes)

    def embed(self, x_t: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """The penultimate layer f(x_t, t), shape (N, embedding_dim)."""
        frequencies = timestep_embedding(timesteps.expand(x_t.shape[0]), self.config["width"]).to(x_t.dtype)
        time = self.time_mlp(frequencies)
        h = self.conv_in(x_t)
        for block in self.blocks:
            h = block(h, time)
        return F.silu(self.to_embedding(F.silu(h).mean(dim=(2, 3))))

    def forward(self, x_t: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(x_t, timesteps))


def train_time_conditioned(
    network: TimeConditionedCNN,
    images: torch.Tensor,
    labels: torch.Tensor,
    alphas_cumprod: torch.Tensor,
    *,
    steps: int = 2000,
    batch_size: int = 128,
    learning_rate: float = 2e-3,
    seed: int = 0,
    device: torch.device | str = "cpu",
    progress: ProgressFn | None = None,
) -> list[float]:
    """Train `network` to predict `labels` from noisy images x_t at uniformly drawn timesteps t.

    images: (N, C, H, W) in the checkpoint's data range ([-1, 1] for diffusers checkpoints); labels: (N,) int.
    Cross-entropy, AdamW with cosine decay; the batches, timesteps and noise all come from `seed`.
    Returns the training loss of every step. The network is left in eval mode on `device`.
    """
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # nothing else is random, but initialisations made after this are reproducible too
    network.to(device).train()
    optimiser = torch.optim.AdamW(network.parameters(), lr=learning_rate, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=steps)
    num_train_timesteps = len(alphas_cumprod)
    losses = []
    for step in range(steps):
        index = torch.randint(len(images), (batch_size,), generator=generator)
        timesteps = torch.randint(num_train_timesteps, (batch_size,), generator=generator)
        noise = torch.randn((batch_size, *images.shape[1:]), generator=generator)
        x_t = add_noise(images[index], timesteps, alphas_cumprod, noise).float().to(device)
        loss = F.cross_entropy(network(x_t, timesteps.to(device)), labels[index].to(device))
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        schedule.step()
        losses.append(loss.item())
        if progress is not None:
            progress(step + 1, steps)
    network.eval()
    return losses


def train_guidance_classifier(
    images: torch.Tensor,
    labels: torch.Tensor,
    alphas_cumprod: torch.Tensor,
    *,
    num_classes: int | None = None,
    seed: int = 0,
    **training: Any,
) -> TimeConditionedCNN:
    """The classifier whose embedding carries the hardness of L_g1 (Sehwag et al. Eq. 4)."""
    torch.manual_seed(seed)
    network = TimeConditionedCNN(in_channels=images.shape[1], num_classes=num_classes or int(labels.max()) + 1)
    train_time_conditioned(network, images, labels, alphas_cumprod, seed=seed, **training)
    return network


def train_discriminator(
    real_images: torch.Tensor,
    synthetic_images: torch.Tensor,
    alphas_cumprod: torch.Tensor,
    *,
    seed: int = 0,
    **training: Any,
) -> TimeConditionedCNN:
    """Binary real (1) versus synthetic (0) classifier on (x_t, t) for L_g2 (Sehwag et al. Eq. 6, Sec. 4).

    The paper draws as many ordinary samples of the checkpoint as there are training images.
    """
    torch.manual_seed(seed)
    network = TimeConditionedCNN(in_channels=real_images.shape[1], num_classes=2)
    images, labels = real_versus_synthetic(real_images, synthetic_images)
    train_time_conditioned(network, images, labels, alphas_cumprod, seed=seed, **training)
    return network


def real_versus_synthetic(real: torch.Tensor, synthetic: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack real and synthetic images with labels REAL and SYNTHETIC."""
    labels = torch.cat(
        [torch.full((len(real),), REAL, dtype=torch.int64), torch.full((len(synthetic),), SYNTHETIC, dtype=torch.int64)]
    )
    return torch.cat([real, synthetic]), labels


def images_to_model_range(images: np.ndarray) -> torch.Tensor:
    """uint8 images (N, H, W, C) -> float32 tensor (N, C, H, W) in [-1, 1], the diffusers data range."""
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def network_to_bytes(network: TimeConditionedCNN) -> bytes:
    """The network as safetensors bytes, its constructor arguments in the metadata."""
    state = {name: tensor.detach().cpu().contiguous() for name, tensor in network.state_dict().items()}
    return save_safetensors(state, metadata={"config": json.dumps(network.config)})


def network_from_bytes(data: bytes, device: torch.device | str = "cpu") -> TimeConditionedCNN:
    """A network saved by `network_to_bytes` (or uploaded in that format), in eval mode on `device`."""
    state = load_safetensors(data)
    config = json.loads(_safetensors_metadata(data)["config"])
    network = TimeConditionedCNN(**config)
    network.load_state_dict(state, strict=True)
    return network.to(device).eval()


def _safetensors_metadata(data: bytes) -> dict[str, str]:
    """The __metadata__ of a safetensors buffer (an 8-byte little-endian header size, then a JSON header)."""
    header_size = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + header_size])
    metadata = header.get("__metadata__")
    if not isinstance(metadata, dict) or "config" not in metadata:
        raise InvalidInput("safetensors guidance network has no 'config' metadata (save it with network_to_bytes)")
    return metadata
