"""Locally connected convolution: a separate filter at every output position."""

from __future__ import annotations

import math
from typing import Literal

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, PRNGKeyArray

from .._kernel import Kernel, spatial_diagonal
from .._layer import AbstractLayer, Shape, as_shape, missing_weights
from .._mask import center_taps
from .._typing import Scalar
from ._affine import check_parameterization, scale_and_shift, to_std
from ._spatial import (
    check_fits,
    check_ints,
    check_padding,
    conv_covariance,
    per_axis,
    taps,
)
from .conv_transpose import draw_affine, is_none, scale_outputs

Parameterization = Literal["ntk", "standard"]


def embed_diagonal(x: Array, batch_ndim: int) -> Array:
    """The full spatial layout of covariances that vanish off the spatial
    diagonal: `(..., S_1, ..., S_d) -> (..., S_1, S_1', ..., S_d, S_d')`."""
    for i in range(x.ndim - batch_ndim):
        axis = batch_ndim + 2 * i
        size = x.shape[axis]
        eye = jnp.eye(size, dtype=x.dtype).reshape(
            (size, size) + (1,) * (x.ndim - axis - 1)
        )
        x = jnp.expand_dims(x, axis + 1) * eye
    return x


class ConvLocal(AbstractLayer):
    r"""Locally connected layer (unshared convolution) on one example `(C, *spatial)`.

    Like `et.Conv`, but each output position $p$ has its own filter
    $W_{\cdot, \cdot, \cdot, p}$ and bias $b_{\cdot, p}$: the weight has shape
    `(out_channels, C, *kernel_size, *out_spatial)` and the bias
    `(out_channels, *out_spatial)`. Scaling is as in `et.Conv`, with fan-in
    $n = C \prod_j k_j$.

    Different positions share no weights, so their outputs are uncorrelated:
    with $(L K)[p] = \frac{1}{|w|}\sum_{i \in w} K[s p + i - l, s p + i - l]$
    (zero padding for `"SAME"`, wrapped for `"CIRCULAR"`),

    $$K'[p, p'] = \delta_{p p'} \left(\sigma_w^2 L K + \sigma_b^2\right)[p],
      \qquad \Theta'[p, p'] = \delta_{p p'} \left(K' + \sigma_w^2 L \Theta
      \right)[p] \quad \text{(ntk)},$$

    and $\Theta'[p, p'] = \delta_{p p'} (n L K + 1 + \sigma_w^2 L \Theta)[p]$
    (standard), the $\sigma_b^2$ and `1` dropped without bias. Only the spatial
    diagonal of the input covariances is read. The output has the layout of the
    input: a full spatial covariance, zero off the diagonal, when the rest of
    the network needs one, and only the diagonal otherwise.

    **Arguments:**

    - `out_channels`: output channels (infinite in `kernel`).
    - `kernel_size`: the filter's spatial shape (int or tuple).
    - `stride`: step between windows (int or tuple).
    - `padding`: `"VALID"`, `"SAME"` or `"CIRCULAR"` (see `et.Conv`).
    - `W_std`, `b_std`: weight and bias standard deviations; `b_std=None` means
      no bias.
    - `parameterization`: `"ntk"` or `"standard"`.
    - `input_shape`, `key`: give both to draw the weights now; the weights
      depend on the input's spatial shape, so `input_shape` is the whole
      per-example shape `(C, *spatial)`. Otherwise call
      `init(key, input_shape)`.

    **Example:**

    ```pycon
    >>> x = jax.random.normal(jax.random.key(0), (2, 3, 8, 8))   # (N, C, H, W)
    >>> lcn = et.Serial(et.ConvLocal(64, (3, 3), padding="SAME"), et.Relu(),
    ...                 et.Flatten(), et.Dense(1))
    >>> cnn = et.Serial(et.Conv(64, (3, 3), padding="SAME"), et.Relu(),
    ...                 et.Flatten(), et.Dense(1))
    >>> # Flatten reads the spatial diagonal only, where the two agree:
    >>> bool(jnp.allclose(lcn.kernel(x, None, "nngp"), cnn.kernel(x, None, "nngp")))
    True
    >>> jax.vmap(lcn.init(jax.random.key(1), x.shape[1:]))(x).shape
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
    weight: Float[Array, "out in *kernel_and_positions"] | None
    bias: Float[Array, "out *positions"] | None

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
        input_shape: tuple[int, ...] | None = None,
        key: PRNGKeyArray | None = None,
    ):
        name = "ConvLocal"
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
        if (input_shape is None) != (key is None):
            raise ValueError(
                f"{name}: give both `input_shape` (the per-example shape "
                "`(C, *spatial)`) and `key` to draw weights now, or neither and "
                "call `init(key, input_shape)` later."
            )
        if key is not None:
            input_shape = tuple(input_shape)
            self.weight, self.bias = self._draw(key, input_shape)

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
                "ConvLocal expects inputs `(C, *spatial)` with at least one spatial "
                f"axis, but got per-example shape {shape}. For flat inputs use "
                "`et.Dense`."
            )
        n = len(shape) - 1
        fixed = self._fixed_n_spatial()
        if fixed is not None and fixed != n:
            raise ValueError(
                f"ConvLocal(kernel_size={self.kernel_size}, stride={self.stride}) "
                f"is for {fixed} spatial dimension{'s' if fixed != 1 else ''}, but "
                f"its input {shape} has {n} (channels first, `(C, *spatial)`)."
            )
        windows = per_axis("ConvLocal", "kernel_size", self.kernel_size, n)
        strides = per_axis("ConvLocal", "stride", self.stride, n)
        ones = (1,) * n
        out = check_fits("ConvLocal", shape[1:], windows, strides, ones, self.padding)
        return windows, strides, out

    def _draw(self, key, input_shape):
        windows, _, out = self._geometry(input_shape)
        c = input_shape[0]
        shape = (self.out_channels, c) + windows + out
        fan_in = c * math.prod(windows)
        return draw_affine(self, key, shape, (self.out_channels,) + out, fan_in)

    def output_shape(self, input_shape: Shape) -> Shape:
        windows, _, out = self._geometry(input_shape)
        weight = self.weight
        expected = (self.out_channels, input_shape[0]) + windows + out
        if weight is not None and weight.shape != expected:
            raise ValueError(
                f"ConvLocal has weights of shape {weight.shape} (out, in, "
                "*kernel_size, *output_spatial), which do not fit its input of "
                f"shape {input_shape} (channels first; it needs {expected}). Its "
                "weights depend on the input's spatial shape: call `init` again "
                "for a new input shape."
            )
        return (self.out_channels,) + out

    def init(self, key: PRNGKeyArray, input_shape: Shape) -> ConvLocal:
        weight, bias = self._draw(key, input_shape)
        return eqx.tree_at(
            lambda c: (c.weight, c.bias), self, (weight, bias), is_leaf=is_none
        )

    def __call__(
        self, x: Float[Array, "c *spatial"], *, key: PRNGKeyArray | None = None
    ) -> Float[Array, "out *spatial_out"]:
        if self.weight is None:
            raise missing_weights(self)
        self.output_shape(tuple(x.shape))
        windows, strides, out = self._geometry(tuple(x.shape))
        n = len(windows)
        # Gather the window of every output position: (C, k_1, o_1, k_2, o_2, ...).
        patches = x
        for i, (size, k, s) in enumerate(zip(x.shape[1:], windows, strides)):
            index, valid = taps(size, k, s, 1, self.padding)
            axis = 1 + 2 * i
            patches = jnp.take(patches, jnp.asarray(index), axis=axis)
            if valid is not None:
                shape = (1,) * axis + valid.shape + (1,) * (n - i - 1)
                patches = jnp.where(jnp.asarray(valid).reshape(shape), patches, 0)
        letters = "abcdefghijklmnopqrstuvwxyz"
        k_axes, o_axes = letters[:n], letters[n : 2 * n]
        interleaved = "".join(a + b for a, b in zip(k_axes, o_axes))
        y = jnp.einsum(
            f"OC{k_axes}{o_axes},C{interleaved}->O{o_axes}",
            self.weight.astype(x.dtype),
            patches,
        )
        fan_in = x.shape[0] * math.prod(windows)
        return scale_outputs(self, y, self.bias, fan_in)

    def output_mask(
        self, mask: Bool[Array, "*spatial"], input_shape: Shape
    ) -> Bool[Array, "*spatial_out"]:
        """An output is masked when the central tap of its window is (as in
        `et.Conv`)."""
        windows, strides, _ = self._geometry(input_shape)
        ones = (1,) * len(windows)
        return center_taps(mask, windows, strides, ones, self.padding)

    def propagate(self, k: Kernel) -> Kernel:
        windows, strides, _ = self._geometry(k.shape1)
        out1 = self.output_shape(k.shape1)
        out2 = self.output_shape(k.shape2)
        ones = (1,) * len(windows)
        full = not k.diagonal_spatial
        if full:
            k = k.map_covariances(spatial_diagonal).replace(diagonal_spatial=True)

        def linear(cov, batch_ndim):
            return conv_covariance(
                cov, batch_ndim, True, windows, strides, ones, self.padding
            )

        k = scale_and_shift(
            k,
            self.W_std,
            self.b_std,
            self.parameterization,
            fan_in=k.shape1[0] * math.prod(windows),
            out_shape1=out1,
            out_shape2=out2,
            linear=linear,
        )
        if full:
            k = k.map_covariances(embed_diagonal).replace(diagonal_spatial=False)
        return k
