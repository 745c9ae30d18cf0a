r"""Features of pooling and flattening: linear maps over spatial positions.

Average pooling is linear in the network's activations, and its kernel is the
same average applied to both positions of the covariance; averaging the
feature vectors reproduces it exactly. `Flatten` turns positions into
channels: the kernel of the flat output is the mean over positions of the
spatial diagonal, reproduced by concatenating the feature vectors of all
positions.
"""

from __future__ import annotations

import math
from typing import Literal

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, PRNGKeyArray

from .._layers._spatial import (
    check_fits,
    check_ints,
    check_padding,
    per_axis,
    pool_axis,
)
from ._conv import (
    Sketch,
    apply_sketch,
    check_sketch_dim,
    check_spatial,
    draw_sketch,
    needs_widths,
    spatial_shape,
)
from ._features import (
    AbstractFeatureLayer,
    Features,
    FeatureShape,
    as_feature_shape,
    missing_projections,
)


class AvgPool(AbstractFeatureLayer):
    r"""Features of average pooling over a sliding window (mirrors
    `et.AvgPool`; exact).

    The feature vectors are averaged as the network's channels are,
    $\Phi'[p] = \frac{1}{m_p}\sum_{i \in w} \Phi[s p + i - l]$ (and likewise
    $\Psi'$), with $m_p$ the window size, or with `normalize_edges=True` the
    number of taps inside the input; zeros fill `"SAME"` padding. Then
    $\Phi'_1\Phi_2'^\top[p, p'] = \frac{1}{m_p m_{p'}}\sum_{i, i'}
    K[s p + i - l, s p' + i' - l]$, the kernel of `et.AvgPool`.

    **Arguments:**

    - `kernel_size`: window shape; an int applies to every spatial axis.
    - `stride`: step between windows; `None` means stride 1 (as `et.AvgPool`).
    - `padding`: `"VALID"`, `"SAME"` or `"CIRCULAR"`.
    - `normalize_edges`: divide by the number of taps inside the input instead
      of the window size.

    **Example:**

    ```pycon
    >>> x = jax.random.normal(jax.random.key(0), (2, 3, 6, 6))   # (N, C, H, W)
    >>> fmodel = et.features.Serial(
    ...     et.features.Conv((3, 3)),
    ...     et.features.AvgPool((2, 2), stride=(2, 2)),
    ...     et.features.Flatten(),
    ... ).init(jax.random.key(1), x.shape[1:])
    >>> nngp, ntk = et.features.kernel(fmodel(et.features.Features.from_inputs(x)))
    >>> k = et.Serial(
    ...     et.Conv(1, (3, 3)),
    ...     et.AvgPool((2, 2), stride=(2, 2)),
    ...     et.Flatten(),
    ... ).kernel(x, None)                                 # the same, exactly
    >>> bool(jnp.allclose(nngp, k.nngp)), bool(jnp.allclose(ntk, k.ntk))
    (True, True)
    ```
    """

    kernel_size: int | tuple[int, ...] = eqx.field(static=True)
    stride: int | tuple[int, ...] | None = eqx.field(static=True)
    padding: Literal["VALID", "SAME", "CIRCULAR"] = eqx.field(static=True)
    normalize_edges: bool = eqx.field(static=True)

    def __init__(
        self,
        kernel_size: int | tuple[int, ...],
        stride: int | tuple[int, ...] | None = None,
        padding: str = "VALID",
        normalize_edges: bool = False,
    ):
        name = "features.AvgPool"
        self.kernel_size = check_ints(name, "kernel_size", kernel_size)
        self.stride = None if stride is None else check_ints(name, "stride", stride)
        self.padding = check_padding(name, padding)
        self.normalize_edges = bool(normalize_edges)

    def _geometry(self, spatial: tuple[int, ...]):
        name = "features.AvgPool"
        n = len(spatial)
        windows = per_axis(name, "kernel_size", self.kernel_size, n)
        strides = per_axis(name, "stride", 1 if self.stride is None else self.stride, n)
        out = check_fits(name, spatial, windows, strides, (1,) * n, self.padding)
        return windows, strides, out

    def output_shape(self, input_shape) -> FeatureShape:
        shape = spatial_shape(self, input_shape)
        *_, out = self._geometry(shape.spatial)
        return shape._replace(spatial=out)

    def __call__(self, f: Features) -> Features:
        spatial = tuple(f.nngp_feat.shape[1:-1])
        check_spatial(self, spatial)
        windows, strides, _ = self._geometry(spatial)
        norm = "edges" if self.normalize_edges else "window"

        def pool(x):
            for i, (k, s) in enumerate(zip(windows, strides)):
                x = pool_axis(x, 1 + i, k, s, self.padding, norm)
            return x

        return f.replace(pool(f.nngp_feat), pool(f.ntk_feat))


class GlobalAvgPool(AbstractFeatureLayer):
    r"""Features of the average over all positions (mirrors `et.GlobalAvgPool`;
    exact): $\Phi' = \frac{1}{|S|}\sum_p \Phi[p]$, so that $\Phi'_1\Phi_2'^\top =
    \frac{1}{|S|^2}\sum_{p, p'} K[p, p']$, and likewise $\Psi'$. On flat

    **Example:**

    ```pycon
    >>> x = jax.random.normal(jax.random.key(0), (2, 3, 6, 6))   # (N, C, H, W)
    >>> fmodel = et.features.Serial(
    ...     et.features.Conv((3, 3), padding="CIRCULAR"),
    ...     et.features.GlobalAvgPool(),
    ...     et.features.Dense(),
    ... ).init(jax.random.key(1), x.shape[1:])
    >>> nngp, ntk = et.features.kernel(fmodel(et.features.Features.from_inputs(x)))
    >>> k = et.Serial(
    ...     et.Conv(1, (3, 3), padding="CIRCULAR"),
    ...     et.GlobalAvgPool(),
    ...     et.Dense(1),
    ... ).kernel(x, None)                                 # the same, exactly
    >>> bool(jnp.allclose(nngp, k.nngp)), bool(jnp.allclose(ntk, k.ntk))
    (True, True)
    ```
    features it does nothing, as `et.GlobalAvgPool` on flat inputs."""

    def output_shape(self, input_shape) -> FeatureShape:
        return as_feature_shape(input_shape, self)._replace(spatial=())

    def __call__(self, f: Features) -> Features:
        def pool(x):
            return jnp.mean(x, axis=tuple(range(1, x.ndim - 1)))

        return f.replace(pool(f.nngp_feat), pool(f.ntk_feat))


class Flatten(AbstractFeatureLayer):
    r"""Features of `et.Flatten`: positions become channels.

    A layer after `et.Flatten` sees the mean over positions of the spatial
    diagonal, $K' = \frac{1}{|S|}\sum_p K[p, p]$ (and likewise $\Theta'$),
    which the concatenated feature vectors of all positions reproduce exactly,

    $$\Phi' = \frac{1}{\sqrt{|S|}}\,\big[\Phi[p]\big]_{p \in S}, \qquad
      \Psi' = \frac{1}{\sqrt{|S|}}\,\big[\Psi[p]\big]_{p \in S},$$

    of width $|S| d$. With `sketch_dim=m` an independent random projection (an
    `SRHT`, or a `GaussianSketch` when $m$ exceeds the padded width) maps each
    of them to $m$ columns, unbiased, but with a variance of about
    $(K_{12}^2 + K_{11}K_{22})/m$ per entry that no average over positions
    reduces: on 8x8 images after a 1,024-feature `features.Relu` a sketch to
    $4m$ columns doubles the relative error of the kernel. The channel width
    recorded for a following standard-parameterization `features.Dense` is
    $C |S|$, as for `et.Flatten`. On flat features only the sketch (if any) is
    applied.

    **Arguments:**

    - `sketch_dim`: width of the NNGP and NTK features after the layer, or
      `None` for the exact, concatenated features.

    **Example:**

    ```pycon
    >>> x = jax.random.normal(jax.random.key(0), (2, 3, 6, 6))   # (N, C, H, W)
    >>> fmodel = et.features.Serial(
    ...     et.features.Conv((3, 3)),
    ...     et.features.Flatten(),
    ...     et.features.Dense(),
    ... ).init(jax.random.key(1), x.shape[1:])
    >>> nngp, ntk = et.features.kernel(fmodel(et.features.Features.from_inputs(x)))
    >>> k = et.Serial(
    ...     et.Conv(1, (3, 3)),
    ...     et.Flatten(),
    ...     et.Dense(1),
    ... ).kernel(x, None)                                 # the same, exactly
    >>> bool(jnp.allclose(nngp, k.nngp)), bool(jnp.allclose(ntk, k.ntk))
    (True, True)
    ```
    """

    sketch_dim: int | None = eqx.field(static=True)
    nngp_sketch: Sketch | None
    ntk_sketch: Sketch | None

    def __init__(self, sketch_dim: int | None = None):
        self.sketch_dim = check_sketch_dim("Flatten", sketch_dim)
        self.nngp_sketch = self.ntk_sketch = None

    def _raw_shape(self, input_shape) -> FeatureShape:
        """The flat shape before any sketch."""
        shape = as_feature_shape(input_shape, self)
        size = math.prod(shape.spatial)
        nngp = None if shape.nngp is None else shape.nngp * size
        ntk = None if shape.ntk is None else shape.ntk * size
        width = None if shape.width is None else shape.width * size
        return FeatureShape(nngp, ntk, width, ())

    def output_shape(self, input_shape) -> FeatureShape:
        shape = self._raw_shape(input_shape)
        if self.sketch_dim is None:
            return shape
        needs_widths(self, shape)
        ntk = self.sketch_dim if shape.ntk > 0 else 0
        return shape._replace(nngp=self.sketch_dim, ntk=ntk)

    def init(self, key: PRNGKeyArray, input_shape) -> Flatten:
        self.output_shape(input_shape)
        if self.sketch_dim is None:
            return self
        shape = self._raw_shape(input_shape)
        k1, k2 = jax.random.split(key)
        nngp_sketch = draw_sketch(shape.nngp, self.sketch_dim, k1)
        ntk_sketch = None
        if shape.ntk > 0:
            ntk_sketch = draw_sketch(shape.ntk, self.sketch_dim, k2)
        return eqx.tree_at(
            lambda s: (s.nngp_sketch, s.ntk_sketch),
            self,
            (nngp_sketch, ntk_sketch),
            is_leaf=lambda x: x is None,
        )

    def __call__(self, f: Features) -> Features:
        if self.sketch_dim is not None and self.nngp_sketch is None:
            raise missing_projections(self)

        def flatten(x: Array) -> Array:
            size = math.prod(x.shape[1:-1])
            x = x.reshape(x.shape[:1] + (size * x.shape[-1],))
            return x / jnp.sqrt(size).astype(x.dtype)

        nngp, ntk = flatten(f.nngp_feat), flatten(f.ntk_feat)
        nngp = apply_sketch(self, self.nngp_sketch, nngp, "NNGP")
        if ntk.shape[-1] > 0 and self.sketch_dim is not None:
            if self.ntk_sketch is None:
                raise ValueError(
                    "features.Flatten was initialised for NTK features of width 0 "
                    f"but got {ntk.shape[-1]}; call `init` with the input shape of "
                    "this layer."
                )
            ntk = apply_sketch(self, self.ntk_sketch, ntk, "NTK")
        return f.replace(nngp, ntk)
