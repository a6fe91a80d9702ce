"""A docker-compose file for a machine with N GPUs: docker-compose.yml with its one `worker` replaced by N workers,
`worker-0` ... `worker-{N-1}`, each reserving one GPU by its device id.

`docker compose up --scale worker=N` does not do this: every replica of a service reserving `count: 1` is given
the same GPU. Usage (8 GPUs):

    python scripts/compose_gpus.py 8 > docker-compose.gpus.yml
    docker compose -f docker-compose.gpus.yml up
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path
from typing import Any

import yaml

COMPOSE_FILE = Path(__file__).resolve().parent.parent / "docker-compose.yml"


def gpu_worker(worker: dict[str, Any], device: int) -> dict[str, Any]:
    """The compose `worker` service bound to GPU `device` (the device reservation names it; nothing else changes)."""
    service = copy.deepcopy(worker)
    service["deploy"]["resources"]["reservations"]["devices"] = [
        {"driver": "nvidia", "device_ids": [str(device)], "capabilities": ["gpu"]}
    ]
    return service


def compose_for_gpus(compose: dict[str, Any], n_gpus: int) -> dict[str, Any]:
    """`compose` with its `worker` service replaced by one worker per GPU."""
    if n_gpus < 1:
        raise ValueError("the number of GPUs must be at least 1")
    result = copy.deepcopy(compose)
    worker = result["services"].pop("worker")
    for device in range(n_gpus):
        result["services"][f"worker-{device}"] = gpu_worker(worker, device)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("n_gpus", type=int, help="GPUs on the machine (one worker each)")
    args = parser.parse_args(argv)
    if args.n_gpus < 1:
        parser.error("the number of GPUs must be at least 1")
    compose = yaml.safe_load(COMPOSE_FILE.read_text())
    yaml.safe_dump(compose_for_gpus(compose, args.n_gpus), sys.stdout, sort_keys=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
