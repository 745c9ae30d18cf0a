"""Figures of one kernel matrix: heat map and eigenvalue spectrum."""

from __future__ import annotations

from typing import Any

import numpy as np
from jaxtyping import ArrayLike

from ._axes import axes_or_new


def _matrix(k: ArrayLike, where: str, square: bool = False) -> np.ndarray:
    k = np.asarray(k)
    if k.ndim != 2 or (square and k.shape[0] != k.shape[1]):
        need = "a square (N, N)" if square else "an (N1, N2)"
        raise ValueError(
            f"{where}: needs {need} kernel matrix, got shape {k.shape}; pass "
            "`get='nngp'` or `get='ntk'` for one array, and trace or index "
            "any output or spatial axes first."
        )
    if not np.all(np.isfinite(k)):
        raise ValueError(f"{where}: the kernel has NaN or infinite entries.")
    return k


def kernel_heatmap(
    k: ArrayLike,
    ax: Any = None,
    *,
    title: str | None = None,
    cmap: str = "viridis",
    colorbar: bool = True,
):
    r"""A kernel matrix $K_{ij}$ as an image, row $i$ down and column $j$ across.

    **Arguments:**

    - `k`: an `(N1, N2)` kernel, e.g. `model.kernel(x1, x2, get="ntk")`.
    - `ax`: matplotlib axes to draw on; a new figure's when `None`.
    - `title`, `cmap`, `colorbar`: the title, colour map and whether to add a
      colour bar.

    **Returns:**

    The axes.

    **Example:**

    ```pycon
    >>> x = jnp.linspace(-1.0, 1.0, 20)[:, None]
    >>> model = et.Serial(et.Dense(512, b_std=0.1), et.Relu(), et.Dense(1, b_std=0.1))
    >>> ax = et.plot.kernel_heatmap(model.kernel(x, None, "ntk"), title="NTK")
    >>> ax.get_title(), ax.images[0].get_array().shape
    ('NTK', (20, 20))
    ```
    """
    k = _matrix(k, "kernel_heatmap")
    ax = axes_or_new(ax)
    image = ax.imshow(k, cmap=cmap, interpolation="nearest")
    if colorbar:
        ax.figure.colorbar(image, ax=ax)
    ax.set_xlabel("$j$")
    ax.set_ylabel("$i$")
    if title is not None:
        ax.set_title(title)
    return ax


def eigenvalue_spectrum(
    k: ArrayLike,
    ax: Any = None,
    *,
    normalize: bool = True,
    label: str | None = None,
):
    r"""The eigenvalues $\lambda_1 \ge \lambda_2 \ge \dots$ of a symmetric kernel
    against their rank, on log-log axes.

    The spectrum says how fast gradient descent learns each eigendirection (at
    rate $\eta\lambda_i/N$ for the NTK) and how well-conditioned
    `predict` will be. Eigenvalues at or below zero (round-off) are left out.

    **Arguments:**

    - `k`: an `(N, N)` symmetric kernel, e.g. `model.kernel(x, None, get="ntk")`.
    - `ax`: matplotlib axes to draw on; a new figure's when `None`.
    - `normalize`: divide by $\lambda_1$, so spectra of different kernels share
      a scale.
    - `label`: the legend entry (call `ax.legend()` to show it).

    **Returns:**

    The axes.

    **Example:**

    ```pycon
    >>> x = jnp.linspace(-1.0, 1.0, 20)[:, None]
    >>> model = et.Serial(et.Dense(512, b_std=0.1), et.Relu(), et.Dense(1, b_std=0.1))
    >>> ntk = model.kernel(x, None, "ntk")
    >>> ax = et.plot.eigenvalue_spectrum(ntk, label="NTK")
    >>> ranks, values = ax.lines[0].get_data()
    >>> float(values[0]), bool(np.all(np.diff(values) <= 0))   # normalized, descending
    (1.0, True)
    ```
    """
    k = _matrix(k, "eigenvalue_spectrum", square=True)
    if not np.allclose(k, k.T, rtol=1e-5, atol=1e-6 * np.abs(k).max()):
        raise ValueError(
            "eigenvalue_spectrum: the kernel is not symmetric; pass k(x, x) "
            "(x2=None), not a kernel between two different sets of inputs."
        )
    eigenvalues = np.linalg.eigvalsh((k + k.T) / 2)[::-1]
    if normalize:
        eigenvalues = eigenvalues / eigenvalues[0]
    rank = np.arange(1, len(eigenvalues) + 1)
    positive = eigenvalues > 0
    ax = axes_or_new(ax)
    ax.loglog(rank[positive], eigenvalues[positive], ".-", label=label)
    ax.set_xlabel("rank $i$")
    ax.set_ylabel(r"$\lambda_i / \lambda_1$" if normalize else r"$\lambda_i$")
    return ax
