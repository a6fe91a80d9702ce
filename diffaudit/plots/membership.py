"""Figures of the membership analysis: score histograms of both groups and the ROC curve."""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

from diffaudit.common.figures import figure_png
from diffaudit.metrics.membership import Histograms


def histograms_png(histograms: Histograms, score: str, auc: float) -> bytes:
    """Training and held-out score counts on shared bins (higher score = more likely a training image)."""
    figure = Figure(figsize=(6, 3.5))
    axis = figure.subplots()
    n_members, n_nonmembers = int(histograms.members.sum()), int(histograms.nonmembers.sum())
    axis.stairs(histograms.members, histograms.edges, fill=True, alpha=0.55, label=f"training (n={n_members})")
    axis.stairs(histograms.nonmembers, histograms.edges, fill=True, alpha=0.55, label=f"held-out (n={n_nonmembers})")
    axis.set_xlabel(f"{score} score (higher = more likely a training image)")
    axis.set_ylabel("count")
    axis.set_title(f"Membership score {score}: AUC {auc:.3f}")
    axis.legend()
    return figure_png(figure)


def roc_png(fpr: np.ndarray, tpr: np.ndarray, score: str) -> bytes:
    """The empirical ROC curve on log axes (the low-FPR end is what membership inference is judged on)."""
    figure = Figure(figsize=(4.5, 4.5))
    axis = figure.subplots()
    floor = float(fpr[fpr > 0].min()) / 2  # zero rates drawn at half the smallest measured one (log axes)
    axis.step(np.maximum(fpr, floor), np.maximum(tpr, floor), where="post", label=score)
    axis.plot([floor, 1], [floor, 1], linestyle="--", color="grey", label="chance")
    axis.set_xscale("log")
    axis.set_yscale("log")
    axis.set_xlabel("false positive rate (held-out called training)")
    axis.set_ylabel("true positive rate")
    axis.set_title(f"ROC of {score}")
    axis.legend(loc="lower right")
    return figure_png(figure)
