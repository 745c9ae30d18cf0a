"""`et.features`: sketch primitives and the feature maps of ReLU networks."""

import functools

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg

import eqtangents as et

from ._features_checks import relative_error

F = et.features


def _unit_inputs(n=12, d=6, seed=0):
    x = jax.random.normal(jax.random.key(seed), (n, d))
    return x / jnp.linalg.norm(x, axis=1, keepdims=True)


@jax.jit
def _apply(sketch, x):
    return sketch(x)


@jax.jit
def _call(fmodel, f):
    return fmodel(f)


@eqx.filter_jit
def _init(fmodel, key, shape):
    return fmodel.init(key, shape)


@eqx.filter_jit
def _embed(fmodel, x):
    return fmodel(F.Features.from_inputs(x))


def _assert_unbiased(estimates, exact, n_se=4.0):
    estimates = np.asarray(estimates)
    mean = estimates.mean()
    se = estimates.std(ddof=1) / np.sqrt(len(estimates))
    assert abs(mean - exact) < n_se * se + 1e-12, (mean, exact, se)


# ---------------------------------------------------------------- sketches


@pytest.mark.parametrize("d", [1, 2, 8, 64])
def test_fwht_is_hadamard(d):
    x = jax.random.normal(jax.random.key(d), (3, 2, d))
    expected = x @ jnp.asarray(scipy.linalg.hadamard(d), x.dtype).T
    np.testing.assert_allclose(jax.jit(F.fwht)(x), expected, rtol=1e-12, atol=1e-12)


def test_fwht_needs_power_of_two():
    with pytest.raises(ValueError, match="power of two"):
        F.fwht(jnp.ones(6))


_KEYS = jax.random.split(jax.random.key(42), 4000)
_X = jax.random.normal(jax.random.key(1), (2, 20))


@pytest.mark.parametrize("sketch", [F.GaussianSketch, F.SRHT, F.CountSketch])
def test_linear_sketches_are_unbiased(sketch):
    x, y = _X

    @jax.jit
    @jax.vmap
    def estimate(key):
        s = sketch(20, 8, key=key)
        return s(x) @ s(y)

    _assert_unbiased(estimate(_KEYS), float(x @ y))


def test_linear_sketches_act_on_batches():
    s = F.SRHT(20, 8, key=jax.random.key(0))
    out = _apply(s, _X)
    assert out.shape == (2, 8)
    np.testing.assert_allclose(out[1], _apply(s, _X[1]), rtol=1e-12)


def test_srht_of_full_size_is_an_isometry():
    s = F.SRHT(16, 16, key=jax.random.key(0))
    x = jax.random.normal(jax.random.key(3), (16,))
    y = _apply(s, x)
    np.testing.assert_allclose(jnp.linalg.norm(y), jnp.linalg.norm(x), rtol=1e-12)


def test_tensor_srht_is_unbiased():
    k = jax.random.split(jax.random.key(5), 4)
    x, x2 = jax.random.normal(k[0], (2, 5))
    y, y2 = jax.random.normal(k[1], (2, 7))

    @jax.jit
    @jax.vmap
    def estimate(key):
        s = F.TensorSRHT(5, 7, 8, key=key)
        return s(x, y) @ s(x2, y2)

    _assert_unbiased(estimate(_KEYS), float((x @ x2) * (y @ y2)))


@pytest.mark.parametrize("degree", [1, 3, 4])
def test_poly_sketch_is_unbiased(degree):
    x, y = jax.random.normal(jax.random.key(7), (2, 6)) / 2

    @jax.jit
    @jax.vmap
    def estimate(key):
        s = F.PolySketch(6, 16, degree, key=key)
        return s(x) @ s(y)

    _assert_unbiased(estimate(_KEYS), float((x @ y) ** degree))


def test_sketch_checks_input_dimension():
    with pytest.raises(ValueError, match="in_dim=5"):
        F.GaussianSketch(4, 3, key=jax.random.key(0))(jnp.ones(5))


# ---------------------------------------------------------------- exact maps


def _network(par):
    return et.Serial(
        et.Dense(64, 1.5, 0.1, par),
        et.Relu(),
        et.Dense(32, 1.2, 0.2, par),
        et.Relu(),
        et.Dense(1, 0.9, 0.3, par),
    )


def _features(par, relu):
    return F.Serial(
        F.Dense(1.5, 0.1, par, out_features=64),
        relu(),
        F.Dense(1.2, 0.2, par, out_features=32),
        relu(),
        F.Dense(0.9, 0.3, par, out_features=1),
    )


@pytest.mark.parametrize("par", ["ntk", "standard"])
def test_exact_features_reproduce_kernel(par):
    x = jax.random.normal(jax.random.key(0), (10, 5))
    k = _network(par).kernel(x, None)
    fmodel = _features(par, lambda: F.Relu("exact"))
    fmodel = fmodel.init(jax.random.key(1), x.shape[1:])
    nngp, ntk = F.kernel(_embed(fmodel, x))
    scale = float(jnp.abs(k.ntk).max())
    np.testing.assert_allclose(nngp, k.nngp, rtol=0, atol=1e-8 * scale)
    np.testing.assert_allclose(ntk, k.ntk, rtol=0, atol=1e-8 * scale)
    assert float(jnp.abs(nngp - k.nngp).max()) < 1e-8


def test_dense_features_are_exact_without_relu():
    x = jax.random.normal(jax.random.key(0), (7, 4))
    k = et.Serial(et.Dense(8, 1.3, 0.4), et.Dense(1, 0.7, 0.2)).kernel(x, None)
    fmodel = F.Serial(F.Dense(1.3, 0.4), F.Dense(0.7, 0.2))
    f = fmodel.init(jax.random.key(0), (4,))(F.Features.from_inputs(x))
    assert f.shape == F.FeatureShape(6, 11, None)
    np.testing.assert_allclose(F.kernel(f, get="nngp"), k.nngp, atol=1e-12)
    np.testing.assert_allclose(F.kernel(f, get="ntk"), k.ntk, atol=1e-12)


# ---------------------------------------------------------------- random features


_X_UNIT = _unit_inputs(16, 6)
_EXACT = _network("ntk").kernel(_X_UNIT, None)


def _relu(m):
    return lambda: F.Relu("random_features", nngp_dim=m, step_dim=m, sketch_dim=m)


def _random_kernels(key, m):
    fmodel = _init(_features("ntk", _relu(m)), key, _X_UNIT.shape[1:])
    return tuple(F.kernel(_embed(fmodel, _X_UNIT)))


def _errors(m, seeds):
    kernels = [_random_kernels(jax.random.key(s), m) for s in range(seeds)]
    nngp = jnp.stack([k[0] for k in kernels])
    ntk = jnp.stack([k[1] for k in kernels])
    single = (
        np.mean([relative_error(a, _EXACT.nngp) for a in nngp]),
        np.mean([relative_error(a, _EXACT.ntk) for a in ntk]),
    )
    averaged = (
        relative_error(nngp.mean(0), _EXACT.nngp),
        relative_error(ntk.mean(0), _EXACT.ntk),
    )
    return single, averaged


def test_random_feature_error_falls_with_dimension():
    small, _ = _errors(256, 8)
    large, _ = _errors(4096, 2)
    assert large[0] < small[0] / 2.5, (small, large)
    assert large[1] < small[1] / 2.5, (small, large)
    assert large[0] < 0.05 and large[1] < 0.08, large


def test_random_features_average_to_kernel():
    single, averaged = _errors(1024, 12)
    assert averaged[0] < 0.6 * single[0] and averaged[1] < 0.6 * single[1]
    assert averaged[0] < 0.03 and averaged[1] < 0.04, averaged


def test_explicit_tensor_product_matches_in_expectation():
    relu = functools.partial(
        F.Relu, "random_features", nngp_dim=512, step_dim=64, sketch_dim=None
    )
    fmodel = _init(_features("ntk", relu), jax.random.key(0), (6,))
    f = _embed(fmodel, _X_UNIT)
    assert f.ntk_feat.shape[1] == fmodel.output_shape((6,)).ntk
    assert relative_error(F.kernel(f, get="ntk"), _EXACT.ntk) < 0.2


def test_random_features_standard_parameterization():
    x = _unit_inputs(8, 5)
    k = _network("standard").kernel(x, None)
    fmodel = _init(_features("standard", _relu(1024)), jax.random.key(3), (5,))
    nngp, ntk = F.kernel(_embed(fmodel, x))
    assert relative_error(nngp, k.nngp) < 0.15 and relative_error(ntk, k.ntk) < 0.15


def test_train_and_test_share_one_sketch():
    fmodel = _init(_features("ntk", _relu(256)), jax.random.key(0), (6,))
    train = _embed(fmodel, _X_UNIT)
    test = _embed(fmodel, _X_UNIT[::-1])
    np.testing.assert_allclose(test.ntk_feat, train.ntk_feat[::-1], rtol=1e-10)
    np.testing.assert_allclose(test.nngp_feat, train.nngp_feat[::-1], rtol=1e-10)
    cross = F.kernel(test, train, get="ntk")
    np.testing.assert_allclose(cross, F.kernel(train, get="ntk")[::-1], rtol=1e-10)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_jit_and_dtypes(dtype):
    fmodel = _features("ntk", _relu(32)).init(jax.random.key(0), (6,))
    f_in = F.Features.from_inputs(_X_UNIT.astype(dtype))
    out = _call(fmodel, f_in)
    reference = _call(fmodel, F.Features.from_inputs(_X_UNIT))
    assert out.nngp_feat.dtype == dtype and out.ntk_feat.dtype == dtype
    tol = 1e-4 if dtype == jnp.float32 else 1e-10
    np.testing.assert_allclose(out.ntk_feat, reference.ntk_feat, rtol=tol, atol=tol)
    exact = _features("ntk", lambda: F.Relu("exact")).init(jax.random.key(0), (6,))
    nngp = F.kernel(_call(exact, f_in), get="nngp")
    assert nngp.dtype == dtype
    np.testing.assert_allclose(nngp, _EXACT.nngp, rtol=0, atol=100 * tol)


# ---------------------------------------------------------------- errors


def test_errors():
    f = F.Features.from_inputs(_X_UNIT)
    with pytest.raises(ValueError, match="init"):
        F.Relu()(f)
    with pytest.raises(ValueError, match="out_features"):
        F.Serial(F.Dense(), F.Relu(), F.Dense(parameterization="standard")).init(
            jax.random.key(0), (6,)
        )
    with pytest.raises(ValueError, match="exact"):
        F.Serial(F.Relu("exact"), F.Relu()).init(jax.random.key(0), (6,))
    with pytest.raises((ValueError, TypeError), match="method"):
        F.Relu("nystrom")
    with pytest.raises((ValueError, TypeError)):
        F.Serial(et.Dense(3))
