"""API polling load: 100 clients each polling GET /v1/evaluations/{id} once a second.

An open-loop load (requests are sent on a fixed schedule, whatever the latency) from a second
process against one API process on PostgreSQL. Prints p50/p99 latency and errors (target:
p99 <= 50 ms, 0 errors), then the saturation throughput of the same API process (closed loop,
as many requests as it answers).

    .venv/bin/python bench/api_poll.py [--clients 100] [--seconds 30]

Needs PostgreSQL on 127.0.0.1:5432 (a throwaway database is created and dropped).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"


def tiny_checkpoint(folder: Path) -> Path:
    from diffusers import DDPMScheduler, UNet2DModel

    unet: Any = UNet2DModel(  # diffusers' models are opaque to mypy
        sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16), norm_num_groups=4,
        down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
        layers_per_block=1,
    )  # fmt: skip
    unet.save_pretrained(folder / "unet", safe_serialization=True)
    scheduler: Any = DDPMScheduler(num_train_timesteps=100)
    scheduler.save_pretrained(folder / "scheduler")
    return folder


async def open_loop(url: str, token: str, path: str, clients: int, seconds: float) -> dict[str, float]:
    """Each client sends one request per second on its own fixed schedule (staggered start)."""
    latencies: list[float] = []
    errors = 0
    headers = {"Authorization": f"Bearer {token}"}
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, headers=headers, limits=limits, timeout=10) as http:
        start = time.perf_counter() + 0.5

        async def client(i: int) -> None:
            nonlocal errors
            for tick in range(int(seconds)):
                due = start + tick + i / clients
                await asyncio.sleep(max(0.0, due - time.perf_counter()))
                sent = time.perf_counter()
                try:
                    response = await http.get(path)
                    if response.status_code != 200:
                        errors += 1
                except httpx.HTTPError:
                    errors += 1
                # latency from the scheduled time: a late send counts against the server (open loop)
                latencies.append(time.perf_counter() - min(sent, due))

        await asyncio.gather(*(client(i) for i in range(clients)))
    latencies.sort()
    n = len(latencies)
    return {
        "requests": n,
        "errors": errors,
        "p50_ms": 1000 * latencies[n // 2],
        "p99_ms": 1000 * latencies[min(n - 1, int(0.99 * n))],
        "max_ms": 1000 * latencies[-1],
    }


async def saturation(url: str, token: str, path: str, concurrency: int, seconds: float) -> float:
    """Closed loop: `concurrency` clients send back-to-back requests; requests answered per second."""
    done = 0
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=10) as http:
        end = time.perf_counter() + seconds

        async def client() -> None:
            nonlocal done
            while time.perf_counter() < end:
                if (await http.get(path)).status_code == 200:
                    done += 1

        await asyncio.gather(*(client() for _ in range(concurrency)))
    return done / seconds


def load_process(args: argparse.Namespace) -> None:
    """The second process: runs the load and prints one JSON line."""
    result = asyncio.run(open_loop(args.url, args.token, args.path, args.clients, args.seconds))
    result["saturation_rps"] = asyncio.run(saturation(args.url, args.token, args.path, 32, 10.0))
    print(json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--load", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--url")
    parser.add_argument("--token")
    parser.add_argument("--path")
    args = parser.parse_args()
    if args.load:
        load_process(args)
        return

    from sqlalchemy import create_engine, text

    name = f"diffaudit_bench_{uuid.uuid4().hex[:8]}"
    admin = create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    with tempfile.TemporaryDirectory() as tmp:
        env = {
            **os.environ,
            "DIFFAUDIT_DATABASE_URL": f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}",
            "DIFFAUDIT_BROKER_URL": "redis://127.0.0.1:6379/15",
            "DIFFAUDIT_ARTIFACT_DIR": f"{tmp}/artifacts",
        }
        diffaudit = [sys.executable, "-m", "diffaudit.cli"]
        subprocess.run([*diffaudit, "db", "upgrade"], env=env, check=True, cwd=ROOT, capture_output=True)
        token = subprocess.run(
            [*diffaudit, "token", "create", "--project", "bench"], env=env, check=True, cwd=ROOT,
            capture_output=True, text=True,
        ).stdout.strip()  # fmt: skip
        port = 18765
        server = subprocess.Popen(
            [*diffaudit, "serve", "--port", str(port)], env=env, cwd=ROOT,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        url = f"http://127.0.0.1:{port}"
        try:
            for _ in range(100):
                try:
                    if httpx.get(f"{url}/healthz").is_success:
                        break
                except httpx.HTTPError:
                    time.sleep(0.2)
            from diffaudit.client import Client

            client = Client(url, token)
            checkpoint = client.push_checkpoint(tiny_checkpoint(Path(tmp) / "ck"))
            job = client.evaluate(checkpoint["id"], "digits", {"sample": {"n": 8}})
            path = f"/v1/evaluations/{job['id']}"
            load = subprocess.run(
                [sys.executable, __file__, "--load", "--url", url, "--token", token, "--path", path,
                 "--clients", str(args.clients), "--seconds", str(args.seconds)],
                check=True, capture_output=True, text=True,
            )  # fmt: skip
            result = json.loads(load.stdout.strip().splitlines()[-1])
        finally:
            server.terminate()
            server.wait(timeout=30)
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    print(f"open loop: {args.clients} clients x 1 request/s for {args.seconds:.0f} s -> {result['requests']} requests")
    print(f"  errors {result['errors']}  p50 {result['p50_ms']:.1f} ms  p99 {result['p99_ms']:.1f} ms  "
          f"max {result['max_ms']:.1f} ms   (target p99 <= 50 ms, 0 errors)")  # fmt: skip
    print(f"saturation throughput of one API process: {result['saturation_rps']:.0f} requests/s")


if __name__ == "__main__":
    main()
