"""Numerically hard regimes: deep networks in both phases, degenerate inputs,
extreme weight scales, and ill-conditioned kernels in `predict`, in float32
and float64 (the tolerances are those stated in `docs/guarantees.md`)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import eqtangents as et

DEPTH = 128
UNIT = jnp.array([[1.0, 0.0, 0.0], [0.6, 0.8, 0.0], [0.0, 0.28, 0.96]]) * jnp.sqrt(3)


def _deep(activation, W_std, b_std, depth=DEPTH):
    block = et.Serial(et.Dense(8, W_std=W_std, b_std=b_std), activation)
    return et.Serial(et.Repeat(block, depth), et.Dense(1, W_std=W_std, b_std=b_std))


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_deep_relu_at_criticality_has_the_closed_form_ntk(dtype):
    """W_std^2 = 2, no bias: the variance stays |x|^2 / C = 1 and each of the
    depth + 1 Dense layers adds 2 to the NTK's diagonal."""
    k = _deep(et.Relu(), 2**0.5, None).kernel(UNIT.astype(dtype), None)
    tol = 1e-13 if dtype == jnp.float64 else 2e-5
    np.testing.assert_allclose(np.diag(k.nngp), 2.0, rtol=tol)
    np.testing.assert_allclose(np.diag(k.ntk), 2.0 * (DEPTH + 1), rtol=tol)


def test_deep_ordered_phase_converges_to_one_fixed_point_in_both_precisions():
    """Erf with small weights: every correlation goes to 1, the kernel to a
    constant matrix; float32 follows float64 to 1e-5 after 128 layers."""
    model = _deep(et.Erf(), 1.0, 0.3)
    k64 = model.kernel(UNIT, None)
    k32 = model.kernel(UNIT.astype(jnp.float32), None)
    for name in ("nngp", "ntk"):
        a64, a32 = np.asarray(getattr(k64, name)), np.asarray(getattr(k32, name))
        assert np.isfinite(a32).all()
        np.testing.assert_allclose(a64, a64[0, 0], rtol=1e-6)
        np.testing.assert_allclose(a32, a64, rtol=1e-5)


def test_deep_chaotic_phase_agrees_across_precisions_until_float32_overflows():
    """Erf with W_std = 2.5 is chaotic: correlations decay to a fixed point
    below 1 and the NTK grows as chi^L, chi = W^2 E[phi'(u)^2] > 1. After 128
    layers (NTK ~ 6e34) float32 matches float64 to 1e-5 relative to the
    largest entry; after 200 (~6e53) float32 overflows, which is an error,
    and float64 does not."""
    model = _deep(et.Erf(), 2.5, 0.0)
    k64 = model.kernel(UNIT, None)
    k32 = model.kernel(UNIT.astype(jnp.float32), None)
    correlation = k64.nngp[0, 1] / np.sqrt(k64.nngp[0, 0] * k64.nngp[1, 1])
    assert abs(correlation) < 1e-6  # decorrelated: the chaotic fixed point
    np.testing.assert_allclose(np.diag(k64.nngp), k64.nngp[0, 0], rtol=1e-12)
    for name in ("nngp", "ntk"):
        a32, a64 = getattr(k32, name), getattr(k64, name)
        assert np.max(np.abs(a32 - a64)) <= 1e-5 * np.max(np.abs(a64))
    deeper = _deep(et.Erf(), 2.5, 0.0, depth=200)
    assert np.isfinite(deeper.kernel(UNIT, None, "ntk")).all()
    with pytest.raises(ValueError, match="overflowed"):
        deeper.kernel(UNIT.astype(jnp.float32), None, "ntk")


def test_identical_inputs_in_a_chaotic_network_keep_their_variance():
    """rho = 1 is an unstable fixed point in the chaotic phase: without care,
    rounding would drive the kernel of an input with itself out of the
    Cauchy-Schwarz bound and the NTK to infinity within ~60 layers."""
    model = _deep(et.Erf(), 2.5, 0.0)
    k = model.kernel(UNIT, None)
    explicit = model.kernel(UNIT, UNIT)
    for name in ("nngp", "ntk"):
        np.testing.assert_allclose(
            np.diag(getattr(explicit, name)), np.diag(getattr(k, name)), rtol=1e-9
        )
    np.testing.assert_allclose(np.diag(k.nngp), k.cov1, rtol=1e-12)


def test_gelu_at_huge_variances_stays_finite():
    """Deep chaotic GELU: variances of 1e64, where (1 + v1)(1 + v2) - c12^2
    would cancel to zero if computed as written."""
    k = _deep(et.Gelu(), 2.5, 0.0).kernel(UNIT, None)
    assert np.isfinite(k.ntk).all() and k.nngp[0, 0] > 1e60
    correlation = k.nngp[0, 1] / k.nngp[0, 0]
    assert 0.9 < correlation < 1.0


ACTIVATIONS = [et.Relu(), et.Abs(), et.LeakyRelu(0.2), et.Erf(), et.Gelu(),
               et.Sign(), et.RectifiedMonomial(2), et.Sin(1.0, 2.0, 0.1)]  # fmt: skip


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
@pytest.mark.parametrize("activation", ACTIVATIONS, ids=lambda a: type(a).__name__)
def test_identical_opposite_zero_and_nearly_parallel_inputs(activation, dtype):
    """Correlations of exactly 1 and -1, zero variance and 1 - 1e-14: kernels
    and their gradients with respect to the inputs are finite."""
    x = jnp.array([[1.0, 2.0], [1.0, 2.0], [-1.0, -2.0], [0.0, 0.0],
                   [1.0, 2.0 + 1e-7]], dtype)  # fmt: skip
    model = et.Serial(et.Dense(8), activation, et.Dense(1))
    k = model.kernel(x, None)
    for name in ("nngp", "ntk"):
        mat = np.asarray(getattr(k, name))
        assert np.isfinite(mat).all()
        np.testing.assert_allclose(mat[0], mat[1], rtol=1e-6)  # identical rows
        np.testing.assert_allclose(mat[4], mat[0], rtol=1e-3, atol=1e-6)
    gradient = jax.grad(lambda a: model.kernel(a, None, "ntk").sum())(x)
    assert np.isfinite(gradient).all()


def test_relu_of_opposite_inputs_is_exactly_uncorrelated():
    x = jnp.array([[1.0, 2.0], [-1.0, -2.0]])
    k = et.Serial(et.Dense(8), et.Relu()).kernel(x, None)
    assert k.nngp[0, 1] == 0.0 and k.ntk[0, 1] == 0.0


@pytest.mark.parametrize("dtype, tol", [(jnp.float64, 1e-12), (jnp.float32, 2e-6)])
@pytest.mark.parametrize("scale", [1e-3, 1e2])
def test_extreme_weight_scales_follow_positive_homogeneity(scale, dtype, tol):
    """Without biases a ReLU network of L Dense layers is homogeneous: scaling
    every W_std by c scales both kernels by c^(2L) exactly."""

    def model(w):
        return et.Serial(et.Dense(8, W_std=w), et.Relu(), et.Dense(8, W_std=w),
                         et.Relu(), et.Dense(1, W_std=w))  # fmt: skip

    x = UNIT.astype(dtype)
    base, scaled = model(1.0).kernel(x, None), model(scale).kernel(x, None)
    for name in ("nngp", "ntk"):
        np.testing.assert_allclose(
            getattr(scaled, name), scale**6 * getattr(base, name), rtol=tol
        )


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_singular_kernels_in_predict_need_the_stated_diag_reg(dtype):
    """Duplicated training inputs make the kernel singular: predict refuses it
    and names diag_reg; the bound the message states, 10 eps N, suffices."""
    x = jnp.concatenate([UNIT, UNIT]).astype(dtype)
    y = jnp.arange(6.0, dtype=dtype)[:, None]
    k = et.Serial(et.Dense(8), et.Relu(), et.Dense(1)).kernel(x, None, "ntk")
    with pytest.raises(Exception, match=r"singular.*diag_reg > 10 eps"):
        mse = et.predict.gradient_descent_mse(k, y)
        jax.block_until_ready(mse(None, 0.0, 0.0, k[:2]))
    reg = 10 * jnp.finfo(dtype).eps * len(x)
    fx = et.predict.gradient_descent_mse(k, y, diag_reg=reg)(None, 0.0, 0.0, k[:2])
    assert all(np.isfinite(f).all() for f in fx)
