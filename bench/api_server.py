"""A real API process for the benchmarks: a temporary SQLite database, local artifacts, a token; its peak memory."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def peak_rss_mb(pid: int) -> float:
    """The process's peak resident set size (VmHWM), in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM")


@dataclass(frozen=True)
class ApiServer:
    url: str
    token: str
    pid: int


@contextmanager
def api_server(tmp: Path, threads: int = 1) -> Iterator[ApiServer]:
    """`diffaudit serve` on a free port over `tmp`'s database and artifacts, healthy, with a fresh project's token."""
    from workers.cli import free_port, wait_until_healthy

    env = {k: v for k, v in os.environ.items() if not k.startswith("DIFFAUDIT_")}
    env.update(
        DIFFAUDIT_DATABASE_URL=f"sqlite:///{tmp}/bench.db",
        DIFFAUDIT_ARTIFACT_DIR=str(tmp / "artifacts"),
        DIFFAUDIT_TORCH_THREADS=str(threads),
    )
    cli = [sys.executable, "-m", "diffaudit.cli"]
    subprocess.run([*cli, "db", "upgrade"], env=env, cwd=ROOT, check=True, capture_output=True)
    token = subprocess.run(
        [*cli, "token", "create", "--project", "bench"], env=env, cwd=ROOT, check=True, capture_output=True, text=True
    ).stdout.strip()
    port = free_port()
    log = tmp / "server.log"
    with log.open("wb") as out:
        server = subprocess.Popen(
            [*cli, "serve", "--port", str(port)], env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT
        )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until_healthy(url, server, log)
        yield ApiServer(url, token, server.pid)
    finally:
        server.terminate()
        server.wait(timeout=30)
