"""Extractor registry, local weights, the training-feature cache and the `features` stage."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import timm
import torch
from safetensors.torch import save_file

from diffaudit.datasets import Dataset, DatasetInfo, DatasetKind, content_hash
from diffaudit.datasets.digits import load_digits16
from diffaudit.features import (
    InvalidWeights,
    NetworkExtractor,
    PixelExtractor,
    UnknownExtractor,
    available_extractors,
    create_extractor,
    extract_features,
    training_features,
    training_features_key,
)
from diffaudit.features.registry import TORCHVISION_MODELS
from diffaudit.features.weights import seeded, state_dict_sha256
from diffaudit.pipeline import Cancelled, StageContext
from diffaudit.spec import EvaluationSpec, FeaturesSpec
from diffaudit.stages.artifacts import GENERATED_FEATURES_KEY as GENERATED_KEY
from diffaudit.stages.artifacts import SAMPLES_KEY
from diffaudit.stages.features import FeaturesStage
from diffaudit.store import LocalStore, ScopedStore, load_array, save_array, save_json

CPU = torch.device("cpu")
DIGITS, _ = load_digits16()


def digits(n: int, start: int = 0) -> np.ndarray:
    return np.ascontiguousarray(DIGITS[start : start + n])


def in_batches(extractor, images: np.ndarray, batch_size: int) -> np.ndarray:
    return np.concatenate([extractor(images[i : i + batch_size]) for i in range(0, len(images), batch_size)])


# ---------------------------------------------------------------- registry


def test_available_extractors_cover_the_papers_models():
    names = available_extractors()
    assert names[:2] == ["pixels", "random-cnn"]
    # Novelty paper Table 3 (VGG16, SqueezeNet, EfficientNetB7, AlexNet, InceptionV3), resnet18, the FID network,
    # DINOv2 and CLIP.
    assert set(names[2:]) == {
        "dinov2-vits14",
        "dinov2-vitb14",
        "dinov2-vitl14",
        "dinov2-vitg14",
        "clip-vitb16",
        "clip-vitl14",
        "clip-vitb16-openai",
        "clip-vitl14-openai",
        "squeezenet1_1",
        "vgg16",
        "alexnet",
        "efficientnet_b7",
        "inception_v3",
        "resnet18",
        "inception-fid",
    }


@pytest.mark.parametrize("name", ["nope", "squeezenet", "timm:not_a_timm_model", "timm:"])
def test_unknown_extractor_is_refused(name):
    with pytest.raises(UnknownExtractor, match="timm"):
        create_extractor(name, device=CPU)


def test_pixels_are_flattened_in_hwc_order_and_scaled_to_unit_range():
    images = np.array([[[[0, 51, 255], [102, 153, 204]]]], dtype=np.uint8)  # (1, 1, 2, 3)
    extractor = create_extractor("pixels", device=CPU)
    features = extractor(images)
    assert features.dtype == np.float32
    np.testing.assert_allclose(features, [[0.0, 0.2, 1.0, 0.4, 0.6, 0.8]], rtol=1e-6)
    assert extractor.output_dim((1, 2, 3)) == 6
    assert extractor.weights_sha256 is None and extractor.seed is None and not extractor.random_init


@pytest.mark.parametrize(
    "images",
    [np.zeros((2, 8, 8, 3), np.float32), np.zeros((2, 8, 8, 4), np.uint8), np.zeros((8, 8, 3), np.uint8)],
)
@pytest.mark.parametrize("name", ["pixels", "random-cnn"])
def test_extractors_refuse_anything_but_uint8_nhwc_with_1_or_3_channels(name, images):
    with pytest.raises(ValueError, match="uint8"):
        create_extractor(name, device=CPU)(images)


def test_network_input_is_resized_and_imagenet_normalised():
    extractor = create_extractor("squeezenet1_1", device=CPU)
    assert isinstance(extractor, NetworkExtractor)
    white = np.full((1, 16, 16, 1), 255, np.uint8)
    x = extractor.network_input(white)
    assert x.shape == (1, 3, 224, 224)
    expected = [(1 - 0.485) / 0.229, (1 - 0.456) / 0.224, (1 - 0.406) / 0.225]  # grey repeated, then per channel
    for channel in range(3):
        torch.testing.assert_close(x[0, channel], torch.full((224, 224), expected[channel]), rtol=1e-5, atol=1e-5)
    assert "224x224" in extractor.preprocessing and "0.485" in extractor.preprocessing


def test_random_cnn_is_seeded_and_leaves_the_global_rng_alone():
    images = digits(20)
    torch.manual_seed(123)
    before = torch.rand(3)
    torch.manual_seed(123)
    a = create_extractor("random-cnn", seed=0, device=CPU)
    assert torch.equal(torch.rand(3), before)
    b = create_extractor("random-cnn", seed=0, device=CPU)
    c = create_extractor("random-cnn", seed=1, device=CPU)
    fa, fb, fc = a(images), b(images), c(images)
    assert fa.shape == (20, 256) and fa.dtype == np.float32
    np.testing.assert_array_equal(fa, fb)
    assert not np.allclose(fa, fc)
    assert a.cache_key() == b.cache_key() != c.cache_key()
    assert a.random_init and a.seed == 0 and a.weights_sha256 is None


def test_random_cnn_features_separate_different_digits():
    # Nearest neighbours in random-cnn space mostly share the label (1-NN over 300 digits).
    images, labels = DIGITS[:300], load_digits16()[1][:300]
    features = create_extractor("random-cnn", device=CPU)(images)
    distances = torch.cdist(torch.from_numpy(features), torch.from_numpy(features)).numpy()
    np.fill_diagonal(distances, np.inf)
    assert (labels[distances.argmin(1)] == labels).mean() > 0.9


@pytest.mark.parametrize("name", ["random-cnn", "pixels"])
def test_features_do_not_depend_on_the_batch_size(name):
    extractor = create_extractor(name, device=CPU)
    images = digits(64)
    reference = extractor(images)
    for batch_size in (1, 7):
        np.testing.assert_allclose(in_batches(extractor, images, batch_size), reference, rtol=1e-4, atol=1e-5)


def test_squeezenet_features_do_not_depend_on_the_batch_size():
    extractor = create_extractor("squeezenet1_1", device=CPU)
    images = digits(7)
    reference = extractor(images)
    np.testing.assert_allclose(in_batches(extractor, images, 1), reference, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(in_batches(extractor, images, 3), reference, rtol=1e-4, atol=1e-5)


def test_greyscale_is_repeated_to_three_channels():
    extractor = create_extractor("random-cnn", device=CPU)
    grey = digits(4)
    np.testing.assert_allclose(extractor(grey), extractor(np.repeat(grey, 3, axis=3)), rtol=1e-4, atol=1e-5)


TORCHVISION_DIMS = {
    "squeezenet1_1": 512,
    "alexnet": 4096,
    "resnet18": 512,
    "vgg16": 4096,
    "efficientnet_b7": 2560,
    "inception_v3": 2048,
}


@pytest.mark.parametrize(("name", "dim"), TORCHVISION_DIMS.items())
def test_torchvision_feature_layers_have_the_declared_dim(name, dim):
    """On the meta device (shapes only, no cost): the cut network maps the model's input size to `dim` features."""
    model = TORCHVISION_MODELS[name]
    with torch.device("meta"):
        network = model.feature_network(model.build()).eval()
        out = network(torch.empty(2, 3, model.input_size, model.input_size))
    assert model.dim == dim and out.flatten(1).shape == (2, dim)
    assert model.input_size == (299 if name == "inception_v3" else 224)


@pytest.mark.parametrize("name", ["squeezenet1_1", "alexnet", "resnet18", "inception_v3"])
def test_torchvision_extractor_forward(name):
    extractor = create_extractor(name, device=CPU)
    features = extractor(digits(1))
    assert extractor.dim == TORCHVISION_DIMS[name] and features.shape == (1, extractor.dim)
    assert features.dtype == np.float32 and np.isfinite(features).all() and features.std() > 0
    assert extractor.random_init and extractor.layer == TORCHVISION_MODELS[name].layer
    size = TORCHVISION_MODELS[name].input_size
    assert f"{size}x{size}" in extractor.preprocessing


# ---------------------------------------------------------------- local weights


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_torchvision_weights_from_a_local_file(tmp_path, suffix):
    """Weights saved from a seed-3 model and reloaded reproduce that model's features; the file hash is recorded."""
    model = seeded(TORCHVISION_MODELS["squeezenet1_1"].build, 3)
    path = tmp_path / f"squeezenet{suffix}"
    if suffix == ".safetensors":
        save_file(model.state_dict(), path)
    else:
        torch.save(model.state_dict(), path)
    loaded = create_extractor("squeezenet1_1", weights=path.name, weights_dir=tmp_path, seed=0, device=CPU)
    in_memory = create_extractor("squeezenet1_1", seed=3, device=CPU)
    images = digits(2)
    np.testing.assert_allclose(loaded(images), in_memory(images), rtol=1e-5, atol=1e-6)
    assert loaded.weights_sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert loaded.seed is None and not loaded.random_init
    assert loaded.cache_key() != in_memory.cache_key()


def test_torchvision_weights_of_the_wrong_shape_are_refused(tmp_path):
    state = seeded(TORCHVISION_MODELS["squeezenet1_1"].build, 0).state_dict()
    state["features.0.weight"] = torch.zeros(8, 3, 3, 3)
    path = tmp_path / "bad.safetensors"
    save_file(state, path)
    with pytest.raises(InvalidWeights, match=r"does not fit torchvision's squeezenet1_1.*size mismatch"):
        create_extractor("squeezenet1_1", weights=path.name, weights_dir=tmp_path, device=CPU)


def test_weights_of_another_model_are_refused(tmp_path):
    path = tmp_path / "resnet.safetensors"
    save_file({"fc.weight": torch.zeros(2, 2)}, path)
    with pytest.raises(InvalidWeights, match="Missing key"):
        create_extractor("squeezenet1_1", weights=path.name, weights_dir=tmp_path, device=CPU)


class NotWeights:
    pass


@pytest.mark.parametrize(
    ("filename", "content", "message"),
    [
        ("w.safetensors", b"this is not a safetensors file", "not a readable .safetensors weights file"),
        ("w.pth", b"garbage", "not a readable .pth weights file"),
        ("w.txt", b"", "unknown format"),
    ],
)
def test_unreadable_weight_files_are_refused(tmp_path, filename, content, message):
    path = tmp_path / filename
    path.write_bytes(content)
    with pytest.raises(InvalidWeights, match=message):
        create_extractor("alexnet", weights=path.name, weights_dir=tmp_path, device=CPU)


def test_pickled_objects_are_not_loaded(tmp_path):
    path = tmp_path / "w.pt"
    torch.save({"model": NotWeights()}, path)  # weights_only=True refuses arbitrary classes
    with pytest.raises(InvalidWeights, match=r"not a readable \.pt weights file"):
        create_extractor("squeezenet1_1", weights=path.name, weights_dir=tmp_path, device=CPU)


def test_a_checkpoint_around_a_state_dict_is_refused_with_advice(tmp_path):
    path = tmp_path / "w.pt"
    torch.save({"state_dict": {"a": torch.zeros(1)}, "epoch": 3}, path)
    with pytest.raises(InvalidWeights, match=r"save model.state_dict\(\) itself"):
        create_extractor("squeezenet1_1", weights=path.name, weights_dir=tmp_path, device=CPU)


def test_missing_weights_file_is_refused(tmp_path):
    with pytest.raises(InvalidWeights, match="is not a file of the weights folder"):
        create_extractor("squeezenet1_1", weights="nowhere.safetensors", weights_dir=tmp_path, device=CPU)


@pytest.mark.parametrize("weights", ["https://example.com/w.pth", "hf-hub:timm/resnet18.a1_in1k", "s3://b/w.pt"])
def test_remote_weights_are_refused(weights):
    with pytest.raises(InvalidWeights, match="DIFFAUDIT_ALLOW_DOWNLOADS"):
        create_extractor("resnet18", weights=weights, device=CPU, allow_downloads=True)


@pytest.mark.parametrize("name", ["pixels", "random-cnn"])
def test_weightless_extractors_refuse_weights(tmp_path, name):
    with pytest.raises(InvalidWeights, match="takes no weights"):
        create_extractor(name, weights="w.safetensors", weights_dir=tmp_path, device=CPU)


# ---------------------------------------------------------------- timm


def test_timm_weights_from_a_local_safetensors_file(tmp_path):
    model: Any = seeded(lambda: timm.create_model("test_resnet", pretrained=False), 5)  # with its 1000-class head
    path = tmp_path / "test_resnet.safetensors"
    save_file(model.state_dict(), path)
    extractor = create_extractor("timm:test_resnet", weights=path.name, weights_dir=tmp_path, device=CPU)
    assert isinstance(extractor, NetworkExtractor)
    images = digits(2)
    model.reset_classifier(0)
    with torch.inference_mode():
        expected = model.eval()(extractor.network_input(images)).numpy()
    features = extractor(images)
    assert features.shape == (2, model.num_features) == (2, extractor.dim)
    np.testing.assert_allclose(features, expected, rtol=1e-5, atol=1e-6)
    assert extractor.weights_sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert "160x160" in extractor.preprocessing and "(0.5, 0.5, 0.5)" in extractor.preprocessing


def test_timm_random_init_is_seeded():
    images = digits(2)
    a = create_extractor("timm:test_resnet", seed=0, device=CPU)
    b = create_extractor("timm:test_resnet", seed=0, device=CPU)
    c = create_extractor("timm:test_resnet", seed=1, device=CPU)
    np.testing.assert_array_equal(a(images), b(images))
    assert not np.allclose(a(images), c(images))
    assert a.random_init and a.name == "timm:test_resnet"


def test_timm_weights_of_another_model_are_refused(tmp_path):
    path = tmp_path / "other.safetensors"
    save_file(timm.create_model("test_efficientnet", pretrained=False).state_dict(), path)
    with pytest.raises(InvalidWeights, match=r"lacks \d+ weights of timm's test_resnet"):
        create_extractor("timm:test_resnet", weights=path.name, weights_dir=tmp_path, device=CPU)


def test_timm_weights_of_the_wrong_shape_are_refused(tmp_path):
    state = timm.create_model("test_resnet", pretrained=False).state_dict()
    state["conv1.0.weight"] = torch.zeros(1, 3, 3, 3)
    path = tmp_path / "bad.safetensors"
    save_file(state, path)
    with pytest.raises(InvalidWeights, match="does not fit timm's test_resnet"):
        create_extractor("timm:test_resnet", weights=path.name, weights_dir=tmp_path, device=CPU)


def test_timm_hub_models_need_downloads_allowed(monkeypatch):
    with pytest.raises(InvalidWeights, match="DIFFAUDIT_ALLOW_DOWNLOADS"):
        create_extractor("timm:hf-hub:timm/test_resnet.r160_in1k", device=CPU)

    calls = []

    def fake_create_model(name, **kwargs):  # stands in for the download
        calls.append((name, kwargs))
        return seeded(lambda: timm.models.create_model("test_resnet", num_classes=0), 7)

    monkeypatch.setattr(timm, "create_model", fake_create_model)
    extractor = create_extractor("timm:hf-hub:timm/test_resnet.r160_in1k", device=CPU, allow_downloads=True)
    assert calls == [("hf-hub:timm/test_resnet.r160_in1k", {"pretrained": True, "num_classes": 0})]
    expected = state_dict_sha256(seeded(lambda: timm.models.create_model("test_resnet", num_classes=0), 7))
    assert extractor.weights_sha256 == expected and not extractor.random_init


# ---------------------------------------------------------------- cache


class CountingPixels(PixelExtractor):
    def __init__(self) -> None:
        self.images_seen = 0

    def __call__(self, images: np.ndarray) -> np.ndarray:
        self.images_seen += len(images)
        return super().__call__(images)


def stored_dataset(store: LocalStore, prefix: str, array: np.ndarray, n_heldout: int = 2) -> Dataset:
    """A dataset written in diffaudit.datasets' layout: images or features, the last `n_heldout` held out."""
    kind: DatasetKind = "images" if array.dtype == np.uint8 else "features"
    heldout = np.arange(len(array)) >= len(array) - n_heldout
    save_array(store, f"{prefix}/{kind}.npy", array)
    save_array(store, f"{prefix}/heldout.npy", heldout)
    info = DatasetInfo(
        kind=kind,
        count=len(array),
        item_shape=array.shape[1:],
        content_hash=content_hash(kind, array, None, None),
        class_names=None,
        class_counts=None,
        heldout_count=n_heldout,
    )
    save_json(store, f"{prefix}/meta.json", info.to_json())
    return Dataset.open(store, prefix)


def test_training_features_are_computed_once_and_reused(tmp_path):
    store = LocalStore(tmp_path)
    dataset = stored_dataset(store, "datasets/d", digits(23))
    cache = ScopedStore(store, "cache")
    extractor = CountingPixels()
    progress: list[tuple[int, int]] = []
    first = training_features(dataset, extractor, cache, batch_size=10, report=lambda d, t: progress.append((d, t)))
    assert progress == [(10, 23), (20, 23), (23, 23)]
    np.testing.assert_array_equal(first, digits(23).reshape(23, -1) / np.float32(255))
    key = training_features_key(dataset, extractor)
    assert key == f"features/{dataset.info.content_hash}/{extractor.cache_key()}.npy"
    assert cache.list() == [key]

    again = CountingPixels()
    second = training_features(dataset, again, cache, batch_size=4)
    assert again.images_seen == 0 and isinstance(second, np.memmap)
    np.testing.assert_array_equal(second, first)


def test_a_different_seed_is_a_different_cache_entry(tmp_path):
    store = LocalStore(tmp_path)
    dataset = stored_dataset(store, "datasets/d", digits(5))
    for seed in (0, 1):
        training_features(dataset, create_extractor("random-cnn", seed=seed, device=CPU), store, batch_size=8)
    assert len(store.list("features")) == 2


def test_user_features_are_returned_as_they_are(tmp_path):
    store = LocalStore(tmp_path)
    embeddings = np.random.default_rng(0).normal(size=(9, 5)).astype(np.float32)
    dataset = stored_dataset(store, "datasets/f", embeddings)
    extractor = CountingPixels()
    np.testing.assert_array_equal(training_features(dataset, extractor, store, batch_size=4), embeddings)
    assert extractor.images_seen == 0 and store.list("features") == []


@pytest.mark.parametrize("count", [5, 7])
def test_extract_features_refuses_a_wrong_count(tmp_path, count):
    batches = [digits(3), digits(3)]
    with pytest.raises(ValueError, match="announced"):
        extract_features(PixelExtractor(), batches, count, tmp_path / "f.npy")


# ---------------------------------------------------------------- stage


def stage_context(store: LocalStore, dataset: Dataset, job: str, features: FeaturesSpec, **kwargs) -> StageContext:
    return StageContext(
        spec=EvaluationSpec(features=features),
        checkpoint_dir=Path("unused"),
        dataset=dataset,
        job=ScopedStore(store, f"jobs/{job}"),
        cache=ScopedStore(store, "cache"),
        device=CPU,
        results={},
        **kwargs,
    )


def test_features_stage_embeds_samples_and_caches_training_features(tmp_path):
    store = LocalStore(tmp_path)
    dataset = stored_dataset(store, "datasets/d", digits(30))
    samples = digits(12, start=100)
    spec = FeaturesSpec(extractor="random-cnn", seed=2, batch_size=5)
    progress: list[tuple[int, int]] = []
    ctx = stage_context(store, dataset, "j1", spec, report=lambda d, t: progress.append((d, t)))
    save_array(ctx.job, SAMPLES_KEY, samples)

    summary = FeaturesStage().run(ctx)

    extractor = create_extractor("random-cnn", seed=2, device=CPU)
    np.testing.assert_allclose(load_array(ctx.job, GENERATED_KEY), extractor(samples), rtol=1e-5, atol=1e-6)
    training = load_array(ctx.cache, summary["training_features_key"])
    np.testing.assert_allclose(training, extractor(digits(30)), rtol=1e-5, atol=1e-6)
    assert progress[0] == (5, 42) and progress[-1] == (42, 42)
    assert summary == {
        "headline": "12 generated samples embedded with random-cnn (256-d); training features computed",
        "extractor": "random-cnn",
        "dim": 256,
        "weights_sha256": None,
        "random_init": True,
        "preprocessing": extractor.preprocessing,
        "layer": extractor.layer,
        "cache_key": extractor.cache_key(),
        "training_features_key": training_features_key(dataset, extractor),
        "training_cache_hit": False,
        "n_generated": 12,
        "n_dataset": 30,
    }

    other_job = stage_context(store, dataset, "j2", spec)
    save_array(other_job.job, SAMPLES_KEY, samples)
    assert FeaturesStage().run(other_job)["training_cache_hit"] is True
    assert FeaturesStage.name == "features" and FeaturesStage.queue == "gpu"


def test_features_stage_stops_when_the_job_is_cancelled(tmp_path):
    store = LocalStore(tmp_path)
    dataset = stored_dataset(store, "datasets/d", digits(10))
    ctx = stage_context(store, dataset, "j", FeaturesSpec(extractor="pixels"), is_cancelled=lambda: True)
    save_array(ctx.job, SAMPLES_KEY, digits(4))
    with pytest.raises(Cancelled):
        FeaturesStage().run(ctx)
    assert not ctx.job.exists(GENERATED_KEY)


def test_features_stage_with_user_features_checks_the_dimension(tmp_path):
    store = LocalStore(tmp_path)
    embeddings = np.random.default_rng(0).normal(size=(8, 256)).astype(np.float32)
    dataset = stored_dataset(store, "datasets/f", embeddings)

    wrong = stage_context(store, dataset, "j1", FeaturesSpec(extractor="squeezenet1_1"))
    save_array(wrong.job, SAMPLES_KEY, digits(3))
    with pytest.raises(ValueError, match="256-dimensional features but extractor 'squeezenet1_1' gives 512"):
        FeaturesStage().run(wrong)

    right = stage_context(store, dataset, "j2", FeaturesSpec(extractor="pixels"))  # 16 * 16 * 1 = 256
    save_array(right.job, SAMPLES_KEY, digits(3))
    summary = FeaturesStage().run(right)
    assert summary["dim"] == 256 and summary["training_cache_hit"] is False
    assert summary["training_features_key"] is None and store.list("cache") == []
