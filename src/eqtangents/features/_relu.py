r"""Feature maps of the ReLU family: $\sigma(x) = a x$ for $x < 0$, $b x$ for
$x \ge 0$ (ReLU, leaky ReLU, Abs).

Since $\sigma(x) = a x + (b - a)\max(x, 0)$ and $\sigma'(x) = a + (b - a)[x > 0]$,
the Hermite coefficients follow from those of the ReLU and the step
(`relu_coefficients`, `step_coefficients`): $a_k(q) = \sqrt q\,((b - a) r_k +
a[k = 1])$ and $b_k(q) = (b - a) s_k + a[k = 0]$. They are positively
homogeneous, so the relative truncation error does not depend on the inputs'
variances: at degree $p$ it is $1 - \sum_{k \le p} a_k^2 / \sum_k a_k^2$ on the
diagonal, for the ReLU $1.0\%$ at $p = 4$ and $0.4\%$ at $p = 8$ (NNGP) and
$9\%$ at $p = 8$ (the step, whose coefficients decay like $k^{-3/4}$; the NTK
off the diagonal, where $|\rho| < 1$, is much closer).
"""

from __future__ import annotations

import abc
from typing import ClassVar

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array

from .._layers import relu
from .._layers.smooth import real
from ._activations import (
    AbstractActivationFeatures,
    Config,
    HermiteProjections,
    Method,
    RandomProjections,
    make_config,
)
from ._hermite import relu_coefficients, step_coefficients


class _AbstractABRelu(AbstractActivationFeatures):
    """Shared maths of the ReLU family, from the slopes `_slopes()`."""

    homogeneous: ClassVar[bool] = True

    @abc.abstractmethod
    def _slopes(self) -> tuple[float, float]:
        """The slopes $(a, b)$ below and above 0."""

    @property
    def network_layer(self) -> relu.ABRelu:
        return relu.ABRelu(*self._slopes())

    def coefficients(self, q: Array, degree: int) -> tuple[Array, Array]:
        a, b = self._slopes()
        nngp = (b - a) * relu_coefficients(degree)
        nngp[1] += a
        dot = (b - a) * step_coefficients(degree)
        dot[0] += a
        shape = q.shape + (degree + 1,)
        root = jnp.sqrt(q)[..., None]
        return root * jnp.asarray(nngp, q.dtype), jnp.broadcast_to(
            jnp.asarray(dot, q.dtype), shape
        )


class Relu(_AbstractABRelu):
    r"""Features of $\sigma(x) = \max(x, 0)$ (mirrors `et.Relu`).

    Duals: the arc-cosine kernels of order 1 and 0 (Cho & Saul 2009). The
    Hermite coefficients (orthonormal $h_k = \mathrm{He}_k/\sqrt{k!}$) are in
    closed form: $a_0 = 1/\sqrt{2\pi}$, $a_1 = 1/2$,
    $a_k = \mathrm{He}_{k-2}(0)/\sqrt{2\pi\,k!}$, and for the step
    $b_0 = 1/2$, $b_k = \mathrm{He}_{k-1}(0)/\sqrt{2\pi\,k!}$. Methods and
    arguments as `AbstractActivationFeatures`.

    **Example:**

    ```pycon
    >>> x = jax.random.normal(jax.random.key(0), (3, 4)) / 2     # (N, C)
    >>> k = et.Serial(et.Dense(1, W_std=1.5, b_std=0.1), et.Relu())
    >>> k = k.kernel(x, None)
    >>> def relative_error(a, b):
    ...     return float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(b)))
    >>> def errors(method):
    ...     act = et.features.Relu(method, nngp_dim=4096, sketch_dim=4096)
    ...     fmodel = et.features.Serial(et.features.Dense(W_std=1.5, b_std=0.1), act)
    ...     fmodel = fmodel.init(jax.random.key(1), x.shape[1:])
    ...     f = fmodel(et.features.Features.from_inputs(x))
    ...     nngp, ntk = et.features.kernel(f)
    ...     pairs = ((nngp, k.nngp), (ntk, k.ntk))
    ...     return [round(relative_error(a, b), 2) for a, b in pairs]
    >>> errors("poly_sketch")  # the step's Hermite series is slow: NTK biased
    [0.01, 0.1]
    >>> errors("combined")  # random features for the step instead
    [0.01, 0.02]
    ```
    """

    config: Config = eqx.field(static=True)
    projections: HermiteProjections | RandomProjections | None

    def __init__(self, method: Method = "poly_sketch", *, nngp_dim: int = 1024,
                 step_dim: int | None = None, sketch_dim: int | None = 1024,
                 degree: int = 8):  # fmt: skip
        self.config = make_config(
            "Relu", method, nngp_dim, step_dim, sketch_dim, degree, None
        )
        self.projections = None

    def _slopes(self):
        return 0.0, 1.0


class ABRelu(_AbstractABRelu):
    r"""Features of $\sigma(x) = a x$ ($x < 0$), $b x$ ($x \ge 0$) (mirrors
    `et.ABRelu`): $\sigma = a x + (b - a)\,\mathrm{ReLU}(x)$. Arguments `a`, `b`,

    **Example:**

    ```pycon
    >>> x = jax.random.normal(jax.random.key(0), (3, 4)) / 2     # (N, C)
    >>> act = et.features.ABRelu(-0.5, 1.0, "combined", nngp_dim=4096, sketch_dim=4096)
    >>> fmodel = et.features.Serial(et.features.Dense(W_std=1.5, b_std=0.1), act)
    >>> fmodel = fmodel.init(jax.random.key(1), x.shape[1:])
    >>> nngp, ntk = et.features.kernel(fmodel(et.features.Features.from_inputs(x)))
    >>> k = et.Serial(et.Dense(1, W_std=1.5, b_std=0.1), et.ABRelu(-0.5, 1.0))
    >>> k = k.kernel(x, None)
    >>> def relative_error(a, b):
    ...     return float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(b)))
    >>> relative_error(nngp, k.nngp) < 0.05, relative_error(ntk, k.ntk) < 0.05
    (True, True)
    ```
    then those of `AbstractActivationFeatures`."""

    a: float = eqx.field(static=True)
    b: float = eqx.field(static=True)
    config: Config = eqx.field(static=True)
    projections: HermiteProjections | RandomProjections | None

    def __init__(self, a: float, b: float, method: Method = "poly_sketch", *,
                 nngp_dim: int = 1024, step_dim: int | None = None,
                 sketch_dim: int | None = 1024, degree: int = 8):  # fmt: skip
        self.a, self.b = (
            real(a, "features.ABRelu", "a"),
            real(b, "features.ABRelu", "b"),
        )
        self.config = make_config(
            "ABRelu", method, nngp_dim, step_dim, sketch_dim, degree, None
        )
        self.projections = None

    def _slopes(self):
        return self.a, self.b


class LeakyRelu(_AbstractABRelu):
    r"""Features of $\sigma(x) = \alpha x$ ($x < 0$), $x$ ($x \ge 0$) (mirrors
    `et.LeakyRelu`). Arguments `alpha`, then those of

    **Example:**

    ```pycon
    >>> x = jax.random.normal(jax.random.key(0), (3, 4)) / 2     # (N, C)
    >>> act = et.features.LeakyRelu(0.1, "combined", nngp_dim=4096, sketch_dim=4096)
    >>> fmodel = et.features.Serial(et.features.Dense(W_std=1.5, b_std=0.1), act)
    >>> fmodel = fmodel.init(jax.random.key(1), x.shape[1:])
    >>> nngp, ntk = et.features.kernel(fmodel(et.features.Features.from_inputs(x)))
    >>> k = et.Serial(et.Dense(1, W_std=1.5, b_std=0.1), et.LeakyRelu(0.1))
    >>> k = k.kernel(x, None)
    >>> def relative_error(a, b):
    ...     return float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(b)))
    >>> relative_error(nngp, k.nngp) < 0.05, relative_error(ntk, k.ntk) < 0.05
    (True, True)
    ```
    `AbstractActivationFeatures`."""

    alpha: float = eqx.field(static=True)
    config: Config = eqx.field(static=True)
    projections: HermiteProjections | RandomProjections | None

    def __init__(self, alpha: float, method: Method = "poly_sketch", *,
                 nngp_dim: int = 1024, step_dim: int | None = None,
                 sketch_dim: int | None = 1024, degree: int = 8):  # fmt: skip
        self.alpha = real(alpha, "features.LeakyRelu", "alpha")
        options = (nngp_dim, step_dim, sketch_dim, degree, None)
        self.config = make_config("LeakyRelu", method, *options)
        self.projections = None

    def _slopes(self):
        return self.alpha, 1.0


class Abs(_AbstractABRelu):
    r"""Features of $\sigma(x) = |x|$ (mirrors `et.Abs`): $a = -1$, $b = 1$, so
    only the even degrees of $\sigma$ and the odd ones of $\sigma' =

    **Example:**

    ```pycon
    >>> x = jax.random.normal(jax.random.key(0), (3, 4)) / 2     # (N, C)
    >>> act = et.features.Abs("combined", nngp_dim=4096, sketch_dim=4096)
    >>> fmodel = et.features.Serial(et.features.Dense(W_std=1.5, b_std=0.1), act)
    >>> fmodel = fmodel.init(jax.random.key(1), x.shape[1:])
    >>> nngp, ntk = et.features.kernel(fmodel(et.features.Features.from_inputs(x)))
    >>> k = et.Serial(et.Dense(1, W_std=1.5, b_std=0.1), et.Abs())
    >>> k = k.kernel(x, None)
    >>> def relative_error(a, b):
    ...     return float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(b)))
    >>> relative_error(nngp, k.nngp) < 0.1, relative_error(ntk, k.ntk) < 0.1
    (True, True)
    ```
    \mathrm{sign}$ remain. Arguments as `AbstractActivationFeatures`."""

    config: Config = eqx.field(static=True)
    projections: HermiteProjections | RandomProjections | None

    def __init__(self, method: Method = "poly_sketch", *, nngp_dim: int = 1024,
                 step_dim: int | None = None, sketch_dim: int | None = 1024,
                 degree: int = 8):  # fmt: skip
        self.config = make_config(
            "Abs", method, nngp_dim, step_dim, sketch_dim, degree, None
        )
        self.projections = None

    def _slopes(self):
        return -1.0, 1.0
