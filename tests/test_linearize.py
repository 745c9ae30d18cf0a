"""Linearized and Taylor-expanded modules: exact identities, and gradient descent
against the closed form of the empirical NTK."""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import scipy.linalg

import eqtangents as et

FAST = {"xla_backend_optimization_level": 0}


def drawn(make, seed=0):
    """`make()` with N(0, 1) weights drawn by numpy (nothing compiles)."""
    rng = np.random.default_rng(seed)
    return jax.tree.map(
        lambda s: (
            jnp.asarray(rng.normal(size=s.shape), s.dtype)
            if isinstance(s, jax.ShapeDtypeStruct)
            else s
        ),
        eqx.filter_eval_shape(make),
    )


def net():
    return drawn(
        lambda: et.Serial(
            et.Dense(24, W_std=1.5, b_std=0.1),
            et.Relu(),
            et.Dense(3, b_std=0.1),
        ).init(jax.random.PRNGKey(0), (4,))
    )


def data(n=6, seed=1):
    rng = np.random.default_rng(seed)
    return jnp.asarray(rng.normal(size=(n, 4))), jnp.asarray(rng.normal(size=(n, 3)))


def test_gradient_descent_follows_the_empirical_ntk():
    r"""SGD on the squared loss of the linearized network:
    $f_t - y = (1 - \eta\Theta)^t (f_0 - y) \approx e^{-\eta t \Theta}(f_0 - y)$."""
    model = net()
    x, y = data()
    ntk = eqx.filter_jit(lambda m: et.empirical_ntk(m, x, None, trace_axes=()))
    theta = np.asarray(ntk(model))  # (6, 6, 3, 3)
    theta = np.transpose(theta, (0, 2, 1, 3)).reshape(18, 18)
    eta = 2e-4 / float(np.linalg.eigvalsh(theta)[-1])
    steps = 500
    lin = et.linearize(model)
    optimizer = optax.sgd(eta)

    def loss(m):
        return 0.5 * jnp.sum((jax.vmap(m)(x) - y) ** 2)

    @eqx.filter_jit
    def train(lin):
        state = optimizer.init(eqx.filter(lin, eqx.is_inexact_array))
        params, static = eqx.partition(lin, eqx.is_array)

        def step(carry, _):
            params, state = carry
            grads = eqx.filter_grad(loss)(eqx.combine(params, static))
            updates, state = optimizer.update(grads, state)
            return (eqx.apply_updates(params, updates), state), None

        (params, _), _ = jax.lax.scan(step, (params, state), None, length=steps)
        lin = eqx.combine(params, static)
        return lin, jax.vmap(lin)(x), eqx.filter_grad(loss)(lin)

    trained, f_t, grads = train(lin)
    f_0 = jax.vmap(model)(x)
    residual = np.asarray(f_0 - y).reshape(-1)
    continuous = (
        np.asarray(y).reshape(-1) + scipy.linalg.expm(-eta * steps * theta) @ residual
    )
    discrete = (
        np.asarray(y).reshape(-1)
        + np.linalg.matrix_power(np.eye(18) - eta * theta, steps) @ residual
    )
    assert float(jnp.max(jnp.abs(f_t - f_0))) > 1e-2  # it trained
    np.testing.assert_allclose(f_t.reshape(-1), discrete, rtol=0, atol=1e-10)
    np.testing.assert_allclose(f_t.reshape(-1), continuous, rtol=0, atol=1e-4)
    # only the trainable copy moved, and only it receives gradients
    for a, b in zip(jax.tree.leaves(trained.reference), jax.tree.leaves(lin.reference)):
        np.testing.assert_array_equal(a, b)
    assert all(not jnp.any(g) for g in jax.tree.leaves(grads.reference))
    assert any(jnp.any(g) for g in jax.tree.leaves(grads.params))


def test_linearization_is_the_first_order_expansion():
    model = net()
    x, _ = data(3)
    params, rest = eqx.partition(model, eqx.is_inexact_array)
    rng = np.random.default_rng(2)
    delta = jax.tree.map(lambda a: jnp.asarray(rng.normal(size=a.shape)) * 0.1, params)
    lin = et.linearize(model)
    moved = eqx.tree_at(lambda m: m.params, lin, jax.tree.map(jnp.add, params, delta))

    taylor = et.taylor_expand(model, 1)  # degree 1 is the linearization
    taylor = eqx.tree_at(lambda m: m.params, taylor, moved.params)

    def f(p):
        return jax.vmap(eqx.combine(p, rest))(x)

    @eqx.filter_jit
    def outputs(lin, moved, taylor):
        jacobian = jax.jacobian(f)(params)  # leaves (3, 3, *param)
        change = sum(
            jnp.tensordot(j, d, axes=d.ndim)
            for j, d in zip(jax.tree.leaves(jacobian), jax.tree.leaves(delta))
        )
        return (
            (jax.vmap(moved)(x), f(params) + change),
            (jax.vmap(lin)(x), f(params)),
            (jax.vmap(moved.model)(x), f(jax.tree.map(jnp.add, params, delta))),
            (jax.vmap(taylor)(x), jax.vmap(moved)(x)),
        )

    for actual, expected in outputs(lin, moved, taylor):
        np.testing.assert_allclose(actual, expected, rtol=1e-12)


def test_last_layer_linearization_is_exact():
    """The network is linear in its last layer, so linearizing in it alone is exact."""
    model = net()
    x, _ = data(4)
    spec = jax.tree.map(lambda _: False, model)
    spec = eqx.tree_at(
        lambda m: (m.layers[-1].weight, m.layers[-1].bias), spec, (True,) * 2
    )
    lin = et.linearize(model, filter_spec=spec)
    assert len(jax.tree.leaves(lin.params)) == 2
    w = model.layers[-1].weight * 1.7 - 0.3
    moved_lin = eqx.tree_at(lambda m: m.params.layers[-1].weight, lin, w)
    moved = eqx.tree_at(lambda m: m.layers[-1].weight, model, w)
    np.testing.assert_allclose(jax.vmap(moved_lin)(x), jax.vmap(moved)(x), rtol=1e-12)


class Polynomial(eqx.Module):
    w: jax.Array

    def __call__(self, x):
        a = jnp.dot(self.w, x)
        return a**3 + a**2


@pytest.mark.parametrize("degree", [0, 1, 2, 3, 4])
def test_taylor_expansion_of_a_polynomial(degree):
    r"""$f(w) = (w\cdot x)^3 + (w\cdot x)^2$; with $a = w_0\cdot x$ and
    $d = \delta\cdot x$ the terms are $a^3 + a^2$, $(3a^2 + 2a)d$, $(3a + 1)d^2$,
    $d^3$."""
    w0 = jnp.array([0.3, -1.2, 0.8])
    delta = jnp.array([0.5, 0.1, -0.4])
    x = jnp.array([1.1, 0.4, -0.7])
    a, d = jnp.dot(w0, x), jnp.dot(delta, x)
    terms = [a**3 + a**2, (3 * a**2 + 2 * a) * d, (3 * a + 1) * d**2, d**3]
    expected = sum(terms[: degree + 1])
    taylor = et.taylor_expand(Polynomial(w0), degree)
    taylor = eqx.tree_at(lambda m: m.params.w, taylor, w0 + delta)
    np.testing.assert_allclose(taylor(x), expected, rtol=1e-13)
    grad = eqx.filter_grad(lambda m: m(x))(taylor)
    # d/dw of the truncated series: its derivative in d, times x
    dterms = [0.0, 3 * a**2 + 2 * a, 2 * (3 * a + 1) * d, 3 * d**2]
    np.testing.assert_allclose(grad.params.w, sum(dterms[: degree + 1]) * x, rtol=1e-12)
    np.testing.assert_array_equal(grad.reference.w, 0.0)
    assert math.isclose(float(taylor.model(x)), float(Polynomial(w0 + delta)(x)))


def test_equinox_models_and_errors():
    model = drawn(lambda: eqx.nn.MLP(4, 2, 8, 2, key=jax.random.PRNGKey(0)))
    x, _ = data(3)
    lin = et.linearize(model)
    np.testing.assert_allclose(jax.vmap(lin)(x), jax.vmap(model)(x), rtol=1e-13)
    with pytest.raises(ValueError, match="degree"):
        et.taylor_expand(model, -1)
