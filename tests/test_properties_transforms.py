"""Random architectures from the layer zoo under JAX's transformations.

Hypothesis draws networks (depths, widths, strides, paddings, pooling,
residual branches, LayerNorm, activations, both parameterizations) and
inputs, and checks, for each: the kernel is finite, symmetric and PSD;
`jit`, `vmap` and tiling (`batch_size`) give the same numbers as the direct
call; `grad` with respect to the inputs and to a hyperparameter is finite;
float32 agrees with float64 to 1e-4 of the largest entry; and (under the
slow marker) a Monte Carlo estimate over finite networks agrees with it.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import eqtangents as et

from .test_properties import IDENTICAL_INPUTS_RTOL

ACTIVATIONS = [
    et.Relu, lambda: et.LeakyRelu(0.1), et.Abs, et.Erf, et.Gelu, et.Gaussian,
    lambda: et.Sin(1.0, 1.3, 0.2), lambda: et.ABRelu(-0.5, 1.2),
    lambda: et.RectifiedMonomial(2), lambda: et.Polynomial([0.1, 1.0, 0.3]),
]  # fmt: skip
FLOAT32_TOLERANCE = 1e-4
# A few examples in the default run (each compiles some ten programs), a
# hundred or more under `nox -s slow` (the "thorough" profile).
THOROUGH = settings.default.max_examples > 12
FLAT_EXAMPLES = settings.default.max_examples // 2 if THOROUGH else 2
SPATIAL_EXAMPLES = settings.default.max_examples // 3 if THOROUGH else 1


def _floats(draw, lo, hi):
    # jnp scalars, so that hyperparameters are differentiable pytree leaves
    return jnp.asarray(draw(st.floats(lo, hi)))


@st.composite
def networks(draw, spatial: bool, out: int = 1, width: int = 8):
    def affine():
        kwargs = dict(
            W_std=_floats(draw, 0.5, 2.0),
            b_std=draw(st.one_of(st.none(), st.floats(0.0, 0.5))),
            parameterization=draw(st.sampled_from(["ntk", "standard"])),
        )
        if not spatial:
            return et.Dense(width, **kwargs)
        size = draw(st.sampled_from([(1, 1), (2, 2), (3, 2), (3, 3)]))
        return et.Conv(width, size, padding=draw(st.sampled_from(["SAME", "CIRCULAR"])),
                       **kwargs)  # fmt: skip

    def activation():
        return draw(st.sampled_from(ACTIVATIONS))()

    layers = []
    for _ in range(draw(st.integers(1, 3))):
        layers.append(affine())
        if draw(st.booleans()):
            layers.append(et.LayerNorm())
        layers.append(activation())
        if draw(st.booleans()):  # a residual block around two more layers
            branch = et.Serial(affine(), activation(), affine())
            layers += [et.FanOut(2), et.Parallel(et.Identity(), branch), et.FanInSum()]
    if spatial:
        head = draw(st.sampled_from([
            [et.Flatten()], [et.GlobalAvgPool()],
            [et.AvgPool((2, 2), padding="SAME"), et.Flatten()],
            [et.SumPool((2, 1)), et.GlobalSumPool()],
        ]))  # fmt: skip
        layers += head
    layers.append(et.Dense(out, W_std=_floats(draw, 0.5, 2.0)))
    return et.Serial(*layers)


def _inputs(seed, spatial):
    shape = (4, 2, 5, 4) if spatial else (4, 6)
    x = jax.random.normal(jax.random.PRNGKey(seed), shape)
    return x.at[1].set(x[0])  # identical inputs: correlation exactly 1


def _relative_error(a, b):
    return float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(b)))


def _check_transforms(model, x):
    # Each example compiles some thirty programs for a new network; dropping
    # them keeps a long run under Linux's limit on memory maps (see conftest).
    jax.clear_caches()
    direct = model.kernel(x, None, ("nngp", "ntk"))
    for mat in map(np.asarray, direct):
        assert np.isfinite(mat).all()
        np.testing.assert_allclose(mat, mat.T, rtol=1e-10, atol=1e-12)
        eigenvalues = np.linalg.eigvalsh(mat)
        assert eigenvalues.min() >= -1e-9 * max(eigenvalues.max(), 1e-30)

    jitted = eqx.filter_jit(lambda m, a: m.kernel(a, None, ("nngp", "ntk")))(model, x)
    tiled = model.kernel(x, None, ("nngp", "ntk"), batch_size=3)
    stacked = jax.vmap(lambda a: model.kernel(a, None, ("nngp", "ntk")))(
        jnp.stack([x, 2 * x])
    )
    doubled = model.kernel(2 * x, None, ("nngp", "ntk"))
    # x[0] and x[1] are identical: programs that round differently (jit,
    # tiles, vmap) agree on their pair only to IDENTICAL_INPUTS_RTOL.
    flat = np.asarray(x).reshape(len(x), -1)
    twins = (flat[:, None] == flat[None, :]).all(-1) & ~np.eye(len(x), dtype=bool)
    for i in range(2):
        pairs = [(jitted[i], direct[i]), (tiled[i], direct[i]),
                 (stacked[i][0], direct[i]), (stacked[i][1], doubled[i])]  # fmt: skip
        for other, reference in pairs:
            other, reference = np.asarray(other), np.asarray(reference)
            np.testing.assert_allclose(
                other[~twins], reference[~twins], rtol=1e-9, atol=1e-12
            )
            np.testing.assert_allclose(
                other[twins], reference[twins], rtol=IDENTICAL_INPUTS_RTOL
            )

    def loss(m, a):
        return jnp.sum(m.kernel(a, None, "ntk") ** 2)

    grad_model, grad_x = eqx.filter_grad(loss)(model, x), jax.grad(loss, 1)(model, x)
    assert np.isfinite(grad_x).all()
    hyper = [g for g in jax.tree.leaves(eqx.filter(grad_model, eqx.is_array))]
    assert hyper and all(np.isfinite(g).all() for g in hyper)

    single = model.kernel(x.astype(jnp.float32), None, ("nngp", "ntk"))
    for low, high in zip(single, direct):
        assert low.dtype == jnp.float32
        assert _relative_error(low, high) <= FLOAT32_TOLERANCE


@settings(max_examples=FLAT_EXAMPLES)
@given(networks(spatial=False), st.integers(0, 2**16))
def test_flat_networks_under_jit_vmap_grad_tiles_and_float32(model, seed):
    _check_transforms(model, _inputs(seed, spatial=False))


@settings(max_examples=SPATIAL_EXAMPLES)
@given(networks(spatial=True), st.integers(0, 2**16))
def test_spatial_networks_under_jit_vmap_grad_tiles_and_float32(model, seed):
    _check_transforms(model, _inputs(seed, spatial=True))


@pytest.mark.slow
@settings(max_examples=FLAT_EXAMPLES)
@given(networks(spatial=False, out=256, width=512), st.integers(0, 2**16))
def test_flat_networks_agree_with_monte_carlo_of_finite_networks(model, seed):
    """The finite networks have the kernel's widths (512, so that the
    standard parameterization's fan-ins match); the estimate averages 256
    outputs of 16 networks, so its error is a few percent. Slow: 20 to 50 s
    an example (the fixed architectures of `test_monte_carlo.py` and
    `test_core.py` run in every test run)."""
    x = _inputs(seed, spatial=False)
    exact = model.kernel(x, None, ("nngp", "ntk"))
    estimate = et.monte_carlo_kernel(
        model, x, None, ("nngp", "ntk"), key=jax.random.PRNGKey(seed), n_samples=16
    )
    for mc, k in zip(estimate, exact):
        assert _relative_error(mc, k) < 0.15
