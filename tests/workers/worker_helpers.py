"""Helpers of the worker tests (and bench/recovery.py): worker processes and a Redis server of their own started
and killed, jobs polled."""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.settings import Settings
from workers.cli import free_port


def settings_env(settings: Settings) -> dict[str, str]:
    """The environment that gives a subprocess the same settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIFFAUDIT_")}
    for name, value in settings.model_dump(mode="json").items():
        if value is not None and not isinstance(value, list):
            env[f"DIFFAUDIT_{name.upper()}"] = str(value)
    return env


class Workers:
    """Starts Celery worker processes (each its own process group) and kills them."""

    def __init__(self, settings: Settings, log_dir: Path) -> None:
        self.env = settings_env(settings)
        self.log_dir = log_dir
        self.processes: list[subprocess.Popen[bytes]] = []

    def start(self, fault: tuple[str, str, int] | None = None) -> subprocess.Popen[bytes]:
        """Start a worker; `fault` = (stage, error, times) makes that stage raise (tests/faults.py)."""
        n = len(self.processes)
        log = (self.log_dir / f"worker-{n}.log").open("wb")
        celery = [
            "celery", "-A", "workers.celery_app", "worker", "--queues", "gpu,cpu",
            "--concurrency", "1", "--hostname", f"test{n}-{secrets.token_hex(3)}@%h",
            "--without-gossip", "--without-mingle", "--loglevel", "INFO",
        ]  # fmt: skip
        faults = [] if fault is None else ["tests.faults", *map(str, fault)]
        command = [sys.executable, "-m", *faults, *celery]
        process = subprocess.Popen(command, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.processes.append(process)
        return process

    def kill(self, process: subprocess.Popen[bytes]) -> None:
        """kill -9 the worker and its pool children."""
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)

    def stop_all(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
                try:
                    process.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGKILL)

    def wait_ready(self, process: subprocess.Popen[bytes], timeout: float = 120) -> None:
        """Until the worker logs that it consumes."""
        log = self.log_dir / f"worker-{self.processes.index(process)}.log"
        deadline = time.monotonic() + timeout
        while " ready." not in log.read_text(errors="replace"):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the worker did not start; see {log}")
            time.sleep(0.2)

    def logs(self, tail: int = 4000) -> str:
        """The last `tail` characters of every worker's log."""
        return "\n".join(p.read_text(errors="replace")[-tail:] for p in sorted(self.log_dir.glob("worker-*.log")))


def wait_for(
    api: httpx.Client,
    evaluation_id: str,
    done: Callable[[dict[str, Any]], bool],
    workers: Workers,
    timeout: float = 300,
) -> dict[str, Any]:
    """Poll the job until `done(job)`; fail with the worker logs on timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = api.get(f"/v1/evaluations/{evaluation_id}").json()
        if done(job):
            return job
        time.sleep(0.2)
    pytest.fail(f"timed out; last state {job}\n--- worker logs ---\n{workers.logs()}")


class RedisServer:
    """A redis-server of its own on a free port (never the shared 6379), persisted like docker-compose's (AOF),
    that a test can shut down and start again on the same port and data folder."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        command = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.folder)]
        command += ["--appendonly", "yes", "--save", ""]
        log = (self.folder / "redis.log").open("ab")
        self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 30
        while subprocess.run(["redis-cli", "-p", str(self.port), "ping"], capture_output=True).stdout != b"PONG\n":
            if time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not start; see {self.folder / 'redis.log'}")
            time.sleep(0.1)

    def shutdown_nosave(self) -> None:
        """`redis-cli shutdown nosave`: the server stops at once."""
        assert self.process is not None
        subprocess.run(["redis-cli", "-p", str(self.port), "shutdown", "nosave"], capture_output=True)
        self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=30)


class TcpProxy:
    """Forwards 127.0.0.1:port to (host, target_port); `cut()` drops every connection and refuses new ones, as a
    database restart would, until `restore()`. Lets a test make the shared PostgreSQL unreachable for its own
    workers only."""

    def __init__(self, host: str, target_port: int) -> None:
        self.target = (host, target_port)
        self.port = free_port()
        self._sockets: list[socket.socket] = []
        self._listener: socket.socket | None = None

    def restore(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def cut(self) -> None:
        if self._listener is not None:
            with contextlib.suppress(OSError):
                self._listener.shutdown(socket.SHUT_RDWR)  # wakes the accept() blocked on it (close alone does not)
            self._listener.close()
        for connection in self._sockets:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)
            connection.close()
        self._sockets.clear()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:  # cut
                return
            upstream = socket.create_connection(self.target)
            self._sockets += [client, upstream]
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)
