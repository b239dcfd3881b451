"""Figures without pyplot: no global backend is switched, so importing a plotting module
never changes how a notebook shows its own figures."""

from __future__ import annotations

from typing import Any

from matplotlib.figure import Figure


def subplots(nrows: int = 1, ncols: int = 1, **kwargs: Any) -> tuple[Figure, Any]:
    """`pyplot.subplots` for a standalone figure; save it with `fig.savefig(path)`."""
    figure = Figure(figsize=kwargs.pop("figsize", None))
    return figure, figure.subplots(nrows, ncols, **kwargs)
