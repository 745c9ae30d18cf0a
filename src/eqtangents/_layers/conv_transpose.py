r"""Transposed convolution with a shared filter, as `jax.lax.conv_transpose`.

One spatial axis of size $n$, a filter of $k$ taps and stride $s$: the input is
dilated (`s - 1` zeros between entries), padded by $(l, h)$ and convolved with
stride 1, so output $p$ reads, through tap $i$, the input
$q_i(p) = (p + i - l) / s$ when that is an integer inside the input. `"SAME"`
gives $n s$ outputs and `"VALID"` $n s + \max(k - s, 0)$, with the paddings of
`jax.lax.conv_transpose`; `"CIRCULAR"` wraps the `"VALID"` outputs around to
$n s$ positions (output $t$ is added to $(t - \lfloor \max(k - s, 0) / 2
\rfloor) \bmod n s$), as Neural Tangents does.
"""

from __future__ import annotations

import math
from typing import Literal

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float, PRNGKeyArray

from .._kernel import Kernel
from .._layer import AbstractLayer, Shape, as_shape, missing_weights
from .._typing import Scalar
from ._affine import check_parameterization, scale_and_shift, to_std
from ._spatial import check_ints, check_padding, conv_covariance, per_axis

Parameterization = Literal["ntk", "standard"]


def transpose_pads(window: int, stride: int, padding: str) -> tuple[int, int]:
    """Low and high padding of the dilated input (`jax.lax.conv_transpose`'s);
    `"CIRCULAR"` uses the `"VALID"` amounts before wrapping."""
    if padding == "SAME":
        total = window + stride - 2
        low = window - 1 if stride > window - 1 else -(-total // 2)
    else:
        total = window + stride - 2 + max(window - stride, 0)
        low = window - 1
    return low, total - low


def transpose_size(size: int, window: int, stride: int, padding: str) -> int:
    """Number of outputs along one axis."""
    if padding == "VALID":
        return size * stride + max(window - stride, 0)
    return size * stride


def wrap_outputs(x: Array, axis: int, window: int, stride: int, size: int) -> Array:
    """Folds the `"VALID"` outputs along `axis` onto the `size * stride` circular
    ones: entry `t` is added to `(t - max(window - stride, 0) // 2) % (size *
    stride)`. Applied to each axis of a covariance, it gives the covariance of
    the folded outputs."""
    n_out = size * stride
    index = (np.arange(x.shape[axis]) - max(window - stride, 0) // 2) % n_out
    if x.shape[axis] == n_out and (index == np.arange(n_out)).all():
        return x
    moved = jnp.moveaxis(x, axis, 0)
    folded = jax.ops.segment_sum(moved, jnp.asarray(index), num_segments=n_out)
    return jnp.moveaxis(folded, 0, axis)


def draw_affine(layer, key, weight_shape, bias_shape, fan_in: int):
    r"""Standard normal weights and biases (`"ntk"`), or scaled to variances
    $\sigma_w^2 / n$ and $\sigma_b^2$ (`"standard"`); no bias if `b_std` is None."""
    wkey, bkey = jax.random.split(key)
    weight = jax.random.normal(wkey, weight_shape)
    bias = None if layer.b_std is None else jax.random.normal(bkey, bias_shape)
    if layer.parameterization == "standard":
        weight = weight * layer.W_std / jnp.sqrt(fan_in)
        if bias is not None:
            bias = bias * layer.b_std
    return weight, bias


def scale_outputs(layer, y: Array, bias: Array | None, fan_in: int) -> Array:
    """The forward scaling of either parameterization, given `W x` and a bias
    broadcastable against it."""
    if layer.parameterization == "ntk":
        y = y * (layer.W_std / jnp.sqrt(fan_in))
        if bias is not None:
            y = y + layer.b_std * bias
    elif bias is not None:
        y = y + bias
    return y


def is_none(x) -> bool:
    return x is None


class ConvTranspose(AbstractLayer):
    r"""Transposed convolution `y = W^T * x + b` on one example `(C, *spatial)`.

    The filter $W$ of shape `(out_channels, C, *kernel_size)` is shared by all
    positions; the forward pass equals `jax.lax.conv_transpose(x, W, stride,
    padding)` (with dimension numbers `("NC...", "OI...", "NC...")`, kernel not
    flipped). Scaling is as in `et.Conv`, with fan-in $n = C \prod_j k_j$.

    Only equal taps of the shared filter meet, so with
    $(T K)[p, p'] = \frac{1}{|w|}\sum_{i \in w} K[q_i(p), q_i(p')]$, where
    $q_i(p) = (p + i - l) / s$ is the input read by tap $i$ at output $p$ (terms
    where it is not an integer inside the input are dropped; `"CIRCULAR"` takes
    it modulo the input size after shifting $p$ by
    $\lfloor \max(k - s, 0) / 2 \rfloor$), the kernels are

    $$K' = \sigma_w^2 T K + \sigma_b^2, \qquad
      \Theta' = K' + \sigma_w^2 T \Theta \quad \text{(ntk)}, \qquad
      \Theta' = n T K + 1 + \sigma_w^2 T \Theta \quad \text{(standard)},$$

    the `1` dropped without bias. The spatial diagonal of $K'$ needs only that
    of $K$, so, like `et.Conv`, the layer works on either layout.

    **Arguments:**

    - `out_channels`: output channels (infinite in `kernel`).
    - `kernel_size`: the filter's spatial shape (int or tuple).
    - `stride`: upsampling factor (int or tuple).
    - `padding`: `"VALID"` ($n s + \max(k - s, 0)$ outputs), `"SAME"` ($n s$
      outputs) or `"CIRCULAR"` (the `"VALID"` outputs wrapped to $n s$).
    - `W_std`, `b_std`: weight and bias standard deviations; `b_std=None` means
      no bias.
    - `parameterization`: `"ntk"` or `"standard"`.
    - `in_channels`, `key`: give both to draw the weights now (the number of
      spatial dimensions then comes from a tuple `kernel_size` or `stride`);
      otherwise call `init(key, input_shape)`.

    **Example:**

    ```pycon
    >>> x = jax.random.normal(jax.random.key(0), (2, 3, 4, 4))
    >>> layer = et.ConvTranspose(16, (3, 3), stride=2, padding="SAME")
    >>> layer.output_shape(x.shape[1:])
    (16, 8, 8)
    >>> decoder = et.Serial(layer, et.Relu(), et.Flatten(), et.Dense(1))
    >>> decoder.kernel(x, None, "ntk").shape
    (2, 2)
    >>> jax.vmap(decoder.init(jax.random.key(1), x.shape[1:]))(x).shape
    (2, 1)
    ```
    """

    out_channels: int = eqx.field(static=True)
    kernel_size: int | tuple[int, ...] = eqx.field(static=True)
    stride: int | tuple[int, ...] = eqx.field(static=True)
    padding: Literal["VALID", "SAME", "CIRCULAR"] = eqx.field(static=True)
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
        W_std: Scalar = 1.0,
        b_std: Scalar | None = None,
        parameterization: Parameterization = "ntk",
        *,
        in_channels: int | None = None,
        key: PRNGKeyArray | None = None,
    ):
        name = "ConvTranspose"
        if not isinstance(out_channels, int) or out_channels <= 0:
            raise ValueError(
                f"{name}: `out_channels` must be a positive integer, got "
                f"{out_channels!r}."
            )
        check_parameterization(name, parameterization)
        self.out_channels = out_channels
        self.kernel_size = check_ints(name, "kernel_size", kernel_size)
        self.stride = check_ints(name, "stride", stride)
        self.padding = check_padding(name, padding)
        self.W_std = to_std(W_std, "W_std", name)
        self.b_std = None if b_std is None else to_std(b_std, "b_std", name)
        self.parameterization = parameterization
        self.weight = None
        self.bias = None
        if (in_channels is None) != (key is None):
            raise ValueError(
                f"{name}: give both `in_channels` and `key` to draw weights now, "
                "or neither and call `init(key, input_shape)` later."
            )
        if key is not None:
            n_spatial = self._fixed_n_spatial()
            if n_spatial is None:
                raise ValueError(
                    f"{name}: to draw weights at construction the number of "
                    "spatial dimensions must be known; give `kernel_size` as a "
                    "tuple, e.g. `(3, 3)`, or call `init(key, input_shape)` instead."
                )
            if not isinstance(in_channels, int) or in_channels <= 0:
                raise ValueError(
                    f"{name}: `in_channels` must be a positive integer, got "
                    f"{in_channels!r}."
                )
            windows = per_axis(name, "kernel_size", self.kernel_size, n_spatial)
            self.weight, self.bias = self._draw(key, in_channels, windows)

    def _fixed_n_spatial(self) -> int | None:
        for value in (self.kernel_size, self.stride):
            if isinstance(value, tuple):
                return len(value)
        return None

    def _geometry(self, input_shape: Shape):
        """Per-axis (kernel_size, stride) and the output spatial shape."""
        shape = as_shape(input_shape, self)
        if len(shape) < 2:
            raise ValueError(
                "ConvTranspose expects inputs `(C, *spatial)` with at least one "
                f"spatial axis, but got per-example shape {shape}. For flat inputs "
                "use `et.Dense`."
            )
        n = len(shape) - 1
        fixed = self._fixed_n_spatial()
        if fixed is not None and fixed != n:
            raise ValueError(
                f"ConvTranspose(kernel_size={self.kernel_size}, stride="
                f"{self.stride}) is for {fixed} spatial dimension"
                f"{'s' if fixed != 1 else ''}, but its input {shape} has {n} "
                "(channels first, `(C, *spatial)`)."
            )
        windows = per_axis("ConvTranspose", "kernel_size", self.kernel_size, n)
        strides = per_axis("ConvTranspose", "stride", self.stride, n)
        out = tuple(
            transpose_size(size, k, s, self.padding)
            for size, k, s in zip(shape[1:], windows, strides)
        )
        return windows, strides, out

    def _draw(self, key, in_channels, windows):
        shape = (self.out_channels, in_channels) + windows
        fan_in = in_channels * math.prod(windows)
        return draw_affine(self, key, shape, (self.out_channels,), fan_in)

    def output_shape(self, input_shape: Shape) -> Shape:
        *_, out = self._geometry(input_shape)
        weight = self.weight
        if weight is not None and (
            weight.shape[1] != input_shape[0] or weight.ndim != len(input_shape) + 1
        ):
            raise ValueError(
                f"ConvTranspose has weights of shape {weight.shape} (out, in, "
                f"*kernel_size), which do not fit its input of shape {input_shape} "
                "(channels first)."
            )
        return (self.out_channels,) + out

    def init(self, key: PRNGKeyArray, input_shape: Shape) -> ConvTranspose:
        windows, *_ = self._geometry(input_shape)
        weight, bias = self._draw(key, input_shape[0], windows)
        return eqx.tree_at(
            lambda c: (c.weight, c.bias), self, (weight, bias), is_leaf=is_none
        )

    def __call__(
        self, x: Float[Array, "c *spatial"], *, key: PRNGKeyArray | None = None
    ) -> Float[Array, "out *spatial_out"]:
        if self.weight is None:
            raise missing_weights(self)
        self.output_shape(tuple(x.shape))
        windows, strides, _ = self._geometry(tuple(x.shape))
        circular = self.padding == "CIRCULAR"
        pads = [
            transpose_pads(k, s, "VALID" if circular else self.padding)
            for k, s in zip(windows, strides)
        ]
        y = jax.lax.conv_general_dilated(
            x[None],
            self.weight.astype(x.dtype),
            window_strides=(1,) * len(windows),
            padding=pads,
            lhs_dilation=strides,
        )[0]
        if circular:
            for axis, (n, k, s) in enumerate(zip(x.shape[1:], windows, strides)):
                y = wrap_outputs(y, axis + 1, k, s, n)
        bias = None
        if self.bias is not None:
            bias = self.bias.reshape((-1,) + (1,) * len(windows))
        return scale_outputs(self, y, bias, x.shape[0] * math.prod(windows))

    def output_mask(
        self, mask: Bool[Array, "*spatial"], input_shape: Shape
    ) -> Bool[Array, "*spatial_out"]:
        """An output is masked when any masked input reaches it through a tap
        (the transposed convolution of the mask with a filter of ones), as in
        Neural Tangents."""
        windows, strides, _ = self._geometry(input_shape)
        circular = self.padding == "CIRCULAR"
        pads = [
            transpose_pads(k, s, "VALID" if circular else self.padding)
            for k, s in zip(windows, strides)
        ]
        hits = jax.lax.conv_general_dilated(
            mask.astype(jnp.float32)[None, None],
            jnp.ones((1, 1) + windows, jnp.float32),
            window_strides=(1,) * len(windows),
            padding=pads,
            lhs_dilation=strides,
        )[0, 0]
        if circular:
            for axis, (n, k, s) in enumerate(zip(input_shape[1:], windows, strides)):
                hits = wrap_outputs(hits, axis, k, s, n)
        return hits > 0.5

    def propagate(self, k: Kernel) -> Kernel:
        windows, strides, _ = self._geometry(k.shape1)
        out1 = self.output_shape(k.shape1)
        out2 = self.output_shape(k.shape2)
        circular = self.padding == "CIRCULAR"
        pads = [
            transpose_pads(w, s, "VALID" if circular else self.padding)
            for w, s in zip(windows, strides)
        ]
        copies = 1 if k.diagonal_spatial else 2
        ones = (1,) * len(windows)

        def linear(cov, batch_ndim):
            # Dilate and pad the covariance as the forward pass does its input
            # (on both axes of each pair), then average over equal taps.
            config = [(0, 0, 0)] * batch_ndim
            for (low, high), s in zip(pads, strides):
                config += [(low, high, s - 1)] * copies
            cov = jax.lax.pad(cov, jnp.zeros((), cov.dtype), config)
            cov = conv_covariance(
                cov, batch_ndim, k.diagonal_spatial, windows, ones, ones, "VALID"
            )
            if circular:
                for i, (w, s, n) in enumerate(zip(windows, strides, k.shape1[1:])):
                    for c in range(copies):
                        cov = wrap_outputs(cov, batch_ndim + copies * i + c, w, s, n)
            return cov

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
