r"""Polynomial and positively homogeneous activations.

Polynomials (`Monomial`, `Hermite`, `Polynomial`) have duals that are
polynomials in $c_{12}$, $v_1$, $v_2$ (Mehler's formula). Write
$\phi(\sqrt{v}\, z) = \sum_l h_l(v)\, \mathrm{He}_l(z)/\sqrt{l!}$ in the
orthonormal Hermite basis; for jointly Gaussian $u = \sqrt{v_1} z_1$,
$v = \sqrt{v_2} z_2$ with $E[z_1 z_2] = \rho$, $E[\mathrm{He}_l(z_1)
\mathrm{He}_m(z_2)] = l!\, \rho^l \delta_{lm}$, so

$$T = \sum_l h_l(v_1) h_l(v_2) \rho^l = \sum_l g_l(v_1) g_l(v_2)\, c_{12}^l,
  \qquad \dot T = \sum_{l \ge 1} l\, g_l(v_1) g_l(v_2)\, c_{12}^{l-1},$$

with $g_l(v) = h_l(v) / v^{l/2}$, a polynomial in $v$. By
$x^n = \sum_k \frac{n!}{k!\,(n-2k)!\,2^k} \mathrm{He}_{n-2k}(x)$, the monomial
$x^n$ has $g_{n-2k}(v) = \frac{n!}{k!\,2^k\sqrt{(n-2k)!}}\, v^k$.

`Sign` and `RectifiedMonomial` are positively homogeneous: their duals are
the arc-cosine kernels of Cho & Saul (2009).
"""

from __future__ import annotations

import math
import numbers
import operator
from collections.abc import Sequence
from fractions import Fraction

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, Float

from .._numerics import correlation, safe_arccos, safe_sqrt
from ._activation import AbstractActivation
from .smooth import real

# A table maps each Hermite degree l to the coefficients of g_l in powers of s.
Table = dict[int, dict[int, float]]


def degree_of(value, layer: str) -> int:
    """Validates a non-negative integer degree."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{layer}: `degree` must be an integer, got {value!r}.")
    value = operator.index(value)
    if value < 0:
        raise ValueError(f"{layer}: `degree` must be non-negative, got {value}.")
    return value


def _monomial_table(n: int, hermite: bool = False) -> Table:
    r"""The table of $x^n$ (with $s = v$), or of $\mathrm{He}_n(x)/\sqrt{n!}$ (with
    $s = v - 1$): $g_{n-2k}$ has one term, at $s^k$, computed exactly in rationals."""
    table: Table = {}
    for k in range(n // 2 + 1):
        l = n - 2 * k
        weight = math.comb(n, 2 * k) * _double_factorial(2 * k - 1)  # n!/(k! l! 2^k)
        square = Fraction(weight**2 * math.factorial(l))
        if hermite:
            square /= math.factorial(n)
        try:
            table[l] = {k: math.sqrt(square)}
        except OverflowError:
            table[l] = {k: math.inf}
    return table


def _double_factorial(n: int) -> int:
    return math.prod(range(n, 0, -2)) if n > 0 else 1


def _horner(coefficients: Sequence, x):
    r"""$\sum_i a_i x^i$ for Python coefficients `a`."""
    out = jnp.zeros_like(x) + coefficients[-1]
    for a in coefficients[-2::-1]:
        out = out * x + a
    return out


def _eval_g(row: dict[int, float], s):
    return _horner([row.get(k, 0.0) for k in range(max(row) + 1)], s)


def mehler_duals(table: Table, s1, s2, c12, derivative):
    r"""$T = \sum_l g_l(s_1) g_l(s_2) c_{12}^l$ and $\dot T = \partial_{c_{12}} T$."""
    degree = max(table, default=-1)
    if degree < 0:
        zero = jnp.zeros_like(c12 * s1 * s2)
        return zero, (zero if derivative else None)
    weights = [
        _eval_g(table[l], s1) * _eval_g(table[l], s2) if l in table else 0.0
        for l in range(degree + 1)
    ]
    nngp = _horner(weights, c12)
    dot = None
    if derivative:
        if degree == 0:
            dot = jnp.zeros_like(nngp)
        else:
            dot = _horner([l * w for l, w in enumerate(weights)][1:], c12)
    return nngp, dot


class Monomial(AbstractActivation):
    r"""$\phi(x) = x^n$ for any integer degree $n \ge 0$.

    **Arguments:**

    - `degree`: the power $n$.

    With $p = v_1 v_2$ (Mehler's formula; see the module docstring):

    $$T = \sum_{k=0}^{\lfloor n/2 \rfloor}
      \frac{(n!)^2}{(k!)^2\,(n-2k)!\,4^k}\; p^k c_{12}^{n-2k}, \qquad
      \dot T = n^2\, T_{n-1},$$

    e.g. $T_2 = 2c_{12}^2 + p$, $T_3 = 6c_{12}^3 + 9 c_{12} p$. On the diagonal
    $T = (2n-1)!!\, v^n$.

    **Example:**

    ```pycon
    >>> x = jnp.array([[1.0, 0.0], [0.6, 0.8]])     # after Dense: v = 0.5, c = 0.3
    >>> k = et.Serial(et.Dense(1), et.Monomial(3)).kernel(x, None, "nngp")
    >>> print(np.round(k, 4))                        # 15 v^3 and 6 c^3 + 9 c v^2
    [[1.875 0.837]
     [0.837 1.875]]
    ```
    """

    degree: int = eqx.field(static=True)

    def __init__(self, degree: int):
        self.degree = degree_of(degree, "Monomial")

    def fn(self, x: Float[Array, "*shape"]) -> Float[Array, "*shape"]:
        return x**self.degree

    def duals(self, c12, v1, v2, derivative):
        return mehler_duals(_monomial_table(self.degree), v1, v2, c12, derivative)


class Hermite(AbstractActivation):
    r"""The normalised probabilists' Hermite polynomial $\mathrm{He}_n(x)/\sqrt{n!}$.

    **Arguments:**

    - `degree`: $n \ge 0$.

    By the multiplication theorem $\mathrm{He}_n(\sigma z) = \sum_k
    \sigma^{n-2k} (\sigma^2 - 1)^k \frac{n!}{k!\,(n-2k)!\,2^k}
    \mathrm{He}_{n-2k}(z)$ the exact duals for any variances are

    $$T = \frac{1}{n!} \sum_{k=0}^{\lfloor n/2 \rfloor}
      \frac{(n!)^2}{(k!)^2\,(n-2k)!\,4^k}
      \big((v_1 - 1)(v_2 - 1)\big)^k c_{12}^{n-2k}, \qquad
      \dot T = n\, T_{n-1}.$$

    On unit-variance inputs ($v_1 = v_2 = 1$, e.g. after `LayerNorm`) this is
    $T = c_{12}^n$, $\dot T = n c_{12}^{n-1}$. Neural Tangents applies that
    formula to every input (it assumes unit variance and only warns), so the two
    agree exactly at unit variance; elsewhere NT's value is not
    $E[\phi(u)\phi(v)]$, and this one is.

    **Example:**

    ```pycon
    >>> x = jnp.array([[1.0, 0.0], [0.6, 0.8]])
    >>> first = et.Dense(1, W_std=2**0.5)           # unit variance, correlation 0.6
    >>> k = et.Serial(first, et.Hermite(3)).kernel(x, None, "nngp")
    >>> print(np.round(k, 4))                        # c^3 at unit variance
    [[1.    0.216]
     [0.216 1.   ]]
    ```
    """

    degree: int = eqx.field(static=True)

    def __init__(self, degree: int):
        self.degree = degree_of(degree, "Hermite")

    def fn(self, x: Float[Array, "*shape"]) -> Float[Array, "*shape"]:
        # The normalised three-term recurrence h_{k+1} = (x h_k - sqrt(k) h_{k-1})
        # / sqrt(k + 1) is stable and never forms n!.
        previous, current = jnp.zeros_like(x), jnp.ones_like(x)
        for k in range(self.degree):
            previous, current = (
                current,
                (x * current - math.sqrt(k) * previous) / (math.sqrt(k + 1)),
            )
        return current

    def duals(self, c12, v1, v2, derivative):
        table = _monomial_table(self.degree, hermite=True)
        return mehler_duals(table, v1 - 1, v2 - 1, c12, derivative)


class Polynomial(AbstractActivation):
    r"""$\phi(x) = \sum_i a_i x^i$, coefficients in increasing degree.

    **Arguments:**

    - `coef`: the coefficients $a_0, a_1, \ldots$ (as in
      `numpy.polynomial.Polynomial`).

    The duals follow from Mehler's formula (module docstring) with
    $g_l(v) = \sum_k a_{l+2k} \frac{(l+2k)!}{k!\, l!\, 2^k} \sqrt{l!}\; v^k$.

    **Example:**

    ```pycon
    >>> x = jnp.array([[1.0, 0.0], [0.6, 0.8]])
    >>> k = et.Serial(et.Dense(1), et.Polynomial([0.0, 0.0, 1.0])).kernel(x, None)
    >>> k2 = et.Serial(et.Dense(1), et.Monomial(2)).kernel(x, None)   # 2 c^2 + v1 v2
    >>> bool(jnp.allclose(k.nngp, k2.nngp)), bool(jnp.allclose(k.ntk, k2.ntk))
    (True, True)
    >>> act = et.Polynomial([0.5, -1.0, 0.0, 0.3])
    >>> k = et.Serial(et.Dense(1), act).kernel(x, None)   # u ~ N(0, x x^T / 2)
    >>> u = x @ jax.random.normal(jax.random.key(0), (2, 400_000)) / jnp.sqrt(2)
    >>> mc = act(u) @ act(u).T / u.shape[1]               # E[phi(u) phi(u')]
    >>> bool(jnp.allclose(k.nngp, mc, atol=0.01))
    True
    ```
    """

    coef: tuple[float, ...] = eqx.field(static=True)

    def __init__(self, coef: Sequence[float]):
        if isinstance(coef, str) or not hasattr(coef, "__iter__"):
            raise ValueError(
                f"Polynomial: `coef` must be a sequence of numbers, got {coef!r}."
            )
        self.coef = tuple(
            real(a, "Polynomial", f"coef[{i}]") for i, a in enumerate(coef)
        )

    def fn(self, x: Float[Array, "*shape"]) -> Float[Array, "*shape"]:
        if not self.coef:
            return jnp.zeros_like(x)
        return _horner(self.coef, x)

    def duals(self, c12, v1, v2, derivative):
        table: Table = {}
        for n, a in enumerate(self.coef):
            if a == 0:
                continue
            for l, row in _monomial_table(n).items():
                for k, g in row.items():
                    table.setdefault(l, {})
                    table[l][k] = table[l].get(k, 0.0) + a * g
        return mehler_duals(table, v1, v2, c12, derivative)


# ------------------------------------------------------------ homogeneous family


class Sign(AbstractActivation):
    r"""$\phi(x) = \mathrm{sign}(x)$.

    $$T = \frac{2}{\pi} \arcsin \rho = 1 - \frac{2}{\pi} \arccos\rho, \qquad
      \dot T = 0,$$

    with $\rho = c_{12}/\sqrt{v_1 v_2}$ (0 where a variance is 0). The derivative
    of `sign` is zero almost everywhere, so, as in Neural Tangents, gradients do
    not flow through this layer and it contributes nothing to the NTK.

    **Example:**

    ```pycon
    >>> x = jnp.array([[1.0, 0.0], [0.6, 0.8]])     # correlation 0.6
    >>> k = et.Serial(et.Dense(1), et.Sign()).kernel(x, None)
    >>> bool(jnp.isclose(k.nngp[0, 1], 2 / jnp.pi * jnp.arcsin(0.6)))
    True
    >>> print(k.ntk)                                 # no gradient flows through sign
    [[0. 0.]
     [0. 0.]]
    ```
    """

    def fn(self, x: Float[Array, "*shape"]) -> Float[Array, "*shape"]:
        return jnp.sign(x)

    def duals(self, c12, v1, v2, derivative):
        rho, _ = correlation(c12, v1, v2)
        nngp = 1 - (2 / jnp.pi) * safe_arccos(rho)
        return nngp, (jnp.zeros_like(nngp) if derivative else None)


def _arccos_polynomials(n: int) -> tuple[list[Fraction], list[Fraction]]:
    r"""Exact coefficients of $A_n$, $B_n$ in $J_n = A_n(\rho)\sqrt{1-\rho^2}
    + B_n(\rho)(\pi - \arccos\rho)$ (ascending powers of $\rho$).

    $J_n$ is $2\pi E[z_{1+}^n z_{2+}^n]$. By Price's theorem $J_n' = n^2
    J_{n-1}$, which splits into $B_n' = n^2 B_{n-1}$ and $(1-\rho^2)A_n' -
    \rho A_n + B_n = n^2 (1-\rho^2) A_{n-1}$; the constants come from
    $J_n(0) = 2\pi (E[z_+^n])^2$: $B_n(0) = ((n-1)!!)^2$ for even $n$ and
    $A_n(0) = ((n-1)!!)^2$ for odd $n$ (the other is 0).
    """
    a: list[Fraction] = []
    b: list[Fraction] = [Fraction(1)]
    for m in range(1, n + 1):
        start = Fraction(_double_factorial(m - 1) ** 2)
        b = [start if m % 2 == 0 else Fraction(0)] + [
            m * m * coefficient / (j + 1) for j, coefficient in enumerate(b)
        ]
        # r = m^2 (1 - rho^2) A_{m-1} - B_m, then (j+1) a_{j+1} = r_j + j a_{j-1}.
        r = [Fraction(0)] * (m + 2)
        for j, coefficient in enumerate(a):
            r[j] += m * m * coefficient
            r[j + 2] -= m * m * coefficient
        for j, coefficient in enumerate(b):
            r[j] -= coefficient
        new = [start if m % 2 == 1 else Fraction(0)]
        for j in range(m - 1):
            below = new[j - 1] if j >= 1 else Fraction(0)
            new.append((r[j] + j * below) / (j + 1))
        a = new
    return a, b


def _homogeneous(coefficients: Sequence[Fraction], c12, p, degree: int):
    r"""$\sum_j a_j c_{12}^j p^{(d - j)/2}$ over the $j$ with $d - j$ even."""
    out = jnp.zeros_like(c12 * p)
    for j, a in enumerate(coefficients):
        if a != 0:
            out = out + float(a) * c12**j * p ** ((degree - j) // 2)
    return out


def rectified_monomial_dual(n: int, c12, v1, v2):
    r"""$E[u_+^n v_+^n] = \frac{1}{2\pi}\big[\tilde A_n \sqrt{v_1 v_2 - c_{12}^2}
    + \tilde B_n (\pi - \arccos\rho)\big]$, with $\tilde A_n, \tilde B_n$ the
    homogeneous forms of $A_n, B_n$ (polynomials in $c_{12}$ and $v_1 v_2$)."""
    a, b = _arccos_polynomials(n)
    p = v1 * v2
    rho, prod = correlation(c12, v1, v2)
    out = _homogeneous(b, c12, p, n) * (jnp.pi - safe_arccos(rho))
    if a:
        # sqrt(v1 v2 - c12^2) from the same (snapped) rho as the arccos, so that
        # their sqrt(2 eps) terms cancel at rho = 1 - eps as they do exactly.
        sine = prod * safe_sqrt(1 - rho**2)
        out = out + _homogeneous(a, c12, p, n - 1) * sine
    return out / (2 * jnp.pi)


class RectifiedMonomial(AbstractActivation):
    r"""$\phi(x) = \max(x, 0)^n$, and the step $\mathbb 1[x \ge 0]$ for $n = 0$.

    **Arguments:**

    - `degree`: $n \ge 0$.

    The duals are the arc-cosine kernels of order $n$ (Cho & Saul 2009): with
    $\theta = \arccos\rho$,

    $$T_n = \frac{(v_1 v_2)^{n/2}}{2\pi} J_n(\theta), \qquad
      J_n(\theta) = A_n(\cos\theta)\sin\theta + B_n(\cos\theta)(\pi - \theta),
      \qquad \dot T_n = n^2\, T_{n-1},$$

    e.g. $J_0 = \pi - \theta$, $J_1 = \sin\theta + (\pi - \theta)\cos\theta$,
    $J_2 = 3\sin\theta\cos\theta + (\pi - \theta)(1 + 2\cos^2\theta)$. The
    polynomials $A_n$, $B_n$ are generated exactly for any $n$ (see
    `_arccos_polynomials`), so the kernel is finite at $\rho = \pm 1$ for every
    degree (Neural Tangents 0.6.5 returns NaN for this layer). For $n = 0$ the
    step's derivative is zero almost everywhere and $\dot T = 0$, as in Neural
    Tangents. Where a variance is zero, $\rho$ is taken as 0 (so the step's
    $T$ is $1/4$ there; for $n \ge 1$, $T = 0$ as it should be).

    **Example:**

    ```pycon
    >>> x = jnp.array([[1.0, 0.0], [0.6, 0.8]])
    >>> k1 = et.Serial(et.Dense(1), et.RectifiedMonomial(1)).kernel(x, None)
    >>> k2 = et.Serial(et.Dense(1), et.Relu()).kernel(x, None)
    >>> bool(jnp.allclose(k1.nngp, k2.nngp)), bool(jnp.allclose(k1.ntk, k2.ntk))
    (True, True)
    >>> act = et.RectifiedMonomial(2)
    >>> k = et.Serial(et.Dense(1), act).kernel(x, None)   # u ~ N(0, x x^T / 2)
    >>> u = x @ jax.random.normal(jax.random.key(0), (2, 400_000)) / jnp.sqrt(2)
    >>> mc = act(u) @ act(u).T / u.shape[1]               # E[phi(u) phi(u')]
    >>> bool(jnp.allclose(k.nngp, mc, atol=0.01))
    True
    ```
    """

    degree: int = eqx.field(static=True)

    def __init__(self, degree: int):
        self.degree = degree_of(degree, "RectifiedMonomial")

    def fn(self, x: Float[Array, "*shape"]) -> Float[Array, "*shape"]:
        if self.degree == 0:
            return jnp.where(x >= 0, 1, 0).astype(x.dtype)
        return jnp.maximum(x, 0) ** self.degree

    def duals(self, c12, v1, v2, derivative):
        n = self.degree
        nngp = rectified_monomial_dual(n, c12, v1, v2)
        dot = None
        if derivative:
            if n == 0:
                dot = jnp.zeros_like(nngp)
            else:
                dot = n * n * rectified_monomial_dual(n - 1, c12, v1, v2)
        return nngp, dot
