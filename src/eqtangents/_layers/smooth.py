r"""Smooth activations with Gaussian-integral dual kernels: erf, GELU, Gaussian, Gabor.

Each dual is written in terms of the covariance $c_{12}$ and the variances
$v_1, v_2$ directly (never through the correlation), and every square root in
it is of a quantity bounded below by one (for `Gaussian`, when $b \le 0$), so
values and gradients are finite everywhere, including at $c_{12}^2 = v_1 v_2$
and at zero variance.
"""

from __future__ import annotations

import math
import numbers

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from .._numerics import safe_sqrt
from ._activation import AbstractActivation

_SIGMOID_LIKE_SCALE = 2.4020563531719796


def real(value, layer: str, name: str, *, nonnegative: bool = False) -> float:
    """Validates a real hyperparameter and returns it as a Python float."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(
            f"{layer}: `{name}` must be a real number, got {value!r}. "
            "Activation hyperparameters are fixed Python numbers."
        )
    value = float(value)
    if not math.isfinite(value) or (nonnegative and value < 0):
        kind = "a non-negative" if nonnegative else "a finite"
        raise ValueError(f"{layer}: `{name}` must be {kind} number, got {value}.")
    return value


# --------------------------------------------------------------------------- erf


def erf_duals(a, b, c, c12, v1, v2, derivative):
    r"""Duals of $\phi(x) = a\,\mathrm{erf}(b x) + c$ (Williams 1997).

    With $d_i = 1 + 2 b^2 v_i$ and $\Delta = \sqrt{d_1 d_2 - 4 b^4 c_{12}^2} \ge 1$:

    $$T = \frac{2a^2}{\pi} \arctan\frac{2 b^2 c_{12}}{\Delta} + c^2, \qquad
      \dot T = \frac{4 a^2 b^2}{\pi \Delta}.$$

    The shift $c$ only adds $c^2$ to $T$ since $\mathrm{erf}$ is odd.
    """
    b2 = b * b
    delta = safe_sqrt((1 + 2 * b2 * v1) * (1 + 2 * b2 * v2) - 4 * b2 * b2 * c12**2)
    nngp = (2 * a * a / jnp.pi) * jnp.arctan2(2 * b2 * c12, delta) + c * c
    dot = (4 * a * a * b2 / jnp.pi) / delta if derivative else None
    return nngp, dot


class Erf(AbstractActivation):
    r"""$\phi(x) = a\,\mathrm{erf}(b x) + c$.

    **Arguments:**

    - `a`: output scale.
    - `b`: input scale.
    - `c`: output shift.

    The dual kernels are

    $$T = \frac{2a^2}{\pi} \arcsin\frac{2 b^2 c_{12}}
      {\sqrt{(1 + 2b^2 v_1)(1 + 2b^2 v_2)}} + c^2, \qquad
      \dot T = \frac{4 a^2 b^2}{\pi}
      \left[(1 + 2b^2 v_1)(1 + 2b^2 v_2) - 4 b^4 c_{12}^2\right]^{-1/2}.$$

    **Example:**

    ```pycon
    >>> act = et.Erf(a=1.0, b=2.0, c=0.1)
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
    c: float

    def __init__(self, a: float = 1.0, b: float = 1.0, c: float = 0.0):
        self.a = real(a, "Erf", "a")
        self.b = real(b, "Erf", "b")
        self.c = real(c, "Erf", "c")

    def fn(self, x: Float[Array, "*shape"]) -> Float[Array, "*shape"]:
        return self.a * jax.scipy.special.erf(self.b * x) + self.c

    def duals(self, c12, v1, v2, derivative):
        return erf_duals(self.a, self.b, self.c, c12, v1, v2, derivative)


class SigmoidLike(AbstractActivation):
    r"""A sigmoid-shaped erf: $\phi(x) = \tfrac12 \mathrm{erf}(x / s) + \tfrac12$.

    The scale $s = 2.4020563531719796$ minimises the squared distance to the
    logistic sigmoid on $[-5, 5]$ (Neural Tangents' `Sigmoid_like`). The kernels
    are those of `Erf(a=0.5, b=1/s, c=0.5)`.

    **Example:**

    ```pycon
    >>> x = jnp.array([[1.0, 0.0], [0.6, 0.8]])
    >>> k = et.Serial(et.Dense(1), et.SigmoidLike()).kernel(x, None)
    >>> k_erf = et.Serial(et.Dense(1), et.Erf(a=0.5, b=1 / 2.4020563531719796, c=0.5))
    >>> bool(jnp.allclose(k.nngp, k_erf.kernel(x, None).nngp))
    True
    >>> t = jnp.linspace(-5, 5, 101)
    >>> float(jnp.max(jnp.abs(et.SigmoidLike()(t) - jax.nn.sigmoid(t)))) < 0.02
    True
    ```
    """

    def fn(self, x: Float[Array, "*shape"]) -> Float[Array, "*shape"]:
        return 0.5 * jax.scipy.special.erf(x / _SIGMOID_LIKE_SCALE) + 0.5

    def duals(self, c12, v1, v2, derivative):
        return erf_duals(0.5, 1 / _SIGMOID_LIKE_SCALE, 0.5, c12, v1, v2, derivative)


# -------------------------------------------------------------------------- gelu


class Gelu(AbstractActivation):
    r"""GELU, $\phi(x) = x\,\Phi(x)$ with $\Phi$ the standard normal CDF.

    **Arguments:**

    - `approximate`: whether the forward pass uses the tanh approximation
      (`jax.nn.gelu(x, approximate=True)`). It only changes the finite-width
      forward pass: the kernels are always those of the exact $x\,\Phi(x)$, as
      in Neural Tangents.

    With $p = v_1 v_2$, $q = (1 + v_1)(1 + v_2)$, $\Delta = \sqrt{q - c_{12}^2}
    \ge 1$ and $\theta = \arctan(c_{12}/\Delta)$ (Tsuchida et al. 2020):

    $$T = \frac{c_{12}}{4} + \frac{1}{2\pi}\left[c_{12}\,\theta
      + \frac{c_{12}^2 + p\,\Delta^2}{q\,\Delta}\right], \qquad
      \dot T = \frac14 + \frac{1}{2\pi}\left[\theta + \frac{c_{12}}{\Delta}
      \left(1 + \frac{1}{\Delta^2} + \frac{1 - p}{q}\right)\right].$$

    **Example:**

    ```pycon
    >>> act = et.Gelu()
    >>> x = jnp.array([[1.0, 0.0], [0.6, 0.8]])          # two unit vectors
    >>> k = et.Serial(et.Dense(1), act).kernel(x, None)   # u ~ N(0, x x^T / 2)
    >>> u = x @ jax.random.normal(jax.random.key(0), (2, 400_000)) / jnp.sqrt(2)
    >>> mc = act(u) @ act(u).T / u.shape[1]               # E[phi(u) phi(u')]
    >>> bool(jnp.allclose(k.nngp, mc, atol=0.01))
    True
    ```
    """

    approximate: bool = eqx.field(static=True, default=False)

    def __init__(self, approximate: bool = False):
        if not isinstance(approximate, bool):
            raise ValueError(
                f"Gelu: `approximate` must be True or False, got {approximate!r}."
            )
        self.approximate = approximate

    def fn(self, x: Float[Array, "*shape"]) -> Float[Array, "*shape"]:
        return jax.nn.gelu(x, approximate=self.approximate)

    def duals(self, c12, v1, v2, derivative):
        p = v1 * v2
        q = (1 + v1) * (1 + v2)
        # q - c12^2 without cancellation at large variances (|c12| <= sqrt(p)).
        root, size = safe_sqrt(p), jnp.abs(c12)
        delta2 = 1 + v1 + v2 + (root - size) * (root + size)
        delta = safe_sqrt(delta2)
        theta = jnp.arctan2(c12, delta)
        nngp = c12 / 4 + (c12 * theta + (c12**2 + p * delta2) / (q * delta)) / (
            2 * jnp.pi
        )
        dot = None
        if derivative:
            ratio = c12 / delta
            dot = 0.25 + (theta + ratio * (1 + 1 / delta2 + (1 - p) / q)) / (2 * jnp.pi)
        return nngp, dot


# ---------------------------------------------------------------------- gaussian


class Gaussian(AbstractActivation):
    r"""$\phi(x) = a \exp(b x^2)$.

    **Arguments:**

    - `a`: output scale.
    - `b`: the exponent's coefficient; $b < 0$ gives a bump.

    With $\Delta = \sqrt{(1 - 2b v_1)(1 - 2b v_2) - 4 b^2 c_{12}^2}$:

    $$T = \frac{a^2}{\Delta}, \qquad \dot T = \frac{4 a^2 b^2 c_{12}}{\Delta^3}.$$

    For $b \le 0$, $\Delta \ge 1$. For $b > 0$ the expectation is finite only
    while $4 b \max(v_1, v_2) < 1$; beyond it the kernel is infinite.

    **Example:**

    ```pycon
    >>> act = et.Gaussian(a=1.0, b=-1.0)
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

    def __init__(self, a: float = 1.0, b: float = -1.0):
        self.a = real(a, "Gaussian", "a")
        self.b = real(b, "Gaussian", "b")

    def fn(self, x: Float[Array, "*shape"]) -> Float[Array, "*shape"]:
        return self.a * jnp.exp(self.b * x**2)

    def duals(self, c12, v1, v2, derivative):
        a2, b = self.a**2, self.b
        inv = 1 / safe_sqrt((1 - 2 * b * v1) * (1 - 2 * b * v2) - 4 * b * b * c12**2)
        nngp = a2 * inv
        dot = 4 * a2 * b * b * c12 * inv**3 if derivative else None
        return nngp, dot


# ------------------------------------------------------------------------- gabor


class Gabor(AbstractActivation):
    r"""The Gabor function $\phi(x) = e^{-x^2} \sin x$.

    With $s = v_1 + v_2$, $D = 4(v_1 v_2 - c_{12}^2)$ and
    $d = \det(I + 2\Sigma) = 1 + 2s + D \ge 1$:

    $$T = \frac{e^{-(s + D)/(2d)}}{\sqrt d} \sinh\frac{c_{12}}{d}, \qquad
      \dot T = \frac{e^{-(s + D)/(2d)}}{d^{5/2}}
      \left[Q \cosh\frac{c_{12}}{d} + R \sinh\frac{c_{12}}{d}\right],$$

    where $Q = 1 + 2s + 4(v_1 v_2 + c_{12}^2)$ and $R = 4 c_{12}(2 + 3s + D)$.
    $T$ follows from $\sin u \sin v = \tfrac12[\cos(u - v) - \cos(u + v)]$ and
    the Gaussian integral
    $E[e^{-u^2 - v^2 + i t^\top (u, v)}] = d^{-1/2}
    e^{-t^\top \Sigma (I + 2\Sigma)^{-1} t / 2}$; $\dot T = \partial T /
    \partial c_{12}$.

    **Example:**

    ```pycon
    >>> act = et.Gabor()
    >>> x = jnp.array([[1.0, 0.0], [0.6, 0.8]])          # two unit vectors
    >>> k = et.Serial(et.Dense(1), act).kernel(x, None)   # u ~ N(0, x x^T / 2)
    >>> u = x @ jax.random.normal(jax.random.key(0), (2, 400_000)) / jnp.sqrt(2)
    >>> mc = act(u) @ act(u).T / u.shape[1]               # E[phi(u) phi(u')]
    >>> bool(jnp.allclose(k.nngp, mc, atol=0.01))
    True
    ```
    """

    def fn(self, x: Float[Array, "*shape"]) -> Float[Array, "*shape"]:
        return jnp.exp(-(x**2)) * jnp.sin(x)

    def duals(self, c12, v1, v2, derivative):
        s = v1 + v2
        big_d = 4 * (v1 * v2 - c12**2)
        d = 1 + 2 * s + big_d
        envelope = jnp.exp(-(s + big_d) / (2 * d))
        phase = c12 / d
        sinh = jnp.sinh(phase)
        nngp = envelope * sinh / jnp.sqrt(d)
        dot = None
        if derivative:
            q = 1 + 2 * s + 4 * (v1 * v2 + c12**2)
            r = 4 * c12 * (2 + 3 * s + big_d)
            dot = envelope * (q * jnp.cosh(phase) + r * sinh) / d**2.5
        return nngp, dot
