"""matplotlib, imported on first use, and the axes to draw on."""

from __future__ import annotations

from typing import Any


def pyplot():
    """`matplotlib.pyplot`, or an ImportError that says how to install it."""
    try:
        import matplotlib.pyplot as plt
    except ImportError as error:
        raise ImportError(
            "eqtangents.plot needs matplotlib: pip install 'eqtangents[plot]'."
        ) from error
    return plt


def axes_or_new(ax: Any):
    """`ax`, or the axes of a new figure when `ax` is None."""
    if ax is not None:
        return ax
    _, ax = pyplot().subplots()
    return ax
