"""The FID Inception against pytorch-fid's on one set of seeded random weights; batch size; the weights check."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision.models as tvm
from pytorch_fid import inception as pytorch_fid_inception
from torch import nn

import diffaudit.features.inception_fid as inception_fid
from diffaudit.features.inception_fid import FID_POOL_DIM, create_inception_fid, fid_inception_v3, pool_features
from diffaudit.features.weights import InvalidWeights, seeded

CPU = torch.device("cpu")


def random_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """Seeded random weights that keep activations image-dependent through the whole network: He-normal convolutions
    and random batch-norm affine parameters and statistics (so that batch norm is not the identity)."""
    network = seeded(fid_inception_v3, seed)
    generator = torch.Generator().manual_seed(seed)
    for module in network.modules():
        if isinstance(module, nn.Conv2d):
            module.weight.data = (
                torch.randn(module.weight.shape, generator=generator) * (2 / module.weight[0].numel()) ** 0.5
            )
        elif isinstance(module, nn.BatchNorm2d):
            module.weight.data = 0.8 + 0.4 * torch.rand(module.weight.shape, generator=generator)
            module.bias.data = 0.1 * torch.randn(module.bias.shape, generator=generator)
            module.running_mean.copy_(0.1 * torch.randn(module.running_mean.shape, generator=generator))
            module.running_var.copy_(0.8 + 0.4 * torch.rand(module.running_var.shape, generator=generator))
    return network.state_dict()


@pytest.fixture(scope="module")
def state() -> dict[str, torch.Tensor]:
    return random_state_dict()


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    """16 40x40 images of coloured sine gratings (orientation, frequency, phase and colour differ per image)."""
    rng = np.random.default_rng(14)
    yy, xx = np.mgrid[0:40, 0:40] / 40
    out = []
    for _ in range(16):
        a, b, phase = rng.uniform(-3, 3, 3)
        grating = 0.5 + 0.5 * np.sin(2 * np.pi * (a * xx + b * yy) + phase)
        out.append(255 * rng.uniform(0, 1, 3) * grating[..., None])
    return np.array(out).round().astype(np.uint8)


def ours(state: dict[str, torch.Tensor]) -> inception_fid.InceptionFidExtractor:
    network = fid_inception_v3()
    network.load_state_dict(state)
    return inception_fid.InceptionFidExtractor(network, None, 0, CPU)


@pytest.fixture(scope="module")
def extractor(state: dict[str, torch.Tensor]) -> inception_fid.InceptionFidExtractor:
    return ours(state)


@pytest.fixture(scope="module")
def batched(extractor: inception_fid.InceptionFidExtractor, images: np.ndarray) -> np.ndarray:
    """Features of all 16 images in one batch."""
    return extractor(images)


def close(a: np.ndarray, b: np.ndarray) -> bool:
    """Equal within 1e-5 of the largest magnitude (float32 convolutions in a different order)."""
    return bool(np.abs(a - b).max() <= 1e-5 * np.abs(b).max())


def test_features_equal_pytorch_fids_network_with_the_same_weights(
    state: dict[str, torch.Tensor], batched: np.ndarray, images: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    # pytorch-fid's FID Inception, built without its download: its weights loader returns our random weights
    monkeypatch.setattr(pytorch_fid_inception, "load_state_dict_from_url", lambda *args, **kwargs: state)
    reference = pytorch_fid_inception.InceptionV3([3]).eval()
    unit = torch.from_numpy(images[:2]).permute(0, 3, 1, 2).float() / 255
    with torch.inference_mode():
        expected = reference(unit)[0].flatten(1).numpy()
    assert batched.shape == (16, FID_POOL_DIM) and batched.dtype == np.float32
    assert close(batched[:2], expected)
    assert expected.std(0).mean() > 1e-3 * np.abs(expected).max()  # the features do vary between images
    plain = tvm.inception_v3(weights=None, num_classes=1008, aux_logits=False, init_weights=False).eval()
    plain.load_state_dict(state)  # torchvision's blocks with the same weights: the FID blocks are what is tested
    resized = F.interpolate(unit, size=(299, 299), mode="bilinear", align_corners=False)
    with torch.inference_mode():
        plain_features = pool_features(plain, 2 * resized - 1).numpy()
    assert np.abs(plain_features - expected).max() > 100 * 1e-5 * np.abs(expected).max()


def test_batch_size_does_not_change_features(
    extractor: inception_fid.InceptionFidExtractor, batched: np.ndarray, images: np.ndarray
) -> None:
    for i in (0, 15):
        assert close(extractor(images[i : i + 1])[0], batched[i])


def test_greyscale_is_three_equal_channels(extractor: inception_fid.InceptionFidExtractor, images: np.ndarray) -> None:
    grey = images[:1, :, :, :1]
    np.testing.assert_array_equal(extractor(grey), extractor(np.repeat(grey, 3, axis=3)))


def test_logits_are_the_pool_times_the_fc_weights(
    extractor: inception_fid.InceptionFidExtractor, state: dict[str, torch.Tensor], images: np.ndarray
) -> None:
    logits = extractor.logits(images[:1])
    expected = extractor(images[:1]) @ state["fc.weight"].numpy().T
    assert logits.shape == (1, 1008) and close(logits, expected)


def test_weights_load_only_when_their_sha256_is_the_fid_files(
    extractor: inception_fid.InceptionFidExtractor,
    state: dict[str, torch.Tensor],
    images: np.ndarray,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    path = tmp_path / "weights.pth"
    torch.save(state, path)
    with pytest.raises(InvalidWeights, match="not the FID Inception weights"):
        create_inception_fid(path, 0, CPU)
    monkeypatch.setattr(inception_fid, "FID_WEIGHTS_SHA256", inception_fid.file_sha256(path))
    loaded = create_inception_fid(path, 0, CPU)
    assert loaded.weights_sha256 == inception_fid.FID_WEIGHTS_SHA256 and loaded.seed is None
    np.testing.assert_array_equal(loaded(images[:1]), extractor(images[:1]))
    assert loaded.cache_key() != extractor.cache_key()  # the random initialisation with seed 0


def test_random_initialisation_is_seeded(extractor: inception_fid.InceptionFidExtractor) -> None:
    a, b = create_inception_fid(None, 3, CPU), create_inception_fid(None, 3, CPU)
    for key, value in a.network.state_dict().items():
        torch.testing.assert_close(value, b.network.state_dict()[key], rtol=0, atol=0)
    assert a.cache_key() == b.cache_key() != extractor.cache_key()  # seed 3 against seed 0


def test_the_registry_builds_inception_fid_from_the_weights_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`inception-fid` is a registered name: its dimension and input size are known without building it, and its
    weights are named relative to the operator's folder like every other extractor's."""
    from diffaudit.features.registry import available_extractors, create_extractor, extractor_dim, extractor_input_size

    assert "inception-fid" in available_extractors()
    assert extractor_dim("inception-fid", (16, 16, 1)) == FID_POOL_DIM
    assert extractor_input_size("inception-fid", (16, 16, 1)) == (299, 299, 3)
    seeded_extractor = create_extractor("inception-fid", seed=3, device=CPU)
    assert seeded_extractor.random_init and seeded_extractor.weights_sha256 is None
    path = tmp_path / "weights.pth"
    torch.save(fid_inception_v3().state_dict(), path)
    monkeypatch.setattr(inception_fid, "FID_WEIGHTS_SHA256", hashlib.sha256(path.read_bytes()).hexdigest())
    loaded = create_extractor("inception-fid", weights="weights.pth", weights_dir=tmp_path, device=CPU)
    assert loaded.weights_sha256 == inception_fid.FID_WEIGHTS_SHA256
