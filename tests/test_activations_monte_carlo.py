"""Every activation with a forward pass agrees with finite networks built from
the same pytree: the NNGP of Dense -> activation -> Dense lies within sampling
error of the average over random initialisations."""

import jax
import numpy as np
import pytest

import eqtangents as et

from ._finite import finite_kernels

ACTIVATIONS = [
    et.Relu(), et.ABRelu(-0.3, 1.1), et.LeakyRelu(0.2), et.Abs(), et.Erf(1.2, 0.8, 0.1),
    et.SigmoidLike(), et.Gelu(), et.Sin(1.1, 0.9, 0.3), et.Cos(1.0, 1.2, 0.1),
    et.Rbf(0.7), et.Sign(), et.Exp(0.8, 0.5), et.Gaussian(1.0, -0.6), et.Gabor(),
    et.Hermite(3), et.Monomial(2), et.RectifiedMonomial(2),
    et.Polynomial([0.2, 0.9, -0.3, 0.2]),
]  # fmt: skip


@pytest.mark.parametrize("activation", ACTIVATIONS, ids=lambda a: type(a).__name__)
def test_nngp_matches_finite_networks(activation):
    key1, key2 = jax.random.split(jax.random.PRNGKey(7))
    x1 = 0.6 * jax.random.normal(key1, (3, 5))
    x2 = 0.6 * jax.random.normal(key2, (2, 5))
    model = et.Serial(et.Dense(64, W_std=1.1, b_std=0.2), activation, et.Dense(8))
    exact = model.kernel(x1, x2, get="nngp")
    nngp, _, se = finite_kernels(model, x1, x2, jax.random.PRNGKey(3), 128, ntk=False)
    z = np.abs(nngp - exact) / se
    assert z.max() < 5, (z.max(), nngp, exact)
