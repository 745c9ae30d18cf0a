"""`et.features` activation layers: Hermite coefficients, exact maps, sketches."""

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.integrate
import scipy.special
from numpy.polynomial.hermite_e import hermeval

import eqtangents as et
from eqtangents.features import _hermite as H

from ._features_checks import relative_error

F = et.features


def _sin_linear(x):
    # Entire, so et.ElementwiseNumerical's Gauss-Hermite rule is exact to rounding
    # (for tanh at deg=25 it is asymmetric in the two inputs by 4e-4, which no
    # factorisation can reproduce).
    return jnp.sin(x) + 0.3 * x


# name: (network activation, feature activation factory)
ACTIVATIONS = {
    "relu": (et.Relu(), lambda **kw: F.Relu(**kw)),
    "abrelu": (et.ABRelu(-0.3, 1.4), lambda **kw: F.ABRelu(-0.3, 1.4, **kw)),
    "leaky_relu": (et.LeakyRelu(0.2), lambda **kw: F.LeakyRelu(0.2, **kw)),
    "abs": (et.Abs(), lambda **kw: F.Abs(**kw)),
    "erf": (et.Erf(1.3, 0.7, 0.2), lambda **kw: F.Erf(1.3, 0.7, 0.2, **kw)),
    "gelu": (et.Gelu(), lambda **kw: F.Gelu(**kw)),
    "sin": (et.Sin(1.1, 0.9, 0.4), lambda **kw: F.Sin(1.1, 0.9, 0.4, **kw)),
    "numerical": (
        et.ElementwiseNumerical(_sin_linear, 25),
        lambda **kw: F.ElementwiseNumerical(_sin_linear, 25, **kw),
    ),
}


def _h(k, z):
    """The orthonormal Hermite polynomial He_k / sqrt(k!) at z."""
    return hermeval(z, np.eye(k + 1)[k]) / math.sqrt(math.factorial(k))


def _gauss_expectation(f, lo=-np.inf, hi=np.inf):
    density = lambda z: f(z) * np.exp(-(z**2) / 2) / np.sqrt(2 * np.pi)  # noqa: E731
    return scipy.integrate.quad(density, lo, hi, epsabs=1e-13, epsrel=1e-12, limit=200)[
        0
    ]


@jax.jit
def _kernels(fmodel, x):
    return tuple(F.kernel(fmodel(F.Features.from_inputs(x))))


# ---------------------------------------------------------------- coefficients


def test_hermite_at_zero():
    for j in range(14):
        assert H.he_at_zero(j) == hermeval(0.0, np.eye(j + 1)[j])


def test_relu_and_step_coefficients_by_quadrature():
    a, b = H.relu_coefficients(12), H.step_coefficients(12)
    np.testing.assert_allclose(a[:2], [1 / np.sqrt(2 * np.pi), 0.5], rtol=1e-15)
    assert b[0] == 0.5
    for k in range(13):
        relu = _gauss_expectation(lambda z, k=k: z * _h(k, z), 0.0)
        step = _gauss_expectation(lambda z, k=k: _h(k, z), 0.0)
        np.testing.assert_allclose(a[k], relu, atol=1e-12)
        np.testing.assert_allclose(b[k], step, atol=1e-12)
    # Parseval: the energies sum to E[relu(z)^2] = E[step(z)^2] = 1/2.
    np.testing.assert_allclose(np.sum(H.relu_coefficients(400) ** 2), 0.5, atol=1e-5)


_CLOSED_FORMS = {
    "erf": (
        lambda q, p: H.erf_coefficients(1.3, 0.7, 0.2, q, p),
        lambda x: 1.3 * scipy.special.erf(0.7 * x) + 0.2,
        lambda x: 1.3 * 0.7 * 2 / np.sqrt(np.pi) * np.exp(-((0.7 * x) ** 2)),
    ),
    "sin": (
        lambda q, p: H.sin_coefficients(1.1, 0.9, 0.4, q, p),
        lambda x: 1.1 * np.sin(0.9 * x + 0.4),
        lambda x: 1.1 * 0.9 * np.cos(0.9 * x + 0.4),
    ),
    "gelu": (
        H.gelu_coefficients,
        lambda x: x * scipy.special.ndtr(x),
        lambda x: scipy.special.ndtr(x) + x * np.exp(-(x**2) / 2) / np.sqrt(2 * np.pi),
    ),
}


@pytest.mark.parametrize("name", sorted(_CLOSED_FORMS))
def test_closed_form_coefficients_by_quadrature(name):
    closed, fn, dfn = _CLOSED_FORMS[name]
    q = jnp.array([0.3, 1.0, 2.5])
    a, b = closed(q, 10)
    numeric = H.quadrature_coefficients(jnp.tanh, q, 10)
    for i, qi in enumerate(np.asarray(q)):
        for k in range(11):
            root = np.sqrt(qi)
            expected = _gauss_expectation(
                lambda z, k=k, root=root: fn(root * z) * _h(k, z)
            )
            np.testing.assert_allclose(a[i, k], expected, atol=1e-12)
            expected = _gauss_expectation(
                lambda z, k=k, root=root: dfn(root * z) * _h(k, z)
            )
            np.testing.assert_allclose(b[i, k], expected, atol=1e-12)
            expected = _gauss_expectation(
                lambda z, k=k, root=root: np.tanh(root * z) * _h(k, z)
            )
            # Gauss-Hermite error for tanh: ~1e-11 at q = 1, ~1e-7 at q = 2.5.
            tol = 1e-10 if qi <= 1 else 1e-6
            np.testing.assert_allclose(numeric[i, k], expected, rtol=0, atol=tol)


@pytest.mark.parametrize("name", ["relu", "abs", "erf", "gelu", "sin", "numerical"])
def test_truncated_hermite_duals_converge(name):
    layer = ACTIVATIONS[name][1]()
    q1, q2 = jnp.array([0.5, 1.0, 1.7]), jnp.array([0.6, 1.0, 1.5])
    rho = jnp.linspace(-0.95, 0.95, 9)
    c12 = rho * jnp.sqrt(q1[:, None, None] * q2[None, :, None])
    exact = layer.duals(c12, q1[:, None, None], q2[None, :, None], True)
    (a1, b1), (a2, b2) = layer.coefficients(q1, 16), layer.coefficients(q2, 16)
    errors = []
    for p in (2, 4, 8, 16):  # the coefficients to degree p are a prefix
        powers = rho[:, None] ** np.arange(p + 1)
        t = jnp.einsum("ik,jk,rk->ijr", a1[:, : p + 1], a2[:, : p + 1], powers)
        dot = jnp.einsum("ik,jk,rk->ijr", b1[:, : p + 1], b2[:, : p + 1], powers)
        errors.append([float(jnp.max(jnp.abs(x - e)) / jnp.max(jnp.abs(e)))
                       for x, e in zip((t, dot), exact)])  # fmt: skip
    errors = np.asarray(errors)
    assert np.all(np.diff(errors, axis=0) < 0), errors
    bound = {"relu": (1e-3, 1e-2), "abs": (1e-3, 2e-2), "numerical": (1e-3, 1e-2)}
    assert np.all(errors[-1] < bound.get(name, (1e-4, 1e-4))), errors


def test_allocation_is_proportional_capped_and_drops_narrow_degrees():
    energy = np.array([0.5, 0.3, 0.0, 0.15, 0.05])
    widths = H.allocate(energy, 1000, cap=10_000, min_width=8)
    assert sum(widths) == 1000 and widths[2] == 0
    np.testing.assert_allclose(widths, 1000 * energy, atol=1)
    capped = H.allocate(energy, 1000, cap=100, min_width=8)
    assert capped[0] == 100 and sum(capped) == 1000
    np.testing.assert_allclose(capped[1:], 900 * energy[1:] / 0.5, atol=1)
    narrow = H.allocate(energy, 100, cap=10_000, min_width=8)
    assert narrow[4] == 0 and narrow[3] > 0 and sum(narrow) == 100


# ---------------------------------------------------------------- exact maps


def _networks(name, par, **options):
    net_act, feat_act = ACTIVATIONS[name]
    widths = (64, 32, 1)
    stds = ((1.3, 0.2), (0.9, 0.1), (1.1, 0.3))
    net, feat = [], []
    for i, (width, (w, b)) in enumerate(zip(widths, stds)):
        net.append(et.Dense(width, w, b, par))
        feat.append(F.Dense(w, b, par, out_features=width))
        if i < 2:
            net.append(net_act)
            feat.append(feat_act(**options))
    return et.Serial(*net), F.Serial(*feat)


@pytest.mark.parametrize("par", ["ntk", "standard"])
@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_exact_features_reproduce_kernel(name, par):
    x = jax.random.normal(jax.random.key(0), (10, 5))
    model, fmodel = _networks(name, par, method="exact")
    k = model.kernel(x, None)
    nngp, ntk = _kernels(fmodel.init(jax.random.key(1), (5,)), x)
    for got, expected in ((nngp, k.nngp), (ntk, k.ntk)):
        scale = max(1.0, float(jnp.abs(expected).max()))
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-8 * scale)


# ---------------------------------------------------------------- sketches


_KEYS = jax.random.split(jax.random.key(42), 3000)


def _assert_unbiased(samples, expected, n_se=5.0):
    samples, expected = np.asarray(samples), np.asarray(expected)
    mean = samples.mean(0)
    se = samples.std(0, ddof=1) / np.sqrt(len(samples))
    assert np.all(np.abs(mean - expected) < n_se * se + 1e-12), (mean, expected, se)


def test_hermite_sketch_is_unbiased_for_every_degree():
    u = jax.random.normal(jax.random.key(3), (3, 12))
    u = u / jnp.linalg.norm(u, axis=1, keepdims=True)
    widths = {1: 6, 2: 8, 3: 4, 5: 8, 6: 3}

    @jax.jit
    @jax.vmap
    def estimate(key):
        z = H.HermiteSketch(12, widths, key=key)(u)
        return jnp.stack([z[k] @ z[k].T for k in sorted(widths)])

    gram = u @ u.T
    _assert_unbiased(estimate(_KEYS), jnp.stack([gram**k for k in sorted(widths)]))


@pytest.mark.parametrize(
    "exact_a, part_b",
    [(False, 6)]
    + [pytest.param(*c, marks=pytest.mark.slow) for c in [(True, 6), (False, None)]],
)
def test_tangent_sketch_is_unbiased(exact_a, part_b):
    ks = jax.random.split(jax.random.key(4), 3)
    b0 = jax.random.uniform(ks[0], (3,)) + 0.5
    step = jax.random.normal(ks[1], (3, 5))
    psi = jax.random.normal(ks[2], (3, 9))
    part_a = 9 if exact_a else 5

    @jax.jit
    @jax.vmap
    def estimate(key):
        out = H.TangentSketch(9, 5, part_a, exact_a, part_b, key=key)(b0, step, psi)
        return out @ out.T

    expected = (jnp.outer(b0, b0) + step @ step.T) * (psi @ psi.T)
    _assert_unbiased(estimate(_KEYS), expected)


def _one_hidden_layer(name, **options):
    net_act, feat_act = ACTIVATIONS[name]
    fmodel = F.Serial(F.Dense(1.2, 0.3), feat_act(**options), F.Dense(0.9, 0.2))
    return fmodel


def _truncated_kernels(layer, plan, x, method):
    """The kernels of Dense(1.2, 0.3)-act-Dense(0.9, 0.2) with the activation's
    duals truncated to the degrees the sketch keeps."""
    phi = jnp.concatenate(
        [1.2 * x / jnp.sqrt(x.shape[1]), jnp.full((len(x), 1), 0.3)], 1
    )
    k1 = phi @ phi.T
    q = jnp.diag(k1)
    rho = k1 / jnp.sqrt(q[:, None] * q[None, :])
    a, b = layer.coefficients(q, layer.config.degree)
    kept = [0] + [k for k, _ in plan.nngp]
    t = sum(jnp.outer(a[:, k], a[:, k]) * rho**k for k in kept)
    if method == "combined":
        dot = layer.duals(k1, q[:, None], q[None, :], True)[1]
    else:
        kept = ([0] if plan.part_a else []) + [k for k, _ in plan.step]
        dot = sum(jnp.outer(b[:, k], b[:, k]) * rho**k for k in kept)
    nngp = 0.81 * t + 0.04
    return nngp, nngp + 0.81 * dot * k1


_SLOW = pytest.mark.slow


@pytest.mark.parametrize(
    "name, method",
    [("relu", "poly_sketch"), ("erf", "combined")]
    + [pytest.param(*c, marks=_SLOW) for c in [("gelu", "poly_sketch"),
       ("relu", "combined"), ("erf", "poly_sketch"), ("gelu", "combined")]],
)  # fmt: skip
def test_sketches_are_unbiased_for_the_truncated_kernel(name, method):
    x = jax.random.normal(jax.random.key(5), (5, 4))
    x = x / jnp.linalg.norm(x, axis=1, keepdims=True) * 2.0
    options = dict(method=method, nngp_dim=24, sketch_dim=24, step_dim=16, degree=6)
    fmodel = _one_hidden_layer(name, **options)

    @jax.jit
    @jax.vmap
    def estimate(key):
        return jnp.stack(_kernels(fmodel.init(key, (4,)), x))

    layer = fmodel.init(_KEYS[0], (4,)).layers[1]
    expected = _truncated_kernels(layer, layer.projections.plan, x, method)
    _assert_unbiased(estimate(_KEYS[:2000]), jnp.stack(expected))


def _errors(name, method, m, seeds=2, hidden=2):
    x = jax.random.normal(jax.random.key(6), (48, 8))
    x = x / jnp.linalg.norm(x, axis=1, keepdims=True) * jnp.sqrt(8.0)
    model, fmodel = _networks(name, "ntk", method=method, nngp_dim=m, sketch_dim=m)
    if hidden == 1:  # Dense-act-Dense
        model = et.Serial(*model.layers[:2], model.layers[-1])
        fmodel = F.Serial(*fmodel.layers[:2], fmodel.layers[-1])
    k = model.kernel(x, None)
    out = []
    for seed in range(seeds):
        nngp, ntk = _kernels(fmodel.init(jax.random.key(seed), (8,)), x)
        out.append((relative_error(nngp, k.nngp), relative_error(ntk, k.ntk)))
    return np.mean(out, axis=0)


@pytest.mark.parametrize("name", ["relu", "erf", "gelu"])
def test_error_falls_with_feature_dimension(name):
    small = _errors(name, "poly_sketch", 64, hidden=1)
    large = _errors(name, "poly_sketch", 1024, hidden=1)
    assert np.all(large < small / 2.5), (small, large)
    assert np.all(large < 0.06), large


@pytest.mark.slow
@pytest.mark.parametrize("method", ["poly_sketch", "combined"])
@pytest.mark.parametrize("name", ["relu", "erf", "gelu"])
def test_error_falls_with_feature_dimension_two_layers(name, method):
    small, large = _errors(name, method, 128), _errors(name, method, 2048)
    assert np.all(large < small / 2.5), (small, large)
    assert np.all(large < 0.06), large


@pytest.mark.slow
def test_poly_sketch_beats_random_features():
    poly = _errors("relu", "poly_sketch", 1024)
    rf = _errors("relu", "random_features", 1024)
    assert np.all(poly < 0.8 * rf), (poly, rf)


@pytest.mark.parametrize(
    "name, method",
    [("relu", "poly_sketch"), ("erf", "combined")]
    + [pytest.param(*c, marks=_SLOW) for c in [("erf", "poly_sketch"),
       ("relu", "combined"), ("relu", "random_features"), ("erf", "random_features")]],
)  # fmt: skip
def test_jit_and_dtypes(name, method):
    x = jax.random.normal(jax.random.key(7), (12, 6))
    _, fmodel = _networks(name, "ntk", method=method, nngp_dim=64, sketch_dim=64)
    fmodel = eqx.filter_jit(fmodel.init)(jax.random.key(0), (6,))
    embed = eqx.filter_jit(lambda fm, x: fm(F.Features.from_inputs(x)))
    f32, f64 = embed(fmodel, x.astype(jnp.float32)), embed(fmodel, x)
    assert f32.nngp_feat.dtype == jnp.float32 and f32.ntk_feat.dtype == jnp.float32
    assert f64.nngp_feat.dtype == jnp.float64
    assert f32.shape == f64.shape == fmodel.output_shape((6,))._replace(width=None)
    for a, b in ((f32.nngp_feat, f64.nngp_feat), (f32.ntk_feat, f64.ntk_feat)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * float(jnp.abs(b).max()))
    # Every batch is embedded with the same sketch.
    reverse = embed(fmodel, x[::-1])
    np.testing.assert_allclose(
        reverse.ntk_feat, f64.ntk_feat[::-1], rtol=1e-10, atol=1e-12
    )


@pytest.mark.parametrize(
    "method",
    ["poly_sketch"]
    + [pytest.param(m, marks=_SLOW) for m in ("combined", "random_features")],
)
def test_explicit_tensor_product_and_spatial_shapes(method):
    x = jax.random.normal(jax.random.key(8), (4, 3, 5))  # channels first, 5 positions
    first = F.Gelu(method, nngp_dim=32, sketch_dim=None)
    second = F.Gelu(method, nngp_dim=16, sketch_dim=32)
    fmodel = F.Serial(F.Dense(1.0, 0.1), first, F.Dense(1.0), second)
    fmodel = fmodel.init(jax.random.key(0), (3, 5))
    f = fmodel(F.Features.from_inputs(x))
    assert f.shape == fmodel.output_shape((3, 5))._replace(width=None)
    assert f.shape.spatial == (5,) and f.shape.ntk == 32
    assert bool(jnp.all(jnp.isfinite(f.ntk_feat)))


# ---------------------------------------------------------------- errors


def test_large_variances_fail_the_truncation_check():
    x = jax.random.normal(jax.random.key(10), (6, 4))
    fmodel = F.Serial(F.Dense(1.0), F.Erf(nngp_dim=32, sketch_dim=32), F.Dense(1.0))
    fmodel = fmodel.init(jax.random.key(0), (4,))
    embed = eqx.filter_jit(lambda fm, x: fm(F.Features.from_inputs(x)))
    x = x / jnp.linalg.norm(x, axis=1, keepdims=True) * 2.0  # variance q = 1
    assert bool(jnp.all(jnp.isfinite(embed(fmodel, x).nngp_feat)))
    # At q = 4 the derivative series misses 13% of the diagonal at degree 8.
    with pytest.raises(RuntimeError, match="features.Erf.*truncated at degree=8"):
        jax.block_until_ready(embed(fmodel, 2 * x))  # under jit
    loose = F.Serial(
        F.Dense(1.0), F.Erf(nngp_dim=32, sketch_dim=32, degree=30), F.Dense()
    )
    loose = loose.init(jax.random.key(0), (4,))
    assert bool(jnp.all(jnp.isfinite(embed(loose, 2 * x).ntk_feat)))  # misses 0.6%
    relu = F.Serial(F.Dense(1.0), F.Relu(nngp_dim=32), F.Dense(1.0))  # homogeneous
    assert bool(
        jnp.all(
            jnp.isfinite(embed(relu.init(jax.random.key(0), (4,)), 30 * x).nngp_feat)
        )
    )


def test_errors():
    f = F.Features.from_inputs(jnp.ones((3, 4)))
    with pytest.raises((ValueError, TypeError), match="method"):
        F.Erf(method="nystrom")
    with pytest.raises(ValueError, match="features.Gelu: `nngp_dim`"):
        F.Gelu(nngp_dim=0)
    with pytest.raises(ValueError, match="features.Sin: `sketch_dim`"):
        F.Sin(sketch_dim=1)
    with pytest.raises(ValueError, match="features.Relu: `degree`"):
        F.Relu(degree=0)
    with pytest.raises(ValueError, match="features.Erf: `a`"):
        F.Erf(a=float("nan"))
    with pytest.raises(ValueError, match="features.ABRelu: `b`"):
        F.ABRelu(0.1, float("inf"))
    with pytest.raises(ValueError, match="features.ElementwiseNumerical: `deg`"):
        F.ElementwiseNumerical(jnp.tanh, 0)
    with pytest.raises(ValueError, match="features.Erf: `tol`"):
        F.Erf(tol=-1.0)
    with pytest.raises(ValueError, match="init"):
        F.Gelu()(f)
    layer = F.Gelu(nngp_dim=16).init(jax.random.key(0), (5,))
    with pytest.raises(
        ValueError, match=r"initialised for NNGP and NTK features of widths \(5, 0\)"
    ):
        layer(f)
    with pytest.raises(ValueError, match="exact"):
        F.Serial(F.Erf(method="exact"), F.Erf()).init(jax.random.key(0), (4,))
