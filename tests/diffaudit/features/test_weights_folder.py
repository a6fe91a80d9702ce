"""Weights files are read only from the operator's weights folder, named relative to it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from diffaudit.errors import InvalidInput
from diffaudit.features.registry import UnknownExtractor, create_extractor, extractor_weights_path
from diffaudit.features.weights import InvalidWeights, local_weights_path

NOT_IN_FOLDER = "is not a file of the weights folder"


@pytest.fixture()
def folders(tmp_path: Path) -> tuple[Path, Path]:
    """(weights folder with w.safetensors and sub/v.pth, a file outside it: secret.safetensors)."""
    weights = tmp_path / "weights"
    (weights / "sub").mkdir(parents=True)
    save_file({"a": torch.zeros(1)}, weights / "w.safetensors")
    torch.save({"a": torch.zeros(1)}, weights / "sub" / "v.pth")
    outside = tmp_path / "secret.safetensors"
    save_file({"a": torch.zeros(1)}, outside)
    (weights / "escape.safetensors").symlink_to(outside)
    (weights / "inside.safetensors").symlink_to(weights / "w.safetensors")
    return weights, outside


def test_names_relative_to_the_folder_resolve_inside_it(folders: tuple[Path, Path]) -> None:
    weights, _ = folders
    assert local_weights_path("w.safetensors", weights_dir=weights) == (weights / "w.safetensors").resolve()
    assert local_weights_path("sub/v.pth", weights_dir=weights) == (weights / "sub" / "v.pth").resolve()
    assert local_weights_path("inside.safetensors", weights_dir=weights) == (weights / "w.safetensors").resolve()


def test_everything_outside_the_folder_gets_the_message_of_a_missing_file(folders: tuple[Path, Path]) -> None:
    """Absolute paths, '..', symlinks out and missing files: one message, so existence outside never shows."""
    weights, outside = folders
    names = [
        str(outside),  # an existing file, absolute
        str(weights / "w.safetensors"),  # absolute even inside the folder
        "../secret.safetensors",  # exists
        "sub/../../secret.safetensors",
        "escape.safetensors",  # a symlink to the existing file outside
        "missing.safetensors",
        "..\\secret.safetensors",
        "a\x00.safetensors",
        "x" * 5000 + ".safetensors",
    ]
    messages = set()
    for name in names:
        with pytest.raises(InvalidWeights, match=NOT_IN_FOLDER) as caught:
            local_weights_path(name, weights_dir=weights)
        messages.add(str(caught.value).replace(repr(name), "NAME"))
        assert str(outside.parent) not in str(caught.value).replace(repr(name), "")
    assert len(messages) == 1


def test_without_a_weights_folder_no_weights_file_is_allowed(folders: tuple[Path, Path]) -> None:
    weights, _ = folders
    with pytest.raises(InvalidWeights, match="DIFFAUDIT_WEIGHTS_DIR"):
        local_weights_path("w.safetensors", weights_dir=None)
    with pytest.raises(InvalidWeights, match=NOT_IN_FOLDER):
        local_weights_path(weights / "w.safetensors", weights_dir=None)


def test_extractor_choices_are_checked_without_building_them(folders: tuple[Path, Path]) -> None:
    weights, _ = folders

    def check(name: str, weights_name: str | None) -> Path | None:
        return extractor_weights_path(name, weights_name, weights_dir=weights, allow_downloads=False)

    assert check("random-cnn", None) is None
    assert check("timm:test_resnet", "w.safetensors") == (weights / "w.safetensors").resolve()
    with pytest.raises(UnknownExtractor, match="unknown extractor 'resnet9000'"):
        check("resnet9000", None)
    with pytest.raises(UnknownExtractor, match="timm has no model 'notamodel'"):
        check("timm:notamodel", None)
    with pytest.raises(InvalidWeights, match="DIFFAUDIT_ALLOW_DOWNLOADS"):
        check("timm:hf-hub:timm/test_resnet.r160_in1k", None)
    with pytest.raises(InvalidWeights, match=NOT_IN_FOLDER):
        check("vgg16", "../secret.safetensors")
    assert issubclass(UnknownExtractor, InvalidInput)  # the user's to fix: a job fails at once, without retries


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("garbage.safetensors", b"this is not a safetensors file"),
        ("garbage.pth", b"garbage"),
        ("other.safetensors", None),  # a valid file of other weights: does not fit the model
    ],
)
@pytest.mark.parametrize("extractor", ["squeezenet1_1", "timm:test_resnet"])
def test_weights_errors_name_the_file_but_no_server_path(
    folders: tuple[Path, Path], name: str, content: bytes | None, extractor: str
) -> None:
    weights, _ = folders
    path = weights / "deeper" / name
    path.parent.mkdir()
    if content is None:
        save_file({"fc.weight": torch.zeros(2, 2)}, path)
    else:
        path.write_bytes(content)
    with pytest.raises(InvalidWeights) as caught:
        create_extractor(extractor, weights=f"deeper/{name}", weights_dir=weights, device=torch.device("cpu"))
    message = str(caught.value)
    assert name in message
    assert str(weights) not in message and str(weights.resolve()) not in message
