"""Settings from the environment, the artifact store they name, and sending a task through a real broker."""

from __future__ import annotations

from pathlib import Path

import pytest
from kombu import Connection

from app.queue import RUN_EVALUATION, celery_client, celery_config, configure_client, enqueue
from app.settings import Settings, make_store
from diffaudit.store import LocalStore


def test_settings_from_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DIFFAUDIT_DATABASE_URL", "postgresql://u@db:5432/diffaudit")
    monkeypatch.setenv("DIFFAUDIT_SERVER_PATHS", "/models, /data/checkpoints")
    monkeypatch.setenv("DIFFAUDIT_MAX_UPLOAD_BYTES", "1000")
    monkeypatch.setenv("DIFFAUDIT_ARTIFACT_DIR", str(tmp_path / "a"))
    settings = Settings()
    assert settings.database_url == "postgresql+psycopg://u@db:5432/diffaudit"
    assert settings.server_paths == [Path("/models"), Path("/data/checkpoints")]
    assert settings.max_upload_bytes == 1000
    assert isinstance(make_store(settings), LocalStore)
    monkeypatch.setenv("DIFFAUDIT_SERVER_PATHS", '["/x"]')
    assert Settings().server_paths == [Path("/x")]
    with pytest.raises(ValueError, match="DIFFAUDIT_S3_BUCKET"):
        make_store(Settings(artifact_store="s3"))


def test_celery_config_redelivers_lost_tasks() -> None:
    config = celery_config(Settings(broker_url="redis://r:6379/0", worker_prefetch=1, broker_visibility_timeout=60))
    assert (config["task_acks_late"], config["task_reject_on_worker_lost"]) == (True, True)
    assert config["worker_prefetch_multiplier"] == 1
    assert config["broker_transport_options"] == {"visibility_timeout": 60}
    assert config["task_routes"][RUN_EVALUATION] == {"queue": "cpu"}


def test_enqueue_sends_the_task_by_name_to_its_queue() -> None:
    configure_client(Settings(broker_url="memory://"))
    enqueue(RUN_EVALUATION, "ev_123")
    enqueue("stages.sample", "ev_123", "sample", queue="gpu")
    with Connection("memory://") as connection:
        cpu = connection.SimpleQueue("cpu")
        gpu = connection.SimpleQueue("gpu")
        sent = [cpu.get(timeout=2), gpu.get(timeout=2)]
        for message in sent:
            message.ack()
        cpu.close()
        gpu.close()
    assert [(m.headers["task"], m.headers["argsrepr"]) for m in sent] == [
        (RUN_EVALUATION, "['ev_123']"),
        ("stages.sample", "['ev_123', 'sample']"),
    ]
    assert celery_client().conf.broker_url == "memory://"


def test_reconfiguring_the_client_moves_tasks_to_the_new_broker() -> None:
    """A client that already sent over one broker must send over the next one it is configured with."""
    import redis

    configure_client(Settings(broker_url="memory://"))
    enqueue(RUN_EVALUATION, "ev_first")
    url = "redis://127.0.0.1:6379/14"
    store = redis.Redis.from_url(url)
    store.delete("cpu")
    configure_client(Settings(broker_url=url))
    enqueue(RUN_EVALUATION, "ev_second")
    assert store.llen("cpu") == 1
    store.delete("cpu")
