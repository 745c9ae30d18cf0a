"""Properties of kernels of random architectures (hypothesis, seeded).

For x1 = x2 every kernel is symmetric and positive semi-definite, its diagonal
equals the per-example path (`cov1`), and it equals the kernel computed with
x2 given explicitly; the input-layout fold keeps only spatial diagonals when no
layer needs more.
"""

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

import eqtangents as et

# Entries for two identical inputs computed through different paths: rounding
# leaves their correlation up to ~1e-13 below 1, and arc-cosine derivatives
# move by sqrt(2 (1 - rho)) there (docs/guarantees.md).
IDENTICAL_INPUTS_RTOL = 5e-7
ACTIVATIONS = [
    et.Relu, lambda: et.LeakyRelu(0.1), et.Abs, et.Erf, et.Gelu,
    lambda: et.Sin(1.0, 1.3, 0.2), lambda: et.ABRelu(-0.5, 1.2),
]  # fmt: skip


@st.composite
def dense_networks(draw):
    layers = []
    for _ in range(draw(st.integers(1, 4))):
        layers.append(
            et.Dense(
                8,
                W_std=draw(st.floats(0.3, 2.5)),
                b_std=draw(st.one_of(st.none(), st.floats(0.0, 1.0))),
                parameterization=draw(st.sampled_from(["ntk", "standard"])),
            )
        )
        layers.append(draw(st.sampled_from(ACTIVATIONS))())
    layers.append(et.Dense(1, W_std=draw(st.floats(0.3, 2.0))))
    return et.Serial(*layers)


@st.composite
def conv_networks(draw):
    layers = []
    for _ in range(draw(st.integers(1, 3))):
        layers.append(
            et.Conv(
                4,
                kernel_size=draw(st.sampled_from([(1, 1), (2, 2), (3, 2), (3, 3)])),
                stride=draw(st.sampled_from([1, (1, 2)])),
                padding=draw(st.sampled_from(["SAME", "CIRCULAR"])),
                W_std=draw(st.floats(0.5, 2.0)),
                b_std=draw(st.floats(0.0, 0.5)),
                parameterization=draw(st.sampled_from(["ntk", "standard"])),
            )
        )
        layers.append(draw(st.sampled_from(ACTIVATIONS))())
    head = draw(
        st.sampled_from(
            [
                [et.Flatten()],
                [et.GlobalAvgPool()],
                [et.AvgPool((2, 2), padding="SAME"), et.Flatten()],
                [et.SumPool((2, 1)), et.GlobalSumPool()],
            ]
        )
    )
    return et.Serial(*layers, *head, et.Dense(1))


def _check_kernel(model, x):
    jax.clear_caches()  # a new network's programs each example (see conftest)
    k = model.kernel(x, None)
    explicit = model.kernel(x, x)
    for name in ("nngp", "ntk"):
        mat = np.asarray(getattr(k, name))
        assert np.isfinite(mat).all()
        np.testing.assert_allclose(mat, mat.T, rtol=1e-10, atol=1e-12)
        eigenvalues = np.linalg.eigvalsh(mat)
        assert eigenvalues.min() >= -1e-9 * max(eigenvalues.max(), 1e-30)
        other = np.asarray(getattr(explicit, name))
        off = ~np.eye(len(mat), dtype=bool)
        np.testing.assert_allclose(mat[off], other[off], rtol=1e-10, atol=1e-12)
        # With x2 given, the kernel of an input with itself comes from the
        # dual at a correlation that rounding leaves a few ulps (amplified by
        # b^2 v in Sin, v/(1 + 2v) in Erf, ...) below 1, and the arc-cosine
        # derivative moves by sqrt(2 (1 - rho)) there: ~1e-8, not 1e-16. With
        # x2=None the diagonal is the per-example variance, exact.
        np.testing.assert_allclose(
            np.diag(mat), np.diag(other), rtol=IDENTICAL_INPUTS_RTOL
        )
    np.testing.assert_allclose(np.diagonal(k.nngp), k.cov1, rtol=1e-10, atol=1e-12)


@given(dense_networks(), st.integers(0, 2**16))
def test_dense_kernels_are_symmetric_psd_and_consistent(model, seed):
    x = jax.random.normal(jax.random.PRNGKey(seed), (5, 6))
    x = x.at[1].set(x[0])  # identical inputs: correlation exactly 1
    _check_kernel(model, x)


@settings(max_examples=max(6, settings.default.max_examples // 2))
@given(conv_networks(), st.integers(0, 2**16))
def test_conv_kernels_are_symmetric_psd_and_consistent(model, seed):
    x = jax.random.normal(jax.random.PRNGKey(seed), (3, 2, 5, 4))
    _check_kernel(model, x)


def test_layout_fold_keeps_only_diagonals_before_flatten():
    """A CNN ending in Flatten carries spatial diagonals; one ending in global
    pooling carries full spatial covariances (and pays for it)."""
    body = [et.Conv(4, (3, 3), padding="SAME"), et.Relu(), et.Conv(4, (3, 3))]
    flat = et.Serial(*body, et.Flatten(), et.Dense(1))
    pooled = et.Serial(*body, et.GlobalAvgPool(), et.Dense(1))
    assert flat.needs_full_spatial(False) is False
    assert pooled.needs_full_spatial(False) is True
    x = jnp.ones((2, 3, 6, 6))
    peak = {}
    for name, model in (("flat", flat), ("pooled", pooled)):
        jaxpr = jax.make_jaxpr(lambda a, m=model: m.kernel(a, None))(x)
        peak[name] = max(
            int(np.prod(v.aval.shape))
            for eqn in _equations(jaxpr.jaxpr)
            for v in eqn.outvars
        )
    # (N1, N2, H, W), at most padded by the 3x3 SAME window to (H + 2, W + 2).
    assert 2 * 2 * 6 * 6 <= peak["flat"] <= 2 * 2 * 8 * 8
    assert peak["pooled"] >= 2 * 2 * 6**4  # (N1, N2, H, H', W, W')


def _equations(jaxpr):
    """Every equation of a jaxpr, descending into nested (jitted) sub-programs."""
    for eqn in jaxpr.eqns:
        yield eqn
        for param in eqn.params.values():
            inner = getattr(param, "jaxpr", param)
            if hasattr(inner, "eqns"):
                yield from _equations(inner)
