"""The distribution figure: precision, recall, density and coverage with their bootstrap intervals, and FID per
class when there is one."""

from __future__ import annotations

from typing import Any

import numpy as np
from matplotlib.figure import Figure

from diffaudit.common.figures import figure_png

BALL_METRICS = ("precision", "recall", "density", "coverage")


def distribution_png(metrics: dict[str, Any]) -> bytes:
    """Bars of the four k-NN ball metrics (interval as error bars; density may exceed 1), and per-class FID bars."""
    per_class: dict[str, float] = metrics.get("fid_per_class") or {}
    figure = Figure(figsize=(9 if per_class else 4.5, 3.5))
    axes = figure.subplots(1, 2 if per_class else 1, squeeze=False)[0]
    values = np.array([metrics[key] for key in BALL_METRICS])
    intervals = [metrics["intervals"].get(key) or [metrics[key]] * 2 for key in BALL_METRICS]
    low, high = np.array([i[0] for i in intervals]), np.array([i[1] for i in intervals])
    errors = np.clip([values - low, high - values], 0, None)
    axes[0].bar(np.arange(len(BALL_METRICS)), values, yerr=errors, capsize=3, color="C0")
    axes[0].axhline(1.0, color="C7", linewidth=0.8, linestyle="--")
    axes[0].set_xticks(np.arange(len(BALL_METRICS)), list(BALL_METRICS))
    axes[0].set_title(f"k = {metrics['k']}: {metrics['n_fake']} generated vs {metrics['n_real']} real", fontsize=9)
    if per_class:
        axes[1].bar(list(per_class), list(per_class.values()), color="C1")
        axes[1].set_xlabel("class")
        axes[1].set_ylabel("FID")
        axes[1].set_title(f"FID per class (all classes: {metrics['fid']:.3g})", fontsize=9)
    return figure_png(figure)
