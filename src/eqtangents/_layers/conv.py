"""Convolution with a shared filter, in 1, 2 or 3 (or more) spatial dimensions."""

from __future__ import annotations

import math
from typing import Literal

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, PRNGKeyArray

from .._kernel import Kernel
from .._layer import (
    AbstractLayer,
    Shape,
    as_shape,
    check_input_channels,
    missing_weights,
)
from .._mask import center_taps
from .._typing import Scalar
from ._affine import check_parameterization, scale_and_shift, to_std
from ._spatial import (
    check_fits,
    check_ints,
    check_padding,
    conv_covariance,
    pad_amounts,
    per_axis,
    wrap_axis,
)

Parameterization = Literal["ntk", "standard"]


class Conv(AbstractLayer):
    r"""Convolution `y = W * x + b` on one example `(C, *spatial)`.

    Each output channel at position $p$ is an affine function of the input
    channels in the window at $p$; the filter $W$ of shape
    `(out_channels, C, *kernel_size)` is shared by all positions. With
    `parameterization="ntk"` the weights are standard normal and scaled in the
    forward pass by $\sigma_w / \sqrt{n}$, $n = C \prod_j k_j$ (the fan-in), and
    the bias by $\sigma_b$; with `"standard"` they are drawn with variances
    $\sigma_w^2 / n$ and $\sigma_b^2$.

    With $L$ the average of a covariance over the filter taps,
    $(L K)[p, p'] = \frac{1}{|w|}\sum_{i \in w} K[s p + i d - l, s p' + i d - l]$
    (zero outside the input for `"SAME"`, wrapped for `"CIRCULAR"`), the kernels are

    $$K' = \sigma_w^2 L K + \sigma_b^2, \qquad
      \Theta' = K' + \sigma_w^2 L \Theta \quad \text{(ntk)}, \qquad
      \Theta' = n L K + 1 + \sigma_w^2 L \Theta \quad \text{(standard)},$$

    the `1` dropped without bias. The rule acts on full spatial covariances or on
    their diagonal alone, so a network of convolutions and pointwise layers needs
    only the diagonal when its output does.

    **Arguments:**

    - `out_channels`: output channels (infinite in `kernel`).
    - `kernel_size`: the filter's spatial shape; a tuple fixes the number of
      spatial dimensions, an int applies to every spatial axis of the input.
    - `stride`: step between windows (int or tuple).
    - `padding`: `"VALID"` (none), `"SAME"` (zeros, `ceil(n / stride)` outputs,
      the low side gets half the total padding, rounded down, as in `jax.lax`)
      or `"CIRCULAR"` (the `"SAME"` amounts, filled by wrapping around).
    - `dilation`: spacing between filter taps (int or tuple).
    - `W_std`, `b_std`: weight and bias standard deviations; `b_std=None` means
      no bias.
    - `parameterization`: `"ntk"` or `"standard"`.
    - `in_channels`, `key`: give both to draw the weights now (as in
      `equinox.nn.Conv`; the number of spatial dimensions then comes from a
      tuple `kernel_size`, `stride` or `dilation`); otherwise call
      `init(key, input_shape)`.

    **Example:**

    ```pycon
    >>> x = jax.random.normal(jax.random.key(0), (2, 3, 8, 8))   # (N, C, H, W)
    >>> model = et.Serial(et.Conv(256, (3, 3), padding="SAME"), et.Relu(),
    ...                   et.GlobalAvgPool(), et.Dense(10))
    >>> model.kernel(x, None, "ntk").shape
    (2, 2)
    >>> net = model.init(jax.random.key(1), x.shape[1:])
    >>> jax.vmap(net)(x).shape
    (2, 10)
    >>> whole = et.Serial(et.Conv(1, (8, 8)), et.Flatten())   # one window: a Dense
    >>> dense = et.Dense(1).kernel(x.reshape(2, -1), None, "nngp")
    >>> bool(jnp.allclose(whole.kernel(x, None, "nngp"), dense))
    True
    ```
    """

    out_channels: int = eqx.field(static=True)
    kernel_size: int | tuple[int, ...] = eqx.field(static=True)
    stride: int | tuple[int, ...] = eqx.field(static=True)
    padding: Literal["VALID", "SAME", "CIRCULAR"] = eqx.field(static=True)
    dilation: int | tuple[int, ...] = eqx.field(static=True)
    W_std: Float[Array, ""] | float
    b_std: Float[Array, ""] | float | None
    parameterization: Parameterization = eqx.field(static=True)
    weight: Float[Array, "out in *kernel"] | None
    bias: Float[Array, " out"] | None

    def __init__(
        self,
        out_channels: int,
        kernel_size: int | tuple[int, ...],
        stride: int | tuple[int, ...] = 1,
        padding: str = "VALID",
        dilation: int | tuple[int, ...] = 1,
        W_std: Scalar = 1.0,
        b_std: Scalar | None = None,
        parameterization: Parameterization = "ntk",
        *,
        in_channels: int | None = None,
        key: PRNGKeyArray | None = None,
    ):
        if not isinstance(out_channels, int) or out_channels <= 0:
            raise ValueError(
                "Conv: `out_channels` must be a positive integer, got "
                f"{out_channels!r}."
            )
        check_parameterization("Conv", parameterization)
        self.out_channels = out_channels
        self.kernel_size = check_ints("Conv", "kernel_size", kernel_size)
        self.stride = check_ints("Conv", "stride", stride)
        self.padding = check_padding("Conv", padding)
        self.dilation = check_ints("Conv", "dilation", dilation)
        self.W_std = to_std(W_std, "W_std", "Conv")
        self.b_std = None if b_std is None else to_std(b_std, "b_std", "Conv")
        self.parameterization = parameterization
        self.weight = None
        self.bias = None
        if (in_channels is None) != (key is None):
            raise ValueError(
                "Conv: give both `in_channels` and `key` to draw weights now, or "
                "neither and call `init(key, input_shape)` later."
            )
        if key is not None:
            n_spatial = self._fixed_n_spatial()
            if n_spatial is None:
                raise ValueError(
                    "Conv: to draw weights at construction the number of spatial "
                    "dimensions must be known; give `kernel_size` as a tuple, e.g. "
                    "`(3, 3)`, or call `init(key, input_shape)` instead."
                )
            if not isinstance(in_channels, int) or in_channels <= 0:
                raise ValueError(
                    f"Conv: `in_channels` must be a positive integer, got "
                    f"{in_channels!r}."
                )
            windows = per_axis("Conv", "kernel_size", self.kernel_size, n_spatial)
            self.weight, self.bias = self._draw(key, in_channels, windows)

    def _fixed_n_spatial(self) -> int | None:
        for value in (self.kernel_size, self.stride, self.dilation):
            if isinstance(value, tuple):
                return len(value)
        return None

    def _geometry(self, input_shape: Shape):
        """Per-axis (kernel_size, stride, dilation) and the output spatial shape."""
        shape = as_shape(input_shape, self)
        if len(shape) < 2:
            raise ValueError(
                f"Conv expects inputs `(C, *spatial)` with at least one spatial axis, "
                f"but got per-example shape {shape}. For flat inputs use `et.Dense`."
            )
        n = len(shape) - 1
        fixed = self._fixed_n_spatial()
        if fixed is not None and fixed != n:
            raise ValueError(
                f"Conv(kernel_size={self.kernel_size}, stride={self.stride}, "
                f"dilation={self.dilation}) is for {fixed} spatial dimension"
                f"{'s' if fixed != 1 else ''}, but its input {shape} has {n} "
                "(channels first, `(C, *spatial)`)."
            )
        windows = per_axis("Conv", "kernel_size", self.kernel_size, n)
        strides = per_axis("Conv", "stride", self.stride, n)
        dilations = per_axis("Conv", "dilation", self.dilation, n)
        out = check_fits("Conv", shape[1:], windows, strides, dilations, self.padding)
        return windows, strides, dilations, out

    def _draw(self, key, in_channels, windows):
        wkey, bkey = jax.random.split(key)
        weight = jax.random.normal(wkey, (self.out_channels, in_channels) + windows)
        bias = None
        if self.b_std is not None:
            bias = jax.random.normal(bkey, (self.out_channels,))
        if self.parameterization == "standard":
            fan_in = in_channels * math.prod(windows)
            weight = weight * self.W_std / jnp.sqrt(fan_in)
            if bias is not None:
                bias = bias * self.b_std
        return weight, bias

    def output_shape(self, input_shape: Shape) -> Shape:
        *_, out = self._geometry(input_shape)
        weight = self.weight
        if weight is not None and (
            weight.shape[1] != input_shape[0] or weight.ndim != len(input_shape) + 1
        ):
            raise ValueError(
                f"Conv has weights of shape {weight.shape} (out, in, *kernel_size), "
                f"which do not fit its input of shape {input_shape} (channels first)."
            )
        return (self.out_channels,) + out

    def init(self, key: PRNGKeyArray, input_shape: Shape) -> Conv:
        windows, *_ = self._geometry(input_shape)
        weight, bias = self._draw(key, input_shape[0], windows)
        return eqx.tree_at(
            lambda c: (c.weight, c.bias), self, (weight, bias), is_leaf=_is_none
        )

    def __call__(
        self, x: Float[Array, "c *spatial"], *, key: PRNGKeyArray | None = None
    ) -> Float[Array, "out *spatial_out"]:
        if self.weight is None:
            raise missing_weights(self)
        check_input_channels(self, x, self.weight)
        self.output_shape(tuple(x.shape))
        windows, strides, dilations, _ = self._geometry(tuple(x.shape))
        pads = [
            pad_amounts(n, k, s, d, self.padding)
            for n, k, s, d in zip(x.shape[1:], windows, strides, dilations)
        ]
        if self.padding == "CIRCULAR":
            for axis, (low, high) in enumerate(pads, start=1):
                x = wrap_axis(x, axis, low, high)
            pads = [(0, 0)] * len(pads)
        y = jax.lax.conv_general_dilated(
            x[None],
            self.weight.astype(x.dtype),
            window_strides=strides,
            padding=pads,
            rhs_dilation=dilations,
        )[0]
        n_spatial = len(windows)
        if self.parameterization == "ntk":
            y = y * (self.W_std / jnp.sqrt(x.shape[0] * math.prod(windows)))
            if self.bias is not None:
                y = y + self.b_std * self.bias.reshape((-1,) + (1,) * n_spatial)
        elif self.bias is not None:
            y = y + self.bias.reshape((-1,) + (1,) * n_spatial)
        return y

    def output_mask(
        self, mask: Bool[Array, "*spatial"], input_shape: Shape
    ) -> Bool[Array, "*spatial_out"]:
        windows, strides, dilations, _ = self._geometry(input_shape)
        return center_taps(mask, windows, strides, dilations, self.padding)

    def propagate(self, k: Kernel) -> Kernel:
        windows, strides, dilations, _ = self._geometry(k.shape1)
        out1 = self.output_shape(k.shape1)
        out2 = self.output_shape(k.shape2)

        def linear(cov, batch_ndim):
            return conv_covariance(
                cov,
                batch_ndim,
                k.diagonal_spatial,
                windows,
                strides,
                dilations,
                self.padding,
            )

        return scale_and_shift(
            k,
            self.W_std,
            self.b_std,
            self.parameterization,
            fan_in=k.shape1[0] * math.prod(windows),
            out_shape1=out1,
            out_shape2=out2,
            linear=linear,
        )


def _is_none(x):
    return x is None
