"""DINOv2 and CLIP through timm: local weights files, DINOv2's position embeddings, preprocessing against timm's own
transform, batch size, greyscale, and the registry's answers without building a network."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from safetensors.torch import save_file
from timm.data import create_transform, resolve_data_config
from timm.layers import resample_abs_pos_embed

from diffaudit.features import InvalidWeights, NetworkExtractor, available_extractors, create_extractor
from diffaudit.features.preprocess import rgb_tensor
from diffaudit.features.registry import extractor_dim, extractor_input_size, extractor_weights_path
from diffaudit.features.vit import (
    CLIP_MEAN,
    VIT_MODELS,
    build_vit,
    create_vit_extractor,
    dinov2_position_embedding,
    load_vit_weights,
)
from diffaudit.features.weights import seeded

CPU = torch.device("cpu")
DINOV2 = ["dinov2-vits14", "dinov2-vitb14", "dinov2-vitl14", "dinov2-vitg14"]
CLIP = ["clip-vitb16", "clip-vitl14", "clip-vitb16-openai", "clip-vitl14-openai"]


def gratings(count: int, height: int, width: int, seed: int) -> np.ndarray:
    """Coloured sine gratings (orientation, frequency, phase and colour differ per image), uint8 NHWC."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width] / max(height, width)
    out = []
    for _ in range(count):
        a, b, phase = rng.uniform(-3, 3, 3)
        grating = 0.5 + 0.5 * np.sin(2 * np.pi * (a * xx + b * yy) + phase)
        out.append(255 * rng.uniform(0.2, 1, 3) * grating[..., None])
    return np.array(out).round().astype(np.uint8)


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return gratings(16, 40, 40, seed=18)


@pytest.fixture(scope="module")
def dinov2() -> NetworkExtractor:
    return create_vit_extractor("dinov2-vits14", None, 0, CPU)


@pytest.fixture(scope="module")
def batched(dinov2: NetworkExtractor, images: np.ndarray) -> np.ndarray:
    """dinov2-vits14 features of all 16 images in one batch."""
    return dinov2(images)


@pytest.fixture(scope="module")
def clip() -> NetworkExtractor:
    return create_vit_extractor("clip-vitb16", None, 0, CPU)


def close(a: np.ndarray, b: np.ndarray) -> bool:
    """Equal within 1e-5 of the largest magnitude (float32 matrix products summed in another order)."""
    return bool(np.abs(a - b).max() <= 1e-5 * np.abs(b).max())


def save_weights(network: torch.nn.Module, path: Path) -> None:
    save_file({key: value.contiguous() for key, value in network.state_dict().items()}, path)


# ---------------------------------------------------------------- weights files


def test_dinov2_features_from_a_weights_file_equal_the_in_memory_networks(
    dinov2: NetworkExtractor, batched: np.ndarray, images: np.ndarray, tmp_path: Path
) -> None:
    save_weights(dinov2.network, tmp_path / "vits14.safetensors")
    loaded = create_extractor("dinov2-vits14", weights="vits14.safetensors", weights_dir=tmp_path, device=CPU)
    assert isinstance(loaded, NetworkExtractor)
    np.testing.assert_array_equal(loaded(images[:2]), dinov2(images[:2]))
    assert batched.shape == (16, 384) and batched.dtype == np.float32
    assert batched.std(0).mean() > 1e-2 * np.abs(batched).max()  # the features do vary between images
    sha256 = hashlib.sha256((tmp_path / "vits14.safetensors").read_bytes()).hexdigest()
    assert loaded.weights_sha256 == sha256 and loaded.seed is None and not loaded.random_init
    assert dinov2.random_init and loaded.cache_key() != dinov2.cache_key()


def test_dinov2_release_weights_get_dinov2s_own_position_embeddings(dinov2: NetworkExtractor, tmp_path: Path) -> None:
    """A 518 px file in DINOv2's key layout (mask_token included): timm converts the keys, and the 37 x 37 position
    embeddings become the 16 x 16 ones DINOv2's hub model interpolates at run time for a 224 px input."""
    release = seeded(lambda: timm.create_model("vit_small_patch14_dinov2", pretrained=False, num_classes=0), 1)
    state = {key: value.contiguous() for key, value in release.state_dict().items()}
    assert state["pos_embed"].shape == (1, 1 + 37 * 37, 384)
    state["mask_token"] = torch.zeros(1, 384)
    torch.save(state, tmp_path / "dinov2_vits14_pretrain.pth")
    loaded = create_extractor("dinov2-vits14", weights="dinov2_vits14_pretrain.pth", weights_dir=tmp_path, device=CPU)
    assert isinstance(loaded, NetworkExtractor)
    weights = loaded.network.state_dict()
    expected = dinov2_position_embedding(state["pos_embed"], (16, 16))
    torch.testing.assert_close(weights["pos_embed"], expected, rtol=0, atol=0)
    for key, value in weights.items():
        if key != "pos_embed":
            torch.testing.assert_close(value, state[key], rtol=0, atol=0)
    timms_own = resample_abs_pos_embed(state["pos_embed"], new_size=[16, 16], num_prefix_tokens=1)
    assert (timms_own - expected).abs().max() > 1e-3 * expected.abs().max()  # so the choice matters


def cubic_convolution(values: np.ndarray, position: float, a: float = -0.75) -> float:
    """Keys' cubic convolution (PyTorch's bicubic, a = -0.75) of 1-d `values` at `position`, away from the borders."""

    def weight(d: float) -> float:
        d = abs(d)
        return (a + 2) * d**3 - (a + 3) * d**2 + 1 if d <= 1 else a * d**3 - 5 * a * d**2 + 8 * a * d - 4 * a

    left = int(np.floor(position))
    return sum(weight(position - i) * values[i] for i in range(left - 1, left + 3))


def test_dinov2_position_embeddings_use_the_01_offset_scale() -> None:
    """Output column k samples input column (k + 0.5) * 37 / 16.1 - 0.5 (align_corners=False with DINOv2's scale
    factor 16.1 / 37, not 16 / 37); rows of equal values stay equal under the vertical pass."""
    row = np.random.default_rng(0).normal(size=37).astype(np.float32)
    grid_in = torch.from_numpy(row).repeat(37, 1)  # every row the same
    pos_embed = torch.cat([torch.full((1, 1), 7.0), grid_in.reshape(-1, 1)]).reshape(1, 1 + 37 * 37, 1)
    out = dinov2_position_embedding(pos_embed, (16, 16))
    assert out.shape == (1, 257, 1) and out[0, 0, 0] == 7.0  # the class token's embedding is kept
    grid = out[0, 1:, 0].reshape(16, 16).numpy()
    for k in range(1, 15):
        expected = cubic_convolution(row, (k + 0.5) * 37 / 16.1 - 0.5)
        assert abs(grid[5, k] - expected) < 1e-5
    without_offset = cubic_convolution(row, (7 + 0.5) * 37 / 16 - 0.5)
    assert abs(grid[5, 7] - without_offset) > 1e-3
    assert dinov2_position_embedding(out, (16, 16)) is out  # already on the grid: unchanged


def test_a_weights_file_of_another_model_is_refused_naming_the_files_that_fit(
    dinov2: NetworkExtractor, tmp_path: Path
) -> None:
    state = {key: value.contiguous() for key, value in dinov2.network.state_dict().items()}
    save_file({k: v for k, v in state.items() if not k.startswith("blocks.11.")}, tmp_path / "truncated.safetensors")
    with pytest.raises(InvalidWeights, match=r"does not fit dinov2-vits14 .*dinov2_vits14_pretrain\.pth"):
        create_extractor("dinov2-vits14", weights="truncated.safetensors", weights_dir=tmp_path, device=CPU)
    (tmp_path / "garbage.pth").write_bytes(b"not a weights file")
    with pytest.raises(InvalidWeights, match="not a readable"):
        create_extractor("dinov2-vits14", weights="garbage.pth", weights_dir=tmp_path, device=CPU)


def test_clip_features_are_the_projected_image_embedding_and_load_from_a_file(
    clip: NetworkExtractor, tmp_path: Path
) -> None:
    images = gratings(2, 40, 56, seed=3)
    features = clip(images)
    assert features.shape == (2, 512)
    network = clip.network
    with torch.inference_mode():
        x = clip.network_input(images)
        cls = network.forward_head(network.forward_features(x), pre_logits=True)  # type: ignore[operator]
        expected = (cls @ network.head.weight.T + network.head.bias).numpy()  # type: ignore[union-attr]
    assert cls.shape == (2, 768) and close(features, expected)
    save_weights(network, tmp_path / "clip.safetensors")
    loaded = create_extractor("clip-vitb16", weights="clip.safetensors", weights_dir=tmp_path, device=CPU)
    single = clip(images[:1])
    np.testing.assert_array_equal(loaded(images[:1]), single)
    assert close(single[0], features[0]) and close(clip(images[1:2])[0], features[1])  # batch size 1 against 2
    save_file({"fc.weight": torch.zeros(10, 512)}, tmp_path / "resnet.safetensors")  # no key of the network
    with pytest.raises(InvalidWeights, match=r"does not fit clip-vitb16 .*open_clip's ViT-B-16"):
        load_vit_weights("clip-vitb16", VIT_MODELS["clip-vitb16"], network, tmp_path / "resnet.safetensors")


def test_random_initialisations_are_seeded() -> None:
    a, b = (seeded(lambda: build_vit(VIT_MODELS["dinov2-vits14"]), 5) for _ in range(2))
    for key, value in a.state_dict().items():
        torch.testing.assert_close(value, b.state_dict()[key], rtol=0, atol=0)


# ---------------------------------------------------------------- preprocessing


def timm_transform_input(network: torch.nn.Module, image: np.ndarray, **overrides: object) -> torch.Tensor:
    """timm's eval transform from the model's pretrained config (at the 224 px input) applied to a PIL image."""
    config = resolve_data_config({"input_size": (3, 224, 224), **overrides}, model=network)
    assert config["interpolation"] == "bicubic" and config["crop_mode"] == "center"
    return create_transform(**config)(Image.fromarray(image))  # type: ignore[no-any-return]


def assert_within_pil_rounding(ours: torch.Tensor, theirs: torch.Tensor, std: float) -> None:
    """PIL resamples 8-bit images with fixed-point filter weights and rounds; torchvision (ours) resamples in float32
    and rounds. Measured on random noise, the worst case: at most 2 uint8 levels apart, on under 1% of the values. So:
    at most 2/255 of a unit in [0, 1] (2 / 255 / std after normalisation) anywhere, and under 2% of values differ."""
    difference = (ours - theirs).abs()
    assert ours.shape == theirs.shape
    assert difference.max() <= 2 / 255 / std + 1e-5
    assert (difference > 1e-5).float().mean() < 0.02


@pytest.mark.parametrize(("height", "width"), [(40, 40), (256, 256), (224, 224)])
def test_dinov2_preprocessing_is_timms_transform(dinov2: NetworkExtractor, height: int, width: int) -> None:
    """dgm-eval resizes to (224, 224) without cropping; timm's transform (crop_pct 1.0) resizes the shorter side to 224
    and crops the centre 224 x 224, the same on square images, which is what is compared here."""
    image = gratings(1, height, width, seed=height)
    theirs = timm_transform_input(dinov2.network, image[0])
    assert_within_pil_rounding(dinov2.network_input(image)[0], theirs, std=0.224)


@pytest.mark.parametrize(("height", "width"), [(40, 56), (300, 260), (224, 224)])
def test_clip_preprocessing_is_timms_transform_with_clips_full_crop(
    clip: NetworkExtractor, height: int, width: int
) -> None:
    """CLIP's own transform is Resize(224, bicubic) + CenterCrop(224): timm's with crop_pct 1.0 (timm's config for
    the OpenAI ViT-B/16 says 0.9, which is not CLIP's preprocessing)."""
    image = gratings(1, height, width, seed=height)
    theirs = timm_transform_input(clip.network, image[0], crop_pct=1.0, mean=CLIP_MEAN)
    assert_within_pil_rounding(clip.network_input(image)[0], theirs, std=0.261)


def test_greyscale_is_replicated_to_three_channels_in_one_place(dinov2: NetworkExtractor, images: np.ndarray) -> None:
    grey = images[:2, :, :, :1]
    rgb = rgb_tensor(grey, CPU)
    assert rgb.shape == (2, 3, 40, 40) and rgb.dtype == torch.uint8
    for channel in range(3):
        torch.testing.assert_close(rgb[:, channel], torch.from_numpy(grey[..., 0]), rtol=0, atol=0)
    np.testing.assert_array_equal(dinov2(grey), dinov2(np.repeat(grey, 3, axis=3)))


def test_batch_size_does_not_change_features(dinov2: NetworkExtractor, batched: np.ndarray, images: np.ndarray) -> None:
    for i in (0, 15):
        assert close(dinov2(images[i : i + 1])[0], batched[i])


# ---------------------------------------------------------------- registry


@pytest.mark.parametrize("name", DINOV2 + CLIP)
def test_registry_answers_without_building_the_network(name: str) -> None:
    """The dimension and input size that submission checks use equal those of the timm network (built on the meta
    device: no memory, no weights)."""
    assert name in available_extractors()
    with torch.device("meta"):
        network = build_vit(VIT_MODELS[name])
    assert extractor_input_size(name, (16, 16, 1)) == (224, 224, 3)
    assert network.patch_embed.img_size == (224, 224)  # type: ignore[union-attr]
    expected = network.head.out_features if name in CLIP else network.num_features  # type: ignore[union-attr]
    assert extractor_dim(name, (16, 16, 1)) == expected
    assert extractor_weights_path(name, None, weights_dir=None, allow_downloads=False) is None
    with pytest.raises(InvalidWeights, match="remote reference"):
        extractor_weights_path(name, "hf-hub:timm/x", weights_dir=None, allow_downloads=False)
