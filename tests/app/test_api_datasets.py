"""POST/GET /v1/datasets: zips of images, .npz arrays, the built-in digits, and bad uploads."""

from __future__ import annotations

import io
import tempfile
import zipfile
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from app_helpers import BAD_PAGE_PARAMS, TEST_LIMITS, assert_bad_page_refused, get_page, page_ids, project_id
from fastapi.testclient import TestClient
from PIL import Image
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.models import Dataset, new_id
from diffaudit.store import LocalStore, load_array


def png(side: int = 8, value: int = 0, mode: str = "L") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, (side, side), value).save(buffer, format="PNG")
    return buffer.getvalue()


def zip_bytes(entries: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return buffer.getvalue()


def npz_bytes(**arrays: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, allow_pickle=False, **arrays)
    return buffer.getvalue()


def npz_with_header(shape: tuple[int, ...], data: bytes) -> bytes:
    """An .npz whose images.npy has a hand-written header (np.savez cannot write a wrong one)."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "|u1", "fortran_order": False, "shape": shape})
    return zip_bytes({"images.npy": header.getvalue() + data})


def upload(client: TestClient, headers: dict[str, str], data: bytes, name: str = "data.zip", **form: str) -> Any:
    return client.post("/v1/datasets", headers=headers, files={"file": (name, data)}, data=form)


def stored_dataset_files(store: LocalStore) -> list[str]:
    return [key for key in store.list("datasets/") if not key.startswith("datasets/digits/")]


def dataset_rows(session: Session, client: TestClient, headers: dict[str, str]) -> int:
    project_id = client.get("/v1/tokens/current", headers=headers).json()["project_id"]
    return session.scalar(select(func.count()).select_from(Dataset).where(Dataset.project_id == project_id)) or 0


def test_zip_with_class_folders(client: TestClient, auth: dict[str, str], store: LocalStore) -> None:
    entries = {f"cats/{i}.png": png(value=i) for i in range(6)} | {
        f"dogs/{i}.png": png(value=100 + i) for i in range(4)
    }
    response = upload(client, auth, zip_bytes(entries), name="pets.zip", heldout_fraction="0.2")
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["id"].startswith("ds_")
    assert (body["name"], body["kind"], body["count"], body["item_shape"]) == ("pets", "images", 10, [8, 8, 1])
    assert body["class_names"] == ["cats", "dogs"]
    assert body["class_counts"] == {"cats": 6, "dogs": 4}
    assert body["heldout_count"] == 2
    assert body["builtin"] is False
    assert load_array(store, f"datasets/{body['id']}/images.npy").shape == (10, 8, 8, 1)
    assert client.get(f"/v1/datasets/{body['id']}", headers=auth).json() == body


def test_npz_images_and_features(client: TestClient, auth: dict[str, str]) -> None:
    images = np.arange(5 * 4 * 4 * 3, dtype=np.uint8).reshape(5, 4, 4, 3)
    labels = np.array([0, 1, 1, 0, 1])
    body = upload(client, auth, npz_bytes(images=images, labels=labels), name="arr.npz").json()
    assert (body["kind"], body["count"], body["item_shape"]) == ("images", 5, [4, 4, 3])
    features = np.random.default_rng(0).normal(size=(7, 3)).astype(np.float32)
    body = upload(client, auth, npz_bytes(features=features), name="emb.npz").json()
    assert (body["kind"], body["count"], body["item_shape"]) == ("features", 7, [3])


def test_builtin_digits_is_visible_to_every_project(
    client: TestClient, auth: dict[str, str], other_auth: dict[str, str]
) -> None:
    for headers in (auth, other_auth):
        listed = client.get("/v1/datasets", headers=headers).json()["items"]
        digits = next(d for d in listed if d["id"] == "digits")
        assert (digits["builtin"], digits["count"], digits["item_shape"]) == (True, 1797, [16, 16, 1])
        assert client.get("/v1/datasets/digits", headers=headers).status_code == 200


def test_builtins_are_written_once(
    make_client: Callable[..., TestClient], client: TestClient, session: Session
) -> None:
    make_client()  # a second app starting on the same database and store
    assert session.scalar(select(func.count()).select_from(Dataset).where(Dataset.id == "digits")) == 1


def add_dataset_row(session: Session, project: str, created_at: datetime) -> str:
    """A dataset row (no files) made at a chosen time, for listing tests."""
    row = Dataset(
        id=new_id("ds"),
        project_id=project,
        name="listed",
        kind="features",
        count=1,
        item_shape=[2],
        content_hash=new_id("hash"),
        class_names=None,
        class_counts=None,
        heldout_count=0,
        info={},
        created_at=created_at,
    )
    session.add(row)
    session.commit()
    return row.id


def test_list_is_paginated_builtins_first_then_newest_first(
    client: TestClient, auth: dict[str, str], other_auth: dict[str, str], session: Session
) -> None:
    mine, theirs = project_id(client, auth), project_id(client, other_auth)
    old = datetime(2000, 1, 1, tzinfo=UTC)  # older than the built-ins: still listed after them
    later = datetime(2030, 1, 1, tzinfo=UTC)
    times = [old, later, later + timedelta(hours=1), later + timedelta(hours=1), later]
    rows = [(t, add_dataset_row(session, mine, t)) for t in times]
    foreign = add_dataset_row(session, theirs, later + timedelta(hours=2))
    expected = ["digits", *(ds for _, ds in sorted(rows, reverse=True))]

    assert page_ids(client, "/v1/datasets", auth, limit=2) == expected
    assert page_ids(client, "/v1/datasets", auth, limit=200) == expected
    first = get_page(client, "/v1/datasets", auth)
    assert (first["total"], first["limit"], first["offset"]) == (6, 50, 0)
    assert [d["builtin"] for d in first["items"]] == [True] + [False] * 5
    assert [d["id"] for d in get_page(client, "/v1/datasets", auth, limit=2, offset=1)["items"]] == expected[1:3]
    beyond = get_page(client, "/v1/datasets", auth, offset=6)
    assert (beyond["items"], beyond["total"]) == ([], 6)
    assert page_ids(client, "/v1/datasets", other_auth, limit=1) == ["digits", foreign]


@pytest.mark.parametrize("params", BAD_PAGE_PARAMS)
def test_list_refuses_bad_page_parameters(client: TestClient, auth: dict[str, str], params: dict[str, object]) -> None:
    assert_bad_page_refused(client.get("/v1/datasets", headers=auth, params=params), params)


def _truncated() -> bytes:
    data = zip_bytes({f"{i}.png": png(value=i) for i in range(5)})
    return data[: len(data) - 40]


def _symlink_zip() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        zf.writestr("a.png", png())
        info = zipfile.ZipInfo("b.png")
        info.external_attr = 0o120777 << 16
        zf.writestr(info, "/etc/passwd")
    return buffer.getvalue()


BAD_DATASETS: dict[str, tuple[Callable[[], bytes], str]] = {
    "truncated zip": (_truncated, "truncated or corrupt"),
    "entry escaping with ../": (lambda: zip_bytes({"../x.png": png()}), "outside the archive folder"),
    "symbolic link": (_symlink_zip, "symbolic link"),
    "too many files": (
        lambda: zip_bytes({f"{i}.png": png() for i in range(TEST_LIMITS["max_archive_files"] + 1)}),
        "more than the limit",
    ),
    "too many bytes": (
        lambda: zip_bytes({"a.png": png(), "pad.png": b"\0" * (TEST_LIMITS["max_archive_bytes"] + 1)}),
        "more than the limit",
    ),
    "undecodable image": (lambda: zip_bytes({"good.png": png(), "broken.png": b"not an image"}), "broken.png"),
    "mixed sizes": (lambda: zip_bytes({"a.png": png(8), "b.png": png(12)}), "different sizes"),
    "empty dataset": (lambda: zip_bytes({"readme/": b""}), "no images"),
    "image too large": (lambda: zip_bytes({"a.png": png(TEST_LIMITS["max_image_side"] + 1)}), "downscale"),
    "npz with NaN features": (lambda: npz_bytes(features=np.array([[0.0, np.nan]])), "NaN"),
    "npz with a negative shape": (lambda: npz_with_header((-5, 8, 8), b"\0" * 64), "negative dimension"),
    "npz declaring more data than it holds": (
        lambda: npz_with_header((10**6, 8, 8), b"\0" * 64),
        "its header declares shape (1000000, 8, 8)",
    ),
}


@pytest.mark.parametrize("case", list(BAD_DATASETS))
def test_bad_dataset_is_refused_and_nothing_is_kept(
    case: str, client: TestClient, auth: dict[str, str], store: LocalStore, session: Session
) -> None:
    make, message = BAD_DATASETS[case]
    response = upload(client, auth, make())
    assert 400 <= response.status_code < 500, response.text
    error = response.json()["error"]
    assert error["code"] in ("invalid_dataset", "invalid_archive")
    assert message in error["message"]
    assert stored_dataset_files(store) == []
    assert dataset_rows(session, client, auth) == 0


def test_oversized_dataset_upload(make_client: Callable[..., TestClient], auth: dict[str, str]) -> None:
    client = make_client(max_upload_bytes=2000)
    response = upload(client, auth, zip_bytes({f"{i}.png": np.random.bytes(500) for i in range(10)}))
    assert response.status_code == 413
    assert "2,000 bytes" in response.json()["error"]["message"]


def test_heldout_fraction_is_validated(client: TestClient, auth: dict[str, str]) -> None:
    response = upload(client, auth, zip_bytes({"a.png": png()}), heldout_fraction="1.5")
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "validation_error"
    assert "heldout_fraction" in response.json()["error"]["message"]


def test_the_same_upload_returns_the_existing_dataset(
    client: TestClient, auth: dict[str, str], other_auth: dict[str, str], store: LocalStore, session: Session
) -> None:
    data = zip_bytes({f"c{i % 2}/{i}.png": png(value=i) for i in range(10)})
    first = upload(client, auth, data, heldout_fraction="0.2")
    files = stored_dataset_files(store)
    again = [upload(client, auth, data, name=f"copy{i}.zip", heldout_fraction="0.2") for i in range(3)]
    assert first.status_code == 201, first.text
    assert [r.status_code for r in again] == [200, 200, 200]
    assert {r.json()["id"] for r in again} == {first.json()["id"]}
    assert again[0].json() == first.json()
    assert stored_dataset_files(store) == files
    assert dataset_rows(session, client, auth) == 1
    # another split of the same images is another dataset; so is the same upload in another project
    other_split = upload(client, auth, data, heldout_fraction="0.4")
    other_project = upload(client, other_auth, data, heldout_fraction="0.2")
    assert (other_split.status_code, other_project.status_code) == (201, 201)
    assert len({first.json()["id"], other_split.json()["id"], other_project.json()["id"]}) == 3
    assert other_split.json()["content_hash"] == first.json()["content_hash"]


def test_dataset_errors_show_no_server_paths(client: TestClient, auth: dict[str, str], tmp_path: Path) -> None:
    server_folders = (tempfile.gettempdir(), str(tmp_path), str(Path.cwd()))
    for case, (make, _) in BAD_DATASETS.items():
        message = upload(client, auth, make()).json()["error"]["message"]
        assert not any(folder in message for folder in server_folders), (case, message)
