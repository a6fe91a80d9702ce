"""docker-compose.yml and docker/ agree with the code (no Docker engine runs here)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

from app.settings import Settings
from diffaudit.cli import build_parser

ROOT = Path(__file__).resolve().parent.parent
COMPOSE: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]


def diffaudit_commands(command: list[str]) -> list[list[str]]:
    """The `diffaudit ...` invocations in a compose command (plain, or inside `sh -c`)."""
    if command[:2] == ["sh", "-c"]:
        return [shlex.split(part) for part in command[2].split("&&")]
    return [command]


def test_the_services_of_a_deployment() -> None:
    assert set(SERVICES) == {"postgres", "redis", "api", "worker", "flower"}


@pytest.mark.parametrize("service", ["api", "worker", "flower"])
def test_environment_names_settings_fields(service: str) -> None:
    env = SERVICES[service]["environment"]
    fields = {f"DIFFAUDIT_{name.upper()}" for name in Settings.model_fields}
    names = {name for name in env if name.startswith("DIFFAUDIT_")}
    assert names, "the service sets no DIFFAUDIT_ variable"
    assert names <= fields, f"unknown settings: {sorted(names - fields)}"
    settings = Settings(**{name.removeprefix("DIFFAUDIT_").lower(): value for name, value in env.items()})
    assert settings.database_url.startswith("postgresql+psycopg://")
    assert settings.broker_url.startswith("redis://")


@pytest.mark.parametrize("service", ["api", "worker"])
def test_commands_parse_with_the_cli(service: str) -> None:
    for command in diffaudit_commands(SERVICES[service]["command"]):
        assert command[0] == "diffaudit"
        args = build_parser().parse_args(command[1:])
        assert callable(args.handler)


def test_worker_reserves_a_gpu_and_consumes_both_queues() -> None:
    worker = SERVICES["worker"]
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["capabilities"] == ["gpu"]
    args = build_parser().parse_args(worker["command"][1:])
    assert set(args.queues.split(",")) == {"gpu", "cpu"}
    assert args.concurrency == 1
    assert (ROOT / "docker/worker.Dockerfile").read_text().startswith("# The GPU worker image")
    assert re.search(r"^FROM nvidia/cuda:", (ROOT / "docker/worker.Dockerfile").read_text(), re.M)


def test_the_api_and_the_workers_see_one_weights_folder_read_only() -> None:
    """The API checks a spec's weights names in the folder the workers read them from."""
    folder = COMPOSE["x-diffaudit-env"]["DIFFAUDIT_WEIGHTS_DIR"]
    for service in ("api", "worker"):
        assert SERVICES[service]["environment"]["DIFFAUDIT_WEIGHTS_DIR"] == folder
        assert f"./weights:{folder}:ro" in SERVICES[service]["volumes"]


def test_flower_watches_the_workers_celery_app() -> None:
    command = SERVICES["flower"]["command"]
    app_module = command[command.index("-A") + 1]
    assert (ROOT / (app_module.replace(".", "/") + ".py")).is_file()


@pytest.mark.parametrize("dockerfile", ["docker/api.Dockerfile", "docker/worker.Dockerfile"])
def test_dockerfiles_copy_what_exists(dockerfile: str) -> None:
    for line in (ROOT / dockerfile).read_text().splitlines():
        if line.startswith("COPY "):
            for source in line.split()[1:-1]:
                assert (ROOT / source).exists(), f"{dockerfile} copies missing {source}"


def test_a_machine_with_eight_gpus_gets_one_worker_per_gpu() -> None:
    """scripts/compose_gpus.py: the worker service once per GPU, each reserving its own device id."""
    from scripts.compose_gpus import compose_for_gpus

    services = compose_for_gpus(COMPOSE, 8)["services"]
    workers = {name: service for name, service in services.items() if name.startswith("worker")}
    assert sorted(workers) == [f"worker-{i}" for i in range(8)]
    reserved = [w["deploy"]["resources"]["reservations"]["devices"] for w in workers.values()]
    assert [devices[0]["device_ids"] for devices in reserved] == [[str(i)] for i in range(8)]
    assert all("count" not in devices[0] and devices[0]["capabilities"] == ["gpu"] for devices in reserved)
    for service in workers.values():
        assert service["command"] == SERVICES["worker"]["command"]
        assert service["environment"] == SERVICES["worker"]["environment"]
    assert set(services) - set(workers) == set(SERVICES) - {"worker"}
