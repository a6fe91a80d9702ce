"""Scheduler registry: the names of diffaudit.spec.SchedulerName -> a diffusers scheduler.

Every scheduler is built with `from_config` from the checkpoint's own scheduler config, so the
noise schedule (betas, number of training steps, prediction type) is the one the model was
trained with; only the solver changes.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch
from diffusers.schedulers.scheduling_ddim import DDIMScheduler
from diffusers.schedulers.scheduling_ddpm import DDPMScheduler
from diffusers.schedulers.scheduling_deis_multistep import DEISMultistepScheduler
from diffusers.schedulers.scheduling_dpmsolver_multistep import DPMSolverMultistepScheduler
from diffusers.schedulers.scheduling_euler_ancestral_discrete import EulerAncestralDiscreteScheduler
from diffusers.schedulers.scheduling_euler_discrete import EulerDiscreteScheduler
from diffusers.schedulers.scheduling_heun_discrete import HeunDiscreteScheduler
from diffusers.schedulers.scheduling_pndm import PNDMScheduler
from diffusers.schedulers.scheduling_unipc_multistep import UniPCMultistepScheduler


class Scheduler(Protocol):
    """What the sampling loop uses of a diffusers scheduler."""

    config: Any  # diffusers' FrozenDict of the constructor arguments
    timesteps: torch.Tensor
    init_noise_sigma: Any

    def set_timesteps(self, num_inference_steps: int, device: Any = None) -> None: ...
    def scale_model_input(self, sample: torch.Tensor, timestep: Any) -> torch.Tensor: ...
    def step(
        self, model_output: torch.Tensor, timestep: Any, sample: torch.Tensor, *args: Any, **kwargs: Any
    ) -> Any: ...


# name -> (diffusers scheduler class, options that make the solver the one the name means)
SCHEDULERS: dict[str, tuple[Any, dict[str, Any]]] = {
    "ddpm": (DDPMScheduler, {}),
    "ddim": (DDIMScheduler, {}),
    "pndm": (PNDMScheduler, {"skip_prk_steps": True}),  # PLMS
    "dpmsolver++": (DPMSolverMultistepScheduler, {"algorithm_type": "dpmsolver++"}),
    "unipc": (UniPCMultistepScheduler, {}),
    "deis": (DEISMultistepScheduler, {}),
    "euler": (EulerDiscreteScheduler, {}),
    "euler-ancestral": (EulerAncestralDiscreteScheduler, {}),
    "heun": (HeunDiscreteScheduler, {}),
}


def make_scheduler(name: str, scheduler_config: dict[str, Any]) -> Scheduler:
    """The scheduler registered as `name`, configured with the checkpoint's noise schedule."""
    if name not in SCHEDULERS:
        raise ValueError(f"unknown scheduler {name!r}; known schedulers: {sorted(SCHEDULERS)}")
    scheduler_class, options = SCHEDULERS[name]
    scheduler: Scheduler = scheduler_class.from_config(scheduler_config, **options)
    return scheduler
