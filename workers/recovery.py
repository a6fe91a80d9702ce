"""Recovery: every worker looks for running jobs whose heartbeat is stale (their worker died) and sends them again.

A timer thread in each worker's main process (started when the worker is ready) runs `evaluations.recover`
every DIFFAUDIT_RECOVERY_INTERVAL seconds, in-process: sent through the broker it would wait behind the long
stage tasks it is meant to rescue. Every worker runs it, so recovery has no single process to keep alive; the
take-over is a compare-and-set on the job's lease, so two workers never send one job twice. The job resumes
after its last finished stage (and inside it, after its last stored batch). The embedded deployment has one
process: when it dies the jobs die with it, and its start resumes them (workers/embedded.py).
"""

from __future__ import annotations

import logging
import os
import threading
from datetime import timedelta
from typing import Any

from celery.signals import worker_process_init, worker_ready, worker_shutdown

from app.evaluations import service
from app.models import utcnow
from app.queue import configure_client
from app.settings import get_settings
from workers.celery_app import celery_app
from workers.db import discard_inherited_connections, session_scope
from workers.tasks import send_next_stage

log = logging.getLogger(__name__)


@celery_app.task(name="evaluations.recover")
def recover_stale_jobs() -> list[str]:
    """Take over every running job whose heartbeat is older than DIFFAUDIT_HEARTBEAT_TIMEOUT and send it again."""
    stale_before = utcnow() - timedelta(seconds=get_settings().heartbeat_timeout)
    with session_scope() as session:
        taken = service.take_over_stale(session, stale_before)
    for evaluation_id, lease in taken:
        log.warning("evaluation %s: no heartbeat since before %s; sending it again", evaluation_id, stale_before)
        send_next_stage(evaluation_id, lease)
    return [evaluation_id for evaluation_id, _ in taken]


class RecoveryTimer:
    """Runs recover_stale_jobs every `interval` seconds in a daemon thread until stopped."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="diffaudit-recovery", daemon=True)

    def _run(self) -> None:
        while not self._stopped.wait(self.interval):
            try:
                recover_stale_jobs()
            except Exception:  # the database or the broker is away: try again at the next interval
                log.warning("recovery of stale evaluations failed; retrying", exc_info=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()


_timer: RecoveryTimer | None = None
_MAIN_PID = os.getpid()  # the worker's main process, which imports this module before forking its pool


@worker_ready.connect
def _start_recovery(**_: Any) -> None:
    global _timer
    _timer = RecoveryTimer(get_settings().recovery_interval)
    _timer.start()


@worker_shutdown.connect
def _stop_recovery(**_: Any) -> None:
    if _timer is not None:
        _timer.stop()


@worker_process_init.connect
def _fresh_connections_in_pool_process(**_: Any) -> None:
    """A pool process forked after the recovery thread ran must not share its database or broker sockets."""
    if os.getpid() == _MAIN_PID:  # the solo pool runs tasks in the main process: nothing was inherited
        return
    discard_inherited_connections()
    configure_client(get_settings())
