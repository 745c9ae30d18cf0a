"""Properties of `et.predict` checked against independent computations.

The ODE solver against the closed form and against a matrix exponential, large
times against infinite time, iterative against direct solves, gradients against
finite differences, float32 against float64, N-dimensional outputs against the
same problem flattened, and the closed form against a finite linearized
network trained by small-step gradient descent.
"""

from __future__ import annotations

import collections

import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
import numpy as np
import pytest
import scipy.linalg

import eqtangents as et

from ._reference import PREDICT

P = et.predict

if not (PREDICT / "predict.npz").exists():  # pragma: no cover
    pytest.skip("reference kernels not found", allow_module_level=True)

REF = dict(np.load(PREDICT / "predict.npz"))
K, KTD, KTT = REF["ntk_train_train"], REF["ntk_test_train"], REF["ntk_test_test"]
G, GTD, GTT = REF["nngp_train_train"], REF["nngp_test_train"], REF["nngp_test_test"]
Y, F0, G0 = REF["y_train"], REF["fx_train_0"], REF["fx_test_0"]
Kernels = collections.namedtuple("Kernels", "nngp ntk")
T3 = np.array([0.5, 2.0, 7.0])  # the ODE tests share this length: one compile


def mse_loss(fx, y):
    return 0.5 * jnp.sum((fx - y) ** 2) / y.size


def stored_kernel_fn(x1, x2, get):
    """The stored kernels, looked up by which stored inputs were passed."""

    def which(x):
        return "train" if np.array_equal(np.asarray(x), REF["x_train"]) else "test"

    pair = f"{which(x1)}_{which(x1) if x2 is None else which(x2)}"
    if isinstance(get, str):
        return jnp.asarray(REF[f"{get}_{pair}"])
    return Kernels(*(jnp.asarray(REF[f"{g}_{pair}"]) for g in ("nngp", "ntk")))


def close(a, b, rtol, atol=0.0):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=rtol, atol=atol)


# ------------------------------------------------------------------- the ODE


def test_ode_matches_closed_form_on_mse():
    ode = P.gradient_descent(mse_loss, K, Y, learning_rate=0.7)
    closed = P.gradient_descent_mse(K, Y, learning_rate=0.7)
    train_ode, test_ode = ode(T3, F0, G0, KTD)
    train_cf, test_cf = closed(T3, F0, G0, KTD)
    close(train_ode, train_cf, rtol=1e-9, atol=1e-11)
    close(test_ode, test_cf, rtol=1e-9, atol=1e-11)
    # Times in any order come back in that order.
    train_perm = ode(T3[::-1], F0, G0, KTD)[0]
    close(train_perm, train_cf[::-1], rtol=1e-9, atol=1e-11)


def _momentum_reference(lr, mu, t):
    """Heavy-ball MSE dynamics solved by a matrix exponential (scipy)."""
    p, m, n = K.shape[0], KTD.shape[0], Y.size
    b = np.concatenate([K, KTD]) / n  # (p + m, p), acts on the train outputs
    friction = (mu - 1) / np.sqrt(lr)
    size = p + m
    a = np.zeros((2 * size + 1, 2 * size + 1))
    a[:size, size : 2 * size] = np.eye(size)
    a[size : 2 * size, :p] = -b
    a[size : 2 * size, size : 2 * size] = friction * np.eye(size)
    out_train, out_test = [], []
    for tau in np.sqrt(lr) * t:
        cols = []
        for c in range(Y.shape[1]):
            a[size : 2 * size, -1] = b @ Y[:, c]
            e = scipy.linalg.expm(a * tau)
            z0 = np.concatenate([F0[:, c], G0[:, c], np.zeros(size), [1.0]])
            cols.append(e @ z0)
        z = np.stack(cols, axis=-1)
        out_train.append(z[:p])
        out_test.append(z[p:size])
    return np.stack(out_train), np.stack(out_test)


def test_momentum_ode_matches_matrix_exponential_and_resumes():
    lr, mu = 0.5, 0.9
    ode = P.gradient_descent(mse_loss, K, Y, learning_rate=lr, momentum=mu)
    train, test = ode(T3, F0, G0, KTD)
    ref_train, ref_test = _momentum_reference(lr, mu, T3)
    close(train, ref_train, rtol=1e-8, atol=1e-9)
    close(test, ref_test, rtol=1e-8, atol=1e-9)

    # Resuming from the state at t = 0.5 reaches the same states at 2 and 7.
    states = ode(T3, P.ODEState(F0, G0), None, KTD)
    assert isinstance(states, P.ODEState) and states.qx_train.shape == (3,) + Y.shape
    close(states.fx_test, test, rtol=1e-12)
    middle = jax.tree_util.tree_map(lambda x: x[0], states)
    resumed = ode(T3 - T3[0], middle, None, KTD)
    for field in ("fx_train", "fx_test", "qx_train", "qx_test"):
        close(getattr(resumed, field), getattr(states, field), rtol=1e-8, atol=1e-9)


# --------------------------------------------------------- closed-form limits


@pytest.mark.parametrize("diag_reg", [0.0, 0.01])
def test_large_t_matches_infinity(diag_reg):
    mse = P.gradient_descent_mse(K, Y, learning_rate=1.0, diag_reg=diag_reg)
    at_inf = mse(None, F0, G0, KTD)
    for t in (1e6, np.array([np.inf])):
        train, test = mse(t, F0, G0, KTD)
        close(np.squeeze(train), at_inf[0], rtol=1e-10, atol=1e-12)
        close(np.squeeze(test), at_inf[1], rtol=1e-10, atol=1e-12)

    ens = P.gradient_descent_mse_ensemble(
        stored_kernel_fn, REF["x_train"], Y, diag_reg=diag_reg
    )
    for x_test in (REF["x_test"], None):
        late = ens(1e7, x_test, None, compute_cov=True)
        inf = ens(None, x_test, None, compute_cov=True)
        for g in ("nngp", "ntk"):
            scale = np.max(np.abs(getattr(inf, g).covariance)) + 1.0
            close(getattr(late, g).mean, getattr(inf, g).mean, rtol=1e-9, atol=1e-12)
            close(
                getattr(late, g).covariance, getattr(inf, g).covariance, 0, 1e-9 * scale
            )


def test_time_arrays_of_any_shape():
    mse = P.gradient_descent_mse(K, Y, learning_rate=0.3, diag_reg=1e-3)
    t = np.array([[0.0], [2.0], [7.0]])
    train, test = mse(t, F0, G0, KTD)
    assert train.shape == (3, 1) + Y.shape and test.shape == (3, 1) + G0.shape
    one_train, one_test = mse(2.0, F0, G0, KTD)
    close(train[1, 0], one_train, rtol=1e-13)
    close(test[1, 0], one_test, rtol=1e-13)
    close(train[0, 0], F0, rtol=1e-13)  # t = 0 is the initial state
    ens = P.gradient_descent_mse_ensemble(stored_kernel_fn, REF["x_train"], Y)
    mean, cov = ens(t, REF["x_test"], "ntk", compute_cov=True)
    assert mean.shape == (3, 1, 9, 3) and cov.shape == (3, 1, 9, 9)
    close(cov[0, 0], GTT, rtol=1e-12, atol=1e-12)  # prior covariance at t = 0


def test_ensemble_agrees_with_mse_and_gp_inference():
    ens = P.gradient_descent_mse_ensemble(
        stored_kernel_fn, REF["x_train"], Y, learning_rate=0.5, diag_reg=1e-3
    )
    t = T3
    zero_test = np.zeros_like(G0)
    for g, (kdd, ktd) in {"nngp": (G, GTD), "ntk": (K, KTD)}.items():
        mse = P.gradient_descent_mse(kdd, Y, learning_rate=0.5, diag_reg=1e-3)
        close(
            ens(t, REF["x_test"], g),
            mse(t, None, zero_test, ktd),
            rtol=1e-11,
            atol=1e-13,
        )
        close(ens(t, None, g), mse(t, np.zeros_like(Y)), rtol=1e-11, atol=1e-13)
    gp = P.gp_inference(Kernels(G, K), Y, diag_reg=1e-3)
    got = ens(None, REF["x_test"], ("ntk", "nngp"), compute_cov=True)
    want = gp(("ntk", "nngp"), Kernels(GTD, KTD), Kernels(GTT, KTT))
    for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)):
        close(a, b, rtol=1e-9, atol=1e-12)


# ------------------------------------------------------------------- solvers


def test_iterative_and_cholesky_match_eigh():
    args = (None, F0, G0, KTD)
    want = P.gradient_descent_mse(K, Y, diag_reg=1e-4)(*args)
    for solver in ("cholesky", lx.CG(rtol=1e-12, atol=1e-12)):
        got = P.gradient_descent_mse(K, Y, diag_reg=1e-4, solver=solver)(*args)
        close(got[1], want[1], rtol=1e-9, atol=1e-12)
    k_dd, k_td, k_tt = Kernels(G, K), Kernels(GTD, KTD), Kernels(GTT, KTT)
    want = P.gp_inference(k_dd, Y, 1e-4)(None, k_td, k_tt)
    got = P.gp_inference(k_dd, Y, 1e-4, solver="cg")(None, k_td, k_tt)
    for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)):
        close(a, b, rtol=1e-7, atol=1e-10)


# ----------------------------------------------------------------- gradients


CG = lx.CG(rtol=1e-13, atol=1e-13)  # finite differences need accurate solves


@pytest.mark.parametrize(
    "solver,t", [("eigh", None), ("eigh", 3.0), ("cholesky", None), (CG, None)]
)
@pytest.mark.parametrize("diag_reg", [0.0, 0.05])
def test_gradient_wrt_diag_reg_matches_finite_differences(solver, t, diag_reg):
    target = np.sin(np.arange(G0.size)).reshape(G0.shape)

    def test_loss(reg):
        mse = P.gradient_descent_mse(K, Y, diag_reg=reg, solver=solver)
        return jnp.sum((mse(t, F0, G0, KTD)[1] - target) ** 2)

    grad = jax.grad(test_loss)(diag_reg)
    h = 1e-6
    fd = (test_loss(diag_reg + h) - test_loss(diag_reg - h)) / (2 * h)
    assert np.isfinite(grad) and abs(grad) > 1e-3
    close(grad, fd, rtol=1e-5)


def test_gradient_wrt_kernel_hyperparameters():
    rng = np.random.default_rng(0)
    x, xt = rng.normal(size=(12, 4)), rng.normal(size=(5, 4))
    y = jnp.sin(x[:, :1])
    yt = jnp.sin(xt[:, :1])

    def make(w_std):
        return et.Serial(
            et.Dense(8, W_std=w_std, b_std=0.1),
            et.Relu(),
            et.Dense(1, W_std=1.2, b_std=0.1),
        )

    @eqx.filter_jit
    def loss(model):
        ens = P.gradient_descent_mse_ensemble(model.kernel, x, y, diag_reg=1e-3)
        mean, cov = ens(2.0, xt, "ntk", compute_cov=True)
        return jnp.sum((mean - yt) ** 2) + jnp.trace(cov)

    grads = eqx.filter_jit(eqx.filter_grad(loss))(make(jnp.asarray(1.4)))
    grad = grads.layers[0].W_std
    h = 1e-6
    fd = (loss(make(jnp.asarray(1.4 + h))) - loss(make(jnp.asarray(1.4 - h)))) / (2 * h)
    assert np.isfinite(grad)
    close(grad, fd, rtol=1e-5)


# ---------------------------------------------------------- transformations


def test_jit_vmap_and_reusable_factorizations():
    t = T3

    @jax.jit
    def run(reg):
        return P.gradient_descent_mse(K, Y, diag_reg=reg)(t, F0, G0, KTD)

    eager = P.gradient_descent_mse(K, Y, diag_reg=0.01)(t, F0, G0, KTD)
    for a, b in zip(run(0.01), eager):
        close(a, b, rtol=1e-12)
    regs = jnp.array([0.0, 0.01, 0.1])
    batched = jax.vmap(run)(regs)
    close(batched[1][1], eager[1], rtol=1e-12)

    # A predictor is a pytree: factorize once, pass it into compiled code.
    predictor = P.gradient_descent_mse(K, Y, diag_reg=0.01)
    assert isinstance(predictor.factorization, P.EighFactorization)
    predict = eqx.filter_jit(lambda p, t: p(t, F0, G0, KTD))
    close(predict(predictor, t)[1], eager[1], rtol=1e-12)

    gp = P.gp_inference(Kernels(G, K), Y, 1e-3)
    posterior = eqx.filter_jit(lambda p: p(None, Kernels(GTD, KTD), Kernels(GTT, KTT)))
    for a, b in zip(
        jax.tree_util.tree_leaves(posterior(gp)),
        jax.tree_util.tree_leaves(gp(None, Kernels(GTD, KTD), Kernels(GTT, KTT))),
    ):
        close(a, b, rtol=1e-12)

    x = REF["x_train"][:, :4]
    model = et.Serial(et.Dense(8, W_std=1.3, b_std=0.1), et.Relu(), et.Dense(1))

    xt = REF["x_test"][:, :4]

    @eqx.filter_jit
    def ensemble(model, x, y, xt):
        predictor = P.gradient_descent_mse_ensemble(model.kernel, x, y, diag_reg=1e-3)
        return predictor(None, xt, ("nngp", "ntk"), True)

    got = ensemble(model, x, Y, xt)
    kernel = eqx.filter_jit(model.kernel)
    gp = P.gp_inference(kernel(x, None, ("nngp", "ntk")), Y, diag_reg=1e-3)
    want = gp(None, kernel(xt, x, ("nngp", "ntk")), kernel(xt, None, ("nngp", "ntk")))
    for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)):
        close(a, b, rtol=1e-9, atol=1e-12)
    assert float(jax.jit(P.max_learning_rate)(K)) == pytest.approx(float(REF["max_lr"]))


def test_float32():
    f32 = {name: np.asarray(v, np.float32) for name, v in REF.items()}
    t = T3.astype(np.float32)
    for solver in ("eigh",):
        mse = P.gradient_descent_mse(
            f32["ntk_train_train"], f32["y_train"], diag_reg=1e-3, solver=solver
        )
        _, test = mse(None, f32["fx_train_0"], f32["fx_test_0"], f32["ntk_test_train"])
        want = P.gradient_descent_mse(K, Y, diag_reg=1e-3)(None, F0, G0, KTD)[1]
        assert test.dtype == jnp.float32
        close(test, want, rtol=2e-4, atol=1e-5)
    mse = P.gradient_descent_mse(f32["ntk_train_train"], f32["y_train"])
    train, test = mse(t, f32["fx_train_0"], f32["fx_test_0"], f32["ntk_test_train"])
    want = P.gradient_descent_mse(K, Y)(t, F0, G0, KTD)
    assert train.dtype == test.dtype == jnp.float32
    close(train, want[0], rtol=1e-4, atol=1e-5)
    close(test, want[1], rtol=1e-4, atol=1e-5)

    ode = P.gradient_descent(mse_loss, f32["ntk_train_train"], f32["y_train"])
    train, test = ode(t, f32["fx_train_0"], f32["fx_test_0"], f32["ntk_test_train"])
    assert test.dtype == jnp.float32
    close(test, want[1], rtol=1e-3, atol=1e-4)

    gp = P.gp_inference(
        Kernels(f32["nngp_train_train"], f32["ntk_train_train"]), f32["y_train"], 1e-3
    )
    got = gp(
        "ntk",
        Kernels(f32["nngp_test_train"], f32["ntk_test_train"]),
        Kernels(f32["nngp_test_test"], f32["ntk_test_test"]),
    )
    want = P.gp_inference(Kernels(G, K), Y, 1e-3)(
        "ntk", Kernels(GTD, KTD), Kernels(GTT, KTT)
    )
    assert got.covariance.dtype == jnp.float32
    close(got.mean, want.mean, rtol=1e-3, atol=1e-4)
    close(got.covariance, want.covariance, rtol=1e-3, atol=1e-4)
    assert P.max_learning_rate(f32["ntk_train_train"]).dtype == jnp.float32
