"""Numerically safe primitives: finite values and finite gradients everywhere."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike


def _arcsin_series_coefficients(degree: int) -> np.ndarray:
    r"""Power-basis coefficients of the polynomial $P$ of `arcsin`, below.

    $g(z) = (\arcsin\sqrt z / \sqrt z - 1)/z = \sum_{k \ge 1} \binom{2k}{k}
    z^{k-1} / (4^k (2k+1))$ is interpolated at Chebyshev points of $z \in [0,
    1/4]$, where the series converges like $4^{-k}$; 90 terms sum it to
    float64 rounding.
    """

    def g(z):
        out, ratio = np.zeros_like(z), 1.0
        for k in range(1, 90):
            ratio *= (2 * k - 1) / (2 * k)  # binom(2k, k) / 4^k
            out += ratio / (2 * k + 1) * z ** (k - 1)
        return out

    cheb = np.polynomial.Chebyshev.interpolate(g, degree, domain=[0, 0.25])
    # domain == window: the coefficients are those of plain powers of z.
    power = cheb.convert(
        kind=np.polynomial.Polynomial, domain=[0, 0.25], window=[0, 0.25]
    )
    return power.coef


# Degrees whose interpolation error (4e-9 and 7e-16 relative to g on [0, 1/4])
# sits well under half an ulp of the result.
_ARCSIN_COEFFICIENTS = {
    np.dtype(np.float32): _arcsin_series_coefficients(5),
    np.dtype(np.float64): _arcsin_series_coefficients(13),
}


def fast_arccos(c: Array) -> Array:
    r"""`arccos` on $[-1, 1]$ as a polynomial: an order of magnitude faster than
    `jnp.arccos` on CPUs, within 2 ulp in float32 and float64 (other dtypes are
    computed in float32).

    With $a = |c|$: for $a \le 1/2$, $\arccos c = \pi/2 - \operatorname{sign}(c)
    \arcsin a$; above, $\arccos a = 2 \arcsin s$ with $s = \sqrt{(1-a)/2} \le
    1/2$ and $\arccos(-a) = \pi - \arccos a$. On $[0, 1/2]$, $\arcsin s = s +
    s z P(z)$, $z = s^2$, with $P$ the interpolant of `_arcsin_series_coefficients`.
    """
    c = jnp.asarray(c)
    if c.dtype not in _ARCSIN_COEFFICIENTS:
        out = fast_arccos(c.astype(jnp.float32))
        return out.astype(c.dtype) if jnp.issubdtype(c.dtype, jnp.floating) else out
    coefficients = _ARCSIN_COEFFICIENTS[c.dtype].astype(c.dtype)
    a = jnp.abs(c)
    near_one = a > 0.5
    s = jnp.where(near_one, jnp.sqrt(jnp.maximum((1 - a) / 2, 0)), a)
    z = s * s
    poly = jnp.asarray(coefficients[-1])
    for coefficient in coefficients[-2::-1]:
        poly = poly * z + jnp.asarray(coefficient)
    arcsin_s = s + s * z * poly
    half_pi = jnp.asarray(np.pi / 2, c.dtype)
    pi = jnp.asarray(np.pi, c.dtype)
    small = half_pi - jnp.where(c < 0, -arcsin_s, arcsin_s)
    large = jnp.where(c < 0, pi - 2 * arcsin_s, 2 * arcsin_s)
    return jnp.where(near_one, large, small)


@jax.custom_jvp
def safe_sqrt(x: ArrayLike) -> Array:
    """`sqrt(max(x, 0))` whose gradient at 0 is 0 instead of infinite.

    The square root is the last operation, so XLA keeps the result of a cheap
    chain (a variance propagated through many layers) in memory instead of
    recomputing the chain inside every consumer that broadcasts it.
    """
    return jnp.sqrt(jnp.maximum(x, 0))


@safe_sqrt.defjvp
def _safe_sqrt_jvp(primals, tangents):
    (x,), (dx,) = primals, tangents
    root = safe_sqrt(x)
    positive = root > 0
    slope = jnp.where(positive, 0.5 / jnp.where(positive, root, 1), 0)
    return root, slope * dx


def safe_divide(num: ArrayLike, den: ArrayLike, default: float = 0.0) -> Array:
    """`num / den`, and `default` where `den == 0`, with finite gradients."""
    den = jnp.asarray(den)
    nonzero = den != 0
    return jnp.where(nonzero, num / jnp.where(nonzero, den, 1), default)


def correlation(c12: Array, v1: Array, v2: Array) -> tuple[Array, Array]:
    r"""$\rho = c_{12}/\sqrt{v_1 v_2}$ clipped to $[-1, 1]$, and $\sqrt{v_1 v_2}$.

    Where a variance is zero the correlation is defined as 0. A correlation
    within a few rounding errors of $\pm 1$ is taken as exactly $\pm 1$: two
    equal inputs reach here as $1 - \epsilon$ when their covariance and their
    variances were summed in different orders, and the arc-cosine turns that
    $\epsilon$ into an error of $\sqrt{2 \epsilon} \approx 10^{-8}$ (in float64).
    The snap is invisible to derivatives, which stay those of the unsnapped
    $\rho$.
    """
    # sqrt(v1) sqrt(v2), not sqrt(v1 v2): the roots are per-example arrays that
    # stay in memory, where a root of the broadcast product would make XLA
    # recompute v1 and v2, layer after layer, for every (n1, n2) pair.
    prod = safe_sqrt(v1) * safe_sqrt(v2)
    rho = jnp.clip(safe_divide(c12, prod), -1, 1)
    tol = 8 * jnp.finfo(rho.dtype).eps
    snapped = jnp.where(jnp.abs(rho) > 1 - tol, jnp.sign(rho), rho)
    return rho + jax.lax.stop_gradient(snapped - rho), prod


@jax.custom_jvp
def safe_arccos(c: Array) -> Array:
    r"""`arccos` whose derivative at $\pm 1$ is 0 rather than infinite.

    Where $|c| = 1$ the correlation of two inputs is extremal, so any tangent
    reaching it is zero and the product is zero, not `0 * inf = nan`.
    """
    return fast_arccos(c)


@safe_arccos.defjvp
def _safe_arccos_jvp(primals, tangents):
    (c,), (dc,) = primals, tangents
    one_minus = 1 - c**2
    inside = one_minus > 0
    slope = jnp.where(inside, -jax.lax.rsqrt(jnp.where(inside, one_minus, 1)), 0)
    return fast_arccos(c), slope * dc


@jax.custom_jvp
def arccos_dual(c: Array) -> Array:
    r"""$J(c) = \sqrt{1 - c^2} + (\pi - \arccos c)\, c$, the arc-cosine kernel of
    degree 1 (Cho & Saul 2009) up to $1/\pi$, with derivative $\pi - \arccos c$."""
    return safe_sqrt(1 - c**2) + (jnp.pi - fast_arccos(c)) * c


@arccos_dual.defjvp
def _arccos_dual_jvp(primals, tangents):
    (c,), (dc,) = primals, tangents
    return arccos_dual(c), (jnp.pi - safe_arccos(c)) * dc
