"""The artifact store: a local folder and S3-compatible storage (a real local S3 server, moto's)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import boto3
import numpy as np
import pytest
from moto.server import ThreadedMotoServer

from diffaudit.store import (
    ArtifactNotFound,
    ArtifactStore,
    LocalStore,
    S3Store,
    ScopedStore,
    load_array,
    load_json,
    save_array,
    save_json,
)


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture()
def s3_store(s3_endpoint: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> S3Store:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    bucket = f"b{tmp_path.name.replace('_', '-').lower()[-40:]}"
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket=bucket)
    return S3Store(bucket, cache_dir=tmp_path / "cache", endpoint_url=s3_endpoint, prefix="team-a")


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ArtifactStore:
    if request.param == "local":
        return LocalStore(tmp_path / "root")
    return request.getfixturevalue("s3_store")  # type: ignore[no-any-return]


def test_bytes_round_trip_listing_and_deletion(store: ArtifactStore) -> None:
    store.put_bytes("jobs/1/a.json", b"{}")
    store.put_bytes("jobs/1/sub/b.png", b"png")
    store.put_bytes("jobs/2/c.txt", b"c")
    assert store.get_bytes("jobs/1/sub/b.png") == b"png"
    assert store.exists("jobs/1/a.json") and not store.exists("jobs/1/missing")
    assert store.list("jobs/1/") == ["jobs/1/a.json", "jobs/1/sub/b.png"]
    store.delete_prefix("jobs/1")
    assert store.list("jobs/") == ["jobs/2/c.txt"]
    with pytest.raises(ArtifactNotFound):
        store.get_bytes("jobs/1/a.json")


def test_overwrite_replaces_the_content_seen_by_readers(store: ArtifactStore) -> None:
    store.put_bytes("k/v.txt", b"old")
    assert store.local_path("k/v.txt").read_bytes() == b"old"
    store.put_bytes("k/v.txt", b"new")
    assert store.local_path("k/v.txt").read_bytes() == b"new", "a cached copy must not outlive an overwrite"


def test_arrays_and_json_through_a_scoped_view(store: ArtifactStore) -> None:
    job = ScopedStore(store, "evaluations/ev_1")
    array = np.arange(24, dtype=np.float32).reshape(4, 6)
    save_array(job, "features/generated.npy", array)
    save_json(job, "features/result.json", {"dim": 6})
    loaded = load_array(job, "features/generated.npy")
    assert isinstance(loaded, np.memmap)
    np.testing.assert_array_equal(loaded, array)
    assert load_json(job, "features/result.json") == {"dim": 6}
    assert job.list() == ["features/generated.npy", "features/result.json"]
    assert store.exists("evaluations/ev_1/features/generated.npy")


@pytest.mark.parametrize("key", ["../escape", "/absolute", "a//b", "a/./b", ""])
def test_keys_that_could_escape_are_refused(store: ArtifactStore, key: str) -> None:
    with pytest.raises(ValueError, match="invalid artifact key"):
        store.put_bytes(key, b"x")


def test_s3_objects_live_under_the_prefix(s3_store: S3Store) -> None:
    s3_store.put_bytes("x/y.txt", b"1")
    keys = [o["Key"] for o in s3_store.client.list_objects_v2(Bucket=s3_store.bucket)["Contents"]]
    assert keys == ["team-a/x/y.txt"]


def test_local_writes_leave_no_partial_files(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    source = tmp_path / "big.bin"
    source.write_bytes(b"0" * 1_000_000)
    store.put_file("a/big.bin", source)
    assert [p.name for p in (tmp_path / "a").iterdir()] == ["big.bin"]
