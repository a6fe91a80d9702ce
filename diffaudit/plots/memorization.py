"""Figures of the memorization analysis: distance histograms and the volume-growth curve."""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

from diffaudit.common.figures import figure_png


def histogram_png(series: dict[str, np.ndarray], edges: np.ndarray, xlabel: str, title: str) -> bytes:
    figure = Figure(figsize=(6, 3.5))
    axis = figure.subplots()
    for label, values in series.items():
        axis.hist(values, bins=edges.tolist(), alpha=0.55, label=f"{label} (n={len(values)})")
    axis.set_xlabel(xlabel)
    axis.set_ylabel("count")
    axis.set_title(title)
    if len(series) > 1:
        axis.legend()
    return figure_png(figure)


def curve_png(curve: np.ndarray) -> bytes:
    steps = np.arange(1, curve.shape[1] + 1)
    figure = Figure(figsize=(6, 3.5))
    axis = figure.subplots()
    low, middle, high = np.quantile(curve, [0.1, 0.5, 0.9], axis=0)
    axis.fill_between(steps, low, high, alpha=0.3, label="10-90% of images")
    axis.plot(steps, middle, label="median")
    axis.set_xlabel("ODE step t")
    axis.set_ylabel("log l_t")
    axis.set_title("Volume growth along the probability-flow ODE (Hasegawa and Yasuda, Eq. 13)")
    axis.legend()
    return figure_png(figure)
