"""An .npz header is believed only as far as the zip's directory backs it; a dataset's identity is its hashes."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pytest

from diffaudit.datasets import IngestLimits, InvalidDataset, ingest_dataset
from diffaudit.datasets.ingest import prepared_dataset
from diffaudit.store import LocalStore

LIMITS = IngestLimits()


def npz_with_header(path: Path, shape: tuple[int, ...], data: bytes) -> Path:
    """An .npz whose images.npy has a hand-written header (np.savez cannot write a lying one)."""
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": "|u1", "fortran_order": False, "shape": shape})
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("images.npy", buffer.getvalue() + data)
    return path


@pytest.mark.parametrize("shape", [(-5, 8, 8), (4, -8, 8, 1)])
def test_negative_shapes_are_refused(tmp_path: Path, shape: tuple[int, ...]) -> None:
    path = npz_with_header(tmp_path / "neg.npz", shape, b"\0" * 64)
    with pytest.raises(InvalidDataset, match="negative dimension"):
        ingest_dataset(path, LocalStore(tmp_path / "store"), "ds", LIMITS)


def test_a_header_declaring_more_data_than_the_entry_holds_is_refused_before_allocating(tmp_path: Path) -> None:
    path = npz_with_header(tmp_path / "liar.npz", (10**6, 64, 64), b"\0" * 64)
    with pytest.raises(InvalidDataset, match=r"declares shape \(1000000, 64, 64\) \(4,096,000,000 bytes of data\)"):
        ingest_dataset(path, LocalStore(tmp_path / "store"), "ds", LIMITS)
    assert LocalStore(tmp_path / "store").list("") == []


def test_the_same_content_and_split_give_the_same_hashes(tmp_path: Path) -> None:
    images = np.random.default_rng(0).integers(0, 256, (20, 4, 4, 1), dtype=np.uint8)
    np.savez(tmp_path / "a.npz", images=images)
    np.savez(tmp_path / "b.npz", images=images.copy())

    def hashes(name: str, fraction: float, seed: int = 0) -> tuple[str, str]:
        with prepared_dataset(tmp_path / name, LIMITS, heldout_fraction=fraction, seed=seed) as prepared:
            return prepared.info.content_hash, prepared.heldout_hash

    assert hashes("a.npz", 0.2) == hashes("b.npz", 0.2)
    content, split = hashes("a.npz", 0.2)
    other_content, other_split = hashes("a.npz", 0.3)
    assert other_content == content and other_split != split
    assert hashes("a.npz", 0.2, seed=1) != (content, split)
