"""Device choice and torch thread count, set deliberately in one place."""

from __future__ import annotations

import os

import torch


def pick_device(preferred: str | None = None) -> torch.device:
    """CUDA when present (or when asked for), the CPU otherwise."""
    if preferred:
        return torch.device(preferred)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def configure_threads(num_threads: int | None = None) -> int:
    """Set torch's intra-op thread count to the cores this process may use.

    With few cores, oversubscription (torch threads x processes) makes work many times
    slower, so every entry point calls this once with its share of the machine.
    """
    if num_threads is None or num_threads <= 0:
        num_threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    torch.set_num_threads(num_threads)
    return num_threads
