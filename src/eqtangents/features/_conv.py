r"""Features of convolutions: patches of feature vectors.

A convolution with a shared filter has the kernel $K' = \sigma_w^2 L K +
\sigma_b^2$, where $L$ averages a covariance over the filter taps $w$,
$(L K)[p, p'] = \frac{1}{|w|}\sum_{i \in w} K[s p + i d - l,\ s p' + i d - l]$
(see `et.Conv`). The patch map

$$P(\Phi)[p] = \frac{1}{\sqrt{|w|}}\,\big[\Phi[s p + i d - l]\big]_{i \in w}$$

(the feature vectors under the window, concatenated; zeros where a tap falls
into `"SAME"` padding, wrapped for `"CIRCULAR"`) has
$\langle P(\Phi_1)[p], P(\Phi_2)[p']\rangle = (L\, \Phi_1\Phi_2^\top)[p, p']$,
so the convolution's features follow from those of its inputs without any
randomness.
"""

from __future__ import annotations

import math
from typing import Literal

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, PRNGKeyArray

from .._layers._affine import check_parameterization, to_std
from .._layers._spatial import check_fits, check_ints, check_padding, per_axis, taps
from .._typing import Scalar
from ._features import (
    AbstractFeatureLayer,
    Features,
    FeatureShape,
    as_feature_shape,
    missing_projections,
)
from ._sketch import SRHT, GaussianSketch, next_power_of_two

Sketch = SRHT | GaussianSketch


def spatial_shape(layer, input_shape) -> FeatureShape:
    """The input `FeatureShape`, which must have spatial axes."""
    shape = as_feature_shape(input_shape, layer)
    check_spatial(layer, shape.spatial)
    return shape


def check_spatial(layer, spatial: tuple[int, ...]) -> None:
    if len(spatial) == 0:
        raise ValueError(
            f"features.{type(layer).__name__} acts on spatial features, but its "
            "input is flat (no spatial axes). Give image inputs `(N, C, *spatial)` "
            "to `Features.from_inputs`, and put the layer before any "
            "`features.Flatten` or `features.GlobalAvgPool`."
        )


def check_sketch_dim(layer: str, sketch_dim) -> int | None:
    if sketch_dim is not None and (
        not isinstance(sketch_dim, int)
        or isinstance(sketch_dim, bool)
        or sketch_dim <= 0
    ):
        raise ValueError(
            f"features.{layer}: `sketch_dim` must be a positive int or None (no "
            f"sketch), got {sketch_dim!r}."
        )
    return sketch_dim


def draw_sketch(in_dim: int, out_dim: int, key: PRNGKeyArray) -> Sketch:
    """An `SRHT` from `in_dim` to `out_dim` columns, or a `GaussianSketch` when
    `out_dim` exceeds the padded dimension of the SRHT."""
    if out_dim <= next_power_of_two(in_dim):
        return SRHT(in_dim, out_dim, key=key)
    return GaussianSketch(in_dim, out_dim, key=key)


def sketch_width(sketch: Sketch) -> int:
    if isinstance(sketch, SRHT):
        return sketch.in_dim
    return sketch.matrix.shape[1]


def apply_sketch(layer, sketch: Sketch | None, x: Array, name: str) -> Array:
    """`sketch(x)` on the last axis, with an error naming the layer when `x`
    does not have the width the sketch was drawn for."""
    if sketch is None:
        return x
    if x.shape[-1] != sketch_width(sketch):
        raise ValueError(
            f"features.{type(layer).__name__} was initialised for {name} features "
            f"of width {sketch_width(sketch)} but got {x.shape[-1]}; call `init` "
            "with the input shape of this layer."
        )
    return sketch(x)


def needs_widths(layer, shape: FeatureShape) -> None:
    if shape.nngp is None or shape.ntk is None:
        raise ValueError(
            f"features.{type(layer).__name__}(sketch_dim=...) follows an exact "
            "feature layer, whose width depends on the batch, so no sketch can be "
            "drawn; use `sketch_dim=None` with exact activations."
        )


def patches(x: Array, windows, strides, dilations, padding: str) -> Array:
    r"""The feature vectors under each window, concatenated (unnormalised).

    Maps `(N, *spatial, d)` to `(N, *out, |w| d)`; taps in `"SAME"` padding
    give zeros, `"CIRCULAR"` padding wraps around.
    """
    n = len(windows)
    width = math.prod(windows) * x.shape[-1]
    for i, (k, s, d) in enumerate(zip(windows, strides, dilations)):
        axis = 1 + i
        index, valid = taps(x.shape[axis], k, s, d, padding)
        x = jnp.take(x, jnp.asarray(index), axis=axis)  # (..., k, out, ...)
        if valid is not None:
            shape = [1] * x.ndim
            shape[axis], shape[axis + 1] = valid.shape
            x = jnp.where(jnp.asarray(valid.reshape(shape)), x, 0)
        x = jnp.moveaxis(x, axis, -2)
    return x.reshape(x.shape[: 1 + n] + (width,))


class Conv(AbstractFeatureLayer):
    r"""Features of a convolution (mirrors `et.Conv`; exact unless sketched).

    With the patch map $P$ (the feature vectors under each window,
    concatenated and divided by $\sqrt{|w|}$) and fan-in $n = C |w|$,

    $$\Phi' = [\sigma_w P(\Phi),\ \sigma_b \mathbf 1], \qquad
      \Psi' = [\Phi',\ \sigma_w P(\Psi)] \;\text{(ntk)}, \qquad
      \Psi' = [\sqrt{n}\, P(\Phi),\ \mathbf 1,\ \sigma_w P(\Psi)]
      \;\text{(standard)},$$

    the bias columns dropped when `b_std=None`, give exactly
    $\Phi'\Phi'^\top = \sigma_w^2 L K + \sigma_b^2$ and $\Psi'\Psi'^\top =
    \Theta'$ of `et.Conv`. The widths grow by the factor $|w|$; with
    `sketch_dim=m` an independent random projection $S$ (an `SRHT`, or a
    `GaussianSketch` when $m$ exceeds the padded width) maps each of $\Phi'$,
    $\Psi'$ to $m$ columns, unbiased: $E[S\Phi'(S\Phi')^\top] = \Phi'\Phi'^\top$.
    Each entry of a sketched Gram matrix has variance about $(K_{12}^2 +
    K_{11}K_{22})/m$, so a sketch costs accuracy quickly where the kernel's
    correlations are small; keep `sketch_dim=None` unless memory demands it.

    **Arguments:**

    - `kernel_size`, `stride`, `padding`, `dilation`, `W_std`, `b_std`,
      `parameterization`: as in `et.Conv` (padding `"VALID"`, `"SAME"` or
      `"CIRCULAR"`).
    - `out_channels`: the width of the network layer; only needed when a later
      layer uses the standard parameterization (its fan-in).
    - `sketch_dim`: width of the NNGP and NTK features after the layer, or
      `None` for the exact, concatenated features.
    - `in_channels`: the channels of the inputs, used by the standard
      parameterization; `init` sets it from the input shape.

    **Example:**

    ```pycon
    >>> x = jax.random.normal(jax.random.key(0), (2, 3, 6, 6))   # (N, C, H, W)
    >>> fmodel = et.features.Serial(
    ...     et.features.Conv((3, 3), padding="SAME", b_std=0.1),
    ...     et.features.Relu(method="exact"),
    ...     et.features.AvgPool(2),
    ...     et.features.Flatten(),
    ...     et.features.Dense(),
    ... ).init(jax.random.key(1), x.shape[1:])
    >>> nngp, ntk = et.features.kernel(fmodel(et.features.Features.from_inputs(x)))
    >>> k = et.Serial(
    ...     et.Conv(1, (3, 3), padding="SAME", b_std=0.1),
    ...     et.Relu(),
    ...     et.AvgPool(2),
    ...     et.Flatten(),
    ...     et.Dense(1),
    ... ).kernel(x, None)                                 # the same, exactly
    >>> bool(jnp.allclose(nngp, k.nngp)), bool(jnp.allclose(ntk, k.ntk))
    (True, True)
    ```
    """

    kernel_size: int | tuple[int, ...] = eqx.field(static=True)
    stride: int | tuple[int, ...] = eqx.field(static=True)
    padding: Literal["VALID", "SAME", "CIRCULAR"] = eqx.field(static=True)
    dilation: int | tuple[int, ...] = eqx.field(static=True)
    W_std: Float[Array, ""] | float
    b_std: Float[Array, ""] | float | None
    parameterization: Literal["ntk", "standard"] = eqx.field(static=True)
    out_channels: int | None = eqx.field(static=True)
    sketch_dim: int | None = eqx.field(static=True)
    in_channels: int | None = eqx.field(static=True)
    nngp_sketch: Sketch | None
    ntk_sketch: Sketch | None

    def __init__(
        self,
        kernel_size: int | tuple[int, ...],
        stride: int | tuple[int, ...] = 1,
        padding: str = "VALID",
        dilation: int | tuple[int, ...] = 1,
        W_std: Scalar = 1.0,
        b_std: Scalar | None = None,
        parameterization: Literal["ntk", "standard"] = "ntk",
        *,
        out_channels: int | None = None,
        sketch_dim: int | None = None,
        in_channels: int | None = None,
    ):
        name = "features.Conv"
        check_parameterization(name, parameterization)
        self.kernel_size = check_ints(name, "kernel_size", kernel_size)
        self.stride = check_ints(name, "stride", stride)
        self.padding = check_padding(name, padding)
        self.dilation = check_ints(name, "dilation", dilation)
        self.W_std = to_std(W_std, "W_std", name)
        self.b_std = None if b_std is None else to_std(b_std, "b_std", name)
        self.parameterization = parameterization
        for label, value in (
            ("out_channels", out_channels),
            ("in_channels", in_channels),
        ):
            if value is not None and (not isinstance(value, int) or value <= 0):
                raise ValueError(
                    f"{name}: `{label}` must be a positive int or None, got {value!r}."
                )
        self.out_channels = out_channels
        self.sketch_dim = check_sketch_dim("Conv", sketch_dim)
        self.in_channels = in_channels
        self.nngp_sketch = self.ntk_sketch = None

    def _geometry(self, spatial: tuple[int, ...]):
        """Per-axis kernel sizes, strides, dilations and the output spatial shape."""
        name = "features.Conv"
        n = len(spatial)
        for value in (self.kernel_size, self.stride, self.dilation):
            if isinstance(value, tuple) and len(value) != n:
                raise ValueError(
                    f"features.Conv(kernel_size={self.kernel_size}, stride="
                    f"{self.stride}, dilation={self.dilation}) is for {len(value)} "
                    f"spatial dimension{'s' if len(value) != 1 else ''}, but its "
                    f"input has spatial shape {spatial}."
                )
        windows = per_axis(name, "kernel_size", self.kernel_size, n)
        strides = per_axis(name, "stride", self.stride, n)
        dilations = per_axis(name, "dilation", self.dilation, n)
        out = check_fits(name, spatial, windows, strides, dilations, self.padding)
        return windows, strides, dilations, out

    def _raw_widths(self, shape: FeatureShape) -> tuple[int | None, int | None]:
        """Widths of the concatenated features, before any sketch."""
        size = math.prod(self._geometry(shape.spatial)[0])
        bias = 0 if self.b_std is None else 1
        if shape.nngp is None or shape.ntk is None:
            return None, None
        nngp = size * shape.nngp + bias
        return nngp, nngp + size * shape.ntk

    def output_shape(self, input_shape) -> FeatureShape:
        shape = spatial_shape(self, input_shape)
        *_, out = self._geometry(shape.spatial)
        if self.parameterization == "standard" and shape.width is None:
            raise ValueError(
                "features.Conv (standard parameterization) needs its input channels: "
                "give `out_channels=` (or `out_features=`) to the layer before it."
            )
        nngp, ntk = self._raw_widths(shape)
        if self.sketch_dim is not None:
            needs_widths(self, shape)
            nngp = ntk = self.sketch_dim
        return FeatureShape(nngp, ntk, self.out_channels, out)

    def init(self, key: PRNGKeyArray, input_shape) -> Conv:
        self.output_shape(input_shape)
        shape = as_feature_shape(input_shape, self)
        nngp_sketch = ntk_sketch = None
        if self.sketch_dim is not None:
            nngp, ntk = self._raw_widths(shape)
            k1, k2 = jax.random.split(key)
            nngp_sketch = draw_sketch(nngp, self.sketch_dim, k1)
            ntk_sketch = draw_sketch(ntk, self.sketch_dim, k2)
        layer = Conv(
            self.kernel_size, self.stride, self.padding, self.dilation,
            self.W_std, self.b_std, self.parameterization,
            out_channels=self.out_channels, sketch_dim=self.sketch_dim,
            in_channels=shape.width,
        )  # fmt: skip
        return eqx.tree_at(
            lambda c: (c.nngp_sketch, c.ntk_sketch),
            layer,
            (nngp_sketch, ntk_sketch),
            is_leaf=lambda x: x is None,
        )

    def __call__(self, f: Features) -> Features:
        phi, psi = f.nngp_feat, f.ntk_feat
        spatial = tuple(phi.shape[1:-1])
        check_spatial(self, spatial)
        if self.sketch_dim is not None and self.nngp_sketch is None:
            raise missing_projections(self)
        if self.parameterization == "standard" and self.in_channels is None:
            raise ValueError(
                "features.Conv (standard parameterization) needs its input channels: "
                "call `init(key, input_shape)` first."
            )
        windows, strides, dilations, _ = self._geometry(spatial)
        dtype = phi.dtype
        norm = float(1 / np.sqrt(math.prod(windows)))
        w_std = jnp.asarray(self.W_std, dtype)
        p_phi = patches(phi, windows, strides, dilations, self.padding) * norm
        p_psi = patches(psi, windows, strides, dilations, self.padding) * norm
        ones = jnp.ones(p_phi.shape[:-1] + (1,), dtype)
        nngp = [w_std * p_phi]
        if self.b_std is not None:
            nngp.append(jnp.asarray(self.b_std, dtype) * ones)
        if self.parameterization == "ntk":
            ntk = nngp + [w_std * p_psi]
        else:
            fan_in = self.in_channels * math.prod(windows)
            ntk = [jnp.sqrt(fan_in).astype(dtype) * p_phi]
            if self.b_std is not None:
                ntk.append(ones)
            ntk.append(w_std * p_psi)
        nngp = apply_sketch(self, self.nngp_sketch, jnp.concatenate(nngp, -1), "NNGP")
        ntk = apply_sketch(self, self.ntk_sketch, jnp.concatenate(ntk, -1), "NTK")
        return f.replace(nngp, ntk)
