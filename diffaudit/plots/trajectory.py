"""A training run's headline numbers over its steps, one panel each, with the change points marked."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from matplotlib.figure import Figure

from diffaudit.common.figures import figure_png
from diffaudit.metrics.trajectory import Point

PANEL_HEIGHT = 2.2
MARK_STYLES = {"copying starts": "C3", "diversity drops": "C1"}


def trajectory_png(series: Mapping[str, Sequence[Point]], marks: Mapping[str, int | None]) -> bytes:
    """One panel per headline number against the training step (intervals as error bars); each change point in
    `marks` ({label: step}, e.g. 'copying starts') a vertical line through every panel."""
    names = sorted(series) or ["no finished evaluations"]
    figure = Figure(figsize=(7, PANEL_HEIGHT * len(names)))
    axes = figure.subplots(len(names), 1, sharex=True, squeeze=False)[:, 0]
    for axis, name in zip(axes, names, strict=True):
        points = series.get(name, [])
        steps = [p.step for p in points]
        values = [p.value for p in points]
        axis.plot(steps, values, "o-", color="C0")
        bounded = [p for p in points if p.lower is not None and p.upper is not None]
        if bounded:
            below = [p.value - p.lower for p in bounded if p.lower is not None]
            above = [p.upper - p.value for p in bounded if p.upper is not None]
            axis.errorbar([p.step for p in bounded], [p.value for p in bounded], yerr=[below, above], fmt="none")
        for label, step in marks.items():
            if step is not None:
                axis.axvline(step, color=MARK_STYLES.get(label, "C2"), ls="--", label=f"{label} (step {step})")
        axis.set_ylabel(name)
        axis.grid(alpha=0.3)
    if any(step is not None for step in marks.values()):
        axes[0].legend(loc="best", fontsize="small")
    axes[-1].set_xlabel("training step")
    return figure_png(figure)
