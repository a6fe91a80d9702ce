"""The augmentation figure: held-out accuracy per class and training set ("The deficit of new information in
diffusion models", Table 2)."""

from __future__ import annotations

from typing import Any

import numpy as np
from matplotlib.figure import Figure

from diffaudit.common.figures import figure_png
from diffaudit.metrics.augmentation import CONDITIONS

CHART_LABELS = {"original": "original (OI)", "generated": "+ generated (VGS)", "diverse": "+ diverse samples (DS)"}


def chart_png(table: dict[str, Any], title: str) -> bytes:
    """Grouped bars: accuracy per class and overall for each condition, with the spread over seeds."""
    groups = [*(row["name"] for row in table["classes"]), "overall"]
    rows = [*table["classes"], table["overall"]]
    figure = Figure(figsize=(max(6.0, 0.7 * len(groups) + 2), 4))
    axis = figure.add_subplot()
    width = 0.8 / len(CONDITIONS)
    for i, condition in enumerate(CONDITIONS):
        means = [row["accuracy"][condition]["mean"] for row in rows]
        stds = [row["accuracy"][condition]["std"] for row in rows]
        positions = np.arange(len(groups)) + (i - (len(CONDITIONS) - 1) / 2) * width
        axis.bar(positions, means, width, yerr=stds, capsize=2, label=CHART_LABELS[condition])
    axis.set_xticks(np.arange(len(groups)), groups)
    axis.set_ylim(0, 1.05)
    axis.set_ylabel("held-out accuracy")
    axis.set_title(title)
    axis.legend(loc="lower right", fontsize=8)
    return figure_png(figure)
