"""Run a service process (the embedded server, a Celery worker) with a stage that raises.

    python -m tests.faults STAGE ERROR TIMES MODULE [ARGS...]

patches stage STAGE so that its first TIMES runs in this process raise ERROR (a builtin exception
name, or `InvalidInput` from diffaudit.errors), then runs `python -m MODULE ARGS...` in the same
process. The tests use it to provoke the failures a real defect or a real bad input would cause.
"""

from __future__ import annotations

import builtins
import runpy
import sys
from typing import Any

from diffaudit import errors
from diffaudit.pipeline import StageContext, get_stage


def fault_message(stage: str, error: str) -> str:
    return f"injected {error} in stage {stage}"


def inject(stage: str, error: str, times: int) -> None:
    """Make the first `times` runs of `stage` raise `error`."""
    exception = getattr(errors, error, None) or getattr(builtins, error)
    target = get_stage(stage)
    original = target.run
    calls = 0

    def run(ctx: StageContext) -> dict[str, Any]:
        nonlocal calls
        calls += 1
        if calls <= times:
            raise exception(fault_message(stage, error))
        return original(ctx)

    target.run = run  # type: ignore[method-assign]


def main() -> None:
    stage, error, times, module, *args = sys.argv[1:]
    inject(stage, error, int(times))
    sys.argv = [module, *args]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
