"""The resumable batch runner: an interrupted run resumes at its first missing batch and equals an uninterrupted one."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from diffusers.schedulers.scheduling_ddpm import DDPMScheduler

from diffaudit.checkpoints import make_scheduler
from diffaudit.common.batches import Batches, Drawn, OnBatch, draw_resumable
from diffaudit.store import LocalStore

CPU = torch.device("cpu")


class Interrupted(Exception):
    pass


def draw(make_tiny_unet: Callable[..., Any], store: LocalStore, on_batch: OnBatch | None = None) -> Drawn:
    config = DDPMScheduler(num_train_timesteps=100).config
    return draw_resumable(
        Batches(store, "set/images.npy", "set/batches"),
        unet=make_tiny_unet(),
        scheduler=make_scheduler("ddim", config),
        n=10,
        steps=2,
        seed=7,
        batch_size=4,
        class_labels=None,
        device=CPU,
        on_batch=on_batch,
    )


def test_an_interrupted_run_resumes_and_equals_an_uninterrupted_one(
    tmp_path: Path, make_tiny_unet: Callable[..., Any]
) -> None:
    whole = draw(make_tiny_unet, LocalStore(tmp_path / "a"))
    assert whole.images.shape == (10, 8, 8, 1) and whole.new == 10

    store = LocalStore(tmp_path / "b")
    seen: list[int] = []

    def stop_after_the_first(start: int, images: np.ndarray) -> None:
        seen.append(start)
        if start == 4:
            raise Interrupted()

    with pytest.raises(Interrupted):
        draw(make_tiny_unet, store, stop_after_the_first)
    assert store.exists("set/batches/00000000.npy") and not store.exists("set/images.npy")
    seen.clear()
    resumed = draw(make_tiny_unet, store, lambda start, images: seen.append(start))
    assert seen == [0, 4, 8]  # kept batches are replayed in order, then the missing ones drawn
    assert resumed.new == 2  # batches 0 and 4 were stored before the stop: only the last one is drawn
    np.testing.assert_array_equal(np.asarray(resumed.images), np.asarray(whole.images))
    assert store.list("set/batches") == []  # assembled, then the batches are deleted

    again = draw(make_tiny_unet, store, lambda start, images: seen.append(start))
    assert again.new == 0 and seen == [0, 4, 8, 0, 4, 8]  # an assembled set is replayed, not drawn again
