"""Figures of predictions: mean with bands, and loss against training time."""

from __future__ import annotations

from typing import Any

import numpy as np
from jaxtyping import ArrayLike

from ._axes import axes_or_new


def prediction_bands(
    x: ArrayLike,
    mean: ArrayLike,
    covariance: ArrayLike,
    ax: Any = None,
    *,
    n_std: float = 2.0,
    label: str | None = None,
    color: str | None = None,
):
    r"""Predictive means $\mu(x)$ as a line, with the band
    $\mu(x) \pm n\,\sigma(x)$ shaded, against a one-dimensional input $x$.

    **Arguments:**

    - `x`: `(N,)` positions of the test points (sorted here).
    - `mean`: `(N,)` or `(N, 1)` means, e.g. `et.predict`'s `Gaussian.mean`.
    - `covariance`: the `(N, N)` covariance (its diagonal is used) or `(N,)`
      variances; negative ones from round-off (down to -1% of the largest)
      are drawn as zero.
    - `ax`: matplotlib axes to draw on; a new figure's when `None`.
    - `n_std`: the band's half-width in standard deviations.
    - `label`, `color`: the line's legend entry and colour.

    **Returns:**

    The axes.

    **Example:**

    ```pycon
    >>> x = jnp.linspace(-1.0, 1.0, 20)[:, None]
    >>> model = et.Serial(et.Dense(512, b_std=0.1), et.Relu(), et.Dense(1, b_std=0.1))
    >>> x_train, y_train = x[::4], jnp.sin(3 * x[::4])
    >>> predictor = et.predict.gradient_descent_mse_ensemble(
    ...     model.kernel, x_train, y_train, diag_reg=1e-4
    ... )
    >>> mean, cov = predictor(None, x, "ntk", compute_cov=True)
    >>> ax = et.plot.prediction_bands(x[:, 0], mean, cov, label="NTK")
    >>> len(ax.lines), len(ax.collections)                     # the mean, the band
    (1, 1)
    ```
    """
    x = np.asarray(x)
    mean = np.asarray(mean)
    covariance = np.asarray(covariance)
    n = x.shape[0]
    if x.ndim != 1 or mean.reshape(-1).shape != (n,):
        raise ValueError(
            f"prediction_bands: needs x of shape (N,) and mean of shape (N,) or "
            f"(N, 1), got {x.shape} and {mean.shape}; plot one output at a time."
        )
    if covariance.shape == (n, n):
        variance = np.diagonal(covariance)
    elif covariance.reshape(-1).shape == (n,):
        variance = covariance.reshape(-1)
    else:
        raise ValueError(
            f"prediction_bands: needs an (N, N) covariance or (N,) variances for "
            f"N = {n}, got shape {covariance.shape}."
        )
    # Round-off in a covariance like K** - K* A^-1 K*^T leaves variances near
    # zero slightly negative: they are drawn as zero. Negative variances above
    # 1% of the largest one point to a broken covariance instead.
    if -variance.min() > 0.01 * max(variance.max(), 0.0):
        raise ValueError(
            "prediction_bands: the covariance has negative variances beyond "
            "round-off; check `diag_reg` and the kernel it came from."
        )
    order = np.argsort(x)
    x, mean = x[order], mean.reshape(-1)[order]
    std = np.sqrt(np.maximum(variance[order], 0))
    ax = axes_or_new(ax)
    (line,) = ax.plot(x, mean, label=label, color=color)
    ax.fill_between(
        x, mean - n_std * std, mean + n_std * std, color=line.get_color(), alpha=0.25
    )
    return ax


def _mse(f: np.ndarray, y: np.ndarray, where: str) -> np.ndarray:
    if f.shape[1:] != y.shape:
        raise ValueError(
            f"loss_curves: {where} predictions have shape {f.shape}, but need "
            f"(T, *{y.shape}) for targets of shape {y.shape}: one prediction per "
            "time, as `et.predict` returns for an array of times."
        )
    return np.mean((f - y) ** 2, axis=tuple(range(1, f.ndim)))


def loss_curves(
    t: ArrayLike,
    f_train: ArrayLike,
    y_train: ArrayLike,
    f_test: ArrayLike | None = None,
    y_test: ArrayLike | None = None,
    ax: Any = None,
    *,
    label: str = "",
):
    r"""Mean squared error $\frac{1}{N}\sum_i \lVert f_t(x_i) - y_i\rVert^2 / K$
    of the train (and test) predictions against training time $t$, on log-log
    axes.

    **Arguments:**

    - `t`: `(T,)` training times (all positive for the log axis).
    - `f_train`, `y_train`: `(T, N, K)` predictions on the training set at each
      time and their `(N, K)` targets.
    - `f_test`, `y_test`: the same for a test set (optional).
    - `ax`: matplotlib axes to draw on; a new figure's when `None`.
    - `label`: prefix of the legend entries (`"<label> train"`, `"... test"`).

    **Returns:**

    The axes.

    **Example:**

    ```pycon
    >>> x = jnp.linspace(-1.0, 1.0, 20)[:, None]
    >>> model = et.Serial(et.Dense(512, b_std=0.1), et.Relu(), et.Dense(1, b_std=0.1))
    >>> x_train, y_train = x[::2], jnp.sin(3 * x[::2])
    >>> x_test, y_test = x[1::2], jnp.sin(3 * x[1::2])
    >>> ntk_train = model.kernel(x_train, None, "ntk")
    >>> predictor = et.predict.gradient_descent_mse(ntk_train, y_train)
    >>> ts = jnp.logspace(-1, 4, 50)
    >>> f_train, f_test = predictor(ts, 0.0, 0.0, model.kernel(x_test, x_train, "ntk"))
    >>> ax = et.plot.loss_curves(ts, f_train, y_train, f_test, y_test)
    >>> [line.get_label() for line in ax.lines]
    ['train', 'test']
    ```
    """
    t = np.asarray(t)
    if t.ndim != 1 or np.any(t <= 0):
        raise ValueError(
            "loss_curves: needs a 1-D array of positive times for the log axis, "
            f"got shape {t.shape}" + (" with t <= 0" if t.ndim == 1 else "") + "."
        )
    if (f_test is None) != (y_test is None):
        raise ValueError("loss_curves: pass both `f_test` and `y_test`, or neither.")
    series = [("train", f_train, y_train)]
    if f_test is not None:
        series.append(("test", f_test, y_test))
    ax = axes_or_new(ax)
    for name, f, y in series:
        f, y = np.asarray(f), np.asarray(y)
        if f.shape[:1] != t.shape:
            raise ValueError(
                f"loss_curves: {name} predictions have {f.shape[0]} times, "
                f"`t` has {t.shape[0]}."
            )
        ax.loglog(t, _mse(f, y, name), label=f"{label} {name}".strip())
    ax.set_xlabel("training time $t$")
    ax.set_ylabel("mean squared error")
    ax.legend()
    return ax
