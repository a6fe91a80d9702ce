"""The heartbeat of a running job: a thread of the task's process that proves it is alive.

A thread rather than the stage's progress callback: some stages report nothing for minutes (training-set
features, training the guidance networks, volume growth), and a thread beats however the stage reports. It
proves the process lives, not that the stage advances; a task that hangs is the stage's defect to fix.
"""

from __future__ import annotations

import logging
import threading
from types import TracebackType

from sqlalchemy.exc import OperationalError

from app.evaluations import service
from workers.db import session_scope

log = logging.getLogger(__name__)


class Heartbeat:
    """Beat the job every `interval` seconds while the task holds `lease`; `lost` once it no longer does
    (another task took the job over, or the job ended): the task then stops at its next cancellation check."""

    def __init__(self, evaluation_id: str, lease: int, interval: float) -> None:
        self.evaluation_id, self.lease, self.interval = evaluation_id, lease, interval
        self._stopped = threading.Event()
        self._lost = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-{evaluation_id}", daemon=True)

    @property
    def lost(self) -> bool:
        return self._lost.is_set()

    def _run(self) -> None:
        while not self._stopped.wait(self.interval):
            try:
                with session_scope() as session:
                    holds = service.beat(session, self.evaluation_id, self.lease)
            except OperationalError:  # beat again at the next interval
                log.warning("evaluation %s: heartbeat not recorded (database unreachable)", self.evaluation_id)
                continue
            if not holds:
                self._lost.set()
                return

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self._stopped.set()
        self._thread.join()
