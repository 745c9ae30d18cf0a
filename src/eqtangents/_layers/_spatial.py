r"""Sliding-window arithmetic shared by convolutions and pooling.

One spatial axis of size $n$ seen through a window of $k$ taps with stride $s$,
dilation $d$ and padding $(l, h)$ has $n' = \lfloor (n + l + h - (k - 1) d - 1)
/ s \rfloor + 1$ outputs; output $p$ reads the (padded) inputs
$s p + i d - l$, $i = 0, \dots, k - 1$.

Covariances of convolutions and pooling are separable over spatial axes. For
each axis, with $C$ the covariance on an interleaved pair of axes $(t, t')$:

- a convolution shares its filter, so only equal taps meet,
  $C'[p, p'] = \frac{1}{k}\sum_i C[s p + i d - l,\ s p' + i d - l]$
  (`shared_window_sum` on the pair, or on the single axis of a spatial
  diagonal);
- pooling sums every pair of taps, which factorises into the same window sum
  applied to $t$ and then to $t'$ (`pool_axis` on each axis).

Padding is `"VALID"` (none), `"SAME"` (zeros, split as `jax.lax` does: the low
side gets half the total, rounded down) or `"CIRCULAR"` (the `"SAME"` amounts,
filled by wrapping around the axis).
"""

from __future__ import annotations

import functools
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array

Padding = Literal["VALID", "SAME", "CIRCULAR"]
Normalization = Literal["sum", "window", "edges"]
_PADDINGS = ("VALID", "SAME", "CIRCULAR")


def check_padding(layer: str, padding: str) -> str:
    """Validates a padding name; returns it in upper case."""
    if not isinstance(padding, str) or padding.upper() not in _PADDINGS:
        raise ValueError(
            f"{layer}: `padding` must be one of {_PADDINGS}, got {padding!r}."
        )
    return padding.upper()


def check_ints(layer: str, name: str, value) -> int | tuple[int, ...]:
    """Validates an int or a tuple of positive ints (a per-axis window setting)."""
    items = value if isinstance(value, (tuple, list)) else (value,)
    if len(items) == 0 or not all(
        isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v > 0
        for v in items
    ):
        raise ValueError(
            f"{layer}: `{name}` must be a positive integer or a non-empty tuple of "
            f"them, got {value!r}."
        )
    if isinstance(value, (tuple, list)):
        return tuple(int(v) for v in value)
    return int(value)


def per_axis(layer: str, name: str, value, n_spatial: int) -> tuple[int, ...]:
    """Expands an int to every spatial axis; checks a tuple's length."""
    if isinstance(value, int):
        return (value,) * n_spatial
    if len(value) != n_spatial:
        raise ValueError(
            f"{layer}: `{name}={value}` is for {len(value)} spatial "
            f"dimension{'s' if len(value) != 1 else ''}, but the input has "
            f"{n_spatial}. Give one entry per spatial axis of the input "
            "`(C, *spatial)`, or an int for all of them."
        )
    return value


def pad_amounts(
    size: int, window: int, stride: int, dilation: int, padding: str
) -> tuple[int, int]:
    """Low and high padding of one axis (the amounts of `jax.lax`'s `"SAME"`)."""
    if padding == "VALID":
        return 0, 0
    span = (window - 1) * dilation + 1
    out = -(-size // stride)
    total = max((out - 1) * stride + span - size, 0)
    return total // 2, total - total // 2


def output_size(
    size: int, window: int, stride: int, dilation: int, padding: str
) -> int:
    """Number of window positions along one axis (`< 1` if the window is too big)."""
    low, high = pad_amounts(size, window, stride, dilation, padding)
    span = (window - 1) * dilation + 1
    return (size + low + high - span) // stride + 1


def check_fits(
    layer: str, spatial: tuple[int, ...], windows, strides, dilations, padding: str
) -> tuple[int, ...]:
    """Output spatial shape; raises if a `"VALID"` window exceeds its axis."""
    out = []
    for axis, (n, k, s, d) in enumerate(zip(spatial, windows, strides, dilations)):
        size = output_size(n, k, s, d, padding)
        if size < 1:
            span = (k - 1) * d + 1
            raise ValueError(
                f"{layer}: the window spans {span} positions along spatial axis "
                f"{axis}, but the input has only {n} there (spatial shape "
                f"{spatial}) and `padding='VALID'`. Use a smaller `kernel_size`, "
                "or `padding='SAME'` or `'CIRCULAR'`."
            )
        out.append(size)
    return tuple(out)


def wrap_axis(x: Array, axis: int, low: int, high: int) -> Array:
    """Circular padding of one axis: `low` entries from its end before it,
    `high` from its start after it (repeating if they exceed its size)."""
    return pad_axes(x, (axis,), low, high, "CIRCULAR")


def pad_axes(x: Array, axes: tuple[int, ...], low: int, high: int, padding: str):
    """`x` with each of `axes` padded by zeros or circularly (from slices, not a
    gather, which is far slower on CPUs)."""
    widths = [(0, 0)] * x.ndim
    for axis in axes:
        widths[axis] = (low, high)
    return jnp.pad(x, widths, mode="wrap" if padding == "CIRCULAR" else "constant")


def taps(
    size: int, window: int, stride: int, dilation: int, padding: str
) -> tuple[np.ndarray, np.ndarray | None]:
    """Input index read by each tap at each window position, `(window, out)`,
    and where it falls inside the axis (`None` when it always does).

    Indices of zero padding are clipped into range and masked out; circular
    padding wraps them around.
    """
    low, _ = pad_amounts(size, window, stride, dilation, padding)
    out = output_size(size, window, stride, dilation, padding)
    index = stride * np.arange(out)[None, :] + dilation * np.arange(window)[:, None]
    index = index - low
    if padding == "CIRCULAR":
        return index % size, None
    valid = (index >= 0) & (index < size)
    return np.clip(index, 0, size - 1), None if valid.all() else valid


def shared_window_sum(
    x: Array,
    axes: tuple[int, ...],
    window: int,
    stride: int,
    dilation: int,
    padding: str,
) -> Array:
    r"""Sums a window over `axes` with the same tap on each of them.

    $y[p_1, p_2, \ldots] = \sum_i x[s p_1 + i d - l,\ s p_2 + i d - l, \ldots]$,
    each axis padded as `padding` says (all `axes` have the same size). Each tap
    is a strided slice of the padded `x`, read in one fused pass.
    """
    size = x.shape[axes[0]]
    low, high = pad_amounts(size, window, stride, dilation, padding)
    out = output_size(size, window, stride, dilation, padding)
    # Materialised once: fused into every tap, the producers of `x` (and, layer
    # after layer, theirs) would be recomputed for each of them.
    x = jax.lax.optimization_barrier(pad_axes(x, axes, low, high, padding))
    total = None
    for i in range(window):
        term = x
        for axis in axes:
            start = i * dilation
            term = jax.lax.slice_in_dim(
                term, start, start + (out - 1) * stride + 1, stride, axis=axis
            )
        total = term if total is None else total + term
    return total


def edge_counts(size: int, window: int, stride: int, padding: str) -> np.ndarray:
    """How many taps of each window position fall inside the (unpadded) axis."""
    index, valid = taps(size, window, stride, 1, padding)
    if valid is None:
        return np.full(index.shape[1:], window)
    return valid.sum(axis=0)


def pool_axis(
    x: Array, axis: int, window: int, stride: int, padding: str, norm: Normalization
) -> Array:
    """Window sum along one axis, divided by the window size (`"window"`), by the
    number of taps inside the axis (`"edges"`), or not at all (`"sum"`)."""
    size = x.shape[axis]
    y = shared_window_sum(x, (axis,), window, stride, 1, padding)
    if norm == "sum":
        return y
    if norm == "window":
        return y / window
    counts = edge_counts(size, window, stride, padding)
    shape = [1] * y.ndim
    shape[axis] = counts.shape[0]
    return y / jnp.asarray(counts.reshape(shape), dtype=y.dtype)


@functools.partial(
    jax.jit,
    static_argnames=(
        "batch_ndim",
        "diagonal",
        "windows",
        "strides",
        "dilations",
        "padding",
    ),
)
def conv_covariance(
    cov: Array,
    batch_ndim: int,
    diagonal: bool,
    windows: tuple[int, ...],
    strides: tuple[int, ...],
    dilations: tuple[int, ...],
    padding: str,
) -> Array:
    r"""Covariance of a shared-filter window average, axis by axis.

    Maps $C$ to $L C$ with $(L C)[p, p'] = \frac{1}{|w|}\sum_{i \in w}
    C[s p + i d - l, s p' + i d - l]$ over the filter taps $w$. `cov` has
    `batch_ndim` leading axes, then interleaved pairs of spatial axes, or one
    axis per spatial dimension when `diagonal`.
    """
    for i, (k, s, d) in enumerate(zip(windows, strides, dilations)):
        if diagonal:
            axes = (batch_ndim + i,)
        else:
            axes = (batch_ndim + 2 * i, batch_ndim + 2 * i + 1)
        cov = shared_window_sum(cov, axes, k, s, d, padding) / k
    return cov


@functools.partial(
    jax.jit, static_argnames=("batch_ndim", "windows", "strides", "padding", "norm")
)
def pool_covariance(
    cov: Array,
    batch_ndim: int,
    windows: tuple[int, ...],
    strides: tuple[int, ...],
    padding: str,
    norm: Normalization,
) -> Array:
    r"""Covariance of a pooling layer: the 1-D pool applied to both axes of each
    interleaved pair, $C' = P C P^\top$ per spatial dimension."""
    for i, (k, s) in enumerate(zip(windows, strides)):
        for axis in (batch_ndim + 2 * i, batch_ndim + 2 * i + 1):
            cov = pool_axis(cov, axis, k, s, padding, norm)
    return cov
