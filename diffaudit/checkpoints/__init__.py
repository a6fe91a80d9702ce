"""Load a diffusers checkpoint safely (safetensors only), schedulers, and the sampling loop."""

from diffaudit.checkpoints.loading import (
    Checkpoint,
    CheckpointInfo,
    CheckpointLimits,
    InvalidCheckpoint,
    checkpoint_members,
    load_checkpoint,
    resolve_checkpoint,
    validate_checkpoint_dir,
)
from diffaudit.checkpoints.sampling import class_labels_for, sample_batches
from diffaudit.checkpoints.schedulers import SCHEDULERS, make_scheduler

__all__ = [
    "SCHEDULERS",
    "Checkpoint",
    "CheckpointInfo",
    "CheckpointLimits",
    "InvalidCheckpoint",
    "checkpoint_members",
    "class_labels_for",
    "load_checkpoint",
    "make_scheduler",
    "resolve_checkpoint",
    "sample_batches",
    "validate_checkpoint_dir",
]
