"""Bad input to `et.predict` gets clear errors, never silent NaNs."""

from __future__ import annotations

import collections

import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
import numpy as np
import pytest

import eqtangents as et

from ._reference import PREDICT

P = et.predict
REF = dict(np.load(PREDICT / "predict.npz"))
K, KTD, Y, F0, G0 = (
    REF[k]
    for k in ("ntk_train_train", "ntk_test_train", "y_train", "fx_train_0", "fx_test_0")
)
Kernels = collections.namedtuple("Kernels", "nngp ntk")

# A rank-3 PSD kernel on 25 points: singular without a regularizer.
_FEATURES = np.random.default_rng(0).normal(size=(25, 3))
SINGULAR = _FEATURES @ _FEATURES.T
SINGULAR_TD = np.random.default_rng(1).normal(size=(9, 3)) @ _FEATURES.T


def test_shape_mismatches():
    with pytest.raises(ValueError, match="needs a kernel over"):
        P.gradient_descent_mse(K[:24, :24], Y)
    with pytest.raises(ValueError, match="pairs of the non-traced output axes"):
        P.gradient_descent_mse(K, Y, trace_axes=())
    mse = P.gradient_descent_mse(K, Y)
    with pytest.raises(ValueError, match="training axes"):
        mse(1.0, F0, G0, KTD[:, :20])
    with pytest.raises(ValueError, match="does not broadcast"):
        mse(1.0, F0, G0[:, :2], KTD)
    with pytest.raises(ValueError, match="does not broadcast"):
        mse(1.0, F0[:5], G0, KTD)
    with pytest.raises(ValueError, match="need `k_test_train`"):
        mse(1.0, F0, G0)
    with pytest.raises(ValueError, match="nothing to predict"):
        mse(1.0, None, None, KTD)
    with pytest.raises(ValueError, match="batch axis 0"):
        P.gradient_descent_mse(K, Y[:, 0])
    with pytest.raises(ValueError, match="out of range"):
        P.gradient_descent_mse(K, Y, trace_axes=(3,))
    with pytest.raises(ValueError, match="must be >= 0"):
        mse(-1.0, F0)
    with pytest.raises(ValueError, match="needs a kernel over"):
        P.gp_inference(K[:24, :24], Y)
    with pytest.raises(ValueError, match="needs a kernel over"):
        P.gradient_descent(lambda f, y: jnp.sum(f), K[:24, :24], Y)


def test_non_symmetric_kernel():
    bad = K + 0.01 * np.triu(np.ones_like(K), 1)
    for make in (
        lambda k: P.gradient_descent_mse(k, Y),
        lambda k: P.gp_inference(k, Y),
        lambda k: P.gradient_descent(lambda f, y: jnp.sum(f), k, Y),
    ):
        with pytest.raises(ValueError, match="not symmetric"):
            make(bad)
    # Under jit the same check raises at run time.
    run = jax.jit(lambda k: P.gradient_descent_mse(k, Y)(None, F0, G0, KTD)[1])
    with pytest.raises(Exception, match="not symmetric"):
        jax.block_until_ready(run(bad))
    assert np.all(np.isfinite(run(K)))


@pytest.mark.parametrize("solver", ["eigh", "cholesky"])
def test_singular_kernel_without_regularizer_says_so(solver):
    with pytest.raises(Exception, match="singular"):
        mse = P.gradient_descent_mse(SINGULAR, Y, solver=solver)
        jax.block_until_ready(mse(None, F0, G0, SINGULAR_TD))
    run = jax.jit(
        lambda reg: P.gradient_descent_mse(SINGULAR, Y, diag_reg=reg, solver=solver)(
            None, F0, G0, SINGULAR_TD
        )[1]
    )
    with pytest.raises(Exception, match="singular"):
        jax.block_until_ready(run(0.0))
    assert np.all(np.isfinite(run(1e-3)))
    with pytest.raises(Exception, match="singular"):
        gp = P.gp_inference(SINGULAR, Y, solver=solver)
        jax.block_until_ready(gp("nngp", SINGULAR_TD))


def test_singular_kernel_at_finite_time_is_fine():
    mse = P.gradient_descent_mse(SINGULAR, Y)
    train, test = mse(np.array([0.5, 3.0]), F0, G0, SINGULAR_TD)
    assert np.all(np.isfinite(train)) and np.all(np.isfinite(test))
    with pytest.raises(Exception, match="singular"):
        jax.block_until_ready(mse(np.array([1.0, np.inf]), F0, G0, SINGULAR_TD))


def test_iterative_solver_reports_non_convergence():
    mse = P.gradient_descent_mse(
        K, Y, solver=lx.CG(rtol=1e-14, atol=1e-14, max_steps=2)
    )
    with pytest.raises(Exception, match="did not converge"):
        jax.block_until_ready(mse(None, F0, G0, KTD))


def test_nan_and_indefinite_kernels():
    with pytest.raises(Exception, match="NaN"):
        jax.block_until_ready(
            P.gradient_descent_mse(np.where(K > 2, np.nan, K), Y).factorization
        )
    indefinite = K - 2 * np.eye(25)  # smallest eigenvalue about -1.4
    with pytest.raises(Exception, match="positive semi-definite"):
        jax.block_until_ready(P.gradient_descent_mse(indefinite, Y).factorization)


def test_wrong_solver_and_usage():
    # (With run-time type checking on, the annotation rejects it first.)
    with pytest.raises((ValueError, TypeError), match="solver"):
        P.gradient_descent_mse(K, Y, solver="lu")
    with pytest.raises(ValueError, match="solver='eigh'"):
        P.gradient_descent_mse(K, Y, solver="cholesky")(1.0, F0)
    with pytest.raises(ValueError, match="solver='eigh'"):
        P.gradient_descent_mse(K, Y, solver="cg")(np.array([1.0]), F0)
    ode = P.gradient_descent(lambda f, y: jnp.sum((f - y) ** 2), K, Y)
    with pytest.raises(ValueError, match="t=None"):
        ode(None, F0)
    with pytest.raises(ValueError, match="momentum"):
        ode(1.0, P.ODEState(F0, None, F0, None))
    with pytest.raises(ValueError, match="part of the `ODEState`"):
        ode(1.0, P.ODEState(F0), G0, KTD)


def test_get_errors():
    gp = P.gp_inference(Kernels(REF["nngp_train_train"], K), Y)
    with pytest.raises(ValueError, match="unknown `get`"):
        gp("nngpp", Kernels(REF["nngp_test_train"], KTD))
    with pytest.raises(ValueError, match="twice"):
        gp(("ntk", "ntk"), Kernels(REF["nngp_test_train"], KTD))
    with pytest.raises(ValueError, match="needs the NNGP kernels"):
        P.gp_inference(K, Y)("ntk", KTD, REF["ntk_test_test"])
    with pytest.raises(ValueError, match="holds no 'ntk'"):
        P.gp_inference(Kernels(REF["nngp_train_train"], None), Y)("ntk", KTD)

    def kernel_fn(x1, x2, get):
        return jnp.asarray(REF["nngp_train_train"])

    ens = P.gradient_descent_mse_ensemble(kernel_fn, REF["x_train"], Y, get="nngp")
    with pytest.raises(ValueError, match="built without 'ntk'"):
        ens(None, None, "ntk")
    with pytest.raises(ValueError, match="unknown `get`"):
        ens(None, None, "ntkgp")


def test_errors_under_jit_do_not_leak_nans():
    """A singular kernel inside a jitted, differentiated loss still raises."""

    def loss(reg):
        mse = P.gradient_descent_mse(SINGULAR, Y, diag_reg=reg, solver="cholesky")
        return jnp.sum(mse(None, F0, G0, SINGULAR_TD)[1] ** 2)

    with pytest.raises(Exception, match="singular"):
        jax.block_until_ready(eqx.filter_jit(jax.grad(loss))(0.0))
    assert np.isfinite(eqx.filter_jit(jax.grad(loss))(1e-2))
