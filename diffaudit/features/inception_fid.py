"""`inception-fid`: the FID Inception-v3 network, the one pytorch-fid and torch-fidelity port from TensorFlow.

Heusel et al., "GANs Trained by a Two Time-Scale Update Rule Converge to a Local Nash Equilibrium", arXiv 1706.08500,
compute FID on the 2,048-d pool features of TensorFlow's 2015-12-05 Inception graph; its PyTorch port differs from
torchvision's Inception-v3 in 1,008 classes and in the blocks below (FIDInceptionA, C, E_1, E_2): average pools that
leave the zero padding out of the mean (TensorFlow's), and a max pool in the last block's pool branch. The weights
are the port's file `pt_inception-2015-12-05-6726825d.pth` (FID_WEIGHTS_SHA256), read only from a local path and
refused unless its sha256 is that one; without weights the network is a seeded random initialisation.

Preprocessing, as pytorch-fid's: uint8 / 255 to float32 in [0, 1], greyscale repeated to 3 channels, bilinear resize
to 299 x 299 (align_corners=False, no antialiasing), then 2x - 1 (torch-fidelity instead resizes as TensorFlow 1.x
did, so its features differ slightly from these and pytorch-fid's for inputs that are not already 299 x 299).
Features: the global average pool of Mixed_7c (2,048); logits: that pool times the 1,008-class fc weights without the
bias, the logits the Inception Score's reference code uses (Salimans et al., arXiv 1606.03498), as torch-fidelity's
`logits_unbiased`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import torchvision.models as tvm
from torchvision.models.inception import InceptionA, InceptionC, InceptionE

from diffaudit.features.extractors import Extractor
from diffaudit.features.preprocess import resized_unit_rgb
from diffaudit.features.weights import InvalidWeights, file_sha256, read_state_dict, seeded

INCEPTION_FID = "inception-fid"
FID_WEIGHTS_FILE = "pt_inception-2015-12-05-6726825d.pth"
FID_WEIGHTS_SHA256 = "6726825d0af5f729cebd5821db510b11b1cfad8faad88a03f1befd49fb9129b2"
FID_INPUT_SIZE = 299
FID_CLASSES = 1008
FID_POOL_DIM = 2048
FID_RESIZE = "bilinear-no-antialias"


def _tf_average_pool(x: torch.Tensor) -> torch.Tensor:
    """3x3 stride-1 average pool whose mean leaves out the zero padding, as TensorFlow's."""
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


class FIDInceptionA(InceptionA):
    """InceptionA with TensorFlow's average pool."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch5x5 = self.branch5x5_2(self.branch5x5_1(x))
        branch3x3dbl = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch1x1(x), branch5x5, branch3x3dbl, self.branch_pool(_tf_average_pool(x))], 1)


class FIDInceptionC(InceptionC):
    """InceptionC with TensorFlow's average pool."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch7x7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        branch7x7dbl = self.branch7x7dbl_3(self.branch7x7dbl_2(self.branch7x7dbl_1(x)))
        branch7x7dbl = self.branch7x7dbl_5(self.branch7x7dbl_4(branch7x7dbl))
        return torch.cat([self.branch1x1(x), branch7x7, branch7x7dbl, self.branch_pool(_tf_average_pool(x))], 1)


class FIDInceptionE(InceptionE):
    """InceptionE with TensorFlow's average pool (Mixed_7b), or with a max pool (Mixed_7c, max_pool=True)."""

    def __init__(self, in_channels: int, max_pool: bool) -> None:
        super().__init__(in_channels)
        self.max_pool = max_pool

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch3x3 = self.branch3x3_1(x)
        branch3x3 = torch.cat([self.branch3x3_2a(branch3x3), self.branch3x3_2b(branch3x3)], 1)
        branch3x3dbl = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        branch3x3dbl = torch.cat([self.branch3x3dbl_3a(branch3x3dbl), self.branch3x3dbl_3b(branch3x3dbl)], 1)
        pooled = F.max_pool2d(x, kernel_size=3, stride=1, padding=1) if self.max_pool else _tf_average_pool(x)
        return torch.cat([self.branch1x1(x), branch3x3, branch3x3dbl, self.branch_pool(pooled)], 1)


def fid_inception_v3() -> tvm.Inception3:
    """The FID Inception-v3 (torchvision's with the FID blocks and 1,008 classes), initialised from the global RNG.

    Its state dict has the keys and shapes of FID_WEIGHTS_FILE.
    """
    net = tvm.inception_v3(weights=None, num_classes=FID_CLASSES, aux_logits=False, init_weights=True)
    net.Mixed_5b = FIDInceptionA(192, pool_features=32)
    net.Mixed_5c = FIDInceptionA(256, pool_features=64)
    net.Mixed_5d = FIDInceptionA(288, pool_features=64)
    net.Mixed_6b = FIDInceptionC(768, channels_7x7=128)
    net.Mixed_6c = FIDInceptionC(768, channels_7x7=160)
    net.Mixed_6d = FIDInceptionC(768, channels_7x7=160)
    net.Mixed_6e = FIDInceptionC(768, channels_7x7=192)
    net.Mixed_7b = FIDInceptionE(1280, max_pool=False)
    net.Mixed_7c = FIDInceptionE(2048, max_pool=True)
    return net


def pool_features(net: tvm.Inception3, x: torch.Tensor) -> torch.Tensor:
    """The 2,048-d global average pool of Mixed_7c for network input x (N, 3, 299, 299) in [-1, 1]."""
    for name in (
        "Conv2d_1a_3x3",
        "Conv2d_2a_3x3",
        "Conv2d_2b_3x3",
        "maxpool1",
        "Conv2d_3b_1x1",
        "Conv2d_4a_3x3",
        "maxpool2",
        "Mixed_5b",
        "Mixed_5c",
        "Mixed_5d",
        "Mixed_6a",
        "Mixed_6b",
        "Mixed_6c",
        "Mixed_6d",
        "Mixed_6e",
        "Mixed_7a",
        "Mixed_7b",
        "Mixed_7c",
        "avgpool",
    ):
        x = getattr(net, name)(x)
    return x.flatten(1)


class InceptionFidExtractor(Extractor):
    """uint8 NHWC images -> the FID Inception's 2,048-d pool features (and, through `logits`, its 1,008 logits)."""

    name = INCEPTION_FID
    dim = FID_POOL_DIM
    layer = "avgpool: global average pool of Mixed_7c (2,048), before the 1,008-class fc"
    resize = FID_RESIZE
    dtype = "float32"
    preprocessing = (
        f"uint8 NHWC divided by 255 to float32 [0, 1]; greyscale repeated to 3 channels; bilinear resize "
        f"(align_corners=False, antialias=False) to {FID_INPUT_SIZE}x{FID_INPUT_SIZE} as pytorch-fid; scaled to "
        f"[-1, 1] by 2x - 1; network in float32"
    )

    def __init__(
        self, network: tvm.Inception3, weights_sha256: str | None, seed: int | None, device: torch.device
    ) -> None:
        self.network = network.to(device).eval().requires_grad_(False)
        self.weights_sha256 = weights_sha256
        self.seed = None if weights_sha256 else seed
        self.device = device

    def network_input(self, images: np.ndarray) -> torch.Tensor:
        """The preprocessing of `preprocessing`, as a float32 (N, 3, 299, 299) tensor on the device."""
        x = resized_unit_rgb(images, FID_RESIZE, FID_INPUT_SIZE, self.device)
        return (2 * x - 1).contiguous()  # one memory layout for every input, so one convolution algorithm

    def __call__(self, images: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return pool_features(self.network, self.network_input(images)).cpu().numpy()

    def logits(self, images: np.ndarray) -> np.ndarray:
        """The 1,008 logits without the fc bias (torch-fidelity's `logits_unbiased`), for the Inception Score."""
        return self.logits_of_features(self(images))

    def logits_of_features(self, features: np.ndarray) -> np.ndarray:
        """The logits of `logits` from this extractor's pool features (the fc layer alone, without its bias)."""
        weight = self.network.fc.weight.detach().cpu().numpy().astype(np.float64)
        return (np.asarray(features, dtype=np.float64) @ weight.T).astype(np.float32)


def create_inception_fid(path: Path | None, seed: int, device: torch.device) -> InceptionFidExtractor:
    """The `inception-fid` extractor: weights from a local FID_WEIGHTS_FILE (sha256 checked) or seeded at random."""
    if path is None:
        return InceptionFidExtractor(seeded(fid_inception_v3, seed), None, seed, device)
    sha256 = file_sha256(path)
    if sha256 != FID_WEIGHTS_SHA256:
        raise InvalidWeights(
            f"{path.name} is not the FID Inception weights file (sha256 {sha256[:12]}..., expected "
            f"{FID_WEIGHTS_SHA256[:12]}...); give pytorch-fid's {FID_WEIGHTS_FILE}"
        )
    network = seeded(fid_inception_v3, seed)
    network.load_state_dict(read_state_dict(path), strict=True)
    return InceptionFidExtractor(network, sha256, seed, device)
