"""POST/GET /v1/checkpoints: valid uploads, deduplication, server paths, and every way an upload can be bad."""

from __future__ import annotations

import io
import json
import shutil
import stat
import tempfile
import zipfile
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import torch
from app_helpers import (
    BAD_PAGE_PARAMS,
    TEST_LIMITS,
    TinyCheckpoint,
    assert_bad_page_refused,
    get_page,
    page_ids,
    project_id,
    upload_checkpoint,
    zip_folder,
)
from fastapi.testclient import TestClient
from safetensors.torch import load_file, save_file
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.checkpoints.service import checkpoint_dir
from app.models import Checkpoint, new_id
from diffaudit.checkpoints import validate_checkpoint_dir
from diffaudit.store import LocalStore

WEIGHTS = "unet/diffusion_pytorch_model.safetensors"


def checkpoint_rows(session: Session, headers: dict[str, str], client: TestClient) -> int:
    project_id = client.get("/v1/tokens/current", headers=headers).json()["project_id"]
    return session.scalar(select(func.count()).select_from(Checkpoint).where(Checkpoint.project_id == project_id)) or 0


def test_upload_validates_and_stores_the_checkpoint(
    client: TestClient, auth: dict[str, str], tiny_checkpoint: TinyCheckpoint, store: LocalStore
) -> None:
    response = upload_checkpoint(client, auth, tiny_checkpoint.zip_bytes)
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["id"].startswith("ck_")
    assert body["name"] == "model"
    assert body["num_parameters"] == tiny_checkpoint.num_parameters
    assert (body["sample_size"], body["in_channels"], body["out_channels"]) == (16, 1, 1)
    assert (body["num_class_embeds"], body["conditioning"], body["source"]) == (10, "class", "upload")
    assert len(body["content_hash"]) == 64
    # The single top folder of the zip is unwrapped: the pipeline layout sits right under the id.
    stored = store.list(f"checkpoints/{body['id']}/")
    assert f"checkpoints/{body['id']}/{WEIGHTS}" in stored
    assert f"checkpoints/{body['id']}/scheduler/scheduler_config.json" in stored
    assert body.pop("ignored_files") == []
    assert client.get(f"/v1/checkpoints/{body['id']}", headers=auth).json() == body
    assert [c["id"] for c in client.get("/v1/checkpoints", headers=auth).json()["items"]] == [body["id"]]


def test_uploading_the_same_content_returns_the_existing_checkpoint(
    client: TestClient, auth: dict[str, str], tiny_checkpoint: TinyCheckpoint, store: LocalStore, tmp_path: Path
) -> None:
    first = upload_checkpoint(client, auth, tiny_checkpoint.zip_bytes)
    files_before = store.list("checkpoints/")
    flat_zip = zip_folder(tiny_checkpoint.folder)  # same files, no top folder
    again = upload_checkpoint(client, auth, flat_zip, name="again.zip")
    assert (first.status_code, again.status_code) == (201, 200)
    assert again.json()["id"] == first.json()["id"]
    assert store.list("checkpoints/") == files_before


def test_unconditional_checkpoint(
    client: TestClient, auth: dict[str, str], unconditional_checkpoint: TinyCheckpoint
) -> None:
    body = upload_checkpoint(client, auth, unconditional_checkpoint.zip_bytes).json()
    assert (body["num_class_embeds"], body["conditioning"]) == (None, "none")


# --- bad uploads -----------------------------------------------------------------------------------


def _zip_with(entries: dict[str, bytes], symlinks: dict[str, str] | None = None) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
        for name, target in (symlinks or {}).items():
            info = zipfile.ZipInfo(name)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            zf.writestr(info, target)
    return buffer.getvalue()


def _modified_checkpoint(folder: Path, tmp: Path, change: Callable[[Path], None]) -> bytes:
    copy = tmp / "modified"
    shutil.copytree(folder, copy)
    change(copy)
    return zip_folder(copy)


def _bad_config(folder: Path) -> None:
    (folder / "unet/config.json").write_text('{"_class_name": "UNet2DModel", "sample_size": ')


def _weights_for_other_config(folder: Path) -> None:
    config = json.loads((folder / "unet/config.json").read_text())
    config["block_out_channels"] = [16, 32]
    (folder / "unet/config.json").write_text(json.dumps(config))


def _nan_weights(folder: Path) -> None:
    state = load_file(folder / WEIGHTS)
    first = sorted(state)[0]
    state[first] = torch.full_like(state[first], float("nan"))
    save_file(state, folder / WEIGHTS)


def _pickle_weights(folder: Path) -> None:
    (folder / WEIGHTS).rename(folder / "unet/diffusion_pytorch_model.bin")


def _edit(file: str, **changes: object) -> Callable[[Path], None]:
    """A change setting fields of one of the checkpoint's JSON configs."""

    def change(folder: Path) -> None:
        path = folder / file
        path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))

    return change


def _unet(**changes: object) -> Callable[[Path], None]:
    return _edit("unet/config.json", **changes)


def _without_weights(**changes: object) -> Callable[[Path], None]:
    def change(folder: Path) -> None:
        _unet(**changes)(folder)
        (folder / WEIGHTS).unlink()

    return change


CONTENT_CASES = {
    "config that does not parse": (_bad_config, 422, "not valid JSON"),
    "weights not matching the config": (_weights_for_other_config, 422, "weights do not match config.json"),
    "NaN weights": (_nan_weights, 422, "NaN"),
    "pickle weights": (_pickle_weights, 422, "save_pretrained(new_folder, safe_serialization=True)"),
    "negative channels": (_unet(block_out_channels=[-8, 16]), 422, "block_out_channels is [-8, 16]"),
    "zero norm groups": (_unet(norm_num_groups=0), 422, "norm_num_groups is 0"),
    "200,000 channels": (_unet(block_out_channels=[100000, 200000]), 422, "block_out_channels is [100000, 200000]"),
    "1e10 training steps": (
        _edit("scheduler/scheduler_config.json", num_train_timesteps=1e10),
        422,
        "num_train_timesteps is 10000000000.0; it must be an integer from 1 to 100,000",
    ),
    "[1024, 2048] with small weights": (_unet(block_out_channels=[1024, 2048]), 422, "shape mismatches"),
    "[4096, 8192] with small weights": (
        _unet(block_out_channels=[4096, 8192]),
        422,
        "parameters, more than this server's limit of 1,000,000,000",
    ),
    "[4096, 8192] without weights": (_without_weights(block_out_channels=[4096, 8192]), 422, "missing weights"),
    "image size beyond the limit": (_unet(sample_size=100000), 422, "larger than this server's limit of 64 pixels"),
    "true as the image size": (_unet(sample_size=True), 422, "sample_size must be a positive integer"),
    "an image size the UNet cannot return to": (_unet(sample_size=17), 422, "that can run on 17x17 images"),
}


@pytest.mark.parametrize("case", list(CONTENT_CASES))
def test_bad_checkpoint_content_is_refused_and_nothing_is_kept(
    case: str,
    client: TestClient,
    auth: dict[str, str],
    tiny_checkpoint: TinyCheckpoint,
    store: LocalStore,
    session: Session,
    tmp_path: Path,
    no_real_model: None,
) -> None:
    change, status, message = CONTENT_CASES[case]
    response = upload_checkpoint(client, auth, _modified_checkpoint(tiny_checkpoint.folder, tmp_path, change))
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == "invalid_checkpoint"
    assert message in error["message"]
    assert store.list("checkpoints/") == []
    assert checkpoint_rows(session, auth, client) == 0


ARCHIVE_CASES = {
    "truncated zip": ("truncated", "truncated or corrupt"),
    "entry escaping with ../": ({"../evil/config.json": b"{}"}, "outside the archive folder"),
    "absolute entry": ({"/etc/config.json": b"{}"}, "absolute path"),
    "symbolic link": ("symlink", "symbolic link"),
    "too many files": ({f"f{i}.txt": b"x" for i in range(TEST_LIMITS["max_archive_files"] + 1)}, "files, more than"),
    "too many bytes": ({WEIGHTS: b"\0" * (TEST_LIMITS["max_archive_bytes"] + 1)}, "more than the limit"),
}


@pytest.mark.parametrize("case", list(ARCHIVE_CASES))
def test_bad_archive_is_refused_and_nothing_is_kept(
    case: str,
    client: TestClient,
    auth: dict[str, str],
    tiny_checkpoint: TinyCheckpoint,
    store: LocalStore,
    session: Session,
) -> None:
    spec, message = ARCHIVE_CASES[case]
    if spec == "truncated":
        data = tiny_checkpoint.zip_bytes[: len(tiny_checkpoint.zip_bytes) // 2]
    elif spec == "symlink":
        data = _zip_with({"unet/config.json": b"{}"}, symlinks={"unet/diffusion_pytorch_model.safetensors": "/etc"})
    else:
        assert isinstance(spec, dict)
        data = _zip_with(spec)
    response = upload_checkpoint(client, auth, data)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == "invalid_archive"
    assert message in response.json()["error"]["message"]
    assert store.list("checkpoints/") == []
    assert checkpoint_rows(session, auth, client) == 0


def test_checkpoints_over_the_parameter_limit_are_refused(
    make_client: Callable[..., TestClient], auth: dict[str, str], tiny_checkpoint: TinyCheckpoint
) -> None:
    client = make_client(max_checkpoint_parameters=tiny_checkpoint.num_parameters - 1)
    response = upload_checkpoint(client, auth, tiny_checkpoint.zip_bytes)
    assert response.status_code == 422, response.text
    limit = f"{tiny_checkpoint.num_parameters - 1:,}"
    assert (
        f"the UNet has {tiny_checkpoint.num_parameters:,} parameters, more than this server's limit of {limit}"
        in (response.json()["error"]["message"])
    )


def test_only_the_files_of_the_checkpoint_are_extracted_and_stored(
    client: TestClient, auth: dict[str, str], tiny_checkpoint: TinyCheckpoint, store: LocalStore, tmp_path: Path
) -> None:
    copy = tmp_path / "with-junk"
    shutil.copytree(tiny_checkpoint.folder, copy)
    (copy / "model_index.json").write_text(json.dumps({"_class_name": "DDPMPipeline"}))
    (copy / "junk.dat").write_bytes(b"\0" * (TEST_LIMITS["max_archive_bytes"] + 1))  # over the byte limit
    (copy / "unet/notes.txt").write_text("training notes")
    response = upload_checkpoint(client, auth, zip_folder(copy, "model"))
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["ignored_files"] == ["model/junk.dat", "model/unet/notes.txt"]
    assert sorted(key.removeprefix(f"checkpoints/{body['id']}/") for key in store.list("checkpoints/")) == [
        "model_index.json",
        "scheduler/scheduler_config.json",
        "unet/config.json",
        WEIGHTS,
    ]


def test_checkpoint_errors_show_no_server_paths(
    client: TestClient, auth: dict[str, str], tiny_checkpoint: TinyCheckpoint, tmp_path: Path
) -> None:
    server_folders = (tempfile.gettempdir(), str(tmp_path))
    uploads = {
        "no checkpoint files": _zip_with({"notes.txt": b"hello"}),
        "not a zip": b"plain text",
        **{case: _modified_checkpoint(tiny_checkpoint.folder, tmp_path / case, change) for case, (change, _, _) in (
            CONTENT_CASES.items()
        )},
    }  # fmt: skip
    for case, data in uploads.items():
        message = upload_checkpoint(client, auth, data).json()["error"]["message"]
        assert not any(folder in message for folder in server_folders), (case, message)


def test_oversized_upload_is_refused_from_its_content_length(
    make_client: Callable[..., TestClient], auth: dict[str, str], tiny_checkpoint: TinyCheckpoint
) -> None:
    client = make_client(max_upload_bytes=1000)
    response = upload_checkpoint(client, auth, tiny_checkpoint.zip_bytes)
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "too_large"
    assert "1,000 bytes" in response.json()["error"]["message"]
    assert "DIFFAUDIT_MAX_UPLOAD_BYTES" in response.json()["error"]["message"]


def test_oversized_upload_without_content_length_is_cut_off_while_streaming(
    make_client: Callable[..., TestClient], auth: dict[str, str], tiny_checkpoint: TinyCheckpoint
) -> None:
    client = make_client(max_upload_bytes=1000)
    boundary = "diffauditboundary"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="m.zip"\r\n'
            "Content-Type: application/zip\r\n\r\n"
        ).encode()
        + tiny_checkpoint.zip_bytes
        + f"\r\n--{boundary}--\r\n".encode()
    )

    def chunks():  # a generator body is sent chunked, without Content-Length
        for start in range(0, len(body), 4096):
            yield body[start : start + 4096]

    headers = {**auth, "Content-Type": f"multipart/form-data; boundary={boundary}"}
    response = client.post("/v1/checkpoints", headers=headers, content=chunks())
    assert response.status_code == 413, response.text
    assert "1,000 bytes" in response.json()["error"]["message"]


def test_upload_needs_exactly_one_of_file_or_path(client: TestClient, auth: dict[str, str]) -> None:
    response = client.post("/v1/checkpoints", headers=auth, data={"name": "x"})
    assert response.status_code == 400
    assert "exactly one of `file`" in response.json()["error"]["message"]


# --- server-side folders ---------------------------------------------------------------------------


def test_server_paths_are_refused_unless_configured(
    client: TestClient, auth: dict[str, str], tiny_checkpoint: TinyCheckpoint
) -> None:
    response = client.post("/v1/checkpoints", headers=auth, data={"path": str(tiny_checkpoint.folder)})
    assert response.status_code == 403
    assert "DIFFAUDIT_SERVER_PATHS" in response.json()["error"]["message"]


def test_server_path_inside_an_allowed_root_is_registered_in_place(
    make_client: Callable[..., TestClient], auth: dict[str, str], tiny_checkpoint: TinyCheckpoint
) -> None:
    client = make_client(server_paths=[tiny_checkpoint.folder.parent])
    response = client.post("/v1/checkpoints", headers=auth, data={"path": str(tiny_checkpoint.folder)})
    assert response.status_code == 201, response.text
    body = response.json()
    assert (body["source"], body["name"], body["num_parameters"]) == (
        "server_path",
        "tiny-model",
        tiny_checkpoint.num_parameters,
    )
    assert client.app.state.store.list("checkpoints/") == []  # type: ignore[attr-defined]


def test_server_path_outside_the_allowed_roots_is_refused(
    make_client: Callable[..., TestClient], auth: dict[str, str], tiny_checkpoint: TinyCheckpoint, tmp_path: Path
) -> None:
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    (allowed / "link").symlink_to(tiny_checkpoint.folder)  # resolves outside the root
    client = make_client(server_paths=[allowed])
    for path in (str(tiny_checkpoint.folder), str(allowed / "link"), str(allowed / ".." / "elsewhere")):
        response = client.post("/v1/checkpoints", headers=auth, data={"path": path})
        assert response.status_code == 403, path
        assert "outside the folders" in response.json()["error"]["message"]
        assert str(allowed.resolve()) not in response.json()["error"]["message"].replace(path, "")


def test_workers_get_a_local_folder_of_the_stored_checkpoint(
    client: TestClient, auth: dict[str, str], tiny_checkpoint: TinyCheckpoint, store: LocalStore, session: Session
) -> None:
    body = upload_checkpoint(client, auth, tiny_checkpoint.zip_bytes).json()
    row = session.get(Checkpoint, body["id"])
    assert row is not None
    folder = checkpoint_dir(store, row)
    assert folder == store.root / "checkpoints" / body["id"]
    assert validate_checkpoint_dir(folder).content_hash == body["content_hash"]


def add_checkpoint_row(session: Session, project: str, created_at: datetime) -> str:
    """A checkpoint row (no files) made at a chosen time, for listing tests."""
    row = Checkpoint(
        id=new_id("ck"),
        project_id=project,
        name="listed",
        content_hash=new_id("hash"),
        num_parameters=1,
        sample_size=16,
        in_channels=1,
        out_channels=1,
        num_class_embeds=None,
        source_path=None,
        info={},
        created_at=created_at,
    )
    session.add(row)
    session.commit()
    return row.id


def test_list_is_paginated_newest_first_then_by_id(
    client: TestClient, auth: dict[str, str], other_auth: dict[str, str], session: Session
) -> None:
    mine, theirs = project_id(client, auth), project_id(client, other_auth)
    start = datetime(2030, 1, 1, tzinfo=UTC)
    times = [start, start + timedelta(hours=1), start + timedelta(hours=1), start + timedelta(hours=1), start]
    rows = [(t, add_checkpoint_row(session, mine, t)) for t in times]
    foreign = add_checkpoint_row(session, theirs, start + timedelta(hours=2))  # newest of all, other project
    newest_first = [ck for _, ck in sorted(rows, reverse=True)]

    assert page_ids(client, "/v1/checkpoints", auth, limit=2) == newest_first
    assert page_ids(client, "/v1/checkpoints", auth, limit=200) == newest_first
    first = get_page(client, "/v1/checkpoints", auth)
    assert (first["total"], first["limit"], first["offset"]) == (5, 50, 0)
    assert [c["id"] for c in first["items"]] == newest_first
    assert [c["id"] for c in get_page(client, "/v1/checkpoints", auth, limit=3, offset=1)["items"]] == newest_first[1:4]
    beyond = get_page(client, "/v1/checkpoints", auth, offset=99)
    assert (beyond["items"], beyond["total"]) == ([], 5)
    assert page_ids(client, "/v1/checkpoints", other_auth, limit=1) == [foreign]


@pytest.mark.parametrize("params", BAD_PAGE_PARAMS)
def test_list_refuses_bad_page_parameters(client: TestClient, auth: dict[str, str], params: dict[str, object]) -> None:
    assert_bad_page_refused(client.get("/v1/checkpoints", headers=auth, params=params), params)
