"""Artifact store: where datasets, checkpoints, cached features and job outputs live.

Two implementations behind one small interface: a local folder (the default) and
S3-compatible object storage (for workers on several machines). Keys are '/'-separated
relative paths. Writes are atomic: a reader never sees half a file, so a process killed
mid-write leaves either the old state or the new one.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Protocol

import numpy as np


class ArtifactNotFound(KeyError):
    """The key names nothing in the store."""


class ArtifactStore(Protocol):
    def put_file(self, key: str, path: Path) -> None: ...
    def put_bytes(self, key: str, data: bytes) -> None: ...
    def get_bytes(self, key: str) -> bytes: ...
    def local_path(self, key: str) -> Path: ...
    def exists(self, key: str) -> bool: ...
    def list(self, prefix: str = "") -> list[str]: ...
    def delete_prefix(self, prefix: str) -> None: ...


def _check_key(key: str) -> str:
    parts = key.split("/")
    if not key or key.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"invalid artifact key {key!r}")
    return key


class LocalStore:
    """A folder on a local or shared filesystem."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        return self.root / _check_key(key)

    def put_file(self, key: str, path: Path) -> None:
        target = self._path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-")
        os.close(fd)
        shutil.copyfile(path, tmp)
        os.replace(tmp, target)

    def put_bytes(self, key: str, data: bytes) -> None:
        target = self._path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, target)

    def get_bytes(self, key: str) -> bytes:
        return self.local_path(key).read_bytes()

    def local_path(self, key: str) -> Path:
        path = self._path(key)
        if not path.is_file():
            raise ArtifactNotFound(key)
        return path

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def list(self, prefix: str = "") -> list[str]:
        base = self.root / prefix if prefix else self.root
        if not base.exists():
            return []
        return sorted(
            p.relative_to(self.root).as_posix()
            for p in base.rglob("*")
            if p.is_file() and not p.name.startswith(".tmp-")
        )

    def delete_prefix(self, prefix: str) -> None:
        path = self._path(prefix.rstrip("/"))
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


class S3Store:
    """S3-compatible object storage; reads are cached in a local folder for memory mapping."""

    def __init__(
        self,
        bucket: str,
        cache_dir: Path | str,
        endpoint_url: str | None = None,
        prefix: str = "",
        client: Any = None,
    ) -> None:
        import boto3

        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.client = client or boto3.client("s3", endpoint_url=endpoint_url)
        self.cache = Path(cache_dir)
        self.cache.mkdir(parents=True, exist_ok=True)

    def _key(self, key: str) -> str:
        _check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def put_file(self, key: str, path: Path) -> None:
        self.client.upload_file(str(path), self.bucket, self._key(key))
        self._drop_cached(key)

    def put_bytes(self, key: str, data: bytes) -> None:
        self.client.upload_fileobj(io.BytesIO(data), self.bucket, self._key(key))
        self._drop_cached(key)

    def get_bytes(self, key: str) -> bytes:
        return self.local_path(key).read_bytes()

    def _drop_cached(self, key: str) -> None:
        cached = self.cache / key
        if cached.exists():
            cached.unlink()

    def local_path(self, key: str) -> Path:
        cached = self.cache / _check_key(key)
        if cached.is_file():
            return cached
        if not self.exists(key):
            raise ArtifactNotFound(key)
        cached.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=cached.parent, prefix=".tmp-")
        os.close(fd)
        self.client.download_file(self.bucket, self._key(key), tmp)
        os.replace(tmp, cached)
        return cached

    def exists(self, key: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.client.head_object(Bucket=self.bucket, Key=self._key(key))
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise
        return True

    def list(self, prefix: str = "") -> list[str]:
        if prefix:
            _check_key(prefix.rstrip("/"))
        full = f"{self.prefix}/{prefix}" if self.prefix else prefix
        strip = len(self.prefix) + 1 if self.prefix else 0
        keys: list[str] = []
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=full):
            keys.extend(obj["Key"][strip:] for obj in page.get("Contents", []))
        return sorted(keys)

    def delete_prefix(self, prefix: str) -> None:
        for key in self.list(prefix):
            self.client.delete_object(Bucket=self.bucket, Key=self._key(key))
            self._drop_cached(key)
        cached = self.cache / prefix
        if cached.is_dir():
            shutil.rmtree(cached)


class ScopedStore:
    """A view of a store under a key prefix (e.g. one job's folder)."""

    def __init__(self, store: ArtifactStore, prefix: str) -> None:
        self.store = store
        self.prefix = _check_key(prefix.strip("/"))

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{_check_key(key)}"

    def put_file(self, key: str, path: Path) -> None:
        self.store.put_file(self._key(key), path)

    def put_bytes(self, key: str, data: bytes) -> None:
        self.store.put_bytes(self._key(key), data)

    def get_bytes(self, key: str) -> bytes:
        return self.store.get_bytes(self._key(key))

    def local_path(self, key: str) -> Path:
        return self.store.local_path(self._key(key))

    def exists(self, key: str) -> bool:
        return self.store.exists(self._key(key))

    def list(self, prefix: str = "") -> list[str]:
        start = len(self.prefix) + 1
        full = self._key(prefix) if prefix else self.prefix + "/"
        return [k[start:] for k in self.store.list(full)]

    def delete_prefix(self, prefix: str) -> None:
        self.store.delete_prefix(self._key(prefix))


def save_array(store: ArtifactStore, key: str, array: np.ndarray) -> None:
    """Write an array as .npy through a temporary file (atomic in the store)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "a.npy"
        np.save(path, array, allow_pickle=False)
        store.put_file(key, path)


def load_array(store: ArtifactStore, key: str, mmap: bool = True) -> np.ndarray:
    """Read an .npy artifact, memory-mapped by default so large arrays stay on disk."""
    return np.load(store.local_path(key), mmap_mode="r" if mmap else None, allow_pickle=False)


def save_json(store: ArtifactStore, key: str, value: Any) -> None:
    store.put_bytes(key, json.dumps(value, indent=2, sort_keys=True).encode())


def save_csv(store: ArtifactStore, key: str, header: list[str], rows: list[list[Any]]) -> None:
    """A table as CSV (one header line, then the rows)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    store.put_bytes(key, buffer.getvalue().encode())


def load_json(store: ArtifactStore, key: str) -> Any:
    return json.loads(store.get_bytes(key))
