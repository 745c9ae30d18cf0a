r"""Activations whose dual kernels are computed numerically.

For jointly Gaussian $(u, v)$ with variances $v_1, v_2$ and covariance
$c_{12}$, an activation $\phi$ needs the dual kernels $T = E[\phi(u)\phi(v)]$
and $\dot T = E[\phi'(u)\phi'(v)]$. Two layers compute them for any $\phi$:

- `ElementwiseNumerical(fn, deg)`: Neural Tangents' layer, a tensor-product
  Gauss-Hermite rule of `deg` x `deg` points in Cholesky coordinates. It is
  fast and accurate for smooth $\phi$ of moderate slope, and converges slowly
  where $\phi$ has a kink (ReLU, Abs).
- `Elementwise(fn)`: a polar-coordinate rule that is exact, up to rounding,
  for positively homogeneous $\phi$ and accurate for every $\phi$ that is
  smooth except at 0. `Elementwise(fn, nngp_fn, d_nngp_fn)` uses closed forms
  supplied by the user instead.

Both evaluate their rules in blocks of entries under `jax.checkpoint`, so
memory stays bounded by the block, not by the number of quadrature points
times the size of the kernel, in the forward and in the reverse pass.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, PRNGKeyArray

from .._numerics import correlation, safe_arccos, safe_divide, safe_sqrt
from ._activation import AbstractActivation

Scalar = Callable[..., Array]

_ANGLE_ORDER = 24
"""Gauss-Legendre points on each of the two angular arcs of `Elementwise`."""
_RADIUS_ORDER = 32
"""Points of the radial Gauss rule (weight $r e^{-r^2/2}$) of `Elementwise`."""
_BLOCK_POINTS = 2**21
"""Quadrature points times kernel entries evaluated at once."""


# ------------------------------------------------------------------ rules


def rayleigh_rule(n: int) -> tuple[np.ndarray, np.ndarray]:
    r"""The $n$-point Gauss rule for $\int_0^\infty r e^{-r^2/2} h(r)\, dr$.

    The weight is the Rayleigh density, of total mass 1. Its Jacobi matrix is
    obtained by the Lanczos process (with full reorthogonalisation) on a
    discretisation of the weight exact to rounding: composite 64-point
    Gauss-Legendre on 32 panels of $[0, 16]$ (the weight beyond 16 is below
    $e^{-128}$). The Golub-Welsch eigendecomposition then gives nodes and
    weights.

    **Arguments:**

    - `n`: the number of nodes.

    **Returns:**

    `(nodes, weights)`, float64 NumPy arrays of shape `(n,)`; the rule
    integrates $r^k$ exactly (to rounding) for $k < 2n$.
    """
    x0, w0 = np.polynomial.legendre.leggauss(64)
    edges = np.linspace(0.0, 16.0, 33)
    half = np.diff(edges)[:, None] / 2
    x = (half * x0 + (edges[:-1, None] + half)).ravel()
    w = (half * w0).ravel() * x * np.exp(-(x**2) / 2)
    basis = [np.sqrt(w) / np.sqrt(w.sum())]
    alpha, beta = [], []
    previous, b = np.zeros_like(x), 0.0
    for _ in range(n):
        z = x * basis[-1]
        alpha.append(basis[-1] @ z)
        z = z - alpha[-1] * basis[-1] - b * previous
        for q in basis:
            z = z - (q @ z) * q
        b = float(np.linalg.norm(z))
        beta.append(b)
        previous = basis[-1]
        basis.append(z / b)
    jacobi = np.diag(alpha) + np.diag(beta[:-1], 1) + np.diag(beta[:-1], -1)
    nodes, vectors = np.linalg.eigh(jacobi)
    return nodes, vectors[0] ** 2


def derivative_of(fn: Scalar) -> Scalar:
    """The elementwise derivative of an elementwise function, by forward mode."""

    def df(x):
        return jax.jvp(fn, (x,), (jnp.ones_like(x),))[1]

    return df


def _blockwise(rule, n_points: int, c12, v1, v2):
    """Applies `rule(c12, v1, v2) -> tuple of arrays` to flattened entries,
    in blocks of `_BLOCK_POINTS // n_points` entries, each under `jax.checkpoint`."""
    c12, v1, v2 = jnp.broadcast_arrays(c12, v1, v2)
    shape = c12.shape
    flat = [a.reshape(-1) for a in (c12, v1, v2)]
    size = flat[0].shape[0]
    block = max(1, _BLOCK_POINTS // n_points)
    if size <= block:
        return tuple(out.reshape(shape) for out in rule(*flat))
    n_blocks = -(-size // block)
    pad = n_blocks * block - size
    # Padding entries are independent unit-variance inputs.
    fills = (0.0, 1.0, 1.0)
    blocks = [
        jnp.concatenate([a, jnp.full((pad,), fill, a.dtype)]).reshape(n_blocks, block)
        for a, fill in zip(flat, fills)
    ]
    outs = jax.lax.map(lambda args: jax.checkpoint(rule)(*args), tuple(blocks))
    return tuple(out.reshape(-1)[:size].reshape(shape) for out in outs)


# ------------------------------------------------------- Gauss-Hermite (NT)


def hermite_expectations(fns, c12, v1, v2, deg: int):
    r"""$E[f(u) f(v)]$ for each `f` in `fns`, by `deg` x `deg` Gauss-Hermite.

    With the physicists' rule $(x_i, w_i)$ for the weight $e^{-x^2}$,
    $u_i = \sqrt{2 v_1}\, x_i$ and
    $v_{ij} = c_{12}\sqrt{2/v_1}\, x_i + \sqrt{2(v_2 - c_{12}^2/v_1)}\, x_j$:

    $$E[f(u) f(v)] \approx \frac{1}{\pi} \sum_{i,j} w_i w_j f(u_i) f(v_{ij}).$$
    """
    x_np, w_np = np.polynomial.hermite.hermgauss(deg)
    grid_np = np.outer(w_np, w_np) / np.pi

    def rule(c12, v1, v2):
        # Entries first, quadrature axes last: the sums reduce contiguous memory.
        x = jnp.asarray(x_np, c12.dtype)
        grid = jnp.asarray(grid_np, c12.dtype)
        slope = safe_divide(c12, safe_sqrt(v1 / 2))[:, None]
        residual = safe_sqrt(2 * (v2 - safe_divide(c12**2, v1)))[:, None, None]
        u = safe_sqrt(2 * v1)[:, None] * x  # (E, deg)
        v = (slope * x)[:, :, None] + residual * x  # (E, deg_i, deg_j)
        return tuple(jnp.sum(grid * f(u)[:, :, None] * f(v), axis=(1, 2)) for f in fns)

    return _blockwise(rule, deg * deg, c12, v1, v2)


# ------------------------------------------------------------ polar rule


def polar_expectations(
    fns, c12, v1, v2, angle_order: int = _ANGLE_ORDER, radius_order: int = _RADIUS_ORDER
):
    r"""$E[f(u) f(v)]$ for each `f` in `fns`, by a polar-coordinate rule.

    Write $(u, v) = r\,(\sqrt{v_1}\cos t, \sqrt{v_2}\cos(t - \theta))$ with
    $\theta = \arccos\rho$, $\rho = c_{12}/\sqrt{v_1 v_2}$, $r$ Rayleigh and
    $t$ uniform on $[-\pi/2, 3\pi/2)$:

    $$E[f(u) f(v)] = \frac{1}{2\pi} \int_{-\pi/2}^{3\pi/2} \int_0^\infty
      r e^{-r^2/2} f\big(r\sqrt{v_1}\cos t\big)\, f\big(r\sqrt{v_2}\cos(t - \theta)\big)
      \, dr\, dt.$$

    The signs of both arguments are constant on each of the four arcs between
    $-\pi/2$, $\theta - \pi/2$, $\pi/2$, $\theta + \pi/2$ and $3\pi/2$, and along
    each ray, so a kink or jump of $f$ at 0 never falls inside an integration
    cell: Gauss-Legendre with `angle_order` points on each arc and the
    `radius_order`-point Gauss rule of the Rayleigh weight in $r$ converge
    spectrally for every $f$ that is smooth on each half-line, and are exact for
    positively homogeneous $f$ (where the integrand is a trigonometric
    polynomial on each arc times a power of $r$).
    """
    xa_np, wa_np = np.polynomial.legendre.leggauss(angle_order)
    r_np, wr_np = rayleigh_rule(radius_order)

    def rule(c12, v1, v2):
        # Entries first, quadrature axes last: the sums reduce contiguous memory.
        dtype = c12.dtype
        s = (jnp.asarray(xa_np, dtype) + 1) / 2  # (A,) in (0, 1)
        wa = jnp.asarray(wa_np, dtype) / 2
        r = jnp.asarray(r_np, dtype)  # (R,)
        wr = jnp.asarray(wr_np, dtype) / (2 * jnp.pi)
        rho, _ = correlation(c12, v1, v2)
        theta = safe_arccos(rho)[:, None]
        # Arcs of lengths theta and pi - theta, then the same shifted by pi.
        half = [-jnp.pi / 2 + theta * s, theta - jnp.pi / 2 + (jnp.pi - theta) * s]
        t = jnp.concatenate(half + [a + jnp.pi for a in half], axis=1)  # (E, 4A)
        wt = jnp.concatenate([theta * wa, (jnp.pi - theta) * wa] * 2, axis=1)
        weights = wt[:, :, None] * wr  # (E, 4A, R)
        # A zero variance is replaced by a vanishing one, so that f is evaluated
        # on both sides of 0 as in the limit (ReLU's derivative averages to 1/2).
        floor = float(np.sqrt(np.finfo(dtype).tiny))
        scale1 = jnp.maximum(safe_sqrt(v1), floor)[:, None]
        scale2 = jnp.maximum(safe_sqrt(v2), floor)[:, None]
        x = (scale1 * jnp.cos(t))[:, :, None] * r
        y = (scale2 * jnp.cos(t - theta))[:, :, None] * r
        return tuple(jnp.sum(weights * f(x) * f(y), axis=(1, 2)) for f in fns)

    n_points = 4 * angle_order * radius_order
    return _blockwise(rule, n_points, c12, v1, v2)


# ----------------------------------------------------------------- layers


def _check_callable(value, layer: str, name: str, optional: bool = True) -> None:
    if value is None and optional:
        return
    if not callable(value):
        raise ValueError(
            f"{layer}: `{name}` must be a function, got {value!r}."
            + (" Pass None to leave it out." if optional else "")
        )


class ElementwiseNumerical(AbstractActivation):
    r"""An activation whose kernels are computed by 2-D Gauss-Hermite quadrature.

    Neural Tangents' `ElementwiseNumerical`, with the same rule and results:
    for inputs with variances $v_1, v_2$ and covariance $c_{12}$, and the
    `deg`-point physicists' Gauss-Hermite rule $(x_i, w_i)$,

    $$T \approx \frac{1}{\pi}\sum_{i,j} w_i w_j\, \phi(u_i)\,\phi(v_{ij}),
      \qquad u_i = \sqrt{2 v_1}\, x_i, \quad
      v_{ij} = \frac{c_{12}}{v_1} u_i + \sqrt{2(v_2 - c_{12}^2/v_1)}\, x_j,$$

    and $\dot T$ the same with $\phi'$. Cost and memory per kernel entry grow as
    `deg**2`. The rule converges fast for smooth $\phi$ (`deg=25` is a good
    start) but slowly for kinks such as ReLU's; `Elementwise(fn)` handles those
    exactly. Where a variance is 0 the result is finite (NT's is NaN).

    **Arguments:**

    - `fn`: the activation, an elementwise function of arrays.
    - `deg`: the number of Gauss-Hermite points per dimension, at least 1.
    - `df`: the derivative of `fn`, elementwise; by default it is computed by
      autodiff.

    **Example:**

    ```pycon
    >>> x = jnp.array([[1.0, 0.0], [0.6, 0.8]])
    >>> quad = et.ElementwiseNumerical(jax.scipy.special.erf, deg=25)
    >>> k = et.Serial(et.Dense(1), quad).kernel(x, None)
    >>> exact = et.Serial(et.Dense(1), et.Erf()).kernel(x, None)
    >>> bool(jnp.allclose(k.nngp, exact.nngp, atol=1e-6))
    True
    >>> bool(jnp.allclose(k.ntk, exact.ntk, atol=1e-6))
    True
    ```
    """

    # The class-level default only stands in for the abstract method `fn`;
    # `__init__` always sets it.
    fn: Callable[[Array], Array] = eqx.field(static=True, default=None)
    deg: int = eqx.field(static=True, default=1)
    df: Callable[[Array], Array] | None = eqx.field(static=True, default=None)

    def __init__(
        self,
        fn: Callable[[Array], Array],
        deg: int,
        df: Callable[[Array], Array] | None = None,
    ):
        _check_callable(fn, "ElementwiseNumerical", "fn", optional=False)
        _check_callable(df, "ElementwiseNumerical", "df")
        if isinstance(deg, bool) or not isinstance(deg, numbers.Integral) or deg < 1:
            raise ValueError(
                f"ElementwiseNumerical: `deg` must be an integer >= 1, got {deg!r}."
            )
        self.fn, self.deg, self.df = fn, int(deg), df

    def duals(
        self,
        c12: Float[Array, "*s"],
        v1: Float[Array, "*#s"],
        v2: Float[Array, "*#s"],
        derivative: bool,
    ) -> tuple[Float[Array, "*s"], Float[Array, "*s"] | None]:
        fns = [self.fn]
        if derivative:
            fns.append(derivative_of(self.fn) if self.df is None else self.df)
        out = hermite_expectations(fns, c12, v1, v2, self.deg)
        return out[0], (out[1] if derivative else None)


class Elementwise(AbstractActivation):
    r"""Any elementwise activation: user-supplied dual kernels, or numerical ones.

    With `nngp_fn` (Neural Tangents' `Elementwise`), the dual kernels are
    $T = $ `nngp_fn(c12, v1, v2)` and $\dot T = $ `d_nngp_fn(c12, v1, v2)`,
    the latter by default $\partial T / \partial c_{12}$ by autodiff of
    `nngp_fn` (supply `d_nngp_fn` where that derivative is not finite, e.g. for
    $\arcsin\rho$ at $\rho = \pm 1$). Both are written for scalars and are
    vectorised with `jnp.vectorize`.

    With `fn` alone, both are integrated numerically in polar coordinates:
    with $\theta = \arccos(c_{12}/\sqrt{v_1 v_2})$,

    $$T = \frac{1}{2\pi}\int_{-\pi/2}^{3\pi/2}\!\int_0^\infty r e^{-r^2/2}
      \phi\big(r\sqrt{v_1}\cos t\big)\,\phi\big(r\sqrt{v_2}\cos(t-\theta)\big)
      \, dr\, dt,$$

    by Gauss-Legendre (24 points) on each of the four arcs between
    $-\pi/2$, $\theta-\pi/2$, $\pi/2$, $\theta+\pi/2$, $3\pi/2$ and the
    32-point Gauss rule of the Rayleigh weight $r e^{-r^2/2}$; $\dot T$ is the
    same with $\phi'$ from autodiff. On each arc and along each ray both
    arguments keep their signs, so a kink or a jump of $\phi$ at 0 never lies
    inside a cell.

    Accuracy, in float64, as the largest error over $\rho \in [-1, 1]$ and
    variances $v_1, v_2 \in [0.1, 10]$, relative to the scale
    $\sqrt{T(v_1, v_1, v_1)\, T(v_2, v_2, v_2)}$ (for $\dot T$, the same with
    $\dot T$); measured against the closed forms:

    | $\phi$ | $T$ | $\dot T$ | at variances $\le 1$ |
    |---|---|---|---|
    | ReLU, leaky ReLU, Abs | $10^{-15}$ | $10^{-15}$ | $10^{-15}$ |
    | GELU | $1 \cdot 10^{-10}$ | $2 \cdot 10^{-8}$ | $10^{-13}$ |
    | sin | $2 \cdot 10^{-9}$ | $2 \cdot 10^{-9}$ | $2 \cdot 10^{-15}$ |
    | erf | $1 \cdot 10^{-8}$ | $3 \cdot 10^{-7}$ | $10^{-11}$ |

    - Positively homogeneous $\phi$ (ReLU, leaky ReLU, Abs, rectified
      monomials, the step) are integrated exactly: the integrand is a
      trigonometric polynomial on each arc times a power of $r$. The error is
      rounding, below $10^{-12}$ at every $\rho \in [-1, 1]$, including
      $\rho = \pm 1$, where the NTK stays finite.
    - $\phi$ smooth on each half-line with at most polynomial growth (erf,
      GELU, sin, tanh, softplus, swish, ELU, softsign, $x \tanh x$): error
      below $10^{-6}$ for variances up to 10 (the worst case is the steep
      $\phi'$ of erf or tanh at variance 10), below $10^{-10}$ up to 1.
    - Kinks or jumps away from 0 fall inside cells and converge slowly
      (hard tanh: about $10^{-3}$ for $T$ and $4 \cdot 10^{-2}$ for
      $\dot T$); exponential growth needs more points at large variance
      ($e^x$: $10^{-9}$ at variance 3, $10^{-1}$ at 10). Prefer a closed-form
      layer there.

    Each kernel entry costs 6144 evaluations of $\phi$ (and as many of
    $\phi'$ for the NTK), against 650 for the `deg=25` rule of
    `ElementwiseNumerical`; prefer a closed-form layer where one exists.
    Values and gradients are finite everywhere, at $\rho = \pm 1$ and at zero
    variance included; a zero variance is taken as the limit of vanishing ones
    (so ReLU's $\phi'(0)$ counts as $1/2$, as in `et.Relu`). Gradients with
    respect to $(c_{12}, v_1, v_2)$ are those of the rule, as accurate as the
    values for $|\rho| \le 0.99$; closer to $\rho = \pm 1$ the derivative of
    $\arccos\rho$ amplifies the quadrature error (to about $10^{-7}$ of the
    gradient at $|\rho| = 1 - 10^{-6}$ for erf at variance 2). On the boundary
    $|\rho| = 1$ only derivatives along directions that stay in the PSD cone
    are meaningful, and they match the closed forms.

    **Arguments:**

    - `fn`: the activation, an elementwise function of arrays; it is the
      finite-width forward pass. It may be None when `nngp_fn` is given, and
      the layer then has no forward pass.
    - `nngp_fn`: optional `nngp_fn(cov12, var1, var2)` $= E[\phi(u)\phi(v)]$.
    - `d_nngp_fn`: optional `d_nngp_fn(cov12, var1, var2)`
      $= E[\phi'(u)\phi'(v)]$; it needs `nngp_fn`.

    **Example:**

    ```pycon
    >>> x = jnp.array([[1.0, 0.0], [0.6, 0.8]])
    >>> k = et.Serial(et.Dense(1), et.Elementwise(jnp.sin)).kernel(x, None)
    >>> exact = et.Serial(et.Dense(1), et.Sin()).kernel(x, None)    # closed form
    >>> bool(jnp.allclose(k.nngp, exact.nngp)), bool(jnp.allclose(k.ntk, exact.ntk))
    (True, True)
    >>> swish = et.Elementwise(lambda u: u * jax.nn.sigmoid(u))    # no closed form
    >>> model = et.Serial(et.Dense(512), swish, et.Dense(1))
    >>> model.kernel(x, None, "ntk").shape
    (2, 2)
    ```
    """

    # The class-level default only stands in for the abstract method `fn`.
    fn: Callable[[Array], Array] | None = eqx.field(static=True, default=None)
    nngp_fn: Callable[..., Array] | None = eqx.field(static=True, default=None)
    d_nngp_fn: Callable[..., Array] | None = eqx.field(static=True, default=None)

    def __init__(
        self,
        fn: Callable[[Array], Array] | None = None,
        nngp_fn: Callable[..., Array] | None = None,
        d_nngp_fn: Callable[..., Array] | None = None,
    ):
        for value, name in ((fn, "fn"), (nngp_fn, "nngp_fn"), (d_nngp_fn, "d_nngp_fn")):
            _check_callable(value, "Elementwise", name)
        if fn is None and nngp_fn is None:
            raise ValueError(
                "Elementwise: give the activation `fn` (its kernels are then "
                "computed numerically), or its dual `nngp_fn`, or both."
            )
        if d_nngp_fn is not None and nngp_fn is None:
            raise ValueError(
                "Elementwise: `d_nngp_fn` was given without `nngp_fn`; give both "
                "dual kernels, or neither to compute them numerically from `fn`."
            )
        self.fn, self.nngp_fn, self.d_nngp_fn = fn, nngp_fn, d_nngp_fn

    def __call__(self, x: Array, *, key: PRNGKeyArray | None = None) -> Array:
        if self.fn is None:
            raise ValueError(
                "Elementwise was built from `nngp_fn` alone, so it has kernels "
                "but no finite-width forward pass: pass the activation as `fn`."
            )
        return self.fn(x)

    def duals(
        self,
        c12: Float[Array, "*s"],
        v1: Float[Array, "*#s"],
        v2: Float[Array, "*#s"],
        derivative: bool,
    ) -> tuple[Float[Array, "*s"], Float[Array, "*s"] | None]:
        if self.nngp_fn is None:
            fns = [self.fn, derivative_of(self.fn)] if derivative else [self.fn]
            out = polar_expectations(fns, c12, v1, v2)
            return out[0], (out[1] if derivative else None)
        c12, v1, v2 = jnp.broadcast_arrays(c12, v1, v2)
        nngp = jnp.vectorize(self.nngp_fn)(c12, v1, v2).astype(c12.dtype)
        dot = None
        if derivative:
            d_fn = self.d_nngp_fn
            if d_fn is None:
                d_fn = jax.grad(self.nngp_fn)
            dot = jnp.vectorize(d_fn)(c12, v1, v2).astype(c12.dtype)
        return nngp, dot
