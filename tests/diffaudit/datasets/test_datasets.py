import io
import re
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from diffaudit.archive import ArchiveLimits
from diffaudit.datasets import (
    Dataset,
    DatasetInfo,
    IngestLimits,
    InvalidDataset,
    choose_heldout,
    ingest,
    ingest_dataset,
    write_builtin_dataset,
)
from diffaudit.datasets.digits import load_digits16
from diffaudit.store import LocalStore

LIMITS = IngestLimits()


def heldout_mask(labels: np.ndarray | None, count: int, fraction: float, seed: int) -> np.ndarray:
    mask = np.zeros(count, dtype=bool)
    choose_heldout(labels, fraction, seed, mask)
    return mask


RNG = np.random.default_rng(0)


@pytest.fixture
def store(tmp_path):
    return LocalStore(tmp_path / "store")


def png(array: np.ndarray, mode: str | None = None) -> bytes:
    buffer = io.BytesIO()
    image = Image.fromarray(array)
    (image.convert(mode) if mode else image).save(buffer, format="PNG")
    return buffer.getvalue()


def make_zip(path: Path, entries: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return path


def rgb(height: int = 6, width: int = 8) -> np.ndarray:
    return RNG.integers(0, 256, size=(height, width, 3), dtype=np.uint8)


def grey(height: int = 6, width: int = 8) -> np.ndarray:
    return RNG.integers(0, 256, size=(height, width), dtype=np.uint8)


def assert_nothing_stored(store: LocalStore, prefix: str = "ds") -> None:
    assert store.list(prefix) == []


# ---------------------------------------------------------------- zips of images


def test_flat_zip_of_rgb_images_is_unlabelled_and_sorted_by_name(tmp_path, store):
    arrays = {"b.png": rgb(), "a.png": rgb(), "c.png": rgb()}
    path = make_zip(tmp_path / "in.zip", {name: png(a) for name, a in arrays.items()})
    info = ingest_dataset(path, store, "ds", LIMITS)
    assert (info.kind, info.count, info.item_shape) == ("images", 3, (6, 8, 3))
    assert (info.class_names, info.class_counts, info.heldout_count) == (None, None, 0)
    dataset = Dataset.open(store, "ds")
    assert dataset.info == info
    np.testing.assert_array_equal(dataset.images, np.stack([arrays["a.png"], arrays["b.png"], arrays["c.png"]]))
    assert dataset.labels is None
    assert dataset.heldout.dtype == bool and not dataset.heldout.any()
    assert sorted(store.list("ds")) == ["ds/heldout.npy", "ds/images.npy", "ds/meta.json"]


def test_all_greyscale_gives_one_channel_and_mixed_gives_rgb_without_alpha(tmp_path, store):
    g1, g2 = grey(), grey()
    path = make_zip(tmp_path / "grey.zip", {"1.png": png(g1), "2.png": png(g2)})
    info = ingest_dataset(path, store, "grey", LIMITS)
    assert info.item_shape == (6, 8, 1)
    np.testing.assert_array_equal(Dataset.open(store, "grey").images[..., 0], np.stack([g1, g2]))

    colour = rgb()
    rgba = np.concatenate([colour, np.full((6, 8, 1), 7, np.uint8)], axis=2)
    path = make_zip(tmp_path / "mixed.zip", {"1.png": png(g1), "2.png": png(rgba)})
    info = ingest_dataset(path, store, "mixed", LIMITS)
    assert info.item_shape == (6, 8, 3)
    images = Dataset.open(store, "mixed").images
    np.testing.assert_array_equal(images[0], np.repeat(g1[..., None], 3, axis=2))
    np.testing.assert_array_equal(images[1], colour)


def test_class_folders_inside_one_wrapping_folder_give_sorted_labels(tmp_path, store):
    entries = {
        "pets/dog/1.png": png(rgb()),
        "pets/cat/2.png": png(rgb()),
        "pets/dog/3.png": png(rgb()),
        "pets/cat/.DS_Store": b"junk",
        "__MACOSX/pets/dog/._1.png": b"junk",
        "pets/bird/4.png": png(rgb()),
    }
    info = ingest_dataset(make_zip(tmp_path / "in.zip", entries), store, "ds", LIMITS)
    assert info.class_names == ["bird", "cat", "dog"]
    assert info.class_counts == {"bird": 1, "cat": 1, "dog": 2}
    # stored in sorted path order: bird/4, cat/2, dog/1, dog/3
    np.testing.assert_array_equal(Dataset.open(store, "ds").labels, [0, 1, 2, 2])


def test_one_wrapping_folder_of_loose_images_is_unlabelled(tmp_path, store):
    path = make_zip(tmp_path / "in.zip", {"photos/a.png": png(rgb()), "photos/b.png": png(rgb())})
    info = ingest_dataset(path, store, "ds", LIMITS)
    assert (info.count, info.class_names) == (2, None)


def test_refuses_folders_nested_below_the_class_level(tmp_path, store):
    path = make_zip(tmp_path / "in.zip", {"a/b/1.png": png(rgb()), "c/d/2.png": png(rgb())})
    with pytest.raises(InvalidDataset, match=re.escape("'a/b/1.png' is nested too deep")):
        ingest_dataset(path, store, "ds", LIMITS)
    assert_nothing_stored(store)


def test_content_hash_is_independent_of_file_order_and_depends_on_content(tmp_path, store):
    files = {f"c{i % 2}/{i}.png": png(rgb()) for i in range(6)}
    forward = make_zip(tmp_path / "forward.zip", files)
    backward = make_zip(tmp_path / "backward.zip", dict(reversed(list(files.items()))))
    changed = make_zip(tmp_path / "changed.zip", {**files, "c0/0.png": png(rgb())})
    hashes = [ingest_dataset(p, store, p.stem, LIMITS).content_hash for p in (forward, backward, changed)]
    assert hashes[0] == hashes[1]
    assert hashes[0] != hashes[2]
    assert len(hashes[0]) == 64


def test_refuses_a_file_that_is_neither_zip_nor_npz(tmp_path, store):
    path = tmp_path / "data.csv"
    path.write_text("a,b\n1,2\n")
    with pytest.raises(InvalidDataset, match=r"not a zip file.*a \.zip of images or an \.npz"):
        ingest_dataset(path, store, "ds", LIMITS)
    assert_nothing_stored(store)


def test_refuses_a_truncated_zip(tmp_path, store):
    data = make_zip(tmp_path / "in.zip", {f"{i}.png": png(rgb(32, 32)) for i in range(4)}).read_bytes()
    cut = tmp_path / "cut.zip"
    cut.write_bytes(data[: len(data) - 200])
    with pytest.raises(InvalidDataset, match="truncated or corrupt"):
        ingest_dataset(cut, store, "ds", LIMITS)
    assert_nothing_stored(store)


def test_refuses_an_image_entry_that_fails_the_zip_crc(tmp_path, store):
    buffer = io.BytesIO()
    Image.fromarray(np.full((6, 8, 3), 100, np.uint8)).save(buffer, format="BMP")  # BMP has no checksum of its own
    bmp = buffer.getvalue()
    with zipfile.ZipFile(tmp_path / "in.zip", "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("a.bmp", bmp)
    data = bytearray((tmp_path / "in.zip").read_bytes())
    data[data.index(bmp) + len(bmp) - 10] ^= 0xFF  # one pixel byte; the image still decodes
    (tmp_path / "bad.zip").write_bytes(bytes(data))
    with pytest.raises(InvalidDataset, match=re.escape("the zip is truncated or corrupt (entry 'a.bmp')")):
        ingest_dataset(tmp_path / "bad.zip", store, "ds", LIMITS)
    assert_nothing_stored(store)
    assert ingest_dataset(tmp_path / "in.zip", store, "ds", LIMITS).item_shape == (6, 8, 3)


def test_refuses_an_escaping_entry(tmp_path, store):
    path = make_zip(tmp_path / "in.zip", {"a.png": png(rgb()), "../../evil.png": png(rgb())})
    with pytest.raises(InvalidDataset, match="outside the archive folder"):
        ingest_dataset(path, store, "ds", LIMITS)
    assert_nothing_stored(store)
    assert not list(tmp_path.parent.rglob("evil.png"))


def test_refuses_too_many_files_or_bytes(tmp_path, store):
    path = make_zip(tmp_path / "in.zip", {f"{i}.png": png(rgb()) for i in range(3)})
    with pytest.raises(InvalidDataset, match="3 files, more than the limit of 2"):
        ingest_dataset(path, store, "ds", IngestLimits(archive=ArchiveLimits(max_files=2)))
    with pytest.raises(InvalidDataset, match="more than the limit of 100"):
        ingest_dataset(path, store, "ds", IngestLimits(archive=ArchiveLimits(max_total_bytes=100)))
    assert_nothing_stored(store)


def test_refuses_images_that_do_not_decode_naming_five(tmp_path, store):
    entries = {"good.png": png(rgb())} | {f"bad{i}.png": b"not a png" for i in range(6)}
    with pytest.raises(InvalidDataset) as error:
        ingest_dataset(make_zip(tmp_path / "in.zip", entries), store, "ds", LIMITS)
    message = str(error.value)
    assert "6 file(s) are not readable images" in message
    assert all(f"'bad{i}.png'" in message for i in range(5)) and "bad5.png" not in message
    assert_nothing_stored(store)


def test_refuses_image_formats_outside_the_allowed_decoders(tmp_path, store):
    buffer = io.BytesIO()
    Image.fromarray(rgb()).save(buffer, format="PPM")  # Pillow reads PPM, but it is not an accepted upload format
    entries = {"a.png": png(rgb()), "b.ppm": buffer.getvalue()}
    with pytest.raises(InvalidDataset, match=re.escape("1 file(s) are not readable images (e.g. 'b.ppm')")):
        ingest_dataset(make_zip(tmp_path / "in.zip", entries), store, "ds", LIMITS)


def test_refuses_an_image_whose_data_is_damaged_after_a_valid_header(tmp_path, store):
    damaged = bytearray(png(rgb(64, 64)))
    damaged[60:-20] = bytes(len(damaged) - 80)
    entries = {"good.png": png(rgb(64, 64)), "damaged.png": bytes(damaged)}
    with pytest.raises(InvalidDataset, match=re.escape("1 file(s) are not readable images (e.g. 'damaged.png')")):
        ingest_dataset(make_zip(tmp_path / "in.zip", entries), store, "ds", LIMITS)
    assert_nothing_stored(store)


def test_refuses_mixed_sizes_naming_sizes_and_examples(tmp_path, store):
    entries = {"a.png": png(rgb(6, 8)), "b.png": png(rgb(6, 8)), "c.png": png(rgb(16, 16))}
    with pytest.raises(InvalidDataset) as error:
        ingest_dataset(make_zip(tmp_path / "in.zip", entries), store, "ds", LIMITS)
    message = str(error.value)
    assert "6x8 (e.g. 'a.png', 2 files)" in message and "16x16 (e.g. 'c.png', 1 files)" in message
    assert_nothing_stored(store)


def test_refuses_images_larger_than_the_limit(tmp_path, store):
    path = make_zip(tmp_path / "in.zip", {"a.png": png(rgb(40, 20))})
    with pytest.raises(InvalidDataset, match="40x20, larger than 32 pixels"):
        ingest_dataset(path, store, "ds", IngestLimits(max_image_side=32))
    assert_nothing_stored(store)


def test_refuses_sixteen_bit_images(tmp_path, store):
    deep = RNG.integers(0, 65536, size=(6, 8), dtype=np.uint16)
    with pytest.raises(InvalidDataset, match="16-bit or float"):
        ingest_dataset(make_zip(tmp_path / "in.zip", {"a.png": png(deep)}), store, "ds", LIMITS)


def test_refuses_an_empty_dataset(tmp_path, store):
    path = make_zip(tmp_path / "in.zip", {"__MACOSX/._a.png": b"junk", ".DS_Store": b"junk"})
    with pytest.raises(InvalidDataset, match="holds no images"):
        ingest_dataset(path, store, "ds", LIMITS)
    assert_nothing_stored(store)


def test_refuses_loose_files_next_to_class_folders(tmp_path, store):
    path = make_zip(tmp_path / "in.zip", {"cat/1.png": png(rgb()), "2.png": png(rgb())})
    with pytest.raises(InvalidDataset, match=re.escape("mixes loose files (e.g. '2.png') with class folders")):
        ingest_dataset(path, store, "ds", LIMITS)
    assert_nothing_stored(store)


def test_refuses_a_dataset_that_already_exists(tmp_path, store):
    path = make_zip(tmp_path / "in.zip", {"a.png": png(rgb())})
    first = ingest_dataset(path, store, "ds", LIMITS)
    with pytest.raises(InvalidDataset, match="already exists"):
        ingest_dataset(path, store, "ds", LIMITS)
    assert Dataset.open(store, "ds").info == first


# ---------------------------------------------------------------- .npz


def test_npz_of_greyscale_images_with_sparse_labels(tmp_path, store):
    images = RNG.integers(0, 256, size=(5, 4, 3), dtype=np.uint8)
    np.savez(tmp_path / "d.npz", images=images, labels=np.array([7, 3, 7, 3, 7], dtype=np.int32))
    info = ingest_dataset(tmp_path / "d.npz", store, "ds", LIMITS)
    assert (info.kind, info.count, info.item_shape) == ("images", 5, (4, 3, 1))
    assert info.class_names == ["3", "7"] and info.class_counts == {"3": 2, "7": 3}
    dataset = Dataset.open(store, "ds")
    np.testing.assert_array_equal(dataset.images[..., 0], images)
    assert dataset.labels is not None and dataset.labels.dtype == np.int64
    np.testing.assert_array_equal(dataset.labels, [1, 0, 1, 0, 1])


def test_npz_of_rgb_images_matches_the_same_images_from_a_zip(tmp_path, store):
    arrays = [rgb(), rgb()]
    np.savez_compressed(tmp_path / "d.npz", images=np.stack(arrays))
    from_npz = ingest_dataset(tmp_path / "d.npz", store, "npz", LIMITS)
    zip_path = make_zip(tmp_path / "d.zip", {"0.png": png(arrays[0]), "1.png": png(arrays[1])})
    from_zip = ingest_dataset(zip_path, store, "zip", LIMITS)
    assert from_npz.item_shape == (6, 8, 3)
    assert from_npz.content_hash == from_zip.content_hash


def test_npz_features_are_stored_as_float32(tmp_path, store):
    features = RNG.normal(size=(7, 3))
    np.savez(tmp_path / "f.npz", features=features)
    info = ingest_dataset(tmp_path / "f.npz", store, "ds", LIMITS, heldout_fraction=0.3)
    assert (info.kind, info.count, info.item_shape, info.heldout_count) == ("features", 7, (3,), 2)
    dataset = Dataset.open(store, "ds")
    assert dataset.features.dtype == np.float32
    np.testing.assert_array_equal(dataset.features, features.astype(np.float32))
    with pytest.raises(InvalidDataset, match="holds features, not images"):
        next(dataset.iter_images(2))


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"labels": np.zeros(3, np.int64)}, "exactly one of 'images' or 'features'"),
        ({"images": np.zeros((2, 4, 4), np.uint8), "features": np.zeros((2, 3))}, "exactly one of"),
        ({"images": np.zeros((2, 4, 4), np.uint8), "names": np.zeros(2)}, "unexpected arrays in the .npz: names"),
        ({"images": np.zeros((2, 4, 4), np.float32)}, "'images' must be uint8"),
        ({"images": np.zeros((2, 4, 4, 2), np.uint8)}, "C 1 or 3, got \\(2, 4, 4, 2\\)"),
        ({"images": np.zeros((8, 8), np.uint8)}, "shape \\(N, H, W\\) or \\(N, H, W, C\\)"),
        ({"images": np.zeros((0, 4, 4), np.uint8)}, "'images' is empty"),
        ({"features": np.zeros((3,))}, "'features' must have shape \\(N, D\\)"),
        ({"features": np.zeros((3, 2), np.int64)}, "'features' must be a float array"),
        ({"images": np.zeros((3, 4, 4), np.uint8), "labels": np.zeros(2, np.int64)}, "shape \\(3,\\), one per item"),
        ({"images": np.zeros((2, 4, 4), np.uint8), "labels": np.array([0, -1])}, "non-negative"),
        ({"images": np.zeros((2, 4, 4), np.uint8), "labels": np.array([0.0, 1.0])}, "'labels' must be integers"),
        ({"images": np.asfortranarray(np.zeros((2, 4, 4), np.uint8))}, "Fortran order"),
        ({"features": np.array([[0.0, 1.0], [np.nan, 0.0], [2.0, np.inf]])}, "2 feature row\\(s\\).*rows 1, 2"),
        ({"features": np.array([[1e39, 0.0]])}, "1 feature row\\(s\\) hold NaN or infinity"),
    ],
)
def test_refuses_malformed_npz(tmp_path, store, arrays, message):
    np.savez(tmp_path / "d.npz", **arrays)
    with pytest.raises(InvalidDataset, match=message):
        ingest_dataset(tmp_path / "d.npz", store, "ds", LIMITS)
    assert_nothing_stored(store)


def test_refuses_a_truncated_npz(tmp_path, store):
    np.savez(tmp_path / "d.npz", images=np.zeros((100, 16, 16), np.uint8))
    data = (tmp_path / "d.npz").read_bytes()
    cut = tmp_path / "cut.npz"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(InvalidDataset, match="truncated or corrupt"):
        ingest_dataset(cut, store, "ds", LIMITS)
    assert_nothing_stored(store)


def npz_with_raw_member(path: Path, header_shape: tuple[int, ...], data: bytes) -> Path:
    """An .npz whose images.npy declares `header_shape` (uint8) but holds `data`."""
    member = io.BytesIO()
    np.lib.format.write_array_header_1_0(member, {"descr": "|u1", "fortran_order": False, "shape": header_shape})
    return make_zip(path, {"images.npy": member.getvalue() + data})


@pytest.mark.parametrize(
    ("rows_held", "message"), [(5, "'images' in the .npz is truncated"), (11, "more data than its header says")]
)
def test_refuses_an_npz_member_whose_data_disagrees_with_its_header(tmp_path, store, rows_held, message):
    path = npz_with_raw_member(tmp_path / "d.npz", (10, 4, 4), bytes(rows_held * 16))
    with pytest.raises(InvalidDataset, match=message):
        ingest_dataset(path, store, "ds", LIMITS)
    assert_nothing_stored(store)


def test_refuses_an_npz_member_that_is_not_an_array(tmp_path, store):
    path = make_zip(tmp_path / "d.npz", {"images.npy": b"definitely not an npy file"})
    with pytest.raises(InvalidDataset, match=re.escape("'images' in the .npz is not a readable array")):
        ingest_dataset(path, store, "ds", LIMITS)
    assert_nothing_stored(store)


def test_large_npz_ingests_in_bounded_memory(tmp_path, store):
    count = 200_000
    np.savez(
        tmp_path / "big.npz",
        images=np.broadcast_to(np.arange(256, dtype=np.uint8).reshape(16, 16), (count, 16, 16)),
        labels=np.arange(count) % 10,
    )
    array_bytes = count * 16 * 16  # 51 MB
    tracemalloc.start()
    try:
        info = ingest_dataset(tmp_path / "big.npz", store, "ds", LIMITS, heldout_fraction=0.1)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert (info.count, info.item_shape, info.heldout_count) == (count, (16, 16, 1), 20_000)
    assert info.class_counts == {str(d): 20_000 for d in range(10)}
    # bounded by a few read chunks, whatever N is (about 9 MB here, 13 MB at N = 1.6M)
    assert peak < 4 * ingest.CHUNK_BYTES < array_bytes / 3, f"peak {peak:,} bytes for a {array_bytes:,}-byte array"
    assert Dataset.open(store, "ds").images[count - 1, 3, 5, 0] == 3 * 16 + 5


# ---------------------------------------------------------------- held-out split


def test_heldout_split_is_stratified_with_largest_remainders():
    labels = np.repeat([0, 1, 2], [10, 5, 7])
    mask = heldout_mask(labels, len(labels), 0.3, seed=0)
    # quotas 3.0, 1.5, 2.1 -> floors 3, 1, 2 (6); round(0.3 * 22) = 7, the extra goes to class 1
    np.testing.assert_array_equal(np.bincount(labels[mask], minlength=3), [3, 2, 2])


def test_heldout_split_drawn_chunk_by_chunk_is_uniform_within_each_class(monkeypatch):
    monkeypatch.setattr(ingest, "CHUNK_ROWS", 4)
    labels = np.arange(12) % 2
    runs = 1000
    picked = np.zeros(12)
    for seed in range(runs):
        mask = heldout_mask(labels, 12, 0.25, seed)
        # quotas 1.5, 1.5 -> floors 1, 1; round(3.0) = 3, the tie goes to class 0
        np.testing.assert_array_equal(np.bincount(labels[mask], minlength=2), [2, 1])
        picked += mask
    expected = np.where(labels == 0, 2 / 6, 1 / 6)
    np.testing.assert_allclose(picked / runs, expected, atol=0.06)  # about 4 standard errors


def test_heldout_split_is_seeded():
    labels = np.arange(100) % 4
    first = heldout_mask(labels, 100, 0.25, seed=3)
    np.testing.assert_array_equal(first, heldout_mask(labels, 100, 0.25, seed=3))
    assert not np.array_equal(first, heldout_mask(labels, 100, 0.25, seed=4))
    unlabelled = heldout_mask(None, 100, 0.25, seed=3)
    assert unlabelled.sum() == 25
    np.testing.assert_array_equal(unlabelled, heldout_mask(None, 100, 0.25, seed=3))


@pytest.mark.parametrize("fraction", [-0.1, 0.95])
def test_refuses_heldout_fraction_outside_range(tmp_path, store, fraction):
    path = make_zip(tmp_path / "in.zip", {"a.png": png(rgb()), "b.png": png(rgb())})
    with pytest.raises(InvalidDataset, match=re.escape("between 0 and 0.9")):
        ingest_dataset(path, store, "ds", LIMITS, heldout_fraction=fraction)
    assert_nothing_stored(store)


def test_refuses_a_split_that_leaves_no_training_image(tmp_path, store):
    path = make_zip(tmp_path / "in.zip", {"a.png": png(rgb())})
    with pytest.raises(InvalidDataset, match="leaves no training item out of 1"):
        ingest_dataset(path, store, "ds", LIMITS, heldout_fraction=0.9)
    assert_nothing_stored(store)


def test_train_and_heldout_indices_partition_and_iter_images_batches(tmp_path, store):
    images = RNG.integers(0, 256, size=(11, 4, 4, 3), dtype=np.uint8)
    np.savez(tmp_path / "d.npz", images=images)
    ingest_dataset(tmp_path / "d.npz", store, "ds", LIMITS, heldout_fraction=0.3, seed=1)
    dataset = Dataset.open(store, "ds")
    train, held = dataset.train_indices(), dataset.heldout_indices()
    assert len(held) == 3
    np.testing.assert_array_equal(np.sort(np.concatenate([train, held])), np.arange(11))
    batches = list(dataset.iter_images(4))
    assert [len(b) for b in batches] == [4, 4, 3]
    assert all(b.dtype == np.uint8 and not isinstance(b, np.memmap) for b in batches)
    np.testing.assert_array_equal(np.concatenate(batches), images)
    np.testing.assert_array_equal(np.concatenate(list(dataset.iter_images(2, held))), images[held])


def test_open_refuses_an_incomplete_dataset(store):
    store.put_bytes("ds/images.npy", b"partial")
    with pytest.raises(InvalidDataset, match=re.escape("meta.json is missing")):
        Dataset.open(store, "ds")


def test_dataset_info_round_trips_through_json():
    info = DatasetInfo("images", 3, (4, 4, 1), "ab" * 32, ["a", "b"], {"a": 1, "b": 2}, 1)
    assert DatasetInfo.from_json(info.to_json()) == info


# ---------------------------------------------------------------- built-in digits


def test_builtin_digits(store):
    info = write_builtin_dataset("digits", store, "builtin/digits")
    assert (info.kind, info.count, info.item_shape) == ("images", 1797, (16, 16, 1))
    assert info.class_names == [str(d) for d in range(10)]
    counts = [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]  # sklearn's digits per class
    assert info.class_counts == {str(d): c for d, c in enumerate(counts)}
    # round(0.2 * 1797) = 359; floors of 0.2 * counts sum to 355, the 4 largest remainders (.8, .8, .6, .6)
    # go to classes 7, 8, 0, 3
    assert info.heldout_count == 359
    dataset = Dataset.open(store, "builtin/digits")
    images, labels = load_digits16()
    np.testing.assert_array_equal(dataset.images, images)
    np.testing.assert_array_equal(dataset.labels, labels)
    held_per_class = np.bincount(labels[dataset.heldout_indices()], minlength=10)
    np.testing.assert_array_equal(held_per_class, [36, 36, 35, 37, 36, 36, 36, 36, 35, 36])
    again = write_builtin_dataset("digits", store, "builtin/digits2")
    assert again.content_hash == info.content_hash
    np.testing.assert_array_equal(Dataset.open(store, "builtin/digits2").heldout, dataset.heldout)


def test_unknown_builtin_dataset(store):
    with pytest.raises(InvalidDataset, match="unknown built-in dataset 'mnist'; choose one of digits"):
        write_builtin_dataset("mnist", store, "x")
