import re
import stat
import struct
import zipfile
from pathlib import Path

import pytest

from diffaudit.archive import ArchiveLimits, InvalidArchive, safe_extract_zip

LIMITS = ArchiveLimits()


def make_zip(path: Path, entries: dict[str, bytes], compression: int = zipfile.ZIP_DEFLATED) -> Path:
    with zipfile.ZipFile(path, "w", compression) as zf:
        for name, data in entries.items():
            zf.writestr(zipfile.ZipInfo(name), data, compress_type=compression)
    return path


def relative_files(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def test_extracts_regular_files_and_skips_clutter(tmp_path):
    entries = {
        "data/": b"",
        "data/a.txt": b"alpha",
        "data/sub/b.bin": bytes(range(256)) * 10,
        "__MACOSX/data/._a.txt": b"junk",
        "data/.DS_Store": b"junk",
        ".hidden": b"junk",
        "data/.git/config": b"junk",
    }
    zip_path = make_zip(tmp_path / "in.zip", entries)
    dest = tmp_path / "out"
    paths = safe_extract_zip(zip_path, dest, LIMITS)
    assert paths == [dest / "data" / "a.txt", dest / "data" / "sub" / "b.bin"]
    assert relative_files(dest) == ["data/a.txt", "data/sub/b.bin"]
    assert (dest / "data" / "a.txt").read_bytes() == b"alpha"
    assert (dest / "data" / "sub" / "b.bin").read_bytes() == bytes(range(256)) * 10


def test_refuses_a_file_that_is_not_a_zip(tmp_path):
    path = tmp_path / "notes.zip"
    path.write_text("hello, not a zip")
    with pytest.raises(InvalidArchive, match="not a zip file"):
        safe_extract_zip(path, tmp_path / "out", LIMITS)
    assert not (tmp_path / "out").exists()


def test_refuses_a_truncated_zip(tmp_path):
    data = make_zip(tmp_path / "in.zip", {f"f{i}.txt": b"x" * 1000 for i in range(5)}).read_bytes()
    cut = tmp_path / "cut.zip"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(InvalidArchive, match="truncated or corrupt"):
        safe_extract_zip(cut, tmp_path / "out", LIMITS)
    assert not (tmp_path / "out").exists()


def test_refuses_corrupt_data_and_removes_files_already_written(tmp_path):
    payload = b"0123456789" * 100
    data = bytearray(
        make_zip(tmp_path / "in.zip", {"a.txt": b"fine", "b.txt": payload}, zipfile.ZIP_STORED).read_bytes()
    )
    start = data.index(payload)
    data[start + 10 : start + 20] = b"XXXXXXXXXX"  # payload bytes no longer match the stored CRC
    bad = tmp_path / "bad.zip"
    bad.write_bytes(bytes(data))
    dest = tmp_path / "out"
    dest.mkdir()
    with pytest.raises(InvalidArchive, match="truncated or corrupt"):
        safe_extract_zip(bad, dest, LIMITS)
    assert dest.is_dir() and list(dest.iterdir()) == []  # a.txt was written, then removed


@pytest.mark.parametrize(
    "name",
    [
        "../evil.txt",
        "a/../../evil.txt",
        "/tmp/evil.txt",
        "C:/evil.txt",
        "C:\\evil.txt",
        "..\\evil.txt",
        "a\\..\\..\\evil.txt",
    ],
)
def test_refuses_entries_that_escape_the_folder(tmp_path, name):
    zip_path = make_zip(tmp_path / "in.zip", {"ok.txt": b"fine", name: b"evil"})
    dest = tmp_path / "sub" / "out"
    with pytest.raises(InvalidArchive, match=r"absolute path|outside the archive folder"):
        safe_extract_zip(zip_path, dest, LIMITS)
    assert not dest.exists()
    assert not list(tmp_path.rglob("evil.txt"))


def test_refuses_symlinks(tmp_path):
    zip_path = tmp_path / "in.zip"
    with zipfile.ZipFile(zip_path, "w") as zf:
        link = zipfile.ZipInfo("link")
        link.create_system = 3
        link.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(link, "/etc/passwd")
    with pytest.raises(InvalidArchive, match="symbolic link"):
        safe_extract_zip(zip_path, tmp_path / "out", LIMITS)
    assert not (tmp_path / "out").exists()


def test_refuses_more_files_than_the_limit(tmp_path):
    zip_path = make_zip(tmp_path / "in.zip", {f"f{i}.txt": b"x" for i in range(3)})
    with pytest.raises(InvalidArchive, match="3 files, more than the limit of 2"):
        safe_extract_zip(zip_path, tmp_path / "out", ArchiveLimits(max_files=2))
    assert safe_extract_zip(zip_path, tmp_path / "ok", ArchiveLimits(max_files=3))


def test_refuses_a_zip_bomb_by_declared_size(tmp_path):
    zip_path = make_zip(tmp_path / "bomb.zip", {"zeros.bin": bytes(10 * 2**20)})
    assert zip_path.stat().st_size < 100_000
    with pytest.raises(InvalidArchive, match="expands to 10,485,760 bytes, more than the limit of 1,048,576"):
        safe_extract_zip(zip_path, tmp_path / "out", ArchiveLimits(max_total_bytes=2**20))
    assert not (tmp_path / "out").exists()


def test_refuses_a_zip_whose_headers_understate_the_size(tmp_path):
    data = bytearray(make_zip(tmp_path / "bomb.zip", {"zeros.bin": bytes(10 * 2**20)}).read_bytes())
    struct.pack_into("<I", data, data.index(b"PK\x03\x04") + 22, 100)  # local header: uncompressed size
    struct.pack_into("<I", data, data.index(b"PK\x01\x02") + 24, 100)  # central directory: uncompressed size
    liar = tmp_path / "liar.zip"
    liar.write_bytes(bytes(data))
    with pytest.raises(InvalidArchive, match="truncated or corrupt"):
        safe_extract_zip(liar, tmp_path / "out", ArchiveLimits(max_total_bytes=1000))
    assert not (tmp_path / "out").exists()


def test_refuses_encrypted_entries(tmp_path):
    data = bytearray(make_zip(tmp_path / "plain.zip", {"secret.txt": b"not really encrypted"}).read_bytes())
    data[data.index(b"PK\x03\x04") + 6] |= 0x1  # local header: general purpose flag, bit 0 = encrypted
    data[data.index(b"PK\x01\x02") + 8] |= 0x1  # central directory: the same flag
    zip_path = tmp_path / "in.zip"
    zip_path.write_bytes(bytes(data))
    with pytest.raises(InvalidArchive, match="encrypted"):
        safe_extract_zip(zip_path, tmp_path / "out", LIMITS)


def test_refuses_duplicate_names_and_file_folder_clashes(tmp_path):
    dup = tmp_path / "dup.zip"
    with zipfile.ZipFile(dup, "w") as zf, pytest.warns(UserWarning, match="Duplicate name"):
        zf.writestr("a.txt", b"one")
        zf.writestr("a.txt", b"two")
    with pytest.raises(InvalidArchive, match=re.escape("'a.txt' twice")):
        safe_extract_zip(dup, tmp_path / "out1", LIMITS)
    clash = make_zip(tmp_path / "clash.zip", {"a": b"file", "a/b.txt": b"inside"})
    with pytest.raises(InvalidArchive, match="'a' is both a file and a folder"):
        safe_extract_zip(clash, tmp_path / "out2", LIMITS)


def test_refuses_a_destination_that_is_not_empty(tmp_path):
    zip_path = make_zip(tmp_path / "in.zip", {"a.txt": b"x"})
    dest = tmp_path / "out"
    dest.mkdir()
    (dest / "mine.txt").write_text("keep me")
    with pytest.raises(ValueError, match="not empty"):
        safe_extract_zip(zip_path, dest, LIMITS)
    assert (dest / "mine.txt").read_text() == "keep me"
