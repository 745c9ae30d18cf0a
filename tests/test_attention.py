"""GlobalSelfAttention: Monte Carlo checks of its kernels, layouts, errors, jit
and grad. The NT 0.6.5 reference cases (attention_*) run in
`test_reference_kernels.py`.

The Monte Carlo networks are built from the same pytree as the kernels and
estimated with `tests/_finite.py` (`init` + `__call__`, `jax.jacobian` NTKs).
Their finite-width biases are of order 1/width (the attention weights are
random at finite `key_channels`, the input covariance is empirical at finite
`out_channels` of the layer before); the sampling error is estimated from
independent blocks of samples.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import eqtangents as et

from ._finite import finite_kernels


def _inputs(c=3, length=4, seed=0):
    """Two batches of sequences `(2, C, L)`, the second close to the first."""
    rng = np.random.default_rng(seed)
    x1 = rng.standard_normal((2, c, length)) + 0.5
    x2 = x1 + 0.5 * rng.standard_normal((2, c, length))
    return jnp.asarray(x1), jnp.asarray(x2)


def _attention(width, mechanism="SOFTMAX", **kwargs):
    kwargs = {
        **dict(W_key_std=0.9, W_query_std=0.8, W_value_std=1.1, W_out_std=1.0,
               b_std=0.2, W_pos_emb_std=0.7, attention_mechanism=mechanism),
        **kwargs,
    }  # fmt: skip
    n_heads = kwargs.pop("n_heads", 2)
    inner = kwargs.pop("inner", width)
    return et.GlobalSelfAttention(width, inner, inner, n_heads, **kwargs)


def _estimate(model, x1, x2, *, ntk, blocks=8, per_block=16, seed=0):
    """Means and standard errors over `blocks * per_block` random networks."""
    fn = jax.jit(lambda k: finite_kernels(model, x1, x2, k, per_block, ntk=ntk)[:2])
    keys = jax.random.split(jax.random.key(seed, impl="rbg"), blocks)
    out = [fn(k) for k in keys]
    stats = []
    for i in range(2 if ntk else 1):
        samples = jnp.stack([o[i] for o in out])
        stats.append((samples.mean(0), samples.std(0, ddof=1) / np.sqrt(blocks)))
    return stats


def _check(name, exact, mean, se, z_max=5.0, max_rel_se=0.06):
    """Max z-score, and RMS error relative to the kernel's RMS, against the
    relative RMS standard error."""
    z = float(jnp.max(jnp.abs(mean - exact) / se))
    scale = jnp.sqrt(jnp.mean(exact**2))
    rel = float(jnp.sqrt(jnp.mean((mean - exact) ** 2)) / scale)
    rel_se = float(jnp.sqrt(jnp.mean(se**2)) / scale)
    report = (name, round(z, 2), round(rel, 4), round(rel_se, 4))
    assert z < z_max, report
    assert rel < 3 * rel_se, report
    assert rel_se < max_rel_se, report
    return rel


def _readout_net(width, attention):
    return et.Serial(
        et.Conv(width, (1,), W_std=1.2, b_std=0.1),
        attention, et.Relu(), et.GlobalAvgPool(), et.Dense(512, W_std=1.0, b_std=0.1),
    )  # fmt: skip


# ------------------------------------------------------------- Monte Carlo

NNGP_CASES = {
    "softmax": dict(),
    "softmax_sum_decay": dict(
        pos_emb_type="SUM", pos_emb_decay_fn=lambda d: jnp.exp(-d / 2)
    ),
}


@pytest.mark.parametrize("case", NNGP_CASES)
def test_monte_carlo_nngp(case):
    """Conv-GlobalSelfAttention-Relu-GlobalAvgPool-Dense at width 128."""
    x1, x2 = _inputs()
    model = _readout_net(128, _attention(128, **NNGP_CASES[case]))
    ((mean, se),) = _estimate(model, x1, x2, ntk=False)
    _check(case, model.kernel(x1, x2, get="nngp"), mean, se)


def test_monte_carlo_identity_bias_falls_with_width():
    """Identity attention (linear scaling, embeddings concatenated for keys and
    values) is quadratic in the input covariance, so its finite-width bias is
    large (about 20% at width 32, 10% at 128, falling towards 3% at 512). It
    falls with the width, and the extrapolation to infinite width of a bias
    $a / n$ from widths 32 and 128 agrees with the kernel."""
    x1, x2 = _inputs(seed=1)
    estimates = {}
    for width in (32, 128):
        attention = _attention(
            width, "IDENTITY", pos_emb_type="CONCAT", n_chan_pos_emb=width // 2,
            val_pos_emb=True,
        )  # fmt: skip
        model = _readout_net(width, attention)
        ((mean, se),) = _estimate(model, x1, x2, ntk=False)
        estimates[width] = mean, se
    exact = model.kernel(x1, x2, get="nngp")
    errors = [
        float(jnp.sqrt(jnp.mean((m - exact) ** 2 / exact**2)))
        for m, _ in estimates.values()
    ]
    assert errors[1] < errors[0] / 1.5, errors
    (small, small_se), (large, large_se) = estimates[32], estimates[128]
    extrapolated = (4 * large - small) / 3
    se = jnp.sqrt(16 * large_se**2 + small_se**2) / 3
    _check("identity extrapolated", exact, extrapolated, se, max_rel_se=0.15)


LINEAR_NTK_CASES = {
    "ntk_sum": dict(pos_emb_type="SUM", val_pos_emb=True),
    "standard_concat": dict(
        pos_emb_type="CONCAT", val_pos_emb=True, parameterization="standard"
    ),
}


@pytest.mark.parametrize("case", LINEAR_NTK_CASES)
def test_monte_carlo_ntk_linear_scaling(case):
    """NNGP and NTK of Conv-GlobalSelfAttention-GlobalAvgPool at width 32 (the
    NTK flows through the attention from the Conv), products averaged over the
    32 outputs."""
    x1, x2 = _inputs()
    kwargs = LINEAR_NTK_CASES[case]
    par = kwargs.get("parameterization", "ntk")
    model = et.Serial(
        et.Conv(32, (1,), W_std=1.2, b_std=0.1, parameterization=par),
        _attention(32, **kwargs), et.GlobalAvgPool(),
    )  # fmt: skip
    (nngp, nngp_se), (ntk, ntk_se) = _estimate(model, x1, x2, ntk=True)
    exact = model.kernel(x1, x2)
    _check(f"{case} nngp", exact.nngp, nngp, nngp_se)
    _check(f"{case} ntk", exact.ntk, ntk, ntk_se)


SQRT_NTK_CASES = {
    "ntk_sum": dict(pos_emb_type="SUM"),
    "standard_concat_values": dict(
        pos_emb_type="CONCAT", val_pos_emb=True, parameterization="standard"
    ),
}


@pytest.mark.parametrize("case", SQRT_NTK_CASES)
def test_monte_carlo_ntk_identity_without_linear_scaling(case):
    """The 1/sqrt(n_key) identity attention on 64 input channels (its kernels
    are cubic in the input covariance, which is exact here; the trained
    embeddings carry an NTK into it), 32 heads of 2 channels. Its attention
    weights are Gaussian, so the NNGP estimate is heavy-tailed: only its
    z-scores are checked."""
    x1, x2 = _inputs(c=64)
    model = et.Serial(
        _attention(16, "IDENTITY", linear_scaling=False, n_heads=32, inner=2,
                   **SQRT_NTK_CASES[case]),
        et.GlobalAvgPool(),
    )  # fmt: skip
    (nngp, nngp_se), (ntk, ntk_se) = _estimate(model, x1, x2, ntk=True)
    exact = model.kernel(x1, x2)
    _check(f"{case} nngp", exact.nngp, nngp, nngp_se, max_rel_se=0.2)
    _check(f"{case} ntk", exact.ntk, ntk, ntk_se)


# ------------------------------------------------------ layouts and identities


def _jit_kernel(model, x1, x2=None, **options):
    return eqx.filter_jit(lambda m, a, b: m.kernel(a, b, **options))(model, x1, x2)


def test_self_kernel_and_layouts():
    """`x2=None` matches `x2=x1`, the output is symmetric, 2-D positions are
    attended to jointly, and a diagonal layout asks for full input covariances."""
    rng = np.random.default_rng(3)
    x = jnp.asarray(rng.standard_normal((3, 2, 3, 2)))
    model = et.Serial(
        et.Conv(8, (1, 1), b_std=0.1),
        _attention(8, pos_emb_type="CONCAT", pos_emb_decay_fn=lambda d: 1 / (1 + d)),
        et.Relu(), et.Flatten(), et.Dense(1),
    )  # fmt: skip
    layer = model.layers[1]
    assert layer.needs_full_spatial(False) is True
    own, cross = _jit_kernel(model, x), _jit_kernel(model, x, x)
    for name in ("nngp", "ntk"):
        np.testing.assert_allclose(getattr(own, name), getattr(cross, name), 1e-12)
        np.testing.assert_allclose(getattr(own, name), getattr(own, name).T, 1e-12)
    k = _jit_kernel(et.Serial(*model.layers[:2]), x)
    assert k.nngp.shape == (3, 3, 3, 3, 2, 2) and k.cov1.shape == (3, 3, 3, 2, 2)
    assert k.is_gaussian and not k.is_input
    # Flat (x, x) diagonal entries are the per-example covariances.
    np.testing.assert_allclose(jnp.einsum("nnabcd->nabcd", k.nngp), k.cov1, rtol=1e-12)
    diag = _jit_kernel(model, x, diagonal_spatial=True)
    np.testing.assert_allclose(diag.nngp, own.nngp, rtol=1e-12)


def test_forward_pass_matches_a_loop():
    """The finite layer against a per-head loop written from the docstring."""
    x = jnp.asarray(np.random.default_rng(4).standard_normal((3, 2, 2)))
    layer = _attention(5, "SOFTMAX", linear_scaling=False, pos_emb_type="SUM")
    layer = layer.init(jax.random.key(2), x.shape)
    y = layer(x)
    assert y.shape == (5, 2, 2) == layer.output_shape(x.shape)
    tokens = x.reshape(3, 4) + 0.7 * layer.pos_emb.reshape(3, 4)
    heads = []
    for h in range(2):
        q = layer.query_weight[h] @ tokens
        k = layer.key_weight[h] @ tokens
        logits = 0.9 * 0.8 * (q.T @ k) / (3 * np.sqrt(5))
        weights = jax.nn.softmax(logits, axis=-1)
        heads.append((layer.value_weight[h] @ x.reshape(3, 4)) @ weights.T)
    ref = jnp.einsum("ohv,hvs->os", layer.out_weight, jnp.stack(heads))
    ref = 1.1 * ref / np.sqrt(5 * 2 * 3) + 0.2 * layer.bias[:, None]
    np.testing.assert_allclose(y, ref.reshape(5, 2, 2), rtol=1e-12)
    eager = _attention(
        5, "SOFTMAX", linear_scaling=False, pos_emb_type="SUM",
        in_channels=3, spatial_shape=(2, 2), key=jax.random.key(2),
    )  # fmt: skip
    np.testing.assert_array_equal(eager(x), y)


def test_jit_grad_and_dtypes():
    """Gradients with respect to every standard deviation (both closed forms
    side by side, through jit) match central differences; float32 works."""
    x1, x2 = _inputs(c=4, length=3, seed=5)

    def loss(stds, x1, x2):
        wk, wv, wq, wo, b, wp = stds
        layers = [
            et.GlobalSelfAttention(
                8, 8, 8, 2, W_key_std=wk, W_value_std=wv, W_query_std=wq,
                W_out_std=wo, b_std=b, W_pos_emb_std=wp, pos_emb_type="SUM",
                val_pos_emb=True, **kwargs,
            )
            for kwargs in ({}, dict(linear_scaling=False,
                                    attention_mechanism="IDENTITY"))
        ]  # fmt: skip
        model = et.Serial(
            et.Conv(8, (1,), b_std=0.1), et.FanOut(2), et.Parallel(*layers),
            et.FanInSum(), et.GlobalAvgPool(),
        )  # fmt: skip
        return jnp.sum(model.kernel(x1, x2, get="ntk"))

    stds = jnp.array([0.9, 1.1, 0.8, 1.0, 0.2, 0.7])
    direction = jnp.asarray(np.random.default_rng(6).standard_normal(6))
    value_and_grad = jax.jit(jax.value_and_grad(loss))
    value, grad = value_and_grad(stds, x1, x2)
    assert np.all(np.isfinite(grad)) and np.all(grad != 0)
    h = 1e-6
    up, down = (value_and_grad(stds + s * h * direction, x1, x2)[0] for s in (1, -1))
    np.testing.assert_allclose((up - down) / (2 * h), grad @ direction, rtol=1e-6)
    low = jax.jit(loss)(*(a.astype(jnp.float32) for a in (stds, x1, x2)))
    assert low.dtype == jnp.float32
    np.testing.assert_allclose(low, value, rtol=1e-4)
    layer = _attention(6, pos_emb_type="SUM", pos_emb_decay_fn=lambda d: jnp.exp(-d))
    net = layer.init(jax.random.key(0), (4, 3))
    y = eqx.filter_jit(net)(x1[0].astype(jnp.float32))
    assert y.dtype == jnp.float32 and y.shape == (6, 3)
    np.testing.assert_allclose(y, net(x1[0]), rtol=1e-4, atol=1e-5)


# ----------------------------------------------------------------- errors


@pytest.mark.parametrize("mechanism", ["SOFTMAX", "ABS", "RELU"])
def test_no_closed_form_without_linear_scaling(mechanism):
    x = jnp.asarray(np.random.default_rng(7).standard_normal((2, 3, 4)))
    layer = _attention(4, mechanism, linear_scaling=False)
    with pytest.raises(ValueError, match="no known closed-form.*monte_carlo_kernel"):
        layer.kernel(x)
    # The finite network works.
    net = layer.init(jax.random.key(0), x.shape[1:])
    y = jax.vmap(net)(x)
    assert y.shape == (2, 4, 4) and np.all(np.isfinite(y))


def test_monte_carlo_kernel_where_there_is_no_closed_form():
    x = jnp.asarray(np.random.default_rng(7).standard_normal((2, 3, 4)))
    model = et.Serial(_attention(4, linear_scaling=False), et.GlobalAvgPool())
    k = et.monte_carlo_kernel(model, x, key=jax.random.key(1), n_samples=2, get="nngp")
    assert k.shape == (2, 2) and np.all(np.isfinite(k))


def test_inputs_need_not_be_gaussian_and_outputs_are():
    """Only the inputs' covariance enters (NT applies the layer to the network
    input, too); the outputs are Gaussian, so layers that need Gaussian inputs
    may follow it, but not a nonlinearity after it."""
    x = jnp.ones((2, 3, 4)) + jnp.arange(4.0)
    after_relu = et.Serial(et.Conv(4, (1,)), et.Relu(), _attention(4), et.LayerNorm())
    assert np.all(np.isfinite(_jit_kernel(after_relu, x).nngp))
    assert np.all(np.isfinite(_jit_kernel(et.Serial(_attention(4)), x).ntk))
    bad = et.Serial(_attention(4), et.Relu(), et.LayerNorm())
    with pytest.raises(ValueError, match="LayerNorm needs Gaussian inputs"):
        _jit_kernel(bad, x)


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: _attention(4, "SOFTMAXX"), "`attention_mechanism` must be one of"),
        (lambda: _attention(4, "gelu"), "'SOFTMAX', 'IDENTITY', 'ABS', 'RELU'"),
        (lambda: _attention(4, pos_emb_type="ADD"), "`pos_emb_type` must be"),
        (lambda: et.GlobalSelfAttention(4, 4, 4, 0), "`n_heads` must be a positive"),
        (lambda: et.GlobalSelfAttention(4, -3, 4, 2), "`key_channels` must be"),
        (lambda: _attention(4, n_chan_pos_emb=0), "`n_chan_pos_emb` must be"),
        (lambda: _attention(4, W_key_std=-1.0), "`W_key_std` must be non-negative"),
        (lambda: _attention(4, in_channels=3), "both `in_channels` and `key`"),
        (
            lambda: _attention(
                4, pos_emb_type="SUM", in_channels=3, key=jax.random.key(0)
            ),  # fmt: skip
            "give `spatial_shape`",
        ),
    ],
)
def test_construction_errors(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_structural_errors():
    x = jnp.ones((2, 3, 4))
    sum_mismatch = _attention(4, pos_emb_type="SUM", n_chan_pos_emb=5)
    with pytest.raises(ValueError, match="adds the embeddings to inputs with 3"):
        sum_mismatch.kernel(x)
    with pytest.raises(ValueError, match="adds the embeddings to inputs with 3"):
        sum_mismatch.init(jax.random.key(0), (3, 4))
    with pytest.raises(ValueError, match="without any"):
        _attention(4).kernel(jnp.ones((2, 3)))
    net = _attention(4, n_heads=3).init(jax.random.key(0), (3, 4))
    with pytest.raises(ValueError, match=r"n_heads=3 needs \(3, 4, 5\)"):
        net(jnp.ones((5, 4)))
    concat = _attention(4, pos_emb_type="CONCAT").init(jax.random.key(0), (3, 4))
    with pytest.raises(ValueError, match=r"weights of shape \(3, 4\)"):
        concat(jnp.ones((3, 6)))
    with pytest.raises(ValueError, match="no weights yet"):
        _attention(4)(x[0])
    k = _jit_kernel(et.Conv(4, (1,)), x, diagonal_spatial=True)
    with pytest.raises(ValueError, match="needs full spatial covariances"):
        _attention(4).kernel(k)
