"""Volume growth rate (Hasegawa and Yasuda Algorithm 1, Eq. 13) against QR, analytic linear models and batching."""

from __future__ import annotations

import itertools
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from diffusers.models.unets.unet_2d import UNet2DModel
from diffusers.schedulers.scheduling_ddpm import DDPMScheduler

from diffaudit.metrics.volume_growth import (
    gram_schmidt,
    initial_axes,
    sort_by_stretch,
    stretch_log,
    volume_growth,
    volume_growth_dataset,
)

SCHEDULER_CONFIG = {
    "_class_name": "DDPMScheduler",
    "num_train_timesteps": 1000,
    "beta_start": 0.0001,
    "beta_end": 0.02,
    "beta_schedule": "linear",
    "clip_sample": True,
    "prediction_type": "epsilon",
}
SHAPE = (1, 2, 2)  # D = 4
DIM = 4


class LinearEpsilon(torch.nn.Module):
    """eps(x, t, label) = scale[label] * A x: a "UNet" whose flow map is known in closed form."""

    def __init__(self, matrix: np.ndarray, label_scales: tuple[float, ...] = (1.0,)) -> None:
        super().__init__()
        self.matrix = torch.nn.Parameter(torch.from_numpy(matrix))
        self.scales = torch.tensor(label_scales, dtype=torch.float64)

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor, class_labels: torch.Tensor | None = None):
        flat = sample.reshape(sample.shape[0], -1) @ self.matrix.T
        if class_labels is not None:
            flat = flat * self.scales[class_labels][:, None]
        return SimpleNamespace(sample=flat.reshape(sample.shape))


def alphas_cumprod() -> np.ndarray:
    return DDPMScheduler.from_config(SCHEDULER_CONFIG).alphas_cumprod.double().numpy()


def step_jacobian(matrix: np.ndarray, abar_from: float, abar_to: float) -> np.ndarray:
    """The inverse DDIM step x -> sqrt(ab_to/ab_from) x + (sqrt(1-ab_to) - sqrt(ab_to (1-ab_from)/ab_from)) A x."""
    c_x = np.sqrt(abar_to / abar_from)
    c_eps = np.sqrt(1 - abar_to) - np.sqrt(abar_to * (1 - abar_from) / abar_from)
    return c_x * np.eye(len(matrix)) + c_eps * matrix


def random_matrix(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(DIM, DIM))


def images(n: int, seed: int = 0) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).uniform(-1, 1, size=(n, *SHAPE)))


def test_gram_schmidt_by_hand_and_against_numpy_qr() -> None:
    axes = np.array([[[3.0, 0.0, 4.0, 0.0], [1.0, 2.0, 0.0, 0.0], [0.0, 1.0, 1.0, 1.0]]])
    unit, lengths = gram_schmidt(torch.from_numpy(axes))
    # by hand: |(3,0,4,0)| = 5; (1,2,0,0) - 0.6 (0.6,0,0.8,0) = (0.64, 2, -0.48, 0)
    np.testing.assert_allclose(unit[0, 0], [0.6, 0.0, 0.8, 0.0])
    np.testing.assert_allclose(lengths[0, :2], [5.0, np.sqrt(0.64**2 + 4 + 0.48**2)])
    rng = np.random.default_rng(3)
    batch = np.concatenate([axes, rng.normal(size=(1, 3, 4))])
    unit, lengths = gram_schmidt(torch.from_numpy(batch))
    for b in range(2):
        q, r = np.linalg.qr(batch[b].T)
        signs = np.sign(np.diag(r))
        np.testing.assert_allclose(unit[b].numpy(), (q * signs).T, atol=1e-12)
        np.testing.assert_allclose(lengths[b].numpy(), np.abs(np.diag(r)), rtol=1e-12)


def test_axes_are_sorted_by_stretch_before_orthogonalising() -> None:
    axes = torch.tensor([[[1.0, 1.0, 0.0], [0.0, 5.0, 0.0], [0.0, 0.0, 3.0]]], dtype=torch.float64)
    np.testing.assert_array_equal(sort_by_stretch(axes)[0].numpy(), [[0, 5, 0], [0, 0, 3], [1, 1, 0]])
    log_volume, unit = stretch_log(axes, "volume")
    # the longest axis keeps its direction; the volume is |det| = 15
    np.testing.assert_allclose(unit[0, 0].numpy(), [0.0, 1.0, 0.0])
    np.testing.assert_allclose(unit[0, 2].numpy(), [1.0, 0.0, 0.0])
    assert log_volume.item() == pytest.approx(np.log(15.0))
    log_stretch, _ = stretch_log(axes, "stretch")
    assert log_stretch.item() == pytest.approx(np.log(np.sqrt(2.0) * 5.0 * 3.0))


def test_initial_axes_are_orthonormal_and_do_not_depend_on_the_batch() -> None:
    axes = initial_axes(5, 3, 10, seed=7)
    gram = torch.einsum("bnd,bmd->bnm", axes, axes)
    np.testing.assert_allclose(gram.numpy(), np.broadcast_to(np.eye(3), (5, 3, 3)), atol=1e-12)
    np.testing.assert_array_equal(initial_axes(2, 3, 10, seed=7, first_index=3).numpy(), axes[3:].numpy())


def test_one_step_one_axis_equals_the_stretch_of_the_jacobian_along_the_axis() -> None:
    matrix = random_matrix(0)
    result = volume_growth(LinearEpsilon(matrix), SCHEDULER_CONFIG, images(3), seed=5)
    # one step: from the clean image (abar = 1) to timestep 0
    jacobian = step_jacobian(matrix, 1.0, alphas_cumprod()[0])
    v = initial_axes(3, 1, DIM, seed=5)[:, 0].numpy()
    np.testing.assert_allclose(result.scores, np.log(np.linalg.norm(v @ jacobian.T, axis=1)), rtol=1e-9)


def test_full_axes_volume_equals_the_log_determinant_along_the_curve() -> None:
    matrix = random_matrix(1)
    result = volume_growth(
        LinearEpsilon(matrix),
        SCHEDULER_CONFIG,
        images(2),
        n_axes=DIM,
        n_steps=3,
        num_inference_steps=10,
        return_curve=True,
    )
    abar = alphas_cumprod()
    levels = [1.0, abar[0], abar[100], abar[200]]  # grid of 10 steps: timesteps 0, 100, 200, ...
    log_dets = [np.log(abs(np.linalg.det(step_jacobian(matrix, a, b)))) for a, b in itertools.pairwise(levels)]
    assert result.curve is not None and result.curve.shape == (2, 3)
    np.testing.assert_allclose(result.curve, np.broadcast_to(np.cumsum(log_dets), (2, 3)), rtol=1e-9)
    np.testing.assert_allclose(result.scores, result.curve[:, -1])


def test_partial_axes_volume_and_literal_stretch_on_a_linear_model() -> None:
    matrix = random_matrix(2)
    jacobian = step_jacobian(matrix, 1.0, alphas_cumprod()[0])
    axes = initial_axes(1, 2, DIM, seed=0)[0].numpy().T  # (D, 2)
    mapped = jacobian @ axes
    volume = volume_growth(LinearEpsilon(matrix), SCHEDULER_CONFIG, images(1), n_axes=2)
    stretch = volume_growth(LinearEpsilon(matrix), SCHEDULER_CONFIG, images(1), n_axes=2, measure="stretch")
    assert volume.scores[0] == pytest.approx(0.5 * np.log(np.linalg.det(mapped.T @ mapped)), rel=1e-9)
    assert stretch.scores[0] == pytest.approx(np.log(np.linalg.norm(mapped, axis=0)).sum(), rel=1e-9)
    assert stretch.scores[0] > volume.scores[0]  # Hadamard's inequality


def test_class_labels_reach_every_point_of_their_image() -> None:
    matrix = random_matrix(3)
    model = LinearEpsilon(matrix, label_scales=(1.0, -2.0))
    labels = torch.tensor([0, 1])
    result = volume_growth(model, SCHEDULER_CONFIG, images(2), labels, n_axes=DIM)
    abar0 = alphas_cumprod()[0]
    expected = [np.log(abs(np.linalg.det(step_jacobian(s * matrix, 1.0, abar0)))) for s in (1.0, -2.0)]
    np.testing.assert_allclose(result.scores, expected, rtol=1e-9)


def tiny_unet() -> UNet2DModel:
    torch.manual_seed(0)
    return UNet2DModel(
        sample_size=8,
        in_channels=1,
        out_channels=1,
        block_out_channels=(8, 16),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
        norm_num_groups=8,
        num_class_embeds=3,
    ).eval()


def test_scores_do_not_depend_on_the_batch() -> None:
    unet = tiny_unet()
    pixels = np.random.default_rng(4).integers(0, 256, size=(5, 8, 8, 1), dtype=np.uint8)
    labels = np.array([0, 1, 2, 0, 1])
    calls: list[tuple[int, int]] = []
    whole = volume_growth_dataset(unet, SCHEDULER_CONFIG, pixels, labels, batch_size=5, n_axes=2, n_steps=2)
    ones = volume_growth_dataset(
        unet,
        SCHEDULER_CONFIG,
        pixels,
        labels,
        batch_size=1,
        n_axes=2,
        n_steps=2,
        progress=lambda done, total: calls.append((done, total)),
    )
    np.testing.assert_allclose(ones.scores, whole.scores, rtol=1e-5, atol=1e-5)
    assert calls == [(1, 5), (2, 5), (3, 5), (4, 5), (5, 5)]
    assert np.isfinite(whole.scores).all() and len(set(np.round(whole.scores, 6))) == 5
    chunk = volume_growth_dataset(unet, SCHEDULER_CONFIG, pixels[3:], labels[3:], first_index=3, n_axes=2, n_steps=2)
    np.testing.assert_allclose(chunk.scores, whole.scores[3:], rtol=1e-5, atol=1e-5)  # a chunk of a larger set
    unseeded = volume_growth_dataset(unet, SCHEDULER_CONFIG, pixels[3:], labels[3:], n_axes=2, n_steps=2)
    assert not np.allclose(unseeded.scores, whole.scores[3:], rtol=1e-5, atol=1e-5)  # other axes, other scores


def test_invalid_parameters_are_refused() -> None:
    model = LinearEpsilon(random_matrix(0))
    with pytest.raises(ValueError, match="n_axes"):
        volume_growth(model, SCHEDULER_CONFIG, images(1), n_axes=DIM + 1)
    with pytest.raises(ValueError, match="n_steps"):
        volume_growth(model, SCHEDULER_CONFIG, images(1), n_steps=11, num_inference_steps=10)
