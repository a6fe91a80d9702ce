"""POST /v1/evaluations refuses, with a 422 naming the field, every spec that would be accepted and then fail.

The checkpoint is the tiny class-conditional 16x16 greyscale model (10 classes); `digits` is 16x16x1 with 10
classes and a held-out split. Nothing refused is stored or sent to the workers.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from app_helpers import EnqueueRecorder, TinyCheckpoint, upload_checkpoint
from fastapi.testclient import TestClient
from safetensors.torch import save_file

FEATURES_8D = np.random.default_rng(0).normal(size=(40, 8)).astype(np.float32)


def npz(**arrays: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, allow_pickle=False, **arrays)
    return buffer.getvalue()


def upload_dataset(
    client: TestClient, headers: dict[str, str], heldout_fraction: float = 0.0, **arrays: np.ndarray
) -> str:
    response = client.post(
        "/v1/datasets",
        headers=headers,
        files={"file": ("data.npz", npz(**arrays))},
        data={"heldout_fraction": str(heldout_fraction)},
    )
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def grey(count: int, side: int = 16, channels: int = 1) -> np.ndarray:
    return np.random.default_rng(count).integers(0, 256, size=(count, side, side, channels), dtype=np.uint8)


@pytest.fixture()
def checkpoint_id(client: TestClient, auth: dict[str, str], tiny_checkpoint: TinyCheckpoint) -> str:
    return str(upload_checkpoint(client, auth, tiny_checkpoint.zip_bytes).json()["id"])


@pytest.fixture()
def unconditional_id(client: TestClient, auth: dict[str, str], unconditional_checkpoint: TinyCheckpoint) -> str:
    return str(upload_checkpoint(client, auth, unconditional_checkpoint.zip_bytes).json()["id"])


Submit = Callable[..., Any]


@pytest.fixture()
def submit(client: TestClient, auth: dict[str, str], checkpoint_id: str) -> Submit:
    def post(spec: dict[str, Any], dataset_id: str = "digits", checkpoint: str | None = None) -> Any:
        body = {"checkpoint_id": checkpoint or checkpoint_id, "dataset_id": dataset_id, "spec": spec}
        return client.post("/v1/evaluations", headers=auth, json=body)

    return post


def assert_refused(response: Any, field: str, *fragments: str) -> str:
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["details"]["field"] == field
    assert error["message"].startswith(f"{field}: ")
    for fragment in fragments:
        assert fragment in error["message"], error["message"]
    return str(error["message"])


# --- extractors and weights ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("features", "field", "fragment"),
    [
        ({"extractor": "resnet9000"}, "spec.features.extractor", "unknown extractor 'resnet9000'"),
        ({"extractor": "timm:notamodel"}, "spec.features.extractor", "timm has no model 'notamodel'"),
        ({"extractor": "timm:hf-hub:timm/resnet18.a1_in1k"}, "spec.features.extractor", "DIFFAUDIT_ALLOW_DOWNLOADS"),
        ({"extractor": "pixels", "weights": "w.safetensors"}, "spec.features.weights", "takes no weights"),
        ({"extractor": "squeezenet1_1", "weights": "w.txt"}, "spec.features.weights", "unknown format"),
    ],
)
def test_unknown_extractors_are_refused(
    submit: Submit, recorder: EnqueueRecorder, features: dict[str, Any], field: str, fragment: str
) -> None:
    assert_refused(submit({"stages": ["features"], "features": features}), field, fragment)
    assert recorder.calls == []


@pytest.fixture()
def weights_folder(tmp_path: Path) -> Path:
    """An operator's weights folder with squeezenet.safetensors; a file of another project lies beside it."""
    folder = tmp_path / "operator-weights"
    folder.mkdir()
    save_file({"a": torch.zeros(1)}, folder / "squeezenet.safetensors")
    save_file({"a": torch.zeros(1)}, tmp_path / "other-project.safetensors")
    (folder / "link.safetensors").symlink_to(tmp_path / "other-project.safetensors")
    return folder


def weights_spec(weights: str, field: str = "features") -> dict[str, Any]:
    if field == "features":
        return {"stages": ["features"], "features": {"extractor": "squeezenet1_1", "weights": weights}}
    if field == "guided.extractor_weights":
        return {"stages": ["guided"], "guided": {"extractor": "squeezenet1_1", "extractor_weights": weights}}
    if field == "guided.classifier_weights":
        return {"stages": ["guided"], "guided": {"classifier_weights": weights}}
    return {"stages": ["novelty"], "novelty": {"extractors": [{"name": "squeezenet1_1", "weights": weights}]}}


WEIGHTS_FIELDS = ["features", "guided.extractor_weights", "guided.classifier_weights", "novelty.extractors[0]"]


@pytest.mark.parametrize("field", WEIGHTS_FIELDS)
def test_weights_come_only_from_the_operators_folder(
    make_client: Callable[..., TestClient],
    auth: dict[str, str],
    tiny_checkpoint: TinyCheckpoint,
    weights_folder: Path,
    field: str,
) -> None:
    client = make_client(weights_dir=weights_folder)
    checkpoint = upload_checkpoint(client, auth, tiny_checkpoint.zip_bytes).json()["id"]

    def post(weights: str) -> Any:
        body = {"checkpoint_id": checkpoint, "dataset_id": "digits", "spec": weights_spec(weights, field)}
        return client.post("/v1/evaluations", headers=auth, json=body)

    assert post("squeezenet.safetensors").status_code == 201
    spec_field = f"spec.{field}" if field != "features" else "spec.features.weights"
    if field == "novelty.extractors[0]":
        spec_field += ".weights"
    outside = weights_folder.parent / "other-project.safetensors"
    messages = set()
    for name in [str(outside), "../other-project.safetensors", "link.safetensors", "missing.safetensors"]:
        message = assert_refused(post(name), spec_field, "is not a file of the weights folder")
        assert str(weights_folder.parent) not in message.replace(name, "")  # no server path in the answer
        messages.add(message.replace(repr(name), "NAME"))
    assert len(messages) == 1  # the same answer whether or not the file exists


def test_without_a_weights_folder_no_weights_are_accepted(submit: Submit, weights_folder: Path) -> None:
    existing = str(weights_folder / "squeezenet.safetensors")
    assert_refused(submit(weights_spec(existing)), "spec.features.weights", "DIFFAUDIT_WEIGHTS_DIR")


def test_the_guidance_classifier_must_be_safetensors(submit: Submit) -> None:
    assert_refused(submit(weights_spec("c.pth", "guided.classifier_weights")), "spec.guided.classifier_weights")


# --- the dataset against the checkpoint --------------------------------------------------------------------


@pytest.mark.parametrize(("side", "channels"), [(1, 1), (8, 1), (16, 3)])
def test_images_of_another_size_or_channels_are_refused(
    client: TestClient, auth: dict[str, str], submit: Submit, side: int, channels: int
) -> None:
    dataset = upload_dataset(client, auth, images=grey(8, side, channels))
    message = assert_refused(
        submit({"stages": ["irs"]}, dataset), "dataset_id", f"{side}x{side} {channels}-channel images", "16x16"
    )
    assert "pick the dataset the model was trained on" in message


def test_features_of_another_dimension_are_refused(client: TestClient, auth: dict[str, str], submit: Submit) -> None:
    dataset = upload_dataset(client, auth, features=FEATURES_8D)
    assert_refused(submit({"stages": ["features"]}, dataset), "spec.features.extractor", "8-dimensional", "256")
    pixels = {"stages": ["features"], "features": {"extractor": "pixels"}}  # 16x16x1 = 256 values
    assert_refused(submit(pixels, dataset), "spec.features.extractor", "256-dimensional")


def test_a_dinov2_spec_is_checked_at_its_dimension_and_input_size(
    client: TestClient, auth: dict[str, str], submit: Submit
) -> None:
    """dinov2-vitb14 gives 768-d features of 224x224x3 inputs; both are known without building the network."""
    spec = {"stages": ["features"], "features": {"extractor": "dinov2-vitb14"}}
    dataset = upload_dataset(client, auth, features=FEATURES_8D)
    assert_refused(submit(spec, dataset), "spec.features.extractor", "8-dimensional", "'dinov2-vitb14' gives 768")
    features_768d = np.random.default_rng(1).normal(size=(40, 768)).astype(np.float32)
    assert submit(spec, upload_dataset(client, auth, features=features_768d)).status_code == 201
    large = {"stages": ["features"], "features": {"extractor": "dinov2-vitb14", "batch_size": 4096}}
    assert_refused(submit(large), "spec.features.batch_size", "224x224x3", "at most 891")
    assert submit({"stages": ["features"], "features": {"extractor": "dinov2-vitb14"}}).status_code == 201


def test_a_one_row_features_dataset_is_refused_for_irs_and_novelty(
    client: TestClient, auth: dict[str, str], submit: Submit
) -> None:
    dataset = upload_dataset(client, auth, features=np.ones((1, 256), dtype=np.float32))
    assert_refused(submit({"stages": ["irs"]}, dataset), "spec.irs.heldout_fraction", "1 item(s)")
    assert_refused(submit({"stages": ["novelty"]}, dataset), "dataset_id", "at least 8 training items", "has 1")
    assert submit({"stages": ["features"], "features": {"extractor": "pixels"}}, dataset).status_code == 201


def test_distribution_needs_a_full_kid_subset_of_samples_and_of_training_items(
    client: TestClient, auth: dict[str, str], submit: Submit
) -> None:
    small = upload_dataset(client, auth, images=grey(40))  # no held-out split: 40 training images
    too_large = {"stages": ["distribution"], "sample": {"n": 64}, "distribution": {"kid_subset_size": 50}}
    assert_refused(submit(too_large, small), "spec.distribution.kid_subset_size", "50 exceeds the 40 training items")
    assert_refused(submit({"stages": ["distribution"], "distribution": {"k": 40}}, small), "spec.distribution.k", "40")
    more_than_sampled = submit({**too_large, "sample": {"n": 32}})  # refused by the spec itself: a 422 too
    assert more_than_sampled.status_code == 422, more_than_sampled.text
    assert "distribution.kid_subset_size 50 exceeds the 32 samples" in more_than_sampled.json()["error"]["message"]
    accepted = submit({"stages": ["distribution"], "distribution": {"kid_subset_size": 40}}, small)
    assert accepted.status_code == 201 and accepted.json()["spec"]["stages"] == ["sample", "features", "distribution"]


def test_memorization_needs_enough_training_images_and_images(
    client: TestClient, auth: dict[str, str], submit: Submit
) -> None:
    response = submit({"stages": ["memorization"], "memorization": {"n_neighbours": 5000}})
    assert_refused(response, "spec.memorization.n_neighbours", "5000 exceeds the 1438 training images", "1438")
    assert submit({"stages": ["memorization"], "memorization": {"n_neighbours": 1438}}).status_code == 201
    features = upload_dataset(client, auth, features=np.ones((60, 256), dtype=np.float32))
    assert_refused(submit({"stages": ["memorization"]}, features), "dataset_id", "holds features only")
    # space features/both brings the features stage in itself (its prerequisites come from its own spec)
    by_features = submit({"stages": ["memorization"], "memorization": {"space": "both"}})
    assert by_features.status_code == 201 and by_features.json()["spec"]["stages"] == [
        "sample",
        "features",
        "memorization",
    ]
    axes = {"stages": ["memorization"], "memorization": {"n_axes": 300}}
    assert_refused(submit(axes), "spec.memorization.n_axes", "image dimension 256")


def test_stages_that_need_labels_a_held_out_split_or_classes(
    client: TestClient, auth: dict[str, str], submit: Submit, unconditional_id: str
) -> None:
    unlabelled = upload_dataset(client, auth, heldout_fraction=0.25, images=grey(40))
    no_split = upload_dataset(client, auth, images=grey(40), labels=np.arange(40) % 10)
    assert_refused(submit({"stages": ["balance"]}, unlabelled), "dataset_id", "needs a labelled dataset")
    conditioning = {"stages": ["balance"], "balance": {"labels": "conditioning"}}
    assert_refused(submit(conditioning, checkpoint=unconditional_id), "spec.balance.labels", "class-conditional")
    assert_refused(submit({"stages": ["augmentation"]}, no_split), "dataset_id", "held-out split")
    unconditional = submit({"stages": ["augmentation"]}, checkpoint=unconditional_id)
    assert_refused(unconditional, "checkpoint_id", "not class-conditional")
    minority = {"stages": ["augmentation"], "augmentation": {"minority_class": 10}}
    assert_refused(submit(minority), "spec.augmentation.minority_class", "not one of the 10 classes")
    assert_refused(submit({"stages": ["guided"]}, no_split), "dataset_id", "held-out real images")
    assert_refused(submit({"stages": ["guided"]}, unlabelled), "dataset_id", "needs a labelled dataset")
    tiny = upload_dataset(client, auth, heldout_fraction=0.5, images=grey(8), labels=np.arange(8) % 2)
    assert_refused(submit({"stages": ["guided"]}, tiny, unconditional_id), "dataset_id", "at least 5 training images")
    five_classes = upload_dataset(client, auth, heldout_fraction=0.25, images=grey(40), labels=np.arange(40) % 5)
    assert_refused(submit({"stages": ["guided"]}, five_classes), "dataset_id", "5 classes")
    assert_refused(submit({"stages": ["augmentation"]}, five_classes), "checkpoint_id", "generates 10 classes")
    features = upload_dataset(client, auth, features=FEATURES_8D)
    extra = {
        "stages": ["novelty"],
        "features": {"extractor": "timm:test_resnet"},
        "novelty": {"extractors": [{"name": "squeezenet1_1"}]},
    }
    assert_refused(submit(extra, features), "spec.novelty.extractors", "holds features")
    for stages in (["balance"], ["guided"], ["augmentation"], ["novelty"], ["irs"]):
        assert submit({"stages": stages}).status_code == 201, stages  # digits has what each needs


def test_membership_needs_a_held_out_split_images_and_known_timesteps(
    client: TestClient, auth: dict[str, str], submit: Submit
) -> None:
    no_split = upload_dataset(client, auth, images=grey(40), labels=np.arange(40) % 10)
    assert_refused(submit({"stages": ["membership"]}, no_split), "dataset_id", "held-out images", "heldout_fraction")
    features = upload_dataset(client, auth, heldout_fraction=0.25, features=np.ones((60, 256), dtype=np.float32))
    assert_refused(submit({"stages": ["membership"]}, features), "dataset_id", "holds features only")
    # the tiny checkpoint is trained with 100 timesteps: the default denoising-loss timestep 200 is beyond them
    assert_refused(submit({"stages": ["membership"]}), "spec.membership", "timestep 200", "100 timesteps (0..99)")
    late = {"stages": ["membership"], "membership": {"scores": ["pia"], "pia_timestep": 100}}
    assert_refused(submit(late), "spec.membership", "timestep 100", "100 timesteps")
    axes = {"stages": ["membership"], "membership": {"scores": ["volume_growth"], "vg_n_axes": 300}}
    assert_refused(submit(axes), "spec.membership.vg_n_axes", "image dimension 256")
    accepted = submit({"stages": ["membership"], "membership": {"loss_timesteps": [50]}})
    assert accepted.status_code == 201 and accepted.json()["spec"]["stages"] == ["membership"]


# --- the work of one batch ---------------------------------------------------------------------------------


def test_one_batch_is_bounded_by_the_server_setting(
    make_client: Callable[..., TestClient], auth: dict[str, str], tiny_checkpoint: TinyCheckpoint
) -> None:
    client = make_client(max_batch_pixels=2**18)
    checkpoint = upload_checkpoint(client, auth, tiny_checkpoint.zip_bytes).json()["id"]

    def post(spec: dict[str, Any]) -> Any:
        return client.post(
            "/v1/evaluations", headers=auth, json={"checkpoint_id": checkpoint, "dataset_id": "digits", "spec": spec}
        )

    huge = {"stages": ["sample"], "sample": {"n": 1_000_000, "steps": 1000, "batch_size": 4096}}
    assert_refused(post(huge), "spec.sample.batch_size", "1,048,576", "262,144", "DIFFAUDIT_MAX_BATCH_PIXELS", "1024")
    assert post({"stages": ["sample"], "sample": {"batch_size": 1024}}).status_code == 201
    growth = {"stages": ["memorization"], "memorization": {"batch_size": 1024, "n_axes": 3}}
    assert_refused(post(growth), "spec.memorization.batch_size", "1024 x 4 x 16x16x1", "at most 256")
    membership = {"stages": ["membership"], "membership": {"scores": ["pia", "volume_growth"], "batch_size": 1024}}
    assert_refused(post(membership), "spec.membership.batch_size", "1024 x 2 x 16x16x1", "at most 512")
    guided = {"stages": ["guided"], "features": {"batch_size": 64}, "guided": {"extractor": "squeezenet1_1"}}
    assert_refused(post(guided), "spec.guided.batch_size", "224x224x3", "at most 1")


def test_extractor_batches_count_at_the_extractors_input_size(submit: Submit) -> None:
    """With the default limit: 4096 images of 224x224x3 is 616,562,688 values in one squeezenet batch."""
    spec = {"stages": ["features"], "features": {"extractor": "squeezenet1_1", "batch_size": 4096}}
    assert_refused(submit(spec), "spec.features.batch_size", "616,562,688", "at most 891")
    assert submit({**spec, "features": {"extractor": "squeezenet1_1", "batch_size": 256}}).status_code == 201
    timm = {"stages": ["features"], "features": {"extractor": "timm:efficientnet_b7", "batch_size": 512}}
    assert_refused(submit(timm), "spec.features.batch_size", "600x600x3")  # timm's default input size


@pytest.mark.parametrize("inside", ["artifacts", "cache", "."])
def test_the_weights_folder_may_not_overlap_the_project_files(
    make_settings: Callable[..., Any], tmp_path: Path, inside: str
) -> None:
    """Otherwise a spec could name another project's uploaded checkpoint weights as extractor weights."""
    folder = tmp_path / inside
    with pytest.raises(ValueError, match="DIFFAUDIT_WEIGHTS_DIR must not overlap"):
        make_settings(weights_dir=folder if inside != "artifacts" else folder / "checkpoints")
    assert make_settings(weights_dir=tmp_path / "weights").weights_dir == tmp_path / "weights"
