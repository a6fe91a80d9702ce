"""Fig. 7 of the IRS paper (Dombrowski et al.): distinct retrieved training images against samples drawn."""

from __future__ import annotations

from typing import Any

import numpy as np
from matplotlib.figure import Figure

from diffaudit.common.figures import figure_png
from diffaudit.metrics.early_rejection import Decision
from diffaudit.metrics.occupancy import occupancy_mean

CURVE_POINTS = 200


def rejection_boundary(rule: Any) -> tuple[np.ndarray, np.ndarray]:
    """Distinct counts at or below which the rule rejects: per look (spending, sequential), or from the duplicates
    bound."""
    if hasattr(rule, "schedule"):
        looks = rule.schedule
        return np.array([look["samples"] for look in looks]), np.array([look["threshold"] for look in looks])
    slack = rule.n_planned - rule.k_min  # duplicates that make n_planned - duplicates <= k_min
    samples = np.arange(max(1, slack), rule.n_planned + 1)
    return samples, samples - slack


def distinct_curve_png(trajectory: np.ndarray, rule: Any, stop: Decision | None) -> bytes:
    """Fig. 7: distinct images against samples drawn, the expectation at the target, the rule's boundary, the stop."""
    n_planned, s_d = rule.n_planned, rule.target_distinct
    figure = Figure(figsize=(7, 4.5))
    axis = figure.subplots()
    grid = np.unique(np.geomspace(1, n_planned, CURVE_POINTS).round().astype(int))
    axis.plot(
        grid, [occupancy_mean(int(n), rule.n_train) for n in grid], ":", color="grey", label="ideal (all N_train)"
    )
    axis.plot(
        grid, [occupancy_mean(int(n), s_d) for n in grid], "--", color="C2", label=f"expected at IRS_d = {rule.target}"
    )
    boundary_x, boundary_y = rejection_boundary(rule)
    steps = hasattr(rule, "schedule")  # thresholds hold from one look to the next
    label = f"rejection boundary ({rule.name})"
    axis.plot(boundary_x, boundary_y, color="C3", label=label, drawstyle="steps-post" if steps else "default")
    axis.fill_between(boundary_x, 1, boundary_y, color="C3", alpha=0.1, step="post" if steps else None)
    axis.plot(np.arange(1, trajectory.size + 1), trajectory, color="C0", lw=2, label="this model")
    if stop is not None and stop.reject:
        axis.plot(
            [stop.samples_drawn], [stop.distinct], "X", color="C3", ms=12, label=f"rejected at {stop.samples_drawn}"
        )
    axis.set_xscale("log")  # log-log: an early stop stays visible beside the planned total
    axis.set_yscale("log")
    axis.set_xlim(1, n_planned)
    axis.set_ylim(1, None)
    axis.set_xlabel("samples drawn")
    axis.set_ylabel("distinct nearest training images")
    axis.set_title(f"N_train = {rule.n_train}, {n_planned} samples planned, alpha_e = {rule.alpha_e}")
    axis.legend(loc="upper left", fontsize=8)
    return figure_png(figure)
