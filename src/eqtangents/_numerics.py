"""Numerically safe primitives: finite values and finite gradients everywhere."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike


def safe_sqrt(x: ArrayLike) -> Array:
    """`sqrt(max(x, 0))` whose gradient at 0 is 0 instead of infinite."""
    x = jnp.asarray(x)
    positive = x > 0
    return jnp.where(positive, jnp.sqrt(jnp.where(positive, x, 1)), 0)


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
    prod = safe_sqrt(v1 * v2)
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
    return jnp.arccos(c)


@safe_arccos.defjvp
def _safe_arccos_jvp(primals, tangents):
    (c,), (dc,) = primals, tangents
    one_minus = 1 - c**2
    inside = one_minus > 0
    slope = jnp.where(inside, -jax.lax.rsqrt(jnp.where(inside, one_minus, 1)), 0)
    return jnp.arccos(c), slope * dc


@jax.custom_jvp
def arccos_dual(c: Array) -> Array:
    r"""$J(c) = \sqrt{1 - c^2} + (\pi - \arccos c)\, c$, the arc-cosine kernel of
    degree 1 (Cho & Saul 2009) up to $1/\pi$, with derivative $\pi - \arccos c$."""
    return safe_sqrt(1 - c**2) + (jnp.pi - jnp.arccos(c)) * c


@arccos_dual.defjvp
def _arccos_dual_jvp(primals, tangents):
    (c,), (dc,) = primals, tangents
    return arccos_dual(c), (jnp.pi - safe_arccos(c)) * dc
