"""Helpers shared by the API tests (constants, tiny checkpoints, zips)."""

from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from diffusers import DDPMScheduler, UNet2DModel
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from app.models import Evaluation

TEST_LIMITS = {
    "max_upload_bytes": 4 * 2**20,
    "max_archive_files": 40,
    "max_archive_bytes": 8 * 2**20,
    "max_image_side": 64,
}


@dataclass
class EnqueueRecorder:
    """Stands in for the broker; records each send and the job's status seen from a new session."""

    sessions: sessionmaker[Session]
    calls: list[tuple[str, tuple[Any, ...]]] = field(default_factory=list)
    seen_status: list[str | None] = field(default_factory=list)
    fail_with: Exception | None = None

    def __call__(self, task_name: str, *args: Any, queue: str | None = None) -> None:
        with self.sessions() as session:
            self.seen_status.append(session.scalar(select(Evaluation.status).where(Evaluation.id == args[0])))
        if self.fail_with is not None:
            raise self.fail_with
        self.calls.append((task_name, args))


# --- checkpoints --------------------------------------------------------------------------

NUM_CLASSES = 10


def tiny_unet(num_class_embeds: int | None = NUM_CLASSES) -> Any:
    torch.manual_seed(0)
    return UNet2DModel(
        sample_size=16,
        in_channels=1,
        out_channels=1,
        layers_per_block=1,
        block_out_channels=(8, 16),
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
        norm_num_groups=4,
        num_class_embeds=num_class_embeds,
    )


def num_parameters(model: Any) -> int:
    return sum(p.numel() for p in model.parameters())


def save_pipeline_folder(folder: Path, unet: Any) -> Path:
    """A diffusers pipeline-layout folder: unet/ (config + safetensors) and scheduler/."""
    unet.save_pretrained(folder / "unet", safe_serialization=True)
    scheduler: Any = DDPMScheduler(num_train_timesteps=100)
    scheduler.save_pretrained(folder / "scheduler")
    return folder


def zip_folder(folder: Path, arcroot: str | None = None) -> bytes:
    """The folder's files as zip bytes, under `arcroot/` when given."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            relative = path.relative_to(folder).as_posix()
            zf.write(path, f"{arcroot}/{relative}" if arcroot else relative)
    return buffer.getvalue()


@dataclass(frozen=True)
class TinyCheckpoint:
    folder: Path
    zip_bytes: bytes
    num_parameters: int


def upload_checkpoint(client: TestClient, headers: dict[str, str], data: bytes, name: str = "model.zip") -> Any:
    return client.post("/v1/checkpoints", headers=headers, files={"file": (name, data, "application/zip")})


# --- list endpoints -----------------------------------------------------------------------

BAD_PAGE_PARAMS = [{"limit": 0}, {"limit": 201}, {"offset": -1}, {"limit": "many"}]


def assert_bad_page_refused(response: Any, params: dict[str, object]) -> None:
    """A 422 in the project's error shape whose message names the query parameter to fix."""
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    (name,) = params
    assert error["code"] == "validation_error"
    assert f"query.{name}" in error["message"], error["message"]


def project_id(client: TestClient, headers: dict[str, str]) -> str:
    return str(client.get("/v1/tokens/current", headers=headers).json()["project_id"])


def get_page(client: TestClient, path: str, headers: dict[str, str], **params: Any) -> dict[str, Any]:
    response = client.get(path, headers=headers, params=params)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    assert set(body) == {"items", "total", "limit", "offset"}
    return body


def page_ids(client: TestClient, path: str, headers: dict[str, str], limit: int) -> list[str]:
    """The ids of every item, fetched `limit` at a time; each page reports the same total."""
    ids: list[str] = []
    totals: set[int] = set()
    while True:
        page = get_page(client, path, headers, limit=limit, offset=len(ids))
        assert (page["limit"], page["offset"]) == (limit, len(ids))
        assert len(page["items"]) <= limit
        totals.add(page["total"])
        if not page["items"]:
            break
        ids += [item["id"] for item in page["items"]]
    assert totals == {len(ids)}
    return ids


HUGE_OFFSETS = [2**31, 2**63 - 1, 2**63, 10**30]
LIST_PATHS = ["/v1/evaluations", "/v1/checkpoints", "/v1/datasets", "/v1/runs"]


def assert_offsets_are_bounded(client: TestClient, headers: dict[str, str]) -> None:
    """Every list answers the largest allowed offset with an empty page, and a larger one with a 422 (not a 500)."""
    for path in LIST_PATHS:
        assert get_page(client, path, headers, offset=2**31 - 1)["items"] == []
        for offset in HUGE_OFFSETS:
            assert_bad_page_refused(client.get(path, headers=headers, params={"offset": offset}), {"offset": offset})
