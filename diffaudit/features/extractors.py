"""Feature extractors: uint8 image batches in, float32 feature vectors out.

An extractor maps a uint8 NHWC batch (C = 1 or 3) to float32 features (B, dim), in eval
mode, without gradients, on its own device. Every image is processed independently of the
others in its batch, so features never depend on the batch size (a known pitfall of
evaluation tools). Its `cache_key()` identifies the features it computes: the same name,
layer, weights (or seed), resize mode, dtype and preprocessing give the same key, and training-set
features are cached under it (diffaudit.features.cache). Greyscale becomes RGB in one place,
diffaudit.features.preprocess.rgb_tensor.
"""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod

import numpy as np
import torch
from torch import nn

from diffaudit.errors import InvalidInput
from diffaudit.features.preprocess import RESIZE_DESCRIPTIONS, check_images, resized_unit_rgb

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class Extractor(ABC):
    """What every extractor declares about itself, and the call that computes features.

    `weights_sha256` is the sha256 of the weights (None: no weights, see `seed`); `seed` is the
    seed of a random initialisation (None when weights were loaded or nothing is random);
    `dim` is the feature dimension (None only for `pixels`, whose dimension is H*W*C of its
    input); `layer` names the layer whose output is the feature vector; `resize` is the resize mode
    (a key of diffaudit.features.preprocess.RESIZE_MODES, or "none"); `dtype` the dtype the network computes in.
    """

    name: str
    dim: int | None
    weights_sha256: str | None
    seed: int | None
    preprocessing: str
    layer: str
    resize: str
    dtype: str

    def cache_key(self) -> str:
        """sha256 over everything that determines the features: name, layer, weights or seed, resize mode, dtype and
        preprocessing."""
        identity = {
            "name": self.name,
            "layer": self.layer,
            "weights_sha256": self.weights_sha256,
            "seed": self.seed,
            "resize": self.resize,
            "dtype": self.dtype,
            "preprocessing": self.preprocessing,
        }
        return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()

    @property
    def random_init(self) -> bool:
        """True when the features come from a seeded random initialisation rather than trained weights."""
        return self.weights_sha256 is None and self.seed is not None

    def output_dim(self, image_shape: tuple[int, ...]) -> int:
        """The feature dimension for images of shape (H, W, C)."""
        assert self.dim is not None
        return self.dim

    @abstractmethod
    def __call__(self, images: np.ndarray) -> np.ndarray: ...


class PixelExtractor(Extractor):
    """Flattened pixels scaled to [0, 1]: no network, no weights."""

    name = "pixels"
    dim = None
    weights_sha256 = None
    seed = None
    preprocessing = "uint8 NHWC divided by 255 (values in [0, 1]), flattened in H, W, C order; no resize, channels kept"
    layer = "input"
    resize = "none"
    dtype = "float32"

    def output_dim(self, image_shape: tuple[int, ...]) -> int:
        return int(np.prod(image_shape))

    def __call__(self, images: np.ndarray) -> np.ndarray:
        check_images(images)
        return images.reshape(len(images), -1).astype(np.float32) / np.float32(255.0)


class NetworkExtractor(Extractor):
    """A torch network on a fixed square input: greyscale to RGB, resize (`resize` mode), normalise, forward, flatten.

    The network computes in `dtype` (float32 unless asked otherwise); features are returned as float32.
    """

    def __init__(
        self,
        *,
        name: str,
        network: nn.Module,
        dim: int,
        layer: str,
        input_size: int,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        weights_sha256: str | None,
        seed: int | None,
        device: torch.device,
        resize: str = "bilinear",
        dtype: torch.dtype = torch.float32,
    ) -> None:
        self.name = name
        self.network = network.to(device=device, dtype=dtype).eval().requires_grad_(False)
        self.dim = dim
        self.layer = layer
        self.input_size = input_size
        self.mean = torch.tensor(mean, dtype=torch.float32, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32, device=device).view(1, 3, 1, 1)
        self.weights_sha256 = weights_sha256
        self.seed = None if weights_sha256 else seed
        self.device = device
        self.resize = resize
        self.torch_dtype = dtype
        self.dtype = str(dtype).removeprefix("torch.")
        self.preprocessing = (
            f"uint8 NHWC; greyscale repeated to 3 channels; {RESIZE_DESCRIPTIONS[resize].format(size=input_size)}; "
            f"divided by 255; normalised per channel with mean={tuple(mean)} std={tuple(std)}; "
            f"network in {self.dtype}"
        )

    def network_input(self, images: np.ndarray) -> torch.Tensor:
        """The preprocessing described by `self.preprocessing`, as a float32 NCHW tensor on the device."""
        x = resized_unit_rgb(images, self.resize, self.input_size, self.device)
        return (x - self.mean) / self.std

    def __call__(self, images: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            out = self.network(self.network_input(images).to(self.torch_dtype)).flatten(1)
        if out.shape[1] != self.dim:
            raise RuntimeError(f"{self.name} produced {out.shape[1]} features, expected {self.dim}")
        return out.float().cpu().numpy()


RANDOM_CNN_SIZE = 32
RANDOM_CNN_DIM = 256


def random_cnn() -> nn.Sequential:
    """A small conv net for random-init features: 32x32x3 -> 16 channels on a 4x4 grid, flattened (256).

    The last conv has no ReLU (a random projection of the layer before) and the spatial grid
    is kept rather than pooled, so the features still say where strokes are. Initialised
    from the global torch RNG (kaiming-normal weights, zero biases): seed it before calling.
    """
    net = nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(32, 64, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv2d(64, 64, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv2d(64, 16, 3, stride=2, padding=1),
        nn.Flatten(),
    )
    for module in net:
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
            nn.init.zeros_(module.bias)  # type: ignore[arg-type]
    return net


def check_feature_dims(extractor: Extractor, image_shape: tuple[int, ...], dataset_dim: int) -> None:
    """The generated samples' features must have the dimension of the dataset's own features."""
    dim = extractor.output_dim(image_shape)
    if dim != dataset_dim:
        raise InvalidInput(
            f"the dataset holds {dataset_dim}-dimensional features but extractor {extractor.name!r} gives "
            f"{dim}-dimensional ones; set features.extractor (and features.weights) to the extractor that "
            f"produced the dataset's features, so that generated and training features are comparable"
        )
