"""Monte Carlo kernels: averages of empirical kernels that converge, as the width
grows, to the analytic kernels of the infinitely wide network."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import eqtangents as et

# XLA's backend optimisations off: these tests check numbers, and compile faster.
FAST = {"xla_backend_optimization_level": 0}


def inputs(n, d=3, seed=0):
    return jnp.asarray(np.random.default_rng(seed).normal(size=(n, d)))


def wide(width):
    return et.Serial(
        et.Dense(width, W_std=1.5, b_std=0.1),
        et.Relu(),
        et.Dense(width, W_std=1.5, b_std=0.1),
        et.Relu(),
        et.Dense(width, W_std=1.5, b_std=0.1),
    )


def per_sample_errors(model, x, exact, samples, key):
    """RMS over samples of the relative error of one-sample kernels.

    The running estimates at counts `1..samples` (one pass) give back each
    sample: $K_s = s \\bar K_s - (s - 1) \\bar K_{s-1}$.
    """
    counts = list(range(1, samples + 1))
    run = jax.jit(
        lambda k: et.monte_carlo_kernel(model, x, None, key=k, n_samples=counts),
        compiler_options=FAST,
    )
    estimates = run(key)
    errors = []
    for name in ("nngp", "ntk"):
        means = jnp.stack([getattr(e, name) for e in estimates])
        s = jnp.arange(1, samples + 1)[:, None, None]
        previous = jnp.concatenate([jnp.zeros_like(means[:1]), (s[:-1]) * means[:-1]])
        one = s * means - previous
        target = getattr(exact, name)
        mse = jnp.mean(jnp.sum((one - target) ** 2, axis=(1, 2)))
        errors.append(float(jnp.sqrt(mse / jnp.sum(target**2))))
    return errors


def test_converges_to_the_analytic_kernel_as_width_grows():
    """Quadrupling the width halves the error (slope -1/2 in log-log)."""
    x = inputs(4)
    exact = wide(1).kernel(x, None)
    widths = [32, 128, 512]
    errors = np.array(
        [
            per_sample_errors(wide(w), x, exact, 16, jax.random.PRNGKey(1))
            for w in widths
        ]
    )
    per_quadrupling = np.polyfit(np.log(widths) / np.log(4), np.log2(errors), 1)[0]
    assert np.all(per_quadrupling > -1.3) and np.all(per_quadrupling < -0.6), (
        errors,
        per_quadrupling,
    )
    assert np.all(errors[-1] < 0.25)


def _manual(make, x1, x2, key, n, get, **options):
    """Running averages of `et.empirical_kernel` over the documented keys."""
    total, averages = None, []
    for s in range(n):
        init_key, k = jax.random.split(jax.random.fold_in(key, s))
        kernel = et.empirical_kernel(
            make(init_key),
            x1,
            x2,
            get,
            key=k,
            implementation="jacobian_contraction",
            **options,
        )
        total = kernel if total is None else jax.tree.map(jnp.add, total, kernel)
        averages.append(jax.tree.map(lambda a, s=s: a / (s + 1), total))
    return averages


def test_running_estimates_are_averages_of_empirical_kernels():
    model = wide(6)
    x1, x2 = inputs(3), inputs(2, seed=1)
    key = jax.random.PRNGKey(3)

    def run(key):
        many = et.monte_carlo_kernel(model, x1, x2, key=key, n_samples=[2, 1])
        manual = _manual(lambda k: model.init(k, (3,)), x1, x2, key, 2, ("nngp", "ntk"))
        return many, manual

    (two, one), manual = jax.jit(run, compiler_options=FAST)(key)
    np.testing.assert_allclose(two.nngp, manual[1].nngp, rtol=1e-12)
    np.testing.assert_allclose(two.ntk, manual[1].ntk, rtol=1e-12)
    np.testing.assert_allclose(one.ntk, manual[0].ntk, rtol=1e-12)
    np.testing.assert_allclose(one.nngp, manual[0].nngp, rtol=1e-12)
    assert two.ntk.shape == (3, 2)


class Noisy(eqx.Module):
    mlp: eqx.nn.MLP
    dropout: eqx.nn.Dropout

    def __call__(self, x, *, key=None):
        return self.mlp(self.dropout(x, key=key))


def test_init_functions_and_the_call_key():
    """Any `init(key) -> module`; the second key of each sample reaches dropout."""

    def make(key):
        return Noisy(eqx.nn.MLP(3, 4, 5, 1, key=key), eqx.nn.Dropout(0.3))

    x = inputs(3)
    key = jax.random.PRNGKey(4)

    def run(key):
        estimate = et.monte_carlo_kernel(
            make, x, None, ("ntk", "nngp"), key=key, n_samples=2, trace_axes=()
        )
        manual = _manual(make, x, None, key, 2, ("ntk", "nngp"), trace_axes=())
        return estimate, manual[-1]

    estimate, manual = jax.jit(run, compiler_options=FAST)(key)
    np.testing.assert_allclose(estimate.ntk, manual.ntk, rtol=1e-12)
    np.testing.assert_allclose(estimate.nngp, manual.nngp, rtol=1e-12)
    assert estimate.ntk.shape == (3, 3, 4, 4)


def test_errors():
    x = inputs(2)
    with pytest.raises(ValueError, match="n_samples"):
        et.monte_carlo_kernel(wide(4), x, key=jax.random.PRNGKey(0), n_samples=[])
    with pytest.raises(ValueError, match="positive"):
        et.monte_carlo_kernel(wide(4), x, key=jax.random.PRNGKey(0), n_samples=[2, 0])


@pytest.mark.slow
def test_cnn_converges_as_channels_grow():
    def cnn(width):
        return et.Serial(
            et.Conv(width, (3, 3), padding="SAME", W_std=1.5, b_std=0.1),
            et.Relu(),
            et.Conv(width, (3, 3), W_std=1.5, b_std=0.1),
            et.Relu(),
            et.GlobalAvgPool(),
            et.Dense(width, W_std=1.5),
        )

    x = jnp.asarray(np.random.default_rng(5).normal(size=(3, 2, 5, 5)))
    exact = cnn(1).kernel(x, None)
    widths = [16, 64, 256]
    errors = np.array(
        [per_sample_errors(cnn(w), x, exact, 8, jax.random.PRNGKey(2)) for w in widths]
    )
    per_quadrupling = np.polyfit(np.log(widths) / np.log(4), np.log2(errors), 1)[0]
    assert np.all(per_quadrupling > -1.3) and np.all(per_quadrupling < -0.6), (
        errors,
        per_quadrupling,
    )
