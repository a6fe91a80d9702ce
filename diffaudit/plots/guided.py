"""Figures of guided sampling (Sehwag et al., "Generating High Fidelity Data from Low-density Regions using
Diffusion Models", arXiv 2203.17260): density histograms (Figs. 4, 7) and the alpha-beta grid (Fig. 3)."""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

from diffaudit.common.figures import figure_png
from diffaudit.imaging import image_grid
from diffaudit.spec import GuidedSpec


def histograms_png(values: dict[str, dict[str, np.ndarray]], precisions: dict[str, float]) -> bytes:
    """Figs. 4 and 7: hardness, AvgkNN and LOF histograms of every set (values[set][metric]), each set's precision."""
    figure = Figure(figsize=(17, 3.8), layout="constrained")
    axes = figure.subplots(1, 4)
    titles = {
        "hardness": "hardness score (Eq. 3)",
        "avg_knn": "AvgkNN distance (k = 5)",
        "lof": "local outlier factor (k = 20)",
    }
    for axis, metric in zip(axes[:3], titles, strict=True):
        pooled = np.concatenate([of_set[metric] for of_set in values.values()])
        low, high = np.percentile(pooled, [0.5, 99.5])
        bins = np.linspace(float(low), float(high), 40)
        for name, of_set in values.items():
            axis.hist(np.clip(of_set[metric], bins[0], bins[-1]), bins=bins, histtype="step", density=True, label=name)
        axis.set_title(titles[metric])
        axis.set_ylabel("density")
    axes[0].legend(fontsize="small")
    axes[3].bar(range(len(precisions)), list(precisions.values()))
    axes[3].set_xticks(range(len(precisions)), list(precisions), rotation=45, ha="right", fontsize="small")
    axes[3].set_title("precision (k = 3)")
    axes[3].set_ylim(0, 1)
    return figure_png(figure)


def fig3_png(spec: GuidedSpec, cells: dict[tuple[float, float], np.ndarray], seeds: int) -> bytes:
    """Fig. 3: rows alpha, columns beta; each cell the first `seeds` samples of (alpha, beta), one per column."""
    seeds = min(seeds, spec.n)
    figure = Figure(figsize=(1.2 * seeds * len(spec.betas) + 1, 1.3 * len(spec.alphas) + 0.6), layout="constrained")
    axes = np.asarray(figure.subplots(len(spec.alphas), len(spec.betas), squeeze=False))
    for row, alpha in enumerate(spec.alphas):
        for column, beta in enumerate(spec.betas):
            axis = axes[row, column]
            axis.imshow(np.asarray(image_grid(cells[(alpha, beta)][:seeds], ncols=seeds)), cmap="gray")
            axis.set_xticks([])
            axis.set_yticks([])
            if row == 0:
                axis.set_title(f"beta = {beta:g}")
            if column == 0:
                axis.set_ylabel(f"alpha = {alpha:g}")
    return figure_png(figure)
