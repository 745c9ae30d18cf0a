r"""Closed-form activations: NT references, quadrature, Monte Carlo, numerics.

- Every `act_*` reference kernel of Neural Tangents 0.6.5 is reproduced.
- Each dual $T = E[\phi(u)\phi(v)]$ and $\dot T = E[\phi'(u)\phi'(v)]$ is
  compared with an independent quadrature of the forward pass `fn` (and of its
  derivative by autodiff): 2-D Gauss-Hermite for smooth activations, and for
  positively homogeneous ones (`Sign`, `RectifiedMonomial`) an exact reduction
  to an angular integral done piecewise by Gauss-Legendre.
- Finite networks built from the same pytree agree with the kernels in the mean.
- Values and gradients are finite at coincident and at zero inputs.
"""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from numpy.polynomial.hermite_e import hermegauss
from numpy.polynomial.legendre import leggauss

import eqtangents as et

from ._reference import KERNELS, kernels, load_cases

# --------------------------------------------------------------- NT references

_NOT_HERE = {"act_hermite_17"}  # needs LayerNorm
REFERENCE_CASES = [
    c
    for c in (load_cases() if KERNELS.exists() else [])
    if c["id"].startswith("act_")
    and not c["id"].startswith("act_elementwisenumerical")
    and c["id"] not in _NOT_HERE
]


@pytest.mark.parametrize(
    "case", REFERENCE_CASES, ids=[c["id"] for c in REFERENCE_CASES]
)
def test_matches_neural_tangents(case):
    ours, ref = kernels(case)
    for name in ("nngp", "ntk"):
        np.testing.assert_allclose(
            getattr(ours, name), ref[name], rtol=1e-6, atol=1e-9, err_msg=name
        )


def test_reference_cases_found():
    assert len(REFERENCE_CASES) == 16


# ------------------------------------------------------------------ quadrature

# (v1, v2) pairs and correlations, including the extremes rho = +-1 (x1 == x2).
_VARIANCES = [(0.3, 0.3), (1.0, 1.0), (0.5, 2.0), (1.7, 0.8)]
_RHOS = [-1.0, -0.6, 0.0, 0.35, 0.9, 1.0]
_CONFIGS = np.array(
    [(v1, v2, r * math.sqrt(v1 * v2)) for v1, v2 in _VARIANCES for r in _RHOS]
)


def _cholesky(v1, v2, c12):
    """`(u, v) = L z` for standard normal `z`; valid at |rho| = 1 too."""
    l11 = np.sqrt(v1)
    l21 = c12 / l11
    l22 = np.sqrt(np.maximum(v2 - l21**2, 0.0))
    return l11, l21, l22


def _values(acts, points):
    """`fn` and its autodiff derivative of each activation at `points`, under one
    `jax.jit` (compilation, not arithmetic, dominates the cost here)."""

    def run(x):
        return [(act.fn(x), jax.vmap(jax.grad(act.fn))(x)) for act in acts]

    return [tuple(map(np.asarray, pair)) for pair in jax.jit(run)(jnp.asarray(points))]


def _duals_at(acts, configs):
    v1, v2, c12 = (jnp.asarray(a) for a in configs.T)

    def run():
        return [act.duals(c12, v1, v2, True) for act in acts]

    return [tuple(map(np.asarray, pair)) for pair in jax.jit(run)()]


class _GaussHermite:
    r"""2-D Gauss-Hermite rules for $E[f(u) f(v)]$ at each config, with each of
    `degrees` nodes per axis, and the 1-D rule for the Cauchy-Schwarz scale
    $\sqrt{E f(u)^2\, E f(v)^2}$."""

    def __init__(self, configs, degrees):
        self.configs, self.degrees = configs, degrees
        l11, l21, l22 = (a[:, None, None] for a in _cholesky(*configs.T))
        points, self.weights = [], []
        for degree in degrees:
            z, w = hermegauss(degree)
            w = w / math.sqrt(2 * math.pi)
            u = np.broadcast_to(l11 * z[:, None], (len(configs), degree, degree))
            v = l21 * z[:, None] + l22 * z[None, :]
            points += [u.ravel(), v.ravel()]
            self.weights.append(np.outer(w, w))
        z, self.w1 = hermegauss(max(degrees))
        self.w1 = self.w1 / math.sqrt(2 * math.pi)
        points += [np.outer(np.sqrt(configs[:, i]), z).ravel() for i in (0, 1)]
        self.points = np.concatenate(points)

    def integrate(self, values):
        """`values` of `f` at `points` -> (one quadrature per degree, scale)."""
        quads, start, n = [], 0, len(self.configs)
        for degree, weight in zip(self.degrees, self.weights):
            size = n * degree * degree
            fu = values[start : start + size].reshape(n, degree, degree)
            fv = values[start + size : start + 2 * size].reshape(n, degree, degree)
            quads.append((fu * fv * weight).sum((1, 2)))
            start += 2 * size
        f1, f2 = values[start:].reshape(2, n, -1)
        return quads, np.sqrt((f1**2 @ self.w1) * (f2**2 @ self.w1))


class _Polar:
    r"""$E[f(u) f(v)]$ for positively homogeneous `f` of degree $k$, exactly
    reduced to an angle: with $z = r(\cos t, \sin t)$ the radial integral is
    $\int_0^\infty r^{2k+1} e^{-r^2/2} dr = 2^k k!$, leaving
    $\frac{2^k k!}{2\pi}\int_0^{2\pi} f(L_{11}\cos t)\, f(L_{21}\cos t +
    L_{22}\sin t)\, dt$. The integrand is smooth between the four angles where an
    argument vanishes, so Gauss-Legendre on each piece converges to rounding."""

    def __init__(self, configs, nodes):
        self.nodes = nodes
        l11, l21, l22 = _cholesky(*configs.T)
        zero = np.arctan2(-l21, l22)
        quarter = np.full_like(zero, np.pi / 2)
        cuts = np.sort(np.mod(np.stack([quarter, 3 * quarter, zero, zero + np.pi], 1),
                              2 * np.pi), 1)  # fmt: skip
        ends = np.zeros((len(configs), 1)), np.full((len(configs), 1), 2 * np.pi)
        cuts = np.concatenate([ends[0], cuts, ends[1]], 1)
        self.lo, self.hi = cuts[:, :-1, None], cuts[:, 1:, None]
        self.rules = [leggauss(n) for n in nodes]
        ts = [
            (self.lo + self.hi) / 2 + (self.hi - self.lo) / 2 * x for x, _ in self.rules
        ]
        a = [l11[:, None, None] * np.cos(t) for t in ts]
        b = [
            l21[:, None, None] * np.cos(t) + l22[:, None, None] * np.sin(t) for t in ts
        ]
        self.shapes = [p.shape for p in a + b]
        self.points = np.concatenate([p.ravel() for p in a + b])

    def integrate(self, values, k):
        """`values` of `f` (homogeneous of degree `k`) -> one result per rule."""
        pieces, start = [], 0
        for shape in self.shapes:
            size = math.prod(shape)
            pieces.append(values[start : start + size].reshape(shape))
            start += size
        n, out = len(self.nodes), []
        for (_, w), fa, fb in zip(self.rules, pieces[:n], pieces[n:]):
            integral = ((self.hi - self.lo)[..., 0] / 2 * (fa * fb @ w)).sum(1)
            out.append(integral * 2**k * math.factorial(k) / (2 * math.pi))
        return out


def _name(act):
    return repr(act).replace("\n", "").replace(" ", "")


SMOOTH = {
    "erf": [et.Erf(1.82, 1.18, 0.26), et.SigmoidLike()],
    "gelu": [et.Gelu()],
    "trigonometric": [et.Sin(1.9, 1.35, 0.22), et.Cos(1.93, 1.73, 0.36), et.Rbf(1.76)],
    "exponential": [et.Exp(0.91, 0.71), et.Gaussian(1.79, -1.0), et.Gaussian(0.7, 0.1)],
    "gabor": [et.Gabor()],
    "polynomial": [et.Polynomial([0.14, 0.87, -0.34, 0.3]), et.Polynomial([])],
    "hermite": [et.Hermite(n) for n in range(8)],
    "monomial": [et.Monomial(n) for n in range(8)],
}


@pytest.mark.parametrize("family", SMOOTH)
def test_duals_match_gauss_hermite(family):
    """The tolerance is the quadrature's own accuracy: 10x the change from 100 to
    150 nodes (Gauss-Hermite converges geometrically for these entire functions,
    so this bounds the 150-node error), over a floor of 1e-12 of the
    Cauchy-Schwarz scale for rounding. Measured agreement is ~1e-13 or better."""
    acts = SMOOTH[family]
    rule = _GaussHermite(_CONFIGS, (100, 150))
    for act, duals, values in zip(
        acts, _duals_at(acts, _CONFIGS), _values(acts, rule.points)
    ):
        for ours, value, what in zip(duals, values, ("T", "Tdot")):
            (coarse, fine), scale = rule.integrate(value)
            tolerance = 1e-12 * scale + 10 * np.abs(fine - coarse)
            error = np.abs(ours - fine)
            assert np.all(error <= tolerance), (_name(act), what, np.max(error / scale))


HOMOGENEOUS = [et.Sign(), *[et.RectifiedMonomial(n) for n in range(7)]]


def test_duals_match_polar_quadrature():
    r"""`Sign` (degree 0) and `RectifiedMonomial(n)` (degree n). Relative to the
    Cauchy-Schwarz scale, errors are below 1e-12 except for discontinuous
    functions (degree 0): there $T \propto \arccos\rho$ has infinite slope at
    $|\rho| = 1$, so one ulp of rounding in $\rho$ moves it by
    $\sqrt{2\epsilon} \approx 2\times 10^{-8}$; we allow 1e-7. The derivative of
    a step is zero almost everywhere, and there $\dot T = 0$."""
    n = len(_CONFIGS)
    diagonals = [np.stack([_CONFIGS[:, i]] * 3, 1) for i in (0, 1)]
    rule = _Polar(np.concatenate([_CONFIGS, *diagonals]), nodes=(40, 60))
    duals = _duals_at(HOMOGENEOUS, _CONFIGS)
    values = _values(HOMOGENEOUS, rule.points)
    for act, ours_pair, value_pair in zip(HOMOGENEOUS, duals, values):
        m = getattr(act, "degree", 0)
        for ours, value, k in zip(ours_pair, value_pair, (m, m - 1)):
            if k < 0:
                assert np.all(ours == 0) and np.all(value == 0), _name(act)
                continue
            coarse, fine = rule.integrate(value, k)
            assert np.allclose(coarse, fine, rtol=1e-14, atol=1e-14)
            scale = np.sqrt(fine[n : 2 * n] * fine[2 * n :])
            error = np.abs(ours - fine[:n])
            rtol = 1e-7 if k == 0 else 1e-12
            assert np.all(error <= rtol * scale), (_name(act), k, np.max(error / scale))


def _double_factorial(n):
    return math.prod(range(n, 0, -2)) if n > 0 else 1


def test_closed_form_identities():
    r"""Identities the duals must satisfy, evaluated under one `jax.jit`:

    - diagonal moments at degrees NT does not cover: $E[u^{2n}] = (2n-1)!!\,v^n$
      for `Monomial(n)`, $E[u_+^{2n}] = (2n-1)!!\,v^n/2$ for
      `RectifiedMonomial(n)`, and $\dot T_n = n^2 T_{n-1}$ there;
    - `Hermite(n)` at unit variance is NT's kernel $c^n$, $\dot T = n c^{n-1}$;
    - `Gelu(approximate=True)` has the exact GELU's kernels (as in NT);
    - `SigmoidLike()` is `Erf(0.5, 1/2.4020563531719796, 0.5)`;
    - `ExpNormalized(gamma, shift)` is $\sqrt{v_1 v_2}$ times the kernel of
      `Exp(exp(gamma (shift - 1) / 2), sqrt(gamma))` at unit variance and
      correlation $\rho$ (the replacement its error message recommends).
    """
    v = jnp.asarray([0.4, 1.0, 1.9])
    c = jnp.linspace(-1, 1, 9)
    one = jnp.ones_like(c)
    c3 = jnp.asarray([-0.5, 0.2, 0.9])
    v1, v2 = jnp.asarray([0.6, 1.0, 1.2]), jnp.asarray([0.9, 1.0, 0.8])
    rho = jnp.asarray([-1.0, -0.3, 0.0, 0.6, 1.0])
    w1, w2 = (
        jnp.asarray([0.5, 1.0, 2.0, 0.7, 1.5]),
        jnp.asarray([1.5, 1.0, 0.3, 0.7, 1.5]),
    )
    c_rho = rho * jnp.sqrt(w1 * w2)
    gamma, shift = 1.84, -0.7
    monomial, rectified, hermite = (6, 11, 16), (5, 9, 12), range(9)
    sigmoid_erf = et.Erf(a=0.5, b=1 / 2.4020563531719796, c=0.5)
    exp = et.Exp(a=math.exp(gamma * (shift - 1) / 2), b=math.sqrt(gamma))

    def run():
        return dict(
            monomial=[et.Monomial(n).duals(v, v, v, True) for n in monomial],
            rectified=[et.RectifiedMonomial(n).duals(v, v, v, True) for n in rectified],
            hermite=[et.Hermite(n).duals(c, one, one, True) for n in hermite],
            gelu=(et.Gelu().duals(c3, v1, v2, True),
                  et.Gelu(approximate=True).duals(c3, v1, v2, True)),
            sigmoid=(et.SigmoidLike().duals(c3, v1, v2, True),
                     sigmoid_erf.duals(c3, v1, v2, True)),
            normalized=(
                et.ExpNormalized(gamma, shift).duals(c_rho, w1, w2, True),
                exp.duals(rho, jnp.ones_like(rho), jnp.ones_like(rho), True),
            ),
        )  # fmt: skip

    out = jax.jit(run)()
    df = _double_factorial
    for n, (nngp, dot) in zip(monomial, out["monomial"]):
        np.testing.assert_allclose(nngp, df(2 * n - 1) * v**n, rtol=1e-13)
        np.testing.assert_allclose(
            dot, n * n * df(2 * n - 3) * v ** (n - 1), rtol=1e-13
        )
    for n, (nngp, dot) in zip(rectified, out["rectified"]):
        np.testing.assert_allclose(nngp, df(2 * n - 1) * v**n / 2, rtol=1e-13)
        np.testing.assert_allclose(
            dot, n * n * df(2 * n - 3) * v ** (n - 1) / 2, rtol=1e-13
        )
    for n, (nngp, dot) in zip(hermite, out["hermite"]):
        np.testing.assert_allclose(nngp, c**n, rtol=1e-14, atol=1e-15)
        np.testing.assert_allclose(dot, n * c ** max(n - 1, 0) * (n > 0), atol=1e-14)
    (exact, approx), (sigmoid, erf) = out["gelu"], out["sigmoid"]
    for a, b in [*zip(exact, approx), *zip(sigmoid, erf)]:
        np.testing.assert_allclose(a, b, rtol=1e-15)
    (nngp, dot), (t, tdot) = out["normalized"]
    np.testing.assert_allclose(nngp, jnp.sqrt(w1 * w2) * t, rtol=1e-13)
    np.testing.assert_allclose(dot, tdot, rtol=1e-13)


def test_forward_passes():
    x = jnp.linspace(-5, 5, 201)
    gelu_gap = jnp.max(jnp.abs(et.Gelu()(x) - et.Gelu(approximate=True)(x)))
    assert 0 < float(gelu_gap) < 1e-3
    assert float(jnp.max(jnp.abs(et.SigmoidLike()(x) - jax.nn.sigmoid(x)))) < 0.02
    with pytest.raises(ValueError, match=r"Exp\(a="):
        et.ExpNormalized(1.84, -0.7)(x)


# ----------------------------------------------------------------- Monte Carlo


def _empirical(model, x, keys):
    r"""Per-sample $f(x) f(x)^\top$ and empirical NTK of finite networks drawn by
    `model.init`: one per key, by a plain `jax.jacrev` contraction."""
    nets = eqx.filter_vmap(lambda key: model.init(key, x.shape[1:]))(keys)

    def one(net):
        params, static = eqx.partition(net, eqx.is_inexact_array)

        def f(p):
            return jax.vmap(eqx.combine(p, static))(x)[:, 0]

        y = f(params)
        jac = [j.reshape(len(x), -1) for j in jax.tree.leaves(jax.jacrev(f)(params))]
        return y[:, None] * y[None, :], sum(j @ j.T for j in jac)

    return eqx.filter_jit(eqx.filter_vmap(one))(nets)


MONTE_CARLO = [et.Erf(), et.Sign(), et.RectifiedMonomial(2)]


@pytest.mark.parametrize("act", MONTE_CARLO, ids=_name)
def test_monte_carlo(act):
    r"""Finite networks `Dense(w) -> act -> Dense(1)` agree with the kernels.

    With one hidden layer, $E[f(x_1) f(x_2)]$ and the expected empirical NTK
    equal the infinite-width NNGP and NTK at every width, so the sample means
    must lie within a few standard errors of them at each width. The spread of
    $f f$ does not depend on the width, but the empirical NTK concentrates like
    $1/\sqrt{w}$: from width 32 to 512 its standard error must fall about
    fourfold (we require twofold). Comparing the two realised errors instead
    would fail by chance in a fair fraction of seeds, as the 3 x 3 error matrix
    is dominated by one random scale.
    """
    x = np.random.default_rng(0).normal(size=(3, 4))
    x[2] = x[0]  # a repeated input: rho = 1
    x = jnp.asarray(x)

    def model(width):
        return et.Serial(
            et.Dense(width, W_std=1.5, b_std=0.3),
            act,
            et.Dense(1, W_std=1.2, b_std=0.2),
        )

    nngp, ntk = jax.jit(model(1).kernel, static_argnums=(1, 2))(
        x, None, ("nngp", "ntk")
    )
    n_samples, spread = 256, {}
    for width, key in zip((32, 512), jax.random.split(jax.random.key(1))):
        ffs, ntks = _empirical(model(width), x, jax.random.split(key, n_samples))
        for samples, exact in ((ffs, nngp), (ntks, ntk)):
            se = samples.std(0) / math.sqrt(n_samples)
            assert np.all(np.abs(samples.mean(0) - exact) <= 5 * se + 1e-12)
        spread[width] = float(jnp.linalg.norm(ntks.std(0)))
    assert spread[512] < spread[32] / 2


# ---------------------------------------------------------- numerics and errors

ALL = [
    et.Erf(1.82, 1.18, 0.26),
    et.SigmoidLike(),
    et.Gelu(),
    et.Gelu(approximate=True),
    et.Sin(1.9, 1.35, 0.22),
    et.Cos(1.93, 1.73, 0.36),
    et.Rbf(1.76),
    et.Exp(0.91, 0.71),
    et.Gaussian(1.79, -1.0),
    et.Gabor(),
    et.ExpNormalized(1.84, -1.0),
    et.ExpNormalized(0.9, 0.5, do_clip=False),
    et.Sign(),
    et.Hermite(4),
    et.Monomial(3),
    et.Polynomial([0.14, 0.87, -0.34, 0.3]),
    *[et.RectifiedMonomial(n) for n in range(4)],
]


DISTINCT = [
    et.Erf(1.82, 1.18, 0.26),
    et.Gelu(),
    et.Sin(1.9, 1.35, 0.22),
    et.Rbf(1.76),
    et.Exp(0.91, 0.71),
    et.Gaussian(1.79, -1.0),
    et.Gabor(),
    et.ExpNormalized(1.84, -1.0),
    et.Sign(),
    et.Hermite(4),
    et.Polynomial([0.14, 0.87, -0.34, 0.3]),
    et.RectifiedMonomial(0),
    et.RectifiedMonomial(2),
]


def test_duals_finite_symmetric_psd_with_derivatives():
    r"""For each dual formula, under one `jax.jit`: the kernel matrices
    $T(C_{ij}, C_{ii}, C_{jj})$, $\dot T(\ldots)$ of $C = \sigma_w^2 X X^\top / d$
    (what a bias-free `Dense` feeds an activation) are finite, symmetric and PSD,
    and so are their derivatives along a random direction of $(X, \sigma_w)$ (a
    directional derivative is finite exactly when every partial derivative is),
    for rows of $X$ that are repeated ($\rho = 1$), negated ($\rho = -1$) and zero
    (zero variance). Classes that only call another's dual with other constants
    (`SigmoidLike`, `Cos`, `Gelu(approximate=True)`, `Monomial`) are covered by it.
    """
    rng = np.random.default_rng(3)
    x = rng.normal(size=(6, 4))
    x[2], x[3], x[4] = x[0], -x[1], 0.0
    x, dx = jnp.asarray(x), jnp.asarray(rng.normal(size=(6, 4)))

    def run(x, w_std, dx, dw):
        out = []
        for act in DISTINCT:

            def kernels_(x, w_std, act=act):
                c = w_std**2 * x @ x.T / x.shape[1]
                v = jnp.diag(c)
                return act.duals(c, v[:, None], v[None, :], True)

            out.append(jax.jvp(kernels_, (x, w_std), (dx, dw)))
        return out

    w, dw = jnp.asarray(1.3), jnp.asarray(0.7)
    for act, (kernels_, tangents) in zip(DISTINCT, jax.jit(run)(x, w, dx, dw)):
        name = _name(act)
        assert all(np.all(np.isfinite(t)) for t in tangents), name
        for k in map(np.asarray, kernels_):
            assert np.all(np.isfinite(k)), name
            np.testing.assert_allclose(k, k.T, rtol=1e-12, atol=1e-14, err_msg=name)
            eig = np.linalg.eigvalsh(k)
            assert eig.min() >= -1e-10 * max(eig.max(), 1.0), name


NETWORK = [et.Sign(), et.ExpNormalized(), et.RectifiedMonomial(1)]


def test_network_jit_grad_at_coincident_and_zero_inputs():
    """Through the library's own layers: `jit` of `kernel(x, None)` and of its
    gradients w.r.t. the inputs and `W_std` (a traced array) are finite."""
    x = np.random.default_rng(5).normal(size=(4, 3))
    x[2], x[3] = x[0], 0.0
    x = jnp.asarray(x)

    def run(x, w_std):
        out = []
        for act in NETWORK:

            def total(x, w_std, act=act):
                model = et.Serial(et.Dense(8, W_std=w_std), act, et.Dense(1))
                nngp, ntk = model.kernel(x, None, get=("nngp", "ntk"))
                return jnp.sum(nngp) + jnp.sum(ntk), (nngp, ntk)

            out.append(jax.value_and_grad(total, (0, 1), has_aux=True)(x, w_std))
        return out

    for act, ((_, kernels_), grads) in zip(NETWORK, jax.jit(run)(x, jnp.asarray(1.3))):
        leaves = list(kernels_) + list(grads)
        assert all(np.all(np.isfinite(np.asarray(leaf))) for leaf in leaves), _name(act)


def test_zero_variance_is_deterministic():
    r"""At zero variance $u = v = 0$, so $T = \phi(0)^2$ and $\dot T = \phi'(0)^2$."""

    # The step and the derivative of max(x, 0) jump at 0; ExpNormalized has no fn.
    tested = [
        a
        for a in ALL
        if not isinstance(a, et.ExpNormalized)
        and not (isinstance(a, et.RectifiedMonomial) and a.degree <= 1)
    ]

    def run():
        zero = jnp.zeros(())
        out = []
        for act in tested:
            nngp, dot = act.duals(zero, zero, zero, True)
            out.append((nngp, dot, act.fn(zero), jax.grad(act.fn)(zero)))
        return out

    for act, (nngp, dot, f0, df0) in zip(tested, jax.jit(run)()):
        np.testing.assert_allclose(nngp, f0**2, atol=1e-15, err_msg=_name(act))
        np.testing.assert_allclose(dot, df0**2, atol=1e-15, err_msg=_name(act))


SPATIAL = [et.RectifiedMonomial(2)]


def test_spatial_layouts_agree():
    """`kernel(x, None)` (variances from the batch-diagonal covariances) equals
    `kernel(x, x)` (the cross covariances' own diagonal) in a CNN whose second
    activation reads full spatial covariances of both kinds."""

    def run(x):
        out = []
        for act in SPATIAL:
            model = et.Serial(
                et.Conv(4, (3,), padding="SAME", W_std=1.4, b_std=0.3), act,
                et.Conv(4, (3,), padding="SAME", W_std=1.2, b_std=0.2), act,
                et.GlobalAvgPool(), et.Dense(1),
            )  # fmt: skip
            get = ("nngp", "ntk")
            out.append((model.kernel(x, None, get=get), model.kernel(x, x, get=get)))
        return out

    x = jnp.asarray(np.random.default_rng(4).normal(size=(3, 2, 6)))
    for act, (a, b) in zip(SPATIAL, jax.jit(run)(x)):
        for p, q in zip(a, b):
            assert np.all(np.isfinite(p)), _name(act)
            np.testing.assert_allclose(p, q, rtol=1e-12, atol=1e-14, err_msg=_name(act))


def test_validation():
    with pytest.raises(ValueError, match="Monomial"):
        et.Monomial(-1)
    with pytest.raises(ValueError, match="Hermite"):
        et.Hermite(-2)
    with pytest.raises(ValueError, match="RectifiedMonomial"):
        et.RectifiedMonomial(-1)
    with pytest.raises(ValueError, match="Rbf"):
        et.Rbf(-1.0)
    with pytest.raises(ValueError, match="ExpNormalized"):
        et.ExpNormalized(gamma=-0.5)
    with pytest.raises(ValueError, match="Erf"):
        et.Erf(a=float("nan"))
    with pytest.raises(ValueError, match="needs Gaussian inputs"):
        et.Serial(et.Erf()).kernel(jnp.ones((2, 3)))


def test_float32():
    """Duals keep float32 (no Python float promotes them) and stay finite."""
    c = jnp.asarray([[1.0, -0.5, 0.0], [-0.5, 0.25, 0.0], [0.0, 0.0, 0.0]], jnp.float32)
    v = jnp.diag(c)

    def run():
        return [act.duals(c, v[:, None], v[None, :], True) for act in DISTINCT]

    for act, (nngp, dot) in zip(DISTINCT, jax.jit(run)()):
        assert nngp.dtype == jnp.float32 and dot.dtype == jnp.float32, _name(act)
        assert np.all(np.isfinite(nngp)) and np.all(np.isfinite(dot)), _name(act)


def test_self_dual_is_the_dual_at_equal_arguments():
    """`self_dual(v)` (closed forms for the ReLU family) equals `duals(v, v, v)`."""
    v = jnp.asarray([0.0, 0.3, 1.0, 2.5], jnp.float64)
    for act in DISTINCT:
        np.testing.assert_allclose(
            act.self_dual(v),
            act.duals(v, v, v, False)[0],
            rtol=1e-10,
            atol=1e-12,
            err_msg=_name(act),
        )
