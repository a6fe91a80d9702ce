"""The one way a matplotlib figure becomes a PNG (Agg canvas, no pyplot state)."""

from __future__ import annotations

import io

from matplotlib.figure import Figure

DPI = 100


def figure_png(figure: Figure) -> bytes:
    """The figure as PNG at DPI; laid out tightly unless the figure has its own layout engine (constrained)."""
    if figure.get_layout_engine() is None:
        figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI)
    return buffer.getvalue()
