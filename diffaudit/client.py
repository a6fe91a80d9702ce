"""A small HTTP client for the diffaudit REST API (used by the CLI, the demo and the CI gate)."""

from __future__ import annotations

import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any, TextIO

import httpx
from tqdm import tqdm

TERMINAL = ("succeeded", "rejected", "failed", "cancelled")


class ApiError(RuntimeError):
    """The server answered with an error; the message is the server's."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code


def zip_folder(folder: Path, out: Path) -> Path:
    """Zip a folder's files with paths relative to it (symlinks and dotfiles left out)."""
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(folder.rglob("*")):
            if path.is_file() and not path.is_symlink() and not path.name.startswith("."):
                zf.write(path, path.relative_to(folder).as_posix())
    return out


class Client:
    def __init__(self, server: str, token: str, timeout: float = 300.0) -> None:
        self.http = httpx.Client(
            base_url=server.rstrip("/"), headers={"Authorization": f"Bearer {token}"}, timeout=timeout
        )

    def _check(self, response: httpx.Response) -> Any:
        if response.is_success:
            return response.json()
        try:
            error = response.json()["error"]
            raise ApiError(response.status_code, error.get("code", "error"), error.get("message", response.text))
        except (ValueError, KeyError, TypeError):
            raise ApiError(response.status_code, "error", response.text) from None

    def push_checkpoint(
        self, path: Path, name: str | None = None, run: str | None = None, step: int | None = None
    ) -> dict[str, Any]:
        """Upload a diffusers folder (zipped on the fly) or a zip of one; with `run` and `step`, as that step of a
        training run."""
        with tempfile.TemporaryDirectory() as tmp:
            archive = path if path.is_file() else zip_folder(path, Path(tmp) / "checkpoint.zip")
            with archive.open("rb") as f:
                data = {"name": name or path.stem}
                if run is not None:
                    data["run"] = run
                if step is not None:
                    data["step"] = str(step)
                return self._check(self.http.post("/v1/checkpoints", files={"file": (archive.name, f)}, data=data))

    def push_dataset(self, path: Path, name: str | None = None, heldout_fraction: float = 0.0) -> dict[str, Any]:
        with path.open("rb") as f:
            data = {"name": name or path.stem, "heldout_fraction": str(heldout_fraction)}
            return self._check(self.http.post("/v1/datasets", files={"file": (path.name, f)}, data=data))

    def evaluate(
        self, checkpoint_id: str, dataset_id: str, spec: dict[str, Any], idempotency_key: str | None = None
    ) -> dict[str, Any]:
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        body = {"checkpoint_id": checkpoint_id, "dataset_id": dataset_id, "spec": spec}
        return self._check(self.http.post("/v1/evaluations", json=body, headers=headers))

    def compare(self, baseline_evaluation_id: str, candidate_evaluation_id: str) -> dict[str, Any]:
        """Paired comparison of two finished jobs of the same spec (POST /v1/comparisons)."""
        body = {"baseline_evaluation_id": baseline_evaluation_id, "candidate_evaluation_id": candidate_evaluation_id}
        return self._check(self.http.post("/v1/comparisons", json=body))

    def status(self, evaluation_id: str) -> dict[str, Any]:
        return self._check(self.http.get(f"/v1/evaluations/{evaluation_id}"))

    def results(self, evaluation_id: str) -> dict[str, Any]:
        return self._check(self.http.get(f"/v1/evaluations/{evaluation_id}/results"))

    def artifacts(self, evaluation_id: str) -> list[str]:
        listing = self._check(self.http.get(f"/v1/evaluations/{evaluation_id}/artifacts"))
        return [item["path"] for item in listing["items"]]

    def wait(self, evaluation_id: str, poll: float = 0.5, out: TextIO = sys.stderr) -> dict[str, Any]:
        """Follow a job with one progress bar per stage until it ends; return its final status."""
        bars: dict[str, tqdm] = {}
        try:
            while True:
                job = self.status(evaluation_id)
                for stage in job["stages"]:
                    total = stage.get("total") or 0
                    if stage["status"] == "pending" or not total:
                        continue
                    bar = bars.get(stage["name"])
                    if bar is None:
                        bar = bars[stage["name"]] = tqdm(total=total, desc=stage["name"], file=out, leave=True)
                    bar.total = total
                    bar.n = stage["done"]
                    bar.refresh()
                if job["status"] in TERMINAL:
                    return job
                time.sleep(poll)
        finally:
            for bar in bars.values():
                bar.close()
