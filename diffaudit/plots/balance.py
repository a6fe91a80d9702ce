"""The class-balance figure: generated against training class shares."""

from __future__ import annotations

from typing import Any

import numpy as np
from matplotlib.figure import Figure

from diffaudit.common.figures import figure_png


def shares_png(report: dict[str, Any], names: list[str]) -> bytes:
    """Generated and training share per class, the generated share's simultaneous interval as error bars."""
    rows = report["per_class"]
    x = np.arange(len(rows))
    train = np.array([r["train_share"] for r in rows])
    gen = np.array([r["generated_share"] for r in rows])
    lower = np.array([r["ratio_lower"] for r in rows]) * train
    upper = np.array([r["ratio_upper"] for r in rows]) * train
    figure = Figure(figsize=(max(5, 0.5 * len(rows) + 2), 3.5))
    axis = figure.subplots()
    axis.bar(x - 0.2, train, 0.4, label="training share", color="C7")
    axis.bar(x + 0.2, gen, 0.4, yerr=[gen - lower, upper - gen], capsize=2, label="generated share", color="C0")
    axis.set_xticks(x, [names[r["class"]] for r in rows])
    axis.set_ylabel("share")
    axis.set_title(f"class balance: chi-square p = {report['chi_square']['p_value']:.2g}")
    axis.legend(fontsize=8)
    return figure_png(figure)
