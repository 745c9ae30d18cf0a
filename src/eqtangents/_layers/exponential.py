r"""Activations whose duals come from the Gaussian moment generating function.

For jointly Gaussian $(u, v)$ with variances $v_1, v_2$ and covariance
$c_{12}$, $E[e^{\beta (u + v)}] = \exp\big(\tfrac{\beta^2}{2}(v_1 + v_2 + 2
c_{12})\big)$ for real or imaginary $\beta$. This gives the duals of `Exp`
($\beta$ real) and of `Sin`, `Cos`, `Rbf` (through $\cos$, $\beta$ imaginary);
`ExpNormalized` is the normalised kernel built from the same exponential.
"""

from __future__ import annotations

import math

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, Float

from .._numerics import correlation, safe_divide, safe_sqrt
from ._activation import AbstractActivation
from .smooth import real


def gaussian_mgf(s, c12, v1, v2):
    r"""$E[e^{\beta(u + v)}] = \exp\big(s (v_1 + v_2 + 2 c_{12}) / 2\big)$ with
    $s = \beta^2$ (so $s < 0$ and $-c_{12}$ give $E[\cos(\sqrt{-s}(u - v))]$)."""
    return jnp.exp(0.5 * s * (v1 + v2 + 2 * c12))


def sin_duals(a, b, cos_2c, c12, v1, v2, derivative):
    r"""Duals of $\phi(x) = a \sin(b x + c)$, given $\cos 2c$.

    With $\sin x \sin y = \tfrac12[\cos(x - y) - \cos(x + y)]$,
    $s_\pm = \exp\big(-\tfrac{b^2}{2}(v_1 + v_2 \mp 2 c_{12})\big)$:

    $$T = \frac{a^2}{2}\left(s_+ - \cos(2c)\, s_-\right), \qquad
      \dot T = \frac{a^2 b^2}{2}\left(s_+ + \cos(2c)\, s_-\right).$$
    """
    b2 = b * b
    s_plus = gaussian_mgf(-b2, -c12, v1, v2)
    s_minus = cos_2c * gaussian_mgf(-b2, c12, v1, v2)
    half_a2 = 0.5 * a * a
    nngp = half_a2 * (s_plus - s_minus)
    dot = half_a2 * b2 * (s_plus + s_minus) if derivative else None
    return nngp, dot


class Sin(AbstractActivation):
    r"""$\phi(x) = a \sin(b x + c)$.

    **Arguments:**

    - `a`: output scale.
    - `b`: input scale (frequency).
    - `c`: phase shift.

    $$T = \frac{a^2}{2} e^{-b^2 (v_1 + v_2)/2}
      \left(e^{b^2 c_{12}} - \cos(2c)\, e^{-b^2 c_{12}}\right), \qquad
      \dot T = \frac{a^2 b^2}{2} e^{-b^2 (v_1 + v_2)/2}
      \left(e^{b^2 c_{12}} + \cos(2c)\, e^{-b^2 c_{12}}\right).$$

    **Example:**

    ```pycon
    >>> act = et.Sin(a=1.0, b=2.0, c=0.3)
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
        self.a = real(a, "Sin", "a")
        self.b = real(b, "Sin", "b")
        self.c = real(c, "Sin", "c")

    def fn(self, x: Float[Array, "*shape"]) -> Float[Array, "*shape"]:
        return self.a * jnp.sin(self.b * x + self.c)

    def duals(self, c12, v1, v2, derivative):
        cos_2c = math.cos(2 * self.c)
        return sin_duals(self.a, self.b, cos_2c, c12, v1, v2, derivative)


class Cos(AbstractActivation):
    r"""$\phi(x) = a \cos(b x + c)$.

    **Arguments:**

    - `a`: output scale.
    - `b`: input scale (frequency).
    - `c`: phase shift.

    Since $\cos(bx + c) = \sin(bx + c + \pi/2)$, the kernels are those of `Sin`
    with $\cos(2c)$ replaced by $-\cos(2c)$.

    **Example:**

    ```pycon
    >>> act = et.Cos(a=1.0, b=2.0, c=0.3)
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
        self.a = real(a, "Cos", "a")
        self.b = real(b, "Cos", "b")
        self.c = real(c, "Cos", "c")

    def fn(self, x: Float[Array, "*shape"]) -> Float[Array, "*shape"]:
        return self.a * jnp.cos(self.b * x + self.c)

    def duals(self, c12, v1, v2, derivative):
        cos_2c = -math.cos(2 * self.c)
        return sin_duals(self.a, self.b, cos_2c, c12, v1, v2, derivative)


class Rbf(AbstractActivation):
    r"""$\phi(x) = \sqrt2 \sin(\sqrt{2\gamma}\, x + \pi/4)$: its NNGP is the RBF kernel.

    **Arguments:**

    - `gamma`: the inverse length scale, $\gamma = 1 / (2\ell^2)$; non-negative.

    This is `Sin(a=sqrt(2), b=sqrt(2 gamma), c=pi/4)`, for which $\cos 2c = 0$:

    $$T = e^{-\gamma (v_1 + v_2 - 2 c_{12})}, \qquad \dot T = 2\gamma\, T.$$

    After a `Dense` layer on inputs $x, x'$ of dimension $d$ with $\sigma_w = 1$
    and no bias, $T = \exp(-\gamma \lVert x - x' \rVert^2 / d)$.

    **Example:**

    ```pycon
    >>> x = jnp.array([[1.0, 0.0, 0.0], [0.0, 1.0, 2.0]])
    >>> model = et.Serial(et.Dense(1, b_std=None), et.Rbf(gamma=0.5))
    >>> k = model.kernel(x, None, "nngp")
    >>> d2 = jnp.sum((x[0] - x[1]) ** 2)                 # |x - x'|^2 = 6, d = 3
    >>> bool(jnp.isclose(k[0, 1], jnp.exp(-0.5 * d2 / 3)))
    True
    ```
    """

    gamma: float

    def __init__(self, gamma: float = 1.0):
        self.gamma = real(gamma, "Rbf", "gamma", nonnegative=True)

    def fn(self, x: Float[Array, "*shape"]) -> Float[Array, "*shape"]:
        return math.sqrt(2) * jnp.sin(math.sqrt(2 * self.gamma) * x + math.pi / 4)

    def duals(self, c12, v1, v2, derivative):
        nngp = gaussian_mgf(-2 * self.gamma, -c12, v1, v2)
        dot = 2 * self.gamma * nngp if derivative else None
        return nngp, dot


class Exp(AbstractActivation):
    r"""$\phi(x) = a e^{b x}$.

    **Arguments:**

    - `a`: output scale.
    - `b`: input scale.

    $$T = a^2 e^{b^2 (v_1 + v_2 + 2 c_{12})/2}, \qquad \dot T = b^2\, T.$$

    **Example:**

    ```pycon
    >>> act = et.Exp(a=1.0, b=0.5)
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

    def __init__(self, a: float = 1.0, b: float = 1.0):
        self.a = real(a, "Exp", "a")
        self.b = real(b, "Exp", "b")

    def fn(self, x: Float[Array, "*shape"]) -> Float[Array, "*shape"]:
        return self.a * jnp.exp(self.b * x)

    def duals(self, c12, v1, v2, derivative):
        b2 = self.b**2
        nngp = self.a**2 * gaussian_mgf(b2, c12, v1, v2)
        dot = b2 * nngp if derivative else None
        return nngp, dot


class ExpNormalized(AbstractActivation):
    r"""The normalised Gaussian kernel (Shankar et al. 2020), defined by its kernel.

    **Arguments:**

    - `gamma`: the exponent's scale, non-negative.
    - `shift`: added to the correlation inside the exponent.
    - `do_clip`: whether to clip the correlation to $[-1, 1]$ against rounding.

    With $\rho = c_{12}/\sqrt{v_1 v_2}$ (taken as 0 where a variance is 0):

    $$T = \sqrt{v_1 v_2}\; e^{\gamma(\rho + s)}, \qquad
      \dot T = \frac{\partial T}{\partial c_{12}} = \gamma\, e^{\gamma(\rho + s)}.$$

    This layer has no finite-width forward pass: calling it raises a
    `ValueError`. On unit-variance inputs (after a normalisation layer) its
    kernels equal those of `Exp(a=exp(gamma * (shift - 1) / 2), b=sqrt(gamma))`,
    which does have one.

    **Example:**

    ```pycon
    >>> x = jnp.array([[1.0, 0.0], [0.6, 0.8]])           # unit vectors
    >>> first = et.Dense(1, W_std=2**0.5)                  # unit preactivation variance
    >>> k = et.Serial(first, et.ExpNormalized(gamma=2.0, shift=-1.0)).kernel(x, None)
    >>> same = et.Exp(a=float(np.exp(2.0 * (-1.0 - 1) / 2)), b=2.0**0.5)
    >>> bool(jnp.allclose(k.nngp, et.Serial(first, same).kernel(x, None).nngp))
    True
    ```
    """

    gamma: float
    shift: float
    do_clip: bool = eqx.field(static=True, default=True)

    def __init__(self, gamma: float = 1.0, shift: float = -1.0, do_clip: bool = True):
        self.gamma = real(gamma, "ExpNormalized", "gamma", nonnegative=True)
        self.shift = real(shift, "ExpNormalized", "shift")
        if not isinstance(do_clip, bool):
            raise ValueError(
                f"ExpNormalized: `do_clip` must be True or False, got {do_clip!r}."
            )
        self.do_clip = do_clip

    def fn(self, x: Float[Array, "*shape"]) -> Float[Array, "*shape"]:
        a = math.exp(self.gamma * (self.shift - 1) / 2)
        b = math.sqrt(self.gamma)
        raise ValueError(
            "ExpNormalized is defined by its kernel only and has no finite-width "
            "forward pass; use it in `model.kernel(...)`. For a finite network "
            "with the same kernels on unit-variance inputs, normalise the "
            f"pre-activations (e.g. with et.LayerNorm) and use et.Exp(a={a!r}, "
            f"b={b!r})."
        )

    def duals(self, c12, v1, v2, derivative):
        if self.do_clip:
            rho, prod = correlation(c12, v1, v2)
        else:
            prod = safe_sqrt(v1 * v2)
            rho = safe_divide(c12, prod)
        scale = jnp.exp(self.gamma * (rho + self.shift))
        nngp = prod * scale
        dot = self.gamma * scale if derivative else None
        return nngp, dot
