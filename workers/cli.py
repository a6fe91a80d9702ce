"""Service commands of `diffaudit`: serve, worker, token, db, demo.

Registered through the `diffaudit.commands` entry point so that the core CLI never imports
the service packages.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from app.settings import get_settings

    embedded = args.embedded or get_settings().embedded_worker
    if embedded and args.processes != 1:
        # Each process would have its own in-memory broker and resume the same unfinished jobs.
        raise SystemExit("the embedded deployment runs in one process; use a Redis broker and workers to scale out")
    target = "workers.embedded:create_app" if embedded else "app.main:create_app"
    uvicorn.run(target, factory=True, host=args.host, port=args.port, workers=args.processes, log_level="info")
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    """A Celery worker (prefork, one process by default: one per GPU, prefetch 1)."""
    command = [
        sys.executable, "-m", "celery", "-A", "workers.celery_app", "worker",
        "--queues", args.queues, "--concurrency", str(args.concurrency), "--loglevel", args.loglevel,
        "--hostname", args.hostname,
    ]  # fmt: skip
    os.execv(sys.executable, command)
    return 0  # not reached


def cmd_token_create(args: argparse.Namespace) -> int:
    from app.tokens.service import create_token
    from workers.db import session_scope

    with session_scope() as session:
        print(create_token(session, args.project))
    return 0


def cmd_db_upgrade(args: argparse.Namespace) -> int:
    from app.db import upgrade_database
    from app.settings import get_settings

    upgrade_database(get_settings().database_url)
    print("database at head")
    return 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until_healthy(url: str, server: subprocess.Popen[bytes], log: Path, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"the server exited with code {server.returncode}; see {log}")
        try:
            if httpx.get(f"{url}/healthz", timeout=2).is_success:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise SystemExit(f"the server did not become healthy within {timeout:.0f} s; see {log}")


# What the demo asks for: the diversity verdict with early rejection, class balance, diverse samples and
# memorization (volume growth of 512 training images). Guided sampling trains two networks for minutes on a
# CPU, so the demo leaves it out; add "guided" to the stages to see it.
DEMO_SPEC: dict[str, Any] = {
    "stages": ["sample", "features", "irs", "balance", "novelty", "memorization"],
    "sample": {"n": 256, "steps": 50, "batch_size": 64},
    "memorization": {"max_images": 512},
}


def cmd_demo(args: argparse.Namespace) -> int:
    """Train (or reuse) the demo model, serve the embedded deployment, evaluate the model over HTTP."""
    from app.db import upgrade_database
    from app.settings import get_settings
    from app.tokens.service import create_token
    from diffaudit.cli import print_outcome
    from diffaudit.client import Client
    from diffaudit.demo import ensure_demo_model
    from workers.db import session_scope

    settings = get_settings()
    upgrade_database(settings.database_url)
    model = ensure_demo_model("digits", Path(settings.demo_model_dir), progress=True)
    with session_scope() as session:
        token = create_token(session, "demo")

    port = args.port or free_port()
    url = f"http://127.0.0.1:{port}"
    log = Path(settings.artifact_dir).parent / "demo-server.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    print(f"starting the API with an in-process worker on {url} (log: {log})", file=sys.stderr)
    with log.open("wb") as log_file:
        server = subprocess.Popen(
            [sys.executable, "-m", "diffaudit.cli", "serve", "--embedded", "--port", str(port)],
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
        try:
            wait_until_healthy(url, server, log)
            client = Client(url, token)
            checkpoint = client.push_checkpoint(model, name="demo-digits")
            job = client.evaluate(checkpoint["id"], "digits", DEMO_SPEC)
            print(f"evaluation {job['id']} submitted; following its progress", file=sys.stderr)
            job = client.wait(job["id"])
            code = print_outcome(client, job)
            folder = Path(settings.artifact_dir).resolve() / "evaluations" / job["id"]
            print("\nwhere to look:")
            print(f"  the report (open it in a browser): {folder / 'report.html'}")
            print(f"  artifacts (images, arrays, JSON): {folder}")
            for name in client.artifacts(job["id"]):
                if name.endswith(".png"):
                    print(f"  picture: {folder / name}")
            print(f"  results over HTTP: {url}/v1/evaluations/{job['id']}/results (while a server runs)")
            return code
        finally:
            server.terminate()
            server.wait(timeout=30)


def register(commands: Any) -> None:
    """Add the service commands to the `diffaudit` parser."""
    p = commands.add_parser("serve", help="run the API (uvicorn)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--processes", type=int, default=1)
    p.add_argument("--embedded", action="store_true", help="also run a worker in this process (embedded mode)")
    p.set_defaults(handler=cmd_serve)

    p = commands.add_parser("worker", help="run a Celery worker")
    p.add_argument("--queues", default="gpu,cpu", help="comma-separated: gpu, cpu")
    p.add_argument("--concurrency", type=int, default=1)
    p.add_argument("--loglevel", default="INFO")
    p.add_argument("--hostname", default="diffaudit@%h")
    p.set_defaults(handler=cmd_worker)

    token = commands.add_parser("token", help="API tokens").add_subparsers(dest="action", required=True)
    p = token.add_parser("create", help="create a token for a project and print it")
    p.add_argument("--project", required=True)
    p.set_defaults(handler=cmd_token_create)

    db = commands.add_parser("db", help="database schema").add_subparsers(dest="action", required=True)
    p = db.add_parser("upgrade", help="alembic upgrade head")
    p.set_defaults(handler=cmd_db_upgrade)

    p = commands.add_parser("demo", help="train the demo model, serve the embedded deployment, evaluate it")
    p.add_argument("--port", type=int, default=0)
    p.set_defaults(handler=cmd_demo)
