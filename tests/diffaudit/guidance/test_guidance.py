"""Guided sampling (Sehwag et al.): losses against Eqs. 4/6 and finite differences, sampler hook, baseline parity."""

from __future__ import annotations

import math
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler, UNet2DModel
from torch import nn

from diffaudit.checkpoints.sampling import denoise, sample_batches
from diffaudit.guidance.hardness import fit_timestep_gaussians
from diffaudit.guidance.losses import (
    GradientNorm,
    discriminator_guidance_loss,
    hardness_guidance_loss,
    normalize_gradient,
)
from diffaudit.guidance.sampling import (
    LowDensityGuidance,
    ddim_shift_coefficient,
    ddpm_step_variance,
    guidance_timesteps,
    shift_noise_prediction,
)
from diffaudit.metrics.density import ClassGaussians
from diffaudit.models.guidance import (
    TimeConditionedCNN,
    add_noise,
    network_from_bytes,
    network_to_bytes,
    train_guidance_classifier,
)

SCHEDULE = {"num_train_timesteps": 1000, "beta_schedule": "linear"}
CPU = torch.device("cpu")


def make_scheduler(scheduler_class: type, **options: Any) -> Any:
    """A diffusers scheduler with the test noise schedule (typed Any: diffusers is opaque to mypy)."""
    return scheduler_class(**SCHEDULE, **options)


def random_gaussians(num_classes: int, dim: int, seed: int) -> ClassGaussians:
    rng = np.random.default_rng(seed)
    features = rng.normal(size=(num_classes * 20, dim)) * rng.uniform(0.5, 2.0, dim)
    return ClassGaussians.fit(features, np.repeat(np.arange(num_classes), 20))


def test_hardness_guidance_loss_is_eq4() -> None:
    hardness = torch.tensor([[1.0, 2.0, 4.0], [3.0, 0.5, 0.0]], dtype=torch.float64)
    tau = 2.0
    loss = hardness_guidance_loss(hardness, torch.tensor([2, 0]), tau)
    expected = [
        math.log(math.exp(4.0 / tau) / sum(math.exp(h / tau) for h in (1.0, 2.0, 4.0))),
        math.log(math.exp(3.0 / tau) / sum(math.exp(h / tau) for h in (3.0, 0.5, 0.0))),
    ]
    np.testing.assert_allclose(loss.numpy(), expected, rtol=1e-12)
    np.testing.assert_allclose(hardness_guidance_loss(hardness[:, :1], None, tau).numpy(), [0.5, 1.5])


def test_discriminator_guidance_loss_is_eq6() -> None:
    hardness = torch.tensor([[1.0, 3.0]], dtype=torch.float64)  # (synthetic, real)
    expected = -math.log(math.exp(3.0) / (math.exp(1.0) + math.exp(3.0)))
    assert float(discriminator_guidance_loss(hardness)[0]) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("which", ["g1", "g2"])
def test_loss_gradients_through_the_network_match_finite_differences(which: str) -> None:
    torch.manual_seed(0)
    network = TimeConditionedCNN(in_channels=1, num_classes=3, width=8, embedding_dim=6).double()
    num_classes = 3 if which == "g1" else 2
    gaussians = random_gaussians(num_classes, 6, seed=1)
    x = torch.randn(2, 1, 8, 8, dtype=torch.float64)
    t = torch.tensor([300, 300])
    labels = torch.tensor([2, 0])

    def loss_of(images: torch.Tensor) -> torch.Tensor:
        hardness = gaussians.hardness_all_classes(network.embed(images, t))
        if which == "g1":
            return hardness_guidance_loss(hardness, labels, tau=0.7).sum()
        return discriminator_guidance_loss(hardness, tau=0.7).sum()

    x_grad = x.clone().requires_grad_(True)
    (gradient,) = torch.autograd.grad(loss_of(x_grad), x_grad)
    h = 1e-6
    for index in [(0, 0, 3, 4), (1, 0, 7, 0), (0, 0, 0, 0), (1, 0, 5, 2)]:
        step = torch.zeros_like(x)
        step[index] = h
        numeric = (loss_of(x + step) - loss_of(x - step)) / (2 * h)
        assert gradient[index].item() == pytest.approx(numeric.item(), rel=1e-6, abs=1e-9)


def test_normalize_gradient_per_sample() -> None:
    gradient = torch.tensor([[[[0.5, -2.0], [1.0, 0.0]]], [[[0.0, 0.0], [0.0, 0.0]]], [[[3.0, 4.0], [0.0, 0.0]]]])
    linf = normalize_gradient(gradient, "linf")
    torch.testing.assert_close(linf[0], gradient[0] / 2.0)
    torch.testing.assert_close(linf[1], torch.zeros(1, 2, 2))
    torch.testing.assert_close(linf[2], gradient[2] / 4.0)
    l2 = normalize_gradient(gradient, "l2")
    torch.testing.assert_close(l2[2], gradient[2] / 5.0)
    with pytest.raises(ValueError):
        normalize_gradient(gradient, "l1")  # type: ignore[arg-type]


def tiny_unet(num_class_embeds: int | None = 3) -> Any:
    torch.manual_seed(0)
    unet: Any = UNet2DModel(
        sample_size=8,
        in_channels=1,
        out_channels=1,
        block_out_channels=(8, 16),
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
        layers_per_block=1,
        norm_num_groups=8,
        num_class_embeds=num_class_embeds,
    )
    return unet.eval()


def tiny_guidance(
    alpha: float, beta: float, timesteps: list[int], num_classes: int = 3, norm: GradientNorm = "l2"
) -> LowDensityGuidance:
    torch.manual_seed(0)
    classifier = TimeConditionedCNN(in_channels=1, num_classes=num_classes, width=8, embedding_dim=6)
    discriminator = TimeConditionedCNN(in_channels=1, num_classes=2, width=8, embedding_dim=6)
    return LowDensityGuidance(
        classifier=classifier,
        class_gaussians={t: random_gaussians(num_classes, 6, seed=t) for t in timesteps},
        discriminator=discriminator,
        discriminator_gaussians={t: random_gaussians(2, 6, seed=t + 1) for t in timesteps},
        alpha=alpha,
        beta=beta,
        norm=norm,
    )


@pytest.mark.parametrize("scheduler_class", [DDPMScheduler, DDIMScheduler])
def test_zero_alpha_beta_reproduces_the_baseline_sampler_bit_for_bit(scheduler_class: type) -> None:
    unet, labels = tiny_unet(), np.array([0, 1, 2, 0, 1])
    baseline = dict(
        sample_batches(
            unet, make_scheduler(scheduler_class), n=5, steps=4, seed=11, batch_size=5, class_labels=labels, device=CPU
        )
    )
    timesteps = guidance_timesteps(make_scheduler(scheduler_class), 4)
    for alpha, beta, same in [(0.0, 0.0, True), (0.5, 0.5, False)]:
        guidance = tiny_guidance(alpha, beta, timesteps)
        scheduler = make_scheduler(scheduler_class)
        batches = sample_batches(
            unet, scheduler, n=5, steps=4, seed=11, batch_size=2, class_labels=labels, device=CPU, guidance=guidance
        )
        guided = dict(batches)
        assert sorted(guided) == [0, 2, 4]
        images = np.concatenate([guided[k] for k in sorted(guided)])
        assert np.array_equal(images, baseline[0]) == same


def test_baseline_parity_holds_in_model_space_too() -> None:
    unet, scheduler = tiny_unet(None), make_scheduler(DDPMScheduler)
    guidance = tiny_guidance(0.0, 0.0, guidance_timesteps(make_scheduler(DDPMScheduler), 3), num_classes=1)
    with torch.inference_mode():
        baseline = denoise(unet, scheduler, seeds=[3, 4], steps=3, class_labels=None, device=CPU)
        guided = denoise(unet, scheduler, seeds=[3, 4], steps=3, class_labels=None, device=CPU, guidance=guidance)
    assert torch.equal(baseline, guided)


def test_ddpm_hook_adds_sigma_times_direction_and_nothing_at_the_last_step() -> None:
    scheduler = make_scheduler(DDPMScheduler)
    scheduler.set_timesteps(10)
    t = scheduler.timesteps[3]
    guidance = tiny_guidance(0.5, 0.5, [int(t)])
    x = torch.randn(2, 1, 8, 8)
    eps = torch.randn(2, 1, 8, 8)
    labels = torch.tensor([0, 1])
    output, shift = guidance(scheduler, x, t, eps, labels, False)
    assert torch.equal(output, eps) and shift is not None
    abar = scheduler.alphas_cumprod
    abar_t, abar_prev = abar[int(t)], abar[int(t) - 100]
    variance = (1 - abar_prev) / (1 - abar_t) * (1 - abar_t / abar_prev)  # DDPM posterior variance, fixed_small
    torch.testing.assert_close(shift, variance * guidance.direction(x, int(t), labels))
    torch.testing.assert_close(ddpm_step_variance(scheduler, t, eps, x), variance)
    assert guidance(scheduler, x, t, eps, labels, True) == (eps, None)


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_direction_is_alpha_and_beta_weighted_unit_gradients(norm: GradientNorm) -> None:
    guidance = tiny_guidance(0.3, 0.0, [500], norm=norm)
    x, labels = torch.randn(3, 1, 8, 8), torch.tensor([0, 1, 2])
    u = guidance.direction(x, 500, labels)
    size = u.flatten(1).norm(dim=1) if norm == "l2" else u.flatten(1).abs().amax(dim=1)
    torch.testing.assert_close(size, torch.full((3,), 0.3))
    both = tiny_guidance(0.3, 0.2, [500], norm=norm).direction(x, 500, labels)
    only_beta = tiny_guidance(0.0, 0.2, [500], norm=norm).direction(x, 500, labels)
    torch.testing.assert_close(both, u + only_beta)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_noise_shift_moves_the_implied_noise_by_sqrt_one_minus_abar(prediction_type: str) -> None:
    scheduler = make_scheduler(DDIMScheduler, prediction_type=prediction_type)
    t = torch.tensor(600)
    abar = scheduler.alphas_cumprod[600]
    x_t, eps, u = torch.randn(2, 1, 4, 4), torch.randn(2, 1, 4, 4), torch.randn(2, 1, 4, 4)
    x0 = (x_t - (1 - abar).sqrt() * eps) / abar.sqrt()
    output = {"epsilon": eps, "v_prediction": abar.sqrt() * eps - (1 - abar).sqrt() * x0, "sample": x0}
    shifted = shift_noise_prediction(scheduler, t, output[prediction_type], u)
    eps_hat = eps - (1 - abar).sqrt() * u  # Dhariwal and Nichol, Algorithm 2
    x0_hat = (x_t - (1 - abar).sqrt() * eps_hat) / abar.sqrt()
    expected = {
        "epsilon": eps_hat,
        "v_prediction": abar.sqrt() * eps_hat - (1 - abar).sqrt() * x0_hat,
        "sample": x0_hat,
    }
    torch.testing.assert_close(shifted, expected[prediction_type])


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_ddim_shift_is_the_noise_shift_without_clipping_and_survives_clipping(prediction_type: str) -> None:
    # Without clipping, adding c_t u after the step is Dhariwal and Nichol's eps_hat = eps - sqrt(1 - abar_t) u.
    plain = make_scheduler(DDIMScheduler, clip_sample=False, prediction_type=prediction_type)
    plain.set_timesteps(10)
    t = plain.timesteps[2]
    x_t, output, u = torch.randn(2, 1, 4, 4), torch.randn(2, 1, 4, 4), torch.randn(2, 1, 4, 4)
    guided = plain.step(shift_noise_prediction(plain, t, output, u), t, x_t).prev_sample
    shifted = plain.step(output, t, x_t).prev_sample + ddim_shift_coefficient(plain, t) * u
    torch.testing.assert_close(guided, shifted)
    # With clip_sample the hook still moves x_{t-1} by c_t u along u (the noise shift alone would be clipped).
    clipped = make_scheduler(DDIMScheduler, clip_sample=True, prediction_type=prediction_type)
    clipped.set_timesteps(10)
    guidance = tiny_guidance(0.5, 0.5, [int(t)])
    labels = torch.tensor([0, 1])
    hooked, shift = guidance(clipped, x_t, t, output, labels, False)
    assert torch.equal(hooked, output) and shift is not None
    torch.testing.assert_close(shift, ddim_shift_coefficient(clipped, t) * guidance.direction(x_t, int(t), labels))
    assert float(ddim_shift_coefficient(clipped, t)) > 0


class GaussianDataDenoiser(nn.Module):
    """The exact noise prediction for N(0, I) data: eps(x_t) = sqrt(1 - abar_t) x_t."""

    def __init__(self, alphas_cumprod: torch.Tensor) -> None:
        super().__init__()
        self.alphas_cumprod = alphas_cumprod
        self.config = {"sample_size": 8, "in_channels": 1}
        self.dtype = torch.float32

    def forward(self, x: torch.Tensor, t: torch.Tensor, class_labels: torch.Tensor | None = None) -> SimpleNamespace:
        return SimpleNamespace(sample=(1 - self.alphas_cumprod[int(t)]).sqrt() * x)


@pytest.mark.parametrize("scheduler_class", [DDPMScheduler, DDIMScheduler])
@pytest.mark.parametrize(("norm", "alpha"), [("linf", 1.0), ("l2", 8.0)])  # unit l2 over 64 pixels = linf / 8
def test_guidance_raises_the_hardness_of_the_final_embedding(
    scheduler_class: type, norm: GradientNorm, alpha: float
) -> None:
    scheduler = make_scheduler(scheduler_class)
    steps = 10
    timesteps = guidance_timesteps(scheduler, steps)
    torch.manual_seed(0)
    network = TimeConditionedCNN(in_channels=1, num_classes=1, width=8, embedding_dim=6)
    training = torch.randn(64, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    gaussians = fit_timestep_gaussians(network, training, None, timesteps, scheduler.alphas_cumprod.double())
    denoiser: Any = GaussianDataDenoiser(scheduler.alphas_cumprod)  # a stand-in for the UNet
    final = gaussians[min(timesteps)]

    def hardness(scale: float) -> torch.Tensor:
        guidance = LowDensityGuidance(network, gaussians, alpha=scale, beta=0.0, norm=norm)
        with torch.inference_mode():
            x0 = denoise(
                denoiser,
                scheduler,
                seeds=list(range(16)),
                steps=steps,
                class_labels=None,
                device=CPU,
                guidance=guidance,
            )
        with torch.no_grad():
            features = network.embed(x0, torch.full((16,), min(timesteps)))
        return final.to("cpu").hardness_all_classes(features)[:, 0]

    baseline, guided = hardness(0.0), hardness(alpha)
    assert (guided > baseline).float().mean() >= 0.9
    assert guided.mean() > baseline.mean() + 3 * baseline.std() / 4


def test_network_round_trips_through_safetensors() -> None:
    torch.manual_seed(0)
    network = TimeConditionedCNN(in_channels=1, num_classes=4, width=8, embedding_dim=5).eval()
    loaded = network_from_bytes(network_to_bytes(network))
    assert loaded.config == network.config
    x, t = torch.randn(3, 1, 16, 16), torch.tensor([0, 10, 999])
    with torch.no_grad():
        assert torch.equal(loaded(x, t), network(x, t))


def test_training_uses_the_noise_schedule_and_learns_an_easy_task() -> None:
    # Two classes: bright and dark 8x8 images; at t = 20 the noise is small and the task is trivial.
    images = torch.cat([torch.full((32, 1, 8, 8), 0.8), torch.full((32, 1, 8, 8), -0.8)])
    labels = torch.repeat_interleave(torch.tensor([0, 1]), 32)
    alphas_cumprod = make_scheduler(DDPMScheduler).alphas_cumprod.double()
    network = train_guidance_classifier(images, labels, alphas_cumprod, steps=40, batch_size=32, seed=0)
    noise = torch.randn(64, 1, 8, 8, generator=torch.Generator().manual_seed(5))
    noisy = add_noise(images, torch.full((64,), 20), alphas_cumprod, noise).float()
    with torch.no_grad():
        accuracy = (network(noisy, torch.full((64,), 20)).argmax(1) == labels).float().mean()
    assert accuracy > 0.95
    # at t = 999 almost nothing of the image is left: x_t is nearly the noise itself
    assert torch.allclose(add_noise(images, torch.full((64,), 999), alphas_cumprod, noise).float(), noise, atol=0.01)
