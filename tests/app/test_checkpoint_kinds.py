"""Latent and DiT checkpoints through the API: the kind and components stored at upload, components diffaudit
does not use refused by name, and the stages that cannot run on a kind yet refused at submission (a 422)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from app_helpers import upload_checkpoint, zip_folder
from fastapi.testclient import TestClient

from tests.diffaudit.checkpoints.tiny_kinds import save_adm, save_dit, save_ldm


@pytest.fixture(scope="module")
def zips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    root = tmp_path_factory.mktemp("kinds")
    with_text_encoder = save_ldm(root / "sd-like", autoencoder="vae")
    (with_text_encoder / "text_encoder").mkdir()
    (with_text_encoder / "text_encoder/config.json").write_text(json.dumps({"_class_name": "CLIPTextModel"}))
    folders = {
        "ldm": save_ldm(root / "ldm"),
        "dit": save_dit(root / "dit"),
        "adm": save_adm(root / "adm"),
        "sd-like": with_text_encoder,
    }
    return {name: zip_folder(folder, name) for name, folder in folders.items()}


def uploaded(client: TestClient, auth: dict[str, str], data: bytes) -> dict[str, Any]:
    response = upload_checkpoint(client, auth, data)
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


def submit(client: TestClient, auth: dict[str, str], checkpoint_id: str, spec: dict[str, Any]) -> Any:
    body = {"checkpoint_id": checkpoint_id, "dataset_id": "digits", "spec": spec}
    return client.post("/v1/evaluations", headers=auth, json=body)


def test_a_latent_upload_stores_its_kind_and_components(
    client: TestClient, auth: dict[str, str], zips: dict[str, bytes]
) -> None:
    body = uploaded(client, auth, zips["ldm"])
    assert (body["sample_size"], body["in_channels"], body["out_channels"]) == (16, 1, 1)  # the decoded image
    info = body["info"]
    assert info["kind"] == "latent-unet" and info["latent_shape"] == [2, 8, 8] and info["image_size"] == 16
    classes = {folder: c["class"] for folder, c in info["components"].items()}
    assert classes == {"unet": "UNet2DModel", "vqvae": "VQModel"}
    assert body["num_parameters"] == sum(c["num_parameters"] for c in info["components"].values())
    dit = uploaded(client, auth, zips["dit"])
    assert dit["info"]["kind"] == "dit" and dit["num_class_embeds"] == 10 and dit["info"]["null_class"] == 10


def test_a_component_diffaudit_does_not_use_is_refused_at_upload(
    client: TestClient, auth: dict[str, str], zips: dict[str, bytes]
) -> None:
    response = upload_checkpoint(client, auth, zips["sd-like"])
    assert response.status_code == 422, response.text
    assert "['text_encoder'] that diffaudit does not use" in response.json()["error"]["message"]


@pytest.mark.parametrize("stage", ["novelty", "memorization", "membership", "guided", "augmentation"])
def test_pixel_only_stages_are_refused_on_latent_kinds(
    client: TestClient, auth: dict[str, str], zips: dict[str, bytes], stage: str
) -> None:
    for kind in ("ldm", "dit"):
        checkpoint_id = uploaded(client, auth, zips[kind])["id"]
        response = submit(client, auth, checkpoint_id, {"stages": [stage]})
        assert response.status_code == 422, response.text
        error = response.json()["error"]
        assert error["details"]["field"] == "spec.stages"
        assert f"do not run on checkpoint {checkpoint_id}" in error["message"]
        assert f"'{stage}'" in error["message"]  # augmentation also names novelty, its prerequisite


@pytest.mark.parametrize("stage", ["memorization", "membership"])
def test_raw_output_stages_are_refused_on_a_learned_variance_model(
    client: TestClient, auth: dict[str, str], zips: dict[str, bytes], stage: str
) -> None:
    checkpoint_id = uploaded(client, auth, zips["adm"])["id"]
    response = submit(client, auth, checkpoint_id, {"stages": [stage]})
    assert response.status_code == 422 and "also predicts its variance" in response.json()["error"]["message"]
    assert submit(client, auth, checkpoint_id, {"stages": ["irs"]}).status_code == 201


def test_guidance_needs_a_null_class_and_latent_kinds_take_sample_features_irs(
    client: TestClient, auth: dict[str, str], zips: dict[str, bytes]
) -> None:
    ldm = uploaded(client, auth, zips["ldm"])["id"]
    refused = submit(client, auth, ldm, {"stages": ["irs"], "sample": {"guidance_scale": 2.0}})
    assert refused.status_code == 422, refused.text
    assert refused.json()["error"]["details"]["field"] == "spec.sample.guidance_scale"
    assert submit(client, auth, ldm, {"stages": ["sample", "features", "irs", "balance"]}).status_code == 201
    dit = uploaded(client, auth, zips["dit"])["id"]
    accepted = submit(client, auth, dit, {"stages": ["irs"], "sample": {"guidance_scale": 2.0}})
    assert accepted.status_code == 201, accepted.text
    assert accepted.json()["spec"]["sample"]["guidance_scale"] == 2.0
