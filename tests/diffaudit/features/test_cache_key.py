"""The feature cache key covers the resize mode, the dtype and the weights hash of every extractor."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from diffaudit.features import NetworkExtractor, create_extractor, training_features_key
from diffaudit.features.extractors import Extractor, random_cnn
from diffaudit.features.preprocess import RESIZE_MODES
from diffaudit.features.weights import seeded

CPU = torch.device("cpu")
DATASET = SimpleNamespace(info=SimpleNamespace(content_hash="d" * 64))


@pytest.fixture(scope="module", params=["pixels", "random-cnn", "inception-fid", "dinov2-vits14"])
def extractor(request: pytest.FixtureRequest) -> Extractor:
    return create_extractor(request.param, seed=0, device=CPU)


@pytest.mark.parametrize(
    ("attribute", "value"), [("resize", "nearest"), ("dtype", "bfloat16"), ("weights_sha256", "e" * 64)]
)
def test_changing_the_resize_mode_dtype_or_weights_changes_the_key(
    extractor: Extractor, attribute: str, value: str
) -> None:
    changed = copy.copy(extractor)
    setattr(changed, attribute, value)
    assert getattr(extractor, attribute) != value
    assert changed.cache_key() != extractor.cache_key()
    assert training_features_key(DATASET, changed) != training_features_key(DATASET, extractor)
    assert copy.copy(extractor).cache_key() == extractor.cache_key()  # the key is a function of these attributes


def test_every_extractor_declares_a_known_resize_mode_and_its_dtype(extractor: Extractor) -> None:
    assert extractor.resize in (*RESIZE_MODES, "none") and extractor.dtype == "float32"
    assert (extractor.resize == "none") == (extractor.name == "pixels")


def network_extractor(dtype: torch.dtype, resize: str = "bilinear") -> NetworkExtractor:
    return NetworkExtractor(
        name="random-cnn",
        network=seeded(random_cnn, 0),
        dim=256,
        layer="last conv",
        input_size=32,
        mean=(0.5, 0.5, 0.5),
        std=(0.5, 0.5, 0.5),
        weights_sha256=None,
        seed=0,
        device=CPU,
        resize=resize,
        dtype=dtype,
    )


def test_the_network_dtype_is_the_one_computed_in_and_keyed() -> None:
    images = np.random.default_rng(0).integers(0, 256, (3, 20, 20, 3), dtype=np.uint8)
    single, double = network_extractor(torch.float32), network_extractor(torch.float64)
    assert double.dtype == "float64" and next(double.network.parameters()).dtype == torch.float64
    assert double.cache_key() != single.cache_key() and "network in float64" in double.preprocessing
    features = double(images)
    assert features.dtype == np.float32
    np.testing.assert_allclose(features, single(images), rtol=1e-4, atol=1e-5)


def test_the_resize_mode_is_the_one_applied_and_keyed() -> None:
    images = np.random.default_rng(1).integers(0, 256, (2, 20, 20, 3), dtype=np.uint8)
    bilinear, bicubic = network_extractor(torch.float32), network_extractor(torch.float32, "bicubic-pil")
    assert bilinear.cache_key() != bicubic.cache_key() and "bicubic" in bicubic.preprocessing
    assert not torch.equal(bilinear.network_input(images), bicubic.network_input(images))
