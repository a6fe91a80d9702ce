"""Kinds of checkpoint (pixel UNet with learned variance, latent UNet with VQModel or AutoencoderKL, DiT):
detected from the layout, every component validated, the components' fit checked, the facts described."""

from __future__ import annotations

import json
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file

from diffaudit.checkpoints import (
    CheckpointInfo,
    CheckpointLimits,
    InvalidCheckpoint,
    checkpoint_members,
    load_checkpoint,
    validate_checkpoint_dir,
)
from tests.diffaudit.checkpoints.tiny_kinds import (
    IMAGE_SIZE,
    LATENT_CHANNELS,
    LATENT_SIZE,
    save_adm,
    save_dit,
    save_ldm,
)

CPU = torch.device("cpu")
LATENT = [LATENT_CHANNELS, LATENT_SIZE, LATENT_SIZE]


def edit_json(path: Path, **changes: Any) -> None:
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("kinds")
    return {
        "ldm": save_ldm(root / "ldm"),
        "ldm-kl": save_ldm(root / "ldm-kl", autoencoder="vae"),
        "dit": save_dit(root / "dit"),
        "dit-legacy": save_dit(root / "dit-legacy", legacy=True),
        "adm": save_adm(root / "adm"),
    }


@pytest.fixture
def copy_of(saved: dict[str, Path], tmp_path: Path) -> Any:
    import shutil

    def copy(name: str) -> Path:
        return Path(shutil.copytree(saved[name], tmp_path / name))

    return copy


@pytest.mark.parametrize(
    ("name", "kind", "components", "latent", "classes", "scaling"),
    [
        ("ldm", "latent-unet", {"unet": "UNet2DModel", "vqvae": "VQModel"}, LATENT, None, 0.8),
        ("ldm-kl", "latent-unet", {"unet": "UNet2DModel", "vae": "AutoencoderKL"}, LATENT, None, 0.5),
        ("dit", "dit", {"transformer": "DiTTransformer2DModel", "vae": "AutoencoderKL"}, LATENT, 10, 0.5),
        ("adm", "pixel-unet", {"unet": "UNet2DModel"}, [1, IMAGE_SIZE, IMAGE_SIZE], None, None),
    ],
)
def test_each_kind_is_detected_and_described(
    saved: dict[str, Path],
    name: str,
    kind: str,
    components: dict[str, str],
    latent: list[int],
    classes: int | None,
    scaling: float | None,
) -> None:
    info = validate_checkpoint_dir(saved[name])
    assert info.kind == kind
    assert {folder: c["class"] for folder, c in info.components.items()} == components
    assert info.num_parameters == sum(c["num_parameters"] for c in info.components.values())
    assert info.latent_shape == latent
    # the image the model produces: 16x16 grey whatever the latent space
    assert (info.image_size, info.sample_size, info.in_channels, info.out_channels) == (IMAGE_SIZE, IMAGE_SIZE, 1, 1)
    assert info.num_class_embeds == classes
    assert info.null_class == (10 if kind == "dit" else None)
    assert info.scaling_factor == scaling
    assert info.learned_variance == (name in ("dit", "adm"))
    assert CheckpointInfo.from_json(json.loads(json.dumps(info.to_json()))) == info


def test_old_facts_without_the_kind_read_as_pixel_unet() -> None:
    old = {
        "content_hash": "x",
        "num_parameters": 1,
        "sample_size": 8,
        "in_channels": 1,
        "out_channels": 1,
        "num_class_embeds": None,
        "prediction_type": "epsilon",
        "num_train_timesteps": 100,
        "scheduler_class": None,
    }
    assert CheckpointInfo.from_json(old).kind == "pixel-unet"


@pytest.mark.parametrize("name", ["ldm", "ldm-kl", "dit", "dit-legacy"])
def test_every_component_is_loaded_with_its_saved_weights(saved: dict[str, Path], name: str) -> None:
    checkpoint = load_checkpoint(saved[name], CPU)
    assert checkpoint.autoencoder is not None
    folders = {"ldm": ("unet", "vqvae"), "ldm-kl": ("unet", "vae")}.get(name, ("transformer", "vae"))
    for model, folder in zip((checkpoint.denoiser, checkpoint.autoencoder), folders, strict=True):
        saved_state = load_file(saved[name] / folder / "diffusion_pytorch_model.safetensors")
        state = model.state_dict()
        assert set(state) == set(saved_state)
        assert all(torch.equal(state[k], saved_state[k]) for k in saved_state)
        assert not model.training
    with pytest.raises(
        InvalidCheckpoint, match=f"pixel-space UNet checkpoints only, and this checkpoint is a {checkpoint.info.kind}"
    ):
        _ = checkpoint.unet


def test_the_legacy_transformer_2d_dit_is_accepted(saved: dict[str, Path]) -> None:
    config = json.loads((saved["dit-legacy"] / "transformer/config.json").read_text())
    assert config["_class_name"] == "Transformer2DModel"
    assert validate_checkpoint_dir(saved["dit-legacy"]).kind == "dit"


def test_id2label_is_read_from_model_index(copy_of: Any) -> None:
    folder = copy_of("dit")
    edit_json(folder / "model_index.json", id2label={"0": "zero", "1": "one"})
    assert validate_checkpoint_dir(folder).id2label == {"0": "zero", "1": "one"}
    edit_json(folder / "model_index.json", id2label={"10": "ten"})
    with pytest.raises(InvalidCheckpoint, match=r"id2label.*class 10 is not one of the model's 10 classes"):
        validate_checkpoint_dir(folder)


def test_a_component_diffaudit_does_not_use_is_refused_by_name(copy_of: Any) -> None:
    folder = copy_of("ldm-kl")  # no model_index.json: the folders are the components
    (folder / "text_encoder").mkdir()
    (folder / "text_encoder/config.json").write_text("{}")
    with pytest.raises(
        InvalidCheckpoint, match=r"\['text_encoder'\] that diffaudit does not use.*unet/ \(UNet2DModel\)"
    ):
        validate_checkpoint_dir(folder)
    folder = copy_of("ldm")  # model_index.json names the components
    edit_json(folder / "model_index.json", safety_checker=["stable_diffusion", "StableDiffusionSafetyChecker"])
    with pytest.raises(InvalidCheckpoint, match=r"\['safety_checker'\] that diffaudit does not use"):
        validate_checkpoint_dir(folder)


def test_an_unknown_component_class_is_refused_with_the_supported_ones(copy_of: Any) -> None:
    folder = copy_of("ldm-kl")
    edit_json(folder / "vae/config.json", _class_name="AsymmetricAutoencoderKL")
    with pytest.raises(InvalidCheckpoint, match=r"vae/config\.json describes a 'AsymmetricAutoencoderKL'.*vqvae/"):
        validate_checkpoint_dir(folder)
    folder = copy_of("ldm")
    edit_json(folder / "model_index.json", unet=["diffusers", "UNet2DConditionModel"])
    with pytest.raises(InvalidCheckpoint, match=r"model_index\.json: unet is a 'UNet2DConditionModel'"):
        validate_checkpoint_dir(folder)


def test_a_dit_without_its_autoencoder_is_refused(copy_of: Any) -> None:
    folder = copy_of("dit")
    edit_json(folder / "model_index.json", vae=[None, None])
    with pytest.raises(InvalidCheckpoint, match="add its AutoencoderKL in vae/"):
        validate_checkpoint_dir(folder)


def test_latent_channels_must_fit_the_denoiser(copy_of: Any) -> None:
    folder = copy_of("ldm-kl")
    edit_json(folder / "vae/config.json", latent_channels=3)
    with pytest.raises(
        InvalidCheckpoint, match=r"vae/config\.json: latent_channels is 3, but unet/config\.json denoises 2"
    ):
        validate_checkpoint_dir(folder)
    folder = copy_of("dit")
    edit_json(folder / "transformer/config.json", in_channels=3, out_channels=6)
    with pytest.raises(
        InvalidCheckpoint, match=r"vae/config\.json: latent_channels is 2, but transformer/config\.json"
    ):
        validate_checkpoint_dir(folder)


def test_the_image_size_limit_bounds_the_decoded_images(saved: dict[str, Path]) -> None:
    with pytest.raises(InvalidCheckpoint, match=r"sample_size 8 gives 16-pixel images \(x2 in the autoencoder\)"):
        validate_checkpoint_dir(saved["ldm"], CheckpointLimits(max_image_side=LATENT_SIZE + 2))


def test_the_parameter_limit_counts_every_component(saved: dict[str, Path]) -> None:
    info = validate_checkpoint_dir(saved["ldm"])
    unet = info.components["unet"]["num_parameters"]
    with pytest.raises(InvalidCheckpoint, match=r"the model \(unet: .*, vqvae: .*\) has .* parameters"):
        validate_checkpoint_dir(saved["ldm"], CheckpointLimits(max_parameters=unet + 1))


@pytest.mark.parametrize(
    ("component", "changes", "message"),
    [
        ("vae", {"block_out_channels": [8, 6]}, r"vae/config\.json .*divisible by norm_num_groups"),
        ("vae", {"scaling_factor": 0}, r"vae/config\.json .*scaling_factor is 0"),
        ("vae", {"shift_factor": 0.1}, r"vae/config\.json .*shift_factor"),
        ("vae", {"down_block_types": ["DownEncoderBlock2D"]}, r"vae/config\.json .*same length"),
        ("transformer", {"patch_size": 3}, r"transformer/config\.json .*divisible by patch_size"),
        ("transformer", {"norm_type": "ada_norm"}, r"transformer/config\.json .*norm_type"),
        ("transformer", {"num_embeds_ada_norm": None}, r"transformer/config\.json .*num_embeds_ada_norm"),
        ("transformer", {"out_channels": 3}, r"transformer/config\.json: out_channels \(3\)"),
    ],
)
def test_component_configs_are_checked_field_by_field(
    copy_of: Any, component: str, changes: dict[str, Any], message: str
) -> None:
    folder = copy_of("dit")
    edit_json(folder / component / "config.json", **changes)
    with pytest.raises(InvalidCheckpoint, match=message):
        validate_checkpoint_dir(folder)


def test_autoencoder_weights_are_checked_strictly_and_named(copy_of: Any) -> None:
    folder = copy_of("ldm")
    edit_json(folder / "vqvae/config.json", layers_per_block=2)
    with pytest.raises(InvalidCheckpoint, match=r"vqvae/ weights do not match config\.json: .*missing keys"):
        validate_checkpoint_dir(folder)
    folder = copy_of("dit")
    weights = folder / "vae/diffusion_pytorch_model.safetensors"
    state = load_file(weights)
    key = sorted(state)[0]
    state[key] = torch.full_like(state[key], float("nan"))
    save_file(state, weights)
    with pytest.raises(
        InvalidCheckpoint, match=rf"vae/diffusion_pytorch_model\.safetensors: tensor '{key}' contains NaN"
    ):
        validate_checkpoint_dir(folder)


def test_the_content_hash_covers_the_autoencoder(copy_of: Any, saved: dict[str, Path]) -> None:
    folder = copy_of("ldm")
    weights = folder / "vqvae/diffusion_pytorch_model.safetensors"
    state = load_file(weights)
    key = sorted(state)[0]
    state[key] = state[key] + 1
    save_file(state, weights)
    assert validate_checkpoint_dir(folder).content_hash != validate_checkpoint_dir(saved["ldm"]).content_hash


def test_learned_variance_needs_a_learned_variance_type(copy_of: Any) -> None:
    folder = copy_of("adm")
    edit_json(folder / "scheduler/scheduler_config.json", variance_type="fixed_small")
    with pytest.raises(InvalidCheckpoint, match=r"unet/config\.json: out_channels \(2\) is twice.*variance_type"):
        validate_checkpoint_dir(folder)


def test_an_upload_keeps_every_component() -> None:
    paths = [
        PurePosixPath(p)
        for p in (
            "ldm/model_index.json",
            "ldm/unet/config.json",
            "ldm/unet/diffusion_pytorch_model.safetensors",
            "ldm/vqvae/config.json",
            "ldm/vqvae/diffusion_pytorch_model.safetensors",
            "ldm/scheduler/scheduler_config.json",
            "ldm/vqvae/notes.txt",
        )
    ]
    assert len(checkpoint_members(paths)) == 6
