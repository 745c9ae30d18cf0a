"""Fully connected layer."""

from __future__ import annotations

from typing import Literal

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from .._kernel import Kernel
from .._layer import (
    AbstractLayer,
    Shape,
    as_shape,
    check_input_channels,
    missing_weights,
)
from .._typing import Scalar
from ._affine import check_parameterization, scale_and_shift, to_std

Parameterization = Literal["ntk", "standard"]


class Dense(AbstractLayer):
    r"""Fully connected layer `y = W x + b` on flat inputs `(C,)`.

    With `parameterization="ntk"` the weights are standard normal and scaled in
    the forward pass, $y = \frac{\sigma_w}{\sqrt{C}} W x + \sigma_b b$; with
    `"standard"` they are drawn with variance $\sigma_w^2 / C$ (and $\sigma_b^2$
    for the bias) and used as they are. The infinite-width kernels are

    $$K' = \sigma_w^2 K + \sigma_b^2, \qquad
      \Theta' = K' + \sigma_w^2 \Theta \quad \text{(ntk)}, \qquad
      \Theta' = C K + 1 + \sigma_w^2 \Theta \quad \text{(standard)},$$

    where the `1` is dropped when the layer has no bias (`b_std=None`).

    **Arguments:**

    - `out_features`: output width (infinite in `kernel`).
    - `W_std`, `b_std`: weight and bias standard deviations; `b_std=None` means
      no bias.
    - `parameterization`: `"ntk"` or `"standard"`.
    - `in_features`, `key`: give both to draw the weights now (as in
      `equinox.nn.Linear`); otherwise call `init(key, input_shape)`.

    **Example:**

    ```pycon
    >>> x = jax.random.normal(jax.random.key(0), (3, 4))         # (N, C)
    >>> model = et.Serial(et.Dense(512, W_std=1.5, b_std=0.05), et.Relu(), et.Dense(1))
    >>> k = model.kernel(x, None)                   # infinite width: an et.Kernel
    >>> k.nngp.shape, k.ntk.shape
    ((3, 3), (3, 3))
    >>> net = model.init(jax.random.key(1), x.shape[1:])   # finite width 512
    >>> jax.vmap(net)(x).shape
    (3, 1)
    >>> k1 = et.Dense(1, W_std=1.5, b_std=0.05).kernel(x, None)
    >>> bool(jnp.allclose(k1.nngp, 1.5**2 * x @ x.T / 4 + 0.05**2))
    True
    ```
    """

    out_features: int = eqx.field(static=True)
    W_std: Float[Array, ""] | float
    b_std: Float[Array, ""] | float | None
    parameterization: Parameterization = eqx.field(static=True)
    weight: Float[Array, "out in"] | None
    bias: Float[Array, " out"] | None

    def __init__(
        self,
        out_features: int,
        W_std: Scalar = 1.0,
        b_std: Scalar | None = None,
        parameterization: Parameterization = "ntk",
        *,
        in_features: int | None = None,
        key: PRNGKeyArray | None = None,
    ):
        if not isinstance(out_features, int) or out_features <= 0:
            raise ValueError(
                "Dense: `out_features` must be a positive integer, got "
                f"{out_features!r}."
            )
        check_parameterization("Dense", parameterization)
        self.out_features = out_features
        self.W_std = to_std(W_std, "W_std", "Dense")
        self.b_std = None if b_std is None else to_std(b_std, "b_std", "Dense")
        self.parameterization = parameterization
        self.weight = None
        self.bias = None
        if (in_features is None) != (key is None):
            raise ValueError(
                "Dense: give both `in_features` and `key` to draw weights now, or "
                "neither and call `init(key, input_shape)` later."
            )
        if key is not None:
            self.weight, self.bias = self._draw(key, in_features)

    def _draw(self, key, in_features):
        wkey, bkey = jax.random.split(key)
        weight = jax.random.normal(wkey, (self.out_features, in_features))
        bias = None
        if self.b_std is not None:
            bias = jax.random.normal(bkey, (self.out_features,))
        if self.parameterization == "standard":
            weight = weight * self.W_std / jnp.sqrt(in_features)
            if bias is not None:
                bias = bias * self.b_std
        return weight, bias

    def output_shape(self, input_shape: Shape) -> Shape:
        shape = as_shape(input_shape, self)
        if len(shape) != 1:
            raise ValueError(
                f"Dense expects flat inputs `(C,)` per example but got {shape}. "
                "Add `et.Flatten()` before it, or use `et.Conv(out, kernel_size=1)` "
                "to mix channels at each position."
            )
        return (self.out_features,)

    def init(self, key: PRNGKeyArray, input_shape: Shape) -> Dense:
        self.output_shape(input_shape)
        (in_features,) = input_shape
        weight, bias = self._draw(key, in_features)
        return eqx.tree_at(
            lambda d: (d.weight, d.bias), self, (weight, bias), is_leaf=_is_none
        )

    def __call__(
        self, x: Float[Array, " in"], *, key: PRNGKeyArray | None = None
    ) -> Float[Array, " out"]:
        if self.weight is None:
            raise missing_weights(self)
        check_input_channels(self, x, self.weight)
        y = self.weight @ x
        if self.parameterization == "ntk":
            y = y * (self.W_std / jnp.sqrt(x.shape[0]))
            if self.bias is not None:
                y = y + self.b_std * self.bias
        elif self.bias is not None:
            y = y + self.bias
        return y

    def propagate(self, k: Kernel) -> Kernel:
        self.output_shape(k.shape1)
        return scale_and_shift(
            k,
            self.W_std,
            self.b_std,
            self.parameterization,
            fan_in=k.shape1[0],
            out_shape1=(self.out_features,),
            out_shape2=(self.out_features,),
        )


def _is_none(x):
    return x is None
