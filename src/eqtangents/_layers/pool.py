r"""Pooling and flattening: linear maps over spatial positions, without weights.

Pooling averages or sums each channel over a window of positions, so the
outputs stay Gaussian when the inputs are; its kernel rule mixes all pairs of
positions and needs full spatial covariances:
$K'[p, p'] = \sum_{i, i'} a_{p i} a_{p' i'} K[i, i']$ with $a$ the pooling
weights.

With masks (`mask_constant`), masked inputs are zeros: windowed pooling keeps
its normalization and masks an output where the central tap of its window is
masked; global pooling masks an example only if all its positions are, and
`GlobalAvgPool` averages over the unmasked positions alone.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, PRNGKeyArray

from .._kernel import Kernel, spatial_diagonal
from .._layer import AbstractLayer, Layout, Shape, as_shape
from .._mask import center_taps, check_mask, side2, unmasked_counts
from ._spatial import (
    Normalization,
    Padding,
    check_fits,
    check_ints,
    check_padding,
    per_axis,
    pool_axis,
    pool_covariance,
)


def _spatial_input(layer: AbstractLayer, input_shape) -> Shape:
    shape = as_shape(input_shape, layer)
    if len(shape) < 2:
        raise ValueError(
            f"{type(layer).__name__} pools over spatial axes, but its input has "
            f"per-example shape {shape} without any (expected `(C, *spatial)`)."
        )
    return shape


def _require_full(layer: AbstractLayer, k: Kernel) -> None:
    if k.diagonal_spatial and k.n_spatial > 0:
        raise ValueError(
            f"{type(layer).__name__} mixes spatial positions, so it needs full "
            "spatial covariances, but its input kernel holds only their diagonal. "
            "Compute the kernel from the inputs with `model.kernel(x1, x2)` (the "
            "layout is chosen for the whole network), not from a kernel built "
            "with `diagonal_spatial=True`."
        )


def _map(k: Kernel, fn) -> dict:
    """Applies `fn(cov, batch_ndim)` to the four covariances of `k`."""
    return dict(
        nngp=fn(k.nngp, 2),
        ntk=None if k.ntk is None else fn(k.ntk, 2),
        cov1=fn(k.cov1, 1),
        cov2=None if k.cov2 is None else fn(k.cov2, 1),
    )


class _Window(NamedTuple):
    """Validated pooling geometry."""

    windows: tuple[int, ...]
    strides: tuple[int, ...]
    out: tuple[int, ...]


def _geometry(layer, kernel_size, stride, padding, input_shape) -> _Window:
    name = type(layer).__name__
    shape = _spatial_input(layer, input_shape)
    n = len(shape) - 1
    windows = per_axis(name, "kernel_size", kernel_size, n)
    strides = per_axis(name, "stride", 1 if stride is None else stride, n)
    out = check_fits(name, shape[1:], windows, strides, (1,) * n, padding)
    return _Window(windows, strides, out)


def _pool_forward(x, geometry: _Window, padding: str, norm: Normalization):
    for i, (k, s) in enumerate(zip(geometry.windows, geometry.strides)):
        x = pool_axis(x, 1 + i, k, s, padding, norm)
    return x


def _pool_mask(layer, mask, input_shape, kernel_size, stride, padding) -> Array:
    g = _geometry(layer, kernel_size, stride, padding, input_shape)
    ones = (1,) * len(g.windows)
    return center_taps(mask, g.windows, g.strides, ones, padding)


def _pool_propagate(layer, k: Kernel, kernel_size, stride, padding, norm) -> Kernel:
    _require_full(layer, k)
    g1 = _geometry(layer, kernel_size, stride, padding, k.shape1)
    g2 = _geometry(layer, kernel_size, stride, padding, k.shape2)

    def pool(cov, batch_ndim):
        return pool_covariance(cov, batch_ndim, g1.windows, g1.strides, padding, norm)

    return k.replace(
        **_map(k, pool), shape1=k.shape1[:1] + g1.out, shape2=k.shape2[:1] + g2.out
    )


class AvgPool(AbstractLayer):
    r"""Average of each channel over a sliding window of positions.

    $y_c[p] = \frac{1}{m_p}\sum_{i \in w} x_c[s p + i - l]$ with $m_p$ the
    window size, or, with `normalize_edges=True`, the number of taps inside the
    input (they differ only at the edges with `padding="SAME"`). The kernel is
    the same average applied to both positions of the covariance,
    $K'[p, p'] = \frac{1}{m_p m_{p'}}\sum_{i, i'} K[s p + i - l, s p' + i' - l]$.

    **Arguments:**

    - `kernel_size`: window shape; an int applies to every spatial axis.
    - `stride`: step between windows; `None` (the default, as in Neural
      Tangents) means stride 1, not the window size as in `equinox.nn`.
    - `padding`: `"VALID"`, `"SAME"` or `"CIRCULAR"` (see `et.Conv`).
    - `normalize_edges`: divide by the number of taps inside the input instead
      of the window size.

    Masked inputs (`mask_constant`) are zeros and still count in the
    normalization, as in Neural Tangents; an output is masked when the central
    tap of its window is.

    **Example:**

    ```pycon
    >>> x = jax.random.normal(jax.random.key(0), (2, 3, 8, 8))   # (N, C, H, W)
    >>> pooled = et.Serial(et.AvgPool((2, 2), stride=(2, 2)), et.Flatten())
    >>> blocks = x.reshape(2, 3, 4, 2, 4, 2).mean((3, 5))          # 2x2 means
    >>> flat = blocks.reshape(2, -1)
    >>> k = pooled.kernel(x, None, "nngp")
    >>> bool(jnp.allclose(k, flat @ flat.T / flat.shape[1]))
    True
    ```
    """

    kernel_size: int | tuple[int, ...] = eqx.field(static=True)
    stride: int | tuple[int, ...] | None = eqx.field(static=True)
    padding: Padding = eqx.field(static=True)
    normalize_edges: bool = eqx.field(static=True)

    def __init__(
        self,
        kernel_size: int | tuple[int, ...],
        stride: int | tuple[int, ...] | None = None,
        padding: str = "VALID",
        normalize_edges: bool = False,
    ):
        self.kernel_size = check_ints("AvgPool", "kernel_size", kernel_size)
        self.stride = (
            None if stride is None else check_ints("AvgPool", "stride", stride)
        )
        self.padding = check_padding("AvgPool", padding)
        self.normalize_edges = bool(normalize_edges)

    @property
    def _norm(self) -> Normalization:
        return "edges" if self.normalize_edges else "window"

    def output_shape(self, input_shape: Shape) -> Shape:
        g = _geometry(self, self.kernel_size, self.stride, self.padding, input_shape)
        return input_shape[:1] + g.out

    def __call__(
        self, x: Float[Array, "c *spatial"], *, key: PRNGKeyArray | None = None
    ) -> Float[Array, "c *spatial_out"]:
        g = _geometry(self, self.kernel_size, self.stride, self.padding, x.shape)
        return _pool_forward(x, g, self.padding, self._norm)

    def output_mask(
        self, mask: Bool[Array, "*spatial"], input_shape: Shape
    ) -> Bool[Array, "*spatial_out"]:
        return _pool_mask(
            self, mask, input_shape, self.kernel_size, self.stride, self.padding
        )

    def needs_full_spatial(self, output_full: Layout) -> Layout:
        return True

    def propagate(self, k: Kernel) -> Kernel:
        return _pool_propagate(
            self, k, self.kernel_size, self.stride, self.padding, self._norm
        )


class SumPool(AbstractLayer):
    r"""Sum of each channel over a sliding window of positions.

    $y_c[p] = \sum_{i \in w} x_c[s p + i - l]$ and
    $K'[p, p'] = \sum_{i, i'} K[s p + i - l, s p' + i' - l]$.

    **Arguments:**

    - `kernel_size`: window shape; an int applies to every spatial axis.
    - `stride`: step between windows; `None` (the default, as in Neural
      Tangents) means stride 1.
    - `padding`: `"VALID"`, `"SAME"` or `"CIRCULAR"` (see `et.Conv`).

    Masked inputs (`mask_constant`) are zeros; an output is masked when the
    central tap of its window is.

    **Example:**

    ```pycon
    >>> x = jax.random.normal(jax.random.key(0), (2, 3, 8, 8))   # (N, C, H, W)
    >>> pooled = et.Serial(et.SumPool((2, 2), stride=(2, 2)), et.Flatten())
    >>> blocks = x.reshape(2, 3, 4, 2, 4, 2).sum((3, 5))           # 2x2 sums
    >>> flat = blocks.reshape(2, -1)
    >>> k = pooled.kernel(x, None, "nngp")
    >>> bool(jnp.allclose(k, flat @ flat.T / flat.shape[1]))
    True
    ```
    """

    kernel_size: int | tuple[int, ...] = eqx.field(static=True)
    stride: int | tuple[int, ...] | None = eqx.field(static=True)
    padding: Padding = eqx.field(static=True)

    def __init__(
        self,
        kernel_size: int | tuple[int, ...],
        stride: int | tuple[int, ...] | None = None,
        padding: str = "VALID",
    ):
        self.kernel_size = check_ints("SumPool", "kernel_size", kernel_size)
        self.stride = (
            None if stride is None else check_ints("SumPool", "stride", stride)
        )
        self.padding = check_padding("SumPool", padding)

    def output_shape(self, input_shape: Shape) -> Shape:
        g = _geometry(self, self.kernel_size, self.stride, self.padding, input_shape)
        return input_shape[:1] + g.out

    def __call__(
        self, x: Float[Array, "c *spatial"], *, key: PRNGKeyArray | None = None
    ) -> Float[Array, "c *spatial_out"]:
        g = _geometry(self, self.kernel_size, self.stride, self.padding, x.shape)
        return _pool_forward(x, g, self.padding, "sum")

    def output_mask(
        self, mask: Bool[Array, "*spatial"], input_shape: Shape
    ) -> Bool[Array, "*spatial_out"]:
        return _pool_mask(
            self, mask, input_shape, self.kernel_size, self.stride, self.padding
        )

    def needs_full_spatial(self, output_full: Layout) -> Layout:
        return True

    def propagate(self, k: Kernel) -> Kernel:
        return _pool_propagate(
            self, k, self.kernel_size, self.stride, self.padding, "sum"
        )


def _global(layer, k: Kernel, average: bool) -> Kernel:
    """Sums (or averages, over the unmasked positions) covariances over all
    pairs of positions."""
    _require_full(layer, k)
    if k.n_spatial == 0:
        return k
    size = math.prod(k.shape1[1:])
    dtype = k.nngp.dtype
    n1 = unmasked_counts(k.mask1, size, dtype)
    n2 = unmasked_counts(side2(k), size, dtype)

    def pool(cov, count):
        total = jnp.sum(cov, axis=tuple(range(cov.ndim - k.n_spatial * 2, cov.ndim)))
        return total / count if average else total

    if k.diagonal_batch or not (k.mask1 is not None or side2(k) is not None):
        cross = n1 * n1
    else:
        cross = jnp.outer(n1, n2)

    # Flat kernels use the layout of flat inputs (`diagonal_spatial=True`).
    return k.replace(
        nngp=pool(k.nngp, cross),
        ntk=None if k.ntk is None else pool(k.ntk, cross),
        cov1=pool(k.cov1, n1 * n1),
        cov2=None if k.cov2 is None else pool(k.cov2, n2 * n2),
        shape1=k.shape1[:1],
        shape2=k.shape2[:1],
        diagonal_spatial=True,
    )


def _all_masked(mask: Bool[Array, "*spatial"]) -> Bool[Array, ""]:
    """A flat output is masked when every position of its input is."""
    return jnp.all(mask)


class GlobalAvgPool(AbstractLayer):
    r"""Average of each channel over all positions: `(C, *spatial) -> (C,)`.

    $K' = \frac{1}{|S|^2}\sum_{p, p'} K[p, p']$.

    With masks (`mask_constant`, or `mask=` in the forward pass, `True` at the
    padded positions of the example) the average runs over the unmasked
    positions alone: $y = \frac{1}{|U|}\sum_{p \in U} x[p]$ and
    $K'_{12} = \frac{1}{|U_1||U_2|}\sum_{p \in U_1, p' \in U_2} K[p, p']$,
    as in Neural Tangents (a fully masked example averages to zero, and its
    output is masked).

    **Example:**

    ```pycon
    >>> x = jax.random.normal(jax.random.key(0), (2, 3, 8, 8))   # (N, C, H, W)
    >>> mean = x.mean((2, 3))                                    # (N, C)
    >>> k = et.GlobalAvgPool().kernel(x, None, "nngp")           # mean of K[p, p']
    >>> bool(jnp.allclose(k, mean @ mean.T / 3))
    True
    >>> model = et.Serial(et.Conv(32, (3, 3), padding="SAME"), et.Relu(),
    ...                   et.GlobalAvgPool(), et.Dense(10))
    >>> model.kernel(x, None, "ntk").shape
    (2, 2)
    ```
    """

    call_keywords = frozenset({"mask"})

    def output_shape(self, input_shape: Shape) -> Shape:
        return as_shape(input_shape, self)[:1]

    def __call__(
        self,
        x: Float[Array, "c *spatial"],
        *,
        key: PRNGKeyArray | None = None,
        mask: Bool[Array, "..."] | None = None,
    ) -> Float[Array, " c"]:
        axes = tuple(range(1, x.ndim))
        if mask is None:
            return jnp.mean(x, axis=axes)
        mask = check_mask("GlobalAvgPool", mask, x.shape)
        count = jnp.maximum(jnp.sum(~mask), 1).astype(x.dtype)
        return jnp.sum(jnp.where(mask, jnp.zeros((), x.dtype), x), axis=axes) / count

    def output_mask(self, mask: Bool[Array, "*spatial"], input_shape: Shape):
        return _all_masked(mask)

    def needs_full_spatial(self, output_full: Layout) -> Layout:
        return True

    def propagate(self, k: Kernel) -> Kernel:
        self.output_shape(k.shape1)
        return _global(self, k, average=True)


class GlobalSumPool(AbstractLayer):
    r"""Sum of each channel over all positions: `(C, *spatial) -> (C,)`.

    $K' = \sum_{p, p'} K[p, p']$. Masked positions (`mask_constant`) are zeros
    and add nothing; the output is masked when all positions are.

    **Example:**

    ```pycon
    >>> x = jax.random.normal(jax.random.key(0), (2, 3, 8, 8))   # (N, C, H, W)
    >>> total = x.sum((2, 3))                                    # (N, C)
    >>> k = et.GlobalSumPool().kernel(x, None, "nngp")           # sum of K[p, p']
    >>> bool(jnp.allclose(k, total @ total.T / 3))
    True
    ```
    """

    def output_shape(self, input_shape: Shape) -> Shape:
        return as_shape(input_shape, self)[:1]

    def __call__(
        self, x: Float[Array, "c *spatial"], *, key: PRNGKeyArray | None = None
    ) -> Float[Array, " c"]:
        return jnp.sum(x, axis=tuple(range(1, x.ndim)))

    def output_mask(self, mask: Bool[Array, "*spatial"], input_shape: Shape):
        return _all_masked(mask)

    def needs_full_spatial(self, output_full: Layout) -> Layout:
        return True

    def propagate(self, k: Kernel) -> Kernel:
        self.output_shape(k.shape1)
        return _global(self, k, average=False)


class Flatten(AbstractLayer):
    r"""All axes of one example in one: `(C, *spatial) -> (C \prod_j S_j,)`.

    Each output unit is one channel at one position, so a following layer sees
    the average over positions of the per-position kernels,
    $K' = \frac{1}{|S|}\sum_p K[p, p]$: only the spatial diagonal is needed.
    The output width $C \prod_j S_j$ is the fan-in of a following
    standard-parameterization `et.Dense`.

    The flattened units at different positions are not identically distributed,
    so the outputs no longer count as Gaussian: follow `Flatten` by an affine
    layer (`et.Dense`) before any nonlinearity. On flat inputs it does nothing.

    Masked positions (`mask_constant`) are zeros and still count in the
    average over positions (the following `Dense` has fan-in
    $C \prod_j S_j$); the flat output is masked when all positions are.

    **Example:**

    ```pycon
    >>> x = jax.random.normal(jax.random.key(0), (2, 3, 8, 8))   # (N, C, H, W)
    >>> flat = x.reshape(2, -1)                                  # (N, C H W)
    >>> k = et.Flatten().kernel(x, None, "nngp")                 # mean of K[p, p]
    >>> bool(jnp.allclose(k, flat @ flat.T / flat.shape[1]))
    True
    >>> et.Flatten().output_shape((3, 8, 8))
    (192,)
    ```
    """

    def output_shape(self, input_shape: Shape) -> Shape:
        return (math.prod(as_shape(input_shape, self)),)

    def __call__(
        self, x: Float[Array, "c *spatial"], *, key: PRNGKeyArray | None = None
    ) -> Float[Array, " features"]:
        return x.reshape(-1)

    def output_mask(self, mask: Bool[Array, "*spatial"], input_shape: Shape):
        return _all_masked(mask)

    def needs_full_spatial(self, output_full: Layout) -> Layout:
        return False

    def propagate(self, k: Kernel) -> Kernel:
        shape1, shape2 = self.output_shape(k.shape1), self.output_shape(k.shape2)
        if k.n_spatial == 0:
            return k

        def trace(cov, batch_ndim):
            if not k.diagonal_spatial:
                cov = spatial_diagonal(cov, batch_ndim)
            return jnp.mean(cov, axis=tuple(range(batch_ndim, cov.ndim)))

        return k.replace(
            **_map(k, trace),
            shape1=shape1,
            shape2=shape2,
            diagonal_spatial=True,
            is_gaussian=False,
        )
