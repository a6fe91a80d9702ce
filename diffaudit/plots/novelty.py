"""Figures of the novelty analysis: the t-SNE scatter and the paper's Fig. 1 (DS beside ordinary samples)."""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

from diffaudit.common.figures import figure_png
from diffaudit.imaging import image_grid
from diffaudit.metrics.novelty import TsneDetection, training_hull


def tsne_plot_png(detection: TsneDetection, seed_index: int = 0, title: str | None = None) -> bytes:
    """Scatter plot of one seed's t-SNE (training red, generated blue, hull, DS marked) as PNG bytes."""
    train, gen = detection.train_2d[seed_index], detection.generated_2d[seed_index]
    ds = detection.outside[seed_index]
    fig = Figure(figsize=(7, 6), dpi=100)
    ax = fig.add_subplot()
    size = 4 if len(train) + len(gen) < 5000 else 1
    ax.scatter(train[:, 0], train[:, 1], s=size, c="tab:red", alpha=0.5, label="training", rasterized=True)
    ax.scatter(gen[~ds, 0], gen[~ds, 1], s=size, c="tab:blue", alpha=0.5, label="generated", rasterized=True)
    ax.scatter(gen[ds, 0], gen[ds, 1], s=30, c="black", marker="x", label=f"diverse samples ({int(ds.sum())})")
    hull = training_hull(train)
    loop = np.append(hull.vertices, hull.vertices[0])  # 2-D hull vertices are in counterclockwise order
    ax.plot(train[loop, 0], train[loop, 1], c="darkred", lw=1, label="training boundary")
    ax.set_title(title or f"t-SNE ({detection.mode} mode, seed {detection.seeds[seed_index]})")
    ax.set_xlabel("t-SNE 1")
    ax.set_ylabel("t-SNE 2")
    ax.legend(loc="best", markerscale=2, fontsize=8)
    return figure_png(fig)


def figure_one_png(ds_images: np.ndarray, ordinary: np.ndarray, training: np.ndarray) -> bytes:
    """The paper's Fig. 1: DS beside ordinary generated samples and training images, one panel each."""
    fig = Figure(figsize=(12, 4.4), dpi=100)
    panels = [
        (ds_images, f"diverse samples ({len(ds_images)} shown)"),
        (ordinary, "ordinary generated samples"),
        (training, "training images"),
    ]
    for position, (images, title) in enumerate(panels, start=1):
        ax = fig.add_subplot(1, 3, position)
        ax.set_axis_off()
        ax.set_title(title, fontsize=10)
        if len(images) == 0:
            ax.text(0.5, 0.5, "none", ha="center", va="center", transform=ax.transAxes)
            continue
        grid = np.asarray(image_grid(images, ncols=6))
        ax.imshow(grid, cmap="gray" if grid.ndim == 2 else None, vmin=0, vmax=255, interpolation="nearest")
    return figure_png(fig)
