"""Cancellation inside a batch: the sampling loop calls its check before every denoising step."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from diffaudit.checkpoints import load_checkpoint, make_scheduler
from diffaudit.checkpoints.sampling import denoise
from diffaudit.spec import EvaluationSpec
from diffaudit.stages.artifacts import SAMPLE_BATCHES_PREFIX
from diffaudit.stages.base import Cancelled, StageContext
from diffaudit.stages.sample import SampleStage
from diffaudit.store import LocalStore, ScopedStore

CPU = torch.device("cpu")
STEPS = 10


class Stop(Exception):
    pass


def cancel_at_call(k: int) -> Callable[[], bool]:
    """A cancel check that answers True from its k-th call on."""
    calls = 0

    def is_cancelled() -> bool:
        nonlocal calls
        calls += 1
        return calls >= k

    return is_cancelled


def count_forward_passes(unet: torch.nn.Module) -> list[int]:
    passes: list[int] = []
    unet.register_forward_hook(lambda module, args, output: passes.append(1))
    return passes


def test_denoise_checks_before_every_step(tmp_path: Path, make_tiny_checkpoint: Callable[..., Path]) -> None:
    checkpoint = load_checkpoint(make_tiny_checkpoint(tmp_path / "ckpt"), CPU)
    passes = count_forward_passes(checkpoint.unet)
    stop_at_third = cancel_at_call(3)

    def check() -> None:
        if stop_at_third():
            raise Stop()

    with pytest.raises(Stop), torch.inference_mode():
        denoise(
            checkpoint.unet,
            make_scheduler("ddim", checkpoint.scheduler_config),
            seeds=[0, 1],
            steps=STEPS,
            class_labels=None,
            device=CPU,
            check_cancelled=check,
        )
    assert len(passes) == 2  # two steps ran, the third was stopped before its UNet call


def test_the_sample_stage_stops_inside_a_batch(tmp_path: Path, make_tiny_checkpoint: Callable[..., Path]) -> None:
    spec = EvaluationSpec(stages=("sample",), sample={"n": 4, "batch_size": 4, "steps": STEPS})
    ctx = StageContext(
        spec=spec,
        checkpoint_dir=make_tiny_checkpoint(tmp_path / "ckpt"),
        dataset=None,  # type: ignore[arg-type]  # the sample stage does not read the dataset
        job=ScopedStore(LocalStore(tmp_path), "job"),
        cache=ScopedStore(LocalStore(tmp_path), "cache"),
        device=CPU,
        results={},
        is_cancelled=cancel_at_call(4),
    )
    passes: list[Any] = count_forward_passes(ctx.checkpoint.unet)
    with pytest.raises(Cancelled):
        SampleStage().run(ctx)
    assert len(passes) == 3, "the one batch of 10 steps stopped after its third step"
    assert ctx.job.list(SAMPLE_BATCHES_PREFIX) == []
