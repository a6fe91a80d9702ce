"""Safe extraction of user-supplied zip files (datasets, checkpoints).

A zip from a user is untrusted: entry names may point outside the target folder, entries may
be symlinks, and declared sizes may lie (a zip bomb). `safe_extract_zip` checks every entry
before writing anything, counts the bytes it actually writes, and on any refusal removes
everything it wrote. `extract_selected` extracts only the entries a caller selects from the
zip's directory; the others are never decompressed.
"""

from __future__ import annotations

import re
import shutil
import stat
import zipfile
import zlib
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from diffaudit.errors import InvalidInput

CHUNK_BYTES = 1 << 20
_DRIVE_LETTER = re.compile(r"^[A-Za-z]:")
_ZIP_MAGIC = b"PK\x03\x04"


class InvalidArchive(InvalidInput):
    """The zip cannot be accepted; the message says what to fix."""


@dataclass(frozen=True)
class ArchiveLimits:
    max_files: int = 200_000
    max_total_bytes: int = 8 * 2**30


def open_zip(zip_path: Path) -> zipfile.ZipFile:
    """Open a zip, turning 'not a zip' and 'damaged zip' into InvalidArchive."""
    try:
        return zipfile.ZipFile(zip_path)
    except zipfile.BadZipFile as exc:
        with open(zip_path, "rb") as f:
            looks_like_zip = f.read(4) == _ZIP_MAGIC
        if looks_like_zip:
            raise InvalidArchive("the zip is truncated or corrupt; upload it again") from exc
        raise InvalidArchive(f"{zip_path.name} is not a zip file; upload a .zip archive") from exc


def is_skipped(name: str) -> bool:
    """Directories and OS clutter (`__MACOSX/`, `.DS_Store`, any dotfile or dot-folder)."""
    parts = PurePosixPath(name.replace("\\", "/")).parts
    return name.endswith(("/", "\\")) or any(p == "__MACOSX" or p.startswith(".") for p in parts)


def safe_member_path(name: str) -> PurePosixPath:
    """The relative path an entry name stands for, or InvalidArchive if it escapes the folder."""
    posix = name.replace("\\", "/")
    if posix.startswith("/") or _DRIVE_LETTER.match(posix) or "\x00" in posix:
        raise InvalidArchive(f"the zip entry {name!r} has an absolute path; zip the folder with relative paths")
    parts = [p for p in posix.split("/") if p not in ("", ".")]
    if not parts or ".." in parts:
        raise InvalidArchive(f"the zip entry {name!r} points outside the archive folder; remove it")
    return PurePosixPath(*parts)


def _is_symlink(info: zipfile.ZipInfo) -> bool:
    return stat.S_ISLNK(info.external_attr >> 16)


Member = tuple[zipfile.ZipInfo, PurePosixPath]
Selector = Callable[[list[PurePosixPath]], Collection[PurePosixPath]]


@dataclass(frozen=True)
class Extraction:
    paths: list[Path]  # the files written, sorted
    left_out: list[str]  # the entries not selected (never decompressed), sorted


def check_members(zf: zipfile.ZipFile, limits: ArchiveLimits) -> list[Member]:
    """The entries to extract with their relative paths, after every check that needs no decompression."""
    members = list_members(zf, limits)
    check_declared_bytes(members, limits)
    return members


def list_members(zf: zipfile.ZipFile, limits: ArchiveLimits) -> list[Member]:
    """The zip's regular files with their relative paths; refuses unsafe names, links, encryption, too many files."""
    members: list[Member] = []
    for info in zf.infolist():
        if _is_symlink(info):
            raise InvalidArchive(f"the zip entry {info.filename!r} is a symbolic link; zip the real files instead")
        if info.is_dir():
            continue
        relative = safe_member_path(info.filename)
        if is_skipped(info.filename):
            continue
        if info.flag_bits & 0x1:
            raise InvalidArchive(f"the zip entry {info.filename!r} is encrypted; upload a zip without a password")
        members.append((info, relative))
    if len(members) > limits.max_files:
        raise InvalidArchive(f"the zip holds {len(members):,} files, more than the limit of {limits.max_files:,}")
    _check_no_collisions([path for _, path in members])
    return members


def check_declared_bytes(members: list[Member], limits: ArchiveLimits) -> None:
    """The sizes the zip's directory declares for these entries fit the limit (the bytes written are counted too)."""
    declared = sum(info.file_size for info, _ in members)
    if declared > limits.max_total_bytes:
        raise InvalidArchive(
            f"the zip expands to {declared:,} bytes, more than the limit of {limits.max_total_bytes:,}"
        )


def _check_no_collisions(paths: list[PurePosixPath]) -> None:
    seen: set[PurePosixPath] = set()
    for path in paths:
        if path in seen:
            raise InvalidArchive(f"the zip holds '{path}' twice; keep one copy")
        seen.add(path)
    folders = {parent for path in paths for parent in path.parents}
    clash = seen & folders
    if clash:
        raise InvalidArchive(f"'{min(clash)}' is both a file and a folder in the zip; rename one of them")


def safe_extract_zip(zip_path: Path, dest: Path, limits: ArchiveLimits) -> list[Path]:
    """Extract the zip's regular files into `dest` (new or empty); returns their paths, sorted.

    Refuses (InvalidArchive) anything that is not a readable zip, entries escaping `dest`,
    symlinks, encrypted entries, and more files or bytes than `limits` allow (declared sizes
    are checked first, written bytes are counted while streaming). On refusal `dest` is left
    as it was found.
    """
    return extract_selected(zip_path, dest, limits, select=lambda paths: paths).paths


def extract_selected(zip_path: Path, dest: Path, limits: ArchiveLimits, select: Selector) -> Extraction:
    """Like safe_extract_zip, but only the entries `select` picks from the relative paths of all of them.

    The byte limit applies to the selected entries; the others are only listed, never decompressed.
    """
    created_dest = not dest.exists()
    if not created_dest and any(dest.iterdir()):
        raise ValueError("the extraction folder is not empty")
    dest.mkdir(parents=True, exist_ok=True)
    try:
        with open_zip(zip_path) as zf:
            members = list_members(zf, limits)
            chosen = set(select([relative for _, relative in members]))
            selected = [(info, relative) for info, relative in members if relative in chosen]
            check_declared_bytes(selected, limits)
            written = 0
            paths: list[Path] = []
            for info, relative in selected:
                target = dest.joinpath(*relative.parts)
                written = _extract_member(zf, info, target, written, limits)
                paths.append(target)
    except BaseException:
        _empty_folder(dest, remove=created_dest)
        raise
    left_out = sorted(relative.as_posix() for _, relative in members if relative not in chosen)
    return Extraction(paths=sorted(paths), left_out=left_out)


def _extract_member(
    zf: zipfile.ZipFile, info: zipfile.ZipInfo, target: Path, written: int, limits: ArchiveLimits
) -> int:
    """Stream one entry to `target`; returns the running byte total."""
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        with zf.open(info) as src, open(target, "xb") as out:
            while chunk := src.read(CHUNK_BYTES):
                written += len(chunk)
                if written > limits.max_total_bytes:
                    raise InvalidArchive(f"the zip expands to more than the limit of {limits.max_total_bytes:,} bytes")
                out.write(chunk)
    except (zipfile.BadZipFile, zlib.error, EOFError) as exc:
        raise InvalidArchive(f"the zip is truncated or corrupt (entry {info.filename!r}); upload it again") from exc
    except NotImplementedError as exc:
        raise InvalidArchive(
            f"the zip entry {info.filename!r} uses an unsupported compression method; use deflate or store"
        ) from exc
    return written


def _empty_folder(folder: Path, remove: bool) -> None:
    if remove:
        shutil.rmtree(folder, ignore_errors=True)
        return
    for child in folder.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child, ignore_errors=True)
        else:
            child.unlink(missing_ok=True)
