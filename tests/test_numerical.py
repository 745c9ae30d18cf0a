r"""Numerically integrated activations: `ElementwiseNumerical` and `Elementwise`.

- The NT 0.6.5 reference cases of `ElementwiseNumerical` run in
  `test_reference_kernels.py`; here its options and edge cases are checked.
- `Elementwise(fn)` is compared with the closed-form layers over variances
  0.1..10 and correlations -1..1 (NNGP and NTK duals), with
  `ElementwiseNumerical` at a high degree, and with its own rule refined
  twofold on each axis, to the tolerances stated in its docstring. Errors are
  relative to the scale $\sqrt{T(v_1, v_1, v_1) T(v_2, v_2, v_2)}$ of the
  entry (likewise for $\dot T$).
- Gradients match the closed forms' inside the PSD cone and are finite on its
  boundary, also through networks under jit and vmap.
- Finite networks built with `Elementwise(x tanh x)` agree with the kernels.

Every computation runs under one `jit` per layer (eager evaluation of the
quadrature would compile each primitive separately).
"""

from __future__ import annotations

import functools
import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import eqtangents as et
from eqtangents._layers.numerical import (
    derivative_of,
    polar_expectations,
    rayleigh_rule,
)

VARIANCES = np.array([0.1, 0.3, 1.0, 3.0, 10.0])
RHOS = np.concatenate([[-1.0, -0.9999], np.linspace(-0.95, 0.95, 9), [0.9999, 1.0]])
_V1, _V2, _R = (
    a.ravel() for a in np.meshgrid(VARIANCES, VARIANCES, RHOS, indexing="ij")
)


def x_tanh_x(x):
    return x * jnp.tanh(x)


@eqx.filter_jit
def _duals(layer, c12, v1, v2):
    return layer.duals(c12, v1, v2, True)


@functools.partial(jax.jit, static_argnums=(0, 4, 5))
def _polar(fn, c12, v1, v2, angle_order, radius_order):
    fns = [fn, derivative_of(fn)]
    return polar_expectations(fns, c12, v1, v2, angle_order, radius_order)


def _grid_points(max_variance=np.inf):
    """The grid entries with both variances up to `max_variance`, followed by
    the diagonal entries `c12 = v1 = v2 = v` of those variances."""
    mask = (_V1 <= max_variance) & (_V2 <= max_variance)
    v1, v2 = _V1[mask], _V2[mask]
    diagonal = VARIANCES[VARIANCES <= max_variance]
    return (
        jnp.asarray(np.concatenate([_R[mask] * np.sqrt(v1 * v2), diagonal])),
        jnp.asarray(np.concatenate([v1, diagonal])),
        jnp.asarray(np.concatenate([v2, diagonal])),
    )


def _scaled_errors(evaluate, reference, max_variance=np.inf):
    """Errors of `evaluate(c12, v1, v2) -> (T, T-dot)` against `reference` on
    the grid of variances (up to `max_variance`) and correlations, each divided
    by the scale of its entry from the reference's diagonal values (computed in
    the same call)."""
    points = _grid_points(max_variance)
    diagonal = VARIANCES[VARIANCES <= max_variance]
    n = len(points[0]) - len(diagonal)
    index = {float(v): i for i, v in enumerate(diagonal)}
    rows1 = [index[float(v)] for v in np.asarray(points[1][:n])]
    rows2 = [index[float(v)] for v in np.asarray(points[2][:n])]
    errors = []
    for value, exact in zip(evaluate(*points), reference(*points)):
        value, exact = np.asarray(value), np.asarray(exact)
        diag = exact[n:]
        scale = np.sqrt(diag[rows1] * diag[rows2])
        scale = np.where(scale > 0, scale, 1.0)  # the step's T-dot is 0
        errors.append(np.abs(value[:n] - exact[:n]) / scale)
    return errors


def _on(layer):
    return functools.partial(_duals, layer)


# ----------------------------------------------------------------- the rules


@pytest.mark.parametrize("n", [4, 16, 32])
def test_rayleigh_rule_is_gaussian(n):
    r"""The radial rule integrates $r^k$ against $r e^{-r^2/2}$ exactly,
    $2^{k/2}\Gamma(k/2 + 1)$, for $k < 2n$ (checked up to $k = 24$)."""
    nodes, weights = rayleigh_rule(n)
    assert np.all(nodes > 0) and np.all(weights > 0)
    for k in range(min(2 * n, 25)):
        exact = 2 ** (k / 2) * math.gamma(k / 2 + 1)
        assert abs(np.sum(weights * nodes**k) / exact - 1) < 1e-13, k


# ------------------------------------------------- Elementwise vs closed forms


def _step(x):
    return jnp.where(x >= 0, 1.0, 0.0).astype(x.dtype)


HOMOGENEOUS = {
    "Relu": (et.Relu(), jax.nn.relu),
    "Abs": (et.Abs(), jnp.abs),
    "step": (et.RectifiedMonomial(0), _step),
}
SMOOTH = {
    "Erf": (et.Erf(), jax.scipy.special.erf),
    "Gelu": (et.Gelu(), lambda x: jax.nn.gelu(x, approximate=False)),
    "Sin": (et.Sin(), jnp.sin),
}


_AT_PLUS_MINUS_ONE = {"Relu": (0.5, 0.0), "Abs": (1.0, -1.0), "step": (0.0, 0.0)}


@pytest.mark.parametrize("name", list(HOMOGENEOUS))
def test_homogeneous_activations_are_exact(name):
    """Positively homogeneous activations (and the step) are integrated to
    rounding, 1e-12 of the scale, at every correlation; at rho = +-1 the NTK
    dual is finite and equal to its exact value."""
    closed, fn = HOMOGENEOUS[name]
    layer = et.Elementwise(fn)
    err_t, err_dot = _scaled_errors(_on(layer), _on(closed))
    assert err_t.max() < 1e-12
    assert err_dot.max() < 1e-12
    points = _grid_points()
    _, dot = _duals(layer, *points)  # the same program, from the cache
    dot = np.asarray(dot)[: len(_R)]
    for rho, exact in zip((1.0, -1.0), _AT_PLUS_MINUS_ONE[name]):
        at = dot[_R == rho]
        assert np.all(np.isfinite(at))
        np.testing.assert_allclose(at, exact, atol=1e-13)


@pytest.mark.parametrize("name", list(SMOOTH))
def test_smooth_activations_match_closed_forms(name):
    """Documented accuracy: 1e-6 for variances up to 10, 1e-10 up to 1."""
    closed, fn = SMOOTH[name]
    err_t, err_dot = _scaled_errors(_on(et.Elementwise(fn)), _on(closed))
    small = (_V1 <= 1) & (_V2 <= 1)
    for err in (err_t, err_dot):
        assert err.max() < 1e-6
        assert err[small].max() < 1e-10


def test_agrees_with_elementwise_numerical():
    """For tanh at variances up to 1 the Gauss-Hermite rule of degree 100 has
    converged, and the two rules agree to 1e-8 of the scale."""
    fn = jnp.tanh
    errors = _scaled_errors(
        _on(et.Elementwise(fn)), _on(et.ElementwiseNumerical(fn, deg=100)), 1.0
    )
    for err in errors:
        assert err.max() < 1e-8


def test_softsign_converged():
    """Softsign has no closed form and a second derivative that jumps at 0:
    against the same rule with twice the points on each axis, the duals agree
    to the documented 1e-6 of the scale."""
    fn = jax.nn.soft_sign
    errors = _scaled_errors(
        lambda *a: _polar(fn, *a, 24, 32), lambda *a: _polar(fn, *a, 48, 64)
    )
    for err in errors:
        assert err.max() < 1e-6


def test_network_transforms_at_extreme_correlations():
    """A network with `Elementwise(abs)` whose second batch holds the first, its
    negation and other inputs (b_std = 0 before the activation, so it sees
    rho = +-1 as well as inner correlations): under jit and grad, the kernels
    and the gradient of the NTK in `W_std` are finite and equal those of
    `et.Abs`; in float32 and under vmap over `W_std`, close to them."""
    rng = np.random.default_rng(0)
    x1 = jnp.asarray(rng.normal(size=(3, 5)))
    x2 = jnp.concatenate([x1, -x1, jnp.asarray(rng.normal(size=(2, 5)))])

    def model(act, w):
        return et.Serial(et.Dense(8, W_std=w), act, et.Dense(1, b_std=0.2))

    @eqx.filter_jit
    def run(act):
        def loss(w):
            k = model(act, w).kernel(x1, x2)
            return jnp.sum(k.ntk), k

        return jax.value_and_grad(loss, has_aux=True)(1.3)

    ours, exact = run(et.Elementwise(jnp.abs)), run(et.Abs())
    for value, reference in zip(jax.tree.leaves(ours), jax.tree.leaves(exact)):
        assert np.all(np.isfinite(value))
        np.testing.assert_allclose(value, reference, rtol=1e-12)

    @eqx.filter_jit
    def batched(act, x1, x2):
        ws = jnp.array([0.5, 1.3], x1.dtype)
        return jax.vmap(lambda w: model(act, w).kernel(x1, x2))(ws)

    single = batched(
        et.Elementwise(jnp.abs), x1.astype(jnp.float32), x2.astype(jnp.float32)
    )
    double = batched(et.Abs(), x1, x2)
    assert single.nngp.dtype == jnp.float32 and single.ntk.dtype == jnp.float32
    np.testing.assert_allclose(single.nngp, double.nngp, rtol=1e-5)
    np.testing.assert_allclose(single.ntk, double.ntk, rtol=1e-5)


# ------------------------------------------------------------------ gradients


_INSIDE = [(1.0, 2.0, 0.3), (0.5, 3.0, -0.7), (2.0, 0.4, 0.9), (2.0, 0.4, -0.99)]
_NEAR = [(2.0, 0.4, 0.999999), (1.0, 3.0, -0.999999)]
_BOUNDARY = [(2.0, 2.0, 1.0), (2.0, 0.5, -1.0), (0.0, 1.0, 0.0), (0.0, 0.0, 0.0)]


@eqx.filter_jit
def _values_and_gradients(layer, c12, v1, v2):
    """`(T, T-dot)` and the gradient of `T` in `(c12, v1, v2)`, per entry."""

    def total(args):
        t, dot = layer.duals(*args, True)
        return jnp.sum(t), (t, dot)

    grads, values = jax.grad(total, has_aux=True)((c12, v1, v2))
    return values, jnp.stack(grads, axis=-1)


@pytest.mark.parametrize("name", ["Relu", "Erf"])
def test_gradients_and_blocks(name):
    r"""Values and gradients of $T$ in $(c_{12}, v_1, v_2)$ against the closed
    forms, for erf on 720 random entries (variances 0.2..1: more than one block
    of 682 entries, so `lax.map` with checkpoints and padding is used), and for
    both on special points: inside the cone (1e-10, also at $|\rho| = 0.99$),
    near its boundary (1e-6 of the gradient's norm at $|\rho| = 1 - 10^{-6}$),
    and on it ($\rho = \pm 1$, zero variance), where gradients are finite and
    the derivative along the feasible ray $\lambda (c_{12}, v_1, v_2)$
    matches."""
    closed, fn = {**HOMOGENEOUS, **SMOOTH}[name]
    rng = np.random.default_rng(2)
    n_random = 720 if name == "Erf" else 0
    triples = np.concatenate(
        [
            rng.uniform((0.2, 0.2, -1), (1, 1, 1), size=(n_random, 3)),
            np.array(_INSIDE + _NEAR + _BOUNDARY),
        ]
    )
    v1, v2, rho = triples.T
    points = np.stack([rho * np.sqrt(v1 * v2), v1, v2], axis=1)
    (t, dot), ours = _values_and_gradients(et.Elementwise(fn), *jnp.asarray(points.T))
    (t0, dot0), exact = _values_and_gradients(closed, *jnp.asarray(points.T))
    ours, exact = np.asarray(ours), np.asarray(exact)
    np.testing.assert_allclose(t, t0, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(dot, dot0, rtol=1e-10, atol=1e-10)
    inside = slice(0, n_random + len(_INSIDE))
    near = slice(inside.stop, inside.stop + len(_NEAR))
    boundary = slice(near.stop, None)
    np.testing.assert_allclose(ours[inside], exact[inside], rtol=1e-10, atol=1e-10)
    gap = np.linalg.norm(ours[near] - exact[near], axis=1)
    assert np.all(gap < 1e-6 * np.linalg.norm(exact[near], axis=1))
    assert np.all(np.isfinite(ours))
    along = np.sum(ours[boundary] * points[boundary], axis=1)
    exact_along = np.sum(exact[boundary] * points[boundary], axis=1)
    np.testing.assert_allclose(along, exact_along, rtol=1e-9, atol=1e-12)


# ------------------------------------------------------ user-supplied duals


def _erf_nngp(c12, v1, v2):
    """The erf dual, written for scalars only (a 2 x 2 determinant)."""
    cov = jnp.array([[1 + 2 * v1, 2 * c12], [2 * c12, 1 + 2 * v2]])
    return (2 / jnp.pi) * jnp.arctan2(2 * c12, jnp.sqrt(jnp.linalg.det(cov)))


def _erf_d_nngp(c12, v1, v2):
    return (4 / jnp.pi) / jnp.sqrt((1 + 2 * v1) * (1 + 2 * v2) - 4 * c12**2)


def test_user_duals():
    """NT's `Elementwise(fn, nngp_fn, d_nngp_fn)`: the NTK dual by autodiff of
    `nngp_fn` or from `d_nngp_fn`; without `fn` there is no forward pass."""
    rng = np.random.default_rng(3)
    x1, x2 = jnp.asarray(rng.normal(size=(3, 4))), jnp.asarray(rng.normal(size=(2, 4)))

    @eqx.filter_jit
    def kernels(act):
        model = et.Serial(et.Dense(8, W_std=1.5, b_std=0.2), act, et.Dense(1))
        return model.kernel(x1, x2)

    exact = kernels(et.Erf())
    erf = jax.scipy.special.erf
    for act in (
        et.Elementwise(erf, nngp_fn=_erf_nngp),
        et.Elementwise(erf, _erf_nngp, _erf_d_nngp),
        et.Elementwise(nngp_fn=_erf_nngp),
    ):
        ours = kernels(act)
        for name in ("nngp", "ntk"):
            np.testing.assert_allclose(
                getattr(ours, name), getattr(exact, name), rtol=1e-12
            )
    np.testing.assert_array_equal(et.Elementwise(erf, nngp_fn=_erf_nngp)(x1), erf(x1))
    with pytest.raises(ValueError, match="no finite-width forward pass"):
        et.Elementwise(nngp_fn=_erf_nngp)(x1)


def test_elementwise_numerical_options():
    """`df` replaces autodiff; inputs of zero variance give finite kernels (NT's
    are NaN), and at these small variances the rule matches the closed form."""
    x = jnp.asarray(np.random.default_rng(5).normal(size=(3, 4)))
    x = x.at[1].set(0.0)  # zero variance after a Dense with b_std = 0

    @eqx.filter_jit
    def kernels(act):
        return et.Serial(et.Dense(8, W_std=0.8), act, et.Dense(1)).kernel(x)

    auto = kernels(et.ElementwiseNumerical(jnp.sin, deg=30))
    given = kernels(et.ElementwiseNumerical(jnp.sin, deg=30, df=jnp.cos))
    exact = kernels(et.Sin())
    for name in ("nngp", "ntk"):
        assert np.all(np.isfinite(getattr(auto, name)))
        np.testing.assert_allclose(
            getattr(auto, name), getattr(given, name), rtol=1e-14
        )
        np.testing.assert_allclose(
            getattr(auto, name), getattr(exact, name), rtol=1e-10, atol=1e-14
        )


def test_structural_errors():
    with pytest.raises(ValueError, match="give the activation `fn`"):
        et.Elementwise()
    with pytest.raises(ValueError, match="without `nngp_fn`"):
        et.Elementwise(jnp.tanh, d_nngp_fn=_erf_d_nngp)
    for deg in (0, -3):
        with pytest.raises(ValueError, match="`deg` must be an integer"):
            et.ElementwiseNumerical(jnp.tanh, deg=deg)
    with pytest.raises(ValueError, match="Elementwise needs Gaussian inputs"):
        et.Elementwise(jnp.tanh).kernel(jnp.ones((2, 3)))


# ----------------------------------------------------------------- Monte Carlo


def _draws(model, x, keys):
    r"""Per-draw empirical NNGP $f f^\top / n_{out}$ and NTK $J J^\top / n_{out}$
    of finite networks drawn by `model.init`, one per key; the NTK by a plain
    `jax.jacrev` contraction (independent of the library's kernel code)."""

    def one(key):
        net = model.init(key, x.shape[1:])
        params, static = eqx.partition(net, eqx.is_inexact_array)

        def f(p):
            return jax.vmap(eqx.combine(p, static))(x)  # (N, out)

        y = f(params)
        n, out = y.shape
        jac = [j.reshape(n, out, -1) for j in jax.tree.leaves(jax.jacrev(f)(params))]
        ntk = sum(jnp.einsum("aop,bop->ab", j, j) for j in jac)
        return y @ y.T / out, ntk / out

    return jax.vmap(one)(keys)


def test_monte_carlo_x_tanh_x():
    r"""Finite networks `Dense(512) -> x tanh x -> Dense(4)`, drawn by `init`.

    With one hidden layer the expected empirical NNGP and NTK equal the
    infinite-width ones at every width, so the means over 512 draws lie within
    5 standard errors (estimated from the draws) of the kernels, and these
    allowances are below 30% (NNGP, one product of outputs per draw) and 3%
    (NTK, which concentrates with the width) of the kernels. (RBG keys compile
    faster than threefry ones.)
    """
    x = np.random.default_rng(6).normal(size=(3, 4))
    x[2] = x[0]  # a repeated input: rho = 1
    x = jnp.asarray(x)

    def model(act, width=512):
        return et.Serial(
            et.Dense(width, W_std=1.5, b_std=0.3),
            act,
            et.Dense(4, W_std=1.2, b_std=0.2),
        )

    act = et.Elementwise(x_tanh_x)
    nngp, ntk = eqx.filter_jit(model(act).kernel)(x, None, ("nngp", "ntk"))
    n = 512
    keys = jax.random.split(jax.random.key(7, impl="rbg"), n)
    nngps, ntks = eqx.filter_jit(_draws)(model(act), x, keys)
    for samples, exact, power in ((nngps, nngp, 0.3), (ntks, ntk, 0.03)):
        se = samples.std(0, ddof=1) / math.sqrt(n)
        assert np.all(np.abs(samples.mean(0) - exact) <= 5 * se)
        assert np.all(5 * se < power * np.abs(exact))
