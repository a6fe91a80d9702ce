"""Turn an uploaded file (zip of images, or .npz of arrays) into a canonical stored dataset.

Everything is validated and written to a temporary folder first, in bounded memory (images are
decoded one at a time and .npz members are copied in chunks into memory-mapped .npy files);
only a dataset that passed every check is put in the store, `meta.json` last. `prepared_dataset`
stops before the store, so that a caller can first look for a dataset with the same hashes.
"""

from __future__ import annotations

import hashlib
import math
import tempfile
import zipfile
import zlib
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import IO

import numpy as np
from PIL import Image, ImageMode

from diffaudit.archive import ArchiveLimits, InvalidArchive, check_members, open_zip
from diffaudit.datasets.dataset import (
    HELDOUT_FILE,
    LABELS_FILE,
    META_FILE,
    DatasetInfo,
    DatasetKind,
    InvalidDataset,
    array_file,
)
from diffaudit.datasets.digits import load_digits16
from diffaudit.store import ArtifactStore, save_json

BUILTIN_DATASETS = ("digits",)
MAX_HELDOUT_FRACTION = 0.9
CHUNK_BYTES = 4 << 20  # bytes of array data held in memory at once
CHUNK_ROWS = 1 << 16  # labels (int64) handled at once
NPZ_ARRAYS = ("images", "features", "labels")
EXAMPLES = 5  # how many offending files an error message names
_ZIP_ERRORS = (zipfile.BadZipFile, zlib.error, EOFError)
# Pillow decoders allowed for uploads (others, e.g. EPS, call external programs)
IMAGE_FORMATS = ("PNG", "JPEG", "BMP", "GIF", "TIFF", "WEBP")


@dataclass(frozen=True)
class IngestLimits:
    archive: ArchiveLimits = field(default_factory=ArchiveLimits)
    max_image_side: int = 1024
    max_array_bytes: int = 32 * 2**30  # size of the decoded images.npy / features.npy


@dataclass(frozen=True)
class PreparedDataset:
    """A validated dataset in a temporary folder: its canonical files, described, not yet stored."""

    work: Path
    info: DatasetInfo
    heldout_hash: str  # sha256 of the held-out mask; with info.content_hash it identifies the dataset

    def put(self, store: ArtifactStore, prefix: str) -> None:
        """Put the files in the store under `prefix`, meta.json last; on failure remove what was put."""
        prefix = prefix.strip("/")
        if store.exists(f"{prefix}/{META_FILE}"):
            raise InvalidDataset(f"a dataset already exists under '{prefix}'; delete it first")
        labelled = self.info.class_names is not None
        files = [array_file(self.info.kind), HELDOUT_FILE] + ([LABELS_FILE] if labelled else [])
        store.delete_prefix(prefix)  # leftovers of an interrupted ingest (no meta.json)
        try:
            for name in files:
                store.put_file(f"{prefix}/{name}", self.work / name)
            save_json(store, f"{prefix}/{META_FILE}", self.info.to_json())
        except BaseException:
            store.delete_prefix(prefix)
            raise


@contextmanager
def prepared_dataset(
    path: Path, limits: IngestLimits, heldout_fraction: float = 0.0, seed: int = 0
) -> Iterator[PreparedDataset]:
    """Validate `path` (a zip of images or an .npz) into a temporary folder, which lasts as long as the context.

    A zip of images is flat (unlabelled) or holds one folder per class (labelled, class names
    sorted); one top-level folder wrapping either is unwrapped. An .npz holds `images`
    (N,H,W) or (N,H,W,C) uint8 with C in {1,3}, or `features` (N,D) float, and optionally
    `labels` (N,) non-negative integers. Raises InvalidDataset on any problem.
    """
    _check_heldout_fraction(heldout_fraction)
    try:
        zf = open_zip(path)
    except InvalidArchive as exc:
        raise InvalidDataset(f"{exc}; a dataset must be a .zip of images or an .npz file") from exc
    with zf, tempfile.TemporaryDirectory(prefix="diffaudit-ingest-") as tmp:
        work = Path(tmp)
        try:
            if _is_npz(zf):
                kind, class_names = _read_npz(zf, work, limits)
            else:
                kind, class_names = _read_image_zip(zf, work, limits)
        except InvalidArchive as exc:
            raise InvalidDataset(str(exc)) from exc
        yield _prepare(work, kind, class_names, heldout_fraction, seed)


def ingest_dataset(
    path: Path,
    store: ArtifactStore,
    prefix: str,
    limits: IngestLimits,
    heldout_fraction: float = 0.0,
    seed: int = 0,
) -> DatasetInfo:
    """Validate `path` (see prepared_dataset) and store it as a dataset under `prefix`; writes nothing on refusal."""
    with prepared_dataset(path, limits, heldout_fraction, seed) as prepared:
        prepared.put(store, prefix)
    return prepared.info


def write_builtin_dataset(name: str, store: ArtifactStore, prefix: str) -> DatasetInfo:
    """Store a built-in dataset ("digits": 1,797 16x16 greyscale digits, 20% held out, stratified)."""
    if name != "digits":
        raise InvalidDataset(f"unknown built-in dataset {name!r}; choose one of {', '.join(BUILTIN_DATASETS)}")
    images, labels = load_digits16()
    with tempfile.TemporaryDirectory(prefix="diffaudit-builtin-") as tmp:
        work = Path(tmp)
        np.save(work / array_file("images"), images)
        np.save(work / LABELS_FILE, labels)
        class_names = [str(d) for d in range(10)]
        prepared = _prepare(work, "images", class_names, heldout_fraction=0.2, seed=0)
        prepared.put(store, prefix)
        return prepared.info


def _check_heldout_fraction(heldout_fraction: float) -> None:
    if not 0.0 <= heldout_fraction <= MAX_HELDOUT_FRACTION:
        raise InvalidDataset(f"heldout_fraction must be between 0 and {MAX_HELDOUT_FRACTION}, got {heldout_fraction}")


def _is_npz(zf: zipfile.ZipFile) -> bool:
    names = zf.namelist()
    return bool(names) and all(name.endswith(".npy") and "/" not in name for name in names)


# ---------------------------------------------------------------- zip of images


def _read_image_zip(zf: zipfile.ZipFile, work: Path, limits: IngestLimits) -> tuple[DatasetKind, list[str] | None]:
    """Check a zip of images and decode it, sorted by path, into work/images.npy (and labels.npy).

    Images are decoded straight from the zip (no extraction); returns the class names.
    """
    members = check_members(zf, limits.archive)
    names = _unwrap_single_folder([relative for _, relative in members])
    if not names:
        raise InvalidDataset("the zip holds no images; add image files (PNG, JPEG, ...)")
    entries = sorted(zip(names, (info for info, _ in members), strict=True), key=lambda entry: entry[0])
    labels, class_names = _labels_from_folders([name for name, _ in entries])
    if labels is not None:
        np.save(work / LABELS_FILE, labels)
    height, width, channels = _scan_images(zf, entries, limits.max_image_side)
    _check_array_bytes(len(entries) * height * width * channels, limits)
    out = np.lib.format.open_memmap(
        work / array_file("images"), mode="w+", dtype=np.uint8, shape=(len(entries), height, width, channels)
    )
    undecodable = []
    for i, (name, info) in enumerate(entries):
        try:
            out[i] = _decode_image(zf, info, "L" if channels == 1 else "RGB").reshape(height, width, channels)
        except _ZIP_ERRORS as exc:
            raise InvalidArchive(f"the zip is truncated or corrupt (entry '{info.filename}'); upload it again") from exc
        except Exception:  # PIL raises many types for a broken file
            undecodable.append(str(name))
    _raise_if_undecodable(undecodable)
    out.flush()
    del out
    return "images", class_names


def _image_header(zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> tuple[int, int, str]:
    """(height, width, mode) of a zipped image, reading only its header."""
    with zf.open(info) as f, Image.open(f, formats=IMAGE_FORMATS) as img:
        return img.height, img.width, img.mode


def _decode_image(zf: zipfile.ZipFile, info: zipfile.ZipInfo, mode: str) -> np.ndarray:
    """The pixels of a zipped image converted to `mode`, with the entry's CRC checked."""
    with zf.open(info) as f:
        with Image.open(f, formats=IMAGE_FORMATS) as img:
            pixels = np.asarray(img.convert(mode))
        while f.read(CHUNK_BYTES):  # read to the end: zipfile checks the CRC there
            pass
    return pixels


def _unwrap_single_folder(paths: list[PurePosixPath]) -> list[PurePosixPath]:
    """Drop one top-level folder if it wraps everything (the common 'zip of a folder')."""
    tops = {p.parts[0] for p in paths}
    if len(tops) == 1 and all(len(p.parts) > 1 for p in paths):
        return [PurePosixPath(*p.parts[1:]) for p in paths]
    return paths


def _labels_from_folders(paths: list[PurePosixPath]) -> tuple[np.ndarray | None, list[str] | None]:
    """No folders: unlabelled. One folder level: the folder is the class. Anything else is refused."""
    depths = {len(p.parts) for p in paths}
    if depths == {1}:
        return None, None
    if depths == {2}:
        class_names = sorted({p.parts[0] for p in paths})
        index = {name: i for i, name in enumerate(class_names)}
        return np.array([index[p.parts[0]] for p in paths], dtype=np.int64), class_names
    if depths == {1, 2}:
        loose = next(p for p in paths if len(p.parts) == 1)
        raise InvalidDataset(
            f"the zip mixes loose files (e.g. '{loose}') with class folders; "
            "put every image in a class folder, or use no folders at all"
        )
    deep = next(p for p in paths if len(p.parts) > 2)
    raise InvalidDataset(f"'{deep}' is nested too deep; use one folder per class holding the images directly")


def _scan_images(
    zf: zipfile.ZipFile, entries: list[tuple[PurePosixPath, zipfile.ZipInfo]], max_side: int
) -> tuple[int, int, int]:
    """Read every header: the common (H, W) and the channel count (1 if all greyscale, else 3)."""
    examples: dict[tuple[int, int], list[str]] = defaultdict(list)
    undecodable = []
    high_depth = []
    all_grey = True
    for name, info in entries:
        try:
            height, width, mode = _image_header(zf, info)
        except _ZIP_ERRORS as exc:
            raise InvalidArchive(f"the zip is truncated or corrupt (entry '{info.filename}'); upload it again") from exc
        except Exception:  # PIL raises many types for a broken file
            undecodable.append(str(name))
            continue
        if mode in ("I", "F") or mode.startswith("I;"):
            high_depth.append(str(name))
        all_grey = all_grey and ImageMode.getmode(mode).basemode == "L"
        examples[(height, width)].append(str(name))
    _raise_if_undecodable(undecodable)
    if high_depth:
        shown = ", ".join(f"'{n}'" for n in high_depth[:EXAMPLES])
        raise InvalidDataset(
            f"{len(high_depth)} image(s) are 16-bit or float (e.g. {shown}); save them as 8-bit images"
        )
    if len(examples) > 1:
        found = "; ".join(f"{h}x{w} (e.g. '{same[0]}', {len(same)} files)" for (h, w), same in sorted(examples.items()))
        raise InvalidDataset(f"the images have different sizes: {found}; resize them all to one size")
    ((height, width),) = examples
    if max(height, width) > max_side:
        raise InvalidDataset(
            f"the images are {height}x{width}, larger than {max_side} pixels on a side; downscale them"
        )
    return height, width, 1 if all_grey else 3


def _raise_if_undecodable(names: list[str]) -> None:
    if names:
        shown = ", ".join(f"'{n}'" for n in names[:EXAMPLES])
        raise InvalidDataset(
            f"{len(names)} file(s) are not readable images (e.g. {shown}); "
            f"remove them or re-save them as one of {', '.join(IMAGE_FORMATS)}"
        )


def _check_array_bytes(nbytes: int, limits: IngestLimits) -> None:
    if nbytes > limits.max_array_bytes:
        raise InvalidDataset(f"the dataset takes {nbytes:,} bytes, more than the limit of {limits.max_array_bytes:,}")


# ---------------------------------------------------------------- .npz


def _read_npz(zf: zipfile.ZipFile, work: Path, limits: IngestLimits) -> tuple[DatasetKind, list[str] | None]:
    """Check an .npz and copy its arrays in chunks into work/<kind>.npy (and labels.npy); returns the class names."""
    check_members(zf, limits.archive)
    names = {name.removesuffix(".npy") for name in zf.namelist()}
    unexpected = sorted(names - set(NPZ_ARRAYS))
    if unexpected:
        raise InvalidDataset(
            f"unexpected arrays in the .npz: {', '.join(unexpected)}; keep only {', '.join(NPZ_ARRAYS)}"
        )
    if ("images" in names) == ("features" in names):
        raise InvalidDataset("the .npz must hold exactly one of 'images' or 'features'")
    kind: DatasetKind = "images" if "images" in names else "features"
    shape, dtype = _npy_header(zf, kind)
    out_shape = _check_images_header(shape, dtype, limits) if kind == "images" else _check_features_header(shape, dtype)
    _check_array_bytes(math.prod(out_shape) * (1 if kind == "images" else 4), limits)
    class_names = _read_npz_labels(zf, out_shape[0], work / LABELS_FILE) if "labels" in names else None
    out = np.lib.format.open_memmap(
        work / array_file(kind), mode="w+", dtype=np.uint8 if kind == "images" else np.float32, shape=out_shape
    )
    start = 0
    for chunk in _iter_npy_chunks(zf, kind):
        with np.errstate(over="ignore"):  # float64 features beyond float32 become inf, refused just below
            out[start : start + len(chunk)] = chunk.reshape((len(chunk), *out_shape[1:]))
        start += len(chunk)
    if kind == "features":
        _check_finite(out)
    out.flush()
    del out
    return kind, class_names


def _read_npz_labels(zf: zipfile.ZipFile, count: int, out_path: Path) -> list[str]:
    """Write labels to out_path as dense indices 0..K-1 into the sorted distinct values, which name the classes."""
    shape, dtype = _npy_header(zf, "labels")
    if dtype.kind not in "iu":
        raise InvalidDataset(f"'labels' must be integers, got {dtype}")
    if shape != (count,):
        raise InvalidDataset(f"'labels' must have shape ({count},), one per item, got {shape}")
    out = np.lib.format.open_memmap(out_path, mode="w+", dtype=np.int64, shape=(count,))
    values = np.zeros(0, dtype=np.int64)
    start = 0
    for chunk in _iter_npy_chunks(zf, "labels"):
        if chunk.min() < 0:
            raise InvalidDataset(f"labels must be non-negative integers; found {int(chunk.min())}")
        out[start : start + len(chunk)] = chunk
        values = np.union1d(values, chunk)
        start += len(chunk)
    for start in range(0, count, CHUNK_ROWS):
        out[start : start + CHUNK_ROWS] = np.searchsorted(values, out[start : start + CHUNK_ROWS])
    out.flush()
    return [str(v) for v in values]


def _npy_header(zf: zipfile.ZipFile, name: str) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype of an .npz member, whose data must fit in the size the zip's directory declares for it."""
    with _open_member(zf, name) as f:
        shape, dtype = _read_npy_header(f, name)
        header_bytes = f.tell()
    data_bytes = math.prod(shape) * dtype.itemsize
    held_bytes = max(0, zf.getinfo(f"{name}.npy").file_size - header_bytes)
    if data_bytes > held_bytes:
        raise InvalidDataset(
            f"'{name}' in the .npz is truncated: its header declares shape {shape} ({data_bytes:,} bytes of data) "
            f"but it holds {held_bytes:,}; save it again with np.savez"
        )
    return shape, dtype


def _open_member(zf: zipfile.ZipFile, name: str) -> IO[bytes]:
    try:
        return zf.open(f"{name}.npy")
    except (zipfile.BadZipFile, NotImplementedError) as exc:
        raise InvalidDataset(f"the .npz is truncated or corrupt ({name}); save it again with np.savez") from exc


def _read_npy_header(f: IO[bytes], name: str) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype from an .npy stream, leaving the stream at the first data byte."""
    readers = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
    unreadable = f"'{name}' in the .npz is not a readable array; save it again with np.savez"
    try:
        version = np.lib.format.read_magic(f)
    except (ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise InvalidDataset(unreadable) from exc
    if version not in readers:
        raise InvalidDataset(f"'{name}' uses .npy format version {version}; save it with np.savez")
    try:
        shape, fortran_order, dtype = readers[version](f)
    except (ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise InvalidDataset(unreadable) from exc
    if fortran_order:
        raise InvalidDataset(f"'{name}' is stored in Fortran order; save np.ascontiguousarray({name}) instead")
    if dtype.hasobject or dtype.fields is not None:
        raise InvalidDataset(f"'{name}' has dtype {dtype}; save a plain numeric array")
    if any(int(s) < 0 for s in shape):
        raise InvalidDataset(f"'{name}' in the .npz has a negative dimension in its shape {shape}; save it again")
    return tuple(int(s) for s in shape), dtype


def _iter_npy_chunks(zf: zipfile.ZipFile, name: str) -> Iterator[np.ndarray]:
    """The rows of an .npy member, a few MB at a time; refuses a member shorter or longer than its header."""
    with _open_member(zf, name) as f:
        shape, dtype = _read_npy_header(f, name)
        row_bytes = math.prod(shape[1:]) * dtype.itemsize
        rows_per_chunk = max(1, CHUNK_BYTES // max(row_bytes, 1))
        try:
            for start in range(0, shape[0], rows_per_chunk):
                rows = min(rows_per_chunk, shape[0] - start)
                data = f.read(rows * row_bytes)
                if len(data) != rows * row_bytes:
                    raise InvalidDataset(f"'{name}' in the .npz is truncated; save it again with np.savez")
                yield np.frombuffer(data, dtype=dtype).reshape((rows, *shape[1:]))
            if f.read(1):
                raise InvalidDataset(f"'{name}' in the .npz holds more data than its header says; save it again")
        except (zipfile.BadZipFile, EOFError, OSError) as exc:
            raise InvalidDataset(f"the .npz is truncated or corrupt ({name}); save it again with np.savez") from exc


def _check_images_header(shape: tuple[int, ...], dtype: np.dtype, limits: IngestLimits) -> tuple[int, int, int, int]:
    if dtype != np.uint8:
        raise InvalidDataset(f"'images' must be uint8 (0..255), got {dtype}; convert with images.astype(np.uint8)")
    if len(shape) == 3:
        shape = (*shape, 1)
    if len(shape) != 4 or shape[3] not in (1, 3):
        raise InvalidDataset(f"'images' must have shape (N, H, W) or (N, H, W, C) with C 1 or 3, got {shape}")
    n, height, width, channels = shape
    if n == 0 or height == 0 or width == 0:
        raise InvalidDataset(f"'images' is empty (shape {shape}); add images")
    if max(height, width) > limits.max_image_side:
        raise InvalidDataset(
            f"the images are {height}x{width}, larger than {limits.max_image_side} pixels on a side; downscale them"
        )
    return n, height, width, channels


def _check_features_header(shape: tuple[int, ...], dtype: np.dtype) -> tuple[int, int]:
    if dtype.kind != "f":
        raise InvalidDataset(f"'features' must be a float array, got {dtype}; convert with features.astype(np.float32)")
    if len(shape) != 2:
        raise InvalidDataset(f"'features' must have shape (N, D), got {shape}")
    if shape[0] == 0 or shape[1] == 0:
        raise InvalidDataset(f"'features' is empty (shape {shape}); add rows")
    return shape[0], shape[1]


def _check_finite(features: np.ndarray) -> None:
    """Refuse NaN or infinite features, naming a few bad rows."""
    rows_per_chunk = max(1, CHUNK_BYTES // (features.shape[1] * 4))
    bad: list[int] = []
    bad_count = 0
    for start in range(0, len(features), rows_per_chunk):
        rows = np.flatnonzero(~np.isfinite(features[start : start + rows_per_chunk]).all(axis=1)) + start
        bad_count += len(rows)
        bad.extend(rows[: EXAMPLES - len(bad)].tolist())
    if bad_count:
        shown = ", ".join(str(r) for r in bad)
        raise InvalidDataset(f"{bad_count} feature row(s) hold NaN or infinity (e.g. rows {shown}); remove or fix them")


# ---------------------------------------------------------------- held-out split, hash, store


def choose_heldout(labels: np.ndarray | None, heldout_fraction: float, seed: int, out: np.ndarray) -> None:
    """Mark in `out` (N,) bool a seeded uniform random choice of round(heldout_fraction * N) items.

    Stratified when labelled: class c gets floor(heldout_fraction * n_c) items, and the items
    left over go to the classes with the largest fractional parts (ties to the lower index).
    Items are drawn chunk by chunk (the number picked from a chunk is hypergeometric given
    what is left), which is exactly a uniform subset per class, in memory bounded by the chunk.
    """
    count = len(out)
    total = round(heldout_fraction * count)
    if count - total < 1:
        raise InvalidDataset(f"heldout_fraction {heldout_fraction} leaves no training item out of {count}; lower it")
    rng = np.random.default_rng(seed)
    items_left = class_sizes(labels, count)
    quotas = heldout_fraction * items_left
    picks_left = np.floor(quotas).astype(np.int64)
    by_remainder = np.argsort(-(quotas - picks_left), kind="stable")
    picks_left[by_remainder[: total - int(picks_left.sum())]] += 1
    for start in range(0, count, CHUNK_ROWS):
        chunk_labels = _label_chunk(labels, start, min(start + CHUNK_ROWS, count))
        chosen = np.zeros(len(chunk_labels), dtype=bool)
        order = np.argsort(chunk_labels, kind="stable")
        present, firsts, sizes = np.unique(chunk_labels[order], return_index=True, return_counts=True)
        for label, first, size in zip(present, firsts, sizes, strict=True):
            picked = rng.hypergeometric(picks_left[label], items_left[label] - picks_left[label], size)
            chosen[rng.choice(order[first : first + size], size=picked, replace=False)] = True
            picks_left[label] -= picked
            items_left[label] -= size
        out[start : start + len(chosen)] = chosen


def _label_chunk(labels: np.ndarray | None, start: int, stop: int) -> np.ndarray:
    """Labels of items start..stop-1; an unlabelled dataset is one class, 0."""
    return np.zeros(stop - start, dtype=np.int64) if labels is None else np.asarray(labels[start:stop])


def class_sizes(labels: np.ndarray | None, count: int, minlength: int = 0) -> np.ndarray:
    """Items per class (like np.bincount), counted in chunks; [count] for an unlabelled dataset."""
    sizes = np.zeros(minlength, dtype=np.int64)
    for start in range(0, count, CHUNK_ROWS):
        chunk_sizes = np.bincount(_label_chunk(labels, start, min(start + CHUNK_ROWS, count)))
        if len(chunk_sizes) > len(sizes):
            sizes = np.pad(sizes, (0, len(chunk_sizes) - len(sizes)))
        sizes[: len(chunk_sizes)] += chunk_sizes
    return sizes


def content_hash(kind: DatasetKind, array: np.ndarray, labels: np.ndarray | None, class_names: list[str] | None) -> str:
    """sha256 of the canonical arrays (dtype, shape and bytes) and class names, read in chunks."""
    digest = hashlib.sha256()
    _hash_array(digest, kind, array)
    if labels is not None and class_names is not None:
        _hash_array(digest, "labels", labels)
        digest.update("\n".join(class_names).encode())
    return digest.hexdigest()


def _hash_array(digest: hashlib._Hash, name: str, array: np.ndarray) -> None:
    digest.update(f"{name} {array.dtype.str} {array.shape}\n".encode())
    rows_per_chunk = max(1, CHUNK_BYTES // max(1, array[:1].nbytes))
    for start in range(0, len(array), rows_per_chunk):
        digest.update(np.ascontiguousarray(array[start : start + rows_per_chunk]).data)


def _prepare(
    work: Path, kind: DatasetKind, class_names: list[str] | None, heldout_fraction: float, seed: int
) -> PreparedDataset:
    """Choose the held-out split of work/<kind>.npy (+ labels.npy) into work/heldout.npy, and hash both."""
    array = np.load(work / array_file(kind), mmap_mode="r")
    labels = None if class_names is None else np.load(work / LABELS_FILE, mmap_mode="r")
    count = len(array)
    heldout = np.lib.format.open_memmap(work / HELDOUT_FILE, mode="w+", dtype=bool, shape=(count,))
    choose_heldout(labels, heldout_fraction, seed, heldout)
    heldout.flush()
    class_counts = None
    if class_names is not None:
        sizes = class_sizes(labels, count, minlength=len(class_names))
        class_counts = dict(zip(class_names, sizes.tolist(), strict=True))
    info = DatasetInfo(
        kind=kind,
        count=count,
        item_shape=tuple(array.shape[1:]),
        content_hash=content_hash(kind, array, labels, class_names),
        class_names=class_names,
        class_counts=class_counts,
        heldout_count=int(np.count_nonzero(heldout)),
    )
    heldout_digest = hashlib.sha256()
    _hash_array(heldout_digest, "heldout", heldout)
    del array, labels, heldout
    return PreparedDataset(work=work, info=info, heldout_hash=heldout_digest.hexdigest())
