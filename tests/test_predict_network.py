"""`et.predict` against finite networks, flattened problems and discrete dynamics."""

from __future__ import annotations

import collections

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg

import eqtangents as et

from ._reference import PREDICT

P = et.predict
Kernels = collections.namedtuple("Kernels", "nngp ntk")


def close(a, b, rtol, atol=0.0):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=rtol, atol=atol)


# ------------------------------------------- a finite linearized network


MODEL = et.Serial(
    et.Dense(64, W_std=1.5, b_std=0.1), et.Relu(), et.Dense(2, W_std=1.5, b_std=0.1)
)


def _apply(params, static, inputs):
    return jax.vmap(eqx.combine(params, static))(inputs)


@eqx.filter_jit
def _network_problem(x, xt):
    """Targets, initial parameters, outputs and the empirical NTK at initialization."""
    y = jnp.stack([jnp.sin(2 * x[:, 0]), jnp.cos(x[:, 1] * x[:, 2])], axis=-1)
    net = MODEL.init(jax.random.PRNGKey(0), (3,))
    params, static = eqx.partition(net, eqx.is_inexact_array)

    def jac(inputs):  # leaves (N, K, P)
        j = jax.jacobian(_apply)(params, static, inputs)
        return [a.reshape(a.shape[:2] + (-1,)) for a in jax.tree_util.tree_leaves(j)]

    def ntk(x1, x2):  # full output covariance (N1, N2, K, K): trace_axes=()
        pairs = zip(jac(x1), jac(x2))
        return sum(jnp.einsum("akP,blP->abkl", a, b) for a, b in pairs)

    f0, g0 = _apply(params, static, x), _apply(params, static, xt)
    return x, xt, y, params, static, f0, g0, ntk(x, x), ntk(xt, x)


@eqx.filter_jit
def _train_linearized(params_0, static, x, xt, y, eta, steps):
    """`steps` of gradient descent with step `eta` on the linearized network."""

    def f_lin(p, inputs):
        delta = jax.tree_util.tree_map(jnp.subtract, p, params_0)
        out, tangent = jax.jvp(
            lambda q: _apply(q, static, inputs), (params_0,), (delta,)
        )
        return out + tangent

    def loss(p):
        return 0.5 * jnp.sum((f_lin(p, x) - y) ** 2) / y.size

    def step(_, p):
        g = jax.grad(loss)(p)
        return jax.tree_util.tree_map(lambda a, b: a - eta * b, p, g)

    p = jax.lax.fori_loop(0, steps, step, params_0)
    return f_lin(p, x), f_lin(p, xt)


def test_closed_form_matches_linearized_network_trained_by_gradient_descent():
    rng = np.random.default_rng(0)
    x, xt, y, p0, static, f0, g0, k_dd, k_td = _network_problem(
        rng.normal(size=(8, 3)), rng.normal(size=(4, 3))
    )
    n = y.size
    eta_max = float(P.max_learning_rate(k_dd, n))
    tau = 15.0 * eta_max  # total "time" learning_rate * steps
    errors = []
    for steps in (300, 600):
        eta = tau / steps
        train_gd, test_gd = _train_linearized(
            p0, static, x, xt, y, jnp.asarray(eta), jnp.asarray(steps)
        )
        mse = P.gradient_descent_mse(k_dd, y, learning_rate=eta, trace_axes=())
        train_cf, test_cf = mse(float(steps), f0, g0, k_td)
        moved = np.max(np.abs(np.asarray(test_cf - g0)))
        errors.append(np.max(np.abs(np.asarray(test_gd - test_cf))) / moved)
        assert np.max(np.abs(np.asarray(train_gd - train_cf))) / moved < 1e-3
    # Gradient descent is the explicit Euler method of the gradient flow:
    # its error is first order in the step size and halves with it.
    assert errors[1] < 3e-4
    assert 1.8 < errors[0] / errors[1] < 2.2


# ------------------------------------------------------- N-dimensional outputs


def _nd_problem():
    rng = np.random.default_rng(0)
    n, m, h, c, width = 6, 4, 3, 2, 40
    phi, phit = rng.normal(size=(n, h, width)), rng.normal(size=(m, h, width))

    def kern(a, b):  # (A, B, H, H'), interleaved
        return np.einsum("nhf,mgf->nmhg", a, b) / width

    nngp = {"dd": kern(phi, phi), "td": kern(phit, phi), "tt": kern(phit, phit)}
    ntk = {k: 2 * v + 0.3 for k, v in nngp.items()}
    y = rng.normal(size=(n, h, c))
    f0, g0 = rng.normal(size=(n, h, c)), rng.normal(size=(m, h, c))
    return nngp, ntk, y, f0, g0


def _flat(k):  # (A, B, H, H') -> (A H, B H)
    a, b, h, _ = k.shape
    return k.transpose(0, 2, 1, 3).reshape(a * h, b * h)


def _unflat_cov(cov, m, h):  # (M H, M H) -> (M, M, H, H)
    return cov.reshape(m, h, m, h).transpose(0, 2, 1, 3)


def _regularized(k, rel):
    return k + rel * np.trace(k) / len(k) * np.eye(len(k))


def test_nd_outputs_match_dense_matrix_formulas():
    """Interleaved kernels `(N, N, H, H)` with outputs `(N, H, C)` against the
    flattened problem solved with dense `scipy` matrix functions."""
    nngp, ntk, y, f0, g0 = _nd_problem()
    n, h, c = y.shape
    m = g0.shape[0]
    size, lr, rel, t = y.size, 0.5, 1e-3, 3.0
    k, kt = _flat(ntk["dd"]), _flat(ntk["td"])
    a = _regularized(k, rel)
    decay = scipy.linalg.expm(-a * lr * t / size) - np.eye(len(a))
    resid = (f0 - y).reshape(n * h, c)
    want_train = f0.reshape(n * h, c) + decay @ resid
    want_test = g0.reshape(m * h, c) + kt @ np.linalg.solve(a, decay @ resid)
    want_test_inf = g0.reshape(m * h, c) - kt @ np.linalg.solve(a, resid)

    mse = P.gradient_descent_mse(ntk["dd"], y, lr, rel)
    train, test = mse(np.array([t]), f0, g0, ntk["td"])
    close(train[0], want_train.reshape(n, h, c), rtol=1e-10, atol=1e-12)
    close(test[0], want_test.reshape(m, h, c), rtol=1e-10, atol=1e-12)
    close(mse(None, f0, g0, ntk["td"])[1], want_test_inf.reshape(m, h, c), 1e-10, 1e-12)
    # Channels first, `(N, C, H)`, traced over axis 1.
    mse_cf = P.gradient_descent_mse(
        ntk["dd"], y.transpose(0, 2, 1), lr, rel, trace_axes=(1,)
    )
    test_cf = mse_cf(t, f0.transpose(0, 2, 1), g0.transpose(0, 2, 1), ntk["td"])[1]
    close(test_cf, want_test.reshape(m, h, c).transpose(0, 2, 1), 1e-10, 1e-12)

    # GP posteriors: NNGP, NTK (ensemble at infinite time) and NTKGP.
    g_dd, g_td, g_tt = (_flat(nngp[s]) for s in ("dd", "td", "tt"))
    t_tt = _flat(ntk["tt"])
    gd_inv = np.linalg.inv(_regularized(g_dd, rel))
    a_inv = np.linalg.inv(a)
    want = {
        "nngp": (g_td @ gd_inv @ y.reshape(n * h, c), g_tt - g_td @ gd_inv @ g_td.T),
        "ntkgp": (kt @ a_inv @ y.reshape(n * h, c), t_tt - kt @ a_inv @ kt.T),
    }
    cross = kt @ a_inv @ g_td.T
    ntk_cov = g_tt + kt @ a_inv @ g_dd @ a_inv @ kt.T - cross - cross.T
    want["ntk"] = (want["ntkgp"][0], ntk_cov)
    k_all = {s: Kernels(nngp[s], ntk[s]) for s in ("dd", "td", "tt")}
    got = P.gp_inference(k_all["dd"], y, rel)(tuple(want), k_all["td"], k_all["tt"])
    for g, (mean, cov) in want.items():
        close(getattr(got, g).mean, mean.reshape(m, h, c), rtol=1e-9, atol=1e-12)
        close(getattr(got, g).covariance, _unflat_cov(cov, m, h), 1e-9, 1e-12)

    # The ensemble's NTK covariance at finite time, with h_t = A^{-1}(I - e^{-A t}).
    def kernel_fn(x1, x2, get):  # x_train is [1.0], x_test is [0.0]
        pair = "dd" if float(x1[0]) == 1.0 else ("tt" if x2 is None else "td")
        return getattr(k_all[pair], get) if isinstance(get, str) else k_all[pair]

    ens = P.gradient_descent_mse_ensemble(kernel_fn, np.ones(1), y, lr, rel)
    mean, cov = ens(np.array([t]), np.zeros(1), "ntk", compute_cov=True)
    h_t = -np.linalg.solve(a, decay)
    cross = kt @ h_t @ g_td.T
    want_cov = g_tt + kt @ h_t @ g_dd @ h_t.T @ kt.T - cross - cross.T
    close(mean[0], (kt @ h_t @ y.reshape(n * h, c)).reshape(m, h, c), 1e-9, 1e-12)
    close(cov[0], _unflat_cov(want_cov, m, h), rtol=1e-9, atol=1e-12)


# -------------------------------------------------------- the learning rate


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_max_learning_rate_is_the_edge_of_stability(momentum):
    ref = np.load(PREDICT / "predict.npz")
    k, y = ref["ntk_train_train"], ref["y_train"]
    n = y.size
    eta_max = float(P.max_learning_rate(k, n, momentum))

    def final_residual(eta, steps=6000):
        r, v = -y.copy(), np.zeros_like(y)
        for _ in range(steps):  # heavy-ball gradient descent on the residual
            v = momentum * v + k @ r / n
            r = r - eta * v
            if np.max(np.abs(r)) > 1e6:
                break
        return np.max(np.abs(r))

    assert final_residual(0.97 * eta_max) < 1e-6
    assert final_residual(1.03 * eta_max) > 1e3
