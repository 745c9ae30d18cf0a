"""The ReLU family: piecewise-linear activations with arc-cosine dual kernels."""

from __future__ import annotations

import jax.numpy as jnp
from jaxtyping import Array

from .._numerics import arccos_dual, correlation, safe_arccos
from ._activation import AbstractActivation


def abrelu_duals(a, b, c12, v1, v2, derivative):
    r"""Duals of $\phi(x) = a \min(x, 0) + b \max(x, 0)$ (Cho & Saul 2009).

    With $\rho = c_{12}/\sqrt{v_1 v_2}$ and $J(\rho) = \sqrt{1-\rho^2} +
    (\pi - \arccos\rho)\rho$:

    $$T = ab\, c_{12} + \frac{(b-a)^2}{2\pi}\sqrt{v_1 v_2}\, J(\rho), \qquad
      \dot T = ab + \frac{(b-a)^2}{2\pi}(\pi - \arccos\rho).$$
    """
    rho, prod = correlation(c12, v1, v2)
    scale = (b - a) ** 2 / (2 * jnp.pi)
    nngp = scale * prod * arccos_dual(rho)
    if not _is_zero(a * b):
        # Skipped when a b = 0 (ReLU): `0 * c12` would tie every layer's
        # variance to the previous one through cheap operations, which XLA
        # then recomputes inside each layer's (N1, N2) loop.
        nngp = nngp + a * b * c12
    dot = None
    if derivative:
        dot = a * b + scale * (jnp.pi - safe_arccos(rho))
    return nngp, dot


def abrelu_self_dual(a, b, v):
    r"""$E[\phi(u)^2] = \frac{a^2 + b^2}{2} v$ for $u \sim N(0, v)$."""
    return (a**2 + b**2) / 2 * v


def _is_zero(value) -> bool:
    """Whether `value` is a Python number equal to 0 (not a traced array)."""
    return isinstance(value, (int, float)) and value == 0


class ABRelu(AbstractActivation):
    r"""$\phi(x) = a x$ for $x < 0$ and $b x$ for $x \ge 0$.

    **Example:**

    ```pycon
    >>> act = et.ABRelu(a=-0.5, b=1.0)
    >>> x = jnp.array([[1.0, 0.0], [0.6, 0.8]])          # two unit vectors
    >>> k = et.Serial(et.Dense(1), act).kernel(x, None)   # u ~ N(0, x x^T / 2)
    >>> u = x @ jax.random.normal(jax.random.key(0), (2, 400_000)) / jnp.sqrt(2)
    >>> mc = act(u) @ act(u).T / u.shape[1]               # E[phi(u) phi(u')]
    >>> bool(jnp.allclose(k.nngp, mc, atol=0.01))
    True
    ```
    """

    a: float
    b: float

    def __init__(self, a: float, b: float):
        self.a, self.b = a, b

    def fn(self, x: Array) -> Array:
        return jnp.where(x < 0, self.a * x, self.b * x)

    def duals(self, c12, v1, v2, derivative):
        return abrelu_duals(self.a, self.b, c12, v1, v2, derivative)

    def self_dual(self, v):
        return abrelu_self_dual(self.a, self.b, v)


class Relu(AbstractActivation):
    r"""$\phi(x) = \max(x, 0)$.

    **Example:**

    ```pycon
    >>> x = jnp.array([[1.0, 0.0], [0.6, 0.8]])     # cosine 0.6
    >>> model = et.Serial(et.Dense(512), et.Relu())
    >>> k = model.kernel(x, None)                    # after Dense: K = x x^T / 2
    >>> rho, v = 0.6, 0.5
    >>> t = v / (2 * np.pi) * (np.sqrt(1 - rho**2) + (np.pi - np.arccos(rho)) * rho)
    >>> t_dot = (np.pi - np.arccos(rho)) / (2 * np.pi)
    >>> bool(np.isclose(k.nngp[0, 1], t))
    True
    >>> bool(np.isclose(k.ntk[0, 1], rho * v * t_dot))  # Theta = K after Dense
    True
    ```
    """

    def fn(self, x: Array) -> Array:
        return jnp.maximum(x, 0)

    def duals(self, c12, v1, v2, derivative):
        return abrelu_duals(0.0, 1.0, c12, v1, v2, derivative)

    def self_dual(self, v):
        return abrelu_self_dual(0.0, 1.0, v)


class LeakyRelu(AbstractActivation):
    r"""$\phi(x) = \alpha x$ for $x < 0$ and $x$ for $x \ge 0$.

    **Example:**

    ```pycon
    >>> act = et.LeakyRelu(0.1)
    >>> x = jnp.array([[1.0, 0.0], [0.6, 0.8]])          # two unit vectors
    >>> k = et.Serial(et.Dense(1), act).kernel(x, None)   # u ~ N(0, x x^T / 2)
    >>> u = x @ jax.random.normal(jax.random.key(0), (2, 400_000)) / jnp.sqrt(2)
    >>> mc = act(u) @ act(u).T / u.shape[1]               # E[phi(u) phi(u')]
    >>> bool(jnp.allclose(k.nngp, mc, atol=0.01))
    True
    ```
    """

    alpha: float

    def __init__(self, alpha: float):
        self.alpha = alpha

    def fn(self, x: Array) -> Array:
        return jnp.where(x < 0, self.alpha * x, x)

    def duals(self, c12, v1, v2, derivative):
        return abrelu_duals(self.alpha, 1.0, c12, v1, v2, derivative)

    def self_dual(self, v):
        return abrelu_self_dual(self.alpha, 1.0, v)


class Abs(AbstractActivation):
    r"""$\phi(x) = |x|$.

    **Example:**

    ```pycon
    >>> act = et.Abs()
    >>> x = jnp.array([[1.0, 0.0], [0.6, 0.8]])          # two unit vectors
    >>> k = et.Serial(et.Dense(1), act).kernel(x, None)   # u ~ N(0, x x^T / 2)
    >>> u = x @ jax.random.normal(jax.random.key(0), (2, 400_000)) / jnp.sqrt(2)
    >>> mc = act(u) @ act(u).T / u.shape[1]               # E[phi(u) phi(u')]
    >>> bool(jnp.allclose(k.nngp, mc, atol=0.01))
    True
    ```
    """

    def fn(self, x: Array) -> Array:
        return jnp.abs(x)

    def duals(self, c12, v1, v2, derivative):
        return abrelu_duals(-1.0, 1.0, c12, v1, v2, derivative)

    def self_dual(self, v):
        return abrelu_self_dual(-1.0, 1.0, v)
